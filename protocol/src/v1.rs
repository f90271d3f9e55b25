//! The previous version of the protocol, kept so that a fleet can be upgraded one side at a
//! time: limitd still answers `POST /v1/check` and `POST /v1/checks` for filters that predate
//! `/v2/checks`. Deprecated; removed in the release after next.
//!
//! Requests of v1 read as today's [`crate::CheckRequest`] and [`crate::BatchRequest`] (the same
//! fields). Answers are frozen here: v1 filters refuse any field they do not know, so these types
//! must never gain one. A v1 batch has no per-check error: if any check of it fails, limitd
//! answers the whole batch with a status (`400`, `503`), and gives back what its other checks
//! consumed, so nothing is counted for a request the filter then refuses.

use serde::{Deserialize, Serialize};

/// The path of the v1 single-check endpoint.
pub const CHECK_PATH: &str = "/v1/check";

/// The path of the v1 batch endpoint.
pub const BATCH_PATH: &str = "/v1/checks";

/// The answer to `POST /v1/checks`: one [`CheckResponse`] per check, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchResponse {
    pub results: Vec<CheckResponse>,
}

/// The answer to `POST /v1/check`, and one check's result in a v1 batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckResponse {
    pub allowed: bool,
    pub hits: Vec<HitResult>,
}

/// One hit's result, exactly the five fields v1 filters read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HitResult {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_ms: u64,
    pub retry_after_ms: u64,
}

impl From<&crate::CheckResponse> for CheckResponse {
    fn from(response: &crate::CheckResponse) -> Self {
        CheckResponse {
            allowed: response.allowed,
            hits: response
                .hits
                .iter()
                .map(|h| HitResult {
                    allowed: h.allowed,
                    limit: h.limit,
                    remaining: h.remaining,
                    reset_ms: h.reset_ms,
                    retry_after_ms: h.retry_after_ms,
                })
                .collect(),
        }
    }
}
