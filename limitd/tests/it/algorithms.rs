//! The counting algorithms (fixed window, sliding window, GCRA), shadow hits and mixed checks
//! against a real Redis.
//!
//! Two kinds of test. Redis `TIME` cannot be faked, so the exact math is compared with the Rust
//! model ([`crate::model`]) by running a *test-only copy* of the script whose one clock line
//! reads the time from a last `ARGV` instead (production's script has no such argument: callers
//! never supply time). The real script, through the app, is then tested for what does not depend
//! on the exact millisecond: bursts, denials, recovery after `retry_after_ms`, carry-over into the
//! next window, shadow hits, all-or-nothing across algorithms, validation, expiry.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::Router;
use protocol::{Algorithm, CheckRequest, CheckResponse, Hit};
use redis::aio::MultiplexedConnection;

use crate::model::{hit, Model};
use e2e::{RedisProcess, Resp};

use crate::support::{app_for_redis, post_check, redis_connection};

// ---------------------------------------------------------------------------------------------
// The script's math against the model, at chosen times.

/// The script with its clock line replaced by "the last ARGV": for these tests only.
fn test_clock_script() -> redis::Script {
    const CLOCK: &str = "local now = clock_ms()";
    let source = limitd::script::SOURCE;
    assert_eq!(source.matches(CLOCK).count(), 1, "the script's clock line");
    redis::Script::new(&source.replace(CLOCK, "local now = tonumber(ARGV[#ARGV])"))
}

/// The script's answer to `hits` at `now_ms`.
async fn script_at(
    script: &redis::Script,
    connection: &mut MultiplexedConnection,
    now_ms: u64,
    hits: &[Hit],
) -> CheckResponse {
    static RECEIPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let receipt = RECEIPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut invocation = script.prepare_invoke();
    invocation.key(format!("rl:r1:{{model}}:{receipt}"));
    for hit in hits {
        invocation.key(limitd::keys::counter_key(hit));
    }
    // Mode 0 (check) and the receipt's lifetime, as limitd sends them.
    invocation.arg(0).arg(60_000);
    for hit in hits {
        for value in limitd::script::hit_arguments(hit) {
            invocation.arg(value);
        }
    }
    invocation.arg(now_ms);
    let request = CheckRequest {
        hits: hits.to_vec(),
    };
    protocol::bounds::validate_check(&request).expect("a valid check");
    let reply: Vec<i64> = invocation
        .invoke_async(connection)
        .await
        .expect("script runs");
    limitd::script::decode_reply(&request, &reply).expect("a well-formed reply")
}

/// A time in the future of the real clock, so the keys' real expiry (PEXPIREAT at model times)
/// never removes them during the test; the script must then read stale states as empty itself.
fn start_ms() -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    u64::try_from(real).expect("ms fit u64") + 10 * 24 * 3_600_000
}

/// Runs `steps` random checks over the `rules` (hit templates, one key each) and compares every
/// answer with the model's. Costs range over 0..=limit+1 (and powers of ten for large limits);
/// time steps favour window boundaries.
async fn compare_with_model(prefix: &str, rules: &[Hit], steps: usize) {
    let redis = RedisProcess::server(&[]);
    let mut connection = redis_connection(&redis).await;
    let script = test_clock_script();
    let mut model = Model::default();
    let mut rng = testrng::rng(&format!("compare_with_model({prefix})"));
    let mut now = start_ms();
    for step in 0..steps {
        let mut hits = Vec::new();
        for _ in 0..=rng.u64(..3) {
            let rule = &rules[usize::try_from(rng.u64(..rules.len() as u64)).unwrap()];
            let cost = match rng.u64(..4) {
                0 => 0,
                1 => 10u64
                    .pow(u32::try_from(rng.u64(..16)).unwrap())
                    .min(rule.limit + 1),
                _ => rng.u64(..rule.limit.min(4) + 2),
            };
            hits.push(Hit {
                key: format!("{prefix}:{}", rule.key),
                cost,
                shadow: rng.u64(..4) == 0,
                ..rule.clone()
            });
        }
        let window = hits[0].window_ms;
        now += match rng.u64(..6) {
            0 => 0,
            1 => 1,
            // To the next boundary of this window, or just before it.
            2 => window - now % window,
            3 => (window - now % window).saturating_sub(1),
            4 => rng.u64(..window / 4 + 1),
            _ => rng.u64(..window + window / 2),
        };
        let expected = model.check(now, &hits);
        let actual = script_at(&script, &mut connection, now, &hits).await;
        assert_eq!(actual, expected, "step {step} at {now}: {hits:#?}");
    }
}

fn with_burst(hit: Hit, burst: u64) -> Hit {
    Hit {
        burst: Some(burst),
        ..hit
    }
}

#[tokio::test]
async fn the_script_matches_the_model_on_small_windows() {
    let rules = [
        hit("f5", Algorithm::FixedWindow, 5, 100, 1),
        hit("f1", Algorithm::FixedWindow, 1, 7, 1),
        hit("s5", Algorithm::SlidingWindow, 5, 100, 1),
        hit("s7", Algorithm::SlidingWindow, 7, 1_000, 1),
        hit("s1", Algorithm::SlidingWindow, 1, 3, 1),
        hit("g3", Algorithm::Gcra, 3, 1_000, 1),
        with_burst(hit("g10", Algorithm::Gcra, 10, 1_000, 1), 4),
        with_burst(hit("g7", Algorithm::Gcra, 7, 60, 1), 20),
        with_burst(hit("g1", Algorithm::Gcra, 1, 100, 1), 1),
    ];
    compare_with_model("small", &rules, 2_500).await;
}

#[tokio::test]
async fn the_script_matches_the_model_with_large_numbers() {
    // Sliding-window products prev * e reach 1e15 * 3e10, far past 2^53; GCRA buckets near the
    // bound on ticks.
    let rules = [
        hit(
            "sy",
            Algorithm::SlidingWindow,
            1_000_000_000_000_000,
            protocol::bounds::MAX_WINDOW_MS,
            1,
        ),
        hit("sd", Algorithm::SlidingWindow, 999_999_937, 86_400_000, 1),
        hit(
            "fy",
            Algorithm::FixedWindow,
            1_000_000_000_000_000,
            86_400_000,
            1,
        ),
        hit("gd", Algorithm::Gcra, 1_000_000_000, 86_400_000, 1),
        with_burst(
            hit("gp", Algorithm::Gcra, 999_983, 3_600_000, 1),
            1_000_000_000,
        ),
        with_burst(hit("gm", Algorithm::Gcra, 1_000_000_000_000_000, 1, 1), 7),
    ];
    compare_with_model("large", &rules, 1_500).await;
}

#[tokio::test]
async fn the_script_is_exact_at_the_edge_of_large_limits() {
    // Random checks rarely land exactly on a limit, so probe the edge on purpose: on a fresh key,
    // charge a random amount, move on a random time (often into the next window, where that
    // amount is weighted), read what is left, then ask for exactly that (fits) or one more (does
    // not), and check just before and at the retry time. Every answer is compared with the
    // model; the products here (counts near 1e15 times offsets near 3e10 ms) pass 2^53.
    let redis = RedisProcess::server(&[]);
    let mut connection = redis_connection(&redis).await;
    let script = test_clock_script();
    let mut model = Model::default();
    let mut rng = testrng::rng("the_script_is_exact_at_the_edge_of_large_limits");
    let rules = [
        hit(
            "sy",
            Algorithm::SlidingWindow,
            1_000_000_000_000_000,
            protocol::bounds::MAX_WINDOW_MS,
            1,
        ),
        hit("sd", Algorithm::SlidingWindow, 999_999_937, 86_400_000, 1),
        hit("s3", Algorithm::SlidingWindow, 3, 1_000, 1),
        hit("gd", Algorithm::Gcra, 1_000_000_000, 86_400_000, 1),
        with_burst(
            hit("gp", Algorithm::Gcra, 999_983, 3_600_000, 1),
            1_000_000_000,
        ),
        with_burst(hit("g3", Algorithm::Gcra, 3, 1_000, 1), 2),
    ];
    let mut now = start_ms();
    let mut compare = async |now: u64, hit: &Hit, model: &mut Model| {
        let expected = model.check(now, std::slice::from_ref(hit));
        let actual = script_at(&script, &mut connection, now, std::slice::from_ref(hit)).await;
        assert_eq!(actual, expected, "at {now}: {hit:?}");
        actual.hits[0].clone()
    };
    for probe in 0..400 {
        let rule = &rules[probe % rules.len()];
        let key = format!("edge:{probe}");
        let w = rule.window_ms;
        let fill = Hit {
            key: key.clone(),
            cost: 1 + rng.u64(..rule.limit.min(rule.burst.unwrap_or(u64::MAX))),
            ..rule.clone()
        };
        now += rng.u64(..w);
        compare(now, &fill, &mut model).await;
        now += rng.u64(..2 * w);
        let read = Hit {
            cost: 0,
            ..fill.clone()
        };
        let left = compare(now, &read, &mut model).await.remaining;
        let ask = Hit {
            cost: (left + rng.u64(..2)).min(protocol::bounds::MAX_UNITS),
            ..fill.clone()
        };
        let answer = compare(now, &ask, &mut model).await;
        if !answer.allowed && ask.cost <= rule.limit {
            let retry = answer.retry_after_ms;
            compare(now + retry - 1, &ask, &mut model).await;
            compare(now + retry, &ask, &mut model).await;
            now += retry;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The real script, through the app, in real time.

async fn check(app: &Router, hits: &[Hit]) -> CheckResponse {
    let body = serde_json::to_string(&CheckRequest {
        hits: hits.to_vec(),
    })
    .unwrap();
    let (status, text) = post_check(app, &body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).expect("a CheckResponse")
}

#[tokio::test]
async fn gcra_admits_a_burst_then_one_per_interval() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    // 10 per second: one unit every 100 ms, at most 5 at once.
    let h = with_burst(hit("gcra:burst", Algorithm::Gcra, 10, 1_000, 1), 5);
    let mut admitted = 0u64;
    let started = Instant::now();
    let denied = loop {
        let response = check(&app, std::slice::from_ref(&h)).await;
        if !response.allowed {
            break response.hits[0].clone();
        }
        admitted += 1;
        assert!(admitted <= 20, "no denial after {admitted} checks");
    };
    // 5 from the full bucket, plus one per 100 ms the loop took.
    let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap();
    assert!(
        (5..=5 + elapsed / 100).contains(&admitted),
        "{admitted} in {elapsed} ms"
    );
    assert!(
        denied.retry_after_ms > 0 && denied.retry_after_ms <= 100,
        "{denied:?}"
    );
    assert_eq!(denied.remaining, 0);
    // Less than one unit in the bucket: full again within 5 intervals.
    assert!(
        denied.reset_ms > 400 && denied.reset_ms <= 500,
        "{denied:?}"
    );

    tokio::time::sleep(Duration::from_millis(denied.retry_after_ms)).await;
    let response = check(&app, std::slice::from_ref(&h)).await;
    assert!(response.allowed, "{response:?}");

    // A cost over the burst never fits; it is told to wait one window.
    let big = Hit {
        cost: 6,
        ..h.clone()
    };
    let response = check(&app, &[big]).await;
    assert!(!response.allowed);
    assert_eq!(response.hits[0].retry_after_ms, 1_000);

    // The key expires when the bucket is full again.
    let ttl = pttl(&redis, &limitd::keys::counter_key(&h));
    assert!(ttl > 0 && ttl <= 500, "{ttl}");
}

#[tokio::test]
async fn gcra_retry_after_is_the_interval_times_the_missing_units() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    // 4 per 2 s: an interval of 500 ms; a burst of 4 spent at once.
    let h = hit("gcra:retry", Algorithm::Gcra, 4, 2_000, 4);
    assert!(check(&app, std::slice::from_ref(&h)).await.allowed);
    let three = Hit {
        cost: 3,
        ..h.clone()
    };
    let denied = check(&app, std::slice::from_ref(&three)).await.hits[0].clone();
    assert!(!denied.allowed);
    // Three units take 1500 ms to refill, less what has passed since the burst.
    assert!(
        denied.retry_after_ms > 1_000 && denied.retry_after_ms <= 1_500,
        "{denied:?}"
    );
    let one = check(
        &app,
        &[Hit {
            cost: 1,
            ..h.clone()
        }],
    )
    .await
    .hits[0]
        .clone();
    assert!(!one.allowed);
    assert!(
        one.retry_after_ms <= 500 && one.retry_after_ms > 300,
        "{one:?}"
    );
    tokio::time::sleep(Duration::from_millis(one.retry_after_ms)).await;
    assert!(check(&app, &[Hit { cost: 1, ..h }]).await.allowed);
}

/// Waits until at least `min_left_ms` of the current window remain: reads the time left (a
/// cost-0 check), sleeps to the window's end when too little is left, and reads again. Polling
/// at a fixed pace could stay in step with a short window and never land early in one.
async fn early_in_a_window(app: &Router, h: &Hit, min_left_ms: u64) -> u64 {
    let read = Hit {
        cost: 0,
        ..h.clone()
    };
    let mut seen = Vec::new();
    for _ in 0..5 {
        let left = check(app, std::slice::from_ref(&read)).await.hits[0].reset_ms;
        if left >= min_left_ms {
            return left;
        }
        seen.push(left);
        tokio::time::sleep(Duration::from_millis(left + 5)).await;
    }
    panic!("never {min_left_ms} ms left of a window; left at each read: {seen:?}");
}

#[tokio::test]
async fn sliding_window_denies_after_the_limit_and_carries_over_into_the_next_window() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let h = hit("sliding:carry", Algorithm::SlidingWindow, 10, 400, 1);
    early_in_a_window(&app, &h, 300).await;
    for i in 0..10 {
        let response = check(&app, std::slice::from_ref(&h)).await;
        assert!(response.allowed, "check {i}: {response:?}");
    }
    let denied = check(&app, std::slice::from_ref(&h)).await.hits[0].clone();
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 0);
    // Full in this window: the earliest fit is in the next one, once a tenth of the previous
    // window's weight has decayed: the window's end plus 40 ms.
    assert_eq!(denied.retry_after_ms, denied.reset_ms + 40, "{denied:?}");

    // Right after the boundary the previous 10 still weigh almost fully.
    tokio::time::sleep(Duration::from_millis(denied.reset_ms + 5)).await;
    let mut admitted = 0;
    for _ in 0..10 {
        admitted += u32::from(check(&app, std::slice::from_ref(&h)).await.allowed);
    }
    let left = check(
        &app,
        &[Hit {
            cost: 0,
            ..h.clone()
        }],
    )
    .await
    .hits[0]
        .reset_ms;
    assert!(
        left > 200,
        "the burst ran late into the window: {left} ms left"
    );
    // With e <= 200 of 400 ms elapsed the estimate is at least 10 * 0.5: at most 5 more fit.
    assert!(
        admitted <= 5,
        "{admitted} admitted right after the boundary"
    );

    // The key outlived the window of its writes (its count is this window's previous one): it
    // expires two windows after the start of the window of its last write.
    let ttl = pttl(&redis, &limitd::keys::counter_key(&h));
    assert!(ttl > 0 && ttl <= 800, "{ttl}");
}

#[tokio::test]
async fn sliding_window_admits_at_most_twice_the_limit_in_any_window() {
    // The two-counter estimate assumes the previous window's traffic was spread evenly; when it
    // was bunched at the window's end, a span of W straddling the boundary can hold up to (but
    // never) 2 * limit. Each aligned window alone never holds more than limit (the estimate is at
    // least the current count).
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let window = 300;
    let limit = 8;
    let h = hit("sliding:span", Algorithm::SlidingWindow, limit, window, 1);
    let started = Instant::now();
    let mut admissions = Vec::new();
    while started.elapsed() < Duration::from_millis(1_000) {
        let sent = started.elapsed();
        if check(&app, std::slice::from_ref(&h)).await.allowed {
            admissions.push(sent);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Steady traffic: about limit per window, never twice the limit (the bound is strict in
    // Redis time; the send times measured here may be off by a fraction of a millisecond, hence
    // the <=).
    let w = Duration::from_millis(window);
    for (i, first) in admissions.iter().enumerate() {
        let within = admissions[i..]
            .iter()
            .take_while(|t| **t < *first + w)
            .count();
        assert!(
            within <= 2 * usize::try_from(limit).unwrap(),
            "{within} admitted in {w:?} from {first:?}: {admissions:?}"
        );
    }
    let total = admissions.len();
    assert!(
        (24..=40).contains(&total),
        "{total} admitted in 1 s at 8 per 300 ms"
    );
}

#[tokio::test]
async fn shadow_hits_never_deny_and_are_consumed_only_when_they_fit() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ] {
        let real = hit(
            &format!("shadow:{algorithm:?}:real"),
            algorithm,
            3,
            60_000,
            1,
        );
        let shadow = Hit {
            shadow: true,
            ..hit(
                &format!("shadow:{algorithm:?}:watch"),
                algorithm,
                3,
                60_000,
                2,
            )
        };
        let read = |h: &Hit| Hit {
            cost: 0,
            shadow: false,
            ..h.clone()
        };

        // Fits: consumed.
        let response = check(&app, &[real.clone(), shadow.clone()]).await;
        assert!(response.allowed && response.hits[1].allowed, "{response:?}");
        assert_eq!(response.hits[1].remaining, 1);
        // Does not fit: reported denied, the check still allowed, and nothing charged to it.
        let response = check(&app, &[real.clone(), shadow.clone()]).await;
        assert!(response.allowed, "{algorithm:?}: {response:?}");
        assert!(!response.hits[1].allowed);
        assert!(response.hits[1].retry_after_ms > 0);
        assert_eq!(response.hits[1].remaining, 1, "{algorithm:?}");
        assert_eq!(check(&app, &[read(&real)]).await.hits[0].remaining, 1);
        // A one-unit shadow still fits and is consumed.
        let small = Hit {
            cost: 1,
            ..shadow.clone()
        };
        let response = check(&app, &[real.clone(), small]).await;
        assert!(response.allowed && response.hits[1].allowed);
        assert_eq!(check(&app, &[read(&shadow)]).await.hits[0].remaining, 0);
        assert_eq!(check(&app, &[read(&real)]).await.hits[0].remaining, 0);

        // A check denied by its real hit consumes none of its shadow hits, fitting or not.
        let fresh = Hit {
            key: format!("shadow:{algorithm:?}:fresh"),
            ..shadow.clone()
        };
        let response = check(&app, &[real.clone(), fresh.clone()]).await;
        assert!(!response.allowed && response.hits[1].allowed);
        assert_eq!(check(&app, &[read(&fresh)]).await.hits[0].remaining, 3);
        // A check of shadow hits only is always allowed.
        let response = check(
            &app,
            &[Hit {
                cost: 9,
                ..fresh.clone()
            }],
        )
        .await;
        assert!(response.allowed && !response.hits[0].allowed);
    }
}

#[tokio::test]
async fn a_mixed_check_is_all_or_nothing_across_algorithms() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let hits = [
        hit("mixed:fixed", Algorithm::FixedWindow, 5, 60_000, 1),
        hit("mixed:sliding", Algorithm::SlidingWindow, 5, 60_000, 1),
        hit("mixed:gcra", Algorithm::Gcra, 1, 60_000, 1),
    ];
    let first = check(&app, &hits).await;
    assert!(first.allowed, "{first:?}");
    let remaining: Vec<u64> = first.hits.iter().map(|h| h.remaining).collect();
    assert_eq!(remaining, [4, 4, 0]);

    let second = check(&app, &hits).await;
    assert!(!second.allowed);
    let allowed: Vec<bool> = second.hits.iter().map(|h| h.allowed).collect();
    assert_eq!(allowed, [true, true, false]);
    // Denied: every hit reports the untouched state.
    let remaining: Vec<u64> = second.hits.iter().map(|h| h.remaining).collect();
    assert_eq!(remaining, [4, 4, 0]);
    assert!(second.hits[2].retry_after_ms > 59_000 && second.hits[2].retry_after_ms <= 60_000);

    // Cost-0 reads fit even an empty bucket, and show the first check's charges only.
    let reads: Vec<Hit> = hits
        .iter()
        .map(|h| Hit {
            cost: 0,
            ..h.clone()
        })
        .collect();
    let read = check(&app, &reads).await;
    assert!(read.allowed, "{read:?}");
    let remaining: Vec<u64> = read.hits.iter().map(|h| h.remaining).collect();
    assert_eq!(remaining, [4, 4, 0]);
}

#[tokio::test]
async fn burst_and_repeated_keys_are_validated() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    for (body, reason) in [
        (
            r#"{"hits":[{"key":"v:a","limit":5,"window_ms":1000,"burst":2}]}"#,
            "hits[0].burst: is only allowed with algorithm gcra",
        ),
        (
            r#"{"hits":[{"key":"v:a","limit":5,"window_ms":1000,"algorithm":"gcra","burst":0}]}"#,
            "hits[0].burst: must be between 1",
        ),
        (
            r#"{"hits":[{"key":"v:a","limit":5,"window_ms":1000,"algorithm":"gcra","burst":1000000000000001}]}"#,
            "hits[0].burst: must be between 1",
        ),
        (
            r#"{"hits":[{"key":"v:a","limit":5,"window_ms":1000},
                        {"key":"v:a","limit":5,"window_ms":1000,"algorithm":"sliding_window"}]}"#,
            "hits[1] repeats the key of hits[0] with a different algorithm",
        ),
        (
            r#"{"hits":[{"key":"v:a","limit":5,"window_ms":1000,"algorithm":"gcra"},
                        {"key":"v:a","limit":5,"window_ms":1000,"algorithm":"gcra","burst":3}]}"#,
            "hits[1] repeats the key of hits[0] with a different burst",
        ),
        (
            r#"{"hits":[{"key":"v:a","limit":5,"window_ms":1000,"algorithm":"leaky"}]}"#,
            "",
        ),
    ] {
        let (status, text) = post_check(&app, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert!(text.contains(reason), "{text} lacks {reason}");
        assert!(!text.contains('\n'), "{text}");
    }
    assert_eq!(redis.command(&["DBSIZE"]), Ok(Resp::Integer(0)));
}

fn pttl(redis: &RedisProcess, key: &str) -> i64 {
    match redis.command(&["PTTL", key]) {
        Ok(Resp::Integer(ttl)) => ttl,
        other => panic!("PTTL {key}: {other:?}"),
    }
}
