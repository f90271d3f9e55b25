//! limitd's configuration: the settings of [`Args`] (flags and environment variables), checked
//! together once at start-up into the types the service runs with.
//!
//! clap checks each setting on its own; what is left here is what only limitd knows: exactly one
//! Redis target (Sentinel, one Redis, or a Redis Cluster), a token before listening beyond loopback, a sentinel password alongside a data
//! password, and the token and URL checks whose errors must not echo the value.
//! [`Config::from_lookup`] takes the variables as a function, so tests need not touch the
//! process environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue};
use redis::IntoConnectionInfo;

use crate::args::{
    Args, DEFAULT_HEADER_READ_TIMEOUT_MS, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SHUTDOWN_GRACE_MS,
};

/// The validated configuration of one limitd process (see `limitd --help` for each setting).
///
/// Exactly one of `SENTINEL_HOSTS`, `REDIS_URL` and `REDIS_CLUSTER_NODES` must be set.
/// `REDIS_MASTER` applies only with `SENTINEL_HOSTS`, and so does `SENTINEL_PASSWORD` (ignored
/// with `REDIS_URL`, refused with `REDIS_CLUSTER_NODES`). A password
/// in `REDIS_URL` wins over `REDIS_PASSWORD`. `REDIS_PASSWORD` is not sent to the sentinels:
/// unauthenticated sentinels refuse an `AUTH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the HTTP server listens (`LIMITD_LISTEN`).
    pub listen: SocketAddr,
    /// How Redis is reached.
    pub redis: RedisConfig,
    /// HTTP limits.
    pub http: HttpConfig,
}
/// How limitd reaches Redis.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// A single Redis, a master found through Sentinel, or a Redis Cluster.
    pub target: RedisTarget,
    /// Password of the data nodes (`REDIS_PASSWORD`).
    pub password: Option<String>,
    /// Password of the sentinels (`SENTINEL_PASSWORD`); unused without Sentinel.
    pub sentinel_password: Option<String>,
    /// Timeout of one connection attempt (`REDIS_CONNECT_TIMEOUT_MS`).
    pub connect_timeout: Duration,
    /// Timeout of one command (`REDIS_RESPONSE_TIMEOUT_MS`).
    pub response_timeout: Duration,
    /// With Sentinel, how often the sentinels are asked for the master
    /// (`LIMITD_MASTER_POLL_MS`), besides listening for `+switch-master`.
    pub master_poll: Duration,
    /// With Sentinel, the only addresses accepted as the master (`REDIS_MASTER_ALLOWLIST`);
    /// `None`: any that a majority of the sentinels names.
    pub master_allowlist: Option<Vec<(String, u16)>>,
    /// TLS to the sentinels and the data nodes, or to every cluster node (`REDIS_TLS`, or a
    /// `rediss://` `REDIS_URL`).
    pub tls: bool,
    /// The PEM of the CAs to trust for TLS (`REDIS_TLS_CA_FILE`); `None`: the system's roots.
    pub tls_ca: Option<Vec<u8>>,
}

// Hand-written so the password never reaches a log line.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("target", &self.target)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "<redacted>"),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("master_poll", &self.master_poll)
            .field("master_allowlist", &self.master_allowlist)
            .field("tls", &self.tls)
            .field("tls_ca", &self.tls_ca.as_ref().map(|pem| pem.len()))
            .finish()
    }
}

/// Which Redis holds the counters.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis without Sentinel (`REDIS_URL`); never re-resolved.
    Single {
        /// The URL as given.
        url: String,
    },
    /// The master named `master`, as the sentinels at `sentinels` report it.
    Sentinel {
        /// `(host, port)` of each sentinel, in the configured order.
        sentinels: Vec<(String, u16)>,
        /// The monitored master's name (`REDIS_MASTER`).
        master: String,
    },
    /// A Redis Cluster, discovered from `nodes` (`REDIS_CLUSTER_NODES`); the cluster client
    /// follows its topology (redirects, failovers) by itself.
    Cluster {
        /// `(host, port)` of each seed node, in the configured order.
        nodes: Vec<(String, u16)>,
    },
}

// Hand-written: a URL may carry a password.
impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single { url } => match url.as_str().into_connection_info() {
                Ok(info) => write!(f, "single redis at {}", info.addr()),
                Err(_) => f.write_str("single redis"),
            },
            Self::Sentinel { sentinels, master } => {
                write!(f, "sentinel master '{master}' via ")?;
                write_hosts(f, sentinels)
            }
            Self::Cluster { nodes } => {
                f.write_str("redis cluster via ")?;
                write_hosts(f, nodes)
            }
        }
    }
}

/// `host:port,host:port…`.
fn write_hosts(f: &mut std::fmt::Formatter<'_>, hosts: &[(String, u16)]) -> std::fmt::Result {
    for (i, (host, port)) in hosts.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        write!(f, "{sep}{host}:{port}")?;
    }
    Ok(())
}

/// Limits of the HTTP side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// The largest accepted request body in bytes (`LIMITD_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// How long in-flight requests may drain after shutdown starts (`LIMITD_SHUTDOWN_GRACE_MS`).
    pub shutdown_grace: Duration,
    /// How long a client may take to send a request's headers
    /// (`LIMITD_HEADER_READ_TIMEOUT_MS`): a slow or stuck client cannot hold a connection.
    pub header_read_timeout: Duration,
    /// The most client connections open at once (`LIMITD_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// The secret callers must present (`LIMITD_TOKEN`); `None`: no authentication.
    pub token: Option<Token>,
}

/// limitd's shared secret with its callers. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The shortest token accepted: a guessable secret protects nothing.
    pub const MIN_CHARS: usize = 16;
    /// The longest token accepted (it travels in a header).
    pub const MAX_CHARS: usize = 256;

    /// Checks `text` (trimmed); the error does not repeat it.
    fn new(text: &str) -> Result<Self, ConfigError> {
        let text = text.trim().to_owned();
        if !(Self::MIN_CHARS..=Self::MAX_CHARS).contains(&text.len())
            || !text.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ConfigError::about(
                &["token"],
                format!(
                    "must be {} to {} printable ASCII characters without spaces (e.g. from \
                     `openssl rand -hex 32`)",
                    Self::MIN_CHARS,
                    Self::MAX_CHARS
                ),
            ));
        }
        Ok(Token(text))
    }

    /// The secret, to compare with what a caller sent.
    pub fn secret(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_grace: Duration::from_millis(DEFAULT_SHUTDOWN_GRACE_MS),
            header_read_timeout: Duration::from_millis(DEFAULT_HEADER_READ_TIMEOUT_MS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            token: None,
        }
    }
}

/// A configuration setting with a bad value, or a bad combination of settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} ({var}): {reason}")]
pub struct ConfigError {
    /// The flag at fault, e.g. `--token` (for combinations, the flags involved, `/`-separated).
    pub flag: String,
    /// Its environment variable, e.g. `LIMITD_TOKEN` (likewise).
    pub var: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// An error about the settings whose [`Args`] fields are `ids`.
    fn about(ids: &[&str], reason: impl Into<String>) -> Self {
        let (flags, vars): (Vec<String>, Vec<String>) =
            ids.iter().map(|id| Args::names(id)).unzip();
        Self {
            flag: flags.join("/"),
            var: vars.join("/"),
            reason: reason.into(),
        }
    }

    /// A value clap refused, named by the setting clap names.
    fn from_clap(error: &clap::Error) -> Self {
        let arg = match error.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => arg.as_str(),
            _ => "",
        };
        // `--max-body-bytes <BYTES>`: the flag is the first word.
        let flag = arg.split_whitespace().next().unwrap_or_default();
        let id = flag.trim_start_matches('-').replace('-', "_");
        let (flag, var) = Args::names(&id);
        let message = error.to_string();
        let reason = message.lines().next().unwrap_or_default();
        Self {
            flag,
            var,
            reason: reason.trim_start_matches("error: ").to_owned(),
        }
    }
}

impl Config {
    /// Builds the configuration from the variables `lookup` gives by name (`None`: unset), as
    /// if they were the environment; no command-line arguments, no process environment.
    pub fn from_lookup(lookup: impl FnMut(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let args = Args::from_lookup(lookup).map_err(|error| ConfigError::from_clap(&error))?;
        Self::try_from(args)
    }
}

impl Config {
    /// Whether limitd may serve on `addr`, the address of a socket it was passed (socket
    /// activation, `LISTEN_FDS`) rather than bound from `--listen`: the same rule applies.
    pub fn check_passed_socket(&self, addr: SocketAddr) -> Result<(), ConfigError> {
        check_reachable(addr, self.http.token.is_some())
    }
}

/// Beyond loopback only with a token: anything that reaches the address could spend quota.
fn check_reachable(listen: SocketAddr, has_token: bool) -> Result<(), ConfigError> {
    if has_token || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(ConfigError::about(
        &["listen"],
        format!(
            "{listen} is reachable beyond this host, so callers must authenticate: set \
             LIMITD_TOKEN (and the filter's limitd_token), or listen on 127.0.0.1"
        ),
    ))
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, ConfigError> {
        // An all-blank value counts as unset (for variables, clap never sees one).
        let given = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        let token = given(args.token).as_deref().map(Token::new).transpose()?;
        check_reachable(args.listen, token.is_some())?;

        // Passwords are taken as given: spaces may be part of one.
        let password = given(args.redis_password);
        let sentinel_password = given(args.sentinel_password);
        let url = given(args.redis_url);
        let set: Vec<&str> = [
            ("sentinel_hosts", args.sentinel_hosts.is_some()),
            ("redis_url", url.is_some()),
            ("redis_cluster_nodes", args.redis_cluster_nodes.is_some()),
        ]
        .into_iter()
        .filter_map(|(id, set)| set.then_some(id))
        .collect();
        if set.len() > 1 {
            let how_many = if set.len() == 2 { "both" } else { "all three" };
            return Err(ConfigError::about(
                &set,
                format!(
                    "{how_many} are set; set exactly one (SENTINEL_HOSTS for Sentinel, REDIS_URL \
                     for a single Redis, REDIS_CLUSTER_NODES for a Redis Cluster)"
                ),
            ));
        }
        let target = match (args.sentinel_hosts, url, args.redis_cluster_nodes) {
            (None, None, None) => {
                return Err(ConfigError::about(
                    &["sentinel_hosts", "redis_url", "redis_cluster_nodes"],
                    "none is set; set SENTINEL_HOSTS (e.g. 127.0.0.1:26379), REDIS_URL (e.g. \
                     redis://127.0.0.1:6379) or REDIS_CLUSTER_NODES (e.g. \
                     10.0.0.1:6379,10.0.0.2:6379)",
                ))
            }
            (_, _, Some(nodes)) => RedisTarget::Cluster { nodes: nodes.0 },
            (Some(hosts), _, None) => RedisTarget::Sentinel {
                sentinels: hosts.0,
                master: args.redis_master,
            },
            (None, Some(url), None) => {
                let url = url.trim().to_owned();
                match url.as_str().into_connection_info() {
                    Ok(info) if matches!(info.addr(), redis::ConnectionAddr::Tcp(..)) => {}
                    Ok(info)
                        if matches!(
                            info.addr(),
                            redis::ConnectionAddr::TcpTls {
                                insecure: false,
                                ..
                            }
                        ) => {}
                    Ok(_) => {
                        return Err(ConfigError::about(
                            &["redis_url"],
                            "only redis:// and rediss:// URLs are supported (TCP, TLS with a \
                             verified certificate)",
                        ))
                    }
                    Err(e) => {
                        return Err(ConfigError::about(
                            &["redis_url"],
                            format!("not a Redis URL ({e})"),
                        ))
                    }
                }
                RedisTarget::Single { url }
            }
        };

        let tls = args.redis_tls
            || matches!(&target, RedisTarget::Single { url } if url.starts_with("rediss://"));
        if args.redis_tls
            && matches!(&target, RedisTarget::Single { url } if !url.starts_with("rediss://"))
        {
            return Err(ConfigError::about(
                &["redis_tls"],
                "with REDIS_URL, TLS is chosen by its scheme: use a rediss:// URL",
            ));
        }
        let tls_ca = match args.redis_tls_ca_file {
            None => None,
            Some(_) if !tls => {
                return Err(ConfigError::about(
                    &["redis_tls_ca_file"],
                    "applies only with TLS (REDIS_TLS=true, or a rediss:// REDIS_URL)",
                ))
            }
            Some(path) => match std::fs::read(&path) {
                Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => {
                    Some(pem)
                }
                Ok(_) => {
                    return Err(ConfigError::about(
                        &["redis_tls_ca_file"],
                        format!("{} holds no PEM certificate", path.display()),
                    ))
                }
                Err(e) => {
                    return Err(ConfigError::about(
                        &["redis_tls_ca_file"],
                        format!("cannot read {}: {e}", path.display()),
                    ))
                }
            },
        };
        let master_allowlist = args.redis_master_allowlist.map(|hosts| hosts.0);
        if master_allowlist.is_some() && !matches!(target, RedisTarget::Sentinel { .. }) {
            return Err(ConfigError::about(
                &["redis_master_allowlist"],
                "applies only with SENTINEL_HOSTS (REDIS_URL names its one Redis itself, and a \
                 cluster's masters are the ones its nodes agree on)",
            ));
        }
        if sentinel_password.is_some() && matches!(target, RedisTarget::Cluster { .. }) {
            return Err(ConfigError::about(
                &["sentinel_password"],
                "applies only with SENTINEL_HOSTS; a cluster's nodes take REDIS_PASSWORD",
            ));
        }

        // limitd sends REDIS_PASSWORD to whatever master the sentinels name: behind open
        // sentinels, anyone who reaches one could name their own server and collect it.
        if password.is_some()
            && sentinel_password.is_none()
            && matches!(target, RedisTarget::Sentinel { .. })
        {
            return Err(ConfigError::about(
                &["sentinel_password"],
                "must be set when REDIS_PASSWORD is: limitd sends the data nodes' password to \
                 whatever master the sentinels name, so open sentinels would let anyone who \
                 reaches one redirect limitd and receive it (set the sentinels' requirepass)",
            ));
        }

        Ok(Self {
            listen: args.listen,
            redis: RedisConfig {
                target,
                password,
                sentinel_password,
                connect_timeout: Duration::from_millis(args.redis_connect_timeout_ms),
                response_timeout: Duration::from_millis(args.redis_response_timeout_ms),
                master_poll: Duration::from_millis(args.master_poll_ms),
                master_allowlist,
                tls,
                tls_ca,
            },
            http: HttpConfig {
                max_body_bytes: args.max_body_bytes,
                shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
                header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
                max_connections: args.max_connections,
                token,
            },
        })
    }
}

/// `host:port` of each sentinel, in the configured order (`SENTINEL_HOSTS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelHosts(pub Vec<(String, u16)>);

impl SentinelHosts {
    /// Parses `host:port[,host:port…]`; blank entries (a trailing comma) are skipped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut hosts = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (host, port) = entry
                .rsplit_once(':')
                .ok_or_else(|| format!("'{entry}' is not host:port"))?;
            // `[::1]:26379`: the brackets only delimit the address.
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if host.is_empty() || host.contains(['/', ' ']) {
                return Err(format!("'{entry}' has no valid host"));
            }
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("'{entry}' has no valid port (1-65535)"))?;
            hosts.push((host.to_owned(), port));
        }
        if hosts.is_empty() {
            return Err("no host:port given".to_owned());
        }
        Ok(Self(hosts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_with_a_single_redis() {
        let config = parse(&[("REDIS_URL", "redis://127.0.0.1:6379")]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(config.http.token, None);
        assert_eq!(
            config.redis.target,
            RedisTarget::Single {
                url: "redis://127.0.0.1:6379".into()
            }
        );
        assert_eq!(config.redis.password, None);
        assert_eq!(config.redis.sentinel_password, None);
        assert_eq!(config.redis.connect_timeout, Duration::from_millis(500));
        assert_eq!(config.redis.response_timeout, Duration::from_millis(250));
        assert_eq!(config.redis.master_poll, Duration::from_millis(1_000));
        assert_eq!(config.http.max_body_bytes, 65536);
        assert_eq!(config.http.shutdown_grace, Duration::from_millis(5000));
    }

    #[test]
    fn sentinel_hosts_and_master() {
        let config = parse(&[
            (
                "SENTINEL_HOSTS",
                " 10.0.0.1:26379, sentinel-2:26380,[::1]:26381,",
            ),
            ("REDIS_MASTER", "cache"),
            ("REDIS_PASSWORD", "s3cret"),
            ("SENTINEL_PASSWORD", "guard"),
            ("LIMITD_LISTEN", "127.0.0.1:9000"),
            ("REDIS_CONNECT_TIMEOUT_MS", "100"),
            ("REDIS_RESPONSE_TIMEOUT_MS", "50"),
            ("LIMITD_MAX_BODY_BYTES", "1024"),
            ("LIMITD_SHUTDOWN_GRACE_MS", "0"),
            ("LIMITD_MASTER_POLL_MS", "250"),
        ])
        .unwrap();
        assert_eq!(
            config.redis.target,
            RedisTarget::Sentinel {
                sentinels: vec![
                    ("10.0.0.1".into(), 26379),
                    ("sentinel-2".into(), 26380),
                    ("::1".into(), 26381)
                ],
                master: "cache".into(),
            }
        );
        assert_eq!(config.redis.password.as_deref(), Some("s3cret"));
        assert_eq!(config.redis.sentinel_password.as_deref(), Some("guard"));
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.redis.connect_timeout, Duration::from_millis(100));
        assert_eq!(config.redis.response_timeout, Duration::from_millis(50));
        assert_eq!(config.redis.master_poll, Duration::from_millis(250));
        assert_eq!(config.http.max_body_bytes, 1024);
        assert_eq!(config.http.shutdown_grace, Duration::ZERO);
    }

    #[test]
    fn beyond_loopback_only_with_a_token_which_is_never_printed() {
        let url = ("REDIS_URL", "redis://127.0.0.1:6379");
        let err = parse(&[url, ("LIMITD_LISTEN", "0.0.0.0:8081")]).unwrap_err();
        assert!(err.reason.contains("set LIMITD_TOKEN"), "{err}");
        let secret = "0123456789abcdef0123";
        let config = parse(&[
            url,
            ("LIMITD_LISTEN", "0.0.0.0:8081"),
            ("LIMITD_TOKEN", secret),
        ])
        .unwrap();
        assert_eq!(
            config.http.token.as_ref().map(Token::secret),
            Some(secret.as_bytes())
        );
        assert!(!format!("{config:?}").contains(secret));
    }

    #[test]
    fn a_data_password_behind_open_sentinels_is_refused() {
        let err = parse(&[
            ("SENTINEL_HOSTS", "127.0.0.1:26379"),
            ("REDIS_PASSWORD", "data-secret"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "SENTINEL_PASSWORD", "{err}");
        // With a single Redis there is no sentinel to redirect limitd.
        assert!(parse(&[
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("REDIS_PASSWORD", "data-secret"),
        ])
        .is_ok());
    }

    #[test]
    fn master_defaults_to_mymaster() {
        let config = parse(&[("SENTINEL_HOSTS", "127.0.0.1:26379")]).unwrap();
        assert!(
            matches!(config.redis.target, RedisTarget::Sentinel { ref master, .. } if master == "mymaster")
        );
    }

    #[test]
    fn exactly_one_redis_target_is_required() {
        let err = parse(&[]).unwrap_err();
        assert_eq!(err.var, "SENTINEL_HOSTS/REDIS_URL/REDIS_CLUSTER_NODES");
        assert!(err.reason.contains("none is set"), "{err}");
        let err = parse(&[("SENTINEL_HOSTS", "a:1"), ("REDIS_URL", "redis://a:1")]).unwrap_err();
        assert!(err.reason.contains("both"), "{err}");
        // Empty counts as unset.
        assert!(parse(&[("SENTINEL_HOSTS", ""), ("REDIS_URL", "redis://a:1")]).is_ok());
    }

    #[test]
    fn a_cluster_seed_list_is_a_target_of_its_own() {
        let config = parse(&[
            ("REDIS_CLUSTER_NODES", " 10.0.0.1:7000,10.0.0.2:7001, "),
            ("REDIS_PASSWORD", "s3cret"),
            ("REDIS_TLS", "true"),
        ])
        .unwrap();
        assert_eq!(
            config.redis.target,
            RedisTarget::Cluster {
                nodes: vec![("10.0.0.1".into(), 7000), ("10.0.0.2".into(), 7001)]
            }
        );
        assert_eq!(config.redis.password.as_deref(), Some("s3cret"));
        assert!(config.redis.tls);
        assert_eq!(
            config.redis.target.to_string(),
            "redis cluster via 10.0.0.1:7000,10.0.0.2:7001"
        );
    }

    #[test]
    fn a_cluster_and_sentinel_at_once_are_refused_naming_both() {
        let err = parse(&[
            ("REDIS_CLUSTER_NODES", "10.0.0.1:7000"),
            ("SENTINEL_HOSTS", "10.0.0.1:26379"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "SENTINEL_HOSTS/REDIS_CLUSTER_NODES", "{err}");
        assert_eq!(err.flag, "--sentinel-hosts/--redis-cluster-nodes", "{err}");
        assert!(err.reason.starts_with("both are set"), "{err}");
        let err = parse(&[
            ("REDIS_CLUSTER_NODES", "10.0.0.1:7000"),
            ("REDIS_URL", "redis://10.0.0.1:6379"),
            ("SENTINEL_HOSTS", "10.0.0.1:26379"),
        ])
        .unwrap_err();
        assert_eq!(
            err.var, "SENTINEL_HOSTS/REDIS_URL/REDIS_CLUSTER_NODES",
            "{err}"
        );
        assert!(err.reason.starts_with("all three are set"), "{err}");
    }

    #[test]
    fn sentinel_settings_are_refused_with_a_cluster() {
        let nodes = ("REDIS_CLUSTER_NODES", "10.0.0.1:7000");
        let err = parse(&[nodes, ("REDIS_MASTER_ALLOWLIST", "10.0.0.1:7000")]).unwrap_err();
        assert_eq!(err.var, "REDIS_MASTER_ALLOWLIST", "{err}");
        let err = parse(&[nodes, ("SENTINEL_PASSWORD", "guard")]).unwrap_err();
        assert_eq!(err.var, "SENTINEL_PASSWORD", "{err}");
        for value in ["localhost", "host:0", ","] {
            let err = parse(&[("REDIS_CLUSTER_NODES", value)]).unwrap_err();
            assert_eq!(err.var, "REDIS_CLUSTER_NODES", "{value}: {err}");
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        let url = ("REDIS_URL", "redis://127.0.0.1:6379");
        let cases: &[(&str, &str)] = &[
            ("LIMITD_LISTEN", "localhost"),
            ("LIMITD_LISTEN", "1.2.3.4:99999"),
            ("REDIS_CONNECT_TIMEOUT_MS", "fast"),
            ("REDIS_CONNECT_TIMEOUT_MS", "0"),
            ("REDIS_RESPONSE_TIMEOUT_MS", "-5"),
            ("REDIS_RESPONSE_TIMEOUT_MS", "60001"),
            ("LIMITD_MAX_BODY_BYTES", "1.5"),
            ("LIMITD_MAX_BODY_BYTES", "99999999999"),
            ("LIMITD_SHUTDOWN_GRACE_MS", "forever"),
            ("LIMITD_TOKEN", "short"),
            ("LIMITD_TOKEN", "sixteen chars or more but with spaces"),
            ("LIMITD_LISTEN", "0.0.0.0:8081"),
        ];
        for (var, value) in cases {
            let err = parse(&[url, (var, value)]).unwrap_err();
            assert_eq!(err.var, *var, "{var}={value}: {err}");
            assert!(err.to_string().contains(var), "{err}");
            assert!(err.flag.starts_with("--"), "{err}");
        }
    }

    #[test]
    fn errors_name_the_flag_and_the_variable() {
        let err = parse(&[
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("LIMITD_MAX_BODY_BYTES", "1.5"),
        ])
        .unwrap_err();
        assert_eq!(
            (err.flag.as_str(), err.var.as_str()),
            ("--max-body-bytes", "LIMITD_MAX_BODY_BYTES")
        );
        assert!(
            err.to_string()
                .starts_with("--max-body-bytes (LIMITD_MAX_BODY_BYTES): invalid value '1.5'"),
            "{err}"
        );
        let err = parse(&[]).unwrap_err();
        assert_eq!(
            err.flag, "--sentinel-hosts/--redis-url/--redis-cluster-nodes",
            "{err}"
        );
    }

    #[test]
    fn the_token_is_not_repeated_in_its_error() {
        let secret = "a secret with spaces in it";
        let err = parse(&[
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("LIMITD_TOKEN", secret),
        ])
        .unwrap_err();
        assert_eq!(err.var, "LIMITD_TOKEN");
        assert!(!err.to_string().contains(secret), "{err}");
    }

    #[test]
    fn blank_values_count_as_unset_and_values_are_trimmed() {
        let config = parse(&[
            ("REDIS_URL", " redis://127.0.0.1:6379 "),
            ("SENTINEL_HOSTS", "  "),
            ("LIMITD_LISTEN", " 127.0.0.1:9000 "),
            ("LIMITD_MAX_BODY_BYTES", " 1024 "),
            ("LIMITD_MAX_CONNECTIONS", "   "),
            ("LIMITD_TOKEN", "  "),
            ("REDIS_PASSWORD", " pass word "),
        ])
        .unwrap();
        assert_eq!(
            config.redis.target,
            RedisTarget::Single {
                url: "redis://127.0.0.1:6379".into()
            }
        );
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.http.max_body_bytes, 1024);
        assert_eq!(config.http.max_connections, 1024);
        assert_eq!(config.http.token, None);
        assert_eq!(config.redis.password.as_deref(), Some(" pass word "));
    }

    #[test]
    fn every_range_bound_is_inclusive() {
        let url = ("REDIS_URL", "redis://127.0.0.1:6379");
        for (var, low, high) in [
            ("REDIS_CONNECT_TIMEOUT_MS", 1u64, 60_000),
            ("REDIS_RESPONSE_TIMEOUT_MS", 1, 60_000),
            ("LIMITD_MASTER_POLL_MS", 100, 3_600_000),
            ("LIMITD_MAX_BODY_BYTES", 64, 16 * 1024 * 1024),
            ("LIMITD_SHUTDOWN_GRACE_MS", 0, 600_000),
            ("LIMITD_HEADER_READ_TIMEOUT_MS", 10, 60_000),
            ("LIMITD_MAX_CONNECTIONS", 1, 1_000_000),
        ] {
            for ok in [low, high] {
                assert!(parse(&[url, (var, &ok.to_string())]).is_ok(), "{var}={ok}");
            }
            for bad in [low.checked_sub(1), Some(high + 1)].into_iter().flatten() {
                let err = parse(&[url, (var, &bad.to_string())]).unwrap_err();
                assert_eq!(err.var, var, "{var}={bad}: {err}");
            }
        }
    }

    #[test]
    fn bad_sentinel_hosts_are_rejected() {
        for value in [
            "localhost",
            "host:",
            ":26379",
            "host:0",
            "host:70000",
            "host:abc",
            ",",
        ] {
            let err = parse(&[("SENTINEL_HOSTS", value)]).unwrap_err();
            assert_eq!(err.var, "SENTINEL_HOSTS", "{value}: {err}");
        }
    }

    #[test]
    fn bad_redis_urls_are_rejected() {
        for value in ["127.0.0.1:6379", "http://x", "redis+unix:///tmp/r.sock"] {
            let err = parse(&[("REDIS_URL", value)]).unwrap_err();
            assert_eq!(err.var, "REDIS_URL", "{value}: {err}");
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let config = parse(&[
            ("REDIS_URL", "redis://:pw1@127.0.0.1:6379"),
            ("REDIS_PASSWORD", "pw2"),
            ("SENTINEL_PASSWORD", "pw3"),
        ])
        .unwrap();
        let text = format!("{config:?}");
        assert!(
            !text.contains("pw1") && !text.contains("pw2") && !text.contains("pw3"),
            "{text}"
        );
    }
}
