//! The real `limitd` binary: graceful shutdown on SIGTERM (or SIGINT) — it stops accepting,
//! lets the checks in flight finish, and exits 0 — its logging during an outage, and serving on
//! a socket passed by a service manager (`LISTEN_FDS`).

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use e2e::process::Process;
use e2e::{eventually, free_listener, free_port, http_get, http_request, scratch_dir};
use e2e::{HttpResponse, RedisProcess, TempDir};

/// The `limitd` binary as a child process, serving on a listening socket bound here and passed
/// to it (`LISTEN_FDS`), killed on drop (if a test fails half-way).
struct Limitd {
    process: Process,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Limitd {
    fn start(redis_port: u16, extra: &[(&str, &str)]) -> Self {
        let dir = scratch_dir("limitd-bin-");
        let listener = free_listener();
        let addr = listener.local_addr().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_limitd"));
        command
            .env_clear()
            .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
            .env("RUST_LOG", "info")
            .envs(extra.iter().copied());
        let process = Process::spawn_listening("limitd", command, dir.path(), listener)
            .expect("start limitd");
        let limitd = Self {
            process,
            addr,
            _dir: dir,
        };
        limitd.wait_for(Duration::from_secs(10), "limitd to answer", || {
            limitd.get("/healthz").is_some_and(|r| r.status == 200)
        });
        limitd
    }

    fn log(&self) -> String {
        self.process.log_text()
    }

    /// `GET path`, or `None` if it cannot connect.
    fn get(&self, path: &str) -> Option<HttpResponse> {
        http_get(self.addr, path, None).ok()
    }

    fn wait_for(&self, within: Duration, what: &str, mut probe: impl FnMut() -> bool) {
        eventually(within, || probe().then_some(()))
            .unwrap_or_else(|e| panic!("timed out waiting for {what} ({e}); log:\n{}", self.log()));
    }

    fn exit_status(&mut self, within: Duration) -> ExitStatus {
        self.process.wait_exit(within).unwrap_or_else(|| {
            panic!(
                "limitd still running after {within:?}; log:\n{}",
                self.log()
            )
        })
    }

    fn metric(&self, series: &str) -> Option<f64> {
        crate::metrics::value(&self.get("/metrics")?.body, series)
    }
}

/// `POST /v1/check` of `body` on a fresh connection; the response, or `None` if it cannot
/// connect.
fn post_check(addr: SocketAddr, body: &str) -> Option<HttpResponse> {
    let headers = [("content-type", "application/json")];
    http_request(
        "POST",
        addr,
        protocol::v1::CHECK_PATH,
        &headers,
        body.as_bytes(),
        None,
    )
    .ok()
}

#[test]
fn sigterm_drains_the_check_in_flight_and_exits_0() {
    let redis = RedisProcess::server(&[]);
    let mut limitd = Limitd::start(
        redis.port,
        &[
            ("REDIS_RESPONSE_TIMEOUT_MS", "20000"),
            ("LIMITD_SHUTDOWN_GRACE_MS", "20000"),
        ],
    );
    let addr = limitd.addr;
    limitd.wait_for(Duration::from_secs(10), "readiness", || {
        limitd.get("/readyz").is_some_and(|r| r.status == 200)
    });

    // A frozen Redis keeps the next check in flight for as long as we like.
    redis.signal(libc::SIGSTOP);
    let body = r#"{"hits":[{"key":"drain:k","limit":5,"window_ms":60000}]}"#;
    let in_flight = std::thread::spawn(move || post_check(addr, body));
    limitd.wait_for(Duration::from_secs(10), "the check to be in flight", || {
        limitd.metric("limitd_checks_in_flight") == Some(1.0)
    });

    limitd.process.signal(libc::SIGTERM);
    // It stops accepting at once, but keeps running while the check is pending.
    limitd.wait_for(Duration::from_secs(5), "the listener to close", || {
        TcpStream::connect(addr).is_err()
    });
    assert!(limitd.process.try_wait().is_none(), "exited early");

    redis.signal(libc::SIGCONT);
    let reply = in_flight
        .join()
        .unwrap()
        .expect("the in-flight check got a reply");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains(r#""allowed":true"#), "{reply:?}");
    let status = limitd.exit_status(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", limitd.log());
}

#[test]
fn sigint_on_an_idle_server_exits_0_at_once() {
    // No Redis at all: shutting down must not depend on it.
    // A drain deadline far beyond the bound below: only waiting for it trips the test.
    let mut limitd = Limitd::start(free_port(), &[("LIMITD_SHUTDOWN_GRACE_MS", "60000")]);
    let started = Instant::now();
    limitd.process.signal(libc::SIGINT);
    let status = limitd.exit_status(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "log:\n{}", limitd.log());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_outage_logs_a_line_per_interval_not_per_request() {
    // No Redis at all: every check fails, and each would log.
    let limitd = Limitd::start(free_port(), &[]);
    let body = r#"{"hits":[{"key":"log:k","limit":5,"window_ms":60000}]}"#;
    for _ in 0..200 {
        let reply = post_check(limitd.addr, body).expect("a reply");
        assert_eq!(reply.status, 503, "{reply:?}");
    }
    let log = limitd.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("check failed: redis unavailable"))
        .count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} lines for 200 failures:\n{log}"
    );
}

#[test]
fn a_passed_socket_is_served_and_held_to_the_loopback_rule() {
    // Served: `Limitd::start` passes its socket, and LIMITD_LISTEN names another port, which
    // limitd then does not bind.
    let unused = free_port();
    let listen = format!("127.0.0.1:{unused}");
    let limitd = Limitd::start(free_port(), &[("LIMITD_LISTEN", &listen)]);
    assert_eq!(limitd.get("/healthz").map(|r| r.status), Some(200));
    assert!(
        TcpStream::connect(("127.0.0.1", unused)).is_err(),
        "limitd bound LIMITD_LISTEN too"
    );

    // A passed socket beyond loopback needs a token, as LIMITD_LISTEN does.
    let dir = scratch_dir("limitd-bin-");
    let wide = std::net::TcpListener::bind("0.0.0.0:0").expect("a wildcard socket");
    let mut command = Command::new(env!("CARGO_BIN_EXE_limitd"));
    command
        .env_clear()
        .env("REDIS_URL", format!("redis://127.0.0.1:{}", free_port()));
    let mut refused = Process::spawn_listening("limitd", command, dir.path(), wide).unwrap();
    let status = refused.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "{}",
        refused.log_text()
    );
    assert!(
        refused.log_text().contains("LIMITD_TOKEN"),
        "{}",
        refused.log_text()
    );
}
