//! The whole topology as local processes on loopback, started in dependency
//! order, each probed for readiness, all killed on drop.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::client::{http_get, Resp};
use crate::envoy_config::{self, EnvoyConfig, LocalAddresses};
use crate::paths::Binaries;
use crate::ports::{free_listener, free_port, listener_on, local, port_of};
use crate::process::{retry_on_taken_port, Process, StartError};
use crate::redis::{
    ClusterOptions, RedisCluster, RedisOptions, RedisProcess, SentinelOptions, MASTER_NAME,
};

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

    /// Every port 0: each is chosen when its process starts, from [`crate::ports`], so tests
    /// never collide with a running demo or with each other (and chosen again if another
    /// process takes it first).
    pub fn free() -> Ports {
        Ports {
            redis: [0; 3],
            sentinels: [0; 3],
            limitd: [0; 2],
            backends: [0; 2],
            envoy: 0,
            admin: 0,
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

/// The window of the shipped rules' fixed-window limits (`rules/ratelimit.yaml`: `60s`).
pub const SHIPPED_WINDOW: Duration = Duration::from_secs(60);

/// How long a test's counted requests may take, even on a loaded machine.
pub const COUNTED_SPAN: Duration = Duration::from_secs(25);

/// Waits, if needed, until the current fixed window of length `window` has at least `need` left.
/// Fixed windows are aligned to the epoch by Redis `TIME`, which for a local Redis is this
/// machine's clock, so this is a wait for the clock, not for readiness: counts that a test makes
/// right after it all fall in one window, and a window boundary cannot reset them midway.
pub fn await_window_left(window: Duration, need: Duration) {
    let window_ms = window.as_millis().max(1);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let left_ms = window_ms - now_ms % window_ms;
    if left_ms < need.as_millis() {
        // The next window starts in `left_ms`; a little more, so that Redis' clock is past it too.
        let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(u64::MAX));
        std::thread::sleep(left + Duration::from_millis(100));
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
    /// Where each process listens; a port 0 is chosen at start ([`Ports::free`]).
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
    /// Configs and logs: removed on drop, unless [`StackOptions::keep_dir`] or a test failed.
    pub dir: PathBuf,
    /// Where each process listens (every port chosen by now).
    pub ports: Ports,
    pub binaries: Binaries,
    pub envoys: Vec<EnvoyAddrs>,
    /// limitd, backends, Envoys.
    processes: BTreeMap<String, Process>,
    /// The Sentinel-managed master, replicas and sentinels, by process name.
    redis: BTreeMap<String, RedisProcess>,
    /// With [`StackOptions::redis_cluster`], the cluster (nodes `redis-cluster-1` to `-6`).
    cluster: Option<RedisCluster>,
    scratch: TempDir,
    keep_dir: bool,
    /// The `LIMITD_TOKEN` limitd runs with, if any.
    limitd_token: Option<String>,
}

impl Stack {
    /// Starts everything: Redis master and replicas, sentinels, limitd, backends, Envoy.
    pub fn start(options: StackOptions) -> Result<Stack, String> {
        let binaries = Binaries::locate();
        let missing = binaries.missing();
        if !missing.is_empty() {
            return Err(format!("missing binaries:\n  {}", missing.join("\n  ")));
        }
        let scratch = tempfile::Builder::new()
            .prefix("ratelimit-stack-")
            .tempdir()
            .map_err(|e| format!("cannot create the stack's directory: {e}"))?;
        let mut stack = Stack {
            dir: scratch.path().to_owned(),
            ports: options.ports.clone(),
            binaries,
            envoys: Vec::new(),
            processes: BTreeMap::new(),
            redis: BTreeMap::new(),
            cluster: None,
            scratch,
            keep_dir: options.keep_dir,
            limitd_token: None,
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
        let (envoy, admin) = (stack.ports.envoy, stack.ports.admin);
        let index = stack.start_envoy(envoy, admin, &options.envoy)?;
        stack.ports.envoy = stack.envoys[index].listener.port();
        stack.ports.admin = stack.envoys[index].admin.port();
        Ok(stack)
    }

    /// For tests: starts a stack on free ports with `envoy`, or panics saying
    /// why (every missing binary included): a test that cannot run its real
    /// parts fails loudly rather than skip.
    ///
    /// Returns at the start of a fixed window of the shipped rules' length with at least
    /// [`COUNTED_SPAN`] left (see [`await_window_left`]): a test that counts requests against a
    /// shipped 60 s limit right after the start counts them all in one window.
    pub fn for_test(envoy: EnvoyOptions) -> Stack {
        Binaries::require();
        let stack = Stack::start(StackOptions {
            envoy,
            ..StackOptions::default()
        })
        .unwrap_or_else(|e| panic!("stack did not start: {e}"));
        await_window_left(SHIPPED_WINDOW, COUNTED_SPAN);
        stack
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
        probe: impl FnMut() -> Result<(), String>,
    ) -> Result<(), StartError> {
        let process = self
            .processes
            .get_mut(name)
            .ok_or_else(|| format!("{name} is not running"))?;
        process.await_ready(READY_WITHIN, probe)
    }

    /// The process name of Redis node `index`: the first master, then the replicas.
    fn redis_name(index: usize) -> String {
        if index == 0 {
            "redis-master".to_owned()
        } else {
            format!("redis-replica-{index}")
        }
    }

    /// Starts Redis node `index` (0: the first master; 1, 2: replicas of it) on its port (a
    /// free one if 0), and waits until it answers.
    fn start_redis_node(&mut self, index: usize) -> Result<(), String> {
        let name = Stack::redis_name(index);
        let mut options = RedisOptions::server().args([
            // Every key limitd writes expires: at the bound, evict those closest to expiring
            // rather than refuse writes (see docker-compose.yml).
            "--maxmemory",
            "256mb",
            "--maxmemory-policy",
            "volatile-ttl",
            // A master that has lost its replicas (cut off, or its replica promoted in a
            // failover) refuses writes rather than accept counts the promoted master will
            // never see (docs/protocol.md, "Counted exactly when admitted").
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag",
            "5",
        ]);
        if index > 0 {
            let master = self.ports.redis[0].to_string();
            options = options.args(["--replicaof", "127.0.0.1", &master]);
        }
        self.ports.redis[index] =
            self.start_redis_process(name, &options, self.ports.redis[index])?;
        Ok(())
    }

    /// Starts `options` as `name` (in a directory of the stack's named after it), on `port`, or
    /// on a free one if 0, replacing any process of that name; returns its port.
    fn start_redis_process(
        &mut self,
        name: String,
        options: &RedisOptions,
        port: u16,
    ) -> Result<u16, String> {
        self.redis.remove(&name);
        let dir = self.dir.join(&name);
        let node = RedisProcess::start(&name, options, &dir, (port != 0).then_some(port))?;
        let port = node.port;
        self.redis.insert(name, node);
        Ok(port)
    }

    fn start_redis(&mut self) -> Result<(), String> {
        for i in 0..self.ports.redis.len() {
            self.start_redis_node(i)?;
        }
        for i in 1..self.ports.redis.len() {
            let replica = &self.redis[&Stack::redis_name(i)];
            crate::poll::eventually(READY_WITHIN, || {
                match replica.command(&["INFO", "replication"])? {
                    Resp::Bulk(Some(info)) if info.contains("master_link_status:up") => Ok(()),
                    other => Err(format!("{} not in sync: {other}", replica.name())),
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
        self.kill(&Stack::redis_name(index));
        self.start_redis_node(index)
    }

    /// Starts six cluster-enabled Redis nodes on free ports, joins them with `redis-cli --cluster
    /// create` (3 masters, each with a replica), and waits until every node says
    /// `cluster_state:ok` and every replica is linked to its master.
    ///
    /// No `min-replicas-to-write` here, unlike the Sentinel stack: each master has one replica,
    /// so after a failover the promoted master would refuse every write until the old one is
    /// back.
    fn start_redis_cluster(&mut self) -> Result<(), String> {
        let options = ClusterOptions {
            node_timeout_ms: 2000,
            args: ["--maxmemory", "256mb", "--maxmemory-policy", "volatile-ttl"]
                .map(str::to_owned)
                .to_vec(),
            ..ClusterOptions::default()
        };
        self.cluster = Some(RedisCluster::start_in(
            &self.dir,
            "redis-cluster",
            &options,
        )?);
        Ok(())
    }

    /// With [`StackOptions::redis_cluster`], the ports of the cluster's nodes (the first three
    /// are its masters at the start); empty with Sentinel.
    pub fn cluster_ports(&self) -> Vec<u16> {
        self.cluster
            .iter()
            .flat_map(|cluster| cluster.nodes.iter().map(|node| node.port))
            .collect()
    }

    fn cluster(&self) -> Result<&RedisCluster, String> {
        self.cluster
            .as_ref()
            .ok_or_else(|| "this stack has no Redis Cluster".to_owned())
    }

    /// A command about one key on the Redis Cluster, on the master of the key's slot.
    pub fn cluster_command(&self, args: &[&str]) -> Result<Resp, String> {
        self.cluster()?.command(args)
    }

    /// The process name and port of the cluster master serving `key`'s slot, as the first
    /// running node that answers `CLUSTER NODES` reports it (a master it marks failed does not
    /// count).
    pub fn cluster_master_of(&self, key: &str) -> Result<(String, u16), String> {
        let cluster = self.cluster()?;
        let slot = cluster.slot_of(key)?;
        let port = cluster
            .master_of(slot)
            .ok_or_else(|| format!("no live master serves slot {slot}"))?;
        let node = cluster
            .nodes
            .iter()
            .find(|node| node.port == port)
            .ok_or_else(|| format!("{port} is not a node of this stack"))?;
        Ok((node.name().to_owned(), port))
    }

    /// The port of the master as each sentinel reports it (`None` for a
    /// sentinel that does not answer), in sentinel order.
    pub fn master_ports(&self) -> Vec<Option<u16>> {
        (1..=self.ports.sentinels.len())
            .map(|i| {
                let sentinel = self.redis.get(&format!("sentinel-{i}"))?;
                match sentinel.command(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME]) {
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
        let options = RedisOptions::sentinel(SentinelOptions {
            quorum: 2,
            down_after_ms: 2000,
            failover_timeout_ms: 10000,
            ..SentinelOptions::watching(self.ports.redis[0])
        });
        for i in 0..self.ports.sentinels.len() {
            let name = format!("sentinel-{}", i + 1);
            self.ports.sentinels[i] =
                self.start_redis_process(name, &options, self.ports.sentinels[i])?;
        }
        for i in 0..self.ports.sentinels.len() {
            let sentinel = &self.redis[&format!("sentinel-{}", i + 1)];
            crate::poll::eventually(READY_WITHIN, || {
                match sentinel.command(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME])? {
                    Resp::Array(Some(addr)) if addr.len() == 2 => Ok(()),
                    other => Err(format!("{} names no master: {other}", sentinel.name())),
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
        let store: Vec<(String, String)> = match &self.cluster {
            None => vec![
                ("SENTINEL_HOSTS".into(), sentinels.join(",")),
                ("REDIS_MASTER".into(), MASTER_NAME.into()),
            ],
            Some(cluster) => vec![("REDIS_CLUSTER_NODES".into(), cluster.seeds())],
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

    /// A listening socket for a process that takes one, on `port`, or on a free port if 0.
    fn listener(port: u16, name: &str) -> Result<TcpListener, String> {
        match port {
            0 => Ok(free_listener()),
            port => listener_on(port)
                .map_err(|e| format!("cannot listen on 127.0.0.1:{port} for {name}: {e}")),
        }
    }

    /// Starts (or restarts) limitd `index` (0 or 1) on its port and waits until it is ready.
    /// It is handed its listening socket, bound here (a free port at the first start), so no
    /// other process can take the port between the choice and the start.
    pub fn start_limitd(&mut self, index: usize) -> Result<(), String> {
        let name = format!("limitd-{}", index + 1);
        let listener = Stack::listener(self.ports.limitd[index], &name)?;
        self.ports.limitd[index] = port_of(&listener);
        let mut command = Command::new(&self.binaries.limitd);
        command
            .env_remove("REDIS_URL")
            .env_remove("SENTINEL_HOSTS")
            .env_remove("REDIS_CLUSTER_NODES")
            .envs(self.limitd_env(index));
        let process = Process::spawn_listening(&name, command, &self.dir, listener)
            .map_err(|e| e.to_string())?;
        self.processes.insert(name.clone(), process);
        let addr = local(self.ports.limitd[index]);
        self.await_ready(&name, || match http_get(addr, "/readyz", None) {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        })
        .map_err(|e| e.to_string())
    }

    /// Starts backend `index` on its port, handed its listening socket as limitd is.
    fn start_backend(&mut self, index: usize) -> Result<(), String> {
        let name = format!("backend-{}", index + 1);
        let listener = Stack::listener(self.ports.backends[index], &name)?;
        let port = port_of(&listener);
        self.ports.backends[index] = port;
        let mut command = Command::new(&self.binaries.backend);
        command.args([
            "--name",
            &name,
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
        ]);
        let process = Process::spawn_listening(&name, command, &self.dir, listener)
            .map_err(|e| e.to_string())?;
        self.processes.insert(name.clone(), process);
        self.await_ready(&name, || match http_get(local(port), "/health", None) {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        })
        .map_err(|e| e.to_string())
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

    /// Starts another Envoy in front of the same backends and limitd, on free ports, and waits
    /// until it serves. Returns its index in [`Stack::envoys`].
    pub fn add_envoy(&mut self, options: &EnvoyOptions) -> Result<usize, String> {
        self.start_envoy(0, 0, options)
    }

    /// [`Stack::add_envoy`] on `port` and `admin`; a port 0 is chosen free, and chosen again
    /// if another process takes it before Envoy binds it.
    fn start_envoy(
        &mut self,
        port: u16,
        admin: u16,
        options: &EnvoyOptions,
    ) -> Result<usize, String> {
        let name = format!("envoy-{}", self.envoys.len() + 1);
        let concurrency = options.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        let chosen = |port: u16| if port == 0 { free_port() } else { port };
        let mut start = || -> Result<EnvoyAddrs, StartError> {
            let (listener, admin) = (local(chosen(port)), local(chosen(admin)));
            let config = self.envoy_config(listener.port(), admin.port(), options)?;
            self.spawn_envoy_with(&name, &config, concurrency)?;
            self.await_envoy(&name, admin)?;
            Ok(EnvoyAddrs {
                listener,
                admin,
                name: name.clone(),
            })
        };
        let envoy = if port == 0 || admin == 0 {
            retry_on_taken_port(start)?
        } else {
            start().map_err(|e| e.to_string())?
        };
        self.envoys.push(envoy);
        Ok(self.envoys.len() - 1)
    }

    /// Waits until the Envoy `name` is ready and sees every backend and limitd healthy.
    fn await_envoy(&mut self, name: &str, admin: SocketAddr) -> Result<(), StartError> {
        let backends = self.ports.backends;
        let limitds = self.ports.limitd;
        self.await_ready(name, || {
            let ready = http_get(admin, "/ready", None).map_err(|e| e.to_string())?;
            if ready.status != 200 {
                return Err(format!("/ready: {}", ready.status));
            }
            // Round robin is only visible once both backends passed their health check,
            // and checks only spread over both limitd once both passed theirs.
            let clusters = http_get(admin, "/clusters", None)
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
        })
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
        if self.processes.contains_key(name) {
            return self.processes.get_mut(name);
        }
        self.redis_node(name).map(RedisProcess::process)
    }

    /// A Redis process of the stack by name: `redis-master`, `sentinel-1`, `redis-cluster-3`...
    fn redis_node(&mut self, name: &str) -> Option<&mut RedisProcess> {
        if let Some(node) = self.redis.get_mut(name) {
            return Some(node);
        }
        self.cluster
            .as_mut()?
            .nodes
            .iter_mut()
            .find(|node| node.name() == name)
    }

    /// Kills a process of the stack (SIGKILL) and forgets it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut process) = self.processes.remove(name) {
            process.kill();
        } else if let Some(node) = self.redis_node(name) {
            node.kill();
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
        let mut redis: Vec<&mut RedisProcess> = self.redis.values_mut().collect();
        redis.extend(self.cluster.iter_mut().flat_map(|c| c.nodes.iter_mut()));
        if failed {
            eprintln!(
                "--- stack {} failed; process logs follow ---",
                self.dir.display()
            );
            let processes = self.processes.values();
            for process in processes.chain(redis.iter_mut().map(|node| &*node.process())) {
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
            if let Some(mut process) = self.processes.remove(name) {
                process.kill();
            }
        }
        for node in redis {
            node.kill();
        }
        self.scratch.disable_cleanup(failed || self.keep_dir);
    }
}
