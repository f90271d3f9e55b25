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

/// The most distinct fallback keys one Envoy keeps. Shared data has no expiry,
/// so past this, new clients get their rule's failure mode instead.
pub const MAX_KEYS: u64 = 100_000;

const KEY_COUNT: &str = "ratelimit.fallback.keys";
const ATTEMPTS: usize = 16;

fn shared_key(hit_key: &str) -> String {
    let mut key = String::with_capacity(hit_key.len() + 19);
    key.push_str("ratelimit.fallback:");
    key.push_str(hit_key);
    key
}

/// A counter's state: the start of its window and the units spent in it.
fn parse(value: Option<&[u8]>, window_start: u64) -> u64 {
    let text = value
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("");
    match text.split_once(':') {
        Some((start, count)) if start.parse() == Ok(window_start) => count.parse().unwrap_or(0),
        _ => 0,
    }
}

/// Where one hit stands against its fallback limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// It fits; `new_key` if no counter exists for it yet.
    Fits { new_key: bool },
    /// It does not fit until the window ends.
    Over { retry_after_ms: u64 },
    /// The Envoy keeps too many fallback keys to start another.
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
    let start = now - now % limit.window_ms;
    let (value, cas) = counters.load(&shared_key(hit_key));
    if cas.is_none() {
        let (count, _) = counters.load(KEY_COUNT);
        if parse_count(count.as_deref()) >= MAX_KEYS {
            return Standing::Full;
        }
    }
    if parse(value.as_deref(), start) + cost <= limit.requests {
        Standing::Fits {
            new_key: cas.is_none(),
        }
    } else {
        Standing::Over {
            retry_after_ms: start + limit.window_ms - now,
        }
    }
}

fn parse_count(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// Spends `cost` on a hit's counter. Under contention it retries a few times,
/// then gives up (the request was already judged to fit).
pub fn spend(
    counters: &impl LocalCounters,
    hit_key: &str,
    cost: u64,
    limit: Fallback,
    new_key: bool,
) {
    let key = shared_key(hit_key);
    for _ in 0..ATTEMPTS {
        let now = counters.now_ms();
        let start = now - now % limit.window_ms;
        let (value, cas) = counters.load(&key);
        let mut text = String::new();
        let _ = write!(text, "{start}:{}", parse(value.as_deref(), start) + cost);
        if counters.store(&key, text.as_bytes(), cas) {
            break;
        }
    }
    if new_key {
        for _ in 0..ATTEMPTS {
            let (value, cas) = counters.load(KEY_COUNT);
            if counters.store(
                KEY_COUNT,
                (parse_count(value.as_deref()) + 1).to_string().as_bytes(),
                cas,
            ) {
                break;
            }
        }
    }
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
        if let Standing::Fits { new_key } = s {
            spend(c, key, 1, LIMIT, new_key);
        }
        s
    }

    #[test]
    fn a_window_admits_its_limit_then_resets() {
        let c = FakeCounters::default();
        c.now.set(10_250);
        assert_eq!(take(&c, "k"), Standing::Fits { new_key: true });
        assert_eq!(take(&c, "k"), Standing::Fits { new_key: false });
        assert_eq!(take(&c, "k"), Standing::Fits { new_key: false });
        assert_eq!(
            take(&c, "k"),
            Standing::Over {
                retry_after_ms: 750
            }
        );
        assert_eq!(take(&c, "other"), Standing::Fits { new_key: true });
        c.now.set(11_000);
        assert_eq!(take(&c, "k"), Standing::Fits { new_key: false });
        assert_eq!(parse_count(c.load(KEY_COUNT).0.as_deref()), 2);
    }

    #[test]
    fn reading_spends_nothing() {
        let c = FakeCounters::default();
        for _ in 0..10 {
            assert_eq!(
                standing(&c, "k", 3, LIMIT),
                Standing::Fits { new_key: true }
            );
        }
        assert_eq!(
            standing(&c, "k", 4, LIMIT),
            Standing::Over {
                retry_after_ms: 1000
            }
        );
    }

    #[test]
    fn new_clients_stop_at_the_key_bound() {
        let c = FakeCounters::default();
        c.store(KEY_COUNT, MAX_KEYS.to_string().as_bytes(), None);
        c.store(&shared_key("known"), b"0:1", None);
        assert_eq!(standing(&c, "new", 1, LIMIT), Standing::Full);
        assert_eq!(
            standing(&c, "known", 1, LIMIT),
            Standing::Fits { new_key: false }
        );
    }
}
