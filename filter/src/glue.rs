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
use crate::verdict::{CalloutError, Check, Decision, Outcome, Verdict};

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
                        "ratelimit: configured {} rule(s), limitd cluster {:?}, timeout {}ms, failure mode {:?}",
                        policy.rules.len(),
                        policy.limitd_cluster,
                        policy.timeout_ms,
                        policy.failure_mode
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
            Some(&check.body),
            vec![],
            Duration::from_millis(policy.timeout_ms),
        )
        .map_err(|status| CalloutError::Dispatch(format!("{status:?}")))
    }

    fn fail(&self, error: &CalloutError) -> Decision {
        Metrics::bump(self.metrics.callout_errors);
        log(
            LogLevel::Warn,
            &format!(
                "ratelimit: {error}; failure mode {:?} applies",
                self.policy.failure_mode
            ),
        );
        self.policy.on_failure()
    }

    /// Acts on a decision; returns the action for a callback that must return one.
    fn apply(&self, decision: Decision, paused: bool) -> Action {
        match decision {
            Decision::Allow(outcome) => {
                Metrics::bump(match outcome {
                    Outcome::Allowed => self.metrics.allowed,
                    Outcome::FailedOpen => self.metrics.failure_mode_allowed,
                });
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
            .unwrap_or_else(|e| self.fail(&e));
        self.apply(decision, true);
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path")
            .ok()
            .flatten()
            .unwrap_or_default();
        let source_address = || {
            hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
        };
        match self.policy.evaluate(&path, source_address) {
            Verdict::Continue => Action::Continue,
            Verdict::Check(check) => {
                Metrics::bump(self.metrics.checks);
                match self.dispatch(&check) {
                    Ok(_token) => {
                        self.pending = Some(check);
                        Action::Pause
                    }
                    Err(e) => {
                        let decision = self.fail(&e);
                        self.apply(decision, false)
                    }
                }
            }
        }
    }
}
