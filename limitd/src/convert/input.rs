//! The converter's inputs as written: an envoyproxy/ratelimit configuration file and the Envoy
//! route `rate_limits` that feed it, read by serde from YAML.
//!
//! Fields the converter does not know are kept (`other`) rather than rejected by serde, so that
//! each one becomes a refusal naming its entry instead of one error for the whole file.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_yaml_ng::Value;

/// One ratelimit configuration file: a domain and its descriptor tree.
#[derive(Debug, Deserialize)]
pub struct RatelimitConfig {
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<Descriptor>,
}

/// One node of the descriptor tree.
#[derive(Debug, Deserialize)]
pub struct Descriptor {
    pub key: String,
    /// Absent: the node counts each value of its key separately.
    #[serde(default, deserialize_with = "scalar_text")]
    pub value: Option<String>,
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub descriptors: Vec<Descriptor>,
    #[serde(default)]
    pub shadow_mode: bool,
    /// Only changes ratelimit's own statistics: accepted, ignored.
    #[serde(default, rename = "detailed_metric")]
    pub _detailed_metric: bool,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A node's `rate_limit`.
#[derive(Debug, Deserialize)]
pub struct RateLimit {
    pub requests_per_unit: Option<u64>,
    pub unit: Option<String>,
    #[serde(default)]
    pub unlimited: bool,
    /// Names the limit in ratelimit's statistics (and for `replaces`); becomes the rule's name.
    pub name: Option<String>,
    pub replaces: Option<Value>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// The actions file: the `rate_limits` of one route, or a list of routes each with its match.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ActionsFile {
    /// `{rate_limits: [...]}` or `{routes: [...]}` (a virtual host's fields).
    Host {
        #[serde(default)]
        rate_limits: Vec<RateLimitEntry>,
        #[serde(default)]
        routes: Vec<Route>,
    },
    /// A bare list of routes or of `rate_limits` entries (see [`Item`]).
    List(Vec<Item>),
}

/// An item of a bare list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Item {
    Route(Route),
    Entry(RateLimitEntry),
}

/// An Envoy route: its match and the `rate_limits` of its route action.
#[derive(Debug, Deserialize)]
pub struct Route {
    #[serde(rename = "match")]
    pub matcher: BTreeMap<String, Value>,
    #[serde(default)]
    pub route: Option<RouteAction>,
    /// Accepted here too, for short files.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitEntry>,
}

/// The part of a route action the converter reads.
#[derive(Debug, Default, Deserialize)]
pub struct RouteAction {
    #[serde(default)]
    pub rate_limits: Vec<RateLimitEntry>,
}

/// One entry of `rate_limits`: its actions build one descriptor per request.
#[derive(Debug, Deserialize)]
pub struct RateLimitEntry {
    pub actions: Vec<BTreeMap<String, Value>>,
    #[serde(default)]
    pub stage: u32,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `request_headers`: the header's value under `descriptor_key`.
#[derive(Debug, Deserialize)]
pub struct RequestHeaders {
    pub header_name: String,
    pub descriptor_key: String,
    #[serde(default)]
    pub skip_if_absent: bool,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `generic_key`: a fixed value, under `descriptor_key` (default `generic_key`).
#[derive(Debug, Deserialize)]
pub struct GenericKey {
    pub descriptor_value: String,
    pub descriptor_key: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `header_value_match`: a fixed value (under `descriptor_key`, default `header_match`) when
/// every header matcher matches (or, with `expect_match: false`, when not all do).
#[derive(Debug, Deserialize)]
pub struct HeaderValueMatch {
    pub descriptor_value: String,
    pub descriptor_key: Option<String>,
    #[serde(default = "yes")]
    pub expect_match: bool,
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// An Envoy `HeaderMatcher`, the forms the converter can express.
#[derive(Debug, Deserialize)]
pub struct HeaderMatcher {
    pub name: String,
    pub exact_match: Option<String>,
    pub string_match: Option<BTreeMap<String, Value>>,
    pub present_match: Option<bool>,
    #[serde(default)]
    pub invert_match: bool,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

fn yes() -> bool {
    true
}

/// A YAML scalar as text: ratelimit reads `value: 123` as the string "123".
fn scalar_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(Value::Number(number)) => Ok(Some(number.to_string())),
        Some(Value::Bool(flag)) => Ok(Some(flag.to_string())),
        Some(_) => Err(D::Error::custom("a descriptor value must be a scalar")),
    }
}

/// The names of unknown fields, for a refusal.
pub fn unknown(other: &BTreeMap<String, Value>) -> Option<String> {
    (!other.is_empty()).then(|| {
        let names: Vec<&str> = other.keys().map(String::as_str).collect();
        format!("unsupported field(s) {}", names.join(", "))
    })
}
