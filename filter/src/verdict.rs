//! The filter's decisions, free of any host call: which rules a request meets,
//! what to ask limitd, and what to do with the answer.
//!
//! The proxy-wasm glue reads the request, calls [`Policy::evaluate`], sends the
//! check it returns, and turns [`Policy::decide`] or [`Policy::on_failure`]
//! into "continue" or a local reply.

use protocol::{Algorithm, CheckRequest, CheckResponse, Hit};
use serde::Serialize;

use crate::config::{FailureMode, Policy, Rule};

/// What to do with a request when its headers arrive.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No rule applies: let it through without a callout.
    Continue,
    /// Ask limitd: `body` is the encoded check, `rules` the matched rules' indices.
    Check(Check),
}

/// A check to send to limitd for one request.
#[derive(Debug, PartialEq, Eq)]
pub struct Check {
    /// The JSON body of `POST /v1/check`.
    pub body: Vec<u8>,
    /// Indices into [`Policy::rules`] of the rules that matched, in hit order.
    pub rules: Vec<usize>,
}

/// What to do with a request once its check has an answer (or has failed).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(Outcome),
    Reply(LocalReply),
}

/// Why a request was let through, for the filter's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// limitd allowed every hit.
    Allowed,
    /// limitd could not answer and the failure mode is `allow`.
    FailedOpen,
}

/// A response the filter answers itself instead of forwarding the request.
#[derive(Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// True for a denial by a limit; false when the failure mode denied.
    pub over_limit: bool,
}

/// Why a check got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutError {
    /// `dispatch_http_call` refused the call (e.g. unknown cluster).
    Dispatch(String),
    /// The callout's stream was reset before a response (no headers).
    Reset,
    /// limitd (or Envoy on its behalf: 503 no upstream, 504 timeout) answered non-200.
    Status(String),
    /// A 200 whose body is not a valid answer to this check.
    Body(String),
}

impl std::fmt::Display for CalloutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalloutError::Dispatch(e) => write!(f, "callout not sent: {e}"),
            CalloutError::Reset => write!(f, "callout reset before a response"),
            CalloutError::Status(s) => write!(f, "limitd answered status {s}"),
            CalloutError::Body(e) => write!(f, "limitd answered an unusable body: {e}"),
        }
    }
}

#[derive(Serialize)]
struct DenyBody<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    retry_after: u64,
}

impl Rule {
    fn matches(&self, path: &[u8]) -> bool {
        match &self.path_prefix {
            None => true,
            Some(prefix) => {
                // The query string is not part of the path a rule matches.
                let end = path.iter().position(|&b| b == b'?').unwrap_or(path.len());
                path[..end].starts_with(prefix.as_bytes())
            }
        }
    }
}

/// The client's address without its port: `"127.0.0.2:5000"` → `"127.0.0.2"`,
/// `"[::1]:5000"` → `"::1"`. Text that is neither is kept whole.
pub fn client_ip(source_address: &[u8]) -> &[u8] {
    if let Some(rest) = source_address.strip_prefix(b"[") {
        if let Some(end) = rest.iter().position(|&b| b == b']') {
            return &rest[..end];
        }
    }
    let colons = source_address.iter().filter(|&&b| b == b':').count();
    match source_address.iter().rposition(|&b| b == b':') {
        Some(i) if colons == 1 => &source_address[..i],
        _ => source_address,
    }
}

impl Policy {
    /// Decides whether a request needs a check, and builds it.
    ///
    /// `path` is the `:path` header; `source_address` is asked for only when a
    /// rule matches (it is Envoy's `source.address` property, `ip:port`).
    pub fn evaluate<'a>(
        &self,
        path: &[u8],
        source_address: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Verdict {
        let rules: Vec<usize> = (0..self.rules.len())
            .filter(|&i| self.rules[i].matches(path))
            .collect();
        if rules.is_empty() {
            return Verdict::Continue;
        }
        let address = source_address();
        let ip = match &address {
            Some(a) => String::from_utf8_lossy(client_ip(a)).into_owned(),
            None => "unknown".to_owned(),
        };
        let hits = rules
            .iter()
            .map(|&i| {
                let rule = &self.rules[i];
                Hit {
                    key: format!("{}:{}", rule.name, ip),
                    limit: rule.requests,
                    window_ms: rule.window_ms,
                    cost: 1,
                    algorithm: Algorithm::FixedWindow,
                    burst: None,
                    shadow: false,
                }
            })
            .collect();
        // Serializing plain structs of strings and integers cannot fail.
        let body = serde_json::to_vec(&CheckRequest { hits }).unwrap_or_default();
        Verdict::Check(Check { body, rules })
    }

    /// Reads limitd's answer to `check`: `status` is the `:status` header and
    /// `body` the response body.
    pub fn read_answer(
        &self,
        check: &Check,
        status: &[u8],
        body: &[u8],
    ) -> Result<CheckResponse, CalloutError> {
        if status != b"200" {
            return Err(CalloutError::Status(
                String::from_utf8_lossy(status).into_owned(),
            ));
        }
        let answer: CheckResponse =
            serde_json::from_slice(body).map_err(|e| CalloutError::Body(e.to_string()))?;
        if answer.hits.len() != check.rules.len() {
            return Err(CalloutError::Body(format!(
                "{} results for {} hits",
                answer.hits.len(),
                check.rules.len()
            )));
        }
        Ok(answer)
    }

    /// Turns limitd's answer into a decision.
    pub fn decide(&self, check: &Check, answer: &CheckResponse) -> Decision {
        if answer.allowed {
            return Decision::Allow(Outcome::Allowed);
        }
        // The client must wait for the slowest denied hit to clear.
        let worst = check
            .rules
            .iter()
            .zip(&answer.hits)
            .filter(|(_, hit)| !hit.allowed)
            .max_by_key(|(_, hit)| hit.retry_after_ms);
        let (rule, retry_after_ms) = match worst {
            Some((&i, hit)) => (Some(self.rules[i].name.as_str()), hit.retry_after_ms),
            // Denied with no denied hit: a confused answer; deny without naming a rule.
            None => (None, 1_000),
        };
        let retry_after = retry_after_ms.div_ceil(1000).max(1);
        let body = DenyBody {
            error: "rate_limited",
            message: "Too many requests",
            rule,
            retry_after,
        };
        Decision::Reply(LocalReply {
            status: self.deny_status,
            headers: vec![
                ("retry-after", retry_after.to_string()),
                ("content-type", "application/json".to_owned()),
            ],
            body: serde_json::to_string(&body).unwrap_or_default(),
            over_limit: true,
        })
    }

    /// The decision when a check got no usable answer: the failure mode.
    pub fn on_failure(&self) -> Decision {
        match self.failure_mode {
            FailureMode::Allow => Decision::Allow(Outcome::FailedOpen),
            FailureMode::Deny => {
                let body = DenyBody {
                    error: "rate_limiter_unavailable",
                    message: "The rate limiter could not be reached",
                    rule: None,
                    retry_after: 1,
                };
                Decision::Reply(LocalReply {
                    status: self.failure_status,
                    headers: vec![
                        ("retry-after", "1".to_owned()),
                        ("content-type", "application/json".to_owned()),
                    ],
                    body: serde_json::to_string(&body).unwrap_or_default(),
                    over_limit: false,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::HitResult;

    use super::*;

    fn policy(failure_mode: &str) -> Policy {
        Policy::from_json(
            format!(
                r#"{{"failure_mode":"{failure_mode}","rules":[
                {{"name":"limited","match":{{"path_prefix":"/limited_endpoint"}},"limit":{{"requests":10,"window":"60s"}}}},
                {{"name":"global","match":{{"path_prefix":"/"}},"limit":{{"requests":1000,"window":"1s"}}}},
                {{"name":"api","match":{{"path_prefix":"/api"}},"limit":{{"requests":5,"window":"1m"}}}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn check_of(verdict: Verdict) -> Check {
        match verdict {
            Verdict::Check(check) => check,
            Verdict::Continue => panic!("expected a check"),
        }
    }

    fn hit(allowed: bool, retry_after_ms: u64) -> HitResult {
        HitResult {
            allowed,
            limit: 10,
            remaining: 0,
            reset_ms: retry_after_ms,
            retry_after_ms,
        }
    }

    #[test]
    fn strips_the_port_from_the_client_address() {
        assert_eq!(client_ip(b"127.0.0.2:5000"), b"127.0.0.2");
        assert_eq!(client_ip(b"[::1]:5000"), b"::1");
        assert_eq!(client_ip(b"[2001:db8::1]:443"), b"2001:db8::1");
        assert_eq!(client_ip(b"2001:db8::1"), b"2001:db8::1");
        assert_eq!(client_ip(b"10.0.0.1"), b"10.0.0.1");
        assert_eq!(client_ip(b""), b"");
    }

    #[test]
    fn a_request_no_rule_matches_continues_without_asking_for_the_address() {
        let policy = Policy::from_json(
            br#"{"rules":[{"name":"l","match":{"path_prefix":"/limited_endpoint"},"limit":{"requests":1,"window":"1s"}}]}"#,
        )
        .unwrap();
        for path in [&b"/"[..], b"/health", b"/limited", b"/x?/limited_endpoint"] {
            assert_eq!(
                policy.evaluate(path, || panic!("address read for {path:?}")),
                Verdict::Continue
            );
        }
    }

    #[test]
    fn every_matching_rule_becomes_a_hit_keyed_by_rule_and_client_ip() {
        let check = check_of(policy("allow").evaluate(b"/limited_endpoint?x=1", || {
            Some(b"127.0.0.2:4321".to_vec())
        }));
        assert_eq!(check.rules, vec![0, 1]);
        let sent: CheckRequest = serde_json::from_slice(&check.body).unwrap();
        let keys: Vec<_> = sent
            .hits
            .iter()
            .map(|h| (h.key.as_str(), h.limit, h.window_ms, h.cost))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("limited:127.0.0.2", 10, 60_000, 1),
                ("global:127.0.0.2", 1000, 1000, 1)
            ]
        );
    }

    #[test]
    fn a_missing_address_is_grouped_as_unknown() {
        let check = check_of(policy("allow").evaluate(b"/api", || None));
        let sent: CheckRequest = serde_json::from_slice(&check.body).unwrap();
        assert_eq!(sent.hits[1].key, "api:unknown");
    }

    #[test]
    fn an_allowed_answer_allows() {
        let p = policy("allow");
        let check = check_of(p.evaluate(b"/limited_endpoint", || Some(b"1.2.3.4:1".to_vec())));
        let answer = CheckResponse {
            allowed: true,
            hits: vec![hit(true, 0), hit(true, 0)],
        };
        assert_eq!(p.decide(&check, &answer), Decision::Allow(Outcome::Allowed));
    }

    #[test]
    fn a_denied_answer_replies_429_naming_the_slowest_rule() {
        let p = policy("allow");
        let check = check_of(p.evaluate(b"/limited_endpoint", || Some(b"1.2.3.4:1".to_vec())));
        let answer = CheckResponse {
            allowed: false,
            hits: vec![hit(false, 42_001), hit(true, 0)],
        };
        let Decision::Reply(reply) = p.decide(&check, &answer) else {
            panic!("expected a reply")
        };
        assert_eq!(reply.status, 429);
        assert!(reply.over_limit);
        assert_eq!(reply.headers[0], ("retry-after", "43".to_owned()));
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["error"], "rate_limited");
        assert_eq!(body["rule"], "limited");
        assert_eq!(body["retry_after"], 43);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let p = policy("allow");
        let check = check_of(p.evaluate(b"/limited_endpoint", || None));
        let answer = CheckResponse {
            allowed: false,
            hits: vec![hit(false, 10), hit(false, 0)],
        };
        let Decision::Reply(reply) = p.decide(&check, &answer) else {
            panic!("expected a reply")
        };
        assert_eq!(reply.headers[0].1, "1");
    }

    #[test]
    fn answers_that_do_not_fit_the_check_are_errors() {
        let p = policy("allow");
        let check = check_of(p.evaluate(b"/limited_endpoint", || None));
        assert_eq!(
            p.read_answer(&check, b"504", b""),
            Err(CalloutError::Status("504".into()))
        );
        assert!(matches!(
            p.read_answer(&check, b"200", b"not json"),
            Err(CalloutError::Body(_))
        ));
        let one = serde_json::to_vec(&CheckResponse {
            allowed: true,
            hits: vec![hit(true, 0)],
        })
        .unwrap();
        assert!(
            matches!(p.read_answer(&check, b"200", &one), Err(CalloutError::Body(e)) if e.contains("1 results for 2 hits"))
        );
        let two = serde_json::to_vec(&CheckResponse {
            allowed: true,
            hits: vec![hit(true, 0), hit(true, 0)],
        })
        .unwrap();
        assert!(p.read_answer(&check, b"200", &two).unwrap().allowed);
    }

    #[test]
    fn the_failure_mode_decides_when_limitd_cannot() {
        assert_eq!(
            policy("allow").on_failure(),
            Decision::Allow(Outcome::FailedOpen)
        );
        let Decision::Reply(reply) = policy("deny").on_failure() else {
            panic!("expected a reply")
        };
        assert_eq!(reply.status, 503);
        assert!(!reply.over_limit);
        assert!(reply.body.contains("rate_limiter_unavailable"));
    }
}
