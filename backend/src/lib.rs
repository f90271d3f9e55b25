//! The demo upstream: a tiny axum app that answers with its instance name, so load balancing is visible.
//!
//! Ported from the FastAPI proof of concept. Three routes, all `GET`, all JSON:
//! `/` (a greeting), `/limited_endpoint` (the route the demo rules limit) and `/health` (Envoy's
//! active health check). Beyond the proof of concept, anything under `/api/` answers the greeting
//! to any method, so the demo can show one rule per algorithm on paths of their own. Every
//! response, a 404 included, carries `x-backend-instance: <name>`.
//!
//! The bodies never change for a given instance, so they are serialised once in [`app`] and each
//! response only clones a [`Bytes`] handle.

pub mod args;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, MethodRouter};
use axum::Router;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The response header naming the instance that answered.
pub const INSTANCE_HEADER: HeaderName = HeaderName::from_static("x-backend-instance");

/// How long [`serve`] waits for in-flight requests once shutdown is asked for. Graceful shutdown
/// alone can stall on a slow or stuck connection; past this deadline the remaining ones are dropped.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Body of `GET /` and `GET /limited_endpoint`. A struct rather than `json!` so the field order is
/// the proof of concept's (`message` first).
#[derive(Serialize)]
struct Greeting<'a> {
    message: &'a str,
    instance: &'a str,
}

/// Body of `GET /health`.
#[derive(Serialize)]
struct Health<'a> {
    status: &'a str,
    instance: &'a str,
}

/// Builds the router for the instance called `name`.
pub fn app(name: Arc<str>) -> Router {
    let hello = format!("Hello from {name}");
    let root = json_body(&Greeting {
        message: &hello,
        instance: &name,
    });
    let limited = json_body(&Greeting {
        message: "This is a rate limited endpoint",
        instance: &name,
    });
    let api = root.clone();
    let health = json_body(&Health {
        status: "ok",
        instance: &name,
    });
    let instance = instance_header_value(&name);

    Router::new()
        .route("/", json_route(root))
        .route("/limited_endpoint", json_route(limited))
        .route("/health", json_route(health))
        .route("/api/{*path}", any_json_route(api))
        .layer(axum::middleware::map_response(
            move |mut response: Response| {
                let instance = instance.clone();
                async move {
                    response.headers_mut().insert(INSTANCE_HEADER, instance);
                    response
                }
            },
        ))
}

/// Serves [`app`] on `listener` until `shutdown` completes, then drains in-flight requests for at
/// most [`DRAIN_DEADLINE`].
pub async fn serve(
    listener: TcpListener,
    name: Arc<str>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // The drain deadline starts when shutdown is asked for, not when serving starts, so the
    // signal is forwarded through a oneshot that the deadline waits on.
    let (asked_tx, asked_rx) = oneshot::channel::<()>();
    let server = axum::serve(listener, app(name)).with_graceful_shutdown(async move {
        shutdown.await;
        // The receiver is only gone if serving already ended; nothing left to tell.
        let _ = asked_tx.send(());
    });
    let deadline = async move {
        match asked_rx.await {
            Ok(()) => tokio::time::sleep(DRAIN_DEADLINE).await,
            // The server ended without a shutdown request; its own result decides.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!(
                deadline_ms = DRAIN_DEADLINE.as_millis() as u64,
                "drain deadline passed, dropping the connections still open"
            );
            Ok(())
        }
    }
}

/// Serialises a response body once, at start.
fn json_body(body: &impl Serialize) -> Bytes {
    // Serialising a struct of `&str` fields into a `Vec` cannot fail.
    Bytes::from(serde_json::to_vec(body).unwrap_or_default())
}

/// A `GET` route that always answers `200` with the same JSON body.
fn json_route(body: Bytes) -> MethodRouter {
    get(move || {
        let body = body.clone();
        async move { json_response(body) }
    })
}

/// A route that answers `200` with the same JSON body to any method.
fn any_json_route(body: Bytes) -> MethodRouter {
    any(move || {
        let body = body.clone();
        async move { json_response(body) }
    })
}

fn json_response(body: Bytes) -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

/// The `x-backend-instance` value for `name`. [`args::Config`] only accepts names that are valid
/// header values; a caller of [`app`] that passes another one gets a placeholder and a warning
/// rather than a panic.
fn instance_header_value(name: &str) -> HeaderValue {
    HeaderValue::from_str(name).unwrap_or_else(|_| {
        tracing::warn!(
            name,
            "instance name is not a valid header value; sending `invalid`"
        );
        HeaderValue::from_static("invalid")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tower::ServiceExt;

    async fn call(method: Method, uri: &str) -> Response {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        app(Arc::from("backend-7")).oneshot(request).await.unwrap()
    }

    async fn json_of(response: Response) -> Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn assert_instance_header(response: &Response) {
        assert_eq!(
            response.headers().get(INSTANCE_HEADER).unwrap(),
            "backend-7"
        );
    }

    fn assert_json_content_type(response: &Response) {
        assert_eq!(
            response.headers().get(CONTENT_TYPE).unwrap(),
            "application/json"
        );
    }

    #[tokio::test]
    async fn root_greets_with_the_instance_name() {
        let response = call(Method::GET, "/").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_instance_header(&response);
        assert_json_content_type(&response);
        assert_eq!(
            json_of(response).await,
            json!({"message": "Hello from backend-7", "instance": "backend-7"})
        );
    }

    #[tokio::test]
    async fn limited_endpoint_says_it_is_limited() {
        let response = call(Method::GET, "/limited_endpoint").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_instance_header(&response);
        assert_json_content_type(&response);
        assert_eq!(
            json_of(response).await,
            json!({"message": "This is a rate limited endpoint", "instance": "backend-7"})
        );
    }

    #[tokio::test]
    async fn health_is_ok() {
        let response = call(Method::GET, "/health").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_instance_header(&response);
        assert_json_content_type(&response);
        assert_eq!(
            json_of(response).await,
            json!({"status": "ok", "instance": "backend-7"})
        );
    }

    #[tokio::test]
    async fn bodies_keep_the_proof_of_concepts_field_order() {
        let response = call(Method::GET, "/").await;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &bytes[..],
            br#"{"message":"Hello from backend-7","instance":"backend-7"}"#
        );
    }

    #[tokio::test]
    async fn unknown_path_is_404_and_still_names_the_instance() {
        let response = call(Method::GET, "/nope").await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_instance_header(&response);
    }

    #[tokio::test]
    async fn anything_under_api_answers_the_greeting_to_any_method() {
        for (method, uri) in [
            (Method::GET, "/api/sliding"),
            (Method::POST, "/api/a/b?x=1"),
        ] {
            let response = call(method, uri).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_instance_header(&response);
            assert_eq!(json_of(response).await["instance"], "backend-7");
        }
    }

    #[tokio::test]
    async fn other_methods_are_rejected() {
        let response = call(Method::POST, "/").await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_instance_header(&response);
    }

    #[test]
    fn a_name_that_is_not_a_header_value_gets_a_placeholder() {
        assert_eq!(instance_header_value("bad\nname"), "invalid");
        assert_eq!(instance_header_value("backend-1"), "backend-1");
    }

    #[tokio::test]
    async fn serves_on_a_real_socket_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::from("backend-socket"), async {
            let _ = stop_rx.await;
        }));

        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
            .await
            .expect("the response did not arrive within 5 s")
            .unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "head: {head}");
        assert!(
            head.lines()
                .any(|line| line.eq_ignore_ascii_case("x-backend-instance: backend-socket")),
            "no instance header in: {head}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(body).unwrap(),
            json!({"status": "ok", "instance": "backend-socket"})
        );

        // An idle connection must not hold the server open past shutdown.
        let _idle = TcpStream::connect(addr).await.unwrap();
        stop_tx.send(()).unwrap();
        let result = tokio::time::timeout(DRAIN_DEADLINE + Duration::from_secs(2), server)
            .await
            .expect("serve did not return after shutdown")
            .unwrap();
        assert!(result.is_ok(), "serve failed: {result:?}");
    }
}
