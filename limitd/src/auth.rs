//! Who may ask for checks: with `LIMITD_TOKEN` set, only callers presenting it as
//! `Authorization: Bearer <token>`. The comparison takes the same time whatever the guess, so
//! the token cannot be found byte by byte from response times.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use subtle::ConstantTimeEq;

use crate::AppState;

/// Lets a request through if limitd has no token or the request carries it; answers `401`
/// otherwise (counted in `limitd_unauthorized_total`).
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.http.token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    if presented.is_some_and(|p| bool::from(p.ct_eq(token.secret()))) {
        return next.run(request).await;
    }
    state.metrics().unauthorized();
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({ "error": "missing or wrong token (Authorization: Bearer)" })),
    )
        .into_response()
}
