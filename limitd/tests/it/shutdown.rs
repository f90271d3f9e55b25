//! Graceful shutdown of the real `limitd` binary: on SIGTERM (or SIGINT) it stops accepting,
//! lets the checks in flight finish, and exits 0.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::{free_port, RedisProcess, TempDir};

/// The `limitd` binary as a child process, killed on drop (if a test fails half-way).
struct Limitd {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Limitd {
    fn start(redis_port: u16, extra: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("limitd-bin");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = File::create(dir.path().join("limitd.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_limitd"));
        command
            .env_clear()
            .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
            .env("LIMITD_LISTEN", addr.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (name, value) in extra {
            command.env(name, value);
        }
        let child = command.spawn().expect("start limitd");
        let limitd = Self { child, addr, dir };
        limitd.wait_for(Duration::from_secs(10), "limitd to listen", || {
            http(
                addr,
                "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        });
        limitd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("limitd.log")).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    fn wait_for(&self, within: Duration, what: &str, mut probe: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !probe() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exit_status(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "limitd still running after {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn metric(&self, series: &str) -> Option<f64> {
        let reply = http(
            self.addr,
            "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )?;
        crate::metrics::value(reply.split_once("\r\n\r\n")?.1, series)
    }
}

impl Drop for Limitd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a fresh connection; the whole reply, or `None` if it cannot connect.
fn http(addr: SocketAddr, request: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    Some(reply)
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
        http(
            addr,
            "GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    });

    // A frozen Redis keeps the next check in flight for as long as we like.
    redis.signal("-STOP");
    let body = r#"{"hits":[{"key":"drain:k","limit":5,"window_ms":60000}]}"#;
    let request = format!(
        "POST /v1/check HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let in_flight = std::thread::spawn(move || http(addr, &request));
    limitd.wait_for(Duration::from_secs(10), "the check to be in flight", || {
        limitd.metric("limitd_checks_in_flight") == Some(1.0)
    });

    limitd.signal("-TERM");
    // It stops accepting at once, but keeps running while the check is pending.
    limitd.wait_for(Duration::from_secs(5), "the listener to close", || {
        TcpStream::connect(addr).is_err()
    });
    assert!(limitd.child.try_wait().unwrap().is_none(), "exited early");

    redis.signal("-CONT");
    let reply = in_flight
        .join()
        .unwrap()
        .expect("the in-flight check got a reply");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#""allowed":true"#), "{reply}");
    let status = limitd.exit_status(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", limitd.log());
}

#[test]
fn sigint_on_an_idle_server_exits_0_at_once() {
    // No Redis at all: shutting down must not depend on it.
    // A drain deadline far beyond the bound below: only waiting for it trips the test.
    let mut limitd = Limitd::start(free_port(), &[("LIMITD_SHUTDOWN_GRACE_MS", "60000")]);
    let started = Instant::now();
    limitd.signal("-INT");
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
    let addr = limitd.addr;
    limitd.wait_for(Duration::from_secs(10), "the listener", || {
        http(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    let body = r#"{"hits":[{"key":"log:k","limit":5,"window_ms":60000}]}"#;
    let request = format!(
        "POST /v1/check HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..200 {
        let reply = http(addr, &request).expect("a reply");
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
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
