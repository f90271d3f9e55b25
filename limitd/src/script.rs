//! The fixed-window check script (`check.lua`): how a request becomes its `KEYS`/`ARGV` and how
//! its integer reply becomes a [`CheckResponse`].

use protocol::{CheckRequest, CheckResponse, HitResult};
use redis::{Script, ScriptInvocation};

use crate::keys::counter_key;

/// The check script, with its SHA1 computed once.
#[derive(Debug, Clone)]
pub struct CheckScript {
    script: Script,
}

impl Default for CheckScript {
    fn default() -> Self {
        Self {
            script: Script::new(include_str!("check.lua")),
        }
    }
}

impl CheckScript {
    /// An invocation of the script that loads it (`SCRIPT LOAD`), for a fresh connection.
    pub fn load(&self) -> ScriptInvocation<'_> {
        self.script.prepare_invoke()
    }

    /// The `EVALSHA` of the script for a validated `request`: every counter key in `KEYS`, then
    /// `limit`, `window_ms`, `cost` of each hit in `ARGV`.
    pub fn invocation(&self, request: &CheckRequest) -> ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
        for hit in &request.hits {
            invocation.key(counter_key(&hit.key));
        }
        for hit in &request.hits {
            invocation.arg(hit.limit).arg(hit.window_ms).arg(hit.cost);
        }
        invocation
    }
}

/// Turns the script's reply for `request` into the protocol's answer, or says why it cannot.
pub fn decode_reply(request: &CheckRequest, reply: &[i64]) -> Result<CheckResponse, String> {
    let expected = 1 + 4 * request.hits.len();
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
        .zip(reply[1..].chunks_exact(4))
        .map(|(hit, values)| {
            Ok(HitResult {
                allowed: flag(values[0])?,
                limit: hit.limit,
                remaining: count(values[1])?,
                reset_ms: count(values[2])?,
                retry_after_ms: count(values[3])?,
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
    use protocol::{Algorithm, Hit};

    fn request(n: usize) -> CheckRequest {
        let hit = Hit {
            key: "k".into(),
            limit: 10,
            window_ms: 1000,
            cost: 1,
            algorithm: Algorithm::FixedWindow,
            burst: None,
            shadow: false,
        };
        CheckRequest { hits: vec![hit; n] }
    }

    #[test]
    fn a_reply_decodes_hit_by_hit() {
        let response = decode_reply(&request(2), &[0, 1, 9, 500, 0, 0, 0, 500, 500]).unwrap();
        assert!(!response.allowed);
        assert_eq!(
            response.hits,
            vec![
                HitResult {
                    allowed: true,
                    limit: 10,
                    remaining: 9,
                    reset_ms: 500,
                    retry_after_ms: 0
                },
                HitResult {
                    allowed: false,
                    limit: 10,
                    remaining: 0,
                    reset_ms: 500,
                    retry_after_ms: 500
                },
            ]
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(decode_reply(&request(1), &[1, 1, 9, 500]).is_err());
        assert!(decode_reply(&request(1), &[2, 1, 9, 500, 0]).is_err());
        assert!(decode_reply(&request(1), &[1, 1, -1, 500, 0]).is_err());
    }
}
