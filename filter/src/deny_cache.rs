//! The deny cache: while limitd has said a key is over its limit until some
//! time, requests on that key are denied at once, without a callout.
//!
//! This is exact, not an approximation: limitd's `retry_after_ms` is the
//! earliest time the same request could pass if nothing else were counted,
//! and other requests only ever add to a counter. The expiry is counted from
//! when the check was *sent* (before limitd decided), so the cache never
//! outlives the denial; it may end a little early, which only costs a callout.
//!
//! The cache lives in each worker's VM (no host calls on the request path) and
//! is bounded; a full cache first drops expired entries, then stops learning.

use std::collections::HashMap;

/// Denied keys and until when (milliseconds since the epoch, proxy clock).
#[derive(Debug)]
pub struct DenyCache {
    until: HashMap<String, u64>,
    max_entries: usize,
}

/// The most keys one worker remembers.
pub const MAX_ENTRIES: usize = 10_000;

impl Default for DenyCache {
    fn default() -> Self {
        DenyCache::new(MAX_ENTRIES)
    }
}

impl DenyCache {
    pub fn new(max_entries: usize) -> Self {
        DenyCache {
            until: HashMap::new(),
            max_entries,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Remembers that `key` is denied until `until_ms`.
    pub fn remember(&mut self, key: &str, until_ms: u64, now_ms: u64) {
        if until_ms <= now_ms {
            return;
        }
        if let Some(existing) = self.until.get_mut(key) {
            *existing = (*existing).max(until_ms);
            return;
        }
        if self.until.len() >= self.max_entries {
            self.until.retain(|_, until| *until > now_ms);
            if self.until.len() >= self.max_entries {
                return;
            }
        }
        self.until.insert(key.to_owned(), until_ms);
    }

    /// How long `key` stays denied, if it is.
    pub fn denied_for(&self, key: &str, now_ms: u64) -> Option<u64> {
        self.until
            .get(key)
            .and_then(|&until| until.checked_sub(now_ms))
            .filter(|&ms| ms > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_denied_until_its_time_and_no_longer() {
        let mut cache = DenyCache::new(10);
        cache.remember("k", 1_500, 1_000);
        assert_eq!(cache.denied_for("k", 1_000), Some(500));
        assert_eq!(cache.denied_for("k", 1_499), Some(1));
        assert_eq!(cache.denied_for("k", 1_500), None);
        assert_eq!(cache.denied_for("other", 1_000), None);
    }

    #[test]
    fn a_later_denial_extends_and_an_earlier_one_does_not_shorten() {
        let mut cache = DenyCache::new(10);
        cache.remember("k", 2_000, 1_000);
        cache.remember("k", 1_200, 1_000);
        assert_eq!(cache.denied_for("k", 1_000), Some(1_000));
        cache.remember("k", 3_000, 1_000);
        assert_eq!(cache.denied_for("k", 1_000), Some(2_000));
        cache.remember("past", 900, 1_000);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_full_cache_drops_expired_keys_then_stops_learning() {
        let mut cache = DenyCache::new(2);
        cache.remember("a", 1_100, 1_000);
        cache.remember("b", 5_000, 1_000);
        cache.remember("c", 5_000, 1_000);
        assert_eq!(cache.denied_for("c", 1_000), None, "full: not learnt");
        cache.remember("c", 5_000, 1_200);
        assert_eq!(
            cache.denied_for("c", 1_200),
            Some(3_800),
            "a expired and made room"
        );
        assert_eq!(cache.denied_for("a", 1_050), None);
        assert_eq!(cache.len(), 2);
    }
}
