//! What a Redis failure means to limitd: the store's error type ([`StoreError`]), and how a
//! redis-rs error is read: worth a new connection ([`is_transient`]), a refused password
//! ([`is_auth_error`]), a master without its replicas ([`is_no_replicas`]), and its label in
//! `limitd_redis_errors_total` ([`classify`]).
//!
//! [`crate::store`] acts on these answers (rebuilds, give-backs, logs) and re-exports them.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::metrics::RedisErrorKind;

/// Why a check could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection has been made yet, or none since start-up succeeded.
    #[error("no connection to Redis yet (reconnecting)")]
    NotConnected,
    /// Redis answered with an error, or did not answer in time.
    #[error("redis: {source}")]
    Redis {
        /// The error from redis-rs.
        #[source]
        source: RedisError,
        /// Whether it is worth retrying, on a new connection (see [`is_transient`]).
        transient: bool,
    },
    /// The script's reply did not have the expected shape (a bug, or a foreign script).
    #[error("unexpected reply from the check script: {0}")]
    Reply(String),
    /// The check's receipt had been voided by a give-back: it counted nothing.
    #[error("the check was given up before it ran")]
    Voided,
    /// The Redis configuration was refused by redis-rs.
    #[error("bad Redis configuration: {0}")]
    Config(#[source] RedisError),
}

impl StoreError {
    /// Whether the failure is about reaching Redis (answer `503`, retry later) rather than a bug
    /// or a misconfiguration.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::NotConnected | Self::Voided => true,
            Self::Redis { transient, .. } => *transient,
            Self::Reply(_) | Self::Config(_) => false,
        }
    }

    /// Whether the check's script may have run (and counted) although no answer says so: the
    /// command went out and then the connection failed or the answer timed out, or an answer
    /// came back that could not be read. A refusal by Redis (an error reply), a connection never
    /// made, or a voided receipt means it did not run.
    pub fn may_have_run(&self) -> bool {
        match self {
            Self::Redis { source, .. } => {
                source.code().is_none()
                    && !source.is_connection_refusal()
                    && !matches!(
                        source.kind(),
                        ErrorKind::Server(_)
                            | ErrorKind::Extension
                            | ErrorKind::AuthenticationFailed
                            | ErrorKind::InvalidClientConfig
                    )
            }
            Self::Reply(_) => true,
            Self::NotConnected | Self::Config(_) | Self::Voided => false,
        }
    }

    /// Whether Redis did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Redis { source, .. } if source.is_timeout())
    }
}

impl From<RedisError> for StoreError {
    fn from(source: RedisError) -> Self {
        Self::Redis {
            transient: is_transient(&source),
            source,
        }
    }
}

/// Whether `err` says the connection or its server cannot serve us now, so the connection
/// should be rebuilt against the current master.
///
/// `READONLY` needs its own arm: redis-rs classifies it as "refresh slots and retry" (a Cluster
/// notion), not as unrecoverable, yet for us it means the master was demoted.
///
/// With a cluster, a redirect still unresolved when the client's retries ran out (`MOVED`,
/// `ASK`) and a slot whose node cannot be reached mean the topology is changing: retry later.
///
/// Authentication errors count too: they say the connection is unusable (a failed handshake,
/// or `NOAUTH` on a connection that never authenticated), and the client should learn that
/// Redis is unavailable (`503`), not that limitd is broken.
pub fn is_transient(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
        || is_auth_error(err)
        || is_no_replicas(err)
        || matches!(
            err.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            ) | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::ClusterConnectionNotFound
        )
}

/// Whether `err` is `NOREPLICAS`: the master refuses writes because it has fewer good replicas
/// than its `min-replicas-to-write` (it is cut off from them, or its replica was just promoted).
/// Nothing was written; the master the sentinels name next is the one to use.
pub fn is_no_replicas(err: &RedisError) -> bool {
    err.code() == Some("NOREPLICAS")
}

/// The `kind` label of `err` in `limitd_redis_errors_total`.
pub fn classify(err: &RedisError) -> RedisErrorKind {
    if err.is_timeout() {
        RedisErrorKind::Timeout
    } else if is_auth_error(err) {
        RedisErrorKind::Auth
    } else if is_no_replicas(err) {
        RedisErrorKind::NoReplicas
    } else {
        match err.kind() {
            ErrorKind::Server(ServerErrorKind::ReadOnly) => RedisErrorKind::ReadOnly,
            ErrorKind::Server(ServerErrorKind::NoScript) => RedisErrorKind::NoScript,
            ErrorKind::Io => RedisErrorKind::Io,
            _ => RedisErrorKind::Other,
        }
    }
}

/// Whether `err` is a refused or missing authentication: a failed `AUTH` during the
/// connection handshake (wrong password, or a password sent to a server without one), or
/// `NOAUTH`/`WRONGPASS`/`NOPERM` from a command (no password sent to a server that needs one).
pub fn is_auth_error(err: &RedisError) -> bool {
    err.kind() == ErrorKind::AuthenticationFailed
        || err.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
        || matches!(err.code(), Some("NOAUTH" | "WRONGPASS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_transient() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let readonly = RedisError::from((ErrorKind::Server(ServerErrorKind::ReadOnly), "READONLY"));
        let loading =
            RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "LOADING"));
        for err in [refused, timeout, readonly, loading] {
            assert!(is_transient(&err), "{err}");
            assert!(StoreError::from(err).is_transient());
        }
    }

    #[test]
    fn errors_are_classified_for_the_metrics() {
        let cases = [
            (
                RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)),
                RedisErrorKind::Timeout,
            ),
            (
                RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
                RedisErrorKind::Io,
            ),
            (
                RedisError::from((ErrorKind::Io, "closed")),
                RedisErrorKind::Io,
            ),
            (
                RedisError::from((ErrorKind::Server(ServerErrorKind::ReadOnly), "READONLY")),
                RedisErrorKind::ReadOnly,
            ),
            (
                RedisError::from((ErrorKind::Server(ServerErrorKind::NoScript), "NOSCRIPT")),
                RedisErrorKind::NoScript,
            ),
            (
                RedisError::from((
                    ErrorKind::AuthenticationFailed,
                    "Password authentication failed",
                )),
                RedisErrorKind::Auth,
            ),
            (
                redis::make_extension_error(
                    "NOAUTH".into(),
                    Some("Authentication required.".into()),
                ),
                RedisErrorKind::Auth,
            ),
            (
                redis::make_extension_error("WRONGPASS".into(), None),
                RedisErrorKind::Auth,
            ),
            (
                RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "LOADING")),
                RedisErrorKind::Other,
            ),
            (
                RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "ERR x")),
                RedisErrorKind::Other,
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(classify(&err), kind, "{err}");
        }
    }

    #[test]
    fn script_and_type_errors_are_not_transient() {
        let script = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "ERR in script",
        ));
        let wrong_type = RedisError::from((ErrorKind::UnexpectedReturnType, "not an array"));
        for err in [script, wrong_type] {
            assert!(!is_transient(&err), "{err}");
        }
        assert!(!StoreError::Reply("x".into()).is_transient());
        assert!(StoreError::NotConnected.is_transient());
    }
}
