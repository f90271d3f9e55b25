//! The proxy-wasm glue: Envoy's callbacks in, host calls out, nothing else.
//!
//! Every host call here goes through `proxy_wasm::hostcalls` and has its
//! `Result` handled: the SDK's convenience trait methods `unwrap`, and a panic
//! traps the VM (which `failure_policy` then turns into 503s for a moment).
//!
//! # Group commit
//!
//! A callout's answer goes to the context that dispatched it, and Envoy
//! cancels a callout whose context is destroyed; so a callout shared by many
//! requests is dispatched by the worker's root context. A request with a check
//! queues it in the VM's [`Batcher`], wakes the root through a shared queue
//! registered under a name unique to this VM (a timestamp is not unique: two
//! workers read the same clock), and pauses. The root sends what waits as one
//! `POST /v1/checks` as soon as no callout is in flight, and on the answer
//! resumes or answers each request after making it the effective context.
//! Requests whose client went away are skipped: the set of live contexts is
//! kept in `on_done`, because acting on a context the SDK has dropped traps.
//!
//! The `Batcher` is shared through `Rc<RefCell<..>>` between the contexts of
//! one VM (one thread). No borrow is held across a host call: a local reply
//! re-enters the filter (`on_http_response_headers`) synchronously.

#![allow(unsafe_code)] // `proxy_wasm::main!` expands to an `extern "C"` export.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::batch::{encode_batch, read_batch_answer, remaining_ms, Batcher, Entry};
use crate::config::Policy;
use crate::deny_cache::DenyCache;
use crate::fallback::LocalCounters;
use crate::request::RequestView;
use crate::verdict::{CalloutError, Check, Decision, Headers, Outcome, ReplyKind, Verdict};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| log(LogLevel::Critical, &format!("ratelimit: panic: {info}"))));
    proxy_wasm::set_root_context(|root_id| -> Box<dyn RootContext> {
        Box::new(Root { root_id, vm: None, queue: None, sent_at: HashMap::new() })
    });
}}

/// The shared-data key of the counter that gives each VM a unique queue name.
const VM_SEQUENCE_KEY: &str = "ratelimit.vm_sequence";

fn log(level: LogLevel, message: &str) {
    // Nothing useful can be done if logging itself fails.
    let _ = hostcalls::log(level, message);
}

fn now() -> Option<SystemTime> {
    hostcalls::get_current_time().ok()
}

/// The proxy's clock in milliseconds since the epoch (0 if it cannot be read).
fn now_ms() -> u64 {
    now().and_then(epoch_ms).unwrap_or(0)
}

fn epoch_ms(time: SystemTime) -> Option<u64> {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok())
}

/// The filter's counters, shown by Envoy as `wasmcustom.ratelimit.*` in `/stats`
/// (and without the prefix in `/stats/prometheus`). Same-named metrics of every
/// worker's VM add up.
struct Metrics {
    checks: Option<u32>,
    allowed: Option<u32>,
    denied: Option<u32>,
    shadow_denied: Option<u32>,
    deny_cache_hits: Option<u32>,
    failure_mode_allowed: Option<u32>,
    failure_mode_denied: Option<u32>,
    fallback_allowed: Option<u32>,
    fallback_denied: Option<u32>,
    callout_errors: Option<u32>,
    callouts: Option<u32>,
    callout_retries: Option<u32>,
    /// Histogram of callout round trips, in microseconds.
    callout_latency_us: Option<u32>,
}

impl Metrics {
    fn define() -> Self {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
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
            callout_latency_us: hostcalls::define_metric(
                MetricType::Histogram,
                "ratelimit.callout_latency_us",
            )
            .ok(),
        }
    }

    fn add(id: Option<u32>, n: usize) {
        if let (Some(id), Ok(n)) = (id, i64::try_from(n)) {
            if n > 0 {
                let _ = hostcalls::increment_metric(id, n);
            }
        }
    }

    fn bump(id: Option<u32>) {
        Metrics::add(id, 1);
    }

    fn record_latency(&self, since: Option<SystemTime>) {
        let elapsed = since.and_then(|t| now()?.duration_since(t).ok());
        if let (Some(id), Some(elapsed)) = (self.callout_latency_us, elapsed) {
            let _ = hostcalls::record_metric(
                id,
                u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            );
        }
    }
}

/// What the contexts of one VM share.
struct Vm {
    policy: Policy,
    metrics: Metrics,
    batcher: RefCell<Batcher>,
    deny_cache: RefCell<DenyCache>,
}

impl Vm {
    fn callout_headers(&self, path: &'static str) -> Vec<(&str, &str)> {
        vec![
            (":method", "POST"),
            (":path", path),
            (":authority", &self.policy.limitd_authority),
            ("content-type", "application/json"),
        ]
    }

    fn dispatch(
        &self,
        path: &'static str,
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, CalloutError> {
        let token = hostcalls::dispatch_http_call(
            &self.policy.limitd_cluster,
            self.callout_headers(path),
            Some(body),
            vec![],
            Duration::from_millis(timeout_ms),
        )
        .map_err(|status| CalloutError::Dispatch(format!("{status:?}")))?;
        Metrics::bump(self.metrics.callouts);
        Ok(token)
    }

    /// Reads the answer to the callout being handled: its status and body.
    fn read_callout(
        &self,
        num_headers: usize,
        body_size: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), CalloutError> {
        // A callout reset after its headers arrives with none; reading a header then
        // would make the SDK panic, so this is checked first.
        if num_headers == 0 {
            return Err(CalloutError::Reset);
        }
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .map_err(|s| CalloutError::Status(format!("unreadable ({s:?})")))?
            .unwrap_or_default();
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .map_err(|s| CalloutError::Body(format!("unreadable ({s:?})")))?
            .unwrap_or_default();
        Ok((status, body))
    }

    fn failed(&self, check: &Check, error: &CalloutError) -> Decision {
        self.failed_batch(std::slice::from_ref(check), error)
            .pop()
            .unwrap_or(Decision::Allow {
                outcome: Outcome::FailedOpen,
                headers: Vec::new(),
            })
    }

    /// The failure mode's decisions for the checks of a callout that failed,
    /// counted per check and logged once.
    fn failed_batch(&self, checks: &[Check], error: &CalloutError) -> Vec<Decision> {
        Metrics::add(self.metrics.callout_errors, checks.len());
        log(
            LogLevel::Warn,
            &format!(
                "ratelimit: {error}; the rules' failure mode applies to {} request(s)",
                checks.len()
            ),
        );
        checks
            .iter()
            .map(|check| self.policy.on_failure(check, &SharedCounters))
            .collect()
    }

    /// The decision on limitd's answer; its denials are remembered in the deny
    /// cache, counted from `sent` (when the check went out).
    fn decided(
        &self,
        check: &Check,
        answer: &protocol::CheckResponse,
        sent: Option<SystemTime>,
    ) -> Decision {
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
        self.policy.decide(check, answer)
    }

    /// A denial from the deny cache, if one of the check's keys is in it.
    fn cached_denial(&self, check: &Check) -> Option<Decision> {
        let cache = self.deny_cache.borrow();
        if cache.is_empty() {
            return None;
        }
        let now_ms = now().and_then(epoch_ms)?;
        self.policy.cached_denial(check, &cache, now_ms)
    }

    /// Carries out a decision for the current (effective) request context.
    /// Returns the headers to add to the upstream's response, if any.
    fn carry_out(&self, decision: Decision, paused: bool) -> (Action, Headers) {
        match decision {
            Decision::Allow { outcome, headers } => {
                Metrics::bump(match outcome {
                    Outcome::Allowed => self.metrics.allowed,
                    Outcome::FailedOpen => self.metrics.failure_mode_allowed,
                    Outcome::FallbackAllowed => self.metrics.fallback_allowed,
                });
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
                Metrics::bump(match reply.kind {
                    ReplyKind::OverLimit => self.metrics.denied,
                    ReplyKind::FallbackOverLimit => self.metrics.fallback_denied,
                    ReplyKind::Unavailable => self.metrics.failure_mode_denied,
                });
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

struct Root {
    root_id: u32,
    vm: Option<Rc<Vm>>,
    /// The queue that wakes this root, under a name unique to this VM.
    queue: Option<u32>,
    /// When each batch callout in flight was sent, for the latency histogram.
    sent_at: HashMap<u32, Option<SystemTime>>,
}

impl Root {
    /// Registers this VM's wake-up queue under `ratelimit.wake.<n>`, with `n`
    /// taken from a counter in shared data (compare-and-swap).
    fn register_queue(&self) -> Option<u32> {
        for _ in 0..64 {
            let (value, cas) = hostcalls::get_shared_data(VM_SEQUENCE_KEY).ok()?;
            let n: u64 = value
                .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(0);
            match hostcalls::set_shared_data(
                VM_SEQUENCE_KEY,
                Some((n + 1).to_string().as_bytes()),
                cas,
            ) {
                Ok(()) => {
                    return hostcalls::register_shared_queue(&format!("ratelimit.wake.{n}")).ok()
                }
                Err(Status::CasMismatch) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// Sends what waits, as long as the bound on callouts in flight allows.
    ///
    /// Every request gets at most the configured timeout in all: those that
    /// waited that long behind a hung callout get the failure mode now, and a
    /// batch's callout may only take what is left of its oldest request's.
    fn pump(&mut self) {
        let Some(vm) = self.vm.clone() else { return };
        let now_ms = now_ms();
        let timeout_ms = vm.policy.timeout_ms;
        let expired = vm.batcher.borrow_mut().take_expired(now_ms, timeout_ms);
        if !expired.is_empty() {
            let decisions = decide_failed(&vm, expired, &CalloutError::Expired);
            self.deliver(&vm, decisions);
        }
        loop {
            let Some(batch) = vm.batcher.borrow_mut().next_batch() else {
                return;
            };
            let budget_ms = remaining_ms(&batch, now_ms, timeout_ms);
            match vm.dispatch(protocol::BATCH_PATH, &encode_batch(&batch), budget_ms) {
                Ok(token) => {
                    self.sent_at.insert(token, now());
                    vm.batcher.borrow_mut().sent(token, batch);
                }
                Err(e) => {
                    let decisions = decide_failed(&vm, batch, &e);
                    self.deliver(&vm, decisions);
                }
            }
        }
    }

    /// Resumes or answers each request, as its own effective context.
    fn deliver(&self, vm: &Vm, decisions: Vec<(u32, Decision)>) {
        for (context_id, decision) in decisions {
            if !vm.batcher.borrow().is_live(context_id) {
                continue;
            }
            if hostcalls::set_effective_context(context_id).is_err() {
                continue; // Gone on the host's side too.
            }
            let (_, headers) = vm.carry_out(decision, true);
            vm.batcher.borrow_mut().set_headers(context_id, headers);
        }
        let _ = hostcalls::set_effective_context(self.root_id);
    }
}

/// The failure mode's decisions for the live requests of a failed callout.
fn decide_failed(vm: &Vm, batch: Vec<Entry>, error: &CalloutError) -> Vec<(u32, Decision)> {
    let (ids, checks): (Vec<u32>, Vec<Check>) = batch
        .into_iter()
        .filter(|entry| vm.batcher.borrow().is_live(entry.context_id))
        .map(|entry| (entry.context_id, entry.check))
        .unzip();
    if checks.is_empty() {
        return Vec::new();
    }
    ids.into_iter()
        .zip(vm.failed_batch(&checks, error))
        .collect()
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(vm) = self.vm.clone() else { return };
        let Some(batch) = vm.batcher.borrow_mut().finished(token_id) else {
            return;
        };
        let sent = self.sent_at.remove(&token_id).flatten();
        vm.metrics.record_latency(sent);
        let answers = vm
            .read_callout(num_headers, body_size)
            .and_then(|(status, body)| read_batch_answer(&batch, &status, &body));
        // Requests whose client left meanwhile are not decided at all: nothing
        // of theirs may be counted (shadow denials, fallback budget, failures).
        let decisions: Vec<(u32, Decision)> = match answers {
            Ok(answers) => batch
                .iter()
                .zip(&answers)
                .filter(|(entry, _)| vm.batcher.borrow().is_live(entry.context_id))
                .map(|(entry, answer)| (entry.context_id, vm.decided(&entry.check, answer, sent)))
                .collect(), // It never reached limitd (the instance died, Envoy has not ejected it
            // yet): send it again at once, to another instance if there is one.
            Err(e @ CalloutError::Unreachable(_)) => {
                let waiting = vm.batcher.borrow().waiting();
                let settled = vm.batcher.borrow_mut().retry(batch);
                if vm.batcher.borrow().waiting() > waiting {
                    Metrics::bump(vm.metrics.callout_retries);
                }
                decide_failed(&vm, settled, &e)
            }
            Err(e) => decide_failed(&vm, batch, &e),
        };
        self.deliver(&vm, decisions);
        self.pump();
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // The main thread's VM starts before the workers' and creates the counter;
        // a missing key's first write is unconditional, so workers must not race on it.
        if let Ok((None, _)) = hostcalls::get_shared_data(VM_SEQUENCE_KEY) {
            let _ = hostcalls::set_shared_data(VM_SEQUENCE_KEY, Some(b"0"), None);
        }
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                log(
                    LogLevel::Critical,
                    &format!("ratelimit: cannot read the plugin configuration: {status:?}"),
                );
                return false;
            }
        };
        let policy = match Policy::from_json(&bytes) {
            Ok(policy) => policy,
            Err(e) => {
                log(
                    LogLevel::Critical,
                    &format!("ratelimit: invalid plugin configuration: {e}"),
                );
                return false;
            }
        };
        if policy.batch.enabled && self.queue.is_none() {
            self.queue = self.register_queue();
            if self.queue.is_none() {
                log(
                    LogLevel::Error,
                    "ratelimit: no wake-up queue; checking each request with its own callout",
                );
            }
        }
        log(
            LogLevel::Info,
            &format!(
                "ratelimit: configured {} rule(s), limitd cluster {:?}, timeout {}ms, batching {}",
                policy.rules.len(),
                policy.limitd_cluster,
                policy.timeout_ms,
                if policy.batch.enabled && self.queue.is_some() {
                    "on"
                } else {
                    "off"
                },
            ),
        );
        let batcher = Batcher::new(policy.batch.max_checks, policy.batch.max_in_flight);
        self.vm = Some(Rc::new(Vm {
            policy,
            metrics: Metrics::define(),
            batcher: RefCell::new(batcher),
            deny_cache: RefCell::new(DenyCache::default()),
        }));
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        if let Some(vm) = &self.vm {
            vm.batcher.borrow_mut().wake_handled();
        }
        self.pump();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        vm.batcher.borrow_mut().created(context_id);
        let queue = if vm.policy.batch.enabled {
            self.queue
        } else {
            None
        };
        Some(Box::new(Request {
            context_id,
            vm,
            queue,
            pending: None,
            direct: None,
            response_headers: Vec::new(),
            sent_at: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request going through the filter.
struct Request {
    context_id: u32,
    vm: Rc<Vm>,
    /// The root's wake-up queue; `None`: this request makes its own callout.
    queue: Option<u32>,
    /// Without batching: the check in flight, while the request is paused.
    pending: Option<Check>,
    /// With batching, at low load: the check in this request's own callout.
    direct: Option<Entry>,
    /// Without batching: rate-limit headers for the upstream's response.
    response_headers: Headers,
    /// Without batching: when the check in flight was sent.
    sent_at: Option<SystemTime>,
}

/// Fallback counters in Envoy's shared data (one map per `vm_id`, process-wide).
struct SharedCounters;

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

/// The request as the host shows it; each value is fetched only when asked for.
struct HostRequest;

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
    fn queue_check(&mut self, queue: u32, check: Check) -> Action {
        let wake = self
            .vm
            .batcher
            .borrow_mut()
            .push(self.context_id, check.clone(), now_ms());
        if wake {
            if let Err(status) = hostcalls::enqueue_shared_queue(queue, Some(b"w")) {
                // Without a wake-up the root would never send it: decide now.
                self.vm.batcher.borrow_mut().wake_handled();
                self.vm.batcher.borrow_mut().done(self.context_id);
                let decision = self.vm.failed(
                    &check,
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
    fn send_direct(&mut self, check: Check) -> Action {
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
    fn direct_answered(&mut self, entry: Entry, num_headers: usize, body_size: usize) {
        let vm = self.vm.clone();
        vm.metrics.record_latency(self.sent_at);
        let answers = vm
            .read_callout(num_headers, body_size)
            .and_then(|(status, body)| {
                read_batch_answer(std::slice::from_ref(&entry), &status, &body)
            });
        let decision = match answers {
            Ok(mut answers) => answers
                .pop()
                .map(|answer| vm.decided(&entry.check, &answer, self.sent_at)),
            // It never reached limitd: the root sends it again, within its timeout.
            Err(e @ CalloutError::Unreachable(_)) if !entry.retried => {
                Metrics::bump(vm.metrics.callout_retries);
                let settled = vm.batcher.borrow_mut().retry(vec![entry]);
                settled.first().map(|entry| vm.failed(&entry.check, &e))
            }
            Err(e) => Some(vm.failed(&entry.check, &e)),
        };
        self.finish_direct();
        if let Some(decision) = decision {
            let (_, headers) = vm.carry_out(decision, true);
            self.response_headers = headers;
        }
    }

    /// This request's own callout is over: wake the root if others waited.
    fn finish_direct(&self) {
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
    fn send_check(&mut self, check: Check) -> Action {
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
