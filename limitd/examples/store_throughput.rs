//! Checks per second through limitd's HTTP handler (in process, no sockets) against whatever
//! Redis limitd's own settings name: to compare the counter stores (one master, a cluster) on
//! one machine in one run.
//!
//! ```text
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 REDIS_PASSWORD=... \
//!   BENCH_HITS=2 cargo run --release -p limitd --example store_throughput
//! ```
//!
//! Settings (environment), besides limitd's own: `BENCH_HITS` per check (1), each with its own
//! client key, so on a cluster two hits are almost always in two slots; `BENCH_KEYS` distinct
//! client keys per hit position (1000); `BENCH_CONCURRENCY` checks in flight (32);
//! `BENCH_SECONDS` (5). Limits are never reached: every check runs its script(s) in full.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use limitd::{AppState, Config};
use tower::ServiceExt;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let hits = setting("BENCH_HITS", 1);
    let keys = setting("BENCH_KEYS", 1000).max(1);
    let concurrency = setting("BENCH_CONCURRENCY", 32);
    let seconds = setting("BENCH_SECONDS", 5);
    let config = match Config::from_lookup(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(2);
        }
    };
    let state = match AppState::connect(&config).await {
        Ok(state) => state,
        Err(err) => {
            eprintln!("cannot start the store: {err}");
            std::process::exit(1);
        }
    };
    let app = limitd::app(state);
    let until = Instant::now() + Duration::from_secs(seconds);
    let allowed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (app, allowed, failed) = (app.clone(), allowed.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = worker;
                while Instant::now() < until {
                    n += concurrency;
                    let hit_list: Vec<String> = (0..hits)
                        .map(|h| {
                            format!(
                                r#"{{"key":"bench{h}:{}","limit":1000000000000,"window_ms":3600000}}"#,
                                n % keys
                            )
                        })
                        .collect();
                    let body = format!(r#"{{"checks":[{{"hits":[{}]}}]}}"#, hit_list.join(","));
                    let request = Request::post(protocol::CHECKS_PATH)
                        .header("content-type", "application/json")
                        .body(Body::from(body))
                        .expect("request");
                    let response = app.clone().oneshot(request).await.expect("infallible");
                    let ok = response.status() == StatusCode::OK;
                    let text = response.into_body().collect().await.expect("body").to_bytes();
                    if ok && text.starts_with(br#"{"results":[{"result":"allowed""#) {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = allowed.load(Ordering::Relaxed);
    println!(
        "{}: {hits} hit(s)/check over {keys} key(s) each, {concurrency} in flight: {:.0} checks/s \
         ({allowed} allowed, {} not, {elapsed:.1} s)",
        config.redis.target,
        allowed as f64 / elapsed,
        failed.load(Ordering::Relaxed),
    );
}
