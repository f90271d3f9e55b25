//! The whole topology as local processes on loopback, started in dependency
//! order, each probed for readiness, all killed on drop.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::client::{eventually, http_get, redis_command, Resp};
use crate::envoy_config::{self, EnvoyConfig, LocalAddresses};
use crate::paths::Binaries;
use crate::process::Process;

/// The name Sentinel monitors the master under.
pub const MASTER_NAME: &str = "mymaster";

/// How long any one process may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Every port of a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    /// Master, replica 1, replica 2.
    pub redis: [u16; 3],
    pub sentinels: [u16; 3],
    pub limitd: [u16; 2],
    pub backends: [u16; 2],
    pub envoy: u16,
    pub admin: u16,
}

impl Ports {
    /// The documented demo ports (docs/architecture.md), as in the container topology.
    pub fn demo() -> Ports {
        Ports {
            redis: [6379, 6380, 6381],
            sentinels: [26379, 26380, 26381],
            limitd: [8081, 8082],
            backends: [8001, 8002],
            envoy: 8000,
            admin: 9901,
        }
    }

    /// Free ports chosen by the OS, so tests never collide with a running demo
    /// or with each other.
    pub fn free() -> Ports {
        Ports {
            redis: [free_port(), free_port(), free_port()],
            sentinels: [free_port(), free_port(), free_port()],
            limitd: [free_port(), free_port()],
            backends: [free_port(), free_port()],
            envoy: free_port(),
            admin: free_port(),
        }
    }

    /// Every port with the name of what listens there.
    pub fn all(&self) -> Vec<(String, u16)> {
        let mut all = vec![
            ("envoy".to_owned(), self.envoy),
            ("envoy admin".to_owned(), self.admin),
        ];
        let named = |prefix: &str, ports: &[u16]| -> Vec<(String, u16)> {
            ports
                .iter()
                .enumerate()
                .map(|(i, &p)| (format!("{prefix}-{}", i + 1), p))
                .collect()
        };
        all.extend(named("backend", &self.backends));
        all.extend(named("limitd", &self.limitd));
        all.push(("redis-master".to_owned(), self.redis[0]));
        all.extend(named("redis-replica", &self.redis[1..]));
        all.extend(named("sentinel", &self.sentinels));
        all
    }

    /// Names every port that something else already listens on.
    pub fn check_free(&self) -> Result<(), String> {
        let taken: Vec<String> = self
            .all()
            .into_iter()
            .filter(|(_, port)| TcpListener::bind((Ipv4Addr::LOCALHOST, *port)).is_err())
            .map(|(name, port)| format!("port {port} (for {name}) is already in use"))
            .collect();
        if taken.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}; stop whatever holds it and try again",
                taken.join(", ")
            ))
        }
    }
}

/// The ports handed out so far by this process, as an offset into the range.
static NEXT_PORT: AtomicUsize = AtomicUsize::new(0);

/// A port that is free now and that this process has not handed out before.
///
/// Ports come from 10000-32767, below Linux's ephemeral range (32768-60999):
/// a port the OS picks for port 0 is soon picked again for some outgoing
/// connection, which would then collide with the server meant to listen there.
pub fn free_port() -> u16 {
    const FIRST: usize = 10_000;
    const COUNT: usize = 32_768 - FIRST;
    let demo = Ports::demo().all();
    // Start somewhere that depends on the process, so concurrent runs rarely meet.
    let start = (std::process::id() as usize * 7919) % COUNT;
    loop {
        let port = (FIRST + (start + NEXT_PORT.fetch_add(1, Ordering::Relaxed)) % COUNT) as u16;
        if demo.iter().all(|(_, p)| *p != port)
            && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        {
            return port;
        }
    }
}

/// Writes `text` to a temporary file beside `path`, then renames it over `path`: a reader (Envoy
/// watching the directory) sees the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} names no file", path.display()))?;
    let temporary = path.with_file_name(format!(".{}.new", name.to_string_lossy()));
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Changes to an Envoy's configuration beyond addresses and the wasm path.
#[derive(Debug, Clone, Default)]
pub struct EnvoyOptions {
    /// Exact snippets of `envoy.yaml` or `rules/ratelimit.yaml` to replace, each of which must
    /// occur once in the two (e.g. `"failure_mode": "allow"` → `"failure_mode": "deny"`).
    pub replacements: Vec<(String, String)>,
    /// HTTP filters to swap, applied after `replacements`: (filter name, YAML
    /// list items from column 0 to put in its place; empty removes it). See
    /// [`envoy_config::replace_http_filter`].
    pub http_filters: Vec<(String, String)>,
    /// Envoy's `--concurrency` (worker threads); 2 when unset.
    pub concurrency: Option<u32>,
    /// The wasm module to load instead of the one built (e.g. an earlier
    /// release's, for an upgrade test).
    pub wasm: Option<PathBuf>,
}

impl EnvoyOptions {
    pub fn replace(mut self, from: &str, to: &str) -> Self {
        self.replacements.push((from.to_owned(), to.to_owned()));
        self
    }

    /// Puts `items` (YAML list items written from column 0) in place of the
    /// HTTP filter `name`.
    pub fn replace_http_filter(mut self, name: &str, items: &str) -> Self {
        self.http_filters.push((name.to_owned(), items.to_owned()));
        self
    }

    /// Removes the HTTP filter `name` (e.g. [`envoy_config::FILTER_NAME`]).
    pub fn without_http_filter(self, name: &str) -> Self {
        self.replace_http_filter(name, "")
    }

    /// Moves the shipped shadow rule `api_global_shadow`, which matches every path under `/api/`,
    /// to `/api/shadow-only/`, so that rules a test adds under `/api/` alone match their paths.
    pub fn shadow_rule_moved_off_api(self) -> Self {
        let rules = EnvoyConfig::shipped()
            .map(|config| config.rules)
            .unwrap_or_default();
        let name = r#""name": "api_global_shadow","#;
        let from = rules
            .find(name)
            .and_then(|at| {
                let line_end = at + rules[at..].find('\n')?;
                let next_end = line_end + 1 + rules[line_end + 1..].find('\n')?;
                Some(rules[at..next_end].to_owned())
            })
            .unwrap_or_else(|| name.to_owned());
        let to = from.replace(r#""/api/""#, r#""/api/shadow-only/""#);
        self.replace(&from, &to)
    }

    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = Some(workers);
        self
    }

    pub fn wasm(mut self, path: &Path) -> Self {
        self.wasm = Some(path.to_owned());
        self
    }
}

/// Envoy's worker threads when [`EnvoyOptions::concurrency`] is unset.
const DEFAULT_CONCURRENCY: u32 = 2;

/// How to start a stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub ports: Ports,
    pub envoy: EnvoyOptions,
    /// Keep the working directory (configs and logs) after the stack stops.
    pub keep_dir: bool,
    /// Run limitd without `LIMITD_TOKEN` (by default it gets the rules file's
    /// `limitd_token`, as the filter sends it).
    pub limitd_without_token: bool,
    /// Keep the counters in a Redis Cluster (3 masters, 3 replicas, on free ports) instead of
    /// the Sentinel-managed master and replicas; limitd gets `REDIS_CLUSTER_NODES`.
    pub redis_cluster: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            ports: Ports::free(),
            envoy: EnvoyOptions::default(),
            keep_dir: false,
            limitd_without_token: false,
            redis_cluster: false,
        }
    }
}

/// An Envoy of the stack: where it listens, and its name (of its process, log and files).
#[derive(Debug, Clone)]
pub struct EnvoyAddrs {
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    pub name: String,
}

/// A running topology. Dropping it kills every process it started.
#[derive(Debug)]
pub struct Stack {
    pub dir: PathBuf,
    pub ports: Ports,
    pub binaries: Binaries,
    pub envoys: Vec<EnvoyAddrs>,
    processes: BTreeMap<String, Process>,
    keep_dir: bool,
    /// The `LIMITD_TOKEN` limitd runs with, if any.
    limitd_token: Option<String>,
    /// With [`StackOptions::redis_cluster`], the ports of the cluster's nodes (the first three
    /// are its masters at the start); empty with Sentinel.
    pub cluster_ports: Vec<u16>,
}

static STACKS: AtomicUsize = AtomicUsize::new(0);

impl Stack {
    /// Starts everything: Redis master and replicas, sentinels, limitd, backends, Envoy.
    pub fn start(options: StackOptions) -> Result<Stack, String> {
        let binaries = Binaries::locate();
        let missing = binaries.missing();
        if !missing.is_empty() {
            return Err(format!("missing binaries:\n  {}", missing.join("\n  ")));
        }
        let dir = std::env::temp_dir().join(format!(
            "ratelimit-stack-{}-{}",
            std::process::id(),
            STACKS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut stack = Stack {
            dir,
            ports: options.ports.clone(),
            binaries,
            envoys: Vec::new(),
            processes: BTreeMap::new(),
            keep_dir: options.keep_dir,
            limitd_token: None,
            cluster_ports: Vec::new(),
        };
        if !options.limitd_without_token {
            stack.limitd_token = Some(EnvoyConfig::shipped()?.limitd_token()?);
        }
        if options.redis_cluster {
            stack.start_redis_cluster()?;
        } else {
            stack.start_redis()?;
            stack.start_sentinels()?;
        }
        for i in 0..2 {
            stack.start_limitd(i)?;
        }
        for i in 0..2 {
            stack.start_backend(i)?;
        }
        stack.start_envoy(options.ports.envoy, options.ports.admin, &options.envoy)?;
        Ok(stack)
    }

    /// For tests: starts a stack on free ports with `envoy`, or panics saying
    /// why (every missing binary included): a test that cannot run its real
    /// parts fails loudly rather than skip.
    pub fn for_test(envoy: EnvoyOptions) -> Stack {
        Binaries::require();
        Stack::start(StackOptions {
            envoy,
            ..StackOptions::default()
        })
        .unwrap_or_else(|e| panic!("stack did not start: {e}"))
    }

    fn spawn(&mut self, name: &str, command: Command) -> Result<(), String> {
        let process = Process::spawn(name, command, &self.dir).map_err(|e| e.to_string())?;
        self.processes.insert(name.to_owned(), process);
        Ok(())
    }

    /// Waits for `probe`, failing with the process's log if it exits or times out.
    fn await_ready(
        &mut self,
        name: &str,
        mut probe: impl FnMut() -> Result<(), String>,
    ) -> Result<(), String> {
        let result = eventually(READY_WITHIN, || {
            if let Some(status) = self.processes.get_mut(name).and_then(Process::try_wait) {
                return Ok(Err(format!("{name} exited ({status})")));
            }
            probe().map(Ok)
        });
        match result.and_then(|r| r) {
            Ok(()) => Ok(()),
            Err(e) => {
                let log = self
                    .processes
                    .get(name)
                    .map(|p| p.log_tail(4000))
                    .unwrap_or_default();
                Err(format!(
                    "{name} did not become ready: {e}\n--- {name} log ---\n{log}"
                ))
            }
        }
    }

    /// The process name of Redis node `index`: the first master, then the replicas.
    fn redis_name(index: usize) -> String {
        if index == 0 {
            "redis-master".to_owned()
        } else {
            format!("redis-replica-{index}")
        }
    }

    /// `redis-server` on `port` with its data in `data`, no persistence, and the memory bound
    /// every node of a stack has; the caller adds the node's role.
    fn redis_server(&self, port: u16, data: &Path) -> Command {
        let mut command = Command::new(&self.binaries.redis_server);
        command.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            // Every key limitd writes expires: at the bound, evict those closest to expiring
            // rather than refuse writes (see docker-compose.yml).
            "--maxmemory",
            "256mb",
            "--maxmemory-policy",
            "volatile-ttl",
        ]);
        command.arg("--dir").arg(data);
        command
    }

    /// Starts the process of Redis node `index` (0: the first master; 1, 2:
    /// replicas of it) on its port, without waiting.
    fn spawn_redis(&mut self, index: usize) -> Result<(), String> {
        let name = Stack::redis_name(index);
        let port = self.ports.redis[index];
        let data = self.dir.join(&name);
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let mut command = self.redis_server(port, &data);
        command.args([
            // A master that has lost its replicas (cut off, or its replica promoted in a
            // failover) refuses writes rather than accept counts the promoted master will
            // never see (docs/protocol.md, "Counted exactly when admitted").
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            "5",
        ]);
        if index > 0 {
            command.args(["--replicaof", "127.0.0.1", &self.ports.redis[0].to_string()]);
        }
        self.spawn(&name, command)
    }

    fn start_redis(&mut self) -> Result<(), String> {
        for i in 0..self.ports.redis.len() {
            self.spawn_redis(i)?;
        }
        for (i, &port) in self.ports.redis.clone().iter().enumerate() {
            self.await_ready(&Stack::redis_name(i), || {
                match redis_command(port, &["INFO", "replication"]) {
                    Ok(Resp::Bulk(Some(info)))
                        if i == 0 || info.contains("master_link_status:up") =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                }
            })?;
        }
        Ok(())
    }

    /// Starts Redis node `index` again (killing it first if it still runs), on
    /// the same port with the same arguments as at the start, and waits until
    /// it answers `PING`. The first master comes back as a master; after a
    /// failover Sentinel then turns it into a replica of the promoted one.
    pub fn restart_redis(&mut self, index: usize) -> Result<(), String> {
        let name = Stack::redis_name(index);
        self.kill(&name);
        self.spawn_redis(index)?;
        let port = self.ports.redis[index];
        self.await_ready(&name, || match redis_command(port, &["PING"]) {
            Ok(Resp::Simple(pong)) if pong == "PONG" => Ok(()),
            other => Err(format!("{other:?}")),
        })
    }

    /// Starts six cluster-enabled Redis nodes on free ports, joins them with `redis-cli --cluster
    /// create` (3 masters, each with a replica), and waits until every node says
    /// `cluster_state:ok` and every replica is linked to its master.
    ///
    /// No `min-replicas-to-write` here, unlike the Sentinel stack: each master has one replica,
    /// so after a failover the promoted master would refuse every write until the old one is
    /// back.
    fn start_redis_cluster(&mut self) -> Result<(), String> {
        let cli = crate::paths::redis_cli();
        if !cli.is_file() {
            return Err(format!(
                "redis-cli not found ({}): the cluster stack needs it to create the cluster \
                 (apt-get install redis-tools, or set RATELIMIT_REDIS_CLI)",
                cli.display()
            ));
        }
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        for (i, &port) in ports.iter().enumerate() {
            let name = format!("redis-cluster-{}", i + 1);
            let data = self.dir.join(&name);
            std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
            let mut command = self.redis_server(port, &data);
            command.args([
                // The bus port is chosen too: the default, port + 10000, may be taken.
                "--cluster-port",
                &free_port().to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "2000",
            ]);
            command
                .arg("--cluster-config-file")
                .arg(data.join("nodes.conf"));
            self.spawn(&name, command)?;
        }
        for (i, &port) in ports.iter().enumerate() {
            self.await_ready(&format!("redis-cluster-{}", i + 1), || match redis_command(
                port,
                &["PING"],
            ) {
                Ok(Resp::Simple(pong)) if pong == "PONG" => Ok(()),
                other => Err(format!("{other:?}")),
            })?;
        }
        // Bounded: redis-cli waits for the nodes to join for as long as it takes.
        let mut child = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", cli.display()))?;
        let status = eventually(READY_WITHIN, || match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still waiting for the nodes to join".to_owned()),
            Err(e) => Err(e.to_string()),
        });
        if status.is_err() {
            let _ = child.kill();
        }
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        if !status.as_ref().is_ok_and(|s| s.success()) {
            return Err(format!(
                "redis-cli --cluster create failed ({status:?}): {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        for (i, &port) in ports.iter().enumerate() {
            self.await_ready(&format!("redis-cluster-{}", i + 1), || {
                let info = match redis_command(port, &["CLUSTER", "INFO"]) {
                    Ok(Resp::Bulk(Some(info))) => info,
                    other => return Err(format!("{other:?}")),
                };
                let replication = match redis_command(port, &["INFO", "replication"]) {
                    Ok(Resp::Bulk(Some(info))) => info,
                    other => return Err(format!("{other:?}")),
                };
                if info.contains("cluster_state:ok")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
                {
                    Ok(())
                } else {
                    Err(format!("{info}\n{replication}"))
                }
            })?;
        }
        self.cluster_ports = ports;
        Ok(())
    }

    /// A command about one key on the Redis Cluster: sent to each node in turn until one
    /// answers other than `MOVED` (the master of the key's slot).
    pub fn cluster_command(&self, args: &[&str]) -> Result<Resp, String> {
        for &port in &self.cluster_ports {
            match redis_command(port, args) {
                Ok(Resp::Error(e)) if e.starts_with("MOVED") => continue,
                Ok(reply) => return Ok(reply),
                Err(_) => continue,
            }
        }
        Err(format!("no cluster node answered {args:?}"))
    }

    /// The process name and port of the cluster master serving `key`'s slot, as the first
    /// running node that answers `CLUSTER NODES` reports it (a master it marks failed does not
    /// count).
    pub fn cluster_master_of(&self, key: &str) -> Result<(String, u16), String> {
        let slot = match self.cluster_command(&["CLUSTER", "KEYSLOT", key])? {
            Resp::Integer(slot) => slot,
            other => return Err(format!("CLUSTER KEYSLOT {key}: {other:?}")),
        };
        for &port in &self.cluster_ports {
            let Ok(Resp::Bulk(Some(nodes))) = redis_command(port, &["CLUSTER", "NODES"]) else {
                continue;
            };
            for line in nodes.lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
                    continue;
                };
                if !flags.contains("master") || flags.contains("fail") {
                    continue;
                }
                let serves = fields.iter().skip(8).any(|range| {
                    let (low, high) = range.split_once('-').unwrap_or((range, range));
                    matches!((low.parse::<i64>(), high.parse::<i64>()),
                             (Ok(low), Ok(high)) if (low..=high).contains(&slot))
                });
                let node_port = addr
                    .split(['@', ','])
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok());
                if let (true, Some(node_port)) = (serves, node_port) {
                    let index = self
                        .cluster_ports
                        .iter()
                        .position(|&p| p == node_port)
                        .ok_or_else(|| format!("{node_port} is not a node of this stack"))?;
                    return Ok((format!("redis-cluster-{}", index + 1), node_port));
                }
            }
            return Err(format!("no live master serves slot {slot} ({port} says)"));
        }
        Err("no cluster node answered CLUSTER NODES".to_owned())
    }

    /// The port of the master as each sentinel reports it (`None` for a
    /// sentinel that does not answer), in sentinel order.
    pub fn master_ports(&self) -> Vec<Option<u16>> {
        self.ports
            .sentinels
            .iter()
            .map(|&port| {
                match redis_command(port, &["SENTINEL", "get-master-addr-by-name", MASTER_NAME]) {
                    Ok(Resp::Array(Some(addr))) => addr.get(1)?.text()?.parse().ok(),
                    _ => None,
                }
            })
            .collect()
    }

    /// The port of the master, as the first sentinel that answers reports it.
    pub fn master_port(&self) -> Result<u16, String> {
        self.master_ports()
            .into_iter()
            .flatten()
            .next()
            .ok_or_else(|| "no sentinel names a master".to_owned())
    }

    fn start_sentinels(&mut self) -> Result<(), String> {
        for (i, &port) in self.ports.sentinels.clone().iter().enumerate() {
            let name = format!("sentinel-{}", i + 1);
            let conf = self.dir.join(format!("{name}.conf"));
            // Sentinel rewrites its configuration file, so each gets its own writable copy.
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 2000\n\
                 sentinel failover-timeout {MASTER_NAME} 10000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = self.dir.display(),
                master = self.ports.redis[0],
            );
            std::fs::write(&conf, text).map_err(|e| e.to_string())?;
            let mut command = Command::new(&self.binaries.redis_sentinel);
            command.arg(&conf);
            self.spawn(&name, command)?;
        }
        for (i, &port) in self.ports.sentinels.clone().iter().enumerate() {
            self.await_ready(&format!("sentinel-{}", i + 1), || {
                match redis_command(port, &["SENTINEL", "get-master-addr-by-name", MASTER_NAME]) {
                    Ok(Resp::Array(Some(addr))) if addr.len() == 2 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })?;
        }
        Ok(())
    }

    /// The environment limitd is started with.
    pub fn limitd_env(&self, index: usize) -> Vec<(String, String)> {
        let sentinels: Vec<String> = self
            .ports
            .sentinels
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let store: Vec<(String, String)> = if self.cluster_ports.is_empty() {
            vec![
                ("SENTINEL_HOSTS".into(), sentinels.join(",")),
                ("REDIS_MASTER".into(), MASTER_NAME.into()),
            ]
        } else {
            let nodes: Vec<String> = self
                .cluster_ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
            vec![("REDIS_CLUSTER_NODES".into(), nodes.join(","))]
        };
        vec![
            (
                "LIMITD_LISTEN".into(),
                format!("127.0.0.1:{}", self.ports.limitd[index]),
            ),
            ("RUST_LOG".into(), "info".into()),
        ]
        .into_iter()
        .chain(store)
        .chain(
            self.limitd_token
                .iter()
                .map(|token| ("LIMITD_TOKEN".into(), token.clone())),
        )
        .collect()
    }

    /// Starts (or restarts) limitd `index` (0 or 1) and waits until it is ready.
    pub fn start_limitd(&mut self, index: usize) -> Result<(), String> {
        let name = format!("limitd-{}", index + 1);
        let mut command = Command::new(&self.binaries.limitd);
        command
            .env_remove("REDIS_URL")
            .env_remove("SENTINEL_HOSTS")
            .env_remove("REDIS_CLUSTER_NODES")
            .envs(self.limitd_env(index));
        self.spawn(&name, command)?;
        let addr = local(self.ports.limitd[index]);
        self.await_ready(&name, || match http_get(addr, "/readyz", None) {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        })
    }

    fn start_backend(&mut self, index: usize) -> Result<(), String> {
        let name = format!("backend-{}", index + 1);
        let port = self.ports.backends[index];
        let mut command = Command::new(&self.binaries.backend);
        command.args([
            "--name",
            &name,
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
        ]);
        self.spawn(&name, command)?;
        self.await_ready(&name, || match http_get(local(port), "/health", None) {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        })
    }

    /// The configuration an Envoy of this stack runs with.
    pub fn envoy_config(
        &self,
        port: u16,
        admin: u16,
        options: &EnvoyOptions,
    ) -> Result<EnvoyConfig, String> {
        let addresses = LocalAddresses {
            listener: local(port),
            admin: local(admin),
            backends: [local(self.ports.backends[0]), local(self.ports.backends[1])],
            limitds: [local(self.ports.limitd[0]), local(self.ports.limitd[1])],
            wasm: options.wasm.as_deref().unwrap_or(&self.binaries.wasm),
        };
        let mut config =
            envoy_config::rewrite(&EnvoyConfig::shipped()?, &addresses, &options.replacements)?;
        for (name, items) in &options.http_filters {
            config.bootstrap = envoy_config::replace_http_filter(&config.bootstrap, name, items)?;
        }
        Ok(config)
    }

    /// The directory an Envoy named `name` reads its rules from (the file
    /// [`envoy_config::RULES_FILE`] in it).
    fn rules_dir(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-rules"))
    }

    /// Starts the process of an Envoy named `name` with a given configuration.
    pub fn spawn_envoy(&mut self, name: &str, config: &EnvoyConfig) -> Result<(), String> {
        self.spawn_envoy_with(name, config, DEFAULT_CONCURRENCY)
    }

    /// Like [`Stack::spawn_envoy`], with `concurrency` worker threads.
    pub fn spawn_envoy_with(
        &mut self,
        name: &str,
        config: &EnvoyConfig,
        concurrency: u32,
    ) -> Result<(), String> {
        let rules = self.rules_dir(name);
        std::fs::create_dir_all(&rules).map_err(|e| e.to_string())?;
        write_atomically(&rules.join(envoy_config::RULES_FILE), &config.rules)?;
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config.bootstrap_with_rules_in(&rules)?)
            .map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.binaries.envoy);
        command.arg("-c").arg(&path).args([
            "--concurrency",
            &concurrency.to_string(),
            "--disable-hot-restart",
            "--log-level",
            "info",
        ]);
        self.spawn(name, command)
    }

    /// The rules file Envoy `index` reads (and watches).
    pub fn rules_file(&self, index: usize) -> PathBuf {
        self.rules_dir(&self.envoys[index].name)
            .join(envoy_config::RULES_FILE)
    }

    /// The rules file Envoy `index` runs with now.
    pub fn rules(&self, index: usize) -> String {
        let path = self.rules_file(index);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// Puts a new version of Envoy `index`'s rules file in place as an operator would: written
    /// beside it, then renamed over it, which Envoy sees and applies (or refuses) by itself.
    pub fn set_rules(&self, index: usize, rules: &str) -> Result<(), String> {
        write_atomically(&self.rules_file(index), rules)
    }

    /// Starts another Envoy in front of the same backends and limitd, and
    /// waits until it serves. Returns its index in [`Stack::envoys`].
    pub fn start_envoy(
        &mut self,
        port: u16,
        admin: u16,
        options: &EnvoyOptions,
    ) -> Result<usize, String> {
        let name = format!("envoy-{}", self.envoys.len() + 1);
        let config = self.envoy_config(port, admin, options)?;
        let concurrency = options.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        self.spawn_envoy_with(&name, &config, concurrency)?;
        let admin_addr = local(admin);
        let backends = self.ports.backends;
        let limitds = self.ports.limitd;
        self.await_ready(&name, || {
            let ready = http_get(admin_addr, "/ready", None).map_err(|e| e.to_string())?;
            if ready.status != 200 {
                return Err(format!("/ready: {}", ready.status));
            }
            // Round robin is only visible once both backends passed their health check,
            // and checks only spread over both limitd once both passed theirs.
            let clusters = http_get(admin_addr, "/clusters", None)
                .map_err(|e| e.to_string())?
                .body;
            let upstreams = backends.iter().map(|p| ("backends", p));
            for (cluster, port) in upstreams.chain(limitds.iter().map(|p| ("limitd", p))) {
                let flag = format!("{cluster}::127.0.0.1:{port}::health_flags::healthy");
                if !clusters.contains(&flag) {
                    return Err(format!("{cluster} on port {port} not healthy yet"));
                }
            }
            Ok(())
        })?;
        self.envoys.push(EnvoyAddrs {
            listener: local(port),
            admin: admin_addr,
            name,
        });
        Ok(self.envoys.len() - 1)
    }

    /// Where Envoy `index` listens for clients.
    pub fn envoy(&self, index: usize) -> SocketAddr {
        self.envoys[index].listener
    }

    /// A counter or gauge from an Envoy's admin `/stats` (0 when absent:
    /// Envoy only shows a wasm counter once it was defined).
    pub fn envoy_stat(&self, index: usize, name: &str) -> u64 {
        let path = format!("/stats?filter=^{}$", name.replace('.', "\\."));
        http_get(self.envoys[index].admin, &path, None)
            .ok()
            .and_then(|r| {
                r.body.lines().find_map(|line| {
                    line.strip_prefix(&format!("{name}: "))
                        .and_then(|v| v.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    /// The health flags an Envoy's admin `/clusters` shows for the host on
    /// 127.0.0.1:`port` of `cluster` (`healthy`, `/failed_active_hc`,
    /// `/failed_outlier_check`, ...); `None` when the admin does not answer.
    pub fn envoy_health_flags(&self, index: usize, cluster: &str, port: u16) -> Option<String> {
        let prefix = format!("{cluster}::127.0.0.1:{port}::health_flags::");
        http_get(self.envoys[index].admin, "/clusters", None)
            .ok()?
            .body
            .lines()
            .find_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
    }

    /// One series of limitd `index`'s `/metrics`, written as in the exposition
    /// (e.g. `limitd_failovers_total`, `limitd_checks_total{result="allowed"}`);
    /// `None` when absent or when limitd does not answer.
    pub fn limitd_metric(&self, index: usize, series: &str) -> Option<f64> {
        let response = http_get(local(self.ports.limitd[index]), "/metrics", None).ok()?;
        response.body.lines().find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// A process of the stack by name (`redis-master`, `sentinel-2`, `limitd-1`, `envoy-1`, ...).
    pub fn process(&mut self, name: &str) -> Option<&mut Process> {
        self.processes.get_mut(name)
    }

    /// Kills a process of the stack (SIGKILL) and forgets it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut process) = self.processes.remove(name) {
            process.kill();
        }
    }

    /// A description of every process and port, for the demo's banner.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for (name, port) in self.ports.all() {
            let _ = writeln!(text, "  {name:<16} 127.0.0.1:{port}");
        }
        let _ = writeln!(text, "  logs and configs: {}", self.dir.display());
        text
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            eprintln!(
                "--- stack {} failed; process logs follow ---",
                self.dir.display()
            );
            for process in self.processes.values() {
                eprintln!("--- {} ---\n{}", process.name, process.log_tail(3000));
            }
        }
        // Envoys first, so no request races the others' shutdown.
        let names: Vec<String> = self.processes.keys().cloned().collect();
        for name in names
            .iter()
            .filter(|n| n.starts_with("envoy"))
            .chain(names.iter())
        {
            self.kill(name);
        }
        if !failed && !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
