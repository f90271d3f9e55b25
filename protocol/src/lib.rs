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

/// The most hits one check may carry.
pub const MAX_HITS: usize = 64;

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
}

fn default_cost() -> u64 {
    1
}

/// The counting algorithm of a hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Windows aligned to Redis time (multiples of `window_ms` since the epoch);
    /// a counter per key and window.
    #[default]
    FixedWindow,
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
    /// Units left in the current window after this check.
    pub remaining: u64,
    /// Milliseconds until the current window ends and the counter resets.
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
