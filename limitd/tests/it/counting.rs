//! Counting semantics against a real Redis: limits, all-or-nothing, window reset, key hashing.

use std::time::Duration;

use axum::http::StatusCode;
use protocol::CheckResponse;

use e2e::{eventually_async, RedisProcess, Resp};

use crate::support::{app_for_redis, check_one, post_check, until_checks_work};

#[tokio::test]
async fn ten_are_allowed_then_the_eleventh_is_denied() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    for i in 0..10u64 {
        let response = check_one(&app, "ten:client", 10, 60_000, 1).await;
        assert!(response.allowed, "check {i}: {response:?}");
        let hit = &response.hits[0];
        assert_eq!(
            (hit.allowed, hit.limit, hit.remaining, hit.retry_after_ms),
            (true, 10, 9 - i, 0)
        );
        assert!(hit.reset_ms > 0 && hit.reset_ms <= 60_000, "{hit:?}");
    }
    let denied = check_one(&app, "ten:client", 10, 60_000, 1).await;
    assert!(!denied.allowed);
    let hit = &denied.hits[0];
    assert!(!hit.allowed);
    assert_eq!(hit.remaining, 0);
    assert!(
        hit.retry_after_ms > 0 && hit.retry_after_ms <= 60_000,
        "{hit:?}"
    );
    assert_eq!(hit.retry_after_ms, hit.reset_ms);
}

#[tokio::test]
async fn a_denied_check_consumes_none_of_its_hits() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    assert!(check_one(&app, "aon:tight", 1, 60_000, 1).await.allowed);

    let body = r#"{"hits":[
        {"key":"aon:loose","limit":5,"window_ms":60000},
        {"key":"aon:tight","limit":1,"window_ms":60000}]}"#;
    let (status, text) = post_check(&app, body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let response: CheckResponse = serde_json::from_str(&text).unwrap();
    assert!(!response.allowed);
    // The loose hit fitted on its own, but the check was denied: nothing consumed.
    assert!(response.hits[0].allowed);
    assert_eq!(response.hits[0].remaining, 5);
    assert_eq!(response.hits[0].retry_after_ms, 0);
    assert!(!response.hits[1].allowed);

    // Read the loose counter back with a cost-0 check: still untouched.
    let read = check_one(&app, "aon:loose", 5, 60_000, 0).await;
    assert_eq!(read.hits[0].remaining, 5);
}

#[tokio::test]
async fn an_allowed_check_consumes_all_its_hits_and_repeated_keys_add_up() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let body = r#"{"hits":[
        {"key":"sum:a","limit":10,"window_ms":60000,"cost":2},
        {"key":"sum:b","limit":10,"window_ms":60000,"cost":3},
        {"key":"sum:a","limit":10,"window_ms":60000,"cost":4}]}"#;
    let (status, text) = post_check(&app, body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let response: CheckResponse = serde_json::from_str(&text).unwrap();
    assert!(response.allowed);
    assert_eq!(
        check_one(&app, "sum:a", 10, 60_000, 0).await.hits[0].remaining,
        4
    );
    assert_eq!(
        check_one(&app, "sum:b", 10, 60_000, 0).await.hits[0].remaining,
        7
    );
}

#[tokio::test]
async fn a_cost_over_the_limit_never_passes_and_says_retry_after_one_window() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let response = check_one(&app, "big:cost", 3, 10_000, 4).await;
    assert!(!response.allowed);
    assert_eq!(response.hits[0].retry_after_ms, 10_000);
    assert_eq!(response.hits[0].remaining, 3);
}

#[tokio::test]
async fn the_counter_resets_when_its_window_ends() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    // The first check may land at the very end of a window, so exhaust then observe a denial
    // within one window before waiting for the reset.
    let denied = eventually_async(Duration::from_secs(3), || async {
        check_one(&app, "reset:client", 1, 300, 1).await;
        let second = check_one(&app, "reset:client", 1, 300, 1).await;
        (!second.allowed).then_some(second)
    })
    .await
    .expect("a denial inside one window");
    let retry = denied.hits[0].retry_after_ms;
    assert!(retry > 0 && retry <= 300, "{retry}");
    eventually_async(Duration::from_secs(3), || async {
        check_one(&app, "reset:client", 1, 300, 1)
            .await
            .allowed
            .then_some(())
    })
    .await
    .expect("the window to reset");
}

#[tokio::test]
async fn long_keys_are_stored_hashed_and_expire() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let key = "long:".repeat(100);
    assert!(check_one(&app, &key, 5, 60_000, 1).await.allowed);
    assert_eq!(
        check_one(&app, &key, 5, 60_000, 0).await.hits[0].remaining,
        4
    );

    let keys = redis
        .command(&["KEYS", "*"])
        .expect("redis answers")
        .to_string();
    let stored = keys
        .lines()
        .find(|l| l.starts_with("rl:v2:"))
        .unwrap_or_else(|| panic!("{keys}"));
    let hit = protocol::Hit {
        key: key.clone(),
        limit: 5,
        window_ms: 60_000,
        cost: 1,
        algorithm: protocol::Algorithm::FixedWindow,
        burst: None,
        shadow: false,
        lease: 0,
    };
    assert_eq!(stored, limitd::keys::counter_key(&hit));
    assert!(
        stored.starts_with("rl:v2:{h:") && stored.len() < 90,
        "{stored}"
    );
    let ttl = redis.command(&["PTTL", stored]);
    assert!(
        matches!(ttl, Ok(Resp::Integer(ttl)) if ttl > 0 && ttl <= 60_000),
        "{ttl:?}"
    );
}

#[tokio::test]
async fn malformed_bodies_get_400_and_touch_nothing() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    for body in [
        "{",
        r#"{"hits":[{"key":"bad:k","limit":0,"window_ms":1000}]}"#,
        r#"{"hits":[{"key":"bad:k","limit":"ten","window_ms":1000}]}"#,
        r#"{"hits":[{"key":"bad:k","limit":1,"window":1000}]}"#,
    ] {
        let (status, text) = post_check(&app, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
    }
    assert_eq!(redis.command(&["DBSIZE"]), Ok(Resp::Integer(0)));
}

#[tokio::test]
async fn readyz_is_200_with_redis() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let request = axum::http::Request::get("/readyz")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(crate::support::send(&app, request).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_restarted_redis_is_reconnected_to() {
    let mut redis = RedisProcess::server(&[]);
    let port = redis.port;
    let (app, _) = app_for_redis(port).await;
    assert!(check_one(&app, "restart:k", 5, 60_000, 1).await.allowed);
    redis.kill();
    let (status, _) = post_check(
        &app,
        r#"{"hits":[{"key":"restart:k","limit":5,"window_ms":60000}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let _again = RedisProcess::server_on(port);
    until_checks_work(
        &app,
        r#"{"hits":[{"key":"restart:k","limit":5,"window_ms":60000}]}"#,
        Duration::from_secs(5),
        "checks to work again",
    )
    .await;
}

#[tokio::test]
async fn a_frozen_redis_times_out_with_503_then_recovers() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let body = r#"{"hits":[{"key":"frozen:k","limit":5,"window_ms":60000}]}"#;
    assert_eq!(post_check(&app, body).await.0, StatusCode::OK);

    redis.signal(libc::SIGSTOP);
    let started = std::time::Instant::now();
    let (status, text) = post_check(&app, body).await;
    let elapsed = started.elapsed();
    redis.signal(libc::SIGCONT);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    // The response timeout is 250 ms by default; allow for a slow test machine.
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");

    eventually_async(Duration::from_secs(5), || async {
        (post_check(&app, body).await.0 == StatusCode::OK).then_some(())
    })
    .await
    .expect("checks to work again");
}
