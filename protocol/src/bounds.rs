//! Every bound on a value of the check protocol, defined once.
//!
//! limitd refuses a check that breaks one of these (that check's result is `error: invalid`),
//! and the filter refuses, when Envoy loads its configuration, a rule that would produce such a
//! check, naming the rule's field. Both call [`validate_hit`], so a rule the filter accepts is a
//! rule limitd accepts.
//!
//! The numeric bounds exist for the counting script: Lua numbers are doubles, exact for integers
//! up to 2^53, so every sum and product the script forms must stay below that.

use std::fmt;

use crate::{Algorithm, CheckRequest, Hit};

/// The most hits one check may carry (one per matching rule).
pub const MAX_HITS: usize = 64;

/// The most checks one batch may carry.
pub const MAX_CHECKS: usize = 256;

/// The longest window: 366 days, so a yearly limit fits even in a leap year.
pub const MAX_WINDOW_MS: u64 = 366 * 24 * 60 * 60 * 1000;

/// The largest `limit`, `cost` and `burst`. A counter never exceeds `limit` and the script adds
/// at most one `cost` to it, so with both at most 1e15 every sum stays exact in a double.
pub const MAX_UNITS: u64 = 1_000_000_000_000_000;

/// The largest GCRA bucket in the script's ticks (`burst * token`, see [`gcra_scale`]): the
/// script adds one cost to a debt at most this large and divides the sum, so with 2^52 every
/// step stays exact in a double. With the ratio in lowest terms only contrived rules reach it
/// (10 million per 30 days with the default burst needs 1.3e10).
pub const MAX_GCRA_TICKS: u64 = 1 << 52;

/// The longest key, in bytes. limitd stores keys over 128 bytes as their hash, so this only
/// bounds what a caller can make it read and hash.
pub const MAX_KEY_BYTES: usize = 2048;

/// The largest request body limitd accepts by default (`LIMITD_MAX_BODY_BYTES`). A filter splits
/// its batches so that none is larger.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The largest answer the filter reads; a larger one is treated as unusable without being
/// copied into the VM. An answer to a full batch of full checks stays far below it.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The largest `timeout_ms` a batch may carry: one minute.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// GCRA's exact time scale for `limit` units per `window_ms`: `(token, rate)` with `token / rate
/// == window_ms / limit` in lowest terms. Time is counted in ticks of `1 / rate` ms, so one unit
/// costs exactly `token` ticks (the emission interval) whatever the ratio: dividing by the gcd
/// keeps the bucket's capacity in ticks, `burst * token`, small enough for Lua's doubles.
pub fn gcra_scale(limit: u64, window_ms: u64) -> (u64, u64) {
    let (mut a, mut b) = (limit, window_ms);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    // Both are at least 1 once validated; a zero would mean an unvalidated hit.
    let gcd = a.max(1);
    (window_ms / gcd, limit / gcd)
}

/// The field of a hit that breaks a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitField {
    Key,
    Limit,
    WindowMs,
    Cost,
    Burst,
    Lease,
}

impl HitField {
    /// The field's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            HitField::Key => "key",
            HitField::Limit => "limit",
            HitField::WindowMs => "window_ms",
            HitField::Cost => "cost",
            HitField::Burst => "burst",
            HitField::Lease => "lease",
        }
    }
}

/// Why one hit is refused: the field, and what is wrong with it (with the allowed range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HitError {
    pub field: HitField,
    pub problem: String,
}

impl fmt::Display for HitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field.name(), self.problem)
    }
}

fn refuse(field: HitField, problem: String) -> Result<(), HitError> {
    Err(HitError { field, problem })
}

/// Accepts a hit whose every value is within the protocol's bounds.
pub fn validate_hit(hit: &Hit) -> Result<(), HitError> {
    if hit.key.is_empty() || hit.key.len() > MAX_KEY_BYTES {
        return refuse(
            HitField::Key,
            format!(
                "must be 1 to {MAX_KEY_BYTES} bytes long, got {}",
                hit.key.len()
            ),
        );
    }
    if !(1..=MAX_UNITS).contains(&hit.limit) {
        return refuse(
            HitField::Limit,
            format!("must be between 1 and {MAX_UNITS}, got {}", hit.limit),
        );
    }
    if !(1..=MAX_WINDOW_MS).contains(&hit.window_ms) {
        return refuse(
            HitField::WindowMs,
            format!(
                "must be between 1 and {MAX_WINDOW_MS} ms (366 days), got {}",
                hit.window_ms
            ),
        );
    }
    if hit.cost > MAX_UNITS {
        return refuse(
            HitField::Cost,
            format!("must be at most {MAX_UNITS}, got {}", hit.cost),
        );
    }
    if hit.lease > MAX_UNITS {
        return refuse(
            HitField::Lease,
            format!("must be at most {MAX_UNITS}, got {}", hit.lease),
        );
    }
    if hit.lease > 0 && hit.shadow {
        return refuse(
            HitField::Lease,
            "is not allowed on a shadow hit (it never denies, so it has nothing to lease)"
                .to_owned(),
        );
    }
    if hit.algorithm != Algorithm::Gcra {
        return match hit.burst {
            Some(_) => refuse(
                HitField::Burst,
                "is only allowed with algorithm gcra".to_owned(),
            ),
            None => Ok(()),
        };
    }
    let burst = hit.burst.unwrap_or(hit.limit);
    if !(1..=MAX_UNITS).contains(&burst) {
        return refuse(
            HitField::Burst,
            format!("must be between 1 and {MAX_UNITS}, got {burst}"),
        );
    }
    let (token, _) = gcra_scale(hit.limit, hit.window_ms);
    if burst
        .checked_mul(token)
        .is_none_or(|ticks| ticks > MAX_GCRA_TICKS)
    {
        return refuse(
            HitField::Burst,
            format!(
                "burst * window_ms / gcd(window_ms, limit) must be at most 2^52 for exact gcra \
                 arithmetic, got {burst} * {token}"
            ),
        );
    }
    Ok(())
}

/// Why a check is refused, as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckError(pub String);

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Accepts a check whose hits are within bounds and consistent with each other.
pub fn validate_check(check: &CheckRequest) -> Result<(), CheckError> {
    let hits = &check.hits;
    if hits.is_empty() {
        return Err(CheckError("hits must not be empty".into()));
    }
    if hits.len() > MAX_HITS {
        return Err(CheckError(format!(
            "at most {MAX_HITS} hits per check, got {}",
            hits.len()
        )));
    }
    for (i, hit) in hits.iter().enumerate() {
        validate_hit(hit).map_err(|e| CheckError(format!("hits[{i}].{e}")))?;
        // One stored state serves one algorithm, window and bucket; the same key under two of
        // them would make them reset or misread each other. Hits repeating a key with the same
        // parameters are fine (the script charges them in turn). For gcra the limit is the
        // refill rate, part of the stored state's time scale, so it must match too. At most 64
        // hits, so the quadratic scan is cheap.
        if let Some((j, field)) = hits[..i]
            .iter()
            .enumerate()
            .filter(|(_, h)| h.key == hit.key)
            .find_map(|(j, h)| differing_parameter(h, hit).map(|field| (j, field)))
        {
            return Err(CheckError(format!(
                "hits[{i}] repeats the key of hits[{j}] with a different {field}"
            )));
        }
    }
    Ok(())
}

/// The first parameter two hits on one key must share but do not, if any.
fn differing_parameter(a: &Hit, b: &Hit) -> Option<&'static str> {
    if a.algorithm != b.algorithm {
        Some("algorithm")
    } else if a.window_ms != b.window_ms {
        Some("window_ms")
    } else if a.algorithm == Algorithm::Gcra
        && a.burst.unwrap_or(a.limit) != b.burst.unwrap_or(b.limit)
    {
        Some("burst")
    } else if a.algorithm == Algorithm::Gcra && a.limit != b.limit {
        Some("limit (gcra)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, Hit};

    fn hit(key: &str, limit: u64, window_ms: u64, cost: u64) -> Hit {
        Hit {
            key: key.into(),
            limit,
            window_ms,
            cost,
            algorithm: Algorithm::FixedWindow,
            burst: None,
            shadow: false,
            lease: 0,
        }
    }

    fn gcra(key: &str, limit: u64, window_ms: u64, burst: Option<u64>) -> Hit {
        Hit {
            algorithm: Algorithm::Gcra,
            burst,
            ..hit(key, limit, window_ms, 1)
        }
    }

    fn sliding(key: &str, limit: u64, window_ms: u64) -> Hit {
        Hit {
            algorithm: Algorithm::SlidingWindow,
            ..hit(key, limit, window_ms, 1)
        }
    }

    fn check(hits: Vec<Hit>) -> Result<(), CheckError> {
        validate_check(&CheckRequest { hits })
    }

    #[test]
    fn gcra_scale_is_the_emission_interval_in_lowest_terms() {
        assert_eq!(gcra_scale(10, 1000), (100, 1));
        assert_eq!(gcra_scale(3, 1000), (1000, 3));
        assert_eq!(gcra_scale(1000, 10), (1, 100));
        assert_eq!(gcra_scale(7, 7), (1, 1));
        // 10 million per 30 days: 2_592_000_000 ms / 10_000_000 = 1296 / 5.
        assert_eq!(gcra_scale(10_000_000, 2_592_000_000), (1296, 5));
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
    fn algorithms_burst_and_shadow_pass_within_bounds() {
        let shadow = Hit {
            shadow: true,
            ..sliding("s", 10, 1000)
        };
        assert_eq!(
            check(vec![
                sliding("a", 10, 1000),
                gcra("b", 10, 1000, None),
                gcra("c", 10, 1000, Some(1)),
                gcra("d", 1000, 10, Some(MAX_UNITS)),
                shadow,
            ]),
            Ok(())
        );
        // Repeated keys with the same parameters; the explicit burst equals the default one.
        assert_eq!(
            check(vec![gcra("g", 5, 100, None), gcra("g", 5, 100, Some(5))]),
            Ok(())
        );
        assert_eq!(
            check(vec![sliding("s", 5, 100), sliding("s", 7, 100)]),
            Ok(())
        );
        // The largest limits and windows, with a ratio that reduces well.
        assert_eq!(
            check(vec![gcra("y", 1_000_000_000, 86_400_000, None)]),
            Ok(())
        );
        assert_eq!(
            check(vec![gcra("m", 10_000_000, 2_592_000_000, None)]),
            Ok(())
        );
    }

    #[test]
    fn bad_checks_say_what_is_wrong() {
        let cases: Vec<(Vec<Hit>, &str)> = vec![
            (vec![], "hits must not be empty"),
            (vec![hit("k", 1, 1, 1); MAX_HITS + 1], "at most 64 hits"),
            (
                vec![hit("a", 1, 1, 1), hit("", 1, 1, 1)],
                "hits[1].key: must be 1 to 2048 bytes long, got 0",
            ),
            (
                vec![hit("a", 0, 1000, 1)],
                "hits[0].limit: must be between 1",
            ),
            (vec![hit("a", MAX_UNITS + 1, 1000, 1)], "hits[0].limit"),
            (
                vec![hit("a", 1, 0, 1)],
                "hits[0].window_ms: must be between 1",
            ),
            (vec![hit("a", 1, MAX_WINDOW_MS + 1, 1)], "hits[0].window_ms"),
            (
                vec![hit("a", 1, 1000, MAX_UNITS + 1)],
                "hits[0].cost: must be at most",
            ),
            (
                vec![hit("a", 1, 1000, 1), hit("a", 1, 2000, 1)],
                "hits[1] repeats the key of hits[0] with a different window_ms",
            ),
            (
                vec![hit("a", 1, 1000, 1), sliding("a", 1, 1000)],
                "hits[1] repeats the key of hits[0] with a different algorithm",
            ),
            (
                vec![
                    gcra("a", 5, 1000, None),
                    gcra("b", 5, 1000, None),
                    gcra("a", 5, 1000, Some(2)),
                ],
                "hits[2] repeats the key of hits[0] with a different burst",
            ),
            (
                vec![gcra("a", 5, 1000, Some(5)), gcra("a", 6, 1000, Some(5))],
                "hits[1] repeats the key of hits[0] with a different limit (gcra)",
            ),
            (
                vec![Hit {
                    burst: Some(3),
                    ..hit("a", 5, 1000, 1)
                }],
                "hits[0].burst: is only allowed with algorithm gcra",
            ),
            (
                vec![
                    sliding("a", 5, 1000),
                    Hit {
                        burst: Some(3),
                        ..sliding("b", 5, 1000)
                    },
                ],
                "hits[1].burst: is only allowed with algorithm gcra",
            ),
            (
                vec![gcra("a", 5, 1000, Some(0))],
                "hits[0].burst: must be between 1",
            ),
            (
                vec![gcra("a", 5, 1000, Some(MAX_UNITS + 1))],
                "hits[0].burst: must be between 1",
            ),
            (
                // A prime limit over a year: the ratio does not reduce, 1e6 * 3.16e10 ticks.
                vec![gcra("a", 999_983, MAX_WINDOW_MS, Some(1_000_000))],
                "hits[0].burst: burst * window_ms / gcd(window_ms, limit) must be at most 2^52",
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
