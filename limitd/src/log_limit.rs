//! Rate-limited logging: during a Redis outage every batch would log a line, hundreds a second.
//! A [`LogLimit`] lets one line through per interval and counts the rest, so the next line can
//! say how many it stands for.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One line per interval at most; the others are counted. Usable as a `static`.
#[derive(Debug)]
pub struct LogLimit {
    interval: Duration,
    /// When the next line may go out (`None`: now), and how many were left out meanwhile.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimit {
    pub const fn new(interval: Duration) -> Self {
        LogLimit {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Whether a line may be logged now: `Some(n)` with the number of lines left out since the
    /// last one, or `None` (this one is counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (next, suppressed) = &mut *state;
        if next.is_some_and(|next| now < next) {
            *suppressed += 1;
            return None;
        }
        *next = Some(now + self.interval);
        Some(std::mem::take(suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_a_count_of_the_rest() {
        let limit = LogLimit::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(limit.admit_at(start), Some(0));
        for ms in 1..=100 {
            assert_eq!(limit.admit_at(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(
            limit.admit_at(start + Duration::from_millis(1000)),
            Some(100)
        );
        assert_eq!(limit.admit_at(start + Duration::from_millis(2500)), Some(0));
    }
}
