//! Master discovery while sentinels are down: refused, and frozen (accepting connections but
//! answering nothing, the case redis-rs would wait on forever without timeouts).

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use limitd::AppState;

use crate::support::{config, free_port, post_check, until_checks_work, RedisProcess};

#[tokio::test]
async fn the_master_is_found_with_one_sentinel_frozen_and_one_refusing() {
    let master = RedisProcess::server(&[]);
    let frozen = RedisProcess::sentinel(master.port);
    let healthy = RedisProcess::sentinel(master.port);
    frozen.signal("-STOP");
    // The frozen sentinel first, then a closed port, then the one that answers.
    let hosts = format!(
        "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        frozen.port,
        free_port(),
        healthy.port
    );
    let started = Instant::now();
    let state = AppState::connect(&config(&[("SENTINEL_HOSTS", hosts)]))
        .await
        .unwrap();
    // A frozen sentinel costs at most redis-rs' response timeout (500 ms) per resolution,
    // bounded again by limitd's own resolution timeout.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "connect took {:?}",
        started.elapsed()
    );
    let app = limitd::app(state.clone());
    until_checks_work(
        &app,
        r#"{"hits":[{"key":"disc:k","limit":3,"window_ms":60000}]}"#,
        Duration::from_secs(10),
        "a check with a sentinel frozen",
    )
    .await;
    assert_eq!(
        state.store().master_addr(),
        Some(format!("127.0.0.1:{}", master.port))
    );
    frozen.signal("-CONT");
}

#[tokio::test]
async fn with_every_sentinel_frozen_connect_returns_and_checks_fail_fast() {
    let master = RedisProcess::server(&[]);
    let sentinel = RedisProcess::sentinel(master.port);
    sentinel.signal("-STOP");
    let started = Instant::now();
    let state = AppState::connect(&config(&[(
        "SENTINEL_HOSTS",
        format!("127.0.0.1:{}", sentinel.port),
    )]))
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "connect took {:?}",
        started.elapsed()
    );
    let app = limitd::app(state);
    let started = Instant::now();
    let (status, text) = post_check(
        &app,
        r#"{"hits":[{"key":"disc:k","limit":3,"window_ms":60000}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(started.elapsed() < Duration::from_millis(500));

    // Thawed, the sentinel answers again and the store connects by itself.
    sentinel.signal("-CONT");
    until_checks_work(
        &app,
        r#"{"hits":[{"key":"disc:k","limit":3,"window_ms":60000}]}"#,
        Duration::from_secs(10),
        "checks after the thaw",
    )
    .await;
}
