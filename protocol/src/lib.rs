//! The check protocol spoken between the Envoy filter and limitd.
//!
//! One endpoint, one format: `POST /v2/checks` carries a [`BatchRequest`], a batch of
//! independent checks (one per HTTP request the filter is deciding; a single check is a batch of
//! one). limitd answers `200` with a [`BatchResponse`]: one [`CheckResult`] per check, in order.
//! Each check is all or nothing on its own: allowed only if every non-shadow hit fits, and a
//! denied check consumes none of its hits.
//!
//! The rules the protocol keeps (see `docs/protocol.md` for the whole contract):
//!
//! - **One result per check**: `allowed` or `denied` (with one [`HitResult`] per hit), or
//!   `error` with a machine-readable [`ErrorKind`]. Only the request whose own check failed gets
//!   its rule's failure mode.
//! - **Counted exactly when admitted**: a result says `allowed` if and only if the check consumed
//!   its quota. A check reported as `error` consumed nothing (limitd gives back what a script it
//!   could not hear from in time may have taken).
//! - **Whole-body statuses** only for a body that cannot be parsed (`400`), one that is too large
//!   (`413`), or limitd not ready (`503`).
//! - **Bounds** on every value are in [`bounds`], shared by limitd and the filter's config checks.
//! - **Upgrade-safe**: every reader ignores fields it does not know, new fields are optional
//!   with defaults, an unknown result or error kind reads as [`CheckResult::Unknown`] /
//!   [`ErrorKind::Unknown`] (an error), and the path's version changes only for a breaking
//!   change. [`v1`] keeps the previous version's types, which limitd still serves.
//!
//! Every duration is in milliseconds. Rules live in the filter; each hit carries its own limit,
//! window and algorithm, so limitd is stateless apart from its counters.

use serde::{Deserialize, Serialize};

pub mod bounds;
pub mod v1;

pub use bounds::{MAX_CHECKS, MAX_HITS};

/// The path of the check endpoint.
pub const CHECKS_PATH: &str = "/v2/checks";

/// The body of `POST /v2/checks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRequest {
    /// How long the caller waits for the answer, in milliseconds (at most
    /// [`bounds::MAX_TIMEOUT_MS`]). limitd answers before then, reporting `error: timeout` for
    /// a check it could not finish, so the caller never has to guess what was counted. Absent:
    /// limitd's own Redis timeout applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The checks, each decided on its own. At least one, at most [`MAX_CHECKS`].
    pub checks: Vec<CheckRequest>,
}

/// One request's hits, checked together, all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// At least one, at most [`MAX_HITS`].
    pub hits: Vec<Hit>,
}

/// One counter to check and, if the whole check is allowed, increment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Ask for a lease: when the check is allowed, limitd may charge up to this many units
    /// beyond `cost` (a share of what is left, see [`HitResult::leased`]) for the caller to
    /// admit later requests from, without asking. Default 0: no lease. Never on a shadow hit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease: u64,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &u64) -> bool {
    *value == 0
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

/// limitd's answer to a [`BatchRequest`]: one result per check, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub results: Vec<CheckResult>,
}

/// The result of one check, tagged by `"result"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CheckResult {
    /// Every non-shadow hit fitted, and the check consumed them. One result per hit, in order.
    Allowed { hits: Vec<HitResult> },
    /// A non-shadow hit did not fit; the check consumed nothing. One result per hit, in order.
    Denied { hits: Vec<HitResult> },
    /// The check was not decided and consumed nothing.
    Error {
        error: ErrorKind,
        /// A one-line explanation for logs (for `invalid`, which field and why).
        #[serde(default)]
        detail: String,
    },
    /// A result kind this reader does not know (from a newer limitd): treated as an error.
    #[serde(other)]
    Unknown,
}

impl CheckResult {
    /// The decision and the hits' results, for a decided check.
    pub fn decided(&self) -> Option<(bool, &[HitResult])> {
        match self {
            CheckResult::Allowed { hits } => Some((true, hits)),
            CheckResult::Denied { hits } => Some((false, hits)),
            CheckResult::Error { .. } | CheckResult::Unknown => None,
        }
    }
}

impl From<CheckResponse> for CheckResult {
    fn from(response: CheckResponse) -> Self {
        if response.allowed {
            CheckResult::Allowed {
                hits: response.hits,
            }
        } else {
            CheckResult::Denied {
                hits: response.hits,
            }
        }
    }
}

/// Why a check was not decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The check breaks a bound (see [`bounds`]); sending it again will not help.
    Invalid,
    /// Redis could not be reached, or failed the check.
    Unavailable,
    /// The check did not finish within the batch's `timeout_ms`.
    Timeout,
    /// A fault in limitd (a reply it did not expect).
    Internal,
    /// A kind this reader does not know.
    #[serde(other)]
    Unknown,
}

/// A decided check: whether it was allowed, and one result per hit. This is what limitd's
/// counter store computes; on the wire it becomes [`CheckResult::Allowed`] or
/// [`CheckResult::Denied`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResponse {
    /// True when every hit was allowed (and so consumed).
    pub allowed: bool,
    /// One result per hit, in the order of the request.
    pub hits: Vec<HitResult>,
}

/// The state of one counter after the check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Units charged beyond the hit's cost as a lease (at most the hit's `lease`; 0 when none
    /// was asked, none is left, or the check was denied). They are counted already: the caller
    /// may admit that many requests of cost 1 itself.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub leased: u64,
    /// How long, from the moment the check ran, the leased units may be spent: until the current
    /// window ends (window algorithms), or `window_ms` for `gcra`, which the caller shortens to
    /// its own lease lifetime. The caller counts it from when it sent the check, so latency and
    /// clock skew can only shorten it. 0 when nothing was leased.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_ms: u64,
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
            lease: 0,
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
    fn readers_ignore_fields_they_do_not_know() {
        let batch: BatchRequest = serde_json::from_str(
            r#"{"checks":[{"hits":[{"key":"k","limit":1,"window_ms":1,"colour":"red"}],"lease":{}}],
                "trace":"abc","timeout_ms":250}"#,
        )
        .unwrap();
        assert_eq!(batch.timeout_ms, Some(250));
        assert_eq!(batch.checks[0].hits[0].key, "k");

        let answer: BatchResponse = serde_json::from_str(
            r#"{"results":[
                {"result":"allowed","hits":[{"allowed":true,"limit":1,"remaining":0,"reset_ms":5,
                  "retry_after_ms":0,"grant":3}],"lease_ms":9},
                {"result":"error","error":"timeout","detail":"x","since":1}
               ],"server":"limitd 9"}"#,
        )
        .unwrap();
        assert!(matches!(answer.results[0], CheckResult::Allowed { .. }));
        assert_eq!(
            answer.results[1],
            CheckResult::Error {
                error: ErrorKind::Timeout,
                detail: "x".into()
            }
        );
    }

    #[test]
    fn unknown_result_and_error_kinds_read_as_unknown() {
        let answer: BatchResponse = serde_json::from_str(
            r#"{"results":[{"result":"leased","hits":[]},{"result":"error","error":"quota_gone"},
                           {"result":"error","error":"invalid"}]}"#,
        )
        .unwrap();
        assert_eq!(answer.results[0], CheckResult::Unknown);
        assert_eq!(
            answer.results[1],
            CheckResult::Error {
                error: ErrorKind::Unknown,
                detail: String::new()
            }
        );
        assert!(answer.results.iter().all(|r| r.decided().is_none()));
    }

    #[test]
    fn results_are_tagged_and_round_trip() {
        let denied = CheckResult::from(CheckResponse {
            allowed: false,
            hits: vec![HitResult {
                allowed: false,
                limit: 10,
                remaining: 0,
                reset_ms: 1500,
                retry_after_ms: 1500,
                leased: 0,
                lease_ms: 0,
            }],
        });
        let text = serde_json::to_string(&denied).unwrap();
        assert_eq!(
            text,
            r#"{"result":"denied","hits":[{"allowed":false,"limit":10,"remaining":0,"reset_ms":1500,"retry_after_ms":1500}]}"#
        );
        assert_eq!(serde_json::from_str::<CheckResult>(&text).unwrap(), denied);
        let error = CheckResult::Error {
            error: ErrorKind::Invalid,
            detail: "hits[0].limit: must be between 1 and 1000000000000000, got 0".into(),
        };
        let text = serde_json::to_string(&error).unwrap();
        assert!(text.starts_with(r#"{"result":"error","error":"invalid","detail":"#));
        assert_eq!(serde_json::from_str::<CheckResult>(&text).unwrap(), error);
        assert_eq!(denied.decided().map(|(allowed, _)| allowed), Some(false));
    }
}
