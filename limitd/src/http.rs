//! The HTTP handlers and the mapping of every failure to a status and a one-line JSON reason.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{CheckRequest, CheckResponse};
use serde::Serialize;

use crate::store::StoreError;
use crate::validate::validate;
use crate::AppState;

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
                tracing::warn!(error = %err, "check failed: redis unavailable");
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

/// Replaces line breaks so a reason always stays one line.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// `POST /v1/check`.
pub async fn check(
    State(state): State<AppState>,
    body: Result<Json<CheckRequest>, JsonRejection>,
) -> Result<Json<CheckResponse>, AppError> {
    let Json(request) = body.map_err(|r| rejection(r, state.http.max_body_bytes))?;
    validate(&request).map_err(|e| AppError::BadRequest(e.0))?;
    Ok(Json(state.store.check(&request).await?))
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: Redis answers `PING` on the connection in use.
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
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

    async fn send(app: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn post(body: impl Into<Body>, content_type: Option<&str>) -> Request<Body> {
        let mut request = Request::post(protocol::CHECK_PATH);
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
                r#"{"hits":[{"key":"k","limit":1,"window_ms":1,"colour":"red"}]}"#.into(),
                "unknown field `colour`",
            ),
            (
                r#"{"hits":[{"key":"k","limit":1,"window_ms":1,"algorithm":"gcra"}]}"#.into(),
                "unknown variant",
            ),
            (r#"{"hits":[],"x":1}"#.into(), "unknown field `x`"),
            (r#"{"hits":[]}"#.into(), "hits must not be empty"),
            (too_many, "at most 64 hits"),
            (
                r#"{"hits":[{"key":"","limit":1,"window_ms":1}]}"#.into(),
                "key must not be empty",
            ),
            (
                r#"{"hits":[{"key":"k","limit":0,"window_ms":1}]}"#.into(),
                "limit must be between",
            ),
            (
                r#"{"hits":[{"key":"k","limit":1,"window_ms":0}]}"#.into(),
                "window_ms must be between",
            ),
            (
                r#"{"hits":[{"key":"k","limit":1,"window_ms":31622400001}]}"#.into(),
                "window_ms must be between",
            ),
            (
                r#"{"hits":[{"key":"k","limit":1,"window_ms":1,"cost":1000000000000001}]}"#.into(),
                "cost must be at most",
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
            send(&app, get(protocol::CHECK_PATH)).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(send(&app, get("/nope")).await.0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn store_errors_map_to_503_or_500() {
        let unavailable = AppError::Store(StoreError::NotConnected).into_response();
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bug = AppError::Store(StoreError::Reply("3 integers".into())).into_response();
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
