//! limitd's Prometheus metrics: plain atomics, rendered by hand in the text exposition format
//! 0.0.4 on `GET /metrics`.
//!
//! Hand-written rather than the `prometheus` crate: a dozen series do not justify its build
//! time, and every update here is one relaxed atomic add on the request path. One [`Metrics`]
//! belongs to one store (and so to one app), so in-process tests each read their own numbers.
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `limitd_checks_total{result="allowed\|denied\|error"}` | counter | checks that passed validation, by outcome (`error`: Redis could not answer, `503`/`500`) |
//! | `limitd_hits_total{result="allowed\|denied"}` | counter | hits of answered checks, by their own result |
//! | `limitd_check_duration_seconds` | histogram | time from a validated check to its answer (the Redis round trip, mostly) |
//! | `limitd_redis_errors_total{kind="timeout\|io\|readonly\|noreplicas\|noscript\|auth\|other"}` | counter | failed Redis commands, connection attempts and master resolutions |
//! | `limitd_redis_master{addr="host:port"}` | gauge | `1` for the Redis in use; no series while disconnected |
//! | `limitd_reconnects_total` | counter | connections rebuilt after the first one |
//! | `limitd_failovers_total` | counter | rebuilds that landed on a different master address |
//! | `limitd_bad_requests_total{status="400\|413"}` | counter | refused check bodies |
//! | `limitd_checks_in_flight` | gauge | validated checks waiting for Redis right now |
//! | `limitd_invalid_checks_total` | counter | checks of a well-formed batch refused as `error: invalid` |
//! | `limitd_give_backs_total{outcome="returned\|voided\|settled\|failed"}` | counter | checks reported as errors after their script may have run, by what the give-back found (`failed`: Redis stayed away for the receipt's lifetime) |
//! | `limitd_give_backs_in_flight` | gauge | give-backs still trying to reach Redis |
//! | `limitd_refused_connections_total` | counter | connections closed on accept because `LIMITD_MAX_CONNECTIONS` were open |
//! | `limitd_unauthorized_total` | counter | check requests refused (`401`) for a missing or wrong `LIMITD_TOKEN` |
//! | `limitd_v1_requests_total` | counter | requests to the deprecated `/v1/check` and `/v1/checks` (when 0 for long, every filter is on v2) |

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the check-duration buckets, in nanoseconds, with their `le` labels: from
/// half a millisecond (a local Redis) to one second (far past any sane response timeout).
const DURATION_BUCKETS: [(u64, &str); 11] = [
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
];

/// How a validated check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Every hit fitted.
    Allowed,
    /// At least one hit did not fit.
    Denied,
    /// Redis could not answer (or answered nonsense).
    Error,
}

/// The class of a Redis failure, as the `kind` label of `limitd_redis_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisErrorKind {
    /// No answer within the connect or response timeout.
    Timeout,
    /// Refused, reset or dropped connections and other I/O failures.
    Io,
    /// `READONLY`: the node was demoted to replica.
    ReadOnly,
    /// `NOREPLICAS`: the master has fewer good replicas than `min-replicas-to-write` (cut off,
    /// or its replica was just promoted), so it refuses writes.
    NoReplicas,
    /// `NOSCRIPT` that redis-rs could not recover from by loading the script.
    NoScript,
    /// Authentication refused or required (`NOAUTH`, `WRONGPASS`, a failed `AUTH`).
    Auth,
    /// Anything else (script errors, `LOADING`, `MASTERDOWN`, unexpected replies, …).
    Other,
}

impl RedisErrorKind {
    const ALL: [Self; 7] = [
        Self::Timeout,
        Self::Io,
        Self::ReadOnly,
        Self::NoReplicas,
        Self::NoScript,
        Self::Auth,
        Self::Other,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Io => "io",
            Self::ReadOnly => "readonly",
            Self::NoReplicas => "noreplicas",
            Self::NoScript => "noscript",
            Self::Auth => "auth",
            Self::Other => "other",
        }
    }
}

/// A refused check body, as the `status` label of `limitd_bad_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// Malformed or out of bounds (`400`).
    Malformed,
    /// Over `LIMITD_MAX_BODY_BYTES` (`413`).
    TooLarge,
}

/// Every counter limitd exports. All updates are relaxed atomic adds: the numbers are
/// independent, and a scrape that sees one a moment before another is fine.
#[derive(Debug, Default)]
pub struct Metrics {
    checks_allowed: AtomicU64,
    checks_denied: AtomicU64,
    checks_error: AtomicU64,
    hits_allowed: AtomicU64,
    hits_denied: AtomicU64,
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    duration_buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    duration_sum_nanos: AtomicU64,
    redis_errors: [AtomicU64; RedisErrorKind::ALL.len()],
    reconnects: AtomicU64,
    failovers: AtomicU64,
    bad_requests_400: AtomicU64,
    bad_requests_413: AtomicU64,
    in_flight: AtomicI64,
    invalid_checks: AtomicU64,
    give_backs: [AtomicU64; 4],
    give_backs_in_flight: AtomicI64,
    v1_requests: AtomicU64,
    refused_connections: AtomicU64,
    unauthorized: AtomicU64,
}

/// What a give-back found, as the `outcome` label of `limitd_give_backs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveBackOutcome {
    /// The check had been counted and was given back.
    Returned,
    /// The check had not run; its receipt was voided.
    Voided,
    /// Another give-back had settled it.
    Settled,
    /// Redis could not be reached within the receipt's lifetime.
    Failed,
}

impl GiveBackOutcome {
    const ALL: [GiveBackOutcome; 4] = [
        GiveBackOutcome::Returned,
        GiveBackOutcome::Voided,
        GiveBackOutcome::Settled,
        GiveBackOutcome::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            GiveBackOutcome::Returned => "returned",
            GiveBackOutcome::Voided => "voided",
            GiveBackOutcome::Settled => "settled",
            GiveBackOutcome::Failed => "failed",
        }
    }
}

impl Metrics {
    /// Records a finished check: its outcome, its hits' results and how long it took.
    pub fn check_finished(
        &self,
        outcome: CheckOutcome,
        hits_allowed: u64,
        hits_denied: u64,
        elapsed: Duration,
    ) {
        let counter = match outcome {
            CheckOutcome::Allowed => &self.checks_allowed,
            CheckOutcome::Denied => &self.checks_denied,
            CheckOutcome::Error => &self.checks_error,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.hits_allowed.fetch_add(hits_allowed, Ordering::Relaxed);
        self.hits_denied.fetch_add(hits_denied, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|(bound, _)| nanos <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Marks a check as waiting for Redis until the returned guard is dropped (also when the
    /// request is cancelled).
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Counts one failed Redis command, connection attempt or master resolution.
    pub fn redis_error(&self, kind: RedisErrorKind) {
        let index = RedisErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(RedisErrorKind::ALL.len() - 1);
        self.redis_errors[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a rebuilt connection; `moved` when it reached a different address than before.
    pub fn reconnected(&self, moved: bool) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        if moved {
            self.failovers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a refused check body.
    pub fn bad_request(&self, kind: BadRequest) {
        let counter = match kind {
            BadRequest::Malformed => &self.bad_requests_400,
            BadRequest::TooLarge => &self.bad_requests_413,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a check refused as `error: invalid` inside a well-formed batch.
    pub fn invalid_check(&self) {
        self.invalid_checks.fetch_add(1, Ordering::Relaxed);
    }

    /// How many give-backs are running.
    pub fn give_backs_in_flight(&self) -> i64 {
        self.give_backs_in_flight.load(Ordering::Relaxed)
    }

    /// Counts a give-back as running, until [`Metrics::give_back`] counts how it ended.
    pub fn give_back_started(&self) {
        self.give_backs_in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a finished give-back by what it found.
    pub fn give_back(&self, outcome: GiveBackOutcome) {
        self.give_backs_in_flight.fetch_sub(1, Ordering::Relaxed);
        let index = GiveBackOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.give_backs[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed on accept because the most allowed were open.
    pub fn refused_connection(&self) {
        self.refused_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a check request refused for a missing or wrong token.
    pub fn unauthorized(&self) {
        self.unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request to a deprecated v1 endpoint.
    pub fn v1_request(&self) {
        self.v1_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition of every metric; `master` is the address of the Redis in use.
    pub fn render(&self, master: Option<&str>) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);

        header(
            &mut out,
            "limitd_checks_total",
            "counter",
            "Validated checks by outcome (error: Redis could not answer).",
        );
        for (result, counter) in [
            ("allowed", &self.checks_allowed),
            ("denied", &self.checks_denied),
            ("error", &self.checks_error),
        ] {
            let _ = writeln!(
                out,
                "limitd_checks_total{{result=\"{result}\"}} {}",
                get(counter)
            );
        }

        header(
            &mut out,
            "limitd_hits_total",
            "counter",
            "Hits of answered checks by their own result.",
        );
        for (result, counter) in [
            ("allowed", &self.hits_allowed),
            ("denied", &self.hits_denied),
        ] {
            let _ = writeln!(
                out,
                "limitd_hits_total{{result=\"{result}\"}} {}",
                get(counter)
            );
        }

        header(
            &mut out,
            "limitd_check_duration_seconds",
            "histogram",
            "Time from a validated check to its answer.",
        );
        let mut cumulative = 0u64;
        for (i, (_, le)) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += get(&self.duration_buckets[i]);
            let _ = writeln!(
                out,
                "limitd_check_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += get(&self.duration_buckets[DURATION_BUCKETS.len()]);
        let _ = writeln!(
            out,
            "limitd_check_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        // Precision: f64 holds nanosecond sums exactly up to ~104 days of check time.
        #[allow(clippy::cast_precision_loss)]
        let sum_seconds = get(&self.duration_sum_nanos) as f64 / 1e9;
        let _ = writeln!(out, "limitd_check_duration_seconds_sum {sum_seconds}");
        let _ = writeln!(out, "limitd_check_duration_seconds_count {cumulative}");

        header(
            &mut out,
            "limitd_checks_in_flight",
            "gauge",
            "Validated checks waiting for Redis.",
        );
        let _ = writeln!(
            out,
            "limitd_checks_in_flight {}",
            self.in_flight.load(Ordering::Relaxed).max(0)
        );

        header(
            &mut out,
            "limitd_redis_errors_total",
            "counter",
            "Failed Redis commands, connection attempts and master resolutions, by kind.",
        );
        for (kind, counter) in RedisErrorKind::ALL.iter().zip(&self.redis_errors) {
            let _ = writeln!(
                out,
                "limitd_redis_errors_total{{kind=\"{}\"}} {}",
                kind.label(),
                get(counter)
            );
        }

        header(
            &mut out,
            "limitd_redis_master",
            "gauge",
            "1 for the address of the Redis in use; absent while disconnected.",
        );
        if let Some(addr) = master {
            let _ = writeln!(out, "limitd_redis_master{{addr=\"{}\"}} 1", escape(addr));
        }

        header(
            &mut out,
            "limitd_reconnects_total",
            "counter",
            "Redis connections rebuilt after the first one.",
        );
        let _ = writeln!(out, "limitd_reconnects_total {}", get(&self.reconnects));

        header(
            &mut out,
            "limitd_failovers_total",
            "counter",
            "Connection rebuilds that landed on a different master address.",
        );
        let _ = writeln!(out, "limitd_failovers_total {}", get(&self.failovers));

        header(
            &mut out,
            "limitd_bad_requests_total",
            "counter",
            "Refused check bodies by status.",
        );
        for (status, counter) in [
            ("400", &self.bad_requests_400),
            ("413", &self.bad_requests_413),
        ] {
            let _ = writeln!(
                out,
                "limitd_bad_requests_total{{status=\"{status}\"}} {}",
                get(counter)
            );
        }

        header(
            &mut out,
            "limitd_invalid_checks_total",
            "counter",
            "Checks of a well-formed batch refused as invalid.",
        );
        let _ = writeln!(
            out,
            "limitd_invalid_checks_total {}",
            get(&self.invalid_checks)
        );

        header(
            &mut out,
            "limitd_give_backs_total",
            "counter",
            "Checks reported as errors after their script may have run, by what the give-back found.",
        );
        for (outcome, counter) in GiveBackOutcome::ALL.iter().zip(&self.give_backs) {
            let _ = writeln!(
                out,
                "limitd_give_backs_total{{outcome=\"{}\"}} {}",
                outcome.label(),
                get(counter)
            );
        }

        header(
            &mut out,
            "limitd_give_backs_in_flight",
            "gauge",
            "Give-backs still trying to reach Redis.",
        );
        let _ = writeln!(
            out,
            "limitd_give_backs_in_flight {}",
            self.give_backs_in_flight.load(Ordering::Relaxed).max(0)
        );

        header(
            &mut out,
            "limitd_v1_requests_total",
            "counter",
            "Requests to the deprecated /v1/check and /v1/checks endpoints.",
        );
        let _ = writeln!(out, "limitd_v1_requests_total {}", get(&self.v1_requests));

        header(
            &mut out,
            "limitd_refused_connections_total",
            "counter",
            "Connections closed on accept because the most allowed were open.",
        );
        let _ = writeln!(
            out,
            "limitd_refused_connections_total {}",
            get(&self.refused_connections)
        );

        header(
            &mut out,
            "limitd_unauthorized_total",
            "counter",
            "Check requests refused for a missing or wrong token.",
        );
        let _ = writeln!(out, "limitd_unauthorized_total {}", get(&self.unauthorized));
        out
    }
}

/// Keeps `limitd_checks_in_flight` raised while alive.
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and line feed, as the format requires.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample whose name-and-labels part is exactly `series`.
    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }

    #[test]
    fn a_fresh_registry_renders_every_series_at_zero() {
        let text = Metrics::default().render(None);
        for series in [
            r#"limitd_checks_total{result="allowed"}"#,
            r#"limitd_checks_total{result="denied"}"#,
            r#"limitd_checks_total{result="error"}"#,
            r#"limitd_hits_total{result="allowed"}"#,
            r#"limitd_hits_total{result="denied"}"#,
            r#"limitd_check_duration_seconds_bucket{le="0.0005"}"#,
            r#"limitd_check_duration_seconds_bucket{le="1"}"#,
            r#"limitd_check_duration_seconds_bucket{le="+Inf"}"#,
            "limitd_check_duration_seconds_sum",
            "limitd_check_duration_seconds_count",
            "limitd_checks_in_flight",
            r#"limitd_redis_errors_total{kind="timeout"}"#,
            r#"limitd_redis_errors_total{kind="io"}"#,
            r#"limitd_redis_errors_total{kind="readonly"}"#,
            r#"limitd_redis_errors_total{kind="noscript"}"#,
            r#"limitd_redis_errors_total{kind="auth"}"#,
            r#"limitd_redis_errors_total{kind="other"}"#,
            "limitd_reconnects_total",
            "limitd_failovers_total",
            r#"limitd_bad_requests_total{status="400"}"#,
            r#"limitd_bad_requests_total{status="413"}"#,
        ] {
            assert_eq!(
                sample(&text, series).as_deref(),
                Some("0"),
                "{series}\n{text}"
            );
        }
        // No master, no series (but the family is still declared).
        assert!(text.contains("# TYPE limitd_redis_master gauge"));
        assert!(!text.contains("limitd_redis_master{"), "{text}");
    }

    #[test]
    fn the_format_is_well_formed() {
        let metrics = Metrics::default();
        metrics.check_finished(CheckOutcome::Allowed, 2, 0, Duration::from_micros(300));
        let text = metrics.render(Some("127.0.0.1:6379"));
        assert!(text.ends_with('\n'));
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(!declared.contains(&name), "{name} declared twice");
                declared.push(name);
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            // name{labels} value: the value is a number, the name belongs to the last TYPE.
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            let family = declared.last().unwrap();
            assert!(
                name == *family
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(family)),
                "{line} outside its family {family}"
            );
        }
    }

    #[test]
    fn checks_hits_and_durations_are_counted() {
        let metrics = Metrics::default();
        metrics.check_finished(CheckOutcome::Allowed, 2, 0, Duration::from_micros(300));
        metrics.check_finished(CheckOutcome::Denied, 1, 1, Duration::from_millis(3));
        metrics.check_finished(CheckOutcome::Error, 0, 0, Duration::from_secs(2));
        let text = metrics.render(None);
        let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}"));
        assert_eq!(get(r#"limitd_checks_total{result="allowed"}"#), "1");
        assert_eq!(get(r#"limitd_checks_total{result="denied"}"#), "1");
        assert_eq!(get(r#"limitd_checks_total{result="error"}"#), "1");
        assert_eq!(get(r#"limitd_hits_total{result="allowed"}"#), "3");
        assert_eq!(get(r#"limitd_hits_total{result="denied"}"#), "1");
        // Buckets are cumulative; 2 s lands only in +Inf.
        assert_eq!(
            get(r#"limitd_check_duration_seconds_bucket{le="0.0005"}"#),
            "1"
        );
        assert_eq!(
            get(r#"limitd_check_duration_seconds_bucket{le="0.0025"}"#),
            "1"
        );
        assert_eq!(
            get(r#"limitd_check_duration_seconds_bucket{le="0.005"}"#),
            "2"
        );
        assert_eq!(get(r#"limitd_check_duration_seconds_bucket{le="1"}"#), "2");
        assert_eq!(
            get(r#"limitd_check_duration_seconds_bucket{le="+Inf"}"#),
            "3"
        );
        assert_eq!(get("limitd_check_duration_seconds_count"), "3");
        assert_eq!(get("limitd_check_duration_seconds_sum"), "2.0033");
    }

    #[test]
    fn a_bucket_bound_is_inclusive() {
        let metrics = Metrics::default();
        metrics.check_finished(CheckOutcome::Allowed, 1, 0, Duration::from_millis(1));
        let text = metrics.render(None);
        assert_eq!(
            sample(
                &text,
                r#"limitd_check_duration_seconds_bucket{le="0.0005"}"#
            )
            .as_deref(),
            Some("0")
        );
        assert_eq!(
            sample(&text, r#"limitd_check_duration_seconds_bucket{le="0.001"}"#).as_deref(),
            Some("1")
        );
    }

    #[test]
    fn errors_reconnects_and_bad_requests_are_counted() {
        let metrics = Metrics::default();
        metrics.redis_error(RedisErrorKind::Timeout);
        metrics.redis_error(RedisErrorKind::Timeout);
        metrics.redis_error(RedisErrorKind::ReadOnly);
        metrics.redis_error(RedisErrorKind::Auth);
        metrics.reconnected(false);
        metrics.reconnected(true);
        metrics.bad_request(BadRequest::Malformed);
        metrics.bad_request(BadRequest::TooLarge);
        metrics.bad_request(BadRequest::TooLarge);
        let text = metrics.render(Some("10.0.0.2:6380"));
        let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}"));
        assert_eq!(get(r#"limitd_redis_errors_total{kind="timeout"}"#), "2");
        assert_eq!(get(r#"limitd_redis_errors_total{kind="readonly"}"#), "1");
        assert_eq!(get(r#"limitd_redis_errors_total{kind="auth"}"#), "1");
        assert_eq!(get(r#"limitd_redis_errors_total{kind="io"}"#), "0");
        assert_eq!(get("limitd_reconnects_total"), "2");
        assert_eq!(get("limitd_failovers_total"), "1");
        assert_eq!(get(r#"limitd_bad_requests_total{status="400"}"#), "1");
        assert_eq!(get(r#"limitd_bad_requests_total{status="413"}"#), "2");
        assert_eq!(get(r#"limitd_redis_master{addr="10.0.0.2:6380"}"#), "1");
        assert_eq!(text.matches("limitd_redis_master{").count(), 1);
    }

    #[test]
    fn in_flight_follows_the_guards() {
        let metrics = Metrics::default();
        let a = metrics.in_flight();
        let b = metrics.in_flight();
        assert_eq!(
            sample(&metrics.render(None), "limitd_checks_in_flight").as_deref(),
            Some("2")
        );
        drop(a);
        drop(b);
        assert_eq!(
            sample(&metrics.render(None), "limitd_checks_in_flight").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("a\nb"), r"a\nb");
        let text = Metrics::default().render(Some("we\"ird"));
        assert!(
            text.contains(r#"limitd_redis_master{addr="we\"ird"} 1"#),
            "{text}"
        );
    }
}
