//! The plugin configuration: raw JSON types, and their compilation into a validated [`Policy`].
//!
//! The JSON arrives once, in the root context's `on_configure`. It is parsed
//! with unknown fields rejected, then compiled: every check that can fail
//! happens here, so a request does no parsing and meets no surprise. Every
//! error names the JSON path of the offending field.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;

use crate::duration::parse_duration_ms;

/// What to do with a request when limitd cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Let the request through (fail open). The default.
    Allow,
    /// Answer it with the configured failure status (fail closed).
    Deny,
}

/// The plugin configuration as written in `envoy.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// The Envoy cluster of limitd instances.
    #[serde(default = "default_cluster")]
    limitd_cluster: String,
    /// The `:authority` of the callout; defaults to the cluster name.
    #[serde(default)]
    limitd_authority: Option<String>,
    /// How long a check may take before the failure mode applies.
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_failure_mode")]
    failure_mode: FailureMode,
    /// The status of a denied request.
    #[serde(default = "default_deny_status")]
    deny_status: u32,
    /// The status answered when limitd fails and the failure mode is `deny`.
    #[serde(default = "default_failure_status")]
    failure_status: u32,
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(rename = "match", default)]
    matcher: RawMatch,
    limit: RawLimit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    /// The request path (before any `?`) must start with this. Absent: every path.
    path_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    requests: u64,
    window: String,
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

/// The longest callout timeout accepted, in milliseconds.
const MAX_TIMEOUT_MS: u64 = 60_000;

/// The validated configuration the filter runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub limitd_cluster: String,
    pub limitd_authority: String,
    pub timeout_ms: u64,
    pub failure_mode: FailureMode,
    pub deny_status: u32,
    pub failure_status: u32,
    pub rules: Vec<Rule>,
}

/// One rate-limit rule: which requests it counts and how many it admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique among the rules; namespaces the rule's counters.
    pub name: String,
    pub path_prefix: Option<String>,
    pub requests: u64,
    pub window_ms: u64,
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

fn error(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

impl Policy {
    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            error(path, e.into_inner().to_string())
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
        let mut names = HashSet::new();
        let rules = raw
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| compile_rule(i, rule, &mut names))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            limitd_authority: raw
                .limitd_authority
                .unwrap_or_else(|| raw.limitd_cluster.clone()),
            limitd_cluster: raw.limitd_cluster,
            timeout_ms,
            failure_mode: raw.failure_mode,
            deny_status: raw.deny_status,
            failure_status: raw.failure_status,
            rules,
        })
    }
}

fn compile_rule(
    index: usize,
    raw: RawRule,
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
    if let Some(prefix) = &raw.matcher.path_prefix {
        if !prefix.starts_with('/') {
            return Err(error(
                at("match.path_prefix"),
                format!("{prefix:?} must start with \"/\""),
            ));
        }
    }
    if raw.limit.requests == 0 {
        return Err(error(at("limit.requests"), "must be at least 1"));
    }
    let window_ms =
        parse_duration_ms(&raw.limit.window).map_err(|e| error(at("limit.window"), e))?;
    if window_ms == 0 {
        return Err(error(at("limit.window"), "must be longer than 0"));
    }
    Ok(Rule {
        name: raw.name,
        path_prefix: raw.matcher.path_prefix,
        requests: raw.limit.requests,
        window_ms,
    })
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

    #[test]
    fn the_demo_rule_compiles_with_defaults() {
        let policy = parse(
            r#"{"rules":[{"name":"limited_endpoint","match":{"path_prefix":"/limited_endpoint"},
                "limit":{"requests":10,"window":"60s"}}]}"#,
        )
        .unwrap();
        assert_eq!(policy.limitd_cluster, "limitd");
        assert_eq!(policy.limitd_authority, "limitd");
        assert_eq!(policy.timeout_ms, 200);
        assert_eq!(policy.failure_mode, FailureMode::Allow);
        assert_eq!((policy.deny_status, policy.failure_status), (429, 503));
        assert_eq!(
            policy.rules,
            vec![Rule {
                name: "limited_endpoint".into(),
                path_prefix: Some("/limited_endpoint".into()),
                requests: 10,
                window_ms: 60_000
            }]
        );
    }

    #[test]
    fn every_field_is_read() {
        let policy = parse(
            r#"{"limitd_cluster":"rl","limitd_authority":"rl.local","timeout":"1s","failure_mode":"deny",
                "deny_status":420,"failure_status":500,
                "rules":[{"name":"all","limit":{"requests":1,"window":"1d"}}]}"#,
        )
        .unwrap();
        assert_eq!(policy.limitd_cluster, "rl");
        assert_eq!(policy.limitd_authority, "rl.local");
        assert_eq!(policy.timeout_ms, 1000);
        assert_eq!(policy.failure_mode, FailureMode::Deny);
        assert_eq!((policy.deny_status, policy.failure_status), (420, 500));
        assert_eq!(policy.rules[0].path_prefix, None);
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
        let e = err(r#"{"rules":[{"name":"a","limit":{"requests":"ten","window":"1s"}}]}"#);
        assert!(
            e.starts_with("rules[0].limit.requests: invalid type"),
            "{e}"
        );
        let e = err(r#"{"rules":[{"name":"a","limit":{"requests":0,"window":"1s"}}]}"#);
        assert_eq!(e, "rules[0].limit.requests: must be at least 1");
        let e = err(r#"{"rules":[{"name":"a","limit":{"requests":1,"window":"0s"}}]}"#);
        assert_eq!(e, "rules[0].limit.window: must be longer than 0");
    }

    #[test]
    fn unknown_fields_are_errors() {
        let e = err(r#"{"rules":[],"colour":"red"}"#);
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = err(r#"{"rules":[{"name":"a","limit":{"requests":1,"window":"1s","burst":3}}]}"#);
        assert!(
            e.starts_with("rules[0].limit") && e.contains("unknown field `burst`"),
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
        let e = err(r#"{"rules":[{"name":"","limit":{"requests":1,"window":"1s"}}]}"#);
        assert!(e.starts_with("rules[0].name:"), "{e}");
        let e = err(r#"{"rules":[{"name":"a:b","limit":{"requests":1,"window":"1s"}}]}"#);
        assert!(e.starts_with("rules[0].name:"), "{e}");
        let e = err(
            r#"{"rules":[{"name":"a","limit":{"requests":1,"window":"1s"}},
                                {"name":"a","limit":{"requests":1,"window":"1s"}}]}"#,
        );
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
        assert!(err(r#"{"rules":[{"name":"a","match":{"path_prefix":"x"},"limit":{"requests":1,"window":"1s"}}]}"#)
            .starts_with("rules[0].match.path_prefix:"));
    }
}
