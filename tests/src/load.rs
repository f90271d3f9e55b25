//! A steady background load for the fault tests: client threads on kept-alive
//! connections to Envoy, each paced to its share of a total rate, recording
//! every request: when it was sent, its status, its latency, and whether
//! limitd decided it (the response carries RateLimit headers, which a request
//! let through or refused by a failure mode or a fallback limit never has).
//!
//! The load is bounded in time by itself, and its live counters let a test
//! wait for progress (e.g. "300 more requests decided by limitd") by probing
//! instead of sleeping.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::client::{HttpConnection, HttpResponse};
use crate::poll::eventually;

/// What to send, how fast, and for how long at most.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub to: SocketAddr,
    /// The paths requested: connection `i` asks for `paths[i % paths.len()]`.
    pub paths: Vec<String>,
    /// The client's source address (127.0.0.1 when `None`).
    pub from: Option<IpAddr>,
    /// Client threads, one kept-alive connection each.
    pub connections: usize,
    /// The total rate over all connections, in requests per second.
    pub rate_per_s: f64,
    /// The load stops by itself after this long, whatever the test does.
    pub max_duration: Duration,
}

/// One request of the load.
#[derive(Debug, Clone)]
pub struct Sample {
    pub connection: usize,
    /// Index into [`LoadOptions::paths`].
    pub path: usize,
    pub sent: Instant,
    /// When it was sent by the wall clock (the clock the proxies' fallback
    /// windows follow), in milliseconds since the epoch.
    pub sent_unix_ms: u64,
    /// Until the whole response was read (or the request failed).
    pub latency: Duration,
    /// The response status; 0 when no response arrived.
    pub status: u16,
    /// The response carried RateLimit headers: limitd decided it.
    pub global: bool,
    /// Why no response arrived.
    pub error: Option<String>,
}

impl Sample {
    pub fn answered(&self) -> Instant {
        self.sent + self.latency
    }

    pub fn answered_unix_ms(&self) -> u64 {
        self.sent_unix_ms + self.latency.as_millis() as u64
    }

    /// No response at all, or a 5xx.
    pub fn failed(&self) -> bool {
        self.status == 0 || self.status >= 500
    }
}

/// Counters of the load so far, readable while it runs.
#[derive(Debug, Default)]
struct Live {
    answered: AtomicU64,
    global: AtomicU64,
    local: AtomicU64,
}

/// A running load. [`Load::stop`] ends it and returns what it recorded.
#[derive(Debug)]
pub struct Load {
    pub options: LoadOptions,
    pub started: Instant,
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
    threads: Vec<JoinHandle<Vec<Sample>>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether Envoy answered with the draft IETF or legacy rate-limit headers.
fn decided_by_limitd(response: &HttpResponse) -> bool {
    response.header("ratelimit").is_some() || response.header("x-ratelimit-limit").is_some()
}

impl Load {
    /// Starts the client threads.
    pub fn start(options: LoadOptions) -> Load {
        assert!(
            options.connections > 0 && !options.paths.is_empty() && options.rate_per_s > 0.0,
            "a load needs connections, paths and a rate: {options:?}"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Live::default());
        let started = Instant::now();
        let interval = Duration::from_secs_f64(options.connections as f64 / options.rate_per_s);
        let threads = (0..options.connections)
            .map(|connection| {
                let options = options.clone();
                let stop = stop.clone();
                let live = live.clone();
                // Stagger the connections over one interval, so the load is even.
                let first =
                    started + interval.mul_f64(connection as f64 / options.connections as f64);
                std::thread::spawn(move || {
                    run_connection(connection, &options, first, interval, &stop, &live)
                })
            })
            .collect();
        Load {
            options,
            started,
            stop,
            live,
            threads,
        }
    }

    /// Requests answered so far (any status).
    pub fn answered(&self) -> u64 {
        self.live.answered.load(Ordering::Relaxed)
    }

    /// Requests decided by limitd so far.
    pub fn global(&self) -> u64 {
        self.live.global.load(Ordering::Relaxed)
    }

    /// Requests answered so far without limitd (a failure mode or a fallback
    /// limit decided).
    pub fn local(&self) -> u64 {
        self.live.local.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until `more` requests beyond those so far were decided by limitd.
    pub fn wait_for_global(&self, more: u64, within: Duration) -> Result<(), String> {
        let target = self.global() + more;
        eventually(within, || {
            let now = self.global();
            if now >= target {
                Ok(())
            } else {
                Err(format!(
                    "{now} of {target} requests decided by limitd ({} answered)",
                    self.answered()
                ))
            }
        })
    }

    /// Stops the load, waits for the requests in flight, and returns every
    /// request in the order they were sent.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples: Vec<Sample> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect();
        samples.sort_by_key(|s| s.sent);
        LoadReport {
            options: self.options,
            started: self.started,
            samples,
        }
    }
}

fn run_connection(
    connection: usize,
    options: &LoadOptions,
    first: Instant,
    interval: Duration,
    stop: &AtomicBool,
    live: &Live,
) -> Vec<Sample> {
    let path_index = connection % options.paths.len();
    let path = &options.paths[path_index];
    let until = first + options.max_duration;
    let mut samples = Vec::new();
    let mut open: Option<HttpConnection> = None;
    let mut next = first;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Paced, without bursts to catch up after a slow response.
        next = (next + interval).max(Instant::now());
        let sent = Instant::now();
        let sent_unix_ms = unix_ms();
        let result = match open.as_mut() {
            Some(c) => c.get(path),
            None => HttpConnection::open(options.to, options.from).and_then(|mut c| {
                let response = c.get(path);
                open = Some(c);
                response
            }),
        };
        let latency = sent.elapsed();
        let mut sample = Sample {
            connection,
            path: path_index,
            sent,
            sent_unix_ms,
            latency,
            status: 0,
            global: false,
            error: None,
        };
        match result {
            Ok(response) => {
                sample.status = response.status;
                sample.global = decided_by_limitd(&response);
                live.answered.fetch_add(1, Ordering::Relaxed);
                let counter = if sample.global {
                    &live.global
                } else {
                    &live.local
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if response
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    open = None;
                }
            }
            Err(e) => {
                sample.error = Some(e.to_string());
                open = None;
            }
        }
        samples.push(sample);
    }
    samples
}

/// Everything a load recorded, sorted by send time.
#[derive(Debug)]
pub struct LoadReport {
    pub options: LoadOptions,
    pub started: Instant,
    pub samples: Vec<Sample>,
}

impl LoadReport {
    /// Requests sent at or after `t`.
    pub fn sent_from(&self, t: Instant) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.sent >= t)
    }

    /// Requests that got no response or a 5xx, with a description of each.
    pub fn failures(&self) -> Vec<String> {
        self.samples
            .iter()
            .filter(|s| s.failed())
            .map(|s| {
                format!(
                    "{} at +{:?}: status {} {}",
                    self.options.paths[s.path],
                    s.sent - self.started,
                    s.status,
                    s.error.as_deref().unwrap_or("")
                )
            })
            .collect()
    }

    /// Answered requests that limitd did not decide (a failure mode or a
    /// fallback limit did).
    pub fn local(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| s.status != 0 && !s.global)
    }

    /// The requests per status, e.g. `200: 1234, 503: 5`.
    pub fn statuses(&self) -> String {
        let mut counts = std::collections::BTreeMap::new();
        for s in &self.samples {
            *counts.entry(s.status).or_insert(0u64) += 1;
        }
        counts
            .iter()
            .map(|(status, n)| format!("{status}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The `p`-th percentile (0-100, nearest rank) of some latencies; zero for none.
pub fn percentile(latencies: &[Duration], p: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Seconds between two instants, negative when `to` is before `from`.
pub fn seconds_between(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_secs_f64(),
        None => -from.duration_since(to).as_secs_f64(),
    }
}
