//! Counted exactly when admitted: with faults injected in the middle of batches, Redis's counter
//! for every key ends equal to the number of checks limitd reported as allowed. A check that
//! failed after its script may have run is given back (see `store.rs`), so an `error` result
//! never stays counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use protocol::{CheckResult, ErrorKind};

use crate::batch::post_v2;
use crate::metrics::{scrape, value};
use e2e::{eventually_async, redis_command, RedisProcess, Resp};

use crate::support::app_for_redis;

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
    let counter = format!("rl:v2:{{{}}}:w{WINDOW_MS}", key(i));
    match redis_command(port, &["HGET", &counter, "c"]).expect("redis") {
        Resp::Bulk(None) => 0,
        reply => reply.to_string().parse().expect("a count"),
    }
}

/// Waits until no give-back is running, then returns the give-backs by outcome.
async fn give_backs_settled(app: &Router) -> HashMap<&'static str, f64> {
    eventually_async(Duration::from_secs(45), || async {
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
    .expect("give-backs to finish")
}

#[derive(Default)]
struct Tally {
    allowed: [u64; KEYS],
    errors: u64,
    checks: u64,
}

impl Tally {
    fn admitted(&self) -> u64 {
        self.allowed.iter().sum()
    }
}

/// Twelve tasks sending batches of 16 checks over the keys until `stop`.
struct Load {
    stop: Arc<AtomicBool>,
    /// Checks allowed so far, by all tasks: what a test waits on to know the load made progress.
    admitted: Arc<AtomicU64>,
    senders: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    fn start(app: &Router) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let admitted = Arc::new(AtomicU64::new(0));
        let senders = (0..12)
            .map(|task| {
                let (app, stop, admitted) = (app.clone(), stop.clone(), admitted.clone());
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    let mut first = task;
                    while !stop.load(Ordering::Relaxed) {
                        let (body, keys) = batch(first, 16, None);
                        first += 1;
                        for (k, result) in keys.iter().zip(post_v2(&app, &body).await) {
                            tally.checks += 1;
                            match result {
                                CheckResult::Allowed { .. } => {
                                    tally.allowed[*k] += 1;
                                    admitted.fetch_add(1, Ordering::Relaxed);
                                }
                                CheckResult::Error { .. } => tally.errors += 1,
                                other => panic!("a check with room left was {other:?}"),
                            }
                        }
                        // A dead connection fails checks without waiting: let the rebuild run.
                        tokio::task::yield_now().await;
                    }
                    tally
                })
            })
            .collect();
        Load {
            stop,
            admitted,
            senders,
        }
    }

    /// Waits until `more` checks have been allowed since the call.
    async fn admits(&self, more: u64, what: &str) {
        let target = self.admitted.load(Ordering::Relaxed) + more;
        eventually_async(Duration::from_secs(20), || async {
            (self.admitted.load(Ordering::Relaxed) >= target).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for sender in self.senders {
            let tally = sender.await.expect("sender");
            total.checks += tally.checks;
            total.errors += tally.errors;
            for k in 0..KEYS {
                total.allowed[k] += tally.allowed[k];
            }
        }
        total
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_pipeline_leave_every_counter_equal_to_its_admissions() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let load = Load::start(&app);
    // Kill limitd's connection again and again while batches are in flight: scripts sent on it
    // may have run or not, and their answers are lost.
    let killer = {
        let port = redis.port;
        tokio::task::spawn_blocking(move || {
            let end = Instant::now() + Duration::from_millis(1500);
            let mut kills = 0;
            while Instant::now() < end {
                std::thread::sleep(Duration::from_millis(15));
                let killed = redis_command(port, &["CLIENT", "KILL", "TYPE", "normal"]);
                if matches!(killed, Ok(Resp::Integer(n)) if n > 0) {
                    kills += 1;
                }
            }
            kills
        })
    };
    let kills = killer.await.expect("killer");
    // Let checks succeed again for a while, so the load ends on a working connection.
    load.admits(200, "checks to succeed again").await;
    let total = load.stop().await;
    let give_backs = give_backs_settled(&app).await;
    println!(
        "connection kills: {kills}; checks {}, allowed {}, errors {}; give-backs {give_backs:?}",
        total.checks,
        total.admitted(),
        total.errors
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

/// A forced Sentinel failover under load. What limitd controls is asserted: nothing is counted
/// that was not admitted (a check reported as an error is given back on the promoted master).
/// What Redis's asynchronous replication loses (writes acknowledged by the old master after the
/// replica was promoted) is measured and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_under_load_counts_nothing_that_was_not_admitted() {
    // A master that loses its last replica refuses writes at once, so nothing is written to the
    // old master once its replica is promoted. (Shipped topologies set this on every node and
    // have two replicas, so a promoted one still has the other; here the one replica is
    // promoted, so only the first master has it.)
    let (master, replica, sentinel) = crate::sentinel::master_replica_sentinel_with(&[
        "--min-replicas-to-write",
        "1",
        "--min-replicas-max-lag",
        "10",
    ])
    .await;
    let state = limitd::AppState::connect(&crate::support::config(&[(
        "SENTINEL_HOSTS",
        format!("127.0.0.1:{}", sentinel.port),
    )]))
    .await
    .expect("store");
    let app = limitd::app(state.clone());
    let (probe, _) = batch(0, 1, None);
    eventually_async(Duration::from_secs(10), || async {
        matches!(post_v2(&app, &probe).await[0], CheckResult::Allowed { .. }).then_some(())
    })
    .await
    .expect("checks through sentinel");
    let mut total_probes = 0;
    let load = Load::start(&app);
    load.admits(200, "checks on the first master").await;
    assert_eq!(
        sentinel.command(&["SENTINEL", "FAILOVER", "mymaster"]),
        Ok(Resp::Simple("OK".into())),
        "SENTINEL FAILOVER refused"
    );
    let started = Instant::now();
    let promoted = format!("127.0.0.1:{}", replica.port);
    eventually_async(Duration::from_secs(20), || async {
        replica
            .command(&["ROLE"])
            .ok()
            .filter(|r| r.to_string().starts_with("master"))
            .map(|_| ())
    })
    .await
    .expect("the replica to be promoted");
    let promotion = started.elapsed();
    eventually_async(Duration::from_secs(20), || async {
        (state.store().master_addr().as_deref() == Some(promoted.as_str())).then_some(())
    })
    .await
    .expect("limitd to follow the failover");
    println!(
        "promoted after {promotion:?}, limitd followed after {:?}",
        started.elapsed()
    );
    // Admissions on the promoted master (once the old one replicates from it), then stop.
    let (probe, _) = batch(1, 1, None);
    eventually_async(Duration::from_secs(20), || async {
        matches!(post_v2(&app, &probe).await[0], CheckResult::Allowed { .. }).then_some(())
    })
    .await
    .expect("checks on the promoted master");
    total_probes += 1;
    load.admits(200, "checks of the load on the promoted master")
        .await;
    let mut total = load.stop().await;
    // The probes' admissions count too.
    total.allowed[0] += 1;
    total.allowed[1] += total_probes;
    let give_backs = give_backs_settled(&app).await;
    let counted: Vec<u64> = (0..KEYS).map(|k| stored(replica.port, k)).collect();
    assert!(
        counted.iter().sum::<u64>() > 0,
        "nothing counted on the promoted master"
    );
    let lost: u64 = total.admitted() - counted.iter().sum::<u64>().min(total.admitted());
    println!(
        "forced failover: checks {}, allowed {}, errors {}, counted on the promoted master {}, \
         lost by replication {lost}; give-backs {give_backs:?}",
        total.checks,
        total.admitted(),
        total.errors,
        counted.iter().sum::<u64>()
    );
    assert_eq!(give_backs["failed"], 0.0);
    for (k, (counted, admitted)) in counted.iter().zip(total.allowed).enumerate() {
        assert!(
            *counted <= admitted,
            "key {k}: {counted} counted, only {admitted} admitted"
        );
    }
    drop(master);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_past_the_batch_timeout_are_reported_and_then_given_back() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    // A frozen Redis: the scripts go out and wait in its socket, to run when it thaws.
    redis.signal(libc::SIGSTOP);
    let (body, _) = batch(0, 4, Some(200));
    let results = post_v2(&app, &body).await;
    redis.signal(libc::SIGCONT);
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
