//! The counter store: runs checks against Redis and keeps one connection to the current master,
//! or, with a Redis Cluster, hands them to [`crate::cluster`] (the rest of this page is about
//! one master: a single Redis, or the master Sentinel names).
//!
//! # Following a failover
//!
//! All requests share one `MultiplexedConnection` (cloned per request: a cheap handle on one
//! pipelined socket), tagged with a *generation* number. When a command fails in a way that
//! says the connection or its server is no longer usable (I/O error, refused or dropped
//! connection, timeout, `READONLY` from a demoted master, `LOADING`, `MASTERDOWN`, …), the
//! request answers `503` and reports the generation it used. The first such report for the
//! current generation starts one background rebuild (single flight: an atomic flag, and the
//! generation check makes late reports about an already replaced connection no-ops). The rebuild
//! resolves the master afresh through the sentinels, connects, loads the script (`SCRIPT LOAD`
//! is not replicated, so a promoted replica lacks it), then swaps the new connection in under a
//! short write lock with the next generation. It retries with backoff (50 ms doubling to 1 s)
//! until it succeeds. Until then requests keep using the old connection and fail fast, which the
//! filter's failure mode turns into allow or deny.
//!
//! Errors alone are not enough: in a forced failover both nodes answer `ROLE master` for
//! seconds, and writes to the old one are lost without any error. So with Sentinel, limitd also
//! listens on every sentinel for `+switch-master` naming its master and rebuilds at once, and a
//! watch task asks the sentinels for the master every `LIMITD_MASTER_POLL_MS` (default
//! [`MASTER_WATCH_INTERVAL`]) and rebuilds when the address differs from the connected one: the
//! poll covers a sentinel that is away, and sees a promotion before the announcement does.
//!
//! Every failed command, connection attempt and master resolution is counted in
//! `limitd_redis_errors_total` by [`classify`]; every rebuilt connection in
//! `limitd_reconnects_total`, and in `limitd_failovers_total` when it reached another address
//! (see [`crate::metrics`]). An authentication failure is logged at error level with the
//! variables to check, since retrying will not fix it (the store still retries, in case the
//! server's password is what changes).
//!
//! Redis replication is asynchronous: counts acknowledged by the old master just before it died
//! may be missing on the new one, so a failover can under-count (admit a little more than the
//! limit) for the window in progress. It never over-counts.
//!
//! # Counted exactly when admitted
//!
//! Every check carries a receipt key ([`CounterStore::receipt`]). When a check fails in a way
//! that leaves open whether its script ran (the connection died after sending, no answer in
//! time: [`StoreError::may_have_run`]), the caller reports it as an error and calls
//! [`CounterStore::give_back`]: in the background, on the current connection (after the rebuild,
//! if there is one), the script finds the receipt and undoes the charge, or voids the receipt so
//! the check can never count. A check reported as an error therefore never stays counted.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use protocol::{CheckRequest, CheckResponse};
use redis::aio::MultiplexedConnection;
use redis::RedisError;

use crate::cluster::ClusterStore;
use crate::config::{RedisConfig, RedisTarget};
use crate::connector::Connector;
use crate::keys::{counter_key, receipt_key};
use crate::log_limit::LogLimit;
use crate::metrics::{GiveBackOutcome, Metrics};
use crate::script::{decode_give_back, decode_reply, CheckScript, GiveBack, Mode, ReplyError};

// What a failure means lives in `errors.rs`; the store's API keeps offering it.
pub use crate::errors::{classify, is_auth_error, is_no_replicas, is_transient, StoreError};

/// How often, with Sentinel, the master's address is compared with the connected one.
pub const MASTER_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// How long a give-back keeps trying: well within [`crate::script::RECEIPT_TTL`], so the receipt it looks for
/// is still there.
pub const GIVE_BACK_WITHIN: Duration = Duration::from_secs(30);

/// The most give-backs waiting for Redis at once.
pub const MAX_GIVE_BACKS: i64 = 10_000;

const REBUILD_BACKOFF_START: Duration = Duration::from_millis(50);
const REBUILD_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Runs a give-back in the background: `settle` gives back (or voids) the check whose receipt
/// key is `receipt`. Counted in `limitd_give_backs_total` by outcome; a failed one is logged. At
/// most [`MAX_GIVE_BACKS`] run at once; past that (a long outage with many checks in doubt) one
/// is counted as failed at once and logged. Both stores give back through here.
pub(crate) fn spawn_give_back(
    metrics: &Arc<Metrics>,
    receipt: String,
    settle: impl std::future::Future<Output = GiveBackOutcome> + Send + 'static,
) {
    metrics.give_back_started();
    if metrics.give_backs_in_flight() > MAX_GIVE_BACKS {
        metrics.give_back(GiveBackOutcome::Failed);
        static TOO_MANY: LogLimit = LogLimit::new(Duration::from_secs(10));
        if let Some(more_like_this) = TOO_MANY.admit() {
            tracing::error!(
                more_like_this,
                "too many give-backs waiting for redis; a check may stay counted"
            );
        }
        return;
    }
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let outcome = settle.await;
        metrics.give_back(outcome);
        if outcome == GiveBackOutcome::Failed {
            static FAILED: LogLimit = LogLimit::new(Duration::from_secs(10));
            if let Some(more_like_this) = FAILED.admit() {
                tracing::error!(
                    receipt,
                    more_like_this,
                    "could not give back a check whose answer was lost; it may stay counted"
                );
            }
        } else {
            tracing::debug!(receipt, ?outcome, "check given back");
        }
    });
}

/// Tries `attempt` (one run of the script's give-back mode; `None`: no answer, try again) with
/// backoff for up to [`GIVE_BACK_WITHIN`].
pub(crate) async fn retry_give_back<F, Fut>(mut attempt: F) -> GiveBackOutcome
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<GiveBackOutcome>>,
{
    let give_up = tokio::time::Instant::now() + GIVE_BACK_WITHIN;
    let mut backoff = REBUILD_BACKOFF_START;
    while tokio::time::Instant::now() < give_up {
        if let Some(outcome) = attempt().await {
            return outcome;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(REBUILD_BACKOFF_MAX);
    }
    GiveBackOutcome::Failed
}

/// What the script's give-back mode answered.
pub(crate) fn give_back_outcome(reply: &[i64]) -> GiveBackOutcome {
    match decode_give_back(reply) {
        Ok(GiveBack::Returned) => GiveBackOutcome::Returned,
        Ok(GiveBack::Voided) => GiveBackOutcome::Voided,
        Ok(GiveBack::Settled) => GiveBackOutcome::Settled,
        Err(text) => {
            tracing::error!(error = %text, "unexpected reply to a give-back");
            GiveBackOutcome::Failed
        }
    }
}

/// Runs checks against Redis; cheap to clone (all clones share one connection to the master,
/// or one cluster client).
#[derive(Clone)]
pub struct CounterStore {
    backend: Backend,
    /// Receipt ids: a random start per process, then one more per check, so that two limitd
    /// never share one.
    next_receipt: Arc<AtomicU64>,
}

#[derive(Clone, Debug)]
enum Backend {
    /// One master: a single Redis, or the one Sentinel names.
    Master(MasterStore),
    /// A Redis Cluster (see [`crate::cluster`]).
    Cluster(ClusterStore),
}

/// A check's receipt: the id from which the receipt key of each of its script runs is made
/// (see [`receipt_key`]), so that a give-back can find every one of them from the check alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt(pub(crate) u64);

impl Receipt {
    /// The receipt key of the script run over `hits` (a whole check, or one slot's group of
    /// it): it shares the first hit's hash tag, so the same slot.
    pub fn key_for(self, hits: &[protocol::Hit]) -> String {
        let counter = hits.first().map(counter_key).unwrap_or_default();
        receipt_key(&counter, self.0)
    }
}

impl std::fmt::Debug for CounterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.backend.fmt(f)
    }
}

impl CounterStore {
    /// Prepares the store and tries to connect once. If Redis cannot be reached the store is
    /// still returned: checks answer [`StoreError::NotConnected`] while a background task keeps
    /// trying. Fails only on a configuration redis-rs refuses.
    ///
    /// Must be called inside a tokio runtime (it spawns the reconnect and watch tasks).
    pub async fn connect(config: &RedisConfig) -> Result<Self, StoreError> {
        Self::connect_with_metrics(config, Arc::default()).await
    }

    /// [`CounterStore::connect`], counting into `metrics`.
    pub async fn connect_with_metrics(
        config: &RedisConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let backend = match &config.target {
            RedisTarget::Cluster { .. } => {
                Backend::Cluster(ClusterStore::connect(config, metrics).await?)
            }
            RedisTarget::Single { .. } | RedisTarget::Sentinel { .. } => {
                Backend::Master(MasterStore::connect(config, metrics).await?)
            }
        };
        Ok(Self {
            backend,
            next_receipt: Arc::new(AtomicU64::new(
                RandomState::new().hash_one(std::process::id()),
            )),
        })
    }

    /// A fresh receipt for a check.
    pub fn receipt(&self) -> Receipt {
        Receipt(self.next_receipt.fetch_add(1, Ordering::Relaxed))
    }

    /// Checks and, if every hit is allowed, consumes the hits of a validated `request`, all or
    /// nothing, writing `receipt` where it consumes. With one master, or a cluster when every
    /// hit's key is in one slot: one script run. With a cluster and keys in several slots: one
    /// run per slot, and the ones that consumed are given back unless all are allowed (see
    /// [`crate::cluster`]).
    pub async fn check(
        &self,
        request: &CheckRequest,
        receipt: Receipt,
    ) -> Result<CheckResponse, StoreError> {
        match &self.backend {
            Backend::Master(store) => store.check(request, &receipt.key_for(&request.hits)).await,
            Backend::Cluster(store) => store.check(request, receipt).await,
        }
    }

    /// Makes sure the check of `request` with `receipt` counts nothing, in the background: gives
    /// back what it consumed, or voids the receipt if it never ran. Retries (waiting out a
    /// reconnection) for up to [`GIVE_BACK_WITHIN`].
    ///
    /// At most [`MAX_GIVE_BACKS`] run at once; past that (a long outage with many checks in
    /// doubt) one is counted as failed at once and logged.
    pub fn give_back(&self, request: CheckRequest, receipt: Receipt) {
        match &self.backend {
            Backend::Master(store) => {
                let key = receipt.key_for(&request.hits);
                store.give_back(request, key);
            }
            Backend::Cluster(store) => store.give_back(&request, receipt),
        }
    }

    /// Whether a connection to Redis has ever been made (it may be being rebuilt now).
    pub fn is_connected(&self) -> bool {
        match &self.backend {
            Backend::Master(store) => store.is_connected(),
            Backend::Cluster(store) => store.is_connected(),
        }
    }

    /// Sends `PING` on the current connection (bounded by the response timeout); with a
    /// cluster, to every master, so it succeeds only when the whole key space can be served.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Master(store) => store.ping().await,
            Backend::Cluster(store) => store.ping().await,
        }
    }

    /// The address of the Redis in use, if connected to one master (never with a cluster).
    pub fn master_addr(&self) -> Option<String> {
        match &self.backend {
            Backend::Master(store) => store.master_addr(),
            Backend::Cluster(_) => None,
        }
    }

    /// The metrics this store counts into (shared with the HTTP side by [`crate::AppState`]).
    pub fn metrics(&self) -> &Arc<Metrics> {
        match &self.backend {
            Backend::Master(store) => store.metrics(),
            Backend::Cluster(store) => store.metrics(),
        }
    }
}

/// The store on one master (a single Redis, or the master Sentinel names): one connection,
/// rebuilt when the master moves.
#[derive(Clone)]
struct MasterStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MasterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let link = self.shared.link();
        f.debug_struct("CounterStore")
            .field("master", &link.addr)
            .field("generation", &link.generation)
            .finish_non_exhaustive()
    }
}

struct Shared {
    connector: Connector,
    metrics: Arc<Metrics>,
    script: CheckScript,
    /// The connection in use. A std lock: held only to clone or replace the handle, never
    /// across an `.await`.
    current: RwLock<Link>,
    /// Set while a rebuild task runs, so concurrent failures start only one.
    rebuilding: AtomicBool,
}

/// One connection and the generation that names it.
#[derive(Clone)]
struct Link {
    generation: u64,
    connection: Option<MultiplexedConnection>,
    addr: Option<Arc<str>>,
}

impl MasterStore {
    /// [`CounterStore::connect`] on one master.
    async fn connect(config: &RedisConfig, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let connector = Connector::new(config).map_err(StoreError::Config)?;
        let follows_failover = connector.follows_failover();
        let shared = Arc::new(Shared {
            connector,
            metrics,
            script: CheckScript::default(),
            current: RwLock::new(Link {
                generation: 0,
                connection: None,
                addr: None,
            }),
            rebuilding: AtomicBool::new(true),
        });
        match shared.open().await {
            Ok(link) => {
                tracing::info!(master = %link.1, "connected to redis");
                shared.install(link);
                shared.rebuilding.store(false, Ordering::Release);
            }
            Err(err) => {
                shared.count_error(&err);
                shared.log_connect_failure(&err, 0, "at start-up; retrying in the background");
                tokio::spawn(rebuild(Arc::downgrade(&shared)));
            }
        }
        if follows_failover {
            tokio::spawn(watch_master(Arc::downgrade(&shared)));
            let (sentinels, master) = shared.connector.announcers();
            for sentinel in sentinels {
                tokio::spawn(listen_switch_master(
                    Arc::downgrade(&shared),
                    sentinel.clone(),
                    master.to_owned(),
                ));
            }
        }
        Ok(Self { shared })
    }

    /// Checks and, if every hit is allowed, consumes the hits of a validated `request`, all or
    /// nothing, in one script run that also writes `receipt` when it consumes.
    async fn check(
        &self,
        request: &CheckRequest,
        receipt: &str,
    ) -> Result<CheckResponse, StoreError> {
        let (generation, mut connection) = self.connection()?;
        let reply: Result<Vec<i64>, RedisError> = self
            .shared
            .script
            .invocation(request, receipt, Mode::Check)
            .invoke_async(&mut connection)
            .await;
        let reply = reply.map_err(|err| self.failed(generation, err))?;
        decode_reply(request, &reply).map_err(|err| match err {
            ReplyError::Voided => StoreError::Voided,
            ReplyError::Malformed(text) => StoreError::Reply(text),
        })
    }

    /// [`CounterStore::give_back`] of the check of `request` whose receipt key is `receipt`,
    /// retrying on the current connection (waiting out a rebuild).
    fn give_back(&self, request: CheckRequest, receipt: String) {
        let store = self.clone();
        let key = receipt.clone();
        spawn_give_back(&self.shared.metrics, receipt, async move {
            store.settle(&request, &key).await
        });
    }

    async fn settle(&self, request: &CheckRequest, receipt: &str) -> GiveBackOutcome {
        retry_give_back(|| async {
            let (generation, mut connection) = self.connection().ok()?;
            let reply: Result<Vec<i64>, RedisError> = self
                .shared
                .script
                .invocation(request, receipt, Mode::GiveBack)
                .invoke_async(&mut connection)
                .await;
            match reply {
                Ok(reply) => Some(give_back_outcome(&reply)),
                Err(err) => {
                    self.failed(generation, err);
                    None
                }
            }
        })
        .await
    }

    fn is_connected(&self) -> bool {
        self.shared.link().connection.is_some()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let (generation, mut connection) = self.connection()?;
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .map_err(|err| self.failed(generation, err))
    }

    fn master_addr(&self) -> Option<String> {
        self.shared.link().addr.map(|a| a.to_string())
    }

    fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The connection to send on. While a rebuild runs, none: the connection in use is suspect,
    /// and a command that is never sent is known not to have run, while one sent on a dying
    /// connection leaves its fate open (and needs a give-back).
    fn connection(&self) -> Result<(u64, MultiplexedConnection), StoreError> {
        if self.shared.rebuilding.load(Ordering::Acquire) {
            return Err(StoreError::NotConnected);
        }
        let guard = self
            .shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match &guard.connection {
            Some(connection) => Ok((guard.generation, connection.clone())),
            None => Err(StoreError::NotConnected),
        }
    }

    /// Classifies `err` and, when the connection is suspect, starts a rebuild.
    ///
    /// `NOREPLICAS` starts none: the connection is fine and the sentinels still name this
    /// master; the watch and `+switch-master` move limitd once they name another.
    fn failed(&self, generation: u64, err: RedisError) -> StoreError {
        self.shared.count_error(&err);
        let no_replicas = is_no_replicas(&err);
        let err = StoreError::from(err);
        if err.is_transient() && !no_replicas {
            self.shared.request_rebuild(generation, &err);
        }
        err
    }
}

impl Shared {
    fn link(&self) -> Link {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Connects to the current master and loads the script there. A `PING` goes first: Redis
    /// answers an unauthenticated client's over-16 KiB request (the script) with a protocol
    /// error, where the `PING` gets the `NOAUTH` that names the real problem.
    async fn open(&self) -> Result<(MultiplexedConnection, String), RedisError> {
        let (mut connection, addr) = self.connector.connect().await?;
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await?;
        self.script.load().load_async(&mut connection).await?;
        Ok((connection, addr))
    }

    fn count_error(&self, err: &RedisError) {
        self.metrics.redis_error(classify(err));
    }

    /// Logs a failed connection attempt. A refused password is an error with the variables to
    /// check (only a configuration change fixes it); anything else a warning.
    fn log_connect_failure(&self, err: &RedisError, attempts: u32, when: &str) {
        if is_auth_error(err) {
            let hint = self.connector.auth_hint();
            tracing::error!(error = %err, attempts, hint, "redis refused authentication {when}");
        } else {
            tracing::warn!(error = %err, attempts, "redis unreachable {when}");
        }
    }

    /// Swaps in a new connection. Every connection after the first counts as a reconnect, and
    /// as a failover when its address differs from the previous one.
    fn install(&self, (connection, addr): (MultiplexedConnection, String)) {
        let previous = {
            let mut guard = self.current.write().unwrap_or_else(PoisonError::into_inner);
            guard.generation += 1;
            guard.connection = Some(connection);
            guard.addr.replace(Arc::from(addr.as_str()))
        };
        if let Some(previous) = previous {
            let moved = *previous != *addr;
            if moved {
                tracing::warn!(from = %previous, to = %addr, "redis master moved");
            }
            self.metrics.reconnected(moved);
        }
    }

    /// Starts a rebuild unless one is running or `generation` has already been replaced.
    fn request_rebuild(self: &Arc<Self>, generation: u64, reason: &dyn std::fmt::Display) {
        if self.link().generation != generation {
            return;
        }
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        // A rebuild may have finished between the two checks above.
        if self.link().generation != generation {
            self.rebuilding.store(false, Ordering::Release);
            return;
        }
        tracing::warn!(%reason, generation, "redis connection failed; reconnecting to the current master");
        tokio::spawn(rebuild(Arc::downgrade(self)));
    }
}

/// Reconnects until it succeeds, then clears the rebuilding flag. Holds only a weak reference
/// between attempts, so a dropped store ends the task.
async fn rebuild(shared: Weak<Shared>) {
    let mut backoff = REBUILD_BACKOFF_START;
    let mut attempts = 0u32;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        attempts += 1;
        match strong.open().await {
            Ok(link) => {
                tracing::info!(master = %link.1, attempts, "reconnected to redis");
                strong.install(link);
                strong.rebuilding.store(false, Ordering::Release);
                return;
            }
            Err(err) => {
                strong.count_error(&err);
                // One line per attempt would flood the log in a long outage.
                if attempts == 1 || attempts.is_multiple_of(10) {
                    strong.log_connect_failure(&err, attempts, "reconnecting; retrying");
                }
            }
        }
        drop(strong);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(REBUILD_BACKOFF_MAX);
    }
}

/// The master a `+switch-master` announcement moves to, if it is `master`'s.
/// The message is `<master name> <old ip> <old port> <new ip> <new port>`.
pub fn switched_to(message: &str, master: &str) -> Option<String> {
    let parts: Vec<&str> = message.split_whitespace().collect();
    match parts[..] {
        [name, _, _, ip, port] if name == master => Some(format!("{ip}:{port}")),
        _ => None,
    }
}

/// With Sentinel: listens on one sentinel for `+switch-master` and rebuilds at
/// once when it names our master; reconnects (with backoff) when the sentinel
/// goes away. The poll in [`watch_master`] covers the time it is away.
async fn listen_switch_master(shared: Weak<Shared>, sentinel: redis::Client, master: String) {
    let mut backoff = REBUILD_BACKOFF_START;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let timeout = strong.connector.connection_config_timeout();
        drop(strong);
        let subscribed = tokio::time::timeout(timeout, async {
            let mut pubsub = sentinel.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, RedisError>(pubsub)
        })
        .await;
        match subscribed {
            Ok(Ok(pubsub)) => {
                backoff = REBUILD_BACKOFF_START;
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Some(strong) = shared.upgrade() else {
                        return;
                    };
                    let payload: String = message.get_payload().unwrap_or_default();
                    if let Some(new_master) = switched_to(&payload, &master) {
                        let link = strong.link();
                        if link.addr.as_deref() != Some(new_master.as_str()) {
                            let reason = format!(
                                "+switch-master: the sentinels moved {master} to {new_master}"
                            );
                            strong.request_rebuild(link.generation, &reason);
                        }
                    }
                }
                tracing::debug!(sentinel = %sentinel.get_connection_info().addr(), "+switch-master subscription ended; resubscribing");
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, sentinel = %sentinel.get_connection_info().addr(), "cannot subscribe to +switch-master")
            }
            Err(_) => {
                tracing::debug!(sentinel = %sentinel.get_connection_info().addr(), "timed out subscribing to +switch-master")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(REBUILD_BACKOFF_MAX);
    }
}

/// With Sentinel: rebuilds when the sentinels name a master other than the connected one.
async fn watch_master(shared: Weak<Shared>) {
    let Some(poll) = shared.upgrade().map(|s| s.connector.master_poll()) else {
        return;
    };
    let mut interval = tokio::time::interval(poll);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if strong.rebuilding.load(Ordering::Acquire) {
            continue;
        }
        let link = strong.link();
        let Some(connected) = link.addr else { continue };
        match strong.connector.master().await {
            Ok(client) => {
                let master = client.get_connection_info().addr().to_string();
                if *master != *connected {
                    let reason =
                        format!("sentinels name {master} as master, connected to {connected}");
                    strong.request_rebuild(link.generation, &reason);
                }
            }
            // Errors here are the sentinels' or the master's; requests see their own.
            Err(err) => {
                strong.count_error(&err);
                tracing::debug!(error = %err, "master watch: resolution failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_master_announcements_name_the_new_master() {
        let message = "mymaster 127.0.0.1 6379 127.0.0.1 6380";
        assert_eq!(
            switched_to(message, "mymaster").as_deref(),
            Some("127.0.0.1:6380")
        );
        assert_eq!(switched_to(message, "other"), None);
        assert_eq!(switched_to("mymaster 1 2 3", "mymaster"), None);
        assert_eq!(switched_to("", "mymaster"), None);
    }
}
