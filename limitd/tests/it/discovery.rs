//! Master discovery while sentinels are down: refused, and frozen (accepting connections but
//! answering nothing, the case redis-rs would wait on forever without timeouts).

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use limitd::AppState;

use e2e::{free_port, RedisProcess};

use crate::support::{config, post_check, until_checks_work};

#[tokio::test]
async fn the_master_is_found_with_one_sentinel_frozen_and_one_refusing() {
    let master = RedisProcess::server(&[]);
    let frozen = RedisProcess::sentinel(master.port);
    let healthy = [
        RedisProcess::sentinel(master.port),
        RedisProcess::sentinel(master.port),
        RedisProcess::sentinel(master.port),
    ];
    frozen.signal(libc::SIGSTOP);
    // The frozen sentinel first, then a closed port, then three that answer: a majority of five.
    let hosts = format!(
        "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        frozen.port,
        free_port(),
        healthy[0].port,
        healthy[1].port,
        healthy[2].port
    );
    let started = Instant::now();
    let state = AppState::connect(&config(&[("SENTINEL_HOSTS", hosts)]))
        .await
        .unwrap();
    // A frozen sentinel costs at most redis-rs' response timeout per resolution, bounded again
    // by limitd's own resolution timeout (1.5 s): only a wait on the frozen one trips this.
    assert!(
        started.elapsed() < Duration::from_secs(20),
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
    frozen.signal(libc::SIGCONT);
}

#[tokio::test]
async fn one_answering_sentinel_of_three_is_not_trusted_until_a_second_answers() {
    let master = RedisProcess::server(&[]);
    let frozen = RedisProcess::sentinel(master.port);
    let healthy = RedisProcess::sentinel(master.port);
    frozen.signal(libc::SIGSTOP);
    let hosts = format!(
        "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        frozen.port,
        free_port(),
        healthy.port
    );
    let state = AppState::connect(&config(&[("SENTINEL_HOSTS", hosts)]))
        .await
        .unwrap();
    let app = limitd::app(state.clone());
    let body = r#"{"hits":[{"key":"disc:minority","limit":3,"window_ms":60000}]}"#;
    // The answering sentinel names the master from its configuration at once; one of three
    // is not a majority, so no master is trusted.
    let (status, text) = post_check(&app, body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(state.store().master_addr(), None);

    // Thawed, the second sentinel makes two of three, and checks work without a restart.
    frozen.signal(libc::SIGCONT);
    until_checks_work(
        &app,
        body,
        Duration::from_secs(10),
        "a check once two of three sentinels answer",
    )
    .await;
    assert_eq!(
        state.store().master_addr(),
        Some(format!("127.0.0.1:{}", master.port))
    );
}

#[tokio::test]
async fn with_every_sentinel_frozen_connect_returns_and_checks_fail_fast() {
    let master = RedisProcess::server(&[]);
    let sentinel = RedisProcess::sentinel(master.port);
    sentinel.signal(libc::SIGSTOP);
    let started = Instant::now();
    let state = AppState::connect(&config(&[(
        "SENTINEL_HOSTS",
        format!("127.0.0.1:{}", sentinel.port),
    )]))
    .await
    .unwrap();
    // Only waiting on the frozen sentinel for good trips this.
    assert!(
        started.elapsed() < Duration::from_secs(20),
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
    // Without a master a check fails at once; it never waits a resolution (1.5 s) out.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    // Thawed, the sentinel answers again and the store connects by itself.
    sentinel.signal(libc::SIGCONT);
    until_checks_work(
        &app,
        r#"{"hits":[{"key":"disc:k","limit":3,"window_ms":60000}]}"#,
        Duration::from_secs(10),
        "checks after the thaw",
    )
    .await;
}
