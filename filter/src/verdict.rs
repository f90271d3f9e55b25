//! The filter's decisions, free of any host call: which rules a request meets,
//! what to ask limitd, and what to do with the answer.
//!
//! The proxy-wasm glue calls [`Policy::evaluate`] with a view of the request,
//! sends the check it returns, and turns [`Policy::decide`] or
//! [`Policy::on_failure`] into "continue" or a local reply.

use protocol::{CheckResponse, ErrorKind, Hit};

use crate::config::{FailureMode, Policy};
use crate::deny_cache::DenyCache;
use crate::fallback::{self, Fallback, LocalCounters, Standing};
use crate::key::build_key;
use crate::reply::{
    ceil_seconds, denial_body, one_rule_denial_body, rate_limit_headers, unavailable_body,
    RuleState,
};
use crate::request::{path_only, RequestView};

/// What to do with a request when its headers arrive.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No rule applies: let it through without a callout.
    Continue,
    /// Ask limitd.
    Check(Check),
}

/// The hits to check for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// One hit per rule that applies, in rule order.
    pub hits: Vec<Hit>,
    /// Indices into [`Policy::rules`] of those rules, in hit order.
    pub rules: Vec<usize>,
}

/// Headers to add to a response.
pub type Headers = Vec<(&'static str, String)>;

/// What to do with a request once its check has an answer (or has failed).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forward the request; add `headers` to its response.
    Allow { outcome: Outcome, headers: Headers },
    /// Answer it locally.
    Reply(LocalReply),
}

/// Why a request was let through, for the filter's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// limitd allowed every enforced hit.
    Allowed,
    /// limitd could not answer and the rules' failure mode is `allow`.
    FailedOpen,
    /// limitd could not answer and the rules' fallback limits admitted it.
    FallbackAllowed,
}

/// Why the filter answers a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// limitd denied it.
    OverLimit,
    /// limitd could not answer and a fallback limit is spent.
    FallbackOverLimit,
    /// limitd could not answer and a rule fails closed.
    Unavailable,
}

/// A response the filter answers itself instead of forwarding the request.
#[derive(Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Headers,
    pub body: String,
    pub kind: ReplyKind,
}

/// Why a check got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutError {
    /// `dispatch_http_call` refused the call (e.g. unknown cluster).
    Dispatch(String),
    /// The callout's stream was reset before a response (no headers).
    Reset,
    /// The request waited its whole timeout behind a callout in flight.
    Expired,
    /// Envoy could not reach any limitd (connect failure, no healthy
    /// upstream): the check was never seen, so sending it again is safe.
    Unreachable(String),
    /// limitd (or Envoy on its behalf: 504 timeout, 503 circuit breaker overflow) answered non-200.
    Status(String),
    /// A 200 whose body is not a valid answer to this check.
    Body(String),
    /// limitd answered this check with an error: it was not decided, and counted nothing.
    Refused { kind: ErrorKind, detail: String },
}

impl std::fmt::Display for CalloutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalloutError::Dispatch(e) => write!(f, "callout not sent: {e}"),
            CalloutError::Reset => write!(f, "callout reset before a response"),
            CalloutError::Unreachable(e) => write!(f, "limitd unreachable: {e}"),
            CalloutError::Expired => {
                write!(f, "the timeout passed while waiting behind another callout")
            }
            CalloutError::Status(s) => write!(f, "limitd answered status {s}"),
            CalloutError::Body(e) => write!(f, "limitd answered an unusable body: {e}"),
            CalloutError::Refused { kind, detail } => {
                write!(f, "limitd could not decide the check ({kind:?}): {detail}")
            }
        }
    }
}

impl Policy {
    /// Decides whether a request needs a check, and builds it.
    pub fn evaluate(&self, request: &impl RequestView) -> Verdict {
        let raw_path = request.header(":path").unwrap_or_default();
        let path = path_only(&raw_path);
        let mut check = Check {
            hits: Vec::new(),
            rules: Vec::new(),
        };
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matcher.matches(path, request) {
                continue;
            }
            let Some(key) = build_key(
                &rule.name,
                &rule.key,
                path,
                request,
                rule.missing_default.as_deref(),
            ) else {
                continue; // A header the key needs is missing and the rule says skip.
            };
            check.hits.push(Hit {
                key,
                limit: rule.requests,
                window_ms: rule.window_ms,
                cost: rule.cost,
                algorithm: rule.algorithm,
                burst: rule.burst,
                shadow: rule.shadow,
                lease: 0,
            });
            check.rules.push(i);
        }
        if check.hits.is_empty() {
            Verdict::Continue
        } else {
            Verdict::Check(check)
        }
    }

    /// How many shadow rules would have denied the request.
    pub fn shadow_denials(&self, check: &Check, answer: &CheckResponse) -> usize {
        check
            .hits
            .iter()
            .zip(&answer.hits)
            .filter(|(hit, result)| hit.shadow && !result.allowed)
            .count()
    }

    /// Turns limitd's answer into a decision.
    pub fn decide(&self, check: &Check, answer: &CheckResponse) -> Decision {
        let enforced = || {
            check
                .rules
                .iter()
                .zip(&check.hits)
                .zip(&answer.hits)
                .filter(|((_, hit), _)| !hit.shadow)
                .map(|((&rule, _), result)| (rule, result))
        };
        let states: Vec<RuleState<'_>> = enforced()
            .map(|(i, result)| RuleState {
                name: &self.rules[i].name,
                window_ms: self.rules[i].window_ms,
                result,
            })
            .collect();
        let headers = rate_limit_headers(self.response_headers, &states);
        let denied: Vec<(usize, u64)> = enforced()
            .filter(|(_, r)| !r.allowed)
            .map(|(i, r)| (i, self.retry_after_ms(i, r)))
            .collect();
        // limitd's overall answer already ignores shadow hits; a denied enforced hit
        // denies in any case, so a confused answer cannot let a request through.
        if answer.allowed && denied.is_empty() {
            return Decision::Allow {
                outcome: Outcome::Allowed,
                headers,
            };
        }
        self.denial(&denied, headers)
    }

    /// A denial by the rules `denied` (rule index, milliseconds until it could
    /// pass), with `headers` already describing the rules' state.
    fn denial(&self, denied: &[(usize, u64)], mut headers: Headers) -> Decision {
        // The client must wait for the slowest denied hit to clear.
        let retry_after_ms = denied.iter().map(|(_, ms)| *ms).max().unwrap_or(1_000);
        let retry_after = ceil_seconds(retry_after_ms).max(1);
        let one_head = match denied {
            [(i, _)] => self.denial_heads.get(*i).and_then(Option::as_ref),
            _ => None,
        };
        let body = match one_head {
            Some(head) => one_rule_denial_body(head, retry_after),
            None => {
                let violated: Vec<&str> = denied
                    .iter()
                    .map(|(i, _)| self.rules[*i].name.as_str())
                    .collect();
                denial_body(self.deny_status, &violated, retry_after)
            }
        };
        let retry_after = itoa::Buffer::new().format(retry_after).to_owned();
        headers.insert(0, ("retry-after", retry_after));
        headers.insert(1, ("content-type", "application/problem+json".to_owned()));
        Decision::Reply(LocalReply {
            status: self.deny_status,
            headers,
            body,
            kind: ReplyKind::OverLimit,
        })
    }

    /// Denies a request at once when the deny cache knows one of its enforced
    /// hits is still over its limit: limitd would deny it too (see
    /// [`DenyCache`]), and a denied request consumes nothing.
    pub fn cached_denial(&self, check: &Check, cache: &DenyCache, now_ms: u64) -> Option<Decision> {
        if cache.is_empty() {
            return None;
        }
        let denied: Vec<(usize, u64)> = check
            .rules
            .iter()
            .zip(&check.hits)
            .filter(|(_, hit)| !hit.shadow)
            .filter_map(|(&i, hit)| cache.denied_for(&hit.key, now_ms).map(|ms| (i, ms)))
            .collect();
        if denied.is_empty() {
            return None;
        }
        let results: Vec<protocol::HitResult> = denied
            .iter()
            .map(|&(i, ms)| protocol::HitResult {
                allowed: false,
                limit: self.rules[i].requests,
                remaining: 0,
                reset_ms: ms,
                retry_after_ms: ms,
                leased: 0,
                lease_ms: 0,
            })
            .collect();
        let states: Vec<RuleState<'_>> = denied
            .iter()
            .zip(&results)
            .map(|(&(i, _), result)| RuleState {
                name: &self.rules[i].name,
                window_ms: self.rules[i].window_ms,
                result,
            })
            .collect();
        let headers = rate_limit_headers(self.response_headers, &states);
        Some(self.denial(&denied, headers))
    }

    /// Remembers the enforced hits limitd denied, for [`Policy::cached_denial`].
    /// `sent_ms` is when the check was sent (proxy clock).
    pub fn learn(
        &self,
        check: &Check,
        answer: &CheckResponse,
        sent_ms: u64,
        now_ms: u64,
        cache: &mut DenyCache,
    ) {
        for ((&rule, hit), result) in check.rules.iter().zip(&check.hits).zip(&answer.hits) {
            if !hit.shadow && !result.allowed && result.retry_after_ms > 0 {
                cache.remember(
                    &hit.key,
                    sent_ms.saturating_add(self.retry_after_ms(rule, result)),
                    now_ms,
                );
            }
        }
    }

    /// limitd's `retry_after_ms` for a denied hit of rule `rule`, capped at the
    /// longest wait that rule can produce.
    fn retry_after_ms(&self, rule: usize, result: &protocol::HitResult) -> u64 {
        let longest = self
            .rules
            .get(rule)
            .map_or(u64::MAX, crate::config::Rule::longest_wait_ms);
        result.retry_after_ms.min(longest)
    }

    /// The decision when a check got no usable answer. Each enforced rule the
    /// request matched either has a fallback limit, enforced locally with
    /// `counters`, or its failure mode. The request is answered
    /// `failure_status` if any rule fails closed, denied if any fallback limit
    /// is spent (consuming nothing), and allowed otherwise.
    pub fn on_failure(&self, check: &Check, counters: &impl LocalCounters) -> Decision {
        let mut unavailable = false;
        let mut over: Vec<(&str, u64)> = Vec::new();
        let mut spend: Vec<(&Hit, Fallback)> = Vec::new();
        for (&i, hit) in check.rules.iter().zip(&check.hits) {
            let rule = &self.rules[i];
            if rule.shadow {
                continue;
            }
            let standing = rule.fallback.map(|limit| {
                (
                    limit,
                    fallback::standing(counters, &hit.key, hit.cost, limit),
                )
            });
            match standing {
                Some((limit, Standing::Fits)) => spend.push((hit, limit)),
                Some((_, Standing::Over { retry_after_ms })) => {
                    over.push((&rule.name, retry_after_ms))
                }
                Some((_, Standing::Full)) | None => {
                    unavailable |= rule.failure_mode == FailureMode::Deny
                }
            }
        }
        if unavailable {
            return Decision::Reply(LocalReply {
                status: self.failure_status,
                headers: vec![
                    ("retry-after", "1".to_owned()),
                    ("content-type", "application/problem+json".to_owned()),
                ],
                body: unavailable_body(self.failure_status),
                kind: ReplyKind::Unavailable,
            });
        }
        if !over.is_empty() {
            let retry_after =
                ceil_seconds(over.iter().map(|(_, ms)| *ms).max().unwrap_or(1_000)).max(1);
            let violated: Vec<&str> = over.iter().map(|(name, _)| *name).collect();
            return Decision::Reply(LocalReply {
                status: self.deny_status,
                headers: vec![
                    ("retry-after", retry_after.to_string()),
                    ("content-type", "application/problem+json".to_owned()),
                ],
                body: denial_body(self.deny_status, &violated, retry_after),
                kind: ReplyKind::FallbackOverLimit,
            });
        }
        let outcome = if spend.is_empty() {
            Outcome::FailedOpen
        } else {
            Outcome::FallbackAllowed
        };
        // Another worker may have spent the last units since they were read;
        // the request is admitted anyway (it was judged to fit), so the local
        // limit can be passed by at most one request per worker.
        for (hit, limit) in spend {
            fallback::spend(counters, &hit.key, hit.cost, limit);
        }
        Decision::Allow {
            outcome,
            headers: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::{Algorithm, HitResult};

    use super::*;
    use crate::fallback::tests::FakeCounters;
    use crate::request::tests::FakeRequest;

    fn policy(extra: &str) -> Policy {
        Policy::from_json(
            format!(
                r#"{{{extra}"rules":[
                {{"name":"limited","match":{{"path":{{"prefix":"/limited_endpoint"}}}},"limit":{{"requests":10,"window":"60s"}}}},
                {{"name":"global","limit":{{"requests":1000,"window":"1s"}},"key":[{{"constant":"all"}}],"shadow":true}},
                {{"name":"api","match":{{"path":{{"prefix":"/api"}}}},"key":[{{"header":"x-api-key"}}],
                  "limit":{{"requests":5,"window":"1m","algorithm":"gcra","burst":2}},"failure_mode":"deny"}}]}}"#
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
            remaining: if allowed { 3 } else { 0 },
            reset_ms: 30_000,
            retry_after_ms,
            leased: 0,
            lease_ms: 0,
        }
    }

    #[test]
    fn a_request_no_rule_matches_continues() {
        let p = Policy::from_json(
            br#"{"rules":[{"name":"l","match":{"path":{"prefix":"/limited_endpoint"}},"limit":{"requests":1,"window":"1s"}}]}"#,
        )
        .unwrap();
        for path in ["/", "/health", "/limited", "/x?/limited_endpoint"] {
            assert_eq!(
                p.evaluate(&FakeRequest::new("GET", path)),
                Verdict::Continue,
                "{path}"
            );
        }
    }

    #[test]
    fn every_matching_rule_becomes_a_hit() {
        let p = policy("");
        let check = check_of(
            p.evaluate(&FakeRequest::new("GET", "/limited_endpoint?x=1").from("127.0.0.2:4321")),
        );
        assert_eq!(check.rules, vec![0, 1]);
        let hits: Vec<_> = check
            .hits
            .iter()
            .map(|h| (h.key.as_str(), h.limit, h.window_ms, h.cost, h.shadow))
            .collect();
        assert_eq!(
            hits,
            vec![
                ("limited:127.0.0.2", 10, 60_000, 1, false),
                ("global:all", 1000, 1000, 1, true)
            ]
        );
    }

    #[test]
    fn a_rule_whose_key_header_is_missing_is_skipped() {
        let p = policy("");
        let check = check_of(p.evaluate(&FakeRequest::new("GET", "/api/items")));
        assert_eq!(check.rules, vec![1]);
        let check =
            check_of(p.evaluate(&FakeRequest::new("GET", "/api/items").with("x-api-key", "k1")));
        assert_eq!(check.rules, vec![1, 2]);
        assert_eq!(check.hits[1].key, "api:k1");
        assert_eq!(
            (check.hits[1].algorithm, check.hits[1].burst),
            (Algorithm::Gcra, Some(2))
        );
    }

    #[test]
    fn an_allowed_answer_allows_with_headers_for_enforced_rules_only() {
        let p = policy("");
        let check = check_of(p.evaluate(&FakeRequest::new("GET", "/limited_endpoint")));
        let answer = CheckResponse {
            allowed: true,
            hits: vec![hit(true, 0), hit(true, 0)],
        };
        let Decision::Allow { outcome, headers } = p.decide(&check, &answer) else {
            panic!("expected allow")
        };
        assert_eq!(outcome, Outcome::Allowed);
        assert_eq!(
            headers,
            vec![
                ("ratelimit-policy", r#""limited";q=10;w=60"#.to_owned()),
                ("ratelimit", r#""limited";r=3;t=30"#.to_owned()),
            ]
        );
    }

    #[test]
    fn a_shadow_denial_is_counted_but_does_not_deny() {
        let p = policy("");
        let check = check_of(p.evaluate(&FakeRequest::new("GET", "/limited_endpoint")));
        let answer = CheckResponse {
            allowed: true,
            hits: vec![hit(true, 0), hit(false, 500)],
        };
        assert!(matches!(
            p.decide(&check, &answer),
            Decision::Allow {
                outcome: Outcome::Allowed,
                ..
            }
        ));
        assert_eq!(p.shadow_denials(&check, &answer), 1);
    }

    #[test]
    fn a_denied_answer_replies_with_problem_details_and_headers() {
        let p = policy(r#""response_headers":"legacy","#);
        let check = check_of(p.evaluate(&FakeRequest::new("GET", "/limited_endpoint")));
        let answer = CheckResponse {
            allowed: false,
            hits: vec![hit(false, 42_001), hit(true, 0)],
        };
        let Decision::Reply(reply) = p.decide(&check, &answer) else {
            panic!("expected a reply")
        };
        assert_eq!(reply.status, 429);
        assert_eq!(reply.kind, ReplyKind::OverLimit);
        assert_eq!(reply.headers[0], ("retry-after", "43".to_owned()));
        assert_eq!(
            reply.headers[1],
            ("content-type", "application/problem+json".to_owned())
        );
        assert!(reply
            .headers
            .contains(&("x-ratelimit-remaining", "0".to_owned())));
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["status"], 429);
        assert_eq!(body["violated_policies"], serde_json::json!(["limited"]));
        assert_eq!(body["retry_after"], 43);
    }

    #[test]
    fn a_confused_answer_cannot_let_a_denied_hit_through() {
        let p = policy("");
        let check = check_of(p.evaluate(&FakeRequest::new("GET", "/limited_endpoint")));
        let answer = CheckResponse {
            allowed: true,
            hits: vec![hit(false, 10), hit(true, 0)],
        };
        let Decision::Reply(reply) = p.decide(&check, &answer) else {
            panic!("expected a reply")
        };
        assert_eq!(reply.headers[0].1, "1");
    }

    #[test]
    fn the_failure_mode_of_the_matched_rules_decides() {
        let p = policy("");
        let open = check_of(p.evaluate(&FakeRequest::new("GET", "/limited_endpoint")));
        assert_eq!(
            p.on_failure(&open, &FakeCounters::default()),
            Decision::Allow {
                outcome: Outcome::FailedOpen,
                headers: vec![]
            }
        );
        let closed = check_of(p.evaluate(&FakeRequest::new("GET", "/api").with("x-api-key", "k")));
        let Decision::Reply(reply) = p.on_failure(&closed, &FakeCounters::default()) else {
            panic!("expected a reply")
        };
        assert_eq!(reply.status, 503);
        assert_eq!(reply.kind, ReplyKind::Unavailable);
        assert!(reply.body.contains("Rate Limiter Unavailable"));
        // A shadow rule never denies, whatever its failure mode.
        let shadow = Policy::from_json(
            br#"{"failure_mode":"deny","rules":[{"name":"s","shadow":true,"limit":{"requests":1,"window":"1s"}}]}"#,
        )
        .unwrap();
        let check = check_of(shadow.evaluate(&FakeRequest::new("GET", "/")));
        assert!(matches!(
            shadow.on_failure(&check, &FakeCounters::default()),
            Decision::Allow {
                outcome: Outcome::FailedOpen,
                ..
            }
        ));
    }

    #[test]
    fn fallback_limits_hold_while_limitd_is_away() {
        let p = Policy::from_json(
            br#"{"failure_mode":"deny","rules":[
                {"name":"fb","fallback":{"requests":2,"window":"1s"},"limit":{"requests":10,"window":"1s"}},
                {"name":"open","match":{"path":{"prefix":"/open"}},"failure_mode":"allow","limit":{"requests":1,"window":"1s"}}]}"#,
        )
        .unwrap();
        let counters = FakeCounters::default();
        counters.now.set(5_400);
        let check = check_of(p.evaluate(&FakeRequest::new("GET", "/open")));
        for _ in 0..2 {
            assert!(matches!(
                p.on_failure(&check, &counters),
                Decision::Allow {
                    outcome: Outcome::FallbackAllowed,
                    ..
                }
            ));
        }
        let Decision::Reply(reply) = p.on_failure(&check, &counters) else {
            panic!("expected a reply")
        };
        assert_eq!(
            (reply.status, reply.kind),
            (429, ReplyKind::FallbackOverLimit)
        );
        assert_eq!(reply.headers[0], ("retry-after", "1".to_owned()));
        assert!(
            reply.body.contains(r#""violated_policies":["fb"]"#),
            "{}",
            reply.body
        );
        // Another client has its own fallback counter.
        let other = check_of(p.evaluate(&FakeRequest::new("GET", "/open").from("10.0.0.9:1")));
        assert!(matches!(
            p.on_failure(&other, &counters),
            Decision::Allow { .. }
        ));
        // A new window starts afresh.
        counters.now.set(6_000);
        assert!(matches!(
            p.on_failure(&check, &counters),
            Decision::Allow { .. }
        ));
    }

    #[test]
    fn a_rule_failing_closed_wins_over_a_fallback() {
        let p = Policy::from_json(
            br#"{"rules":[
                {"name":"fb","fallback":{"requests":2,"window":"1s"},"limit":{"requests":10,"window":"1s"}},
                {"name":"closed","failure_mode":"deny","limit":{"requests":1,"window":"1s"}}]}"#,
        )
        .unwrap();
        let counters = FakeCounters::default();
        let check = check_of(p.evaluate(&FakeRequest::new("GET", "/")));
        let Decision::Reply(reply) = p.on_failure(&check, &counters) else {
            panic!("expected a reply")
        };
        assert_eq!(reply.kind, ReplyKind::Unavailable);
        // Nothing was spent on the fallback counter by the refused request.
        assert!(counters.data.borrow().is_empty());
        // While the same request without the closed rule spends it.
        let open = check_of(p.evaluate(&FakeRequest::new("GET", "/")));
        let open = Check {
            hits: open.hits[..1].to_vec(),
            rules: open.rules[..1].to_vec(),
        };
        assert!(matches!(
            p.on_failure(&open, &counters),
            Decision::Allow { .. }
        ));
        assert_eq!(counters.data.borrow().len(), 1);
    }

    #[test]
    fn learnt_denials_deny_at_once_until_they_expire() {
        let p = policy("");
        let check = check_of(p.evaluate(&FakeRequest::new("GET", "/limited_endpoint")));
        let mut cache = DenyCache::default();
        assert_eq!(p.cached_denial(&check, &cache, 1_000), None);
        // limitd denied "limited" for 30 s and the shadow rule too; sent at 990.
        let answer = CheckResponse {
            allowed: false,
            hits: vec![hit(false, 30_000), hit(false, 500)],
        };
        p.learn(&check, &answer, 990, 1_000, &mut cache);
        assert_eq!(cache.len(), 1, "shadow denials are not cached");
        let Some(Decision::Reply(reply)) = p.cached_denial(&check, &cache, 1_000) else {
            panic!("expected a denial")
        };
        assert_eq!((reply.status, reply.kind), (429, ReplyKind::OverLimit));
        assert_eq!(reply.headers[0], ("retry-after", "30".to_owned()));
        assert!(reply
            .headers
            .contains(&("ratelimit", r#""limited";r=0;t=30"#.to_owned())));
        assert!(reply.body.contains(r#""violated_policies":["limited"]"#));
        // The expiry counts from the sending: 990 + 30 000.
        assert!(p.cached_denial(&check, &cache, 30_989).is_some());
        assert_eq!(p.cached_denial(&check, &cache, 30_990), None);
        // Another client's key is not affected.
        let other =
            check_of(p.evaluate(&FakeRequest::new("GET", "/limited_endpoint").from("10.1.1.1:1")));
        assert_eq!(p.cached_denial(&other, &cache, 1_000), None);
    }

    #[test]
    fn a_retry_time_longer_than_the_rule_can_produce_is_capped() {
        let p = policy("");
        // limitd claims ~585 million years for the 10-per-60 s fixed-window rule.
        let check = check_of(p.evaluate(&FakeRequest::new("GET", "/limited_endpoint")));
        let answer = CheckResponse {
            allowed: false,
            hits: vec![hit(false, u64::MAX / 1000), hit(true, 0)],
        };
        let Decision::Reply(reply) = p.decide(&check, &answer) else {
            panic!("expected a denial")
        };
        assert_eq!(reply.headers[0], ("retry-after", "60".to_owned()));
        let mut cache = DenyCache::default();
        p.learn(&check, &answer, 1_000, 1_000, &mut cache);
        assert!(p.cached_denial(&check, &cache, 60_999).is_some());
        assert_eq!(p.cached_denial(&check, &cache, 61_000), None);
        // gcra, 5 per minute with cost 1: one unit pays off in 12 s at most.
        let api = check_of(p.evaluate(&FakeRequest::new("GET", "/api/x").with("x-api-key", "k")));
        assert_eq!(api.rules, [1, 2], "the shadow rule, then the gcra rule");
        let answer = CheckResponse {
            allowed: false,
            hits: vec![hit(true, 0), hit(false, 10_000_000)],
        };
        let Decision::Reply(reply) = p.decide(&api, &answer) else {
            panic!("expected a denial")
        };
        assert_eq!(reply.headers[0], ("retry-after", "12".to_owned()));
        // An honest figure below the cap is kept as it is.
        let answer = CheckResponse {
            allowed: false,
            hits: vec![hit(true, 0), hit(false, 4_500)],
        };
        let Decision::Reply(reply) = p.decide(&api, &answer) else {
            panic!("expected a denial")
        };
        assert_eq!(reply.headers[0], ("retry-after", "5".to_owned()));
    }

    #[test]
    fn by_default_an_ipv6_client_is_its_slash_64() {
        let p = policy("");
        let key = |from: &str| {
            check_of(p.evaluate(&FakeRequest::new("GET", "/limited_endpoint").from(from))).hits[0]
                .key
                .clone()
        };
        let one = key("[2001:db8:0:7::1]:5000");
        assert_eq!(one, key("[2001:db8:0:7:ffff:ffff:ffff:ffff]:6000"));
        assert_ne!(one, key("[2001:db8:0:8::1]:5000"));
        assert_ne!(key("10.0.0.1:1"), key("10.0.0.2:1"));
    }

    #[test]
    fn allowed_hits_teach_nothing() {
        let p = policy("");
        let check = check_of(p.evaluate(&FakeRequest::new("GET", "/limited_endpoint")));
        let mut cache = DenyCache::default();
        let answer = CheckResponse {
            allowed: true,
            hits: vec![hit(true, 0), hit(true, 0)],
        };
        p.learn(&check, &answer, 0, 0, &mut cache);
        assert!(cache.is_empty());
    }
}
