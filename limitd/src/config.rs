//! limitd's configuration: read from environment variables, validated once at start-up.
//!
//! [`Config::from_lookup`] takes the variable lookup as a function so the parsing is tested
//! without touching the process environment; [`Config::from_env`] is the real thing.

use std::net::SocketAddr;
use std::time::Duration;

use redis::IntoConnectionInfo;

/// The validated configuration of one limitd process.
///
/// Each field comes from one environment variable. An empty variable counts as unset.
///
/// | variable | meaning | default |
/// | --- | --- | --- |
/// | `LIMITD_LISTEN` | the HTTP listen address, `ip:port`; beyond loopback only with `LIMITD_TOKEN` | `127.0.0.1:8081` |
/// | `LIMITD_TOKEN` | the shared secret callers send as `Authorization: Bearer <token>` (16 to 256 printable ASCII characters); unset, anyone who reaches limitd may check | none |
/// | `SENTINEL_HOSTS` | comma-separated `host:port` of the Redis Sentinels (`[v6]:port` for IPv6) | — |
/// | `REDIS_MASTER` | the master name the sentinels monitor | `mymaster` |
/// | `REDIS_URL` | one plain Redis without Sentinel, e.g. `redis://127.0.0.1:6379` | — |
/// | `REDIS_PASSWORD` | password of the Redis data nodes (master and replicas) | none |
/// | `SENTINEL_PASSWORD` | password of the sentinels (their `requirepass`), only with `SENTINEL_HOSTS` | none |
/// | `REDIS_CONNECT_TIMEOUT_MS` | timeout of one connection attempt to Redis | `500` |
/// | `REDIS_RESPONSE_TIMEOUT_MS` | timeout of one Redis command (the check script, `PING`) | `250` |
/// | `LIMITD_MASTER_POLL_MS` | with Sentinel, how often the sentinels are asked for the master, besides listening for `+switch-master` (100 to 3600000) | `1000` |
/// | `LIMITD_MAX_BODY_BYTES` | the largest accepted check body; larger ones get `413` | `65536` |
/// | `LIMITD_SHUTDOWN_GRACE_MS` | how long in-flight requests may drain after a shutdown signal | `5000` |
/// | `LIMITD_HEADER_READ_TIMEOUT_MS` | how long a client may take to send a request's headers before its connection is closed | `5000` |
/// | `LIMITD_MAX_CONNECTIONS` | the most client connections open at once; more are closed on accept | `1024` |
///
/// Exactly one of `SENTINEL_HOSTS` and `REDIS_URL` must be set. `REDIS_MASTER` applies only
/// with `SENTINEL_HOSTS`, and so does `SENTINEL_PASSWORD` (ignored with `REDIS_URL`). A password
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
    /// A single Redis, or a master found through Sentinel.
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
                for (i, (host, port)) in sentinels.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    write!(f, "{sep}{host}:{port}")?;
                }
                Ok(())
            }
        }
    }
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

    fn new(text: String) -> Result<Self, ConfigError> {
        let text = text.trim().to_owned();
        if !(Self::MIN_CHARS..=Self::MAX_CHARS).contains(&text.len())
            || !text.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ConfigError::new(
                "LIMITD_TOKEN",
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
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            token: None,
        }
    }
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8081";
const DEFAULT_MASTER: &str = "mymaster";
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 500;
const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
const DEFAULT_RESPONSE_TIMEOUT_MS: u64 = 250;
const DEFAULT_MASTER_POLL_MS: u64 = 1_000;
/// Upper bound of the master poll: beyond an hour the poll is effectively off.
const MAX_MASTER_POLL_MS: u64 = 3_600_000;
const DEFAULT_MAX_BODY_BYTES: usize = 65536;
const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 5000;
/// Upper bound of the Redis timeouts: beyond a minute a "timeout" is a hang.
const MAX_REDIS_TIMEOUT_MS: u64 = 60_000;
/// Upper bound of the body limit (a full check of [`protocol::MAX_HITS`] hits is a few KiB).
const MAX_BODY_BYTES_LIMIT: u64 = 16 * 1024 * 1024;
/// Upper bound of the drain deadline.
const MAX_SHUTDOWN_GRACE_MS: u64 = 600_000;

/// A configuration variable with a bad value, or a bad combination of variables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The variable at fault (for combinations, the names involved).
    pub var: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(var: &'static str, reason: impl Into<String>) -> Self {
        Self {
            var,
            reason: reason.into(),
        }
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    ///
    /// A variable that is set but not valid UTF-8 is an error, not "unset".
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut bad = None;
        let config = Self::from_lookup(|name| match std::env::var(name) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                bad.get_or_insert(name);
                None
            }
        });
        match bad {
            Some(name) => Err(ConfigError::new(name, "value is not valid UTF-8")),
            None => config,
        }
    }

    /// Builds the configuration from `lookup`, which returns a variable's value or `None`.
    pub fn from_lookup(
        mut lookup: impl FnMut(&'static str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut get = |name: &'static str| lookup(name).filter(|v| !v.trim().is_empty());

        let listen_text = get("LIMITD_LISTEN").unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_text.trim().parse::<SocketAddr>().map_err(|e| {
            ConfigError::new(
                "LIMITD_LISTEN",
                format!("'{listen_text}' is not an ip:port address ({e})"),
            )
        })?;
        let token = get("LIMITD_TOKEN").map(Token::new).transpose()?;
        if token.is_none() && !listen.ip().is_loopback() {
            return Err(ConfigError::new(
                "LIMITD_LISTEN",
                format!(
                    "{listen} is reachable beyond this host, so callers must authenticate: set \
                     LIMITD_TOKEN (and the filter's limitd_token), or listen on 127.0.0.1"
                ),
            ));
        }

        // Passwords are taken as given: spaces may be part of one (only an all-blank value
        // counts as unset).
        let password = get("REDIS_PASSWORD");
        let sentinel_password = get("SENTINEL_PASSWORD");
        let target = match (get("SENTINEL_HOSTS"), get("REDIS_URL")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "SENTINEL_HOSTS/REDIS_URL",
                    "both are set; set exactly one (SENTINEL_HOSTS for Sentinel, REDIS_URL for a single Redis)",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "SENTINEL_HOSTS/REDIS_URL",
                    "neither is set; set SENTINEL_HOSTS (e.g. 127.0.0.1:26379) or REDIS_URL (e.g. redis://127.0.0.1:6379)",
                ))
            }
            (Some(hosts), None) => RedisTarget::Sentinel {
                sentinels: parse_sentinel_hosts(&hosts)?,
                master: get("REDIS_MASTER").map_or_else(|| DEFAULT_MASTER.into(), |m| m.trim().to_owned()),
            },
            (None, Some(url)) => {
                let url = url.trim().to_owned();
                match url.as_str().into_connection_info() {
                    Ok(info) if matches!(info.addr(), redis::ConnectionAddr::Tcp(..)) => {}
                    Ok(_) => return Err(ConfigError::new("REDIS_URL", "only redis:// (plain TCP) URLs are supported")),
                    Err(e) => return Err(ConfigError::new("REDIS_URL", format!("not a Redis URL ({e})"))),
                }
                RedisTarget::Single { url }
            }
        };

        let connect_timeout = millis(
            "REDIS_CONNECT_TIMEOUT_MS",
            get("REDIS_CONNECT_TIMEOUT_MS"),
            DEFAULT_CONNECT_TIMEOUT_MS,
            1,
            MAX_REDIS_TIMEOUT_MS,
        )?;
        let response_timeout = millis(
            "REDIS_RESPONSE_TIMEOUT_MS",
            get("REDIS_RESPONSE_TIMEOUT_MS"),
            DEFAULT_RESPONSE_TIMEOUT_MS,
            1,
            MAX_REDIS_TIMEOUT_MS,
        )?;
        let master_poll = millis(
            "LIMITD_MASTER_POLL_MS",
            get("LIMITD_MASTER_POLL_MS"),
            DEFAULT_MASTER_POLL_MS,
            100,
            MAX_MASTER_POLL_MS,
        )?;
        let max_body_bytes = number(
            "LIMITD_MAX_BODY_BYTES",
            get("LIMITD_MAX_BODY_BYTES"),
            DEFAULT_MAX_BODY_BYTES as u64,
            64,
            MAX_BODY_BYTES_LIMIT,
        )?;
        let shutdown_grace = millis(
            "LIMITD_SHUTDOWN_GRACE_MS",
            get("LIMITD_SHUTDOWN_GRACE_MS"),
            DEFAULT_SHUTDOWN_GRACE_MS,
            0,
            MAX_SHUTDOWN_GRACE_MS,
        )?;
        let header_read_timeout = millis(
            "LIMITD_HEADER_READ_TIMEOUT_MS",
            get("LIMITD_HEADER_READ_TIMEOUT_MS"),
            DEFAULT_HEADER_READ_TIMEOUT_MS,
            10,
            60_000,
        )?;
        let max_connections = number(
            "LIMITD_MAX_CONNECTIONS",
            get("LIMITD_MAX_CONNECTIONS"),
            DEFAULT_MAX_CONNECTIONS,
            1,
            1_000_000,
        )?;

        // limitd sends REDIS_PASSWORD to whatever master the sentinels name: behind open
        // sentinels, anyone who reaches one could name their own server and collect it.
        if password.is_some()
            && sentinel_password.is_none()
            && matches!(target, RedisTarget::Sentinel { .. })
        {
            return Err(ConfigError::new(
                "SENTINEL_PASSWORD",
                "must be set when REDIS_PASSWORD is: limitd sends the data nodes' password to \
                 whatever master the sentinels name, so open sentinels would let anyone who \
                 reaches one redirect limitd and receive it (set the sentinels' requirepass)",
            ));
        }

        Ok(Self {
            listen,
            redis: RedisConfig {
                target,
                password,
                sentinel_password,
                connect_timeout,
                response_timeout,
                master_poll,
            },
            http: HttpConfig {
                // The bound above keeps this far below usize::MAX on any target.
                max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(DEFAULT_MAX_BODY_BYTES),
                shutdown_grace,
                header_read_timeout,
                // At most a million: fits a usize on any target.
                max_connections: usize::try_from(max_connections).unwrap_or(1_000_000),
                token,
            },
        })
    }
}

/// Parses `host:port[,host:port…]`; blank entries (a trailing comma) are skipped.
fn parse_sentinel_hosts(text: &str) -> Result<Vec<(String, u16)>, ConfigError> {
    const VAR: &str = "SENTINEL_HOSTS";
    let mut hosts = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| ConfigError::new(VAR, format!("'{entry}' is not host:port")))?;
        // `[::1]:26379`: the brackets only delimit the address.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err(ConfigError::new(
                VAR,
                format!("'{entry}' has no valid host"),
            ));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ConfigError::new(VAR, format!("'{entry}' has no valid port (1-65535)"))
            })?;
        hosts.push((host.to_owned(), port));
    }
    if hosts.is_empty() {
        return Err(ConfigError::new(VAR, "no host:port given"));
    }
    Ok(hosts)
}

fn number(
    var: &'static str,
    value: Option<String>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    let n = text
        .trim()
        .parse::<u64>()
        .map_err(|_| ConfigError::new(var, format!("'{text}' is not a whole number")))?;
    if !(min..=max).contains(&n) {
        return Err(ConfigError::new(
            var,
            format!("{n} is out of range {min}..={max}"),
        ));
    }
    Ok(n)
}

fn millis(
    var: &'static str,
    value: Option<String>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    number(var, value, default, min, max).map(Duration::from_millis)
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
        assert_eq!(err.var, "SENTINEL_HOSTS/REDIS_URL");
        assert!(err.reason.contains("neither"), "{err}");
        let err = parse(&[("SENTINEL_HOSTS", "a:1"), ("REDIS_URL", "redis://a:1")]).unwrap_err();
        assert!(err.reason.contains("both"), "{err}");
        // Empty counts as unset.
        assert!(parse(&[("SENTINEL_HOSTS", ""), ("REDIS_URL", "redis://a:1")]).is_ok());
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
            assert!(err.to_string().starts_with(var), "{err}");
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
