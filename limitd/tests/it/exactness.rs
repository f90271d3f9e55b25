//! Counted exactly when admitted: with faults injected in the middle of batches, Redis's counter
//! for every key ends equal to the number of checks limitd reported as allowed. A check that
//! failed after its script may have run is given back (see `store.rs`), so an `error` result
//! never stays counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use protocol::{CheckResult, ErrorKind};

use crate::batch::post_v2;
use crate::metrics::{scrape, value};
use crate::support::{app_for_redis, eventually, resp, RedisProcess};

const KEYS: usize = 8;
/// The longest window: no window boundary falls inside a test run, so one counter per key.
const WINDOW_MS: u64 = protocol::bounds::MAX_WINDOW_MS;

fn key(i: usize) -> String {
    format!("exact:{i}")
}

/// A batch of `n` single-hit checks over the keys, starting at key `first`.
fn batch(first: usize, n: usize, timeout_ms: Option<u64>) -> (String, Vec<usize>) {
    let keys: Vec<usize> = (0..n).map(|i| (first + i) % KEYS).collect();
    let checks: Vec<String> = keys
        .iter()
        .map(|&k| {
            format!(
                r#"{{"hits":[{{"key":"{}","limit":1000000000,"window_ms":{WINDOW_MS}}}]}}"#,
                key(k)
            )
        })
        .collect();
    let timeout = timeout_ms.map_or(String::new(), |ms| format!(r#""timeout_ms":{ms},"#));
    (
        format!(r#"{{{timeout}"checks":[{}]}}"#, checks.join(",")),
        keys,
    )
}

/// The count Redis holds for key `i` (its fixed-window hash's `c`), 0 if absent.
fn stored(port: u16, i: usize) -> u64 {
    let reply = resp(port, &["HGET", &format!("rl:v1:{{{}}}", key(i)), "c"]).expect("redis");
    // `$-1` (absent) or `$<len>\r\n<digits>\r\n`.
    reply
        .lines()
        .nth(1)
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

/// Waits until no give-back is running, then returns the give-backs by outcome.
async fn give_backs_settled(app: &Router) -> HashMap<&'static str, f64> {
    eventually(Duration::from_secs(45), "give-backs to finish", || async {
        let text = scrape(app).await;
        (value(&text, "limitd_give_backs_in_flight") == Some(0.0)).then(|| {
            ["returned", "voided", "settled", "failed"]
                .into_iter()
                .map(|o| {
                    let series = format!("limitd_give_backs_total{{outcome=\"{o}\"}}");
                    (o, value(&text, &series).unwrap_or(0.0))
                })
                .collect()
        })
    })
    .await
}

#[derive(Default)]
struct Tally {
    allowed: [u64; KEYS],
    errors: u64,
    checks: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_pipeline_leave_every_counter_equal_to_its_admissions() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for task in 0..12 {
        let (app, stop) = (app.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut first = task;
            while !stop.load(Ordering::Relaxed) {
                let (body, keys) = batch(first, 16, None);
                first += 1;
                for (k, result) in keys.iter().zip(post_v2(&app, &body).await) {
                    tally.checks += 1;
                    match result {
                        CheckResult::Allowed { .. } => tally.allowed[*k] += 1,
                        CheckResult::Error { .. } => tally.errors += 1,
                        other => panic!("a check with room left was {other:?}"),
                    }
                }
                // A dead connection fails checks without waiting: let the rebuild run.
                tokio::task::yield_now().await;
            }
            tally
        }));
    }
    // Kill limitd's connection again and again while batches are in flight: scripts sent on it
    // may have run or not, and their answers are lost.
    let killer = {
        let port = redis.port;
        tokio::task::spawn_blocking(move || {
            let end = Instant::now() + Duration::from_millis(1500);
            let mut kills = 0;
            while Instant::now() < end {
                std::thread::sleep(Duration::from_millis(15));
                if resp(port, &["CLIENT", "KILL", "TYPE", "normal"])
                    .is_some_and(|r| r.starts_with(':') && r != ":0\r\n")
                {
                    kills += 1;
                }
            }
            kills
        })
    };
    let kills = killer.await.expect("killer");
    // Let checks succeed again for a moment, so the load ends on a working connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for sender in senders {
        let tally = sender.await.expect("sender");
        total.checks += tally.checks;
        total.errors += tally.errors;
        for k in 0..KEYS {
            total.allowed[k] += tally.allowed[k];
        }
    }
    let give_backs = give_backs_settled(&app).await;
    let admitted: u64 = total.allowed.iter().sum();
    println!(
        "connection kills: {kills}; checks {}, allowed {admitted}, errors {}; give-backs {give_backs:?}",
        total.checks, total.errors
    );
    assert!(kills > 0 && total.errors > 0, "the fault never hit a check");
    assert_eq!(give_backs["failed"], 0.0);
    assert!(
        give_backs["returned"] + give_backs["voided"] + give_backs["settled"] > 0.0,
        "no check was left in doubt: the test did not exercise the give-back"
    );
    for k in 0..KEYS {
        assert_eq!(
            stored(redis.port, k),
            total.allowed[k],
            "key {k}: Redis's count differs from the admissions"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_past_the_batch_timeout_are_reported_and_then_given_back() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    // A frozen Redis: the scripts go out and wait in its socket, to run when it thaws.
    redis.signal("-STOP");
    let (body, _) = batch(0, 4, Some(200));
    let results = post_v2(&app, &body).await;
    redis.signal("-CONT");
    for result in &results {
        assert!(
            matches!(
                result,
                CheckResult::Error {
                    error: ErrorKind::Timeout,
                    ..
                }
            ),
            "{result:?}"
        );
    }
    let give_backs = give_backs_settled(&app).await;
    println!("give-backs after a timeout: {give_backs:?}");
    assert_eq!(give_backs["failed"], 0.0);
    assert!(give_backs["returned"] + give_backs["voided"] + give_backs["settled"] >= 4.0);
    for k in 0..4 {
        assert_eq!(
            stored(redis.port, k),
            0,
            "key {k} counted a check reported as an error"
        );
    }
    // And the counters work on: a fresh check of a key is counted once.
    let (body, _) = batch(0, 1, Some(1000));
    assert!(matches!(
        post_v2(&app, &body).await[0],
        CheckResult::Allowed { .. }
    ));
    assert_eq!(stored(redis.port, 0), 1);
}
