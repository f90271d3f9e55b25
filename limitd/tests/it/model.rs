//! A reference model of the three counting algorithms: the oracle the script is compared with.
//!
//! Written to be obviously right rather than fast, and independent of the script's tricks: exact
//! `u128` arithmetic on unreduced quantities (sliding-window estimates scaled by the window, GCRA
//! time in units of `1 / limit` ms), window counts kept per window start, and every
//! `retry_after_ms` found by a binary search over future times for the first one at which the
//! same hit fits (no closed form). Decisions follow the protocol: hits are evaluated in order
//! against the state earlier hits would leave, a hit that does not fit is not charged, shadow hits
//! never deny, and only an allowed check keeps its charges.

use std::collections::HashMap;

use protocol::{Algorithm, CheckResponse, Hit, HitResult};

/// The stored state of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Units consumed per window, by window start (ms).
    Windows(HashMap<u64, u64>),
    /// GCRA's theoretical arrival time, in units of `1 / limit` ms since the epoch.
    Gcra(u128),
}

/// Every key's state; the model's whole world.
#[derive(Debug, Default)]
pub struct Model {
    keys: HashMap<String, KeyState>,
}

fn burst(hit: &Hit) -> u128 {
    u128::from(hit.burst.unwrap_or(hit.limit))
}

fn fresh(hit: &Hit) -> KeyState {
    match hit.algorithm {
        Algorithm::Gcra => KeyState::Gcra(0),
        Algorithm::FixedWindow | Algorithm::SlidingWindow => KeyState::Windows(HashMap::new()),
    }
}

/// `(start, current count, previous count, ms elapsed in the window)` at `now`.
fn counts(state: &KeyState, hit: &Hit, now: u64) -> (u64, u128, u128, u128) {
    let KeyState::Windows(windows) = state else {
        panic!("a window hit on a gcra state")
    };
    let w = hit.window_ms;
    let start = now - now % w;
    let curr = windows.get(&start).copied().unwrap_or(0);
    let prev = start
        .checked_sub(w)
        .and_then(|s| windows.get(&s).copied())
        .unwrap_or(0);
    (
        start,
        u128::from(curr),
        u128::from(prev),
        u128::from(now - start),
    )
}

/// GCRA debt (TAT - now) at `now`, in units of `1 / limit` ms.
fn debt(state: &KeyState, hit: &Hit, now: u64) -> u128 {
    let KeyState::Gcra(tat) = state else {
        panic!("a gcra hit on a window state")
    };
    tat.saturating_sub(u128::from(now) * u128::from(hit.limit))
}

/// Whether `hit` fits in `state` at `now`.
pub fn fits(state: &KeyState, hit: &Hit, now: u64) -> bool {
    let (limit, cost, w) = (
        u128::from(hit.limit),
        u128::from(hit.cost),
        u128::from(hit.window_ms),
    );
    match hit.algorithm {
        Algorithm::FixedWindow => {
            let (_, curr, _, _) = counts(state, hit, now);
            curr + cost <= limit
        }
        Algorithm::SlidingWindow => {
            // prev * (W - e) / W + curr + cost <= limit, multiplied through by W.
            let (_, curr, prev, e) = counts(state, hit, now);
            prev * (w - e) + (curr + cost) * w <= limit * w
        }
        Algorithm::Gcra => {
            // One unit costs W / limit ms = W units of 1 / limit ms; the bucket holds burst of them.
            cost <= burst(hit) && debt(state, hit, now) + cost * w <= burst(hit) * w
        }
    }
}

/// `state` after `hit` is charged at `now`.
fn charge(state: &mut KeyState, hit: &Hit, now: u64) {
    match state {
        KeyState::Windows(windows) => {
            let start = now - now % hit.window_ms;
            *windows.entry(start).or_insert(0) += hit.cost;
        }
        KeyState::Gcra(tat) => {
            let now_units = u128::from(now) * u128::from(hit.limit);
            *tat = (*tat).max(now_units) + u128::from(hit.cost) * u128::from(hit.window_ms);
        }
    }
}

/// `(remaining, reset_ms)` of `hit` on `state` at `now`.
pub fn report(state: &KeyState, hit: &Hit, now: u64) -> (u64, u64) {
    let (limit, w) = (u128::from(hit.limit), u128::from(hit.window_ms));
    let narrow = |v: u128| u64::try_from(v).expect("fits u64");
    match hit.algorithm {
        Algorithm::FixedWindow => {
            let (start, curr, _, _) = counts(state, hit, now);
            (
                narrow(limit.saturating_sub(curr)),
                start + hit.window_ms - now,
            )
        }
        Algorithm::SlidingWindow => {
            // floor(limit - estimate), estimate = (prev * (W - e) + curr * W) / W.
            let (start, curr, prev, e) = counts(state, hit, now);
            let scaled = (limit * w).saturating_sub(prev * (w - e) + curr * w);
            (narrow(scaled / w), start + hit.window_ms - now)
        }
        Algorithm::Gcra => {
            let debt = debt(state, hit, now);
            let remaining = (burst(hit) * w).saturating_sub(debt) / w;
            (narrow(remaining), narrow(debt.div_ceil(limit)))
        }
    }
}

/// The first `t` in `1..=hi` with `fits_at(now + t)`, for a monotone `fits_at` that holds at `hi`.
fn first_fit(now: u64, hi: u64, fits_at: impl Fn(u64) -> bool) -> u64 {
    assert!(fits_at(now + hi), "the search bound {hi} does not fit");
    let (mut lo, mut hi) = (1, hi);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fits_at(now + mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// For a hit that does not fit at `now`: ms until it would, with no other traffic.
pub fn retry(state: &KeyState, hit: &Hit, now: u64) -> u64 {
    let never = match hit.algorithm {
        Algorithm::Gcra => u128::from(hit.cost) > burst(hit),
        _ => hit.cost > hit.limit,
    };
    if never {
        return hit.window_ms;
    }
    let hi = match hit.algorithm {
        // Two windows on: both counts are then 0.
        Algorithm::FixedWindow | Algorithm::SlidingWindow => 2 * hit.window_ms,
        // Once the debt is paid the bucket is full.
        Algorithm::Gcra => {
            let debt = debt(state, hit, now);
            u64::try_from(debt.div_ceil(u128::from(hit.limit))).expect("fits u64") + 1
        }
    };
    first_fit(now, hi, |at| fits(state, hit, at))
}

impl Model {
    /// The answer to a check of `hits` at `now`, applying its charges if it is allowed.
    pub fn check(&mut self, now: u64, hits: &[Hit]) -> CheckResponse {
        let mut tentative: HashMap<&str, KeyState> = HashMap::new();
        let mut fitted = Vec::with_capacity(hits.len());
        let mut retries = Vec::with_capacity(hits.len());
        let mut allowed = true;
        for hit in hits {
            let state = tentative.entry(&hit.key).or_insert_with(|| {
                self.keys
                    .get(&hit.key)
                    .cloned()
                    .unwrap_or_else(|| fresh(hit))
            });
            let fit = fits(state, hit, now);
            if fit {
                charge(state, hit, now);
                retries.push(0);
            } else {
                retries.push(retry(state, hit, now));
                allowed &= hit.shadow;
            }
            fitted.push(fit);
        }
        let results = hits
            .iter()
            .zip(fitted.iter().zip(&retries))
            .map(|(hit, (&fit, &retry_after_ms))| {
                let state = if allowed {
                    tentative[hit.key.as_str()].clone()
                } else {
                    self.keys
                        .get(&hit.key)
                        .cloned()
                        .unwrap_or_else(|| fresh(hit))
                };
                let (remaining, reset_ms) = report(&state, hit, now);
                HitResult {
                    allowed: fit,
                    limit: hit.limit,
                    remaining,
                    reset_ms,
                    retry_after_ms,
                    leased: 0,
                    lease_ms: 0,
                }
            })
            .collect();
        if allowed {
            for (key, state) in tentative {
                self.keys.insert(key.to_owned(), state);
            }
        }
        CheckResponse {
            allowed,
            hits: results,
        }
    }
}

pub fn hit(key: &str, algorithm: Algorithm, limit: u64, window_ms: u64, cost: u64) -> Hit {
    Hit {
        key: key.into(),
        limit,
        window_ms,
        cost,
        algorithm,
        burst: None,
        shadow: false,
        lease: 0,
    }
}

/// The model on its own, on cases worked out by hand.
mod tests {
    use super::*;

    fn one(model: &mut Model, now: u64, hit: &Hit) -> HitResult {
        let response = model.check(now, std::slice::from_ref(hit));
        assert_eq!(
            response.allowed || hit.shadow,
            response.hits[0].allowed || hit.shadow
        );
        response.hits[0].clone()
    }

    #[test]
    fn model_fixed_window_counts_per_aligned_window() {
        let mut model = Model::default();
        let h = hit("f", Algorithm::FixedWindow, 3, 100, 1);
        for left in [2, 1, 0] {
            let r = one(&mut model, 1_050, &h);
            assert_eq!((r.allowed, r.remaining, r.reset_ms), (true, left, 50));
        }
        let r = one(&mut model, 1_099, &h);
        assert_eq!((r.allowed, r.remaining, r.retry_after_ms), (false, 0, 1));
        // The next window starts at 1_100 with nothing in it.
        let r = one(&mut model, 1_100, &h);
        assert_eq!((r.allowed, r.remaining, r.reset_ms), (true, 2, 100));
    }

    #[test]
    fn model_sliding_window_weighs_the_previous_window() {
        let mut model = Model::default();
        let h = hit("s", Algorithm::SlidingWindow, 10, 1_000, 1);
        let fill = hit("s", Algorithm::SlidingWindow, 10, 1_000, 10);
        assert!(one(&mut model, 5_000, &fill).allowed);
        // Right after the boundary the previous 10 still count fully: 10 * 1000/1000 = 10.
        let r = one(&mut model, 6_000, &h);
        assert!(!r.allowed);
        // Fits once 10 * (1000 - e) / 1000 + 1 <= 10, i.e. e >= 100.
        assert_eq!(r.retry_after_ms, 100);
        assert!(!one(&mut model, 6_099, &h).allowed);
        let r = one(&mut model, 6_100, &h);
        assert!(r.allowed);
        // 10 * 0.9 + 1 = 10: nothing left.
        assert_eq!(r.remaining, 0);
        // Half way: 10 * 0.5 + 1 = 6, so 4 left before this hit, 3 after.
        let r = one(&mut model, 6_500, &h);
        assert_eq!((r.allowed, r.remaining, r.reset_ms), (true, 3, 500));
    }

    #[test]
    fn model_sliding_window_waits_for_the_next_window_when_the_current_one_is_full() {
        let mut model = Model::default();
        let fill = hit("s", Algorithm::SlidingWindow, 4, 1_000, 4);
        assert!(one(&mut model, 7_250, &fill).allowed);
        let r = one(
            &mut model,
            7_250,
            &hit("s", Algorithm::SlidingWindow, 4, 1_000, 2),
        );
        // Next window from 8_000: 4 * (1000 - e) / 1000 + 2 <= 4 once e >= 500.
        assert_eq!((r.allowed, r.retry_after_ms), (false, 750 + 500));
    }

    #[test]
    fn model_gcra_is_a_token_bucket() {
        let mut model = Model::default();
        // 3 per second (an interval of 333.3 ms), burst 2.
        let h = Hit {
            burst: Some(2),
            ..hit("g", Algorithm::Gcra, 3, 1_000, 1)
        };
        let r = one(&mut model, 10_000, &h);
        assert_eq!((r.allowed, r.remaining, r.reset_ms), (true, 1, 334));
        let r = one(&mut model, 10_000, &h);
        assert_eq!((r.allowed, r.remaining, r.reset_ms), (true, 0, 667));
        let r = one(&mut model, 10_000, &h);
        assert_eq!((r.allowed, r.retry_after_ms), (false, 334));
        assert!(!one(&mut model, 10_333, &h).allowed);
        let r = one(&mut model, 10_334, &h);
        assert_eq!((r.allowed, r.remaining), (true, 0));
        // A cost over the burst never fits.
        let r = one(
            &mut model,
            20_000,
            &Hit {
                cost: 3,
                ..h.clone()
            },
        );
        assert_eq!(
            (r.allowed, r.retry_after_ms, r.remaining),
            (false, 1_000, 2)
        );
    }

    #[test]
    fn model_shadow_hits_never_deny_and_apply_only_when_they_fit() {
        let mut model = Model::default();
        let real = hit("r", Algorithm::FixedWindow, 10, 1_000, 1);
        let shadow = Hit {
            shadow: true,
            ..hit("sh", Algorithm::FixedWindow, 3, 1_000, 2)
        };
        let response = model.check(0, &[real.clone(), shadow.clone()]);
        assert!(response.allowed && response.hits[1].allowed);
        let response = model.check(0, &[real.clone(), shadow.clone()]);
        assert!(response.allowed && !response.hits[1].allowed);
        // The shadow counter kept 2 of 3: the second did not fit and was not charged.
        assert_eq!(response.hits[1].remaining, 1);
    }
}
