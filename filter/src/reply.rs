//! What clients see: the RateLimit headers of allowed and denied responses,
//! and the `application/problem+json` body of a denial.

use protocol::HitResult;
use serde::{Deserialize, Serialize};

/// Which rate-limit headers responses carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderStyle {
    /// draft-ietf-httpapi-ratelimit-headers-10: `RateLimit-Policy` and
    /// `RateLimit`, one list item per matching rule.
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset` for the rule closest to its limit.
    Legacy,
    /// No rate-limit headers.
    None,
}

/// One enforced rule's state after a check, as the headers report it.
#[derive(Debug, Clone, Copy)]
pub struct RuleState<'a> {
    pub name: &'a str,
    pub window_ms: u64,
    pub result: &'a HitResult,
}

/// Whole seconds, rounded up (a client told "0" would retry at once).
pub fn ceil_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// The rate-limit headers for a response, given each enforced rule's state.
pub fn rate_limit_headers(
    style: HeaderStyle,
    states: &[RuleState<'_>],
) -> Vec<(&'static str, String)> {
    if states.is_empty() {
        return Vec::new();
    }
    match style {
        HeaderStyle::None => Vec::new(),
        HeaderStyle::Ietf => {
            // Written out directly: these values are built for every response a rule matched,
            // most of them admitted without a callout, and `format!` costs several times more.
            let mut policy = String::with_capacity(states.len() * 48);
            let mut state = String::with_capacity(states.len() * 48);
            let mut digits = itoa::Buffer::new();
            for (i, s) in states.iter().enumerate() {
                if i > 0 {
                    policy.push_str(", ");
                    state.push_str(", ");
                }
                let window = ceil_seconds(s.window_ms).max(1);
                push_item(
                    &mut policy,
                    &mut digits,
                    s.name,
                    ("q", s.result.limit),
                    ("w", window),
                );
                let reset = ceil_seconds(s.result.reset_ms);
                push_item(
                    &mut state,
                    &mut digits,
                    s.name,
                    ("r", s.result.remaining),
                    ("t", reset),
                );
            }
            vec![("ratelimit-policy", policy), ("ratelimit", state)]
        }
        HeaderStyle::Legacy => {
            // Closest to its limit: the least left relative to the limit (compared
            // by cross-multiplication, exact in u128); ties go to the later reset.
            let closest = states.iter().min_by(|a, b| {
                let left_a = u128::from(a.result.remaining) * u128::from(b.result.limit.max(1));
                let left_b = u128::from(b.result.remaining) * u128::from(a.result.limit.max(1));
                left_a
                    .cmp(&left_b)
                    .then(b.result.reset_ms.cmp(&a.result.reset_ms))
            });
            match closest {
                Some(s) => vec![
                    ("x-ratelimit-limit", s.result.limit.to_string()),
                    ("x-ratelimit-remaining", s.result.remaining.to_string()),
                    (
                        "x-ratelimit-reset",
                        ceil_seconds(s.result.reset_ms).to_string(),
                    ),
                ],
                None => Vec::new(),
            }
        }
    }
}

/// Appends one list item of the IETF headers: `"name";a=1;b=2`.
fn push_item(
    out: &mut String,
    digits: &mut itoa::Buffer,
    name: &str,
    first: (&str, u64),
    second: (&str, u64),
) {
    out.push('"');
    out.push_str(name);
    out.push('"');
    for (key, value) in [first, second] {
        out.push(';');
        out.push_str(key);
        out.push('=');
        out.push_str(digits.format(value));
    }
}

/// An RFC 9457 problem details body.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u32,
    detail: String,
    /// The rules the request violated (a `ratelimit` extension member).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    violated_policies: Vec<&'a str>,
    /// Seconds until the request could pass (an extension member).
    retry_after: u64,
}

/// The body of a denial by the rules `violated`.
pub fn denial_body(status: u32, violated: &[&str], retry_after: u64) -> String {
    let detail = match violated {
        [one] => format!("Rate limit exceeded for policy \"{one}\""),
        many => format!(
            "Rate limits exceeded for policies {}",
            many.iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let problem = Problem {
        kind: "about:blank",
        title: "Too Many Requests",
        status,
        detail,
        violated_policies: violated.to_vec(),
        retry_after,
    };
    serde_json::to_string(&problem).unwrap_or_default()
}

/// The body of a denial by the one rule `rule` up to its `retry_after` value: that body is this,
/// the number and `}` ([`one_rule_denial_body`]). Made once per rule with the configuration, so
/// that a denial (most of them answered from the deny cache) is not serialized each time.
/// `None` if the body does not end as expected; the caller then serializes it.
pub fn denial_body_head(status: u32, rule: &str) -> Option<String> {
    // serde_json writes the fields in their order: `retry_after` is the last.
    denial_body(status, &[rule], 0)
        .strip_suffix("0}")
        .map(str::to_owned)
}

/// [`denial_body`] for one rule, from its [`denial_body_head`].
pub fn one_rule_denial_body(head: &str, retry_after: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let seconds = digits.format(retry_after);
    let mut body = String::with_capacity(head.len() + seconds.len() + 1);
    body.push_str(head);
    body.push_str(seconds);
    body.push('}');
    body
}

/// The body of a denial because the rate limiter could not be reached.
pub fn unavailable_body(status: u32) -> String {
    let problem = Problem {
        kind: "about:blank",
        title: "Rate Limiter Unavailable",
        status,
        detail: "The rate limiter could not be reached; retry later".to_owned(),
        violated_policies: Vec::new(),
        retry_after: 1,
    };
    serde_json::to_string(&problem).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(limit: u64, remaining: u64, reset_ms: u64) -> HitResult {
        HitResult {
            allowed: remaining > 0,
            limit,
            remaining,
            reset_ms,
            retry_after_ms: 0,
            leased: 0,
            lease_ms: 0,
        }
    }

    #[test]
    fn ietf_headers_list_every_rule() {
        let (a, b) = (result(100, 42, 16_001), result(10, 0, 500));
        let states = [
            RuleState {
                name: "api",
                window_ms: 60_000,
                result: &a,
            },
            RuleState {
                name: "burst",
                window_ms: 500,
                result: &b,
            },
        ];
        let headers = rate_limit_headers(HeaderStyle::Ietf, &states);
        assert_eq!(
            headers,
            vec![
                (
                    "ratelimit-policy",
                    r#""api";q=100;w=60, "burst";q=10;w=1"#.to_owned()
                ),
                (
                    "ratelimit",
                    r#""api";r=42;t=17, "burst";r=0;t=1"#.to_owned()
                ),
            ]
        );
    }

    #[test]
    fn legacy_headers_show_the_rule_closest_to_its_limit() {
        let (a, b, c) = (
            result(100, 10, 5_000),
            result(10, 2, 1_000),
            result(1000, 200, 9_000),
        );
        let states = [
            RuleState {
                name: "a",
                window_ms: 60_000,
                result: &a,
            },
            RuleState {
                name: "b",
                window_ms: 60_000,
                result: &b,
            },
            RuleState {
                name: "c",
                window_ms: 60_000,
                result: &c,
            },
        ];
        assert_eq!(
            rate_limit_headers(HeaderStyle::Legacy, &states),
            vec![
                ("x-ratelimit-limit", "100".to_owned()),
                ("x-ratelimit-remaining", "10".to_owned()),
                ("x-ratelimit-reset", "5".to_owned()),
            ]
        );
    }

    #[test]
    fn no_headers_when_asked_or_when_no_rule_was_checked() {
        let a = result(1, 1, 1);
        let states = [RuleState {
            name: "a",
            window_ms: 1,
            result: &a,
        }];
        assert!(rate_limit_headers(HeaderStyle::None, &states).is_empty());
        assert!(rate_limit_headers(HeaderStyle::Ietf, &[]).is_empty());
    }

    #[test]
    fn denial_bodies_are_problem_details() {
        let body: serde_json::Value =
            serde_json::from_str(&denial_body(429, &["a", "b"], 7)).unwrap();
        assert_eq!(body["type"], "about:blank");
        assert_eq!(body["title"], "Too Many Requests");
        assert_eq!(body["status"], 429);
        assert_eq!(body["violated_policies"], serde_json::json!(["a", "b"]));
        assert_eq!(body["retry_after"], 7);
        assert_eq!(
            body["detail"],
            r#"Rate limits exceeded for policies "a", "b""#
        );
        let one: serde_json::Value = serde_json::from_str(&denial_body(429, &["a"], 1)).unwrap();
        assert_eq!(one["detail"], r#"Rate limit exceeded for policy "a""#);
        let down: serde_json::Value = serde_json::from_str(&unavailable_body(503)).unwrap();
        assert_eq!(down["status"], 503);
        assert!(down.get("violated_policies").is_none());
    }

    #[test]
    fn a_one_rule_denial_from_its_head_is_the_serialized_body() {
        for (status, rule) in [(429, "a"), (503, "limited_endpoint"), (418, "x.y-z_9")] {
            let head = denial_body_head(status, rule).expect(rule);
            for seconds in [0, 1, 9, 10, 3599, u64::MAX] {
                assert_eq!(
                    one_rule_denial_body(&head, seconds),
                    denial_body(status, &[rule], seconds)
                );
            }
        }
    }
}
