//! The server over real sockets: serve and shut down, drain deadline, Redis down.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use limitd::AppState;

use crate::support::{config, free_port, post_check, RedisProcess};

/// Sends `request` on a fresh connection and reads until the server closes it.
async fn raw_http(addr: SocketAddr, request: String) -> String {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("read reply");
        reply
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn serve_answers_on_a_socket_and_returns_after_shutdown() {
    let redis = RedisProcess::server(&[]);
    let state = AppState::connect(&config(&[
        ("REDIS_URL", format!("redis://127.0.0.1:{}", redis.port)),
        ("LIMITD_SHUTDOWN_GRACE_MS", "2000".into()),
    ]))
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(limitd::serve(listener, state, async {
        let _ = stopped.await;
    }));

    let reply = raw_http(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: limitd\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("ok"), "{reply}");

    let body = r#"{"hits":[{"key":"sock:k","limit":2,"window_ms":60000}]}"#;
    let request = format!(
        "POST /v1/check HTTP/1.1\r\nHost: limitd\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let reply = raw_http(addr, request).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#""allowed":true"#), "{reply}");

    let started = Instant::now();
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "idle server should stop at once"
    );
    // The listener is closed: nothing accepts on the port any more.
    assert!(TcpStream::connect(addr).is_err());
}

#[tokio::test]
async fn serve_returns_by_the_drain_deadline_with_a_stalled_client() {
    let state = AppState::connect(&config(&[
        ("REDIS_URL", format!("redis://127.0.0.1:{}", free_port())),
        ("LIMITD_SHUTDOWN_GRACE_MS", "300".into()),
    ]))
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(limitd::serve(listener, state, async {
        let _ = stopped.await;
    }));

    // A client that sends half a request body and then stalls keeps its request in flight.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled
        .write_all(b"POST /v1/check HTTP/1.1\r\nHost: limitd\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"hits\"")
        .unwrap();
    // Let the server read the headers (the handler is then waiting for the body).
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "returned before the deadline: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "deadline not honoured: {elapsed:?}"
    );
    drop(stalled);
}

#[tokio::test]
async fn redis_down_answers_503_quickly() {
    let state = AppState::connect(&config(&[(
        "REDIS_URL",
        format!("redis://127.0.0.1:{}", free_port()),
    )]))
    .await
    .unwrap();
    let app = limitd::app(state);
    for _ in 0..3 {
        let started = Instant::now();
        let (status, text) = post_check(
            &app,
            r#"{"hits":[{"key":"down:k","limit":1,"window_ms":1000}]}"#,
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert_eq!(text, r#"{"error":"redis unavailable"}"#);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    let request = axum::http::Request::get("/readyz")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(
        crate::support::send(&app, request).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}
