//! The check script (`check.lua`: fixed window, sliding window and GCRA in one atomic run, and
//! the give-back of a check by its receipt): how a request becomes its `KEYS`/`ARGV` and how the
//! integer reply becomes a [`CheckResponse`].

use std::time::Duration;

use protocol::bounds::gcra_scale;
use protocol::{Algorithm, CheckRequest, CheckResponse, Hit, HitResult};
use redis::{Script, ScriptInvocation};

use crate::keys::counter_key;

/// The script's source; its opening comment is the `KEYS`/`ARGV` contract.
pub const SOURCE: &str = include_str!("check.lua");

/// How many `ARGV` values each hit takes.
pub const ARGS_PER_HIT: usize = 9;

/// How long a receipt lives in Redis. A give-back must run within it (see
/// [`crate::store::GIVE_BACK_WITHIN`]).
pub const RECEIPT_TTL: Duration = Duration::from_secs(60);

/// What the script does with a check (`ARGV[1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Check and, if allowed, consume; write the receipt.
    Check,
    /// Undo what the check with this receipt consumed, or void the receipt if it never ran.
    GiveBack,
}

/// What a give-back found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveBack {
    /// The check had been counted; now it is not.
    Returned,
    /// The check had not run; its receipt is void, so it never will.
    Voided,
    /// An earlier give-back settled it.
    Settled,
}

/// The script's code for each algorithm (`ARGV[9i-6]`).
pub fn algorithm_code(algorithm: Algorithm) -> u64 {
    match algorithm {
        Algorithm::FixedWindow => 0,
        Algorithm::SlidingWindow => 1,
        Algorithm::Gcra => 2,
    }
}

/// The `ARGV` values of one validated hit, in the order `check.lua` documents: algorithm, shadow,
/// limit, window_ms, cost, then burst, token and rate for `gcra` (zeros otherwise), and the lease
/// asked for.
pub fn hit_arguments(hit: &Hit) -> [u64; ARGS_PER_HIT] {
    let (burst, token, rate) = match hit.algorithm {
        Algorithm::Gcra => {
            let (token, rate) = gcra_scale(hit.limit, hit.window_ms);
            (hit.burst.unwrap_or(hit.limit), token, rate)
        }
        Algorithm::FixedWindow | Algorithm::SlidingWindow => (0, 0, 0),
    };
    [
        algorithm_code(hit.algorithm),
        u64::from(hit.shadow),
        hit.limit,
        hit.window_ms,
        hit.cost,
        burst,
        token,
        rate,
        hit.lease,
    ]
}

/// The check script, with its SHA1 computed once.
#[derive(Debug, Clone)]
pub struct CheckScript {
    script: Script,
}

impl Default for CheckScript {
    fn default() -> Self {
        Self {
            script: Script::new(SOURCE),
        }
    }
}

impl CheckScript {
    /// An invocation of the script that loads it (`SCRIPT LOAD`), for a fresh connection.
    pub fn load(&self) -> ScriptInvocation<'_> {
        self.script.prepare_invoke()
    }

    /// The `EVALSHA` of the script for a validated `request`: the receipt and every counter key
    /// in `KEYS`, then the mode, the receipt's lifetime and the [`hit_arguments`] of each hit in
    /// `ARGV`.
    pub fn invocation(
        &self,
        request: &CheckRequest,
        receipt: &str,
        mode: Mode,
    ) -> ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
        invocation.key(receipt);
        for hit in &request.hits {
            invocation.key(counter_key(hit));
        }
        invocation.arg(match mode {
            Mode::Check => 0,
            Mode::GiveBack => 1,
        });
        invocation.arg(u64::try_from(RECEIPT_TTL.as_millis()).unwrap_or(u64::MAX));
        for hit in &request.hits {
            for value in hit_arguments(hit) {
                invocation.arg(value);
            }
        }
        invocation
    }
}

/// Why a check's reply is not an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// The receipt was void: limitd had given this check up, and it counted nothing.
    Voided,
    /// Not the shape the script returns (a bug, or a foreign script).
    Malformed(String),
}

/// Turns the script's reply to a check of `request` into the protocol's answer, or says why it
/// cannot.
pub fn decode_reply(request: &CheckRequest, reply: &[i64]) -> Result<CheckResponse, ReplyError> {
    if reply == [-1] {
        return Err(ReplyError::Voided);
    }
    decode_decision(request, reply).map_err(ReplyError::Malformed)
}

/// Reads the script's reply to a give-back.
pub fn decode_give_back(reply: &[i64]) -> Result<GiveBack, String> {
    match reply {
        [1] => Ok(GiveBack::Returned),
        [0] => Ok(GiveBack::Voided),
        [2] => Ok(GiveBack::Settled),
        other => Err(format!("give-back reply {other:?}")),
    }
}

/// How many integers the script returns per hit.
const REPLY_PER_HIT: usize = 6;

fn decode_decision(request: &CheckRequest, reply: &[i64]) -> Result<CheckResponse, String> {
    let expected = 1 + REPLY_PER_HIT * request.hits.len();
    if reply.len() != expected {
        return Err(format!(
            "{} integers for {} hits, expected {expected}",
            reply.len(),
            request.hits.len()
        ));
    }
    let flag = |v: i64| match v {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(format!("flag {other} is neither 0 nor 1")),
    };
    let count = |v: i64| u64::try_from(v).map_err(|_| format!("negative value {v}"));
    let hits = request
        .hits
        .iter()
        .zip(reply[1..].chunks_exact(REPLY_PER_HIT))
        .map(|(hit, values)| {
            let leased = count(values[4])?;
            if leased > hit.lease {
                return Err(format!("leased {leased} of a lease of {}", hit.lease));
            }
            Ok(HitResult {
                allowed: flag(values[0])?,
                limit: hit.limit,
                remaining: count(values[1])?,
                reset_ms: count(values[2])?,
                retry_after_ms: count(values[3])?,
                leased,
                lease_ms: if leased > 0 { count(values[5])? } else { 0 },
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(CheckResponse {
        allowed: flag(reply[0])?,
        hits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(n: usize) -> CheckRequest {
        let hit = Hit {
            key: "k".into(),
            limit: 10,
            window_ms: 1000,
            cost: 1,
            algorithm: Algorithm::FixedWindow,
            burst: None,
            shadow: false,
            lease: 0,
        };
        CheckRequest { hits: vec![hit; n] }
    }

    #[test]
    fn a_reply_decodes_hit_by_hit() {
        let response = decode_reply(
            &request(2),
            &[0, 1, 9, 500, 0, 0, 500, 0, 0, 500, 500, 0, 500],
        )
        .unwrap();
        assert!(!response.allowed);
        assert_eq!(
            response.hits,
            vec![
                HitResult {
                    allowed: true,
                    limit: 10,
                    remaining: 9,
                    reset_ms: 500,
                    retry_after_ms: 0,
                    leased: 0,
                    lease_ms: 0,
                },
                HitResult {
                    allowed: false,
                    limit: 10,
                    remaining: 0,
                    reset_ms: 500,
                    retry_after_ms: 500,
                    leased: 0,
                    lease_ms: 0,
                },
            ]
        );
    }

    #[test]
    fn a_lease_decodes_within_what_was_asked() {
        let mut asked = request(1);
        asked.hits[0].lease = 5;
        let response = decode_reply(&asked, &[1, 1, 4, 700, 0, 5, 700]).unwrap();
        assert_eq!(
            (response.hits[0].leased, response.hits[0].lease_ms),
            (5, 700)
        );
        assert!(matches!(
            decode_reply(&asked, &[1, 1, 4, 700, 0, 6, 700]),
            Err(ReplyError::Malformed(_))
        ));
        // Nothing asked, nothing may be granted.
        assert!(decode_reply(&request(1), &[1, 1, 4, 700, 0, 1, 700]).is_err());
    }

    #[test]
    fn hits_become_nine_arguments() {
        let mut hit = request(1).hits.remove(0);
        assert_eq!(hit_arguments(&hit), [0, 0, 10, 1000, 1, 0, 0, 0, 0]);
        hit.algorithm = Algorithm::SlidingWindow;
        hit.shadow = true;
        assert_eq!(hit_arguments(&hit), [1, 1, 10, 1000, 1, 0, 0, 0, 0]);
        hit.algorithm = Algorithm::Gcra;
        hit.shadow = false;
        hit.lease = 7;
        assert_eq!(hit_arguments(&hit), [2, 0, 10, 1000, 1, 10, 100, 1, 7]);
        hit.burst = Some(3);
        hit.limit = 3;
        assert_eq!(hit_arguments(&hit), [2, 0, 3, 1000, 1, 3, 1000, 3, 7]);
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(decode_reply(&request(1), &[1, 1, 9, 500, 0, 0]).is_err());
        assert!(decode_reply(&request(1), &[2, 1, 9, 500, 0, 0, 0]).is_err());
        assert!(decode_reply(&request(1), &[1, 1, -1, 500, 0, 0, 0]).is_err());
        assert_eq!(decode_reply(&request(1), &[-1]), Err(ReplyError::Voided));
    }

    #[test]
    fn give_back_replies_decode() {
        assert_eq!(decode_give_back(&[1]), Ok(GiveBack::Returned));
        assert_eq!(decode_give_back(&[0]), Ok(GiveBack::Voided));
        assert_eq!(decode_give_back(&[2]), Ok(GiveBack::Settled));
        assert!(decode_give_back(&[1, 1]).is_err());
    }
}
