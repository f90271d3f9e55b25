//! One HTTP request through the filter: its check, its own callout (at low
//! load, or with batching off), and its response headers.
//!
//! A request that no rule matches costs what Envoy's callbacks cost and one
//! header read, nothing more: it is not registered with the batcher, and its
//! response callback returns at once. Nor is a request decided inside Envoy
//! (from a lease block or the deny cache) registered: it never waits for an
//! answer, and its response headers are its own. Its end is handled in `Drop`
//! (when the SDK deletes the context, right after `proxy_on_done` in the same
//! pass), so the module need not export `proxy_on_done` at all: see the
//! build's list of exported callbacks in `xtask/src/wasm_exports.rs`.

use std::rc::Rc;
use std::time::SystemTime;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MapType};

use crate::batch::{encode_batch, remaining_ms, Entry, REFILL};
use crate::lease::{self, Spend};
use crate::request::RequestView;
use crate::settle::enforced_rules;
use crate::verdict::{CalloutError, Check, Headers, Verdict};

use super::metrics::{Metrics, RuleOutcome};
use super::vm::{SharedCounters, Vm};
use super::{log, now, now_ms};

/// One HTTP request going through the filter.
pub(super) struct Request {
    pub(super) context_id: u32,
    pub(super) vm: Rc<Vm>,
    /// The root's wake-up queue; `None`: this request makes its own callout.
    pub(super) queue: Option<u32>,
    /// The check in this request's own callout (a batch of one), while it is
    /// in flight.
    pub(super) direct: Option<Entry>,
    /// Rate-limit headers for the upstream's response, decided here.
    pub(super) response_headers: Headers,
    /// When this request's own callout was sent.
    pub(super) sent_at: Option<SystemTime>,
    /// Whether the request's check went to limitd, so the request is in the
    /// batcher's live set and may have response headers waiting there.
    pub(super) live: bool,
}

/// The request as the host shows it; each value is fetched only when asked for.
pub(super) struct HostRequest;

impl RequestView for HostRequest {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn source_address(&self) -> Option<Vec<u8>> {
        hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()
    }
}

impl Request {
    /// Admits the request from its rules' lease blocks if every one has a unit for it, and
    /// has the blocks that run low refilled in the background. Otherwise the check goes to
    /// limitd, asking for leases where blocks are empty.
    fn spend_leases(&mut self, check: &mut Check) -> Option<Action> {
        let leases = self.vm.leases(check);
        if leases.iter().all(Option::is_none) {
            return None;
        }
        let stale_ms = self.vm.policy.timeout_ms.saturating_mul(2);
        let spent = lease::spend(
            &SharedCounters,
            &mut self.vm.slices.borrow_mut(),
            &check.hits,
            &leases,
            stale_ms,
        );
        match spent {
            Spend::Admitted { results, refills } => {
                // Counted at the next flush: four host calls fewer on the path leases are for.
                let metrics = &self.vm.metrics;
                metrics.later(metrics.lease_admitted);
                metrics.rules_later(enforced_rules(check), RuleOutcome::LeaseAdmitted);
                metrics.rules_later(enforced_rules(check), RuleOutcome::Allowed);
                if !refills.is_empty() {
                    let (rules, hits) = refills
                        .into_iter()
                        .filter_map(|(i, hit)| Some((*check.rules.get(i)?, hit)))
                        .unzip();
                    self.queue_refill(Check { hits, rules });
                }
                let answer = protocol::CheckResponse {
                    allowed: true,
                    hits: results,
                };
                let decision = self.vm.policy.decide(check, &answer);
                let (action, headers) = self.vm.carry_out_counted_later(decision);
                self.response_headers = headers;
                Some(action)
            }
            Spend::Check { hits } => {
                check.hits = hits;
                None
            }
        }
    }

    /// Has the root send a refill of lease blocks (a check of cost 0 asking for leases); this
    /// request does not wait for it. Without a root to send it (batching off) nothing is
    /// refilled early: the request that finds a block empty asks for the lease.
    fn queue_refill(&self, refill: Check) {
        let sent = match self.queue {
            Some(queue) => {
                let wake = self
                    .vm
                    .batcher
                    .borrow_mut()
                    .push(REFILL, refill.clone(), now_ms());
                !wake || hostcalls::enqueue_shared_queue(queue, Some(b"w")).is_ok()
            }
            None => false,
        };
        if sent {
            Metrics::bump(self.vm.metrics.lease_refills);
        } else {
            if self.queue.is_some() {
                let _ = self.vm.batcher.borrow_mut().unpush();
            }
            self.vm.leases_settled(&refill, None, None);
        }
    }

    /// Queues the check for the root's next batch and wakes the root if needed.
    pub(super) fn queue_check(&mut self, queue: u32, check: Check) -> Action {
        let wake = self
            .vm
            .batcher
            .borrow_mut()
            .push(self.context_id, check, now_ms());
        if wake {
            if let Err(status) = hostcalls::enqueue_shared_queue(queue, Some(b"w")) {
                // Without a wake-up the root would never send it: decide now.
                let Some(entry) = self.vm.batcher.borrow_mut().unpush() else {
                    return Action::Continue;
                };
                let decision = self.vm.failed(
                    &entry.check,
                    &CalloutError::Dispatch(format!("wake-up queue: {status:?}")),
                );
                let (action, headers) = self.vm.carry_out(decision, false);
                self.response_headers = headers;
                return action;
            }
        }
        Action::Pause
    }

    /// Sends the check at once in a callout of this request's own, as a batch
    /// of one: with batching off, or when nothing waits and no callout is in
    /// flight, so that going through the root would only add its wake-up to
    /// the request's latency.
    pub(super) fn send_direct(&mut self, check: Check) -> Action {
        let entry = Entry {
            context_id: self.context_id,
            check,
            queued_ms: now_ms(),
            retried: false,
        };
        self.send_entry(entry, false)
    }

    /// Sends `entry` in this request's own callout, within what is left of its
    /// timeout. `paused`: the request waits already, and must be resumed if
    /// the check is decided now.
    fn send_entry(&mut self, entry: Entry, paused: bool) -> Action {
        let budget_ms = remaining_ms(
            std::slice::from_ref(&entry),
            now_ms(),
            self.vm.policy.timeout_ms,
        );
        let body = encode_batch(std::slice::from_ref(&entry), budget_ms);
        match self.vm.dispatch(&body, budget_ms) {
            Ok(_token) => {
                self.direct = Some(entry);
                self.sent_at = now();
                Action::Pause
            }
            Err(e) => {
                self.finish_direct();
                let decision = self.vm.failed(&entry.check, &e);
                let (action, headers) = self.vm.carry_out(decision, paused);
                self.response_headers = headers;
                action
            }
        }
    }

    /// The answer to this request's own callout.
    pub(super) fn direct_answered(&mut self, entry: Entry, num_headers: usize, body_size: usize) {
        let vm = self.vm.clone();
        let decisions = vm.settle(vec![entry], num_headers, body_size, self.sent_at);
        self.finish_direct();
        match decisions.into_iter().next() {
            Some((_, decision)) => {
                let (_, headers) = vm.carry_out(decision, true);
                self.response_headers = headers;
            }
            // The check went back to the queue to be sent again (limitd was not
            // reached). With batching off no root sends it: this request does.
            None if self.queue.is_none() => {
                let again = vm.batcher.borrow_mut().take_waiting(self.context_id);
                if let Some(entry) = again {
                    self.send_entry(entry, true);
                }
            }
            None => {}
        }
    }

    /// This request's own callout is over: wake the root if others waited.
    pub(super) fn finish_direct(&self) {
        let wake = self.vm.batcher.borrow_mut().direct_done(self.context_id);
        if let (true, Some(queue)) = (wake, self.queue) {
            if hostcalls::enqueue_shared_queue(queue, Some(b"w")).is_err() {
                // Let the next arrival try to wake it again.
                self.vm.batcher.borrow_mut().wake_handled();
                log(
                    LogLevel::Error,
                    "ratelimit: cannot wake the root to send waiting checks",
                );
            }
        }
    }
}

impl Context for Request {
    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(entry) = self.direct.take() {
            self.direct_answered(entry, num_headers, body_size);
        }
    }
}

/// The request is over: the SDK drops its context in `proxy_on_delete`, which
/// Envoy calls right after `proxy_on_done` (the module exports no
/// `proxy_on_done`, whose default, "done", is what this filter answers).
impl Drop for Request {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        // Envoy cancels the callout of a request that is done: it is no longer in flight.
        if self.direct.take().is_some() {
            self.finish_direct();
        }
        self.vm.live.borrow_mut().done(self.context_id);
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.vm.policy.evaluate(&HostRequest) {
            Verdict::Continue => Action::Continue,
            Verdict::Check(mut check) => {
                // Units in a lease block are counted already: they are spent before the deny
                // cache is asked, or a worker that saw a denial would strand its Envoy's block.
                if let Some(action) = self.spend_leases(&mut check) {
                    return action;
                }
                if let Some(denial) = self.vm.cached_denial(&check) {
                    // Decided here, as an admission from a lease: counted at the next flush.
                    self.vm.metrics.later(self.vm.metrics.deny_cache_hits);
                    // The leases this check would have asked for are not asked after all.
                    self.vm.leases_settled(&check, None, None);
                    let (action, _) = self.vm.carry_out_counted_later(denial);
                    return action;
                }
                self.live = true;
                self.vm.live.borrow_mut().created(self.context_id);
                Metrics::bump(self.vm.metrics.checks);
                match self.queue {
                    Some(queue) if !self.vm.batcher.borrow_mut().try_direct(self.context_id) => {
                        self.queue_check(queue, check)
                    }
                    _ => self.send_direct(check),
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.live && self.response_headers.is_empty() {
            return Action::Continue;
        }
        // Only an upstream response of an allowed request gets headers here: a local
        // reply carries its own, and passes through this callback too.
        let mut headers = std::mem::take(&mut self.response_headers);
        if self.live {
            headers.extend(self.vm.live.borrow_mut().take_headers(self.context_id));
        }
        for (name, value) in headers {
            if let Err(status) =
                hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(&value))
            {
                log(
                    LogLevel::Warn,
                    &format!("ratelimit: cannot add response header {name}: {status:?}"),
                );
            }
        }
        Action::Continue
    }
}
