//! An open-loop load generator: requests leave on a fixed schedule whatever
//! the answers do, and each latency is measured from the request's *scheduled*
//! send time, so a stall delays (and counts against) every request scheduled
//! during it instead of silently pausing the load (coordinated omission, the
//! reason wrk2 exists; wrk itself has no fixed-rate mode).
//!
//! `connections` threads each own one keep-alive HTTP/1.1 connection (the
//! harness's [`HttpConnection`], plain `std::net::TcpStream`) and send every
//! `connections / rate` seconds, the threads staggered evenly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::HttpConnection;

use super::scenarios::Scenario;

/// What one open-loop run saw.
#[derive(Debug, Clone, Default)]
pub struct OpenLoopResult {
    /// Requests answered with the expected status.
    pub ok: u64,
    /// Other statuses, I/O errors and reconnects.
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Sends `GET path` to `to` at `rate` requests/s for `duration`.
pub fn run(
    to: SocketAddr,
    scenario: &Scenario,
    rate: u32,
    connections: u32,
    duration: Duration,
) -> Result<OpenLoopResult, String> {
    let interval = Duration::from_secs_f64(f64::from(connections) / f64::from(rate.max(1)));
    // Connect everything first; the schedule starts once all are open.
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + duration;
    let threads: Vec<_> = (0..connections)
        .map(|k| {
            let scenario = *scenario;
            let first = start + interval * k / connections;
            std::thread::spawn(move || {
                send_on_schedule(to, &scenario, u64::from(k), first, interval, end)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut result = OpenLoopResult::default();
    for thread in threads {
        let (mut samples, ok, errors) = thread
            .join()
            .map_err(|_| "an open-loop thread panicked".to_owned())??;
        latencies.append(&mut samples);
        result.ok += ok;
        result.errors += errors;
    }
    latencies.sort_by(f64::total_cmp);
    result.p50_ms = percentile(&latencies, 0.50);
    result.p99_ms = percentile(&latencies, 0.99);
    result.max_ms = latencies.last().copied().unwrap_or(0.0);
    Ok(result)
}

/// One connection's share: returns (latencies in ms, ok, errors).
/// Connection `k` sends requests `k`, `k + 1`, ... of the scenario in turn (their paths differ
/// when the scenario spreads over keys).
fn send_on_schedule(
    to: SocketAddr,
    scenario: &Scenario,
    k: u64,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> Result<(Vec<f64>, u64, u64), String> {
    let open = || HttpConnection::open(to, None).map_err(|e| format!("connect {to}: {e}"));
    let mut connection = open()?;
    let (mut latencies, mut ok, mut errors) = (Vec::new(), 0, 0);
    let mut scheduled = first;
    let mut n = k;
    while scheduled < end {
        let path = scenario.path_of(n);
        n += 1;
        if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match connection.get(&path) {
            Ok(response) => {
                latencies.push(scheduled.elapsed().as_secs_f64() * 1000.0);
                if scenario.expects(response.status) {
                    ok += 1;
                } else {
                    errors += 1;
                }
            }
            Err(_) => {
                errors += 1;
                connection = open()?;
            }
        }
        scheduled += interval;
    }
    Ok((latencies, ok, errors))
}

/// The nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.50), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values[..1], 0.99), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
