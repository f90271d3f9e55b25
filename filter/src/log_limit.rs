//! Rate-limited logging: during an outage every failed callout would log a
//! line, hundreds a second. A [`LogLimit`] lets one line through per interval
//! and counts the rest, so the next line can say how many it stands for.

/// One line per `interval_ms` at most; the others are counted.
#[derive(Debug)]
pub struct LogLimit {
    interval_ms: u64,
    next_ms: u64,
    suppressed: u64,
}

/// How often a kind of line may be logged by default: once every 10 s.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new(DEFAULT_INTERVAL_MS)
    }
}

impl LogLimit {
    pub fn new(interval_ms: u64) -> Self {
        LogLimit {
            interval_ms,
            next_ms: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now_ms`: `Some(n)` with the number of
    /// lines left out since the last one, or `None` (this one is counted).
    pub fn admit(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms < self.next_ms {
            self.suppressed += 1;
            return None;
        }
        self.next_ms = now_ms.saturating_add(self.interval_ms);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// `" (N more like this since the last)"`, or nothing for N = 0.
pub fn more_like_this(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} more like this since the last)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_a_count_of_the_rest() {
        let mut limit = LogLimit::new(1_000);
        assert_eq!(limit.admit(5_000), Some(0));
        for ms in 5_001..5_101 {
            assert_eq!(limit.admit(ms), None);
        }
        assert_eq!(limit.admit(5_999), None);
        assert_eq!(limit.admit(6_000), Some(101));
        assert_eq!(limit.admit(7_500), Some(0));
        assert_eq!(more_like_this(0), "");
        assert_eq!(more_like_this(101), " (101 more like this since the last)");
    }
}
