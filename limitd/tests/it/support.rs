//! What limitd's tests alone need: the app built in process, and checks posted to it. Real
//! Redis processes, ports, polling and scratch directories come from the harness the
//! end-to-end suite uses too (the `e2e` crate).

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use e2e::{eventually_async, RedisProcess};
use http_body_util::BodyExt;
use limitd::{AppState, Config};
use redis::aio::MultiplexedConnection;
use tower::ServiceExt;

/// A connection of the tests' own to `redis`, to run commands or the script directly.
pub async fn redis_connection(redis: &RedisProcess) -> MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{}", redis.port))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection")
}

/// A configuration from `vars` (as environment variables would give them).
pub fn config(vars: &[(&str, String)]) -> Config {
    Config::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .expect("valid test configuration")
}

/// The app against the single Redis on `port`.
pub async fn app_for_redis(port: u16) -> (Router, AppState) {
    let state = AppState::connect(&config(&[(
        "REDIS_URL",
        format!("redis://127.0.0.1:{port}"),
    )]))
    .await
    .expect("store");
    (limitd::app(state.clone()), state)
}

/// Sends one request to `app`; returns the status and the body as text.
pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("infallible router");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// `POST /v1/check` (the deprecated single-check endpoint, whose plain statuses suit tests of
/// counting) with a JSON body.
pub async fn post_check(app: &Router, body: &str) -> (StatusCode, String) {
    let request = Request::post(protocol::v1::CHECK_PATH)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request");
    send(app, request).await
}

/// Polls, for at most `within`, until `POST /v1/check` of `body` answers `200`:
/// Redis is reachable (again) through the store.
pub async fn until_checks_work(app: &Router, body: &str, within: Duration, what: &str) {
    eventually_async(within, || async {
        (post_check(app, body).await.0 == StatusCode::OK).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// `POST /v1/check` of one hit, expecting `200`.
pub async fn check_one(
    app: &Router,
    key: &str,
    limit: u64,
    window_ms: u64,
    cost: u64,
) -> protocol::CheckResponse {
    let body = format!(
        r#"{{"hits":[{{"key":"{key}","limit":{limit},"window_ms":{window_ms},"cost":{cost}}}]}}"#
    );
    let (status, text) = post_check(app, &body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).expect("a CheckResponse")
}
