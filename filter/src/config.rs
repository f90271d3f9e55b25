//! The plugin configuration: raw JSON types, and their compilation into a validated [`Policy`].
//!
//! The JSON arrives once, in the root context's `on_configure`. It is parsed
//! with unknown fields rejected, then compiled: every check that can fail
//! happens here (durations, regexes, bounds), so a request does no parsing and
//! meets no surprise. Every error names the JSON path of the offending field.

use std::collections::HashSet;
use std::fmt;

use protocol::Algorithm;
use regex_lite::Regex;
use serde::Deserialize;

use crate::duration::parse_duration_ms;
use crate::fallback::Fallback;
use crate::json_path;
use crate::key::KeyPart;
use crate::lease::{LeaseRule, DEFAULT_GCRA_LIFETIME_MS, DEFAULT_MAX_UNITS};
use crate::reply::HeaderStyle;
use crate::request::{HeaderCondition, HeaderMatch, Matcher, PathMatch};

/// What to do with a request when limitd cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Let the request through (fail open). The default.
    Allow,
    /// Answer it with the configured failure status (fail closed).
    Deny,
}

/// The plugin configuration as written in `rules/ratelimit.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_cluster")]
    limitd_cluster: String,
    #[serde(default)]
    limitd_authority: Option<String>,
    #[serde(default)]
    limitd_token: Option<String>,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_failure_mode")]
    failure_mode: FailureMode,
    #[serde(default = "default_deny_status")]
    deny_status: u32,
    #[serde(default = "default_failure_status")]
    failure_status: u32,
    #[serde(default)]
    response_headers: HeaderStyle,
    #[serde(default)]
    batch: RawBatch,
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_max_checks")]
    max_checks: usize,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: usize,
}

impl Default for RawBatch {
    fn default() -> Self {
        RawBatch {
            enabled: true,
            max_checks: default_max_checks(),
            max_in_flight: default_max_in_flight(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(rename = "match", default)]
    matcher: RawMatch,
    #[serde(default = "default_key")]
    key: Vec<RawKeyPart>,
    #[serde(default)]
    missing: Option<RawMissing>,
    limit: RawLimit,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    failure_mode: Option<FailureMode>,
    #[serde(default)]
    fallback: Option<RawFallback>,
    #[serde(default)]
    lease: Option<RawLease>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLease {
    #[serde(default)]
    max_units: Option<u64>,
    #[serde(default)]
    lifetime: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallback {
    requests: u64,
    window: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    path: Option<RawPath>,
    methods: Option<Vec<String>>,
    host: Option<String>,
    headers: Option<Vec<RawHeaderMatch>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawPath {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatch {
    name: String,
    present: Option<bool>,
    equals: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a key part: \"client_ip\", \"path\", \"method\", {\"client_ip\": {\"ipv4_prefix\": N, \"ipv6_prefix\": N}}, {\"header\": NAME} or {\"constant\": TEXT}"
)]
enum RawKeyPart {
    Named(String),
    Tagged(RawTaggedPart),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawTaggedPart {
    ClientIp(RawClientIp),
    Header(String),
    Constant(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientIp {
    ipv4_prefix: Option<u8>,
    ipv6_prefix: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "\"skip\" or {\"default\": TEXT}")]
enum RawMissing {
    Skip(String),
    Default { default: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    requests: u64,
    window: String,
    #[serde(default = "default_cost")]
    cost: u64,
    #[serde(default)]
    algorithm: Algorithm,
    burst: Option<u64>,
}

fn default_cluster() -> String {
    "limitd".to_owned()
}
fn default_timeout() -> String {
    "200ms".to_owned()
}
fn default_failure_mode() -> FailureMode {
    FailureMode::Allow
}
fn default_deny_status() -> u32 {
    429
}
fn default_failure_status() -> u32 {
    503
}
fn default_true() -> bool {
    true
}
fn default_max_checks() -> usize {
    64
}
fn default_max_in_flight() -> usize {
    1
}
fn default_key() -> Vec<RawKeyPart> {
    vec![RawKeyPart::Named("client_ip".to_owned())]
}
fn default_cost() -> u64 {
    1
}

// The bounds limitd enforces, from the protocol's one definition of them.
use protocol::bounds::{
    validate_hit, HitField, MAX_KEY_BYTES, MAX_TIMEOUT_MS, MAX_UNITS as MAX_AMOUNT, MAX_WINDOW_MS,
};

/// The IPv6 prefix that counts as one client unless a rule says otherwise: a
/// /64 is what one subscriber gets, so keying per /128 would hand one client
/// 2^64 counters.
const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The most parts one key may have: with each part at most 193 bytes (a
/// 64-byte value, percent-encoded, and its separator) and a 64-byte rule
/// name, every key the filter builds stays within [`MAX_KEY_BYTES`].
const MAX_KEY_PARTS: usize = 8;
const _: () = assert!(64 + MAX_KEY_PARTS * 193 <= MAX_KEY_BYTES);
/// The most rules one filter may have (a check carries at most `protocol::MAX_HITS` hits).
const MAX_RULES: usize = protocol::MAX_HITS;

/// The validated configuration the filter runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub limitd_cluster: String,
    pub limitd_authority: String,
    /// `Authorization` of every callout (`Bearer <limitd_token>`), if limitd
    /// wants a token.
    pub limitd_authorization: Option<String>,
    pub timeout_ms: u64,
    pub deny_status: u32,
    pub failure_status: u32,
    pub response_headers: HeaderStyle,
    pub batch: Batching,
    pub rules: Vec<Rule>,
    /// Per rule: the body of a denial by that rule alone, up to its `retry_after` value
    /// ([`crate::reply::denial_body_head`]).
    pub denial_heads: Vec<Option<String>>,
}

/// How a worker shares callouts among its requests (group commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// False: one callout per request, its own batch of one to `/v2/checks`.
    pub enabled: bool,
    /// The most checks in one callout.
    pub max_checks: usize,
    /// The most callouts a worker has in flight at once.
    pub max_in_flight: usize,
}

/// One rate-limit rule: which requests it counts, by what key, and how many it admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique among the rules; namespaces the rule's counters.
    pub name: String,
    pub matcher: Matcher,
    pub key: Vec<KeyPart>,
    /// Used in place of a missing header the key needs; `None` skips the rule instead.
    pub missing_default: Option<String>,
    pub requests: u64,
    pub window_ms: u64,
    pub cost: u64,
    pub algorithm: Algorithm,
    pub burst: Option<u64>,
    /// Count and report, never deny.
    pub shadow: bool,
    /// The rule's failure mode (its own, or the filter's).
    pub failure_mode: FailureMode,
    /// A local limit each Envoy enforces while limitd cannot answer, in place
    /// of the failure mode.
    pub fallback: Option<Fallback>,
    /// Admit from blocks of quota reserved in advance (see [`crate::lease`]);
    /// `None`: every request is checked by limitd.
    pub lease: Option<LeaseRule>,
}

impl Rule {
    /// The longest wait a denial by this rule can honestly ask for: a window
    /// for fixed window, two for sliding window (the current count becomes the
    /// previous one), and `cost × window / limit` for gcra (the debt a full
    /// bucket must pay off). limitd's `retry_after_ms` is capped at this, so an
    /// answer that claims more (a bug, or a hostile limitd) cannot shut a
    /// client out for longer than the rule allows.
    pub fn longest_wait_ms(&self) -> u64 {
        match self.algorithm {
            Algorithm::FixedWindow => self.window_ms,
            Algorithm::SlidingWindow => self.window_ms.saturating_mul(2),
            Algorithm::Gcra => {
                let ms = u128::from(self.cost) * u128::from(self.window_ms);
                let limit = u128::from(self.requests.max(1));
                u64::try_from(ms.div_ceil(limit)).unwrap_or(u64::MAX)
            }
        }
    }
}

/// A configuration that cannot be used, with the JSON path of the culprit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the problem is, e.g. `rules[2].limit.window`; empty for the whole document.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Escapes control characters (a field name in the JSON may contain a
/// newline), so an error is always one log line.
fn one_line(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn error(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

impl Policy {
    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| {
            let offset = json_path::offset_of(bytes, e.line(), e.column());
            error(
                one_line(&json_path::path_at(bytes, offset)),
                one_line(&json_path::message_of(&e)),
            )
        })?;
        Policy::try_from(raw)
    }
}

impl TryFrom<RawConfig> for Policy {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        if raw.limitd_cluster.is_empty() {
            return Err(error(
                "limitd_cluster",
                "must name the Envoy cluster of limitd",
            ));
        }
        let timeout_ms = parse_duration_ms(&raw.timeout).map_err(|e| error("timeout", e))?;
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            // Zero would mean "no timeout at all" to Envoy: a request could hang forever.
            return Err(error(
                "timeout",
                format!("must be between 1ms and {MAX_TIMEOUT_MS}ms"),
            ));
        }
        for (field, status) in [
            ("deny_status", raw.deny_status),
            ("failure_status", raw.failure_status),
        ] {
            if !(200..=599).contains(&status) {
                return Err(error(
                    field,
                    format!("{status} is not an HTTP status (200-599)"),
                ));
            }
        }
        if !(1..=protocol::MAX_CHECKS).contains(&raw.batch.max_checks) {
            return Err(error(
                "batch.max_checks",
                format!("must be between 1 and {}", protocol::MAX_CHECKS),
            ));
        }
        if !(1..=16).contains(&raw.batch.max_in_flight) {
            return Err(error("batch.max_in_flight", "must be between 1 and 16"));
        }
        if raw.rules.len() > MAX_RULES {
            return Err(error(
                "rules",
                format!("{} rules; at most {MAX_RULES}", raw.rules.len()),
            ));
        }
        let limitd_authorization = match raw.limitd_token {
            None => None,
            Some(token)
                if (16..=256).contains(&token.len())
                    && token.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(format!("Bearer {token}"))
            }
            Some(_) => {
                return Err(error(
                    "limitd_token",
                    "must be 16 to 256 printable ASCII characters without spaces, as limitd's \
                     LIMITD_TOKEN",
                ))
            }
        };
        let mut names = HashSet::new();
        let rules = raw
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| compile_rule(i, rule, raw.failure_mode, &mut names))
            .collect::<Result<Vec<_>, _>>()?;
        let denial_heads = rules
            .iter()
            .map(|rule| crate::reply::denial_body_head(raw.deny_status, &rule.name))
            .collect();
        Ok(Policy {
            limitd_authority: raw
                .limitd_authority
                .unwrap_or_else(|| raw.limitd_cluster.clone()),
            limitd_cluster: raw.limitd_cluster,
            limitd_authorization,
            timeout_ms,
            deny_status: raw.deny_status,
            failure_status: raw.failure_status,
            response_headers: raw.response_headers,
            batch: Batching {
                enabled: raw.batch.enabled,
                max_checks: raw.batch.max_checks,
                max_in_flight: raw.batch.max_in_flight,
            },
            rules,
            denial_heads,
        })
    }
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn compile_rule(
    index: usize,
    raw: RawRule,
    default_failure_mode: FailureMode,
    names: &mut HashSet<String>,
) -> Result<Rule, ConfigError> {
    let at = |field: &str| format!("rules[{index}].{field}");
    let name_ok = !raw.name.is_empty()
        && raw.name.len() <= 64
        && raw
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !name_ok {
        return Err(error(
            at("name"),
            format!(
                "{:?} must be 1-64 characters of A-Z a-z 0-9 _ - .",
                raw.name
            ),
        ));
    }
    if !names.insert(raw.name.clone()) {
        return Err(error(
            at("name"),
            format!(
                "{:?} is used by an earlier rule; names must be unique",
                raw.name
            ),
        ));
    }
    let matcher = compile_match(raw.matcher, &at)?;
    let key = compile_key(raw.key, &at)?;
    let missing_default = match raw.missing {
        None => None,
        Some(RawMissing::Skip(word)) if word == "skip" => None,
        Some(RawMissing::Skip(word)) => {
            return Err(error(
                at("missing"),
                format!("{word:?}: use \"skip\" or {{\"default\": TEXT}}"),
            ))
        }
        Some(RawMissing::Default { default }) => Some(default),
    };
    let limit = raw.limit;
    if !(1..=MAX_AMOUNT).contains(&limit.requests) {
        return Err(error(
            at("limit.requests"),
            format!("must be between 1 and {MAX_AMOUNT}"),
        ));
    }
    let window_ms = parse_duration_ms(&limit.window).map_err(|e| error(at("limit.window"), e))?;
    if window_ms == 0 {
        return Err(error(at("limit.window"), "must be longer than 0"));
    }
    if window_ms > MAX_WINDOW_MS {
        return Err(error(at("limit.window"), "must be at most 366d"));
    }
    let capacity = match (limit.algorithm, limit.burst) {
        (Algorithm::Gcra, Some(burst)) if !(1..=MAX_AMOUNT).contains(&burst) => {
            return Err(error(
                at("limit.burst"),
                format!("must be between 1 and {MAX_AMOUNT}"),
            ))
        }
        (Algorithm::Gcra, burst) => burst.unwrap_or(limit.requests),
        (_, Some(_)) => {
            return Err(error(
                at("limit.burst"),
                "applies only to \"algorithm\": \"gcra\"",
            ))
        }
        (_, None) => limit.requests,
    };
    if limit.cost == 0 || limit.cost > capacity {
        let what = if limit.algorithm == Algorithm::Gcra {
            "burst"
        } else {
            "requests"
        };
        return Err(error(
            at("limit.cost"),
            format!("must be between 1 and the rule's {what} ({capacity})"),
        ));
    }
    // Whatever the checks above missed, limitd would refuse: the protocol's
    // bounds decide, for a hit as this rule sends it.
    let template = protocol::Hit {
        key: raw.name.clone(),
        limit: limit.requests,
        window_ms,
        cost: limit.cost,
        algorithm: limit.algorithm,
        burst: limit.burst,
        shadow: raw.shadow,
        lease: 0,
    };
    if let Err(refused) = validate_hit(&template) {
        let field = match refused.field {
            HitField::Key => "name",
            HitField::Limit => "limit.requests",
            HitField::WindowMs => "limit.window",
            HitField::Cost => "limit.cost",
            HitField::Burst => "limit.burst",
            HitField::Lease => "lease",
        };
        return Err(error(
            at(field),
            format!("limitd would refuse it: {}", refused.problem),
        ));
    }
    let fallback = match raw.fallback {
        None => None,
        Some(f) => {
            if !(1..=MAX_AMOUNT).contains(&f.requests) {
                return Err(error(
                    at("fallback.requests"),
                    format!("must be between 1 and {MAX_AMOUNT}"),
                ));
            }
            let window_ms =
                parse_duration_ms(&f.window).map_err(|e| error(at("fallback.window"), e))?;
            if !(1..=MAX_WINDOW_MS).contains(&window_ms) {
                return Err(error(
                    at("fallback.window"),
                    "must be longer than 0 and at most 366d",
                ));
            }
            if limit.cost > f.requests {
                return Err(error(
                    at("fallback.requests"),
                    format!("must be at least the rule's cost ({})", limit.cost),
                ));
            }
            Some(Fallback {
                requests: f.requests,
                window_ms,
            })
        }
    };
    let lease = match raw.lease {
        None => None,
        Some(_) if raw.shadow => {
            return Err(error(
                at("lease"),
                "a shadow rule never denies, so it has nothing to lease: remove one of the two",
            ))
        }
        Some(l) => {
            let max_units = l.max_units.unwrap_or(DEFAULT_MAX_UNITS);
            if !(1..=MAX_AMOUNT).contains(&max_units) {
                return Err(error(
                    at("lease.max_units"),
                    format!("must be between 1 and {MAX_AMOUNT}"),
                ));
            }
            let lifetime_ms = match l.lifetime {
                Some(text) => {
                    let ms =
                        parse_duration_ms(&text).map_err(|e| error(at("lease.lifetime"), e))?;
                    if !(1..=MAX_WINDOW_MS).contains(&ms) {
                        return Err(error(
                            at("lease.lifetime"),
                            "must be longer than 0 and at most 366d",
                        ));
                    }
                    Some(ms)
                }
                None if limit.algorithm == Algorithm::Gcra => Some(DEFAULT_GCRA_LIFETIME_MS),
                None => None,
            };
            Some(LeaseRule {
                max_units,
                lifetime_ms,
            })
        }
    };
    Ok(Rule {
        name: raw.name,
        matcher,
        key,
        missing_default,
        requests: limit.requests,
        window_ms,
        cost: limit.cost,
        algorithm: limit.algorithm,
        burst: limit.burst,
        shadow: raw.shadow,
        failure_mode: raw.failure_mode.unwrap_or(default_failure_mode),
        fallback,
        lease,
    })
}

fn compile_match(raw: RawMatch, at: &impl Fn(&str) -> String) -> Result<Matcher, ConfigError> {
    let path = match raw.path {
        None => None,
        Some(RawPath::Exact(p)) | Some(RawPath::Prefix(p)) if !p.starts_with('/') => {
            return Err(error(
                at("match.path"),
                format!("{p:?} must start with \"/\""),
            ))
        }
        Some(RawPath::Exact(p)) => Some(PathMatch::Exact(p)),
        Some(RawPath::Prefix(p)) => Some(PathMatch::Prefix(p)),
        Some(RawPath::Regex(re)) => Some(PathMatch::Regex(Regex::new(&re).map_err(|e| {
            error(
                at("match.path.regex"),
                format!("{re:?} is not a regex: {e}"),
            )
        })?)),
    };
    let mut methods = Vec::new();
    for (i, method) in raw.methods.unwrap_or_default().into_iter().enumerate() {
        if !is_token(&method) {
            return Err(error(
                at(&format!("match.methods[{i}]")),
                format!("{method:?} is not an HTTP method"),
            ));
        }
        methods.push(method.to_ascii_uppercase());
    }
    let host = match raw.host {
        Some(host) if host.is_empty() || host.contains(['/', ' ', ':']) => {
            return Err(error(
                at("match.host"),
                format!("{host:?} is not a host name (no port, no scheme)"),
            ))
        }
        Some(host) if host.starts_with('*') && !host.starts_with("*.") => {
            return Err(error(
                at("match.host"),
                format!("{host:?}: a wildcard is written \"*.example.com\""),
            ))
        }
        host => host.map(|h| h.to_ascii_lowercase()),
    };
    let mut headers = Vec::new();
    for (i, h) in raw.headers.unwrap_or_default().into_iter().enumerate() {
        if !is_token(&h.name) {
            return Err(error(
                at(&format!("match.headers[{i}].name")),
                format!("{:?} is not a header name", h.name),
            ));
        }
        let condition = match (h.present, h.equals) {
            (Some(_), Some(_)) => {
                return Err(error(
                    at(&format!("match.headers[{i}]")),
                    "give \"present\" or \"equals\", not both",
                ))
            }
            (Some(present), None) => HeaderCondition::Present(present),
            (None, Some(value)) => HeaderCondition::Equals(value.into_bytes()),
            (None, None) => HeaderCondition::Present(true),
        };
        headers.push(HeaderMatch {
            name: h.name.to_ascii_lowercase(),
            condition,
        });
    }
    Ok(Matcher {
        path,
        methods,
        host,
        headers,
    })
}

fn compile_key(
    raw: Vec<RawKeyPart>,
    at: &impl Fn(&str) -> String,
) -> Result<Vec<KeyPart>, ConfigError> {
    if raw.is_empty() {
        return Err(error(
            at("key"),
            "needs at least one part; use [{\"constant\": \"all\"}] for one shared counter",
        ));
    }
    if raw.len() > MAX_KEY_PARTS {
        return Err(error(
            at("key"),
            format!("{} parts; at most {MAX_KEY_PARTS}", raw.len()),
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, part)| {
            let here = at(&format!("key[{i}]"));
            Ok(match part {
                RawKeyPart::Named(name) => match name.as_str() {
                    "client_ip" => KeyPart::ClientIp { ipv4_prefix: 32, ipv6_prefix: DEFAULT_IPV6_PREFIX },
                    "path" => KeyPart::Path,
                    "method" => KeyPart::Method,
                    _ => {
                        return Err(error(
                            here,
                            format!("{name:?} is not a key part; use \"client_ip\", \"path\", \"method\", {{\"header\": NAME}} or {{\"constant\": TEXT}}"),
                        ))
                    }
                },
                RawKeyPart::Tagged(RawTaggedPart::ClientIp(ip)) => {
                    let (v4, v6) = (ip.ipv4_prefix.unwrap_or(32), ip.ipv6_prefix.unwrap_or(DEFAULT_IPV6_PREFIX));
                    if v4 > 32 {
                        return Err(error(format!("{here}.client_ip.ipv4_prefix"), format!("{v4} is more than 32")));
                    }
                    if v6 > 128 {
                        return Err(error(format!("{here}.client_ip.ipv6_prefix"), format!("{v6} is more than 128")));
                    }
                    KeyPart::ClientIp { ipv4_prefix: v4, ipv6_prefix: v6 }
                }
                RawKeyPart::Tagged(RawTaggedPart::Header(name)) => {
                    if !is_token(&name) {
                        return Err(error(format!("{here}.header"), format!("{name:?} is not a header name")));
                    }
                    KeyPart::Header(name.to_ascii_lowercase())
                }
                RawKeyPart::Tagged(RawTaggedPart::Constant(value)) => KeyPart::Constant(value),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Policy, ConfigError> {
        Policy::from_json(json.as_bytes())
    }

    fn err(json: &str) -> String {
        parse(json).unwrap_err().to_string()
    }

    /// A config with one rule made of `rule_body` (the rule object's fields after its name).
    fn rule(rule_body: &str) -> String {
        format!(r#"{{"rules":[{{"name":"r",{rule_body}}}]}}"#)
    }

    const LIMIT: &str = r#""limit":{"requests":10,"window":"60s"}"#;

    #[test]
    fn the_demo_rule_compiles_with_defaults() {
        let policy = parse(&rule(&format!(
            r#""match":{{"path":{{"prefix":"/limited_endpoint"}}}},{LIMIT}"#
        )))
        .unwrap();
        assert_eq!(policy.limitd_cluster, "limitd");
        assert_eq!(policy.limitd_authority, "limitd");
        assert_eq!(policy.timeout_ms, 200);
        assert_eq!((policy.deny_status, policy.failure_status), (429, 503));
        assert_eq!(policy.response_headers, HeaderStyle::Ietf);
        assert_eq!(
            policy.batch,
            Batching {
                enabled: true,
                max_checks: 64,
                max_in_flight: 1
            }
        );
        let r = &policy.rules[0];
        assert_eq!(
            r.matcher.path,
            Some(PathMatch::Prefix("/limited_endpoint".into()))
        );
        assert_eq!(
            r.key,
            vec![KeyPart::ClientIp {
                ipv4_prefix: 32,
                ipv6_prefix: 64
            }]
        );
        assert_eq!((r.requests, r.window_ms, r.cost), (10, 60_000, 1));
        assert_eq!(
            (r.algorithm, r.burst, r.shadow),
            (Algorithm::FixedWindow, None, false)
        );
        assert_eq!(r.failure_mode, FailureMode::Allow);
        assert_eq!(r.missing_default, None);
    }

    #[test]
    fn every_field_is_read() {
        let policy = parse(
            r#"{"limitd_cluster":"rl","limitd_authority":"rl.local","limitd_token":"0123456789abcdef","timeout":"1s","failure_mode":"deny",
                "deny_status":420,"failure_status":500,"response_headers":"legacy",
                "batch":{"enabled":false,"max_checks":8,"max_in_flight":2},
                "rules":[{"name":"all",
                  "match":{"path":{"regex":"^/v[0-9]+/"},"methods":["get","POST"],"host":"*.Example.com",
                           "headers":[{"name":"X-Tier","equals":"free"},{"name":"x-internal","present":false},{"name":"x-key"}]},
                  "key":["client_ip",{"client_ip":{"ipv4_prefix":24,"ipv6_prefix":64}},{"header":"X-Key"},"path","method",{"constant":"v1"}],
                  "missing":{"default":"anonymous"},
                  "limit":{"requests":100,"window":"1d","cost":5,"algorithm":"gcra","burst":20},
                  "shadow":true,"failure_mode":"allow"}]}"#,
        )
        .unwrap();
        assert_eq!(policy.limitd_cluster, "rl");
        assert_eq!(policy.limitd_authority, "rl.local");
        assert_eq!(
            policy.limitd_authorization.as_deref(),
            Some("Bearer 0123456789abcdef")
        );
        assert_eq!(policy.timeout_ms, 1000);
        assert_eq!((policy.deny_status, policy.failure_status), (420, 500));
        assert_eq!(policy.response_headers, HeaderStyle::Legacy);
        assert_eq!(
            policy.batch,
            Batching {
                enabled: false,
                max_checks: 8,
                max_in_flight: 2
            }
        );
        let r = &policy.rules[0];
        assert!(
            matches!(&r.matcher.path, Some(PathMatch::Regex(re)) if re.as_str() == "^/v[0-9]+/")
        );
        assert_eq!(r.matcher.methods, ["GET", "POST"]);
        assert_eq!(r.matcher.host.as_deref(), Some("*.example.com"));
        assert_eq!(
            r.matcher.headers,
            vec![
                HeaderMatch {
                    name: "x-tier".into(),
                    condition: HeaderCondition::Equals(b"free".to_vec())
                },
                HeaderMatch {
                    name: "x-internal".into(),
                    condition: HeaderCondition::Present(false)
                },
                HeaderMatch {
                    name: "x-key".into(),
                    condition: HeaderCondition::Present(true)
                },
            ]
        );
        assert_eq!(
            r.key,
            vec![
                KeyPart::ClientIp {
                    ipv4_prefix: 32,
                    ipv6_prefix: 64
                },
                KeyPart::ClientIp {
                    ipv4_prefix: 24,
                    ipv6_prefix: 64
                },
                KeyPart::Header("x-key".into()),
                KeyPart::Path,
                KeyPart::Method,
                KeyPart::Constant("v1".into()),
            ]
        );
        assert_eq!(r.missing_default.as_deref(), Some("anonymous"));
        assert_eq!(
            (r.requests, r.window_ms, r.cost, r.algorithm, r.burst),
            (100, 86_400_000, 5, Algorithm::Gcra, Some(20))
        );
        assert!(r.shadow);
        // The rule's own failure mode wins over the filter's.
        assert_eq!(r.failure_mode, FailureMode::Allow);
    }

    #[test]
    fn rules_inherit_the_filter_failure_mode() {
        let policy = parse(&format!(
            r#"{{"failure_mode":"deny","rules":[{{"name":"r",{LIMIT}}}]}}"#
        ))
        .unwrap();
        assert_eq!(policy.rules[0].failure_mode, FailureMode::Deny);
    }

    #[test]
    fn errors_name_the_json_path() {
        let e = err(
            r#"{"rules":[{"name":"a","limit":{"requests":1,"window":"1s"}},
                                {"name":"b","limit":{"requests":1,"window":"5 minutes"}}]}"#,
        );
        assert_eq!(
            e,
            r#"rules[1].limit.window: "5 minutes" is not a duration; use e.g. "500ms", "30s", "5m", "1h" or "1d""#
        );
        let e = err(&rule(r#""limit":{"requests":"ten","window":"1s"}"#));
        assert!(
            e.starts_with("rules[0].limit.requests: invalid type"),
            "{e}"
        );
        assert_eq!(
            err(&rule(r#""limit":{"requests":0,"window":"1s"}"#)),
            "rules[0].limit.requests: must be between 1 and 1000000000000000"
        );
        assert_eq!(
            err(&rule(r#""limit":{"requests":1,"window":"0s"}"#)),
            "rules[0].limit.window: must be longer than 0"
        );
        assert_eq!(
            err(&rule(r#""limit":{"requests":1,"window":"367d"}"#)),
            "rules[0].limit.window: must be at most 366d"
        );
    }

    #[test]
    fn a_lease_has_defaults_per_algorithm_and_clear_errors() {
        let p = parse(&rule(&format!(r#"{LIMIT},"lease":{{}}"#))).unwrap();
        assert_eq!(
            p.rules[0].lease,
            Some(LeaseRule {
                max_units: DEFAULT_MAX_UNITS,
                lifetime_ms: None
            })
        );
        let p = parse(&rule(
            r#""limit":{"requests":10,"window":"1s","algorithm":"gcra"},"lease":{"max_units":5}"#,
        ))
        .unwrap();
        assert_eq!(
            p.rules[0].lease,
            Some(LeaseRule {
                max_units: 5,
                lifetime_ms: Some(DEFAULT_GCRA_LIFETIME_MS)
            })
        );
        let p = parse(&rule(&format!(
            r#"{LIMIT},"lease":{{"max_units":7,"lifetime":"250ms"}}"#
        )))
        .unwrap();
        assert_eq!(p.rules[0].lease.and_then(|l| l.lifetime_ms), Some(250));
        assert_eq!(parse(&rule(LIMIT)).unwrap().rules[0].lease, None);

        assert_eq!(
            err(&rule(&format!(r#"{LIMIT},"lease":{{"max_units":0}}"#))),
            "rules[0].lease.max_units: must be between 1 and 1000000000000000"
        );
        assert!(
            err(&rule(&format!(r#"{LIMIT},"lease":{{"lifetime":"soon"}}"#)))
                .starts_with("rules[0].lease.lifetime: ")
        );
        let e = err(&rule(&format!(r#"{LIMIT},"lease":{{"units":3}}"#)));
        assert!(
            e.starts_with("rules[0].lease") && e.contains("unknown field `units`"),
            "{e}"
        );
        assert!(
            err(&rule(&format!(r#"{LIMIT},"shadow":true,"lease":{{}}"#)))
                .starts_with("rules[0].lease: a shadow rule never denies")
        );
    }

    #[test]
    fn unknown_fields_are_errors() {
        let e = err(r#"{"rules":[],"colour":"red"}"#);
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = err(&rule(r#""limit":{"requests":1,"window":"1s","refill":3}"#));
        assert!(
            e.starts_with("rules[0].limit") && e.contains("unknown field `refill`"),
            "{e}"
        );
        let e = err(&rule(&format!(r#""match":{{"path_prefix":"/x"}},{LIMIT}"#)));
        assert!(
            e.starts_with("rules[0].match") && e.contains("unknown field `path_prefix`"),
            "{e}"
        );
        let e = err(&rule(&format!(
            r#""match":{{"path":{{"suffix":"/x"}}}},{LIMIT}"#
        )));
        assert!(
            e.starts_with("rules[0].match.path") && e.contains("unknown variant `suffix`"),
            "{e}"
        );
    }

    #[test]
    fn bad_documents_are_errors() {
        assert!(err("").contains("EOF"));
        assert!(err("{").contains("EOF"));
        assert!(err(r#"{}"#).contains("missing field `rules`"));
        assert!(err("42").contains("invalid type"));
    }

    #[test]
    fn rule_names_are_checked_and_unique() {
        let e = err(&format!(r#"{{"rules":[{{"name":"",{LIMIT}}}]}}"#));
        assert!(e.starts_with("rules[0].name:"), "{e}");
        let e = err(&format!(r#"{{"rules":[{{"name":"a:b",{LIMIT}}}]}}"#));
        assert!(e.starts_with("rules[0].name:"), "{e}");
        let e = err(&format!(
            r#"{{"rules":[{{"name":"a",{LIMIT}}},{{"name":"a",{LIMIT}}}]}}"#
        ));
        assert!(
            e.starts_with("rules[1].name:") && e.contains("unique"),
            "{e}"
        );
    }

    #[test]
    fn filter_fields_are_checked() {
        assert!(err(r#"{"timeout":"0ms","rules":[]}"#).starts_with("timeout: must be between"));
        assert!(err(r#"{"timeout":"2m","rules":[]}"#).starts_with("timeout: must be between"));
        assert!(err(r#"{"timeout":"soon","rules":[]}"#)
            .starts_with("timeout: \"soon\" is not a duration"));
        assert!(err(r#"{"failure_mode":"maybe","rules":[]}"#)
            .starts_with("failure_mode: unknown variant"));
        assert!(err(r#"{"deny_status":99,"rules":[]}"#)
            .starts_with("deny_status: 99 is not an HTTP status"));
        assert!(err(r#"{"limitd_cluster":"","rules":[]}"#).starts_with("limitd_cluster:"));
        assert!(err(r#"{"response_headers":"draft","rules":[]}"#)
            .starts_with("response_headers: unknown variant"));
        assert!(err(r#"{"batch":{"max_checks":0},"rules":[]}"#)
            .starts_with("batch.max_checks: must be between 1 and 256"));
        assert!(
            err(r#"{"batch":{"max_in_flight":17},"rules":[]}"#).starts_with("batch.max_in_flight:")
        );
        assert!(err(r#"{"batch":{"size":1},"rules":[]}"#).contains("unknown field `size`"));
    }

    #[test]
    fn match_fields_are_checked() {
        let m = |m: &str| err(&rule(&format!(r#""match":{m},{LIMIT}"#)));
        assert!(m(r#"{"path":{"prefix":"x"}}"#)
            .starts_with("rules[0].match.path: \"x\" must start with"));
        assert!(m(r#"{"path":{"regex":"(unclosed"}}"#)
            .starts_with("rules[0].match.path.regex: \"(unclosed\" is not a regex"));
        assert!(m(r#"{"methods":["GET","BAD METHOD"]}"#).starts_with("rules[0].match.methods[1]:"));
        assert!(m(r#"{"host":"example.com:80"}"#).starts_with("rules[0].match.host:"));
        assert!(m(r#"{"host":"*example.com"}"#).starts_with("rules[0].match.host:"));
        assert!(m(r#"{"headers":[{"name":"a b"}]}"#).starts_with("rules[0].match.headers[0].name:"));
        assert!(
            m(r#"{"headers":[{"name":"a","present":true,"equals":"x"}]}"#)
                .starts_with("rules[0].match.headers[0]: give")
        );
    }

    #[test]
    fn key_fields_are_checked() {
        let k = |k: &str| err(&rule(&format!(r#""key":{k},{LIMIT}"#)));
        assert!(k("[]").starts_with("rules[0].key: needs at least one part"));
        assert!(k(r#"["ip"]"#).starts_with(r#"rules[0].key[0]: "ip" is not a key part"#));
        assert!(
            k(r#"[{"cookie":"x"}]"#).starts_with("rules[0].key[0]: a key part:"),
            "{}",
            k(r#"[{"cookie":"x"}]"#)
        );
        assert!(k(r#"[{"client_ip":{"ipv4_prefix":33}}]"#)
            .starts_with("rules[0].key[0].client_ip.ipv4_prefix: 33"));
        assert!(k(r#"[{"client_ip":{"ipv6_prefix":129}}]"#)
            .starts_with("rules[0].key[0].client_ip.ipv6_prefix: 129"));
        assert!(k(r#"[{"header":""}]"#).starts_with("rules[0].key[0].header:"));
        let missing = |m: &str| err(&rule(&format!(r#""missing":{m},{LIMIT}"#)));
        assert!(missing(r#""ignore""#).starts_with("rules[0].missing: \"ignore\""));
        assert!(missing("42").starts_with("rules[0].missing: \"skip\" or"));
        assert_eq!(
            parse(&rule(&format!(r#""missing":"skip",{LIMIT}"#)))
                .unwrap()
                .rules[0]
                .missing_default,
            None
        );
    }

    #[test]
    fn limit_fields_are_checked() {
        let l = |l: &str| err(&rule(&format!(r#""limit":{l}"#)));
        assert!(l(r#"{"requests":5,"window":"1s","burst":3}"#)
            .starts_with("rules[0].limit.burst: applies only to"));
        assert!(
            l(r#"{"requests":5,"window":"1s","algorithm":"gcra","burst":0}"#)
                .starts_with("rules[0].limit.burst: must be")
        );
        assert!(l(r#"{"requests":5,"window":"1s","cost":6}"#)
            .starts_with("rules[0].limit.cost: must be between 1 and the rule's requests (5)"));
        assert!(l(r#"{"requests":5,"window":"1s","cost":0}"#).starts_with("rules[0].limit.cost:"));
        assert!(
            l(r#"{"requests":5,"window":"1s","algorithm":"gcra","burst":2,"cost":3}"#)
                .starts_with("rules[0].limit.cost: must be between 1 and the rule's burst (2)")
        );
        assert!(l(r#"{"requests":5,"window":"1s","algorithm":"leaky"}"#)
            .starts_with("rules[0].limit.algorithm: unknown variant `leaky`"));
        // A gcra bucket limitd cannot count exactly: refused when Envoy loads the
        // rule, not by limitd on every request that matches it.
        assert_eq!(
            l(r#"{"requests":999983,"window":"366d","algorithm":"gcra","burst":1000000}"#),
            "rules[0].limit.burst: limitd would refuse it: burst * window_ms / \
             gcd(window_ms, limit) must be at most 2^52 for exact gcra arithmetic, got \
             1000000 * 31622400000"
        );
        let parts = [r#""method""#; 9].join(",");
        assert!(err(&rule(&format!(r#""key":[{parts}],{LIMIT}"#)))
            .starts_with("rules[0].key: 9 parts; at most 8"));
        let sliding = parse(&rule(
            r#""limit":{"requests":5,"window":"1s","algorithm":"sliding_window"}"#,
        ))
        .unwrap();
        assert_eq!(sliding.rules[0].algorithm, Algorithm::SlidingWindow);
    }
}
