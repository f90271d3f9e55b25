//! limitd's command line: every setting is a flag and an environment variable, parsed by clap.
//!
//! A flag wins over its variable, a variable over the default. As before the command line
//! existed, a variable that is empty or blank counts as unset, and values are trimmed (passwords
//! excepted: a space may be part of one). clap checks each value on its own (types, ranges, the
//! sentinel list); [`Config::try_from`](crate::Config) checks what it cannot: the combinations,
//! and the values that must not be echoed in an error (the token, passwords, `REDIS_URL`).
//!
//! `limitd --help` lists every setting with its variable and default. Without a subcommand limitd
//! serves; `limitd convert-ratelimit` only converts a configuration (see [`crate::convert`]).

use std::ffi::OsStr;
use std::net::SocketAddr;

use clap::builder::{NonEmptyStringValueParser, RangedU64ValueParser, TypedValueParser};
use clap::{Arg, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::SentinelHosts;

pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 65536;
pub(crate) const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 5000;
pub(crate) const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 5_000;
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Upper bound of the master poll: beyond an hour the poll is effectively off.
const MAX_MASTER_POLL_MS: u64 = 3_600_000;
/// Upper bound of the Redis timeouts: beyond a minute a "timeout" is a hang.
const MAX_REDIS_TIMEOUT_MS: u64 = 60_000;
/// Upper bound of the body limit (a full check of [`protocol::MAX_HITS`] hits is a few KiB).
const MAX_BODY_BYTES_LIMIT: u64 = 16 * 1024 * 1024;
/// Upper bound of the drain deadline.
const MAX_SHUTDOWN_GRACE_MS: u64 = 600_000;

// Not `Debug`: it holds the token and the passwords.
/// The settings as given, each checked on its own.
#[derive(Clone, Parser)]
#[command(
    name = "limitd",
    version,
    long_about = None,
    about = "Rate-limit counter service: checks batches of hits against Redis (found through \
             Sentinel, or a Redis Cluster) in one Lua script.",
    after_help = "Exactly one of --sentinel-hosts, --redis-url and --redis-cluster-nodes must be set. Secrets are \
                  better given as variables: a flag's value shows in the process list."
)]
pub struct Args {
    /// The HTTP listen address; beyond loopback only with a token
    #[arg(long, env = "LIMITD_LISTEN", value_name = "IP:PORT", default_value = "127.0.0.1:8081",
          value_parser = Trimmed(|text: &str| text.parse::<SocketAddr>()))]
    pub listen: SocketAddr,

    /// The shared secret callers send as "Authorization: Bearer <token>" (16 to 256 printable
    /// ASCII characters, e.g. from openssl rand -hex 32); unset, anyone who reaches limitd may
    /// check
    #[arg(long, env = "LIMITD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Comma-separated host:port of the Redis Sentinels ([v6]:port for IPv6)
    #[arg(long, env = "SENTINEL_HOSTS", value_name = "HOST:PORT,...",
          value_parser = SentinelHosts::parse)]
    pub sentinel_hosts: Option<SentinelHosts>,

    /// The master name the sentinels monitor (with --sentinel-hosts only)
    #[arg(long, env = "REDIS_MASTER", value_name = "NAME", default_value = "mymaster",
          value_parser = Trimmed(NonEmptyStringValueParser::new()))]
    pub redis_master: String,

    /// With --sentinel-hosts: the only host:port limitd accepts as the master, comma-separated;
    /// unset, any master a majority of the sentinels names
    #[arg(long, env = "REDIS_MASTER_ALLOWLIST", value_name = "HOST:PORT,...",
          value_parser = SentinelHosts::parse)]
    pub redis_master_allowlist: Option<SentinelHosts>,

    /// One plain Redis without Sentinel, e.g. redis://127.0.0.1:6379; a password in it wins over
    /// --redis-password
    #[arg(long, env = "REDIS_URL", value_name = "URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Comma-separated host:port of Redis Cluster nodes to start from (any few: limitd learns
    /// the rest of the cluster from them); in place of --sentinel-hosts or --redis-url
    #[arg(long, env = "REDIS_CLUSTER_NODES", value_name = "HOST:PORT,...",
          value_parser = SentinelHosts::parse)]
    pub redis_cluster_nodes: Option<SentinelHosts>,

    /// Password of the Redis data nodes (master and replicas, or every cluster node); never sent
    /// to the sentinels
    #[arg(
        long,
        env = "REDIS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub redis_password: Option<String>,

    /// Password of the sentinels (their requirepass), with --sentinel-hosts only; required with
    /// --redis-password
    #[arg(
        long,
        env = "SENTINEL_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub sentinel_password: Option<String>,

    /// Speak TLS to the sentinels and the data nodes (with --sentinel-hosts), or to every
    /// cluster node (with --redis-cluster-nodes); a rediss:// URL does for --redis-url
    #[arg(long, env = "REDIS_TLS", value_name = "BOOL", default_value = "false",
          action = clap::ArgAction::Set,
          value_parser = Trimmed(clap::builder::BoolishValueParser::new()))]
    pub redis_tls: bool,

    /// A PEM file of the CA(s) that sign the Redis and Sentinel TLS certificates, trusted in
    /// place of the system's roots
    #[arg(long, env = "REDIS_TLS_CA_FILE", value_name = "PATH")]
    pub redis_tls_ca_file: Option<std::path::PathBuf>,

    /// Timeout of one connection attempt to Redis
    #[arg(long, env = "REDIS_CONNECT_TIMEOUT_MS", value_name = "MS", default_value = "500",
          value_parser = Trimmed(RangedU64ValueParser::<u64>::new().range(1..=MAX_REDIS_TIMEOUT_MS)))]
    pub redis_connect_timeout_ms: u64,

    /// Timeout of one Redis command (the check script, PING); with a cluster, of one command
    /// including the redirects and retries the cluster client makes
    #[arg(long, env = "REDIS_RESPONSE_TIMEOUT_MS", value_name = "MS", default_value = "250",
          value_parser = Trimmed(RangedU64ValueParser::<u64>::new().range(1..=MAX_REDIS_TIMEOUT_MS)))]
    pub redis_response_timeout_ms: u64,

    /// With Sentinel, how often the sentinels are asked for the master, besides listening for
    /// +switch-master
    #[arg(long, env = "LIMITD_MASTER_POLL_MS", value_name = "MS", default_value = "1000",
          value_parser = Trimmed(RangedU64ValueParser::<u64>::new().range(100..=MAX_MASTER_POLL_MS)))]
    pub master_poll_ms: u64,

    /// The largest accepted check body; larger ones get 413
    #[arg(long, env = "LIMITD_MAX_BODY_BYTES", value_name = "BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES,
          value_parser = Trimmed(RangedU64ValueParser::<usize>::new().range(64..=MAX_BODY_BYTES_LIMIT)))]
    pub max_body_bytes: usize,

    /// How long in-flight requests may drain after a shutdown signal
    #[arg(long, env = "LIMITD_SHUTDOWN_GRACE_MS", value_name = "MS", default_value_t = DEFAULT_SHUTDOWN_GRACE_MS,
          value_parser = Trimmed(RangedU64ValueParser::<u64>::new().range(0..=MAX_SHUTDOWN_GRACE_MS)))]
    pub shutdown_grace_ms: u64,

    /// How long a client may take to send a request's headers before its connection is closed
    #[arg(long, env = "LIMITD_HEADER_READ_TIMEOUT_MS", value_name = "MS", default_value_t = DEFAULT_HEADER_READ_TIMEOUT_MS,
          value_parser = Trimmed(RangedU64ValueParser::<u64>::new().range(10..=60_000)))]
    pub header_read_timeout_ms: u64,

    /// The most client connections open at once; more are closed on accept
    #[arg(long, env = "LIMITD_MAX_CONNECTIONS", value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = Trimmed(RangedU64ValueParser::<usize>::new().range(1..=1_000_000)))]
    pub max_connections: usize,

    /// A one-off task instead of serving
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// limitd's one-off tasks.
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Print the filter rules equivalent to an envoyproxy/ratelimit configuration and the
    /// Envoy rate_limits actions that feed it; each entry that cannot be expressed is refused
    /// with a line on stderr (exit status 1)
    ConvertRatelimit(ConvertArgs),
}

/// The files to convert.
#[derive(Clone, Debug, clap::Args)]
pub struct ConvertArgs {
    /// The ratelimit service's YAML configuration (domain, descriptors)
    #[arg(long, value_name = "PATH")]
    pub config: std::path::PathBuf,

    /// YAML of the Envoy rate_limits that feed it: one route's rate_limits list, a list of
    /// routes (match.prefix or match.path, route.rate_limits), or a virtual host's
    /// rate_limits/routes
    #[arg(long, value_name = "PATH")]
    pub actions: std::path::PathBuf,

    /// Print the rules that convert even if entries were refused, and exit 0
    #[arg(long)]
    pub allow_partial: bool,
}

impl Args {
    /// Parses the process's arguments and environment; on `--help`, `--version` or a bad value,
    /// prints clap's answer and exits (status 0, or 2 for an error).
    pub fn from_process() -> Self {
        let matches = Self::command()
            .mut_args(|arg| {
                if arg
                    .get_env()
                    .is_some_and(|name| is_blank(std::env::var_os(name)))
                {
                    arg.env(None)
                } else {
                    arg
                }
            })
            .get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }

    /// Parses the settings `lookup` gives by variable name, as if they were the environment,
    /// with no arguments; the process environment is not read.
    pub fn from_lookup(
        mut lookup: impl FnMut(&str) -> Option<String>,
    ) -> Result<Self, clap::Error> {
        let mut argv = vec!["limitd".to_owned()];
        let command = Self::command().mut_args(|arg| {
            let long = arg.get_long();
            let value = arg
                .get_env()
                .and_then(OsStr::to_str)
                .and_then(&mut lookup)
                .filter(|value| !value.trim().is_empty());
            if let (Some(long), Some(value)) = (long, value) {
                argv.push(format!("--{long}={value}"));
            }
            arg.env(None)
        });
        Self::from_arg_matches(&command.try_get_matches_from(argv)?)
    }

    /// The flag and the variable of the setting whose field is `id`, e.g. `("--token",
    /// "LIMITD_TOKEN")`.
    pub fn names(id: &str) -> (String, String) {
        let command = Self::command();
        let arg = command.get_arguments().find(|arg| arg.get_id() == id);
        (
            arg.and_then(Arg::get_long)
                .map_or_else(|| id.to_owned(), |long| format!("--{long}")),
            arg.and_then(Arg::get_env)
                .map_or_else(String::new, |env| env.to_string_lossy().into_owned()),
        )
    }
}

/// A variable that is set, and empty or blank.
fn is_blank(value: Option<std::ffi::OsString>) -> bool {
    value.is_some_and(|v| v.to_str().is_some_and(|text| text.trim().is_empty()))
}

/// Parses with the inner parser after trimming the value's surrounding whitespace.
#[derive(Clone)]
struct Trimmed<P>(P);

impl<P: TypedValueParser> TypedValueParser for Trimmed<P> {
    type Value = P::Value;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<Self::Value, clap::Error> {
        // Not UTF-8: the inner parser says so.
        let trimmed = value.to_str().map_or(value, |text| OsStr::new(text.trim()));
        self.0.parse_ref(command, arg, trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_well_formed() {
        Args::command().debug_assert();
    }

    /// Every setting, by flag, variable and default: the variables are the ones deployments
    /// (docker-compose.yml, the test harness) already set, so none may change.
    #[test]
    fn every_setting_is_a_flag_and_a_variable() {
        let command = Args::command();
        let settings: Vec<(String, String, Option<String>)> = command
            .get_arguments()
            .filter(|arg| {
                arg.get_long()
                    .is_some_and(|l| l != "help" && l != "version")
            })
            .map(|arg| {
                (
                    format!("--{}", arg.get_long().unwrap_or_default()),
                    arg.get_env()
                        .map(|env| env.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    arg.get_default_values()
                        .first()
                        .map(|d| d.to_string_lossy().into_owned()),
                )
            })
            .collect();
        let expected = [
            ("--listen", "LIMITD_LISTEN", Some("127.0.0.1:8081")),
            ("--token", "LIMITD_TOKEN", None),
            ("--sentinel-hosts", "SENTINEL_HOSTS", None),
            ("--redis-master", "REDIS_MASTER", Some("mymaster")),
            ("--redis-master-allowlist", "REDIS_MASTER_ALLOWLIST", None),
            ("--redis-url", "REDIS_URL", None),
            ("--redis-cluster-nodes", "REDIS_CLUSTER_NODES", None),
            ("--redis-password", "REDIS_PASSWORD", None),
            ("--sentinel-password", "SENTINEL_PASSWORD", None),
            ("--redis-tls", "REDIS_TLS", Some("false")),
            ("--redis-tls-ca-file", "REDIS_TLS_CA_FILE", None),
            (
                "--redis-connect-timeout-ms",
                "REDIS_CONNECT_TIMEOUT_MS",
                Some("500"),
            ),
            (
                "--redis-response-timeout-ms",
                "REDIS_RESPONSE_TIMEOUT_MS",
                Some("250"),
            ),
            ("--master-poll-ms", "LIMITD_MASTER_POLL_MS", Some("1000")),
            ("--max-body-bytes", "LIMITD_MAX_BODY_BYTES", Some("65536")),
            (
                "--shutdown-grace-ms",
                "LIMITD_SHUTDOWN_GRACE_MS",
                Some("5000"),
            ),
            (
                "--header-read-timeout-ms",
                "LIMITD_HEADER_READ_TIMEOUT_MS",
                Some("5000"),
            ),
            ("--max-connections", "LIMITD_MAX_CONNECTIONS", Some("1024")),
        ]
        .map(|(flag, var, default)| (flag.to_owned(), var.to_owned(), default.map(str::to_owned)));
        assert_eq!(settings, expected);
    }

    #[test]
    fn secrets_never_show_in_the_help() {
        for arg in Args::command().get_arguments() {
            let id = arg.get_id().as_str();
            if ["token", "redis_url", "redis_password", "sentinel_password"].contains(&id) {
                assert!(arg.is_hide_env_values_set(), "{id}");
            }
        }
    }

    #[test]
    fn flags_parse_and_lookup_reads_no_process_variable() {
        let args = Args::try_parse_from(["limitd", "--max-connections", "7"]).unwrap();
        assert_eq!(args.max_connections, 7);
        let args = Args::from_lookup(|_| None).unwrap();
        assert_eq!(args.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert!(args.redis_url.is_none() && args.sentinel_hosts.is_none());
    }

    #[test]
    fn sentinel_hosts_are_checked_by_clap() {
        let error =
            Args::from_lookup(|name| (name == "SENTINEL_HOSTS").then(|| "a:1,b:0".to_owned()))
                .err()
                .unwrap();
        let text = error.to_string();
        assert!(
            text.contains("--sentinel-hosts") && text.contains("'b:0' has no valid port"),
            "{text}"
        );
    }
}
