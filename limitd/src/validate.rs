//! Checks a decoded [`CheckRequest`] against the bounds the counting script relies on.
//!
//! Everything that reaches Redis passes through here first, so the script never sees a zero
//! window (a division by zero), a number Lua cannot hold exactly, or an empty batch.

use protocol::{CheckRequest, MAX_HITS};

/// The longest window: 366 days, so a yearly limit fits even in a leap year.
pub const MAX_WINDOW_MS: u64 = 366 * 24 * 60 * 60 * 1000;

/// The largest `limit` and `cost`. Lua numbers are doubles, exact up to 2^53 (about 9e15); a
/// counter never exceeds `limit`, and the script adds at most one `cost` to it, so with both at
/// most 1e15 every sum it computes stays exact.
pub const MAX_UNITS: u64 = 1_000_000_000_000_000;

/// Why a check request is refused, as one line for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

/// Accepts `request` or says, in one line, what is wrong with it.
pub fn validate(request: &CheckRequest) -> Result<(), ValidationError> {
    let hits = &request.hits;
    if hits.is_empty() {
        return Err(ValidationError("hits must not be empty".into()));
    }
    if hits.len() > MAX_HITS {
        return Err(ValidationError(format!(
            "at most {MAX_HITS} hits per check, got {}",
            hits.len()
        )));
    }
    for (i, hit) in hits.iter().enumerate() {
        if hit.key.is_empty() {
            return Err(ValidationError(format!("hits[{i}].key must not be empty")));
        }
        if !(1..=MAX_UNITS).contains(&hit.limit) {
            return Err(ValidationError(format!(
                "hits[{i}].limit must be between 1 and {MAX_UNITS}, got {}",
                hit.limit
            )));
        }
        if !(1..=MAX_WINDOW_MS).contains(&hit.window_ms) {
            return Err(ValidationError(format!(
                "hits[{i}].window_ms must be between 1 and {MAX_WINDOW_MS} (366 days), got {}",
                hit.window_ms
            )));
        }
        if hit.cost > MAX_UNITS {
            return Err(ValidationError(format!(
                "hits[{i}].cost must be at most {MAX_UNITS}, got {}",
                hit.cost
            )));
        }
        // One stored counter holds one window; the same key under two window lengths would
        // make them reset each other. Hits repeating a key with the same window are fine (the
        // script adds their costs). At most 64 hits, so the quadratic scan is cheap.
        if let Some(j) = hits[..i]
            .iter()
            .position(|h| h.key == hit.key && h.window_ms != hit.window_ms)
        {
            return Err(ValidationError(format!(
                "hits[{i}] repeats the key of hits[{j}] with a different window_ms"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Algorithm, Hit};

    fn hit(key: &str, limit: u64, window_ms: u64, cost: u64) -> Hit {
        Hit {
            key: key.into(),
            limit,
            window_ms,
            cost,
            algorithm: Algorithm::FixedWindow,
            burst: None,
            shadow: false,
        }
    }

    fn check(hits: Vec<Hit>) -> Result<(), ValidationError> {
        validate(&CheckRequest { hits })
    }

    #[test]
    fn a_normal_check_passes() {
        assert_eq!(
            check(vec![hit("a", 10, 1000, 1), hit("b", 1, MAX_WINDOW_MS, 0)]),
            Ok(())
        );
        assert_eq!(check(vec![hit("a", MAX_UNITS, 1, MAX_UNITS)]), Ok(()));
        // Cost over the limit is allowed: such a hit is simply always denied.
        assert_eq!(check(vec![hit("a", 1, 1000, 5)]), Ok(()));
        // The same key twice with the same window is one counter charged twice.
        assert_eq!(
            check(vec![hit("a", 10, 1000, 1), hit("a", 10, 1000, 2)]),
            Ok(())
        );
        assert_eq!(check(vec![hit("k", 1, 1, 1); MAX_HITS]), Ok(()));
    }

    #[test]
    fn bad_checks_say_what_is_wrong() {
        let cases: Vec<(Vec<Hit>, &str)> = vec![
            (vec![], "hits must not be empty"),
            (vec![hit("k", 1, 1, 1); MAX_HITS + 1], "at most 64 hits"),
            (
                vec![hit("a", 1, 1, 1), hit("", 1, 1, 1)],
                "hits[1].key must not be empty",
            ),
            (
                vec![hit("a", 0, 1000, 1)],
                "hits[0].limit must be between 1",
            ),
            (vec![hit("a", MAX_UNITS + 1, 1000, 1)], "hits[0].limit"),
            (
                vec![hit("a", 1, 0, 1)],
                "hits[0].window_ms must be between 1",
            ),
            (vec![hit("a", 1, MAX_WINDOW_MS + 1, 1)], "hits[0].window_ms"),
            (
                vec![hit("a", 1, 1000, MAX_UNITS + 1)],
                "hits[0].cost must be at most",
            ),
            (
                vec![hit("a", 1, 1000, 1), hit("a", 1, 2000, 1)],
                "hits[1] repeats the key of hits[0]",
            ),
        ];
        for (hits, expected) in cases {
            let err = check(hits).unwrap_err();
            assert!(
                err.0.contains(expected),
                "{err} does not contain {expected}"
            );
            assert!(!err.0.contains('\n'));
        }
    }
}
