//! The filter's counters and histogram, defined once per VM.
//!
//! Most counts go to Envoy at once. The counts of a request decided inside this Envoy, admitted
//! from a lease block or denied from the deny cache (the paths that must cost almost nothing),
//! are kept in the VM and added every [`FLUSH_PERIOD`] by the root's timer: one host call per
//! counter and period instead of four per request.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

pub(super) use crate::settle::RuleOutcome;

use super::now;

/// The filter's counters, shown by Envoy as `wasmcustom.ratelimit.*` in `/stats`
/// (and without the prefix in `/stats/prometheus`). Same-named metrics of every
/// worker's VM add up.
pub(super) struct Metrics {
    pub(super) checks: Option<u32>,
    pub(super) allowed: Option<u32>,
    pub(super) denied: Option<u32>,
    pub(super) shadow_denied: Option<u32>,
    pub(super) deny_cache_hits: Option<u32>,
    pub(super) failure_mode_allowed: Option<u32>,
    pub(super) failure_mode_denied: Option<u32>,
    pub(super) fallback_allowed: Option<u32>,
    pub(super) fallback_denied: Option<u32>,
    pub(super) callout_errors: Option<u32>,
    pub(super) callouts: Option<u32>,
    pub(super) callout_retries: Option<u32>,
    /// Requests admitted from a lease block, without a callout.
    pub(super) lease_admitted: Option<u32>,
    /// Units limitd leased to this Envoy.
    pub(super) lease_units: Option<u32>,
    /// Background refills of lease blocks sent.
    pub(super) lease_refills: Option<u32>,
    /// Histogram of callout round trips, in microseconds.
    pub(super) callout_latency_us: Option<u32>,
    /// Per rule (in the policy's order): its decisions by outcome.
    pub(super) rules: Vec<RuleMetrics>,
    /// Counts not yet added to Envoy's counters: (metric, count). An entry stays once made, at
    /// 0 after a flush, so the list stops growing after the first requests.
    deferred: RefCell<Vec<(u32, u64)>>,
    /// Whether a timer flushes deferred counts; if not, nothing is deferred.
    timer: bool,
}

/// How often deferred counts reach Envoy's counters: they lag by at most this (plus a timer's
/// jitter) in `/stats`.
pub(super) const FLUSH_PERIOD: Duration = Duration::from_millis(100);

// What happened to the requests one rule matched is counted as `ratelimit.rule.<rule>.<outcome>`
// (outcomes: [`RuleOutcome`]); `envoy.yaml`'s `stats_tags` turn the rule and the outcome into
// labels (`ratelimit_rule{rule="...",outcome="..."}` in `/stats/prometheus`). Rule names come
// from the configuration, never from a request, so the labels stay few.

/// One rule's counters, by [`RuleOutcome`] in the order of `RuleOutcome::ALL`.
pub(super) struct RuleMetrics([Option<u32>; 7]);

impl Metrics {
    /// `timer`: whether the root's timer runs to flush deferred counts.
    pub(super) fn define(rules: &[String], timer: bool) -> Self {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        let rules =
            rules
                .iter()
                .map(|rule| {
                    RuleMetrics(RuleOutcome::ALL.map(|outcome| {
                        counter(&format!("ratelimit.rule.{rule}.{}", outcome.name()))
                    }))
                })
                .collect();
        Metrics {
            checks: counter("ratelimit.checks"),
            allowed: counter("ratelimit.allowed"),
            denied: counter("ratelimit.denied"),
            shadow_denied: counter("ratelimit.shadow_denied"),
            deny_cache_hits: counter("ratelimit.deny_cache_hits"),
            failure_mode_allowed: counter("ratelimit.failure_mode_allowed"),
            failure_mode_denied: counter("ratelimit.failure_mode_denied"),
            fallback_allowed: counter("ratelimit.fallback_allowed"),
            fallback_denied: counter("ratelimit.fallback_denied"),
            callout_errors: counter("ratelimit.callout_errors"),
            callouts: counter("ratelimit.callouts"),
            callout_retries: counter("ratelimit.callout_retries"),
            lease_admitted: counter("ratelimit.lease_admitted"),
            lease_units: counter("ratelimit.lease_units"),
            lease_refills: counter("ratelimit.lease_refills"),
            callout_latency_us: hostcalls::define_metric(
                MetricType::Histogram,
                "ratelimit.callout_latency_us",
            )
            .ok(),
            rules,
            deferred: RefCell::new(Vec::new()),
            timer,
        }
    }

    /// Counts each (rule, outcome) pair (rule: an index into the policy's rules).
    pub(super) fn rule_outcomes(&self, outcomes: impl IntoIterator<Item = (usize, RuleOutcome)>) {
        for (rule, outcome) in outcomes {
            self.rules([rule], outcome);
        }
    }

    /// Counts `outcome` for each rule (indices into the policy's rules).
    pub(super) fn rules(&self, rules: impl IntoIterator<Item = usize>, outcome: RuleOutcome) {
        for rule in rules {
            Metrics::bump(self.rule(rule, outcome));
        }
    }

    /// [`Metrics::rules`], deferred to the next flush.
    pub(super) fn rules_later(&self, rules: impl IntoIterator<Item = usize>, outcome: RuleOutcome) {
        for rule in rules {
            self.later(self.rule(rule, outcome));
        }
    }

    /// The counter of `outcome` for `rule` (an index into the policy's rules).
    fn rule(&self, rule: usize, outcome: RuleOutcome) -> Option<u32> {
        let at = RuleOutcome::ALL.iter().position(|o| *o == outcome)?;
        self.rules.get(rule)?.0.get(at).copied().flatten()
    }

    /// Counts one for `id` at the next flush.
    pub(super) fn later(&self, id: Option<u32>) {
        let Some(id) = id else {
            return;
        };
        if !self.timer {
            return Metrics::bump(Some(id));
        }
        let mut deferred = self.deferred.borrow_mut();
        match deferred.iter_mut().find(|(metric, _)| *metric == id) {
            Some((_, n)) => *n += 1,
            None => deferred.push((id, 1)),
        }
    }

    /// Adds the deferred counts to Envoy's counters, in the order they were first deferred.
    pub(super) fn flush(&self) {
        // Incrementing a counter does not re-enter the VM: the borrow can be held.
        for (id, n) in self.deferred.borrow_mut().iter_mut() {
            if *n > 0 {
                let _ = hostcalls::increment_metric(*id, i64::try_from(*n).unwrap_or(i64::MAX));
                *n = 0;
            }
        }
    }

    pub(super) fn add(id: Option<u32>, n: usize) {
        if let (Some(id), Ok(n)) = (id, i64::try_from(n)) {
            if n > 0 {
                let _ = hostcalls::increment_metric(id, n);
            }
        }
    }

    pub(super) fn bump(id: Option<u32>) {
        Metrics::add(id, 1);
    }

    pub(super) fn record_latency(&self, since: Option<SystemTime>) {
        let elapsed = since.and_then(|t| now()?.duration_since(t).ok());
        if let (Some(id), Some(elapsed)) = (self.callout_latency_us, elapsed) {
            let _ = hostcalls::record_metric(
                id,
                u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            );
        }
    }
}

/// Counts still deferred when a configuration's VM state goes are not lost.
impl Drop for Metrics {
    fn drop(&mut self) {
        self.flush();
    }
}
