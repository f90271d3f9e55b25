//! The server over real sockets: serve and shut down, drain deadline, Redis down.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use limitd::AppState;

use e2e::{eventually_async, free_port, RedisProcess};

use crate::support::{config, post_check};

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
        // A drain deadline far beyond the bound below: only waiting for it trips the test.
        ("LIMITD_SHUTDOWN_GRACE_MS", "60000".into()),
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
    let result = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("serve returns")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "an idle server should stop at once, not at its drain deadline"
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

    // A client that sends half a request body and then stalls keeps its request in flight. It
    // asks for `100 Continue`, which the server sends once the handler reads the body: then the
    // request is in flight for sure.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled
        .write_all(b"POST /v1/check HTTP/1.1\r\nHost: limitd\r\nContent-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    stalled.set_nonblocking(true).unwrap();
    let mut reply = Vec::new();
    eventually_async(Duration::from_secs(5), || {
        let mut buf = [0; 256];
        if let Ok(n) = stalled.read(&mut buf) {
            reply.extend_from_slice(&buf[..n]);
        }
        let asked = reply.starts_with(b"HTTP/1.1 100 Continue\r\n");
        async move { asked.then_some(()) }
    })
    .await
    .expect("the handler to ask for the body");
    stalled.write_all(b"{\"hits\"").unwrap();

    let started = Instant::now();
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("serve returns")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "returned before the deadline: {elapsed:?}"
    );
    // Not honouring the deadline means waiting for the stalled client, which never finishes.
    assert!(
        elapsed < Duration::from_secs(30),
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
        // Without a connection a check never waits on Redis: far below any timeout chain.
        assert!(
            started.elapsed() < Duration::from_secs(5),
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

/// A server with the given extra settings, on a free port; `stop` ends it.
async fn server_with(
    redis_port: u16,
    extra: &[(&str, &str)],
) -> (SocketAddr, AppState, tokio::sync::oneshot::Sender<()>) {
    let mut vars = vec![("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))];
    vars.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let state = AppState::connect(&config(&vars)).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(limitd::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    (addr, state, stop)
}

/// Reads from `stream` until the server closes it (or the read times out, `None`).
fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = Vec::new();
    match stream.read_to_end(&mut reply) {
        Ok(_) => Some(String::from_utf8_lossy(&reply).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Some(String::from_utf8_lossy(&reply).into_owned())
        }
        Err(_) => None,
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_closed() {
    let redis = RedisProcess::server(&[]);
    let (addr, _, _stop) =
        server_with(redis.port, &[("LIMITD_HEADER_READ_TIMEOUT_MS", "200")]).await;
    let closed = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        // Half a request, then silence (a slowloris client).
        stream
            .write_all(b"POST /v2/checks HTTP/1.1\r\nHost: limitd\r\nContent-")
            .unwrap();
        read_until_closed(&mut stream)
    })
    .await
    .unwrap();
    // Closed by the server (hyper answers 408 first), well before the 10 s read timeout.
    let reply = closed.expect("the server kept the half-sent request open");
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_at_once_and_counted() {
    let redis = RedisProcess::server(&[]);
    let (addr, _, _stop) = server_with(redis.port, &[("LIMITD_MAX_CONNECTIONS", "2")]).await;
    let outcome = tokio::task::spawn_blocking(move || {
        let keep_alive = |stream: &mut TcpStream| {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: limitd\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 256];
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let n = stream.read(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        // Two kept-alive connections hold both places.
        let mut first = TcpStream::connect(addr).unwrap();
        let mut second = TcpStream::connect(addr).unwrap();
        assert!(keep_alive(&mut first).starts_with("HTTP/1.1 200"));
        assert!(keep_alive(&mut second).starts_with("HTTP/1.1 200"));
        // A third is closed without an answer.
        let mut third = TcpStream::connect(addr).unwrap();
        let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: limitd\r\n\r\n");
        let refused = read_until_closed(&mut third);
        // Once one leaves, a new one is served.
        drop(first);
        let fourth = (0..100).find_map(|_| {
            let mut next = TcpStream::connect(addr).ok()?;
            next.write_all(b"GET /healthz HTTP/1.1\r\nHost: limitd\r\nConnection: close\r\n\r\n")
                .ok()?;
            let reply = read_until_closed(&mut next)?;
            if reply.starts_with("HTTP/1.1 200") {
                Some(reply)
            } else {
                std::thread::sleep(Duration::from_millis(20));
                None
            }
        });
        drop(second);
        (refused, fourth)
    })
    .await
    .unwrap();
    assert_eq!(
        outcome.0.as_deref(),
        Some(""),
        "the third connection got an answer"
    );
    assert!(
        outcome.1.is_some(),
        "no connection was served after one left"
    );
    let metrics = raw_http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: limitd\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    let refused = crate::metrics::value(
        metrics.split("\r\n\r\n").nth(1).unwrap_or(""),
        "limitd_refused_connections_total",
    );
    assert!(refused >= Some(1.0), "{metrics}");
}
