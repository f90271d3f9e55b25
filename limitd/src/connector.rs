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
//! Which master: every configured sentinel is asked at once, and limitd follows a master only
//! when a strict majority of the *configured* sentinels name the same address, so one sentinel
//! an attacker controls (or one that missed a failover) cannot redirect limitd and receive
//! `REDIS_PASSWORD`. `REDIS_MASTER_ALLOWLIST`, if set, bounds the addresses further. The master
//! named must then answer `ROLE` as a master. (redis-rs' `SentinelClient` takes the first
//! sentinel that answers, hence this resolution of our own, on redis-rs connections.)
//!
//! Timeouts: every connection limitd opens, to a sentinel or a data node, carries the
//! configured connect and response timeouts, and the whole resolution is bounded by
//! `resolve_timeout` as well.

use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError,
    TlsCertificates,
};

use crate::config::{RedisConfig, RedisTarget};

/// The address named by a strict majority of the configured sentinels (`named` has one entry
/// per configured sentinel: what it named, or `None` if it named nothing or did not answer).
fn majority(named: &[Option<(String, u16)>]) -> Option<(String, u16)> {
    named.iter().flatten().find_map(|candidate| {
        let votes = named
            .iter()
            .filter(|n| n.as_ref() == Some(candidate))
            .count();
        (votes * 2 > named.len()).then(|| candidate.clone())
    })
}

/// Makes connections to the current Redis master.
pub struct Connector {
    target: Target,
    /// With Sentinel: a client of each sentinel (with its password), for listening to
    /// `+switch-master`.
    announcers: Vec<Client>,
    master_name: String,
    /// How often the sentinels are asked for the master.
    master_poll: Duration,
    connection: AsyncConnectionConfig,
    /// Bound on one master resolution through the sentinels (several round trips).
    resolve_timeout: Duration,
    /// Bound on one connection and one command.
    connect_and_command: Duration,
}

enum Target {
    Single(Client),
    Sentinel(Sentinels),
}

/// The configured sentinels, asked together for the master.
struct Sentinels {
    /// One client per configured sentinel, with `SENTINEL_PASSWORD`.
    clients: Vec<Client>,
    master_name: String,
    /// `REDIS_PASSWORD`, for the master.
    password: Option<String>,
    /// `REDIS_MASTER_ALLOWLIST`.
    allowlist: Option<Vec<(String, u16)>>,
    /// TLS to the master, with these CAs (`None`: the system's roots).
    tls: Option<Option<Vec<u8>>>,
}

/// A client of `host:port` with `password`, over TLS if `tls` is set (trusting its CAs, or the
/// system's roots).
fn client_of(
    host: &str,
    port: u16,
    password: Option<&str>,
    tls: Option<&Option<Vec<u8>>>,
) -> Result<Client, RedisError> {
    let addr = match tls {
        None => ConnectionAddr::Tcp(host.to_owned(), port),
        Some(_) => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        },
    };
    let info = with_password(addr.into_connection_info()?, password);
    build(info, tls)
}

fn with_password(info: ConnectionInfo, password: Option<&str>) -> ConnectionInfo {
    match password {
        Some(password) if info.redis_settings().password().is_none() => {
            let settings = info.redis_settings().clone().set_password(password);
            info.set_redis_settings(settings)
        }
        _ => info,
    }
}

fn build(info: ConnectionInfo, tls: Option<&Option<Vec<u8>>>) -> Result<Client, RedisError> {
    match tls {
        Some(Some(ca)) => Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        ),
        _ => Client::open(info),
    }
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
        let tls = config.tls.then(|| config.tls_ca.clone());
        let target = match &config.target {
            RedisTarget::Single { url } => {
                let info = with_password(
                    url.as_str().into_connection_info()?,
                    config.password.as_deref(),
                );
                Target::Single(build(info, tls.as_ref())?)
            }
            RedisTarget::Sentinel { sentinels, master } => {
                let mut clients = Vec::new();
                for (host, port) in sentinels {
                    clients.push(client_of(
                        host,
                        *port,
                        config.sentinel_password.as_deref(),
                        tls.as_ref(),
                    )?);
                }
                announcers.clone_from(&clients);
                master_name.clone_from(master);
                Target::Sentinel(Sentinels {
                    clients,
                    master_name: master.clone(),
                    password: config.password.clone(),
                    allowlist: config.master_allowlist.clone(),
                    tls,
                })
            }
            // A cluster has no one master: `crate::cluster` reaches it.
            RedisTarget::Cluster { .. } => {
                return Err(RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "a Redis Cluster is not reached through one master",
                )))
            }
        };
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout));
        let connect_and_command = config.connect_timeout + config.response_timeout;
        let resolve_timeout = 2 * connect_and_command;
        Ok(Self {
            target,
            announcers,
            master_name,
            master_poll: config.master_poll,
            connection,
            resolve_timeout,
            connect_and_command,
        })
    }

    /// The master a majority of the sentinels name now (after checking it is allowed and answers
    /// `ROLE master`), or the single Redis.
    pub async fn master(&self) -> Result<Client, RedisError> {
        match &self.target {
            Target::Single(client) => Ok(client.clone()),
            Target::Sentinel(sentinels) => {
                match tokio::time::timeout(self.resolve_timeout, self.resolve(sentinels)).await {
                    Ok(result) => result,
                    // An I/O `TimedOut`, so it is classified as a timeout like any other.
                    Err(_) => Err(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "timed out resolving the master through Sentinel",
                    ))),
                }
            }
        }
    }

    async fn resolve(&self, sentinels: &Sentinels) -> Result<Client, RedisError> {
        let answers = join_all(
            sentinels
                .clients
                .iter()
                .map(|client| self.ask_sentinel(client, &sentinels.master_name)),
        )
        .await;
        let named: Vec<Option<(String, u16)>> = answers
            .iter()
            .map(|a| a.as_ref().ok().cloned().flatten())
            .collect();
        let Some((host, port)) = majority(&named) else {
            let seen: Vec<String> = sentinels
                .clients
                .iter()
                .zip(&answers)
                .map(|(client, answer)| {
                    let said = match answer {
                        Ok(Some((host, port))) => format!("{host}:{port}"),
                        Ok(None) => "no such master".to_owned(),
                        Err(e) => format!("error: {e}"),
                    };
                    format!("{} says {said}", client.get_connection_info().addr())
                })
                .collect();
            // A refused password is the sentinels' answer that says what to fix: report it as
            // such, so it is counted and logged as an authentication error.
            if let Some(Err(refused)) = answers
                .into_iter()
                .find(|a| a.as_ref().is_err_and(crate::store::is_auth_error))
            {
                return Err(refused);
            }
            return Err(RedisError::from(std::io::Error::other(format!(
                "no majority of the {} configured sentinels names one master for {:?} ({})",
                sentinels.clients.len(),
                sentinels.master_name,
                seen.join("; ")
            ))));
        };
        if let Some(allowed) = &sentinels.allowlist {
            if !allowed.iter().any(|(h, p)| *h == host && *p == port) {
                return Err(RedisError::from(std::io::Error::other(format!(
                    "the sentinels name {host}:{port} as master, which REDIS_MASTER_ALLOWLIST \
                     does not list: not connecting to it"
                ))));
            }
        }
        let client = client_of(
            &host,
            port,
            sentinels.password.as_deref(),
            sentinels.tls.as_ref(),
        )?;
        // A sentinel's view can lag a failover: only a master that says so is followed.
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&self.connection)
            .await?;
        let role: redis::Value = redis::cmd("ROLE").query_async(&mut connection).await?;
        match role {
            redis::Value::Array(items)
                if items.first() == Some(&redis::Value::BulkString(b"master".to_vec())) =>
            {
                Ok(client)
            }
            other => Err(RedisError::from(std::io::Error::other(format!(
                "the sentinels name {host}:{port} as master, but it is not one (ROLE {other:?})"
            )))),
        }
    }

    /// What one sentinel names as the master (`None`: it does not know the name).
    async fn ask_sentinel(
        &self,
        client: &Client,
        master_name: &str,
    ) -> Result<Option<(String, u16)>, RedisError> {
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&self.connection)
            .await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master_name)
            .query_async(&mut connection)
            .await
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
    pub fn announcers(&self) -> (&[Client], &str) {
        (&self.announcers, &self.master_name)
    }

    /// How often to ask the sentinels for the master.
    pub fn master_poll(&self) -> Duration {
        self.master_poll
    }

    /// How long connecting to a sentinel and subscribing may take: one connection and one
    /// command.
    pub fn connection_config_timeout(&self) -> Duration {
        self.connect_and_command
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> Option<(String, u16)> {
        Some(("10.0.0.1".to_owned(), port))
    }

    #[test]
    fn subscribing_is_bounded_by_one_connection_and_one_command_and_resolving_by_two() {
        let config = RedisConfig {
            target: RedisTarget::Sentinel {
                sentinels: vec![("127.0.0.1".into(), 26379)],
                master: "mymaster".into(),
            },
            password: None,
            sentinel_password: None,
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(250),
            master_poll: Duration::from_secs(1),
            master_allowlist: None,
            tls: false,
            tls_ca: None,
        };
        let connector = Connector::new(&config).unwrap();
        assert_eq!(
            connector.connection_config_timeout(),
            Duration::from_millis(750)
        );
        assert_eq!(connector.resolve_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn a_master_needs_a_strict_majority_of_the_configured_sentinels() {
        assert_eq!(majority(&[at(1), at(1), at(2)]), at(1));
        assert_eq!(
            majority(&[at(1), None, None]),
            None,
            "one of three is not a majority"
        );
        assert_eq!(majority(&[at(1), at(1), None]), at(1), "one sentinel down");
        assert_eq!(majority(&[at(1), at(2)]), None);
        assert_eq!(majority(&[at(1), None]), None, "half is not a majority");
        assert_eq!(majority(&[at(1)]), at(1));
        assert_eq!(majority(&[at(1), at(2), at(3), at(1), at(1)]), at(1));
        assert_eq!(majority(&[]), None);
    }
}
