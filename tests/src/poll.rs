//! Bounded polling: tests wait for a condition by probing it, never by a fixed sleep.
//!
//! [`eventually`] blocks the thread between probes; [`eventually_async`] sleeps on tokio's timer,
//! for probes that await (limitd's tests drive its app in process). Both follow one pace
//! ([`Pace`]) and take the same probes: a probe answers `Some(value)` or `Ok(value)` when the
//! condition holds, `None` or `Err(why)` when not yet.

use std::future::Future;
use std::time::{Duration, Instant};

/// What a probe answers: the value once the condition holds, or why not yet.
pub trait Outcome<T> {
    fn into_result(self) -> Result<T, String>;
}

impl<T> Outcome<T> for Result<T, String> {
    fn into_result(self) -> Result<T, String> {
        self
    }
}

impl<T> Outcome<T> for Option<T> {
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(|| "the condition never held".to_owned())
    }
}

/// When to probe again: after 20 ms at first, doubling up to 200 ms, until `within` has passed.
#[derive(Debug)]
struct Pace {
    start: Instant,
    within: Duration,
    pause: Duration,
}

impl Pace {
    fn new(within: Duration) -> Pace {
        Pace {
            start: Instant::now(),
            within,
            pause: Duration::from_millis(20),
        }
    }

    /// After a failed probe: how long to wait before the next, or the error to give up with.
    fn next(&mut self, failure: String) -> Result<Duration, String> {
        if self.start.elapsed() >= self.within {
            return Err(format!("not within {:?}: {failure}", self.within));
        }
        let pause = self.pause;
        self.pause = (pause * 2).min(Duration::from_millis(200));
        Ok(pause)
    }
}

/// Probes until the probe holds, for at most `within`: its value, or the last failure's
/// description.
pub fn eventually<T, O: Outcome<T>>(
    within: Duration,
    mut probe: impl FnMut() -> O,
) -> Result<T, String> {
    let mut pace = Pace::new(within);
    loop {
        match probe().into_result() {
            Ok(value) => return Ok(value),
            Err(failure) => std::thread::sleep(pace.next(failure)?),
        }
    }
}

/// [`eventually`] for a probe that awaits: sleeps on tokio's timer, so the runtime (and the app
/// the probe drives) runs between probes.
pub async fn eventually_async<T, O, F, Fut>(within: Duration, mut probe: F) -> Result<T, String>
where
    O: Outcome<T>,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    let mut pace = Pace::new(within);
    loop {
        match probe().await.into_result() {
            Ok(value) => return Ok(value),
            Err(failure) => tokio::time::sleep(pace.next(failure)?).await,
        }
    }
}

/// Probes every `every` for at most `within`: for moments whose timing is measured, where
/// [`eventually`]'s growing pause would blur it.
pub fn poll_every<T>(
    within: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(e) if start.elapsed() >= within => {
                return Err(format!("not within {within:?}: {e}"))
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}
