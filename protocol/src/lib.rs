//! The check protocol spoken between the Envoy filter and limitd.
//!
//! One `POST /v1/check` carries a [`CheckRequest`]: a batch of hits, one per
//! rule that matched the request. limitd answers a [`CheckResponse`] with the
//! overall decision and one [`HitResult`] per hit, in the same order. The
//! check is all-or-nothing: the request is allowed only if every hit is, and a
//! denied check consumes none of its hits.
//!
//! Every duration is in milliseconds. Rules live in the filter; each hit
//! carries its own limit, window and algorithm, so limitd is stateless apart
//! from its counters. The path is versioned so the protocol can change without
//! breaking a running fleet.
//!
//! limitd answers `400` with a one-line reason for a malformed body, `413` for
//! an oversized one and `503` when Redis cannot be reached.

use serde::{Deserialize, Serialize};

/// The path of the check endpoint.
pub const CHECK_PATH: &str = "/v1/check";

/// The path of the batch endpoint: several independent checks in one request.
pub const BATCH_PATH: &str = "/v1/checks";

/// The most hits one check may carry.
pub const MAX_HITS: usize = 64;

/// The most checks one batch may carry.
pub const MAX_CHECKS: usize = 256;

/// The body of `POST /v1/checks`: independent checks, each decided (all or
/// nothing) on its own, as if each had been sent to `/v1/check`. A proxy
/// sends the checks of the requests that arrived while its previous batch was
/// in flight (group commit), so the cost of a callout is shared while every
/// request is still decided globally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// At least one, at most [`MAX_CHECKS`].
    pub checks: Vec<CheckRequest>,
}

/// limitd's answer to a [`BatchRequest`]: one result per check, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchResponse {
    pub results: Vec<CheckResponse>,
}

/// The body of `POST /v1/check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// The hits to check together, all or nothing. At least one, at most [`MAX_HITS`].
    pub hits: Vec<Hit>,
}

/// One counter to check and, if the whole check is allowed, increment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hit {
    /// The counter's identity, already namespaced by rule (e.g. `limited_endpoint:127.0.0.1`).
    /// limitd bounds its size in Redis (long keys are hashed) and prefixes it.
    pub key: String,
    /// How many units the window admits (at least 1).
    pub limit: u64,
    /// The window's length in milliseconds (at least 1).
    pub window_ms: u64,
    /// How many units this request consumes (default 1; 0 only reads the counter).
    #[serde(default = "default_cost")]
    pub cost: u64,
    /// How the counter is kept (default `fixed_window`).
    #[serde(default)]
    pub algorithm: Algorithm,
    /// For `gcra` only: how many units may be spent at once from a full
    /// bucket (the bucket's capacity). Absent: `limit`. Must be absent for the
    /// window algorithms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// A shadow hit is counted and reported but never denies the check: the
    /// overall decision ignores it, and when the check is allowed it consumes
    /// its cost only if it fitted (default false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn default_cost() -> u64 {
    1
}

/// The counting algorithm of a hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Windows aligned to Redis time (multiples of `window_ms` since the epoch);
    /// a counter per key and window. At most `limit` units per window.
    #[default]
    FixedWindow,
    /// The two-counter approximation of a sliding window: the current fixed
    /// window's count plus the previous window's count weighted by how much of
    /// it the sliding window still covers.
    SlidingWindow,
    /// The generic cell rate algorithm: a token bucket refilled at `limit`
    /// units per `window_ms`, holding at most `burst` units; exact remaining
    /// and retry times.
    Gcra,
}

/// limitd's answer to a [`CheckRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckResponse {
    /// True when every hit was allowed (and so consumed).
    pub allowed: bool,
    /// One result per hit, in the order of the request.
    pub hits: Vec<HitResult>,
}

/// The state of one counter after the check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HitResult {
    /// Whether this hit alone fitted in its limit.
    pub allowed: bool,
    /// The hit's limit, echoed.
    pub limit: u64,
    /// Units that could still be spent right after this check (for `gcra`,
    /// whole tokens in the bucket).
    pub remaining: u64,
    /// Milliseconds until the quota is fully available again: the current
    /// window's end (window algorithms), or until the bucket is full (`gcra`).
    pub reset_ms: u64,
    /// For a denied hit, milliseconds until a request of the same cost could
    /// pass; 0 for an allowed one.
    pub retry_after_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_defaults_cost_and_algorithm() {
        let req: CheckRequest =
            serde_json::from_str(r#"{"hits":[{"key":"r:1.2.3.4","limit":10,"window_ms":60000}]}"#)
                .unwrap();
        assert_eq!(req.hits[0].cost, 1);
        assert_eq!(req.hits[0].algorithm, Algorithm::FixedWindow);
        assert_eq!(req.hits[0].burst, None);
        assert!(!req.hits[0].shadow);
    }

    #[test]
    fn algorithms_are_snake_case_and_optional_fields_are_left_out() {
        let hit = Hit {
            key: "k".into(),
            limit: 5,
            window_ms: 1000,
            cost: 1,
            algorithm: Algorithm::SlidingWindow,
            burst: None,
            shadow: false,
        };
        let text = serde_json::to_string(&hit).unwrap();
        assert_eq!(
            text,
            r#"{"key":"k","limit":5,"window_ms":1000,"cost":1,"algorithm":"sliding_window"}"#
        );
        let gcra: Hit = serde_json::from_str(
            r#"{"key":"k","limit":5,"window_ms":1000,"algorithm":"gcra","burst":2,"shadow":true}"#,
        )
        .unwrap();
        assert_eq!(
            (gcra.algorithm, gcra.burst, gcra.shadow),
            (Algorithm::Gcra, Some(2), true)
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<CheckRequest>(
            r#"{"hits":[{"key":"k","limit":1,"window_ms":1,"colour":"red"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn response_round_trips() {
        let resp = CheckResponse {
            allowed: false,
            hits: vec![HitResult {
                allowed: false,
                limit: 10,
                remaining: 0,
                reset_ms: 1500,
                retry_after_ms: 1500,
            }],
        };
        let text = serde_json::to_string(&resp).unwrap();
        assert_eq!(serde_json::from_str::<CheckResponse>(&text).unwrap(), resp);
    }
}
