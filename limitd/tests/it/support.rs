//! Test support: real `redis-server` / `redis-sentinel` processes on free loopback ports, a
//! bounded `eventually`, and helpers to drive the app in process.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use limitd::{AppState, Config};
use tower::ServiceExt;

/// `redis-server`, found as the end-to-end harness finds it (`PATH`, or
/// `RATELIMIT_REDIS_SERVER`); a test without one fails saying so.
pub fn redis_server() -> PathBuf {
    require(
        e2e::paths::redis_server(),
        "redis-server",
        "RATELIMIT_REDIS_SERVER",
    )
}

/// `redis-sentinel`, found as [`redis_server`] is.
pub fn redis_sentinel() -> PathBuf {
    require(
        e2e::paths::redis_sentinel(),
        "redis-sentinel",
        "RATELIMIT_REDIS_SENTINEL",
    )
}

fn require(path: PathBuf, name: &str, variable: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{name} not found on PATH (nor {variable} set to it): these tests need a real Redis \
         (apt-get install redis-server redis-sentinel)"
    );
    path
}

/// A port nothing listens on right now (bound then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Polls `probe` until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("limitd-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One RESP command over a fresh TCP connection; the raw reply, or `None` if unreachable.
pub fn resp(port: u16, args: &[&str]) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(command.as_bytes()).ok()?;
    let mut buf = [0u8; 16384];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A `redis-server` or `redis-sentinel` child, killed (SIGKILL) on drop.
pub struct RedisProcess {
    pub port: u16,
    child: Option<Child>,
    _dir: TempDir,
}

impl RedisProcess {
    /// A data node with no persistence; `extra` are more `--option value` arguments.
    pub fn server(extra: &[&str]) -> Self {
        Self::start(free_port(), extra)
    }

    /// A data node on a given port (to restart one where a client expects it).
    pub fn server_on(port: u16) -> Self {
        Self::start(port, &[])
    }

    fn start(port: u16, extra: &[&str]) -> Self {
        let (dir, child) = Self::spawn_server("redis", port, extra);
        Self::ready(port, child, dir)
    }

    /// `redis-server` on `port` with no persistence, its directory and log in a fresh scratch
    /// directory (`tag` names it), and `extra` arguments; not waited for.
    fn spawn_server(tag: &str, port: u16, extra: &[&str]) -> (TempDir, Child) {
        let dir = TempDir::new(tag);
        let port_text = port.to_string();
        let dir_text = dir.path().display().to_string();
        let log_text = dir.path().join("redis.log").display().to_string();
        let mut args = vec![
            "--port",
            &port_text,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir_text,
            "--logfile",
            &log_text,
        ];
        args.extend(extra);
        let child = spawn(&redis_server(), &args);
        (dir, child)
    }

    /// A sentinel monitoring `mymaster` at `master_port` with quorum 1.
    pub fn sentinel(master_port: u16) -> Self {
        Self::sentinel_with(master_port, "")
    }

    /// [`RedisProcess::sentinel`] with more lines of configuration (`extra`, before the
    /// `sentinel monitor` line).
    pub fn sentinel_with(master_port: u16, extra: &str) -> Self {
        let dir = TempDir::new("sentinel");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n{extra}\
             sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds mymaster 1000\n\
             sentinel failover-timeout mymaster 5000\n",
            dir = dir.path().display()
        );
        std::fs::write(&conf, text).expect("write sentinel.conf");
        let child = spawn(&redis_sentinel(), &[&conf.display().to_string()]);
        Self::ready(port, child, dir)
    }

    fn ready(port: u16, mut child: Child, dir: TempDir) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if resp(port, &["PING"]).is_some_and(|r| r.starts_with("+PONG")) {
                return Self {
                    port,
                    child: Some(child),
                    _dir: dir,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis process on port {port} exited at start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "redis process on port {port} not answering PING after 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the process: it keeps its sockets but answers
    /// nothing while frozen.
    pub fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("process running")
            .id()
            .to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Kills the process now (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(program: &Path, args: &[&str]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
}

/// A configuration from `vars` (as environment variables would give them).
pub fn config(vars: &[(&str, String)]) -> Config {
    Config::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .expect("valid test configuration")
}

/// The app against the single Redis on `port`.
pub async fn app_for_redis(port: u16) -> (Router, AppState) {
    let state = AppState::connect(&config(&[(
        "REDIS_URL",
        format!("redis://127.0.0.1:{port}"),
    )]))
    .await
    .expect("store");
    (limitd::app(state.clone()), state)
}

/// Sends one request to `app`; returns the status and the body as text.
pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("infallible router");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// `POST /v1/check` (the deprecated single-check endpoint, whose plain statuses suit tests of
/// counting) with a JSON body.
pub async fn post_check(app: &Router, body: &str) -> (StatusCode, String) {
    let request = Request::post(protocol::v1::CHECK_PATH)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request");
    send(app, request).await
}

/// Polls, for at most `within`, until `POST /v1/check` of `body` answers `200`:
/// Redis is reachable (again) through the store.
pub async fn until_checks_work(app: &Router, body: &str, within: Duration, what: &str) {
    eventually(within, what, || async {
        (post_check(app, body).await.0 == StatusCode::OK).then_some(())
    })
    .await;
}

/// `POST /v1/check` of one hit, expecting `200`.
pub async fn check_one(
    app: &Router,
    key: &str,
    limit: u64,
    window_ms: u64,
    cost: u64,
) -> protocol::CheckResponse {
    let body = format!(
        r#"{{"hits":[{{"key":"{key}","limit":{limit},"window_ms":{window_ms},"cost":{cost}}}]}}"#
    );
    let (status, text) = post_check(app, &body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).expect("a CheckResponse")
}

/// `redis-cli`, found as [`redis_server`] is; a test without one fails saying so.
pub fn redis_cli() -> PathBuf {
    let path = e2e::paths::redis_cli();
    assert!(
        path.is_file(),
        "redis-cli not found on PATH (nor RATELIMIT_REDIS_CLI set to it): the cluster tests \
         need it to create a Redis Cluster (apt-get install redis-tools, or redis-server)"
    );
    path
}

/// The password of every node of a [`RedisCluster`] (`requirepass` and `masterauth`).
pub const CLUSTER_PASSWORD: &str = "cluster-test-password";

/// A Redis Cluster of 3 masters and 3 replicas: `redis-server --cluster-enabled yes` processes
/// on free loopback ports, each with its own directory and `cluster-config-file`, joined by
/// `redis-cli --cluster create`, and killed (SIGKILL) on drop with their directories removed.
/// Every node requires [`CLUSTER_PASSWORD`].
pub struct RedisCluster {
    pub nodes: Vec<RedisProcess>,
}

impl RedisProcess {
    /// A node of a [`RedisCluster`], with the cluster's options and `extra` ones, not waited
    /// for (it answers nothing without the password; [`RedisCluster::start_with`] probes it).
    fn cluster_node(extra: &[String]) -> Self {
        let port = free_port();
        // The bus port is chosen too: the default, port + 10000, may be taken or past 65535.
        let bus_port = free_port().to_string();
        let args: Vec<&str> = [
            "--cluster-port",
            &bus_port,
            "--cluster-enabled",
            "yes",
            // In the node's own directory (`--dir`).
            "--cluster-config-file",
            "nodes.conf",
            // Fail over within a couple of seconds of a master's death, whatever the
            // replica's replication lag.
            "--cluster-node-timeout",
            "1000",
            "--cluster-replica-validity-factor",
            "0",
            "--requirepass",
            CLUSTER_PASSWORD,
            "--masterauth",
            CLUSTER_PASSWORD,
        ]
        .into_iter()
        .chain(extra.iter().map(String::as_str))
        .collect();
        let (dir, child) = Self::spawn_server("cluster-node", port, &args);
        Self {
            port,
            child: Some(child),
            _dir: dir,
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }
}

impl RedisCluster {
    /// Starts six nodes, waits until each answers, creates the cluster (`--cluster-replicas 1`:
    /// the first three are masters), and waits until every node says `cluster_state:ok` and
    /// every replica is in sync with its master.
    pub fn start() -> Self {
        Self::start_with(|_| Vec::new())
    }

    /// [`RedisCluster::start`] with more `redis-server` arguments for node `i` (0 to 5) from
    /// `extra(i)`; the harness keeps using each node's plain port.
    pub fn start_with(mut extra: impl FnMut(usize) -> Vec<String>) -> Self {
        let mut nodes: Vec<RedisProcess> = (0..6)
            .map(|i| RedisProcess::cluster_node(&extra(i)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        for node in &mut nodes {
            while cli(node.port, &["PING"]).trim() != "PONG" {
                assert!(node.is_running(), "cluster node on {} exited", node.port);
                assert!(
                    Instant::now() < deadline,
                    "cluster node on {} not answering PING after 10 s",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.extend(["--cluster-replicas", "1", "--cluster-yes"].map(str::to_owned));
        // Bounded: redis-cli waits for the nodes to join for as long as it takes, and nodes
        // that cannot reach each other's bus never do.
        let mut child = Command::new(redis_cli())
            .args(["-a", CLUSTER_PASSWORD, "--no-auth-warning"])
            .args(&create)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run redis-cli --cluster create");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("redis-cli status") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = child.wait_with_output().expect("redis-cli output");
        assert!(
            status.is_some_and(|s| s.success()),
            "redis-cli --cluster create failed or took over 30 s ({status:?}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self { nodes };
        cluster.until_settled(Duration::from_secs(30));
        cluster
    }

    /// Waits until every running node says `cluster_state:ok`, every slot is served, and every
    /// replica's link to its master is up.
    pub fn until_settled(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let settled = self.nodes.iter().filter(|n| n.child.is_some()).all(|node| {
                let info = cli(node.port, &["CLUSTER", "INFO"]);
                let replication = cli(node.port, &["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not settle within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `host:port,…` of every node, for `REDIS_CLUSTER_NODES`.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A running node to ask.
    pub fn any_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .map(|n| n.port)
            .expect("a running node")
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        let reply = cli(self.any_port(), &["CLUSTER", "KEYSLOT", key]);
        reply
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}: {reply}"))
    }

    /// The port of the master serving `slot`, as `CLUSTER NODES` on a running node says now
    /// (`None` if no master that is not failed serves it).
    pub fn master_of(&self, slot: u16) -> Option<u16> {
        let nodes = cli(self.any_port(), &["CLUSTER", "NODES"]);
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let serves = fields.iter().skip(8).any(|range| {
                let (low, high) = range.split_once('-').unwrap_or((range, range));
                matches!((low.parse::<u16>(), high.parse::<u16>()),
                         (Ok(low), Ok(high)) if (low..=high).contains(&slot))
            });
            let port = fields
                .get(1)?
                .split(['@', ','])
                .next()?
                .rsplit(':')
                .next()?;
            serves.then(|| port.parse().ok()).flatten()
        })
    }

    /// The node on `port`.
    pub fn node(&mut self, port: u16) -> &mut RedisProcess {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// A command run with `redis-cli -c` (following redirects) on a running node; its output.
    pub fn command(&self, args: &[&str]) -> String {
        cli_with(self.any_port(), &["-c"], args)
    }
}

/// A command run with `redis-cli` on the node at `port`; its output (empty if unreachable).
pub fn cli(port: u16, args: &[&str]) -> String {
    cli_with(port, &[], args)
}

fn cli_with(port: u16, options: &[&str], args: &[&str]) -> String {
    let output = Command::new(redis_cli())
        .args([
            "-p",
            &port.to_string(),
            "-a",
            CLUSTER_PASSWORD,
            "--no-auth-warning",
        ])
        .args(options)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
