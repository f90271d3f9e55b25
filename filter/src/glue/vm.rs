//! What the contexts of one worker's VM share: the policy, the counters,
//! the batcher and the deny cache; and the host calls they all make.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};

use crate::batch::{answer_fits, read_batch_answer, Batcher, CheckAnswer, Entry, Live};
use crate::config::Policy;
use crate::deny_cache::DenyCache;
use crate::fallback::LocalCounters;
use crate::lease::{self, LeaseRule, Slices};
use crate::log_limit::{more_like_this, LogLimit};
use crate::settle::{enforced_rules, rule_outcomes, sort_answers, sort_failed, Fate};
use crate::verdict::{CalloutError, Check, Decision, Headers, Outcome, ReplyKind};

use super::metrics::{Metrics, RuleOutcome};
use super::{epoch_ms, log, now};

/// What the contexts of one VM share.
pub(super) struct Vm {
    pub(super) policy: Policy,
    pub(super) metrics: Metrics,
    pub(super) batcher: RefCell<Batcher>,
    /// The requests still there to be answered, and the headers kept for their responses.
    pub(super) live: RefCell<Live>,
    pub(super) deny_cache: RefCell<DenyCache>,
    /// Failed callouts are logged once per interval, with a count of the rest.
    pub(super) failure_log: RefCell<LogLimit>,
    /// This worker's slices of its Envoy's lease blocks.
    pub(super) slices: RefCell<Slices>,
}

impl Vm {
    pub(super) fn callout_headers(&self) -> Vec<(&str, &str)> {
        let mut headers = vec![
            (":method", "POST"),
            (":path", protocol::CHECKS_PATH),
            (":authority", self.policy.limitd_authority.as_str()),
            ("content-type", "application/json"),
        ];
        if let Some(authorization) = &self.policy.limitd_authorization {
            headers.push(("authorization", authorization.as_str()));
        }
        headers
    }

    /// Sends a batch to limitd: the one way the filter asks it anything.
    pub(super) fn dispatch(&self, body: &[u8], timeout_ms: u64) -> Result<u32, CalloutError> {
        let token = hostcalls::dispatch_http_call(
            &self.policy.limitd_cluster,
            self.callout_headers(),
            Some(body),
            vec![],
            Duration::from_millis(timeout_ms),
        )
        .map_err(|status| CalloutError::Dispatch(format!("{status:?}")))?;
        Metrics::bump(self.metrics.callouts);
        Ok(token)
    }

    /// Reads the answer to the callout being handled: its status and body.
    pub(super) fn read_callout(
        &self,
        num_headers: usize,
        body_size: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), CalloutError> {
        // A callout reset after its headers arrives with none; reading a header then
        // would make the SDK panic, so this is checked first.
        if num_headers == 0 {
            return Err(CalloutError::Reset);
        }
        if !answer_fits(body_size) {
            return Err(CalloutError::Body(format!(
                "an answer of {body_size} bytes, over {} (not read)",
                protocol::bounds::MAX_ANSWER_BYTES
            )));
        }
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .map_err(|s| CalloutError::Status(format!("unreadable ({s:?})")))?
            .unwrap_or_default();
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .map_err(|s| CalloutError::Body(format!("unreadable ({s:?})")))?
            .unwrap_or_default();
        Ok((status, body))
    }

    pub(super) fn failed(&self, check: &Check, error: &CalloutError) -> Decision {
        self.failed_batch(std::slice::from_ref(check), error)
            .pop()
            .unwrap_or(Decision::Allow {
                outcome: Outcome::FailedOpen,
                headers: Vec::new(),
            })
    }

    /// The failure mode's decisions for the checks of a callout that failed,
    /// counted per check and logged once.
    pub(super) fn failed_batch(&self, checks: &[Check], error: &CalloutError) -> Vec<Decision> {
        Metrics::add(self.metrics.callout_errors, checks.len());
        for check in checks {
            self.leases_settled(check, None, None);
            self.metrics
                .rules(enforced_rules(check), RuleOutcome::FailureMode);
        }
        let now_ms = now().and_then(epoch_ms).unwrap_or(0);
        if let Some(suppressed) = self.failure_log.borrow_mut().admit(now_ms) {
            log(
                LogLevel::Warn,
                &format!(
                    "ratelimit: {error}; the rules' failure mode applies to {} request(s){}",
                    checks.len(),
                    more_like_this(suppressed)
                ),
            );
        }
        checks
            .iter()
            .map(|check| self.policy.on_failure(check, &SharedCounters))
            .collect()
    }

    /// The failure mode's decisions for the live requests of a failed callout.
    pub(super) fn failed_live(
        &self,
        batch: Vec<Entry>,
        error: &CalloutError,
    ) -> Vec<(u32, Decision)> {
        let (refills, requests) = sort_failed(batch, &self.live.borrow());
        // A refill that failed: its block carries on until it runs out.
        for refill in &refills {
            self.leases_settled(&refill.check, None, None);
        }
        if requests.is_empty() {
            return Vec::new();
        }
        let (ids, checks): (Vec<u32>, Vec<Check>) = requests
            .into_iter()
            .map(|entry| (entry.context_id, entry.check))
            .unzip();
        ids.into_iter()
            .zip(self.failed_batch(&checks, error))
            .collect()
    }

    /// Decides the requests of a callout that just answered (sent at `sent`),
    /// whoever sent it: the root (a batch) or a request (its own check).
    /// Requests whose client left meanwhile are not decided at all: nothing of
    /// theirs may be counted (shadow denials, fallback budget, failures). A
    /// batch that never reached limitd (the instance died and Envoy has not
    /// ejected it yet) goes back to the queue to be sent again, once. Each
    /// check limitd could not decide gets its own rule's failure mode; the
    /// others are decided normally.
    pub(super) fn settle(
        &self,
        batch: Vec<Entry>,
        num_headers: usize,
        body_size: usize,
        sent: Option<SystemTime>,
    ) -> Vec<(u32, Decision)> {
        self.metrics.record_latency(sent);
        let answers = self
            .read_callout(num_headers, body_size)
            .and_then(|(status, body)| read_batch_answer(&batch, &status, &body));
        match answers {
            Ok(answers) => self.decide_all(batch, answers, sent),
            Err(e @ CalloutError::Unreachable(_)) => {
                let waiting = self.batcher.borrow().waiting();
                let settled = self.batcher.borrow_mut().retry(&self.live.borrow(), batch);
                if self.batcher.borrow().waiting() > waiting {
                    Metrics::bump(self.metrics.callout_retries);
                }
                self.failed_live(settled, &e)
            }
            Err(e) => self.failed_live(batch, &e),
        }
    }

    /// The decisions for the live requests of an answered batch: limitd's
    /// where it decided, the failure mode where it did not.
    fn decide_all(
        &self,
        batch: Vec<Entry>,
        answers: Vec<CheckAnswer>,
        sent: Option<SystemTime>,
    ) -> Vec<(u32, Decision)> {
        let sorted = sort_answers(batch, answers, &self.live.borrow());
        let mut decisions = Vec::with_capacity(sorted.fates.len());
        for fate in sorted.fates {
            match fate {
                Fate::Decide {
                    context_id,
                    check,
                    answer,
                } => decisions.push((context_id, self.decided(&check, &answer, sent))),
                Fate::SettleLeases { check, answer } => {
                    self.leases_settled(&check, answer.as_ref(), sent)
                }
            }
        }
        if let Some(error) = sorted.error {
            decisions.extend(self.failed_live(sorted.failed, &error));
        }
        decisions
    }

    /// The decision on limitd's answer; its denials are remembered in the deny
    /// cache, counted from `sent` (when the check went out).
    pub(super) fn decided(
        &self,
        check: &Check,
        answer: &protocol::CheckResponse,
        sent: Option<SystemTime>,
    ) -> Decision {
        self.leases_settled(check, Some(answer), sent);
        Metrics::add(
            self.metrics.shadow_denied,
            self.policy.shadow_denials(check, answer),
        );
        if !answer.allowed {
            if let (Some(sent_ms), Some(now_ms)) =
                (sent.and_then(epoch_ms), now().and_then(epoch_ms))
            {
                self.policy.learn(
                    check,
                    answer,
                    sent_ms,
                    now_ms,
                    &mut self.deny_cache.borrow_mut(),
                );
            }
        }
        let decision = self.policy.decide(check, answer);
        self.metrics
            .rule_outcomes(rule_outcomes(check, answer, &decision));
        decision
    }

    /// The lease settings of each hit's rule.
    pub(super) fn leases(&self, check: &Check) -> Vec<Option<LeaseRule>> {
        check
            .rules
            .iter()
            .map(|&i| self.policy.rules.get(i).and_then(|rule| rule.lease))
            .collect()
    }

    /// Ends the lease asks of a check that was answered (`answer`) or not (`None`): the
    /// units limitd leased go to their blocks, and the blocks' refills are over.
    pub(super) fn leases_settled(
        &self,
        check: &Check,
        answer: Option<&protocol::CheckResponse>,
        sent: Option<SystemTime>,
    ) {
        if check.hits.iter().all(|hit| hit.lease == 0) {
            return;
        }
        let sent_ms = sent.and_then(epoch_ms).unwrap_or(0);
        let leases = self.leases(check);
        for (i, (hit, rule)) in check.hits.iter().zip(&leases).enumerate() {
            let Some(rule) = rule.filter(|_| hit.lease > 0) else {
                continue;
            };
            let result = answer.filter(|a| a.allowed).and_then(|a| a.hits.get(i));
            if let Some(result) = result.filter(|r| r.leased > 0) {
                Metrics::add(
                    self.metrics.lease_units,
                    usize::try_from(result.leased).unwrap_or(usize::MAX),
                );
                if let Some(&rule_index) = check.rules.get(i) {
                    self.metrics.rules([rule_index], RuleOutcome::LeaseGrants);
                }
            }
            lease::settled(&SharedCounters, hit, &rule, result, sent_ms);
        }
    }

    /// A denial from the deny cache, if one of the check's keys is in it.
    pub(super) fn cached_denial(&self, check: &Check) -> Option<Decision> {
        let cache = self.deny_cache.borrow();
        if cache.is_empty() {
            return None;
        }
        let now_ms = now().and_then(epoch_ms)?;
        let denial = self.policy.cached_denial(check, &cache, now_ms)?;
        let cached: Vec<usize> = check
            .rules
            .iter()
            .zip(&check.hits)
            .filter(|(_, hit)| !hit.shadow && cache.denied_for(&hit.key, now_ms).is_some())
            .map(|(&rule, _)| rule)
            .collect();
        // Counted at the next flush, as the denial itself (see `Request`).
        self.metrics
            .rules_later(cached.iter().copied(), RuleOutcome::DenyCacheHits);
        self.metrics.rules_later(cached, RuleOutcome::Denied);
        Some(denial)
    }

    /// [`Vm::carry_out`] for a request that was not paused, decided inside this Envoy (from a
    /// lease block or the deny cache): its decision is counted at the next flush of the metrics.
    pub(super) fn carry_out_counted_later(&self, decision: Decision) -> (Action, Headers) {
        self.metrics.later(self.counter_of(&decision));
        self.act(decision, false)
    }

    /// Carries out a decision for the current (effective) request context.
    /// Returns the headers to add to the upstream's response, if any.
    pub(super) fn carry_out(&self, decision: Decision, paused: bool) -> (Action, Headers) {
        Metrics::bump(self.counter_of(&decision));
        self.act(decision, paused)
    }

    /// The counter a decision adds to.
    fn counter_of(&self, decision: &Decision) -> Option<u32> {
        match decision {
            Decision::Allow { outcome, .. } => match outcome {
                Outcome::Allowed => self.metrics.allowed,
                Outcome::FailedOpen => self.metrics.failure_mode_allowed,
                Outcome::FallbackAllowed => self.metrics.fallback_allowed,
            },
            Decision::Reply(reply) => match reply.kind {
                ReplyKind::OverLimit => self.metrics.denied,
                ReplyKind::FallbackOverLimit => self.metrics.fallback_denied,
                ReplyKind::Unavailable => self.metrics.failure_mode_denied,
            },
        }
    }

    /// Resumes the request (if `paused`) or sends the local reply.
    fn act(&self, decision: Decision, paused: bool) -> (Action, Headers) {
        match decision {
            Decision::Allow { headers, .. } => {
                if paused {
                    if let Err(status) = hostcalls::resume_http_request() {
                        log(
                            LogLevel::Warn,
                            &format!("ratelimit: cannot resume the request: {status:?}"),
                        );
                    }
                }
                (Action::Continue, headers)
            }
            Decision::Reply(reply) => {
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                if let Err(status) = hostcalls::send_http_response(
                    reply.status,
                    headers,
                    Some(reply.body.as_bytes()),
                ) {
                    log(
                        LogLevel::Warn,
                        &format!("ratelimit: cannot send the local reply: {status:?}"),
                    );
                }
                (Action::Pause, Vec::new())
            }
        }
    }
}

/// Fallback counters in Envoy's shared data (one map per `vm_id`, process-wide).
pub(super) struct SharedCounters;

impl LocalCounters for SharedCounters {
    fn now_ms(&self) -> u64 {
        now()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn load(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn store(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}
