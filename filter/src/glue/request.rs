//! One HTTP request through the filter: its checks, its own callout at low
//! load, and its response headers.

use std::rc::Rc;
use std::time::SystemTime;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MapType};

use crate::batch::{encode_batch, Entry};
use crate::request::RequestView;
use crate::verdict::{CalloutError, Check, Headers, Verdict};

use super::metrics::Metrics;
use super::vm::Vm;
use super::{log, now, now_ms};

/// One HTTP request going through the filter.
pub(super) struct Request {
    pub(super) context_id: u32,
    pub(super) vm: Rc<Vm>,
    /// The root's wake-up queue; `None`: this request makes its own callout.
    pub(super) queue: Option<u32>,
    /// Without batching: the check in flight, while the request is paused.
    pub(super) pending: Option<Check>,
    /// With batching, at low load: the check in this request's own callout.
    pub(super) direct: Option<Entry>,
    /// Without batching: rate-limit headers for the upstream's response.
    pub(super) response_headers: Headers,
    /// Without batching: when the check in flight was sent.
    pub(super) sent_at: Option<SystemTime>,
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
    /// of one: nothing waits and no callout is in flight, so going through the
    /// root would only add its wake-up to the request's latency.
    pub(super) fn send_direct(&mut self, check: Check) -> Action {
        let entry = Entry {
            context_id: self.context_id,
            check,
            queued_ms: now_ms(),
            retried: false,
        };
        let body = encode_batch(std::slice::from_ref(&entry));
        match self
            .vm
            .dispatch(protocol::BATCH_PATH, &body, self.vm.policy.timeout_ms)
        {
            Ok(_token) => {
                self.direct = Some(entry);
                self.sent_at = now();
                Action::Pause
            }
            Err(e) => {
                self.finish_direct();
                let decision = self.vm.failed(&entry.check, &e);
                let (action, headers) = self.vm.carry_out(decision, false);
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
        // None when the check went back to the queue to be sent again.
        if let Some((_, decision)) = decisions.into_iter().next() {
            let (_, headers) = vm.carry_out(decision, true);
            self.response_headers = headers;
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

    /// Sends the check in a callout of this request's own.
    pub(super) fn send_check(&mut self, check: Check) -> Action {
        match self.vm.dispatch(
            protocol::CHECK_PATH,
            &check.encode(),
            self.vm.policy.timeout_ms,
        ) {
            Ok(_token) => {
                self.pending = Some(check);
                self.sent_at = now();
                Action::Pause
            }
            Err(e) => {
                let decision = self.vm.failed(&check, &e);
                let (action, headers) = self.vm.carry_out(decision, false);
                self.response_headers = headers;
                action
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
            return;
        }
        let Some(check) = self.pending.take() else {
            return;
        };
        let vm = self.vm.clone();
        let answer = vm
            .read_callout(num_headers, body_size)
            .and_then(|(status, body)| vm.policy.read_answer(&check, &status, &body));
        let decision = match answer {
            Ok(answer) => vm.decided(&check, &answer, self.sent_at),
            Err(e) => vm.failed(&check, &e),
        };
        let (_, headers) = vm.carry_out(decision, true);
        self.response_headers = headers;
    }
    fn on_done(&mut self) -> bool {
        // Envoy cancels the callout of a request that is done: it is no longer in flight.
        if self.direct.take().is_some() {
            self.finish_direct();
        }
        self.vm.batcher.borrow_mut().done(self.context_id);
        true
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.vm.policy.evaluate(&HostRequest) {
            Verdict::Continue => Action::Continue,
            Verdict::Check(check) => {
                if let Some(denial) = self.vm.cached_denial(&check) {
                    Metrics::bump(self.vm.metrics.deny_cache_hits);
                    let (action, _) = self.vm.carry_out(denial, false);
                    return action;
                }
                Metrics::bump(self.vm.metrics.checks);
                match self.queue {
                    Some(_) if self.vm.batcher.borrow_mut().try_direct(self.context_id) => {
                        self.send_direct(check)
                    }
                    Some(queue) => self.queue_check(queue, check),
                    None => self.send_check(check),
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Only an upstream response of an allowed request gets headers here: a local
        // reply carries its own, and passes through this callback too.
        let mut headers = std::mem::take(&mut self.response_headers);
        headers.extend(self.vm.batcher.borrow_mut().take_headers(self.context_id));
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
