//! limitd's Prometheus metrics, kept and rendered by `prometheus-client` (the official Rust
//! client) in the text exposition format 0.0.4 on `GET /metrics`.
//!
//! Every series with a fixed label set is created up front, so a fresh process shows them at 0,
//! and the hot path holds a handle to each: an update is one relaxed atomic add (a histogram
//! observation takes the histogram's short lock). One [`Metrics`] belongs to one store (and so to
//! one app), so in-process tests each read their own numbers.
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `limitd_checks_total{result="allowed\|denied\|error"}` | counter | checks that passed validation, by outcome (`error`: Redis could not answer, `503`/`500`) |
//! | `limitd_hits_total{result="allowed\|denied"}` | counter | hits of answered checks, by their own result |
//! | `limitd_check_duration_seconds` | histogram | time from a validated check to its answer (the Redis round trip, mostly) |
//! | `limitd_redis_errors_total{kind="timeout\|io\|readonly\|noreplicas\|noscript\|auth\|other"}` | counter | failed Redis commands, connection attempts and master resolutions |
//! | `limitd_redis_master{addr="host:port"}` | gauge | `1` for the Redis in use; no series while disconnected, nor with a Redis Cluster |
//! | `limitd_ready` | gauge | `1` if Redis answered the readiness probe of this scrape (what `/readyz` answers `200` for: the master, or every master of a cluster, within 0.5 s), else `0` |
//! | `limitd_reconnects_total` | counter | connections rebuilt after the first one |
//! | `limitd_failovers_total` | counter | rebuilds that landed on a different master address |
//! | `limitd_bad_requests_total{status="400\|413"}` | counter | refused check bodies |
//! | `limitd_checks_in_flight` | gauge | validated checks waiting for Redis right now |
//! | `limitd_invalid_checks_total` | counter | checks of a well-formed batch refused as `error: invalid` |
//! | `limitd_give_backs_total{outcome="returned\|voided\|settled\|failed"}` | counter | give-backs by what they found (`failed`: Redis stayed away for the receipt's lifetime): of checks reported as errors after their script may have run, and, on a Redis Cluster, of each slot group a denied check spanning slots had charged (`returned`, unless that give-back had to wait for Redis) |
//! | `limitd_give_backs_in_flight` | gauge | give-backs still trying to reach Redis |
//! | `limitd_refused_connections_total` | counter | connections closed on accept because `LIMITD_MAX_CONNECTIONS` were open |
//! | `limitd_unauthorized_total` | counter | check requests refused (`401`) for a missing or wrong `LIMITD_TOKEN` |
//! | `limitd_v1_requests_total` | counter | requests to the deprecated `/v1/check` and `/v1/checks` (when 0 for long, every filter is on v2) |

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of the text exposition format.
pub use prometheus_text::CONTENT_TYPE;

/// Upper bounds of the check-duration buckets, in seconds: from half a millisecond (a local
/// Redis) to one second (four times the default response timeout; slower is a fault).
const DURATION_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A label set of one fixed pair, e.g. `result="allowed"`.
type Label = [(&'static str, &'static str); 1];

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

impl CheckOutcome {
    const ALL: [Self; 3] = [Self::Allowed, Self::Denied, Self::Error];

    fn label(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }
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

/// Every metric limitd exports, registered in one [`Registry`], with a handle on each series.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// By [`CheckOutcome`], in [`CheckOutcome::ALL`] order.
    checks: [Counter; 3],
    hits_allowed: Counter,
    hits_denied: Counter,
    check_duration: Histogram,
    in_flight: Gauge,
    /// By [`RedisErrorKind`], in [`RedisErrorKind::ALL`] order.
    redis_errors: [Counter; RedisErrorKind::ALL.len()],
    /// One series, `addr` of the Redis in use, set when rendering.
    redis_master: Family<[(&'static str, String); 1], Gauge>,
    /// 1 or 0, set when rendering.
    ready: Gauge,
    reconnects: Counter,
    failovers: Counter,
    bad_requests_400: Counter,
    bad_requests_413: Counter,
    invalid_checks: Counter,
    /// By [`GiveBackOutcome`], in [`GiveBackOutcome::ALL`] order.
    give_backs: [Counter; GiveBackOutcome::ALL.len()],
    give_backs_in_flight: Gauge,
    v1_requests: Counter,
    refused_connections: Counter,
    unauthorized: Counter,
    /// Held while a render sets the master's series and encodes, so two scrapes at once cannot
    /// show each other's master. A std mutex: never held across an await.
    rendering: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A family of counters with one label, every value of it created (so shown at 0).
fn counters<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: [&'static str; N],
) -> [Counter; N] {
    let family = Family::<Label, Counter>::default();
    let counters = values.map(|value| family.get_or_create(&[(label, value)]).clone());
    registry.register(name, help, family);
    counters
}

/// A counter without labels.
fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

/// A gauge without labels.
fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let gauge = Gauge::default();
    registry.register(name, help, gauge.clone());
    gauge
}

impl Metrics {
    /// Registers every metric, each series at 0. Counters are registered without their
    /// `_total`, which the encoder appends.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        let checks = counters(
            r,
            "limitd_checks",
            "Validated checks by outcome (error: Redis could not answer)",
            "result",
            CheckOutcome::ALL.map(CheckOutcome::label),
        );
        let [hits_allowed, hits_denied] = counters(
            r,
            "limitd_hits",
            "Hits of answered checks by their own result",
            "result",
            ["allowed", "denied"],
        );
        let check_duration = Histogram::new(DURATION_BUCKETS);
        r.register(
            "limitd_check_duration_seconds",
            "Time from a validated check to its answer",
            check_duration.clone(),
        );
        let in_flight = gauge(
            r,
            "limitd_checks_in_flight",
            "Validated checks waiting for Redis",
        );
        let redis_errors = counters(
            r,
            "limitd_redis_errors",
            "Failed Redis commands, connection attempts and master resolutions, by kind",
            "kind",
            RedisErrorKind::ALL.map(RedisErrorKind::label),
        );
        let redis_master = Family::default();
        r.register(
            "limitd_redis_master",
            "1 for the address of the Redis in use; absent while disconnected",
            redis_master.clone(),
        );
        let ready = gauge(
            r,
            "limitd_ready",
            "1 if Redis answered the readiness probe (as /readyz), else 0",
        );
        let reconnects = counter(
            r,
            "limitd_reconnects",
            "Redis connections rebuilt after the first one",
        );
        let failovers = counter(
            r,
            "limitd_failovers",
            "Connection rebuilds that landed on a different master address",
        );
        let [bad_requests_400, bad_requests_413] = counters(
            r,
            "limitd_bad_requests",
            "Refused check bodies by status",
            "status",
            ["400", "413"],
        );
        let invalid_checks = counter(
            r,
            "limitd_invalid_checks",
            "Checks of a well-formed batch refused as invalid",
        );
        let give_backs = counters(
            r,
            "limitd_give_backs",
            "Give-backs by what they found: of checks reported as errors after their script may have run, and of the slot groups a denied check spanning cluster slots had charged",
            "outcome",
            GiveBackOutcome::ALL.map(GiveBackOutcome::label),
        );
        let give_backs_in_flight = gauge(
            r,
            "limitd_give_backs_in_flight",
            "Give-backs still trying to reach Redis",
        );
        let v1_requests = counter(
            r,
            "limitd_v1_requests",
            "Requests to the deprecated /v1/check and /v1/checks endpoints",
        );
        let refused_connections = counter(
            r,
            "limitd_refused_connections",
            "Connections closed on accept because the most allowed were open",
        );
        let unauthorized = counter(
            r,
            "limitd_unauthorized",
            "Check requests refused for a missing or wrong token",
        );
        Self {
            registry,
            checks,
            hits_allowed,
            hits_denied,
            check_duration,
            in_flight,
            redis_errors,
            redis_master,
            ready,
            reconnects,
            failovers,
            bad_requests_400,
            bad_requests_413,
            invalid_checks,
            give_backs,
            give_backs_in_flight,
            v1_requests,
            refused_connections,
            unauthorized,
            rendering: Mutex::new(()),
        }
    }

    /// Records a finished check: its outcome, its hits' results and how long it took.
    pub fn check_finished(
        &self,
        outcome: CheckOutcome,
        hits_allowed: u64,
        hits_denied: u64,
        elapsed: Duration,
    ) {
        let index = CheckOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(CheckOutcome::ALL.len() - 1);
        self.checks[index].inc();
        self.hits_allowed.inc_by(hits_allowed);
        self.hits_denied.inc_by(hits_denied);
        self.check_duration.observe(elapsed.as_secs_f64());
    }

    /// Marks a check as waiting for Redis until the returned guard is dropped (also when the
    /// request is cancelled).
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Counts one failed Redis command, connection attempt or master resolution.
    pub fn redis_error(&self, kind: RedisErrorKind) {
        let index = RedisErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(RedisErrorKind::ALL.len() - 1);
        self.redis_errors[index].inc();
    }

    /// Counts a rebuilt connection; `moved` when it reached a different address than before.
    pub fn reconnected(&self, moved: bool) {
        self.reconnects.inc();
        if moved {
            self.failovers.inc();
        }
    }

    /// Counts a refused check body.
    pub fn bad_request(&self, kind: BadRequest) {
        match kind {
            BadRequest::Malformed => self.bad_requests_400.inc(),
            BadRequest::TooLarge => self.bad_requests_413.inc(),
        };
    }

    /// Counts a check refused as `error: invalid` inside a well-formed batch.
    pub fn invalid_check(&self) {
        self.invalid_checks.inc();
    }

    /// How many give-backs are running.
    pub fn give_backs_in_flight(&self) -> i64 {
        self.give_backs_in_flight.get()
    }

    /// Counts a give-back as running, until [`Metrics::give_back`] counts how it ended.
    pub fn give_back_started(&self) {
        self.give_backs_in_flight.inc();
    }

    /// Counts a finished background give-back by what it found.
    pub fn give_back(&self, outcome: GiveBackOutcome) {
        self.give_backs_in_flight.dec();
        self.give_back_done(outcome);
    }

    /// Counts a give-back by what it found, without touching `limitd_give_backs_in_flight`: for
    /// one made at once in the check's own path (a slot group a denied check spanning slots had
    /// charged, given back before the answer), which never waits in the background.
    pub fn give_back_done(&self, outcome: GiveBackOutcome) {
        let index = GiveBackOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.give_backs[index].inc();
    }

    /// Counts a connection closed on accept because the most allowed were open.
    pub fn refused_connection(&self) {
        self.refused_connections.inc();
    }

    /// Counts a check request refused for a missing or wrong token.
    pub fn unauthorized(&self) {
        self.unauthorized.inc();
    }

    /// Counts a request to a deprecated v1 endpoint.
    pub fn v1_request(&self) {
        self.v1_requests.inc();
    }

    /// The text exposition of every metric; `master` is the address of the Redis in use, and
    /// `ready` whether Redis just answered the readiness probe (see [`crate::http::readyz`]).
    pub fn render(&self, master: Option<&str>, ready: bool) -> String {
        // A poisoned lock only means another render panicked; the guard protects no data.
        let _rendering = self
            .rendering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.redis_master.clear();
        if let Some(addr) = master {
            self.redis_master
                .get_or_create(&[("addr", addr.to_owned())])
                .set(1);
        }
        self.ready.set(i64::from(ready));
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Keeps `limitd_checks_in_flight` raised while alive.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
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
        let text = Metrics::default().render(None, false);
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
            "limitd_ready",
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
            // The sum is a float ("0.0"); the counts are integers ("0").
            assert_eq!(
                sample(&text, series).and_then(|v| v.parse::<f64>().ok()),
                Some(0.0),
                "{series}\n{text}"
            );
        }
        // No master, no series; the encoder then leaves out the family's HELP and TYPE too.
        assert!(!text.contains("limitd_redis_master"), "{text}");
    }

    #[test]
    fn the_format_is_well_formed() {
        let metrics = Metrics::default();
        metrics.check_finished(CheckOutcome::Allowed, 2, 0, Duration::from_micros(300));
        let text = metrics.render(Some("127.0.0.1:6379"), true);
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
        let text = metrics.render(None, false);
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
        let sum: f64 = get("limitd_check_duration_seconds_sum").parse().unwrap();
        assert!((sum - 2.0033).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn a_bucket_bound_is_inclusive() {
        let metrics = Metrics::default();
        metrics.check_finished(CheckOutcome::Allowed, 1, 0, Duration::from_millis(1));
        let text = metrics.render(None, false);
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
        let text = metrics.render(Some("10.0.0.2:6380"), true);
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
            sample(&metrics.render(None, false), "limitd_checks_in_flight").as_deref(),
            Some("2")
        );
        drop(a);
        drop(b);
        assert_eq!(
            sample(&metrics.render(None, false), "limitd_checks_in_flight").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let text = Metrics::default().render(Some("we\"i\\r\nd"), true);
        assert!(
            text.contains(r#"limitd_redis_master{addr="we\"i\\r\nd"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn the_master_series_follows_each_render() {
        let metrics = Metrics::default();
        let text = metrics.render(Some("10.0.0.1:6379"), true);
        assert_eq!(
            sample(&text, r#"limitd_redis_master{addr="10.0.0.1:6379"}"#).as_deref(),
            Some("1")
        );
        let text = metrics.render(Some("10.0.0.2:6379"), true);
        assert_eq!(text.matches("limitd_redis_master{").count(), 1, "{text}");
        assert!(!metrics.render(None, false).contains("limitd_redis_master{"));
    }

    #[test]
    fn the_ready_gauge_follows_each_render_whatever_the_store() {
        let metrics = Metrics::default();
        let ready = |master, ready| sample(&metrics.render(master, ready), "limitd_ready");
        assert_eq!(ready(Some("10.0.0.1:6379"), true).as_deref(), Some("1"));
        assert_eq!(ready(Some("10.0.0.1:6379"), false).as_deref(), Some("0"));
        // A cluster store names no master: the gauge still says whether it is ready.
        assert_eq!(ready(None, true).as_deref(), Some("1"));
        assert_eq!(ready(None, false).as_deref(), Some("0"));
    }

    /// Every metric limitd has ever exported, with its type and every series a fresh process
    /// shows: dashboards and alerts depend on these names, so none may change by accident.
    #[test]
    fn every_metric_keeps_its_name_type_and_labels() {
        let expected: &[(&str, &str, &[&str])] = &[
            (
                "limitd_checks_total",
                "counter",
                &[
                    r#"limitd_checks_total{result="allowed"}"#,
                    r#"limitd_checks_total{result="denied"}"#,
                    r#"limitd_checks_total{result="error"}"#,
                ],
            ),
            (
                "limitd_hits_total",
                "counter",
                &[
                    r#"limitd_hits_total{result="allowed"}"#,
                    r#"limitd_hits_total{result="denied"}"#,
                ],
            ),
            (
                "limitd_check_duration_seconds",
                "histogram",
                &[
                    r#"limitd_check_duration_seconds_bucket{le="0.0005"}"#,
                    r#"limitd_check_duration_seconds_bucket{le="0.001"}"#,
                    r#"limitd_check_duration_seconds_bucket{le="0.0025"}"#,
                    r#"limitd_check_duration_seconds_bucket{le="0.005"}"#,
                    r#"limitd_check_duration_seconds_bucket{le="0.01"}"#,
                    r#"limitd_check_duration_seconds_bucket{le="0.025"}"#,
                    r#"limitd_check_duration_seconds_bucket{le="0.05"}"#,
                    r#"limitd_check_duration_seconds_bucket{le="0.1"}"#,
                    r#"limitd_check_duration_seconds_bucket{le="0.25"}"#,
                    r#"limitd_check_duration_seconds_bucket{le="0.5"}"#,
                    r#"limitd_check_duration_seconds_bucket{le="1"}"#,
                    r#"limitd_check_duration_seconds_bucket{le="+Inf"}"#,
                    "limitd_check_duration_seconds_sum",
                    "limitd_check_duration_seconds_count",
                ],
            ),
            (
                "limitd_checks_in_flight",
                "gauge",
                &["limitd_checks_in_flight"],
            ),
            (
                "limitd_redis_errors_total",
                "counter",
                &[
                    r#"limitd_redis_errors_total{kind="timeout"}"#,
                    r#"limitd_redis_errors_total{kind="io"}"#,
                    r#"limitd_redis_errors_total{kind="readonly"}"#,
                    r#"limitd_redis_errors_total{kind="noreplicas"}"#,
                    r#"limitd_redis_errors_total{kind="noscript"}"#,
                    r#"limitd_redis_errors_total{kind="auth"}"#,
                    r#"limitd_redis_errors_total{kind="other"}"#,
                ],
            ),
            (
                "limitd_redis_master",
                "gauge",
                &[r#"limitd_redis_master{addr="127.0.0.1:6379"}"#],
            ),
            ("limitd_ready", "gauge", &["limitd_ready"]),
            (
                "limitd_reconnects_total",
                "counter",
                &["limitd_reconnects_total"],
            ),
            (
                "limitd_failovers_total",
                "counter",
                &["limitd_failovers_total"],
            ),
            (
                "limitd_bad_requests_total",
                "counter",
                &[
                    r#"limitd_bad_requests_total{status="400"}"#,
                    r#"limitd_bad_requests_total{status="413"}"#,
                ],
            ),
            (
                "limitd_invalid_checks_total",
                "counter",
                &["limitd_invalid_checks_total"],
            ),
            (
                "limitd_give_backs_total",
                "counter",
                &[
                    r#"limitd_give_backs_total{outcome="returned"}"#,
                    r#"limitd_give_backs_total{outcome="voided"}"#,
                    r#"limitd_give_backs_total{outcome="settled"}"#,
                    r#"limitd_give_backs_total{outcome="failed"}"#,
                ],
            ),
            (
                "limitd_give_backs_in_flight",
                "gauge",
                &["limitd_give_backs_in_flight"],
            ),
            (
                "limitd_v1_requests_total",
                "counter",
                &["limitd_v1_requests_total"],
            ),
            (
                "limitd_refused_connections_total",
                "counter",
                &["limitd_refused_connections_total"],
            ),
            (
                "limitd_unauthorized_total",
                "counter",
                &["limitd_unauthorized_total"],
            ),
        ];
        let text = Metrics::default().render(Some("127.0.0.1:6379"), true);
        let declared: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .collect();
        let wanted: Vec<String> = expected
            .iter()
            .map(|(name, kind, _)| format!("{name} {kind}"))
            .collect();
        assert_eq!(declared, wanted, "{text}");
        let series: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' ').map(|(series, _)| series))
            .collect();
        let mut listed: Vec<&str> = expected
            .iter()
            .flat_map(|(_, _, s)| s.iter().copied())
            .collect();
        let mut shown = series.clone();
        listed.sort_unstable();
        shown.sort_unstable();
        assert_eq!(shown, listed, "{text}");
    }
}
