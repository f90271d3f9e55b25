//! Redis AUTH: `REDIS_PASSWORD` for the data nodes, `SENTINEL_PASSWORD` for the sentinels.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use limitd::AppState;

use crate::metrics::{scrape, value};
use e2e::eventually_async;
use e2e::redis::{RedisOptions, RedisProcess, SentinelOptions};

use crate::support::{config, post_check, send};

const DATA_PASSWORD: &str = "data-secret";
const SENTINEL_PASSWORD: &str = "sentinel-secret";
const BODY: &str = r#"{"hits":[{"key":"auth:k","limit":100,"window_ms":60000}]}"#;

/// A data node that requires `password`.
fn protected_server(password: &str) -> RedisProcess {
    RedisProcess::launch(&RedisOptions::server().password(password))
}

/// A sentinel monitoring `mymaster` at `master_port`, authenticating to it with
/// [`DATA_PASSWORD`], and requiring `password` from its own clients if given.
fn sentinel(master_port: u16, password: Option<&str>) -> RedisProcess {
    let mut options = RedisOptions::sentinel(SentinelOptions {
        auth_pass: Some(DATA_PASSWORD.to_owned()),
        ..SentinelOptions::watching(master_port)
    });
    if let Some(password) = password {
        options = options.password(password);
    }
    RedisProcess::launch(&options)
}

async fn app(vars: &[(&str, String)]) -> Router {
    let state = AppState::connect(&config(vars)).await.expect("store");
    limitd::app(state)
}

async fn readyz(app: &Router) -> StatusCode {
    send(app, Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .0
}

async fn works_eventually(app: &Router, what: &str) {
    eventually_async(Duration::from_secs(10), || async {
        (post_check(app, BODY).await.0 == StatusCode::OK).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(readyz(app).await, StatusCode::OK);
}

/// Checks and readiness answer 503, and the reason is counted as an auth error.
async fn refused(app: &Router) {
    eventually_async(Duration::from_secs(10), || async {
        let text = scrape(app).await;
        (value(&text, r#"limitd_redis_errors_total{kind="auth"}"#)? >= 1.0).then_some(())
    })
    .await
    .expect("an auth error");
    let (status, text) = post_check(app, BODY).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(text, r#"{"error":"redis unavailable"}"#);
    assert_eq!(readyz(app).await, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_protected_redis_needs_redis_password() {
    let redis = protected_server(DATA_PASSWORD);
    let url = format!("redis://127.0.0.1:{}", redis.port);

    let with = app(&[
        ("REDIS_URL", url.clone()),
        ("REDIS_PASSWORD", DATA_PASSWORD.into()),
    ])
    .await;
    works_eventually(&with, "a check with REDIS_PASSWORD").await;

    let without = app(&[("REDIS_URL", url.clone())]).await;
    refused(&without).await;
    let wrong = app(&[("REDIS_URL", url), ("REDIS_PASSWORD", "guess".into())]).await;
    refused(&wrong).await;
}

#[tokio::test]
async fn open_sentinels_in_front_of_protected_data_nodes_are_refused_at_start() {
    // An open sentinel can be told to monitor any server, and limitd would send that server
    // REDIS_PASSWORD: limitd refuses the combination instead of starting with it.
    let redis = protected_server(DATA_PASSWORD);
    let sentinel = sentinel(redis.port, None);
    let hosts = format!("127.0.0.1:{}", sentinel.port);
    let err = limitd::Config::from_lookup(|name| match name {
        "SENTINEL_HOSTS" => Some(hosts.clone()),
        "REDIS_PASSWORD" => Some(DATA_PASSWORD.into()),
        _ => None,
    })
    .unwrap_err();
    assert_eq!(err.var, "SENTINEL_PASSWORD", "{err}");
}

#[tokio::test]
async fn protected_sentinels_need_sentinel_password() {
    let redis = protected_server(DATA_PASSWORD);
    let sentinel = sentinel(redis.port, Some(SENTINEL_PASSWORD));
    let hosts = format!("127.0.0.1:{}", sentinel.port);

    let with = app(&[
        ("SENTINEL_HOSTS", hosts.clone()),
        ("REDIS_PASSWORD", DATA_PASSWORD.into()),
        ("SENTINEL_PASSWORD", SENTINEL_PASSWORD.into()),
    ])
    .await;
    works_eventually(&with, "a check through a protected sentinel").await;

    // The data nodes' password is not the sentinels'.
    let wrong = app(&[
        ("SENTINEL_HOSTS", hosts),
        ("REDIS_PASSWORD", DATA_PASSWORD.into()),
        ("SENTINEL_PASSWORD", "not-the-sentinels-password".into()),
    ])
    .await;
    refused(&wrong).await;
}
