//! `GET /metrics` read back after real checks against a real Redis.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;

use e2e::{eventually_async, RedisProcess};

use crate::support::{app_for_redis, check_one, config, post_check, send};

/// The text of `GET /metrics`.
pub async fn scrape(app: &Router) -> String {
    let (status, text) = send(app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    text
}

/// The value of the sample whose name and labels are exactly `series`.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_checks_hits_and_name_the_master() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;

    assert!(check_one(&app, "met:a", 2, 60_000, 1).await.allowed);
    assert!(check_one(&app, "met:a", 2, 60_000, 1).await.allowed);
    // Two hits: the loose one fits, the tight one does not, so the check is denied.
    let (status, text) = post_check(
        &app,
        r#"{"hits":[{"key":"met:b","limit":5,"window_ms":60000},{"key":"met:a","limit":2,"window_ms":60000}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.starts_with(r#"{"allowed":false"#), "{text}");
    assert_eq!(post_check(&app, "{").await.0, StatusCode::BAD_REQUEST);

    let text = scrape(&app).await;
    let get = |series: &str| value(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
    assert_eq!(get(r#"limitd_checks_total{result="allowed"}"#), 2.0);
    assert_eq!(get(r#"limitd_checks_total{result="denied"}"#), 1.0);
    assert_eq!(get(r#"limitd_checks_total{result="error"}"#), 0.0);
    assert_eq!(get(r#"limitd_hits_total{result="allowed"}"#), 3.0);
    assert_eq!(get(r#"limitd_hits_total{result="denied"}"#), 1.0);
    assert_eq!(get("limitd_check_duration_seconds_count"), 3.0);
    assert_eq!(
        get(r#"limitd_check_duration_seconds_bucket{le="+Inf"}"#),
        3.0
    );
    let sum = get("limitd_check_duration_seconds_sum");
    assert!(sum > 0.0 && sum < 3.0, "{sum}");
    assert_eq!(get(r#"limitd_bad_requests_total{status="400"}"#), 1.0);
    let master = format!(r#"limitd_redis_master{{addr="127.0.0.1:{}"}}"#, redis.port);
    assert_eq!(get(&master), 1.0);
    assert_eq!(text.matches("limitd_redis_master{").count(), 1, "{text}");
    assert_eq!(get("limitd_ready"), 1.0);
    assert_eq!(get("limitd_reconnects_total"), 0.0);
    assert_eq!(get("limitd_failovers_total"), 0.0);
    for kind in ["timeout", "io", "readonly", "noscript", "auth", "other"] {
        let series = format!(r#"limitd_redis_errors_total{{kind="{kind}"}}"#);
        assert_eq!(get(&series), 0.0, "{series}");
    }
}

#[tokio::test]
async fn a_reconnect_to_the_same_address_is_not_a_failover() {
    let mut redis = RedisProcess::server(&[]);
    let port = redis.port;
    let (app, _) = app_for_redis(port).await;
    let body = r#"{"hits":[{"key":"met:restart","limit":5,"window_ms":60000}]}"#;
    assert_eq!(post_check(&app, body).await.0, StatusCode::OK);

    redis.kill();
    assert_eq!(
        post_check(&app, body).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let text = scrape(&app).await;
    assert_eq!(
        value(&text, r#"limitd_checks_total{result="error"}"#),
        Some(1.0)
    );
    assert!(
        value(&text, r#"limitd_redis_errors_total{kind="io"}"#).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(value(&text, "limitd_ready"), Some(0.0), "{text}");

    let _again = RedisProcess::server_on(port);
    eventually_async(Duration::from_secs(5), || async {
        (post_check(&app, body).await.0 == StatusCode::OK).then_some(())
    })
    .await
    .expect("checks to work again");
    let text = scrape(&app).await;
    assert_eq!(value(&text, "limitd_reconnects_total"), Some(1.0), "{text}");
    assert_eq!(value(&text, "limitd_failovers_total"), Some(0.0), "{text}");
    let master = format!(r#"limitd_redis_master{{addr="127.0.0.1:{port}"}}"#);
    assert_eq!(value(&text, &master), Some(1.0), "{text}");
    assert_eq!(value(&text, "limitd_ready"), Some(1.0), "{text}");
}

#[tokio::test]
async fn a_frozen_redis_is_reported_unready_without_holding_the_scrape() {
    let redis = RedisProcess::server(&[]);
    // A response timeout far longer than the readiness probe's own bound.
    let state = limitd::AppState::connect(&config(&[
        ("REDIS_URL", format!("redis://127.0.0.1:{}", redis.port)),
        ("REDIS_RESPONSE_TIMEOUT_MS", "30000".to_owned()),
    ]))
    .await
    .expect("store");
    let app = limitd::app(state);
    assert_eq!(value(&scrape(&app).await, "limitd_ready"), Some(1.0));

    redis.signal(libc::SIGSTOP);
    let started = Instant::now();
    let text = scrape(&app).await;
    let readyz = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    let waited = started.elapsed();
    redis.signal(libc::SIGCONT);
    assert_eq!(value(&text, "limitd_ready"), Some(0.0), "{text}");
    assert_eq!(readyz.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        waited < Duration::from_secs(30),
        "the scrape and /readyz waited out the response timeout ({waited:?}), not the probe's bound"
    );

    eventually_async(Duration::from_secs(10), || async {
        (value(&scrape(&app).await, "limitd_ready") == Some(1.0)).then_some(())
    })
    .await
    .expect("limitd_ready to be 1 again");
}
