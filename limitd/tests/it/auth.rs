//! Redis AUTH: `REDIS_PASSWORD` for the data nodes, `SENTINEL_PASSWORD` for the sentinels.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use limitd::AppState;

use crate::metrics::{scrape, value};
use crate::support::{
    config, eventually, free_port, post_check, redis_sentinel, redis_server, resp, send, TempDir,
};

const DATA_PASSWORD: &str = "data-secret";
const SENTINEL_PASSWORD: &str = "sentinel-secret";
const BODY: &str = r#"{"hits":[{"key":"auth:k","limit":100,"window_ms":60000}]}"#;

/// A `redis-server` or `redis-sentinel` that may require a password, killed on drop.
///
/// `support::RedisProcess` probes readiness with an unauthenticated `PING`, which a protected
/// server answers `-NOAUTH`; this one takes that answer as "up" too.
struct Protected {
    port: u16,
    child: Child,
    _dir: TempDir,
}

impl Protected {
    fn server(password: &str) -> Self {
        let dir = TempDir::new("auth-redis");
        let port = free_port();
        let child = Command::new(redis_server())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
            ])
            .args(["--dir", &dir.path().display().to_string()])
            .args([
                "--logfile",
                &dir.path().join("redis.log").display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        Self::ready(port, child, dir)
    }

    /// A sentinel monitoring `mymaster` at `master_port`, authenticating to it with
    /// `auth_pass`, and requiring `password` from its own clients if given.
    fn sentinel(master_port: u16, auth_pass: &str, password: Option<&str>) -> Self {
        let dir = TempDir::new("auth-sentinel");
        let port = free_port();
        let mut text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n\
             sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
             sentinel auth-pass mymaster {auth_pass}\n\
             sentinel down-after-milliseconds mymaster 1000\n",
            dir = dir.path().display()
        );
        if let Some(password) = password {
            text.push_str(&format!("requirepass {password}\n"));
        }
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(&conf, text).expect("write sentinel.conf");
        let child = Command::new(redis_sentinel())
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-sentinel");
        Self::ready(port, child, dir)
    }

    fn ready(port: u16, mut child: Child, dir: TempDir) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = resp(port, &["PING"])
                .is_some_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"));
            if up {
                return Self {
                    port,
                    child,
                    _dir: dir,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis process on port {port} exited at start-up: {status}");
            }
            assert!(Instant::now() < deadline, "port {port} not answering");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Protected {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    eventually(Duration::from_secs(10), what, || async {
        (post_check(app, BODY).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(readyz(app).await, StatusCode::OK);
}

/// Checks and readiness answer 503, and the reason is counted as an auth error.
async fn refused(app: &Router) {
    eventually(Duration::from_secs(10), "an auth error", || async {
        let text = scrape(app).await;
        (value(&text, r#"limitd_redis_errors_total{kind="auth"}"#)? >= 1.0).then_some(())
    })
    .await;
    let (status, text) = post_check(app, BODY).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(text, r#"{"error":"redis unavailable"}"#);
    assert_eq!(readyz(app).await, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_protected_redis_needs_redis_password() {
    let redis = Protected::server(DATA_PASSWORD);
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
    let redis = Protected::server(DATA_PASSWORD);
    let sentinel = Protected::sentinel(redis.port, DATA_PASSWORD, None);
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
    let redis = Protected::server(DATA_PASSWORD);
    let sentinel = Protected::sentinel(redis.port, DATA_PASSWORD, Some(SENTINEL_PASSWORD));
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
