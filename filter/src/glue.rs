//! The proxy-wasm glue: Envoy's callbacks in, host calls out, nothing else.
//!
//! Every host call here goes through `proxy_wasm::hostcalls` and has its
//! `Result` handled: the SDK's convenience trait methods `unwrap`, and a panic
//! traps the VM (which `failure_policy` then turns into 503s or a bypass).

#![allow(unsafe_code)] // `proxy_wasm::main!` expands to an `extern "C"` export.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::config::Policy;
use crate::request::RequestView;
use crate::verdict::{CalloutError, Check, Decision, Headers, Outcome, Verdict};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| log(LogLevel::Critical, &format!("ratelimit: panic: {info}"))));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { policy: None, metrics: None }) });
}}

fn log(level: LogLevel, message: &str) {
    // Nothing useful can be done if logging itself fails.
    let _ = hostcalls::log(level, message);
}

/// The filter's counters, shown by Envoy as `wasmcustom.ratelimit.*` in `/stats`
/// (and without the prefix in `/stats/prometheus`). Same-named counters of every
/// worker's VM add up.
struct Metrics {
    checks: Option<u32>,
    allowed: Option<u32>,
    denied: Option<u32>,
    shadow_denied: Option<u32>,
    failure_mode_allowed: Option<u32>,
    failure_mode_denied: Option<u32>,
    callout_errors: Option<u32>,
}

impl Metrics {
    fn define() -> Self {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        Metrics {
            checks: counter("ratelimit.checks"),
            allowed: counter("ratelimit.allowed"),
            denied: counter("ratelimit.denied"),
            shadow_denied: counter("ratelimit.shadow_denied"),
            failure_mode_allowed: counter("ratelimit.failure_mode_allowed"),
            failure_mode_denied: counter("ratelimit.failure_mode_denied"),
            callout_errors: counter("ratelimit.callout_errors"),
        }
    }

    fn bump(id: Option<u32>) {
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

struct Root {
    policy: Option<Rc<Policy>>,
    metrics: Option<Rc<Metrics>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => Vec::new(),
            Err(status) => {
                log(
                    LogLevel::Critical,
                    &format!("ratelimit: cannot read the plugin configuration: {status:?}"),
                );
                return false;
            }
        };
        match Policy::from_json(&bytes) {
            Ok(policy) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "ratelimit: configured {} rule(s), limitd cluster {:?}, timeout {}ms",
                        policy.rules.len(),
                        policy.limitd_cluster,
                        policy.timeout_ms,
                    ),
                );
                self.policy = Some(Rc::new(policy));
                if self.metrics.is_none() {
                    self.metrics = Some(Rc::new(Metrics::define()));
                }
                true
            }
            Err(e) => {
                log(
                    LogLevel::Critical,
                    &format!("ratelimit: invalid plugin configuration: {e}"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let policy = self.policy.clone()?;
        let metrics = self.metrics.clone()?;
        Some(Box::new(Request {
            policy,
            metrics,
            pending: None,
            response_headers: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request going through the filter.
struct Request {
    policy: Rc<Policy>,
    metrics: Rc<Metrics>,
    /// The check in flight, while the request is paused.
    pending: Option<Check>,
    /// Rate-limit headers for the upstream's response.
    response_headers: Headers,
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
    fn dispatch(&self, check: &Check) -> Result<u32, CalloutError> {
        let policy = &self.policy;
        hostcalls::dispatch_http_call(
            &policy.limitd_cluster,
            vec![
                (":method", "POST"),
                (":path", protocol::CHECK_PATH),
                (":authority", &policy.limitd_authority),
                ("content-type", "application/json"),
            ],
            Some(&check.encode()),
            vec![],
            Duration::from_millis(policy.timeout_ms),
        )
        .map_err(|status| CalloutError::Dispatch(format!("{status:?}")))
    }

    fn fail(&self, check: &Check, error: &CalloutError) -> Decision {
        Metrics::bump(self.metrics.callout_errors);
        log(
            LogLevel::Warn,
            &format!("ratelimit: {error}; the rules' failure mode applies"),
        );
        self.policy.on_failure(check)
    }

    /// Acts on a decision; returns the action for a callback that must return one.
    fn apply(&mut self, decision: Decision, paused: bool) -> Action {
        match decision {
            Decision::Allow { outcome, headers } => {
                Metrics::bump(match outcome {
                    Outcome::Allowed => self.metrics.allowed,
                    Outcome::FailedOpen => self.metrics.failure_mode_allowed,
                });
                self.response_headers = headers;
                if paused {
                    if let Err(status) = hostcalls::resume_http_request() {
                        log(
                            LogLevel::Warn,
                            &format!("ratelimit: cannot resume the request: {status:?}"),
                        );
                    }
                }
                Action::Continue
            }
            Decision::Reply(reply) => {
                Metrics::bump(if reply.over_limit {
                    self.metrics.denied
                } else {
                    self.metrics.failure_mode_denied
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
                Action::Pause
            }
        }
    }

    fn answer(
        &self,
        check: &Check,
        num_headers: usize,
        body_size: usize,
    ) -> Result<Decision, CalloutError> {
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
        let answer = self.policy.read_answer(check, &status, &body)?;
        for _ in 0..self.policy.shadow_denials(check, &answer) {
            Metrics::bump(self.metrics.shadow_denied);
        }
        Ok(self.policy.decide(check, &answer))
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
        let Some(check) = self.pending.take() else {
            return;
        };
        let decision = self
            .answer(&check, num_headers, body_size)
            .unwrap_or_else(|e| self.fail(&check, &e));
        self.apply(decision, true);
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.policy.evaluate(&HostRequest) {
            Verdict::Continue => Action::Continue,
            Verdict::Check(check) => {
                Metrics::bump(self.metrics.checks);
                match self.dispatch(&check) {
                    Ok(_token) => {
                        self.pending = Some(check);
                        Action::Pause
                    }
                    Err(e) => {
                        let decision = self.fail(&check, &e);
                        self.apply(decision, false)
                    }
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Only an upstream response of an allowed request gets headers here: a local
        // reply carries its own, and passes through this callback too.
        for (name, value) in self.response_headers.drain(..) {
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
