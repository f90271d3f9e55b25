//! Opens connections to the Redis that holds the counters: a fixed address, or the current
//! master as Redis Sentinel reports it.
//!
//! redis-rs does not follow a failover by itself (a `MultiplexedConnection` is pinned to one
//! address; redis-rs issue #1438), so every new connection made here resolves the master
//! afresh. [`crate::store`] decides when a new connection is needed.
//!
//! Passwords: `REDIS_PASSWORD` goes to the data nodes only (the master, and the `ROLE` check
//! redis-rs makes on it during resolution); `SENTINEL_PASSWORD` to the sentinels only. They are
//! separate because Redis refuses an `AUTH` sent to a server without a password ("AUTH called
//! without any password configured"), so one password for both broke the common set-up of
//! protected data nodes behind unauthenticated sentinels.
//!
//! Timeouts: every connection limitd opens to a data node carries the configured connect and
//! response timeouts. redis-rs' sentinel connections, and its `ROLE` check of the master, use
//! redis-rs' defaults (1 s connect, 500 ms response), which it does not let us change; the
//! whole resolution is therefore bounded by `resolve_timeout` as well.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, RedisError};
use tokio::sync::Mutex;

use crate::config::{RedisConfig, RedisTarget};

/// Makes connections to the current Redis master.
pub struct Connector {
    target: Target,
    /// With Sentinel: each sentinel's address (with its password) and the
    /// master name, for listening to `+switch-master`.
    announcers: Vec<redis::ConnectionInfo>,
    master_name: String,
    /// How often the sentinels are asked for the master.
    master_poll: Duration,
    connection: AsyncConnectionConfig,
    /// Bound on one master resolution through the sentinels (several round trips).
    resolve_timeout: Duration,
}

enum Target {
    Single(Client),
    /// `SentinelClient`'s methods take `&mut self` (it caches sentinel connections), hence
    /// the lock. A tokio mutex because the resolution awaits while holding it; only the one
    /// rebuild in flight and the master watch take it, never a request.
    Sentinel(Mutex<SentinelClient>),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.target {
            Target::Single(_) => "single",
            Target::Sentinel(_) => "sentinel",
        };
        f.debug_struct("Connector")
            .field("target", &kind)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Prepares connections as `config` says; contacts no server yet.
    pub fn new(config: &RedisConfig) -> Result<Self, RedisError> {
        let mut announcers = Vec::new();
        let mut master_name = String::new();
        let target = match &config.target {
            RedisTarget::Single { url } => {
                let mut info = url.as_str().into_connection_info()?;
                if let Some(password) = &config.password {
                    if info.redis_settings().password().is_none() {
                        let settings = info.redis_settings().clone().set_password(password);
                        info = info.set_redis_settings(settings);
                    }
                }
                Target::Single(Client::open(info)?)
            }
            RedisTarget::Sentinel { sentinels, master } => {
                for (host, port) in sentinels {
                    let mut info =
                        ConnectionAddr::Tcp(host.clone(), *port).into_connection_info()?;
                    if let Some(password) = &config.sentinel_password {
                        let settings = info.redis_settings().clone().set_password(password);
                        info = info.set_redis_settings(settings);
                    }
                    announcers.push(info);
                }
                master_name.clone_from(master);
                let addrs = sentinels
                    .iter()
                    .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
                let mut builder =
                    SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?;
                if let Some(password) = &config.password {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(password) = &config.sentinel_password {
                    builder = builder.set_client_to_sentinel_password(password);
                }
                Target::Sentinel(Mutex::new(builder.build()?))
            }
        };
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout));
        // The sentinels are asked concurrently (redis-rs asks a few at once), then the master
        // named is connected to and asked `ROLE`: a few round trips, each bounded by the
        // timeouts (redis-rs' own defaults, 1 s / 500 ms, for its sentinel connections).
        let resolve_timeout =
            Duration::from_secs(2) + 2 * (config.connect_timeout + config.response_timeout);
        Ok(Self {
            target,
            announcers,
            master_name,
            master_poll: config.master_poll,
            connection,
            resolve_timeout,
        })
    }

    /// The address of the master as the sentinels report it now (after checking it answers
    /// `ROLE master`), or of the single Redis.
    pub async fn master(&self) -> Result<Client, RedisError> {
        match &self.target {
            Target::Single(client) => Ok(client.clone()),
            Target::Sentinel(sentinel) => {
                let resolve = async { sentinel.lock().await.async_get_client().await };
                match tokio::time::timeout(self.resolve_timeout, resolve).await {
                    Ok(result) => result,
                    // Dropping the resolution is safe: redis-rs caches only sentinel
                    // connections it has verified.
                    // An I/O `TimedOut`, so it is classified as a timeout like any other.
                    Err(_) => Err(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "timed out resolving the master through Sentinel",
                    ))),
                }
            }
        }
    }

    /// Resolves the master and opens a multiplexed connection to it, with the configured
    /// connection and response timeouts. Returns the connection and the master's address.
    pub async fn connect(&self) -> Result<(MultiplexedConnection, String), RedisError> {
        let client = self.master().await?;
        let addr = client.get_connection_info().addr().to_string();
        let connection = client
            .get_multiplexed_async_connection_with_config(&self.connection)
            .await?;
        Ok((connection, addr))
    }
    /// The sentinels to listen to for `+switch-master`, and the master name.
    pub fn announcers(&self) -> (&[redis::ConnectionInfo], &str) {
        (&self.announcers, &self.master_name)
    }

    /// How often to ask the sentinels for the master.
    pub fn master_poll(&self) -> Duration {
        self.master_poll
    }

    /// How long connecting to a sentinel and subscribing may take.
    pub fn connection_config_timeout(&self) -> Duration {
        self.resolve_timeout
    }

    /// Which settings to check when Redis refuses authentication.
    pub fn auth_hint(&self) -> &'static str {
        match self.target {
            Target::Single(_) => "check REDIS_PASSWORD (or the password in REDIS_URL)",
            Target::Sentinel(_) => {
                "check REDIS_PASSWORD (data nodes) and SENTINEL_PASSWORD (sentinels)"
            }
        }
    }

    /// Whether the master can move (Sentinel), so it is worth watching.
    pub fn follows_failover(&self) -> bool {
        matches!(self.target, Target::Sentinel(_))
    }
}
