//! The HTTP handlers and the mapping of every failure to a status and a one-line JSON reason.

use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::join_all;
use protocol::bounds::{validate_check, MAX_TIMEOUT_MS};
use protocol::{
    v1, BatchRequest, BatchResponse, CheckRequest, CheckResponse, CheckResult, ErrorKind,
    MAX_CHECKS,
};
use serde::Serialize;

use crate::log_limit::LogLimit;
use crate::metrics::{BadRequest, CheckOutcome, CONTENT_TYPE};
use crate::store::{Receipt, StoreError};
use crate::AppState;

/// The longest reason sent back, in characters. serde's messages quote the offending value,
/// so without a bound a hostile body would be echoed back at length.
const MAX_REASON_CHARS: usize = 240;

/// A request limitd will not or cannot answer, as the client sees it.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A malformed check: bad JSON, wrong types, bounds (`400`).
    #[error("{0}")]
    BadRequest(String),
    /// A body over `LIMITD_MAX_BODY_BYTES` (`413`).
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Redis failed (`503` when transient, `500` otherwise).
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Self::BadRequest(reason) => (StatusCode::BAD_REQUEST, one_line(reason)),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, self.to_string()),
            // The detail goes to the log; the client only learns which side failed.
            Self::Store(err) if err.is_transient() => {
                static UNAVAILABLE: LogLimit = LogLimit::new(Duration::from_secs(10));
                if let Some(more_like_this) = UNAVAILABLE.admit() {
                    tracing::warn!(error = %err, more_like_this, "check failed: redis unavailable");
                }
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "redis unavailable".to_owned(),
                )
            }
            Self::Store(err) => {
                tracing::error!(error = %err, "check failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (status, Json(ErrorBody { error: &message })).into_response()
    }
}

/// Maps axum's JSON extractor rejections onto the protocol's statuses: `413` for an oversized
/// body, `400` with a one-line reason for everything else (axum's own 415 and 422 included:
/// the filter needs one status for "your request is malformed").
fn rejection(rejection: JsonRejection, max_body_bytes: usize) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return AppError::PayloadTooLarge(max_body_bytes);
    }
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            AppError::BadRequest("expected Content-Type: application/json".into())
        }
        // body_text() includes serde's reason, path and position, e.g.
        // "... hits[0]: missing field `limit` at line 1 column 30".
        other => AppError::BadRequest(other.body_text()),
    }
}

/// Makes a reason one short line: control characters (line breaks included) become spaces,
/// and a long reason keeps its start and its end (where serde puts the position).
fn one_line(text: &str) -> String {
    let clean = |c: char| if c.is_control() { ' ' } else { c };
    let count = text.chars().count();
    if count <= MAX_REASON_CHARS {
        return text.chars().map(clean).collect();
    }
    let tail = MAX_REASON_CHARS / 3;
    let head = MAX_REASON_CHARS - tail - 1;
    let mut out: String = text.chars().take(head).map(clean).collect();
    out.push('…');
    out.extend(text.chars().skip(count - tail).map(clean));
    out
}

/// Takes a JSON body, or refuses it (400 malformed, 413 too large), counting refusals.
fn accept<T>(state: &AppState, body: Result<Json<T>, JsonRejection>) -> Result<T, AppError> {
    match body {
        Ok(Json(request)) => Ok(request),
        Err(rejected) => {
            let err = rejection(rejected, state.http.max_body_bytes);
            state.metrics().bad_request(match err {
                AppError::PayloadTooLarge(_) => BadRequest::TooLarge,
                _ => BadRequest::Malformed,
            });
            Err(err)
        }
    }
}

/// How one check of a batch ended.
#[derive(Debug)]
enum Outcome {
    /// Redis decided it (and, if allowed, it consumed its hits).
    Decided(CheckResponse),
    /// It breaks a bound; nothing was sent to Redis.
    Invalid(String),
    /// Redis could not answer (if its script may have run, it is being given back).
    Failed(StoreError),
    /// No answer before the batch's deadline (being given back).
    TimedOut,
}

/// One check of a batch, after it ran.
#[derive(Debug)]
struct Ran {
    check: CheckRequest,
    receipt: Option<Receipt>,
    outcome: Outcome,
}

impl Ran {
    /// The check's result on the wire.
    fn result(self) -> CheckResult {
        let error = |error: ErrorKind, detail: String| CheckResult::Error { error, detail };
        match self.outcome {
            Outcome::Decided(response) => CheckResult::from(response),
            Outcome::Invalid(detail) => error(ErrorKind::Invalid, detail),
            Outcome::TimedOut => error(
                ErrorKind::Timeout,
                "no answer from redis before the batch's timeout".into(),
            ),
            Outcome::Failed(err) if err.is_timeout() => {
                error(ErrorKind::Timeout, "redis did not answer in time".into())
            }
            Outcome::Failed(err) if err.is_transient() => {
                error(ErrorKind::Unavailable, "redis unavailable".into())
            }
            Outcome::Failed(_) => error(ErrorKind::Internal, "internal error".into()),
        }
    }
}

/// Runs one check: validates it, then checks it against the store (by `deadline`, if any),
/// with its metrics. A check whose script may have run without its answer reaching us is given
/// back, so that an error never stays counted.
async fn run(state: &AppState, check: CheckRequest, deadline: Option<Instant>) -> Ran {
    let metrics = state.metrics();
    if let Err(err) = validate_check(&check) {
        metrics.invalid_check();
        return Ran {
            check,
            receipt: None,
            outcome: Outcome::Invalid(one_line(&err.0)),
        };
    }
    let store = &state.store;
    let receipt = store.receipt();
    let started = Instant::now();
    let result = {
        let _in_flight = metrics.in_flight();
        let checked = store.check(&check, receipt);
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), checked).await.ok(),
            None => Some(checked.await),
        }
    };
    let outcome = match result {
        Some(Ok(response)) => {
            let allowed = response.hits.iter().filter(|h| h.allowed).count() as u64;
            let denied = response.hits.len() as u64 - allowed;
            let outcome = if response.allowed {
                CheckOutcome::Allowed
            } else {
                CheckOutcome::Denied
            };
            metrics.check_finished(outcome, allowed, denied, started.elapsed());
            Outcome::Decided(response)
        }
        Some(Err(err)) => {
            metrics.check_finished(CheckOutcome::Error, 0, 0, started.elapsed());
            if err.may_have_run() {
                store.give_back(check.clone(), receipt);
            }
            Outcome::Failed(err)
        }
        None => {
            metrics.check_finished(CheckOutcome::Error, 0, 0, started.elapsed());
            store.give_back(check.clone(), receipt);
            Outcome::TimedOut
        }
    };
    Ran {
        check,
        receipt: Some(receipt),
        outcome,
    }
}

/// Runs the checks of a batch concurrently: the futures are polled together in this task, so
/// their scripts go out pipelined on the one connection (one round trip for the batch).
async fn run_all(
    state: &AppState,
    checks: Vec<CheckRequest>,
    deadline: Option<Instant>,
) -> Vec<Ran> {
    join_all(checks.into_iter().map(|check| run(state, check, deadline))).await
}

/// Refuses a batch with no checks or too many.
fn check_count(state: &AppState, count: usize) -> Result<(), AppError> {
    if count == 0 || count > MAX_CHECKS {
        state.metrics().bad_request(BadRequest::Malformed);
        return Err(AppError::BadRequest(format!(
            "checks: {count} checks; send 1 to {MAX_CHECKS}"
        )));
    }
    Ok(())
}

/// When limitd must have answered a batch whose caller waits `timeout_ms`: after four fifths of
/// it, leaving the rest for the answer's way back, so the caller hears each check's fate
/// instead of timing out on the whole batch.
fn deadline(timeout_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(timeout_ms.saturating_mul(4) / 5)
}

/// `POST /v2/checks`: every check of the batch gets its own result, in order. Only a body that
/// cannot be read at all (`400`, `413`) or a limitd that has never reached Redis (`503`) is
/// answered with a status.
pub async fn checks(
    State(state): State<AppState>,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Json<BatchResponse>, AppError> {
    let batch = accept(&state, body)?;
    check_count(&state, batch.checks.len())?;
    if let Some(timeout_ms) = batch.timeout_ms {
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            state.metrics().bad_request(BadRequest::Malformed);
            return Err(AppError::BadRequest(format!(
                "timeout_ms: must be between 1 and {MAX_TIMEOUT_MS}, got {timeout_ms}"
            )));
        }
    }
    if !state.store.is_connected() {
        return Err(AppError::Store(StoreError::NotConnected));
    }
    let ran = run_all(&state, batch.checks, batch.timeout_ms.map(deadline)).await;
    let failed = ran
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_) | Outcome::TimedOut))
        .count();
    if failed > 0 {
        // One line per interval, not per batch: an outage must not flood the log.
        static UNANSWERED: LogLimit = LogLimit::new(Duration::from_secs(10));
        if let Some(more_like_this) = UNANSWERED.admit() {
            tracing::warn!(
                failed,
                checks = ran.len(),
                more_like_this,
                "checks not answered by redis"
            );
        }
    }
    let results = ran.into_iter().map(Ran::result).collect();
    Ok(Json(BatchResponse { results }))
}

/// The v1 answer to a v1 batch that did not fully succeed: gives back what its allowed checks
/// consumed (v1 cannot say that one check failed, so the filter refuses or fails open the
/// whole batch), then answers `400` for an invalid check or the store's status.
fn v1_failure(state: &AppState, ran: Vec<Ran>) -> AppError {
    let mut failure = None;
    for r in ran {
        match r.outcome {
            Outcome::Decided(response) if response.allowed => {
                if let Some(receipt) = r.receipt {
                    state.store.give_back(r.check, receipt);
                }
            }
            Outcome::Decided(_) => {}
            Outcome::Invalid(reason) => failure = Some(AppError::BadRequest(reason)),
            Outcome::Failed(err) => failure = failure.or(Some(AppError::Store(err))),
            Outcome::TimedOut => {
                failure = failure.or(Some(AppError::Store(StoreError::NotConnected)));
            }
        }
    }
    failure.unwrap_or(AppError::Store(StoreError::NotConnected))
}

/// `POST /v1/check` (deprecated): one check, answered with v1's frozen types.
pub async fn check_v1(
    State(state): State<AppState>,
    body: Result<Json<CheckRequest>, JsonRejection>,
) -> Result<Json<v1::CheckResponse>, AppError> {
    state.metrics().v1_request();
    let check = accept(&state, body)?;
    let ran = run(&state, check, None).await;
    if let Outcome::Decided(response) = &ran.outcome {
        return Ok(Json(v1::CheckResponse::from(response)));
    }
    if matches!(ran.outcome, Outcome::Invalid(_)) {
        state.metrics().bad_request(BadRequest::Malformed);
    }
    Err(v1_failure(&state, vec![ran]))
}

/// `POST /v1/checks` (deprecated): a batch, answered with v1's frozen types; any invalid check
/// refuses the whole batch before anything runs, as v1 did.
pub async fn checks_v1(
    State(state): State<AppState>,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Json<v1::BatchResponse>, AppError> {
    state.metrics().v1_request();
    let batch = accept(&state, body)?;
    check_count(&state, batch.checks.len())?;
    for (i, check) in batch.checks.iter().enumerate() {
        if let Err(err) = validate_check(check) {
            state.metrics().bad_request(BadRequest::Malformed);
            return Err(AppError::BadRequest(format!("checks[{i}]: {}", err.0)));
        }
    }
    let ran = run_all(&state, batch.checks, None).await;
    if ran.iter().all(|r| matches!(r.outcome, Outcome::Decided(_))) {
        let results = ran
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Decided(response) => Some(v1::CheckResponse::from(response)),
                _ => None,
            })
            .collect();
        return Ok(Json(v1::BatchResponse { results }));
    }
    Err(v1_failure(&state, ran))
}

/// `GET /metrics`: the Prometheus text exposition. Each scrape probes Redis as `/readyz` does
/// (for at most [`READY_WITHIN`]) and reports the answer as `limitd_ready`, so readiness is a
/// series with either store (a cluster has no `limitd_redis_master`).
pub async fn metrics(State(state): State<AppState>) -> Response {
    let ready = probe_ready(&state).await.is_ok();
    let master = state.store.master_addr();
    let text = state.metrics().render(master.as_deref(), ready);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok"
}

/// The longest a readiness probe waits for Redis: the timeout of the health check of `/readyz`
/// in `envoy.yaml`. So `/readyz` answers before that check gives up, and a hung Redis cannot
/// hold a `/metrics` scrape for up to `REDIS_RESPONSE_TIMEOUT_MS` (per master of a cluster):
/// a scrape that times out reads as limitd down, not as limitd unready.
pub const READY_WITHIN: Duration = Duration::from_millis(500);

/// Whether limitd can serve checks now: Redis answers `PING` on the connection in use (with a
/// cluster, every master of the slot map answers) within [`READY_WITHIN`]. `/readyz` and
/// `limitd_ready` both ask here. The error says why not.
async fn probe_ready(state: &AppState) -> Result<(), String> {
    match tokio::time::timeout(READY_WITHIN, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("redis did not answer PING within {READY_WITHIN:?}")),
    }
}

/// `GET /readyz`: `200` when [`probe_ready`] succeeds, else `503`.
pub async fn readyz(State(state): State<AppState>) -> Response {
    match probe_ready(&state).await {
        Ok(()) => "ready".into_response(),
        Err(err) => {
            tracing::debug!(error = %err, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "redis unavailable").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, HttpConfig};
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// An app whose Redis is a closed port: everything that reaches the store gets `503`.
    async fn app_without_redis(max_body_bytes: usize) -> axum::Router {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://127.0.0.1:{port}");
        let config =
            Config::from_lookup(|name| (name == "REDIS_URL").then(|| url.clone())).unwrap();
        let store = crate::CounterStore::connect(&config.redis).await.unwrap();
        crate::app(AppState::new(
            store,
            HttpConfig {
                max_body_bytes,
                ..HttpConfig::default()
            },
        ))
    }

    /// An app that wants `token` from its callers, whose Redis is a closed port.
    async fn app_with_token(token: &str) -> axum::Router {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://127.0.0.1:{port}");
        let config = Config::from_lookup(|name| match name {
            "REDIS_URL" => Some(url.clone()),
            "LIMITD_TOKEN" => Some(token.to_owned()),
            _ => None,
        })
        .unwrap();
        let store = crate::CounterStore::connect(&config.redis).await.unwrap();
        crate::app(AppState::new(store, config.http))
    }

    #[tokio::test]
    async fn checks_need_the_token_and_health_does_not() {
        let token = "0123456789abcdef-token";
        let app = app_with_token(token).await;
        let body = r#"{"checks":[{"hits":[{"key":"k","limit":1,"window_ms":1000}]}]}"#;
        let with = |authorization: Option<&str>, path: &str| {
            let mut request = Request::post(path).header("content-type", "application/json");
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            request.body(Body::from(body)).unwrap()
        };
        for path in [protocol::CHECKS_PATH, protocol::v1::BATCH_PATH] {
            for refused in [
                None,
                Some("Bearer wrong-token-wrong-token"),
                Some(token),
                Some("Bearer "),
            ] {
                let (status, text) = send(&app, with(refused, path)).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused:?}: {text}");
                assert!(reason(&text).contains("token"), "{text}");
            }
            // With the token the request reaches the store (whose Redis is down).
            let (status, _) = send(&app, with(Some(&format!("Bearer {token}")), path)).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
        let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
        assert_eq!(send(&app, get("/healthz")).await.0, StatusCode::OK);
        let (_, metrics) = send(&app, get("/metrics")).await;
        assert!(metrics.contains("limitd_unauthorized_total 8"), "{metrics}");
    }

    async fn send(app: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn post(body: impl Into<Body>, content_type: Option<&str>) -> Request<Body> {
        let mut request = Request::post(protocol::v1::CHECK_PATH);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.body(body.into()).unwrap()
    }

    /// The `error` field of a one-line JSON error body.
    fn reason(body: &str) -> String {
        assert!(!body.contains('\n'), "{body}");
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        value["error"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn malformed_checks_get_400_with_a_one_line_reason() {
        let app = app_without_redis(65536).await;
        let too_many = format!(
            r#"{{"hits":[{}]}}"#,
            vec![r#"{"key":"k","limit":1,"window_ms":1}"#; 65].join(",")
        );
        let cases: Vec<(String, &str)> = vec![
            ("{".into(), "parse"),
            ("".into(), "parse"),
            (r#"{"hits":"many"}"#.into(), "invalid type"),
            (
                r#"{"hits":[{"key":"k","limit":-1,"window_ms":1}]}"#.into(),
                "invalid value",
            ),
            (
                r#"{"hits":[{"key":"k","window_ms":1}]}"#.into(),
                "missing field `limit`",
            ),
            (
                r#"{"hits":[{"key":"k","limit":1,"window_ms":1,"algorithm":"leaky_bucket"}]}"#
                    .into(),
                "unknown variant",
            ),
            (r#"{"hits":[]}"#.into(), "hits must not be empty"),
            (too_many, "at most 64 hits"),
            (
                r#"{"hits":[{"key":"","limit":1,"window_ms":1}]}"#.into(),
                "key: must be 1 to 2048 bytes long",
            ),
            (
                r#"{"hits":[{"key":"k","limit":0,"window_ms":1}]}"#.into(),
                "limit: must be between",
            ),
            (
                r#"{"hits":[{"key":"k","limit":1,"window_ms":0}]}"#.into(),
                "window_ms: must be between",
            ),
            (
                r#"{"hits":[{"key":"k","limit":1,"window_ms":31622400001}]}"#.into(),
                "window_ms: must be between",
            ),
            (
                r#"{"hits":[{"key":"k","limit":1,"window_ms":1,"cost":1000000000000001}]}"#.into(),
                "cost: must be at most",
            ),
        ];
        for (body, expected) in cases {
            let (status, text) = send(&app, post(body.clone(), Some("application/json"))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
            let reason = reason(&text);
            assert!(reason.contains(expected), "{body}: {reason}");
        }
    }

    #[tokio::test]
    async fn a_missing_or_wrong_content_type_is_400() {
        let app = app_without_redis(65536).await;
        let body = r#"{"hits":[{"key":"k","limit":1,"window_ms":1}]}"#;
        for content_type in [None, Some("text/plain")] {
            let (status, text) = send(&app, post(body, content_type)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{content_type:?}: {text}");
            assert_eq!(reason(&text), "expected Content-Type: application/json");
        }
    }

    #[tokio::test]
    async fn an_oversized_body_is_413() {
        let app = app_without_redis(1024).await;
        let key = "k".repeat(2000);
        let body = format!(r#"{{"hits":[{{"key":"{key}","limit":1,"window_ms":1}}]}}"#);
        let (status, text) = send(&app, post(body, Some("application/json"))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
        assert_eq!(reason(&text), "request body is larger than 1024 bytes");
    }

    #[tokio::test]
    async fn a_valid_check_without_redis_is_503() {
        let app = app_without_redis(65536).await;
        let body = r#"{"hits":[{"key":"k","limit":1,"window_ms":1000}]}"#;
        let (status, text) = send(&app, post(body, Some("application/json"))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert_eq!(reason(&text), "redis unavailable");
    }

    #[tokio::test]
    async fn health_readiness_and_methods() {
        let app = app_without_redis(65536).await;
        let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
        assert_eq!(
            send(&app, get("/healthz")).await,
            (StatusCode::OK, "ok".to_owned())
        );
        assert_eq!(
            send(&app, get("/readyz")).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            send(&app, get(protocol::CHECKS_PATH)).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(send(&app, get("/nope")).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn metrics_count_refusals_and_unanswered_checks() {
        let app = app_without_redis(1024).await;
        let json = Some("application/json");
        let valid = r#"{"hits":[{"key":"k","limit":1,"window_ms":1000}]}"#;
        send(&app, post("{", json)).await;
        send(&app, post(valid, None)).await;
        send(&app, post(r#"{"hits":[]}"#, json)).await;
        send(&app, post("x".repeat(2000), json)).await;
        send(&app, post(valid, json)).await;

        let response = app
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        for line in [
            r#"limitd_bad_requests_total{status="400"} 3"#,
            r#"limitd_bad_requests_total{status="413"} 1"#,
            r#"limitd_checks_total{result="error"} 1"#,
            r#"limitd_checks_total{result="allowed"} 0"#,
            "limitd_check_duration_seconds_count 1",
            "limitd_checks_in_flight 0",
            // Redis does not answer: not ready, as /readyz says.
            "limitd_ready 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("limitd_redis_master{"), "{text}");
    }

    #[tokio::test]
    async fn a_reason_echoing_a_huge_value_stays_short() {
        let app = app_without_redis(65536).await;
        let big = "z".repeat(20_000);
        let body = format!(r#"{{"hits":[{{"key":"k","limit":"{big}","window_ms":1}}]}}"#);
        let (status, text) = send(&app, post(body, Some("application/json"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let reason = reason(&text);
        assert!(reason.chars().count() <= MAX_REASON_CHARS, "{reason}");
        assert!(reason.contains("invalid type"), "{reason}");
        // The position, at the end of serde's message, survives the cut.
        assert!(reason.contains("column"), "{reason}");
    }

    fn post_v2(body: impl Into<Body>) -> Request<Body> {
        Request::post(protocol::CHECKS_PATH)
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap()
    }

    #[tokio::test]
    async fn a_v2_batch_that_cannot_be_read_is_400_and_an_oversized_one_413() {
        let app = app_without_redis(1024).await;
        let hit = r#"{"key":"k","limit":1,"window_ms":1000}"#;
        let cases = [
            ("{".to_owned(), "parse"),
            (
                r#"{"checks":[]}"#.to_owned(),
                "checks: 0 checks; send 1 to 256",
            ),
            (r#"{"checks":{}}"#.to_owned(), "invalid type"),
            (
                format!(r#"{{"timeout_ms":0,"checks":[{{"hits":[{hit}]}}]}}"#),
                "timeout_ms: must be between 1 and 60000, got 0",
            ),
        ];
        for (body, expected) in cases {
            let (status, text) = send(&app, post_v2(body.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
            assert!(reason(&text).contains(expected), "{body}: {text}");
        }
        let big = format!(
            r#"{{"checks":[{{"hits":[{{"key":"{}","limit":1,"window_ms":1}}]}}]}}"#,
            "k".repeat(2000)
        );
        assert_eq!(
            send(&app, post_v2(big)).await.0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[tokio::test]
    async fn a_v2_batch_before_redis_was_ever_reached_is_503() {
        let app = app_without_redis(65536).await;
        let body = r#"{"checks":[{"hits":[{"key":"k","limit":1,"window_ms":1000}]}]}"#;
        let (status, text) = send(&app, post_v2(body)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert_eq!(reason(&text), "redis unavailable");
    }

    #[test]
    fn each_outcome_has_its_result_on_the_wire() {
        let check = CheckRequest { hits: Vec::new() };
        let ran = |outcome| Ran {
            check: check.clone(),
            receipt: None,
            outcome,
        };
        let kind = |r: CheckResult| match r {
            CheckResult::Error { error, .. } => Some(error),
            _ => None,
        };
        assert_eq!(
            kind(ran(Outcome::TimedOut).result()),
            Some(ErrorKind::Timeout)
        );
        assert_eq!(
            kind(ran(Outcome::Invalid("x".into())).result()),
            Some(ErrorKind::Invalid)
        );
        assert_eq!(
            kind(ran(Outcome::Failed(StoreError::NotConnected)).result()),
            Some(ErrorKind::Unavailable)
        );
        assert_eq!(
            kind(ran(Outcome::Failed(StoreError::Reply("?".into()))).result()),
            Some(ErrorKind::Internal)
        );
        let allowed = ran(Outcome::Decided(CheckResponse {
            allowed: true,
            hits: Vec::new(),
        }));
        assert_eq!(allowed.result(), CheckResult::Allowed { hits: Vec::new() });
    }

    #[test]
    fn reasons_become_one_line_without_control_characters() {
        assert_eq!(one_line("a\r\nb\tc\u{0}d"), "a  b c d");
        assert_eq!(one_line("short"), "short");
        let long: String = "€".repeat(1000);
        let cut = one_line(&long);
        assert_eq!(cut.chars().count(), MAX_REASON_CHARS);
        assert!(cut.contains('…'));
    }

    #[test]
    fn store_errors_map_to_503_or_500() {
        let unavailable = AppError::Store(StoreError::NotConnected).into_response();
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bug = AppError::Store(StoreError::Reply("3 integers".into())).into_response();
        let voided = AppError::Store(StoreError::Voided).into_response();
        assert_eq!(voided.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(bug.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            AppError::BadRequest("a\nb".into()).into_response().status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            AppError::PayloadTooLarge(10).into_response().status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
