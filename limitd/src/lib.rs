//! limitd: the counter service behind the Envoy rate-limit filter.
//!
//! The filter sends `POST /v2/checks` with a batch of checks ([`protocol::BatchRequest`]); limitd
//! runs each check against counters in Redis with one atomic Lua script, all or nothing, and
//! answers one [`protocol::CheckResult`] per check. Every hit carries its own limit and window,
//! so limitd holds no rules: it is stateless apart from its Redis connection, which follows a
//! Sentinel failover by itself (see [`store`]), or a Redis Cluster's topology (see [`cluster`]).
//! The contract is in `docs/protocol.md`.
//!
//! The library exposes [`app`] (the router, for in-process tests) and [`serve`] (the server with
//! a bounded graceful shutdown); `main.rs` only reads [`Config`] (from [`args::Args`]), sets up logging and calls them.
//!
//! Endpoints:
//! - `POST /v2/checks`: `200` with one result per check (`allowed`, `denied`, or `error` with a
//!   reason: `invalid`, `unavailable`, `timeout`, `internal`); `400` `{"error": "..."}` for a
//!   body that cannot be read or has no checks or too many; `413` for one larger than
//!   `LIMITD_MAX_BODY_BYTES`; `503` while no connection to Redis has ever been made.
//! - `POST /v1/check`, `POST /v1/checks`: the deprecated v1 endpoints, for filters not yet
//!   upgraded (see [`protocol::v1`]).
//! - `GET /healthz`: `200 ok` while the process runs.
//! - `GET /readyz`: `200` if Redis answers `PING` on the connection in use (with a cluster: every
//!   master) within [`http::READY_WITHIN`], else `503`.
//! - `GET /metrics`: Prometheus text exposition format 0.0.4 (see [`metrics`]); each scrape
//!   probes Redis as `/readyz` does and reports it as `limitd_ready`.
//!
//! Hostile input: the body is bounded before it is parsed (`413`), `serde_json` bounds nesting
//! (128 levels), rejects invalid UTF-8, lone surrogates, raw control characters, duplicate and
//! unknown fields, and numbers that are not whole and non-negative or do not fit a `u64`; then
//! [`protocol::bounds`] bounds every number the script sees. Keys may hold any Unicode (escapes
//! included); [`keys`] hashes long ones. So nothing a client sends reaches Redis unchecked, and
//! every refusal is a `400` with a one-line reason of bounded length.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

pub mod args;
mod auth;
pub mod cluster;
pub mod config;
mod connector;
pub mod convert;
mod errors;
pub mod http;
pub mod keys;
pub mod log_limit;
pub mod metrics;
pub mod script;
pub mod store;

pub use config::{Config, ConfigError, HttpConfig, RedisConfig, RedisTarget};
pub use store::{CounterStore, Receipt, StoreError};

/// What every handler shares: the counter store and the HTTP limits. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    store: CounterStore,
    http: HttpConfig,
}

impl AppState {
    /// Combines a store and the HTTP limits.
    pub fn new(store: CounterStore, http: HttpConfig) -> Self {
        Self { store, http }
    }

    /// Builds the store from `config.redis` (see [`CounterStore::connect`]: an unreachable
    /// Redis is not an error) and keeps `config.http`.
    pub async fn connect(config: &Config) -> Result<Self, StoreError> {
        Ok(Self::new(
            CounterStore::connect(&config.redis).await?,
            config.http.clone(),
        ))
    }

    /// The counter store.
    pub fn store(&self) -> &CounterStore {
        &self.store
    }

    /// The metrics of this app and its store.
    pub fn metrics(&self) -> &metrics::Metrics {
        self.store.metrics()
    }
}

/// The HTTP application: every route, with the body limit applied.
pub fn app(state: AppState) -> Router {
    let body_limit = DefaultBodyLimit::max(state.http.max_body_bytes);
    // Only checks need the token: health and metrics reveal nothing a caller could abuse, and
    // Envoy's health checks and Prometheus would otherwise need it too.
    let checks = Router::new()
        .route(protocol::CHECKS_PATH, post(http::checks))
        .route(protocol::v1::CHECK_PATH, post(http::check_v1))
        .route(protocol::v1::BATCH_PATH, post(http::checks_v1))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .merge(checks)
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .layer(body_limit)
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` resolves, then drains.
///
/// Each connection must send a request's headers within `state`'s `header_read_timeout`
/// (`LIMITD_HEADER_READ_TIMEOUT_MS`), or it is closed: a slow client cannot hold one. At most
/// `max_connections` (`LIMITD_MAX_CONNECTIONS`) are open at once; one more is closed as soon as
/// it is accepted, and counted in `limitd_refused_connections_total`.
///
/// After `shutdown` resolves no new connection is accepted; requests in flight may finish for
/// up to `state`'s `shutdown_grace` (`LIMITD_SHUTDOWN_GRACE_MS`); idle keep-alive connections
/// are closed at once. When the deadline passes, `serve` returns `Ok` anyway: connections still
/// open are abandoned (each runs in its own task, which ends when the process exits).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let http = state.http.clone();
    let metrics = state.store.metrics().clone();
    let app = app(state);
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_read_timeout);
    let connections = Arc::new(Semaphore::new(http.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: wait a moment, as axum::serve does.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics.refused_connection();
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    // No new connections from here on.
    drop(listener);
    tracing::info!(
        grace_ms = http.shutdown_grace.as_millis(),
        "shutdown requested; draining"
    );
    match tokio::time::timeout(http.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!(
            grace_ms = http.shutdown_grace.as_millis(),
            "drain deadline passed; closing remaining connections"
        ),
    }
    Ok(())
}
