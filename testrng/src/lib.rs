//! Seeded random numbers for the tests that generate their cases, so a failing run can be
//! replayed: one generator (`fastrand`) and one way to seed it for the whole workspace.
//!
//! [`rng`] seeds from `TEST_SEED` when it is set, else from a fresh random seed, and prints the
//! seed with the test's name. cargo shows a test's output when it fails, so the line to replay
//! it is right there: `TEST_SEED=<seed> cargo test <name>`. Fresh seeds make every run try new
//! cases; a fixed one repeats exactly the cases of the run that found a problem.

pub use fastrand::Rng;

/// The environment variable that fixes the seed (decimal, or hexadecimal after `0x`).
pub const SEED_VAR: &str = "TEST_SEED";

/// A generator for the test `name`, seeded from `TEST_SEED` or at random; the seed is printed.
///
/// # Panics
///
/// When `TEST_SEED` is set but is not a number: a replay must not silently run other cases.
pub fn rng(name: &str) -> Rng {
    let seed = match std::env::var(SEED_VAR) {
        Ok(text) => parse_seed(&text)
            .unwrap_or_else(|| panic!("{SEED_VAR}={text:?} is not a u64 (decimal or 0x-hex)")),
        Err(_) => fastrand::u64(..),
    };
    eprintln!("{name}: seed {seed} (replay with {SEED_VAR}={seed})");
    Rng::with_seed(seed)
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16).ok(),
        None => text.replace('_', "").parse().ok(),
    }
}

/// Picking test cases: a few helpers `fastrand` leaves to its callers.
pub trait Cases {
    /// One of `items`, uniformly (`items` must not be empty).
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T;

    /// `true` with a probability of `percent` in 100.
    fn chance(&mut self, percent: u64) -> bool;
}

impl Cases for Rng {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.usize(..items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.u64(..100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_read_as_decimal_or_hex() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed(" 0x1d2c_3b4a "), Some(0x1d2c_3b4a));
        assert_eq!(parse_seed("1_000"), Some(1000));
        assert_eq!(parse_seed("seed"), None);
        assert_eq!(parse_seed("0xzz"), None);
    }

    #[test]
    fn one_seed_gives_one_sequence() {
        let mut a = Rng::with_seed(7);
        let mut b = Rng::with_seed(7);
        let first: Vec<u64> = (0..8).map(|_| a.u64(..)).collect();
        let second: Vec<u64> = (0..8).map(|_| b.u64(..)).collect();
        assert_eq!(first, second);
    }

    #[test]
    fn picks_stay_in_bounds_and_chances_hold_their_extremes() {
        let mut rng = Rng::with_seed(1);
        for _ in 0..1000 {
            assert!([1, 2, 3].contains(rng.pick(&[1, 2, 3])));
            assert!(!rng.chance(0));
            assert!(rng.chance(100));
        }
    }
}
