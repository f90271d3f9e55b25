//! The counter store on a Redis Cluster: checks whose keys live in several slots, and the
//! cluster client that finds them.
//!
//! # The client
//!
//! redis-rs' own cluster client (`redis::cluster_async`), not one of ours: it learns the slot map
//! from the seed nodes (`REDIS_CLUSTER_NODES`), routes each script run to the master of its
//! slot, follows `MOVED` and `ASK`, and refreshes the slot map on `MOVED`, on `READONLY` and when
//! a node cannot be reached, so a master the cluster replaced by its replica is left without a
//! restart. Every command carries the configured connect timeout (per connection) and response
//! timeout (per command, *including* the redirects and retries the client makes), so during a
//! failover a check fails within `REDIS_RESPONSE_TIMEOUT_MS` and the filter's failure mode
//! answers it. Retries wait [`RETRY_WAIT_MIN`] to [`RETRY_WAIT_MAX`] (the crate's default waits
//! start at 1.28 s, longer than any response timeout worth having).
//!
//! The client may resend a command after its connection dropped, so a check may run twice with
//! one receipt: the second run finds the receipt and answers "voided" although the first run
//! counted. So a voided answer is given back here (the give-back returns what the first run
//! counted, or finds the receipt settled): a check reported as an error never stays counted.
//!
//! # One slot: one script run
//!
//! A check whose hits all hash to one slot (the common single-rule check, and any check whose
//! keys share a hash tag, see [`crate::keys`]) is one run of the check script, one round trip, as
//! with a single master: same script, same receipt, same give-back.
//!
//! # Several slots: reserve per slot, give back on failure
//!
//! One script cannot span slots (`CROSSSLOT`), so the hits are grouped by slot, in the order
//! they come, and each group is checked by its own run of the same script, all groups at once
//! (one round trip when every group is allowed). Each run writes its own receipt in its slot
//! (the receipt id of the check and the group's first key: [`crate::store::Receipt::key_for`]).
//! The check is allowed if and only if every group is. When any group is denied or fails, every
//! group that was charged is given back (the script's give-back mode with that group's receipt)
//! before the answer goes out, each counted in `limitd_give_backs_total` by what it found
//! (`returned`: the receipt was there and the group's charge is undone). The guarantee, exactly:
//!
//! - **No over-admission.** Each group's run checks and charges its counters atomically, against
//!   every unit charged at that moment, including units of other checks that will be given back.
//!   So no counter ever holds more than its limit allows, and the checks answered allowed never
//!   consume more than the limit of any key in any window (fixed window, sliding window, GCRA),
//!   exactly as with one script.
//! - **All or nothing, once answered.** A check answered allowed consumed every hit. A check
//!   answered denied (or with an error) consumes none of its hits from the moment its answer is
//!   sent: its charged groups were given back before. Only if that give-back cannot reach Redis
//!   (the master of a charged slot died in between) is it retried in the background for up to
//!   [`crate::store::GIVE_BACK_WITHIN`], as the give-back of a lost answer is, and counted in
//!   `limitd_give_backs_total` (`failed` if it never succeeds).
//! - **Bounded under-admission.** Between a group's charge and its give-back (the check's round
//!   trip plus the give-back's, each bounded by `REDIS_RESPONSE_TIMEOUT_MS`), a concurrent check
//!   of that key sees the charge: it may be denied for units that are then given back. At most
//!   the cost (and lease) of each multi-slot check in flight that another slot denies, for at
//!   most that time. No isolation either: a reader between the runs may see some groups of a
//!   check charged and others not yet.
//! - **Time.** Each group runs on its slot's master and takes that master's `TIME`: windows of
//!   keys on different masters are aligned to different clocks. Each key's own guarantee holds
//!   on its own clock.
//!
//! Shadow hits keep their meaning: a shadow hit counts only when its check is allowed. A group of
//! shadow hits alone is always allowed by its run (which charges the shadow hits that fit), and
//! given back with the others when the check is denied. Leases too: each group grants its hits'
//! leases in its own run; a denied check returns them with the costs and reports no lease.
//!
//! A denied check's answer describes the counters as they are after the give-back: a hit whose
//! group was given back reports its `remaining` with the units returned (its `reset_ms` is the
//! one seen while charged: for gcra an upper bound).

use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use protocol::{CheckRequest, CheckResponse, Hit};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisError, TlsCertificates};

use crate::config::{RedisConfig, RedisTarget};
use crate::errors::{classify, is_auth_error, StoreError};
use crate::keys::counter_key;
use crate::metrics::{GiveBackOutcome, Metrics};
use crate::script::{decode_reply, CheckScript, Mode, ReplyError};
use crate::store::{give_back_outcome, retry_give_back, spawn_give_back, Receipt};

/// How many times the cluster client retries a command (redirects included) within its
/// response timeout.
pub const RETRIES: u32 = 4;
/// The shortest wait before a retry (after `TRYAGAIN`, `CLUSTERDOWN`, a node not found).
pub const RETRY_WAIT_MIN: Duration = Duration::from_millis(10);
/// The longest wait before a retry.
pub const RETRY_WAIT_MAX: Duration = Duration::from_millis(100);

const CONNECT_BACKOFF_START: Duration = Duration::from_millis(50);
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The hits of `hits` grouped by the cluster slot of their counter key, as indices into `hits`:
/// groups in the order of their first hit, hits in their order within each group.
pub fn slot_groups(hits: &[Hit]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (i, hit) in hits.iter().enumerate() {
        let slot = Slot::for_key(counter_key(hit));
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, group)) => group.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

/// The answer to a check of `request` from the answers of its slot groups (`groups` as
/// [`slot_groups`] made them, `answers` in the same order): allowed if every group is. If not,
/// the groups that were allowed have been given back, so their hits report the units returned
/// and no lease.
pub fn combine(
    request: &CheckRequest,
    groups: &[Vec<usize>],
    answers: Vec<CheckResponse>,
) -> CheckResponse {
    let allowed = answers.iter().all(|a| a.allowed);
    let mut hits = vec![None; request.hits.len()];
    for (group, answer) in groups.iter().zip(answers) {
        let given_back = !allowed && answer.allowed;
        // What the group charged to each counter: hits repeating a key share it, and each
        // reports the counter as all of them left it.
        let mut returned: Vec<(String, u64)> = Vec::new();
        if given_back {
            for (&i, result) in group.iter().zip(&answer.hits) {
                let hit = &request.hits[i];
                let charged = if result.allowed { hit.cost } else { 0 } + result.leased;
                let key = counter_key(hit);
                match returned.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, units)) => *units = units.saturating_add(charged),
                    None => returned.push((key, charged)),
                }
            }
        }
        for (&i, mut result) in group.iter().zip(answer.hits) {
            if given_back {
                let key = counter_key(&request.hits[i]);
                let units = returned
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or(0, |(_, units)| *units);
                result.remaining = result.remaining.saturating_add(units);
                result.leased = 0;
                result.lease_ms = 0;
            }
            hits[i] = Some(result);
        }
    }
    CheckResponse {
        allowed,
        hits: hits.into_iter().flatten().collect(),
    }
}

/// How many times [`ClusterStore::ping`] asks for the slot map and pings its masters before it
/// reports the cluster not ready.
pub const READY_ATTEMPTS: usize = 3;

/// The distinct `(host, port)` of the master of each slot range in a `CLUSTER SLOTS` reply
/// (`[[start, end, [host, port, id…], replicas…], …]`); entries of another shape are skipped.
pub fn masters_of(slots: &redis::Value) -> Vec<(String, u16)> {
    use redis::Value;
    let mut masters: Vec<(String, u16)> = Vec::new();
    let Value::Array(ranges) = slots else {
        return masters;
    };
    for range in ranges {
        let Value::Array(fields) = range else {
            continue;
        };
        let Some(Value::Array(master)) = fields.get(2) else {
            continue;
        };
        let host = match master.first() {
            Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
            Some(Value::SimpleString(host)) => host.clone(),
            _ => continue,
        };
        let Some(Value::Int(port)) = master.get(1) else {
            continue;
        };
        let Ok(port) = u16::try_from(*port) else {
            continue;
        };
        if !masters.iter().any(|(h, p)| *h == host && *p == port) {
            masters.push((host, port));
        }
    }
    masters
}

/// The hits of `request` at `indices`, as a check of their own.
fn subset(request: &CheckRequest, indices: &[usize]) -> CheckRequest {
    CheckRequest {
        hits: indices.iter().map(|&i| request.hits[i].clone()).collect(),
    }
}

/// The counter store on a Redis Cluster; cheap to clone.
#[derive(Clone)]
pub struct ClusterStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterStore")
            .field("cluster", &self.shared.seeds)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

struct Shared {
    client: ClusterClient,
    /// The seed nodes, for logs.
    seeds: String,
    metrics: Arc<Metrics>,
    script: CheckScript,
    /// The cluster connection, once made. A std lock: held only to clone the handle (the
    /// connection itself follows the cluster's topology from then on).
    connection: RwLock<Option<ClusterConnection>>,
}

/// The cluster client for `config` (whose target is a cluster), with its timeouts, retries,
/// password and TLS.
fn client(config: &RedisConfig, nodes: &[(String, u16)]) -> Result<ClusterClient, RedisError> {
    let mut seeds = Vec::with_capacity(nodes.len());
    for (host, port) in nodes {
        let addr = if config.tls {
            ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.clone(), *port)
        };
        seeds.push(addr.into_connection_info()?);
    }
    let mut builder = ClusterClientBuilder::new(seeds)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.response_timeout)
        .retries(RETRIES)
        .min_retry_wait(u64::try_from(RETRY_WAIT_MIN.as_millis()).unwrap_or(u64::MAX))
        .max_retry_wait(u64::try_from(RETRY_WAIT_MAX.as_millis()).unwrap_or(u64::MAX));
    if let Some(password) = &config.password {
        builder = builder.password(password);
    }
    if let Some(ca) = &config.tls_ca {
        builder = builder.certs(TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.clone()),
        });
    }
    builder.build()
}

impl ClusterStore {
    /// Prepares the cluster client and tries to connect once; if no seed node answers, the
    /// store is still returned and a background task keeps trying (checks answer
    /// [`StoreError::NotConnected`] meanwhile). Fails only on a configuration redis-rs refuses.
    pub async fn connect(config: &RedisConfig, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let RedisTarget::Cluster { nodes } = &config.target else {
            return Err(StoreError::Config(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "not a cluster configuration",
            ))));
        };
        let client = client(config, nodes).map_err(StoreError::Config)?;
        let shared = Arc::new(Shared {
            client,
            seeds: config.target.to_string(),
            metrics,
            script: CheckScript::default(),
            connection: RwLock::new(None),
        });
        match shared.open().await {
            Ok(connection) => shared.install(connection),
            Err(err) => {
                shared.count_error(&err);
                shared.log_connect_failure(&err, 0, "at start-up; retrying in the background");
                tokio::spawn(connect_until_done(Arc::downgrade(&shared)));
            }
        }
        Ok(Self { shared })
    }

    /// [`crate::CounterStore::check`] on the cluster: one script run if every hit is in one
    /// slot, else one per slot group, given back unless all are allowed (see the module's
    /// documentation).
    pub async fn check(
        &self,
        request: &CheckRequest,
        receipt: Receipt,
    ) -> Result<CheckResponse, StoreError> {
        let connection = self.connection()?;
        let groups = slot_groups(&request.hits);
        if groups.len() <= 1 {
            return self.run(connection, request, receipt).await;
        }
        let subsets: Vec<CheckRequest> = groups.iter().map(|g| subset(request, g)).collect();
        let results = join_all(
            subsets
                .iter()
                .map(|group| self.run(connection.clone(), group, receipt)),
        )
        .await;
        if results.iter().all(|r| matches!(r, Ok(a) if a.allowed)) {
            let answers = results.into_iter().flatten().collect();
            return Ok(combine(request, &groups, answers));
        }
        let charged: Vec<&CheckRequest> = subsets
            .iter()
            .zip(&results)
            .filter(|(_, result)| matches!(result, Ok(a) if a.allowed))
            .map(|(group, _)| group)
            .collect();
        self.undo(&connection, &charged, receipt).await;
        let mut answers = Vec::with_capacity(results.len());
        let mut failure: Option<StoreError> = None;
        for result in results {
            match result {
                Ok(answer) => answers.push(answer),
                // The caller gives the whole check back if any group may have run unseen: keep
                // the error that says so.
                Err(err) => {
                    if failure.as_ref().is_none_or(|f| !f.may_have_run()) {
                        failure = Some(err);
                    }
                }
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(combine(request, &groups, answers)),
        }
    }

    /// One run of the check script over `group` (a whole check, or one slot's hits of it).
    async fn run(
        &self,
        mut connection: ClusterConnection,
        group: &CheckRequest,
        receipt: Receipt,
    ) -> Result<CheckResponse, StoreError> {
        let key = receipt.key_for(&group.hits);
        let reply: Result<Vec<i64>, RedisError> = self
            .shared
            .script
            .invocation(group, &key, Mode::Check)
            .invoke_async(&mut connection)
            .await;
        let reply = reply.map_err(|err| self.shared.failed(err))?;
        decode_reply(group, &reply).map_err(|err| match err {
            ReplyError::Voided => {
                // Possibly our own earlier run of this very check, resent by the client after
                // its connection dropped: give back whatever that run counted.
                self.give_back_group(group.clone(), key);
                StoreError::Voided
            }
            ReplyError::Malformed(text) => StoreError::Reply(text),
        })
    }

    /// Gives back the charged `groups` of a check now, all at once, each counted in
    /// `limitd_give_backs_total` by what it found; any that cannot be given back now is given
    /// back in the background (as a lost answer is, and counted when it ends).
    async fn undo(
        &self,
        connection: &ClusterConnection,
        groups: &[&CheckRequest],
        receipt: Receipt,
    ) {
        let outcomes = join_all(groups.iter().map(|group| async move {
            let key = receipt.key_for(&group.hits);
            let reply: Result<Vec<i64>, RedisError> = self
                .shared
                .script
                .invocation(group, &key, Mode::GiveBack)
                .invoke_async(&mut connection.clone())
                .await;
            match reply {
                Ok(reply) => {
                    self.shared
                        .metrics
                        .give_back_done(give_back_outcome(&reply));
                    None
                }
                Err(err) => {
                    self.shared.failed(err);
                    Some(((*group).clone(), key))
                }
            }
        }))
        .await;
        for (group, key) in outcomes.into_iter().flatten() {
            self.give_back_group(group, key);
        }
    }

    /// [`crate::CounterStore::give_back`] on the cluster: every slot group of the check, each
    /// with its own receipt.
    pub fn give_back(&self, request: &CheckRequest, receipt: Receipt) {
        for group in slot_groups(&request.hits) {
            let group = subset(request, &group);
            let key = receipt.key_for(&group.hits);
            self.give_back_group(group, key);
        }
    }

    /// Gives back, in the background, the run of the check script over `group` with the
    /// receipt key `key`; retries for up to [`crate::store::GIVE_BACK_WITHIN`].
    fn give_back_group(&self, group: CheckRequest, key: String) {
        let store = self.clone();
        let receipt = key.clone();
        spawn_give_back(&self.shared.metrics, key, async move {
            store.settle(&group, &receipt).await
        });
    }

    async fn settle(&self, group: &CheckRequest, key: &str) -> GiveBackOutcome {
        retry_give_back(|| async {
            let mut connection = self.connection().ok()?;
            let reply: Result<Vec<i64>, RedisError> = self
                .shared
                .script
                .invocation(group, key, Mode::GiveBack)
                .invoke_async(&mut connection)
                .await;
            match reply {
                Ok(reply) => Some(give_back_outcome(&reply)),
                Err(err) => {
                    self.shared.failed(err);
                    None
                }
            }
        })
        .await
    }

    /// Whether the cluster connection has been made.
    pub fn is_connected(&self) -> bool {
        self.shared
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Ready only if the whole key space can be served: asks a node for the masters of every
    /// slot (`CLUSTER SLOTS`), then `PING`s each of them at its own address. (A plain `PING` fans
    /// out to the masters but falls back to a replica where a master is unreachable, so it
    /// answers while the slots of a dead master cannot be written.) A master that does not
    /// answer also makes the client refresh its slot map.
    ///
    /// Right after a failover the node asked may be the dead master itself, still among the
    /// client's connections, or one whose view of the slots is a moment old: the check is made
    /// again from another node, up to [`READY_ATTEMPTS`] times, before it reports not ready.
    /// A master that is really down fails every attempt.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut last = Err(StoreError::NotConnected);
        for _ in 0..READY_ATTEMPTS {
            last = self.ping_once().await;
            if last.is_ok() {
                break;
            }
        }
        last
    }

    async fn ping_once(&self) -> Result<(), StoreError> {
        let mut connection = self.connection()?;
        let slots = connection
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(|err| self.shared.failed(err))?;
        let masters = masters_of(&slots);
        if masters.is_empty() {
            return Err(StoreError::Reply(format!(
                "CLUSTER SLOTS names no master: {slots:?}"
            )));
        }
        for (host, port) in masters {
            connection
                .route_command(
                    redis::cmd("PING"),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
                )
                .await
                .map_err(|err| self.shared.failed(err))?;
        }
        Ok(())
    }

    /// The metrics this store counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    fn connection(&self) -> Result<ClusterConnection, StoreError> {
        self.shared
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::NotConnected)
    }
}

impl Shared {
    /// Connects to the cluster (learning its slot map) and loads the script on every node. A
    /// node that cannot take the script now is not fatal: the script is loaded again where
    /// `NOSCRIPT` says it is missing.
    async fn open(&self) -> Result<ClusterConnection, RedisError> {
        let mut connection = self.client.get_async_connection().await?;
        if let Err(err) = self.script.load().load_async(&mut connection).await {
            self.count_error(&err);
            tracing::warn!(error = %err, "could not load the check script on every cluster node");
        }
        Ok(connection)
    }

    fn install(&self, connection: ClusterConnection) {
        tracing::info!(cluster = %self.seeds, "connected to redis cluster");
        *self
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(connection);
    }

    /// Counts `err`; the cluster client itself refreshes its slot map and reconnects.
    fn failed(&self, err: RedisError) -> StoreError {
        self.count_error(&err);
        StoreError::from(err)
    }

    fn count_error(&self, err: &RedisError) {
        self.metrics.redis_error(classify(err));
    }

    fn log_connect_failure(&self, err: &RedisError, attempts: u32, when: &str) {
        if is_auth_error(err) {
            tracing::error!(error = %err, attempts, hint = "check REDIS_PASSWORD", "redis cluster refused authentication {when}");
        } else {
            tracing::warn!(error = %err, attempts, cluster = %self.seeds, "redis cluster unreachable {when}");
        }
    }
}

/// Connects until it succeeds. Holds only a weak reference between attempts, so a dropped
/// store ends the task.
async fn connect_until_done(shared: Weak<Shared>) {
    let mut backoff = CONNECT_BACKOFF_START;
    let mut attempts = 0u32;
    loop {
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
        let Some(strong) = shared.upgrade() else {
            return;
        };
        attempts += 1;
        match strong.open().await {
            Ok(connection) => {
                strong.install(connection);
                return;
            }
            Err(err) => {
                strong.count_error(&err);
                if attempts.is_multiple_of(10) {
                    strong.log_connect_failure(&err, attempts, "connecting; retrying");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Algorithm, HitResult};

    fn hit(key: &str) -> Hit {
        Hit {
            key: key.into(),
            limit: 10,
            window_ms: 1000,
            cost: 2,
            algorithm: Algorithm::FixedWindow,
            burst: None,
            shadow: false,
            lease: 0,
        }
    }

    fn result(allowed: bool, remaining: u64, leased: u64) -> HitResult {
        HitResult {
            allowed,
            limit: 10,
            remaining,
            reset_ms: 500,
            retry_after_ms: if allowed { 0 } else { 500 },
            leased,
            lease_ms: if leased > 0 { 500 } else { 0 },
        }
    }

    #[test]
    fn hits_are_grouped_by_slot_in_order() {
        // "a" and "b" hash to different slots (15495 and 3300), "a" twice to one.
        let a = Slot::for_key(counter_key(&hit("a")));
        let b = Slot::for_key(counter_key(&hit("b")));
        assert_ne!(a, b);
        let mut gcra = hit("a");
        gcra.algorithm = Algorithm::Gcra;
        let hits = [hit("a"), hit("b"), gcra, hit("a")];
        assert_eq!(slot_groups(&hits), vec![vec![0, 2, 3], vec![1]]);
        assert_eq!(slot_groups(&hits[..1]), vec![vec![0]]);
        assert!(slot_groups(&[]).is_empty());
    }

    #[test]
    fn the_masters_of_cluster_slots_are_listed_once_each() {
        use redis::Value;
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |start: i64, end: i64, master: Value, replica: Value| {
            Value::Array(vec![Value::Int(start), Value::Int(end), master, replica])
        };
        let slots = Value::Array(vec![
            range(0, 5460, node("10.0.0.1", 7000), node("10.0.0.4", 7003)),
            range(5461, 10922, node("10.0.0.2", 7001), node("10.0.0.5", 7004)),
            range(10923, 16000, node("10.0.0.1", 7000), node("10.0.0.4", 7003)),
            Value::Int(3),
        ]);
        assert_eq!(
            masters_of(&slots),
            vec![("10.0.0.1".to_owned(), 7000), ("10.0.0.2".to_owned(), 7001)]
        );
        assert!(masters_of(&Value::Nil).is_empty());
    }

    #[test]
    fn a_hashed_key_is_grouped_by_its_hash_tag() {
        let long = "k".repeat(300);
        let groups = slot_groups(&[hit(&long), hit(&long)]);
        assert_eq!(groups, vec![vec![0, 1]]);
    }

    #[test]
    fn all_groups_allowed_is_allowed_in_the_order_of_the_hits() {
        let request = CheckRequest {
            hits: vec![hit("a"), hit("b"), hit("a")],
        };
        let groups = vec![vec![0, 2], vec![1]];
        let answers = vec![
            CheckResponse {
                allowed: true,
                hits: vec![result(true, 8, 0), result(true, 6, 0)],
            },
            CheckResponse {
                allowed: true,
                hits: vec![result(true, 4, 0)],
            },
        ];
        let combined = combine(&request, &groups, answers);
        assert!(combined.allowed);
        let remaining: Vec<u64> = combined.hits.iter().map(|h| h.remaining).collect();
        assert_eq!(remaining, [8, 4, 6]);
    }

    #[test]
    fn a_denied_group_denies_and_the_given_back_groups_report_their_units_returned() {
        let mut shadow = hit("a");
        shadow.shadow = true;
        let request = CheckRequest {
            hits: vec![hit("a"), hit("b"), shadow],
        };
        let groups = vec![vec![0, 2], vec![1]];
        let answers = vec![
            CheckResponse {
                allowed: true,
                // The first hit took a lease of 3 beside its cost of 2; the shadow hit, on the same
                // counter, did not fit.
                hits: vec![result(true, 3, 3), result(false, 3, 0)],
            },
            CheckResponse {
                allowed: false,
                hits: vec![result(false, 1, 0)],
            },
        ];
        let combined = combine(&request, &groups, answers);
        assert!(!combined.allowed);
        assert_eq!(combined.hits[0].remaining, 3 + 2 + 3);
        assert_eq!((combined.hits[0].leased, combined.hits[0].lease_ms), (0, 0));
        assert!(
            combined.hits[0].allowed,
            "it fitted, as a single script reports it"
        );
        assert_eq!(
            combined.hits[1],
            result(false, 1, 0),
            "the denied group as it was"
        );
        assert_eq!(
            combined.hits[2].remaining,
            3 + 2 + 3,
            "the shadow hit shares the first hit's counter, as that hit left it"
        );
    }

    #[test]
    fn hits_repeating_a_key_report_everything_their_group_returned() {
        let request = CheckRequest {
            hits: vec![hit("a"), hit("a"), hit("b")],
        };
        let groups = vec![vec![0, 1], vec![2]];
        let answers = vec![
            CheckResponse {
                allowed: true,
                // Both hits charged 2 to one counter, which they report as left at 6.
                hits: vec![result(true, 6, 0), result(true, 6, 0)],
            },
            CheckResponse {
                allowed: false,
                hits: vec![result(false, 0, 0)],
            },
        ];
        let combined = combine(&request, &groups, answers);
        assert!(!combined.allowed);
        assert_eq!(combined.hits[0].remaining, 10);
        assert_eq!(combined.hits[1].remaining, 10);
    }
}
