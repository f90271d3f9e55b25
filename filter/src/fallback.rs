//! Degraded mode: while limitd cannot answer, a rule with a `fallback` limit
//! is enforced by each Envoy on its own, with fixed-window counters shared by
//! the Envoy's workers (proxy-wasm shared data, updated by compare-and-swap).
//!
//! The counters are per Envoy, so the fleet admits up to the fallback limit
//! times the number of proxies: set it to the global limit divided by the
//! expected number of proxies. Windows follow the proxy's clock, not Redis'.

use std::fmt::Write as _;

/// A rule's local limit for when limitd cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback {
    pub requests: u64,
    pub window_ms: u64,
}

/// Process-wide counters with compare-and-swap, as proxy-wasm shared data.
pub trait LocalCounters {
    /// Milliseconds since the epoch, by the proxy's clock.
    fn now_ms(&self) -> u64;
    /// A value and its version (`None`, `None` when absent).
    fn load(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value` if the version is still `cas`; false on a conflict.
    fn store(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// How many shared-data entries hold the fallback counters. Every hit key
/// hashes to one slot; shared data has no deletion, so this bounds what the
/// counters can ever take, however many clients come and go.
pub const SLOTS: u64 = 4096;

/// How many keys one slot counts at once. Counters whose window has ended
/// are dropped whenever their slot is written, so the bound is on keys active
/// in the same window: up to `SLOTS * SLOT_KEYS` (32,768) per Envoy. Past it,
/// a new key's rule applies its failure mode until a window ends.
pub const SLOT_KEYS: usize = 8;

const ATTEMPTS: usize = 16;

/// The shared-data key of the slot that counts `hit_key` (FNV-1a).
fn slot_key(hit_key: &str) -> String {
    let hash = hit_key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut key = String::with_capacity(24);
    let _ = write!(key, "ratelimit.fallback.{}", hash % SLOTS);
    key
}

/// One counter in a slot: the end of its window (ms), the units spent in
/// it, and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counter {
    end_ms: u64,
    count: u64,
    key: String,
}

/// A slot's counters still in their window at `now`, parsed from
/// `"<end_ms> <count> <key>"` lines (keys hold no white space: the filter
/// percent-encodes it). Anything unreadable counts as absent.
fn live_counters(value: Option<&[u8]>, now: u64) -> Vec<Counter> {
    let text = value
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("");
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            Some(Counter {
                end_ms: parts.next()?.parse().ok()?,
                count: parts.next()?.parse().ok()?,
                key: parts.next()?.to_owned(),
            })
        })
        .filter(|c| c.end_ms > now)
        .collect()
}

fn encode(counters: &[Counter]) -> String {
    let mut text = String::new();
    for c in counters {
        let _ = writeln!(text, "{} {} {}", c.end_ms, c.count, c.key);
    }
    text
}

/// Where one hit stands against its fallback limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// It fits.
    Fits,
    /// It does not fit until the window ends.
    Over { retry_after_ms: u64 },
    /// Its slot counts as many keys as it may in this window.
    Full,
}

/// Reads where a hit stands, without changing anything.
pub fn standing(
    counters: &impl LocalCounters,
    hit_key: &str,
    cost: u64,
    limit: Fallback,
) -> Standing {
    let now = counters.now_ms();
    let end = now - now % limit.window_ms + limit.window_ms;
    let (value, _) = counters.load(&slot_key(hit_key));
    let live = live_counters(value.as_deref(), now);
    let spent = match live.iter().find(|c| c.key == hit_key && c.end_ms == end) {
        Some(counter) => counter.count,
        None if live.len() >= SLOT_KEYS => return Standing::Full,
        None => 0,
    };
    if spent + cost <= limit.requests {
        Standing::Fits
    } else {
        Standing::Over {
            retry_after_ms: end - now,
        }
    }
}

/// Spends `cost` on a hit's counter with compare-and-swap, dropping the
/// slot's ended counters on the way. Returns false if it could not (the
/// limit was reached, or the slot filled, since [`standing`] said it fits;
/// or the slot stayed contended).
pub fn spend(counters: &impl LocalCounters, hit_key: &str, cost: u64, limit: Fallback) -> bool {
    let key = slot_key(hit_key);
    for _ in 0..ATTEMPTS {
        let now = counters.now_ms();
        let end = now - now % limit.window_ms + limit.window_ms;
        let (value, cas) = counters.load(&key);
        let mut live = live_counters(value.as_deref(), now);
        let full = live.len() >= SLOT_KEYS;
        match live
            .iter_mut()
            .find(|c| c.key == hit_key && c.end_ms == end)
        {
            Some(counter) if counter.count + cost > limit.requests => return false,
            Some(counter) => counter.count += cost,
            None if full || cost > limit.requests => return false,
            None => live.push(Counter {
                end_ms: end,
                count: cost,
                key: hit_key.to_owned(),
            }),
        }
        if counters.store(&key, encode(&live).as_bytes(), cas) {
            return true;
        }
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::*;

    /// Shared data in a map, with versions, and a settable clock.
    #[derive(Debug, Default)]
    pub struct FakeCounters {
        pub now: Cell<u64>,
        pub data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    }

    impl LocalCounters for FakeCounters {
        fn now_ms(&self) -> u64 {
            self.now.get()
        }
        fn load(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            match self.data.borrow().get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            }
        }
        fn store(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            let mut data = self.data.borrow_mut();
            let current = data.get(key).map(|(_, c)| *c);
            if cas.is_some() && cas != current {
                return false;
            }
            data.insert(key.to_owned(), (value.to_vec(), current.unwrap_or(0) + 1));
            true
        }
    }

    const LIMIT: Fallback = Fallback {
        requests: 3,
        window_ms: 1000,
    };

    fn take(c: &FakeCounters, key: &str) -> Standing {
        let s = standing(c, key, 1, LIMIT);
        if s == Standing::Fits {
            assert!(spend(c, key, 1, LIMIT));
        }
        s
    }

    #[test]
    fn a_window_admits_its_limit_then_resets() {
        let c = FakeCounters::default();
        c.now.set(10_250);
        for _ in 0..3 {
            assert_eq!(take(&c, "k"), Standing::Fits);
        }
        assert_eq!(
            take(&c, "k"),
            Standing::Over {
                retry_after_ms: 750
            }
        );
        assert_eq!(take(&c, "other"), Standing::Fits);
        c.now.set(11_000);
        assert_eq!(take(&c, "k"), Standing::Fits);
    }

    #[test]
    fn reading_spends_nothing() {
        let c = FakeCounters::default();
        for _ in 0..10 {
            assert_eq!(standing(&c, "k", 3, LIMIT), Standing::Fits);
        }
        assert_eq!(
            standing(&c, "k", 4, LIMIT),
            Standing::Over {
                retry_after_ms: 1000
            }
        );
    }

    #[test]
    fn a_spend_checks_the_limit_again() {
        // Two workers both read "fits" for the last unit: only one spends it.
        let c = FakeCounters::default();
        assert!(spend(&c, "k", 2, LIMIT));
        assert_eq!(standing(&c, "k", 1, LIMIT), Standing::Fits);
        assert_eq!(standing(&c, "k", 1, LIMIT), Standing::Fits);
        assert!(spend(&c, "k", 1, LIMIT));
        assert!(!spend(&c, "k", 1, LIMIT));
    }

    #[test]
    fn more_keys_than_the_bound_never_grow_shared_data_and_come_back_after_the_window() {
        let c = FakeCounters::default();
        c.now.set(5_000);
        let keys = (SLOTS as usize) * SLOT_KEYS * 2;
        let mut full = 0;
        for i in 0..keys {
            match take(&c, &format!("client:{i}")) {
                Standing::Fits => {}
                Standing::Full => full += 1,
                other => panic!("{other:?}"),
            }
        }
        let slots = c.data.borrow().len() as u64;
        assert!(slots <= SLOTS, "{slots} shared-data keys");
        assert!(
            full >= keys / 2,
            "only {full} of {keys} found their slot full"
        );
        // Once the window has ended, new clients are counted again, in the same slots.
        c.now.set(6_000);
        for i in 0..1000 {
            assert_eq!(take(&c, &format!("later:{i}")), Standing::Fits);
        }
        assert!(c.data.borrow().len() as u64 <= SLOTS);
        let longest = c
            .data
            .borrow()
            .values()
            .map(|(v, _)| v.len())
            .max()
            .unwrap_or(0);
        assert!(
            longest < SLOT_KEYS * 64,
            "a slot holds only live counters: {longest} bytes"
        );
    }
}
