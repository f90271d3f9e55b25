//! Real `redis-server` and `redis-sentinel` processes for the tests: a data node, a sentinel and
//! a cluster node, all from one base command; readiness by probing (`PING`); a start on free
//! ports tried again on fresh ones when another process took a port first; and a local Redis
//! Cluster joined by `redis-cli --cluster create`.
//!
//! limitd's own tests start single processes ([`RedisProcess::server`], [`RedisCluster::start`],
//! each in a scratch directory of its own); a [`crate::Stack`] starts its master, replicas,
//! sentinels or cluster with the same code, in its working directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::client::{redis_command_as, Resp};
use crate::paths;
use crate::ports::free_port;
use crate::process::{retry_on_taken_port, Process, StartError};

mod cluster;

pub use cluster::{ClusterOptions, RedisCluster};

/// The name sentinels monitor the master under.
pub const MASTER_NAME: &str = "mymaster";

/// How long a node may take to answer `PING`, and a cluster to form.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The certificate files of a node's TLS port (clients are not asked for certificates).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// What a sentinel monitors ([`MASTER_NAME`]), and how quickly it fails over.
#[derive(Debug, Clone)]
pub struct SentinelOptions {
    pub master_port: u16,
    /// How many sentinels must agree that the master is down.
    pub quorum: u32,
    pub down_after_ms: u64,
    pub failover_timeout_ms: u64,
    /// The data nodes' password (`sentinel auth-pass`).
    pub auth_pass: Option<String>,
}

impl SentinelOptions {
    /// A sentinel that fails the master on `master_port` over on its own (quorum 1), a second
    /// after it stops answering.
    pub fn watching(master_port: u16) -> SentinelOptions {
        SentinelOptions {
            master_port,
            quorum: 1,
            down_after_ms: 1000,
            failover_timeout_ms: 5000,
            auth_pass: None,
        }
    }
}

#[derive(Debug, Clone)]
enum Role {
    Server,
    Sentinel(SentinelOptions),
    ClusterNode { node_timeout_ms: u64 },
}

/// How to start one Redis process. Every role runs on 127.0.0.1 with no persistence, its files
/// in its own directory, its log in `<dir>/<name>.log`.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    role: Role,
    /// `requirepass` (and `masterauth` on a data node); the harness' probes authenticate.
    password: Option<String>,
    /// A TLS port beside the plain one (which the harness keeps using).
    tls: Option<TlsFiles>,
    /// More `--option value` arguments.
    args: Vec<String>,
}

impl RedisOptions {
    /// A data node (a master, or a replica with `--replicaof`).
    pub fn server() -> RedisOptions {
        RedisOptions::with_role(Role::Server)
    }

    /// A sentinel.
    pub fn sentinel(options: SentinelOptions) -> RedisOptions {
        RedisOptions::with_role(Role::Sentinel(options))
    }

    /// A node of a [`RedisCluster`], failed over by its replica after `node_timeout_ms`.
    fn cluster_node(node_timeout_ms: u64) -> RedisOptions {
        RedisOptions::with_role(Role::ClusterNode { node_timeout_ms })
    }

    fn with_role(role: Role) -> RedisOptions {
        RedisOptions {
            role,
            password: None,
            tls: None,
            args: Vec::new(),
        }
    }

    pub fn password(mut self, password: &str) -> RedisOptions {
        self.password = Some(password.to_owned());
        self
    }

    /// A TLS port too, with these certificates (see [`RedisProcess::tls_port`]). Connections
    /// to a master (a replica's, a sentinel's) use TLS as well, and on a cluster node the
    /// cluster bus.
    pub fn tls(mut self, files: TlsFiles) -> RedisOptions {
        self.tls = Some(files);
        self
    }

    /// More `--option value` arguments (e.g. `["--replicaof", "127.0.0.1 6379"]`).
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> RedisOptions {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The command of one start on `ports`, its files in `dir`: the one base command of every
    /// role, plus what the role adds.
    fn command(&self, ports: &NodePorts, dir: &Path) -> Result<Command, String> {
        let mut command = match &self.role {
            Role::Sentinel(sentinel) => {
                // Sentinel rewrites its configuration file: each gets a writable one of its own.
                let conf = dir.join("sentinel.conf");
                std::fs::write(&conf, sentinel_conf(sentinel))
                    .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
                let mut command = Command::new(binary(
                    paths::redis_sentinel(),
                    "RATELIMIT_REDIS_SENTINEL",
                    "redis-sentinel",
                )?);
                command.arg(conf);
                command
            }
            Role::Server | Role::ClusterNode { .. } => Command::new(binary(
                paths::redis_server(),
                "RATELIMIT_REDIS_SERVER",
                "redis-server",
            )?),
        };
        command
            .args(["--port", &ports.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
            if !matches!(self.role, Role::Sentinel(_)) {
                command.args(["--masterauth", password]);
            }
        }
        if let (Some(files), Some(tls_port)) = (&self.tls, ports.tls) {
            command
                .args(["--tls-port", &tls_port.to_string()])
                .arg("--tls-cert-file")
                .arg(&files.cert)
                .arg("--tls-key-file")
                .arg(&files.key)
                .arg("--tls-ca-cert-file")
                .arg(&files.ca)
                .args(["--tls-auth-clients", "no", "--tls-replication", "yes"]);
            if matches!(self.role, Role::ClusterNode { .. }) {
                command.args(["--tls-cluster", "yes"]);
            }
        }
        if let (Role::ClusterNode { node_timeout_ms }, Some(bus_port)) = (&self.role, ports.bus) {
            command.args([
                "--cluster-enabled",
                "yes",
                // Chosen, not the default port + 10000, which may be taken or past 65535.
                "--cluster-port",
                &bus_port.to_string(),
                // In the node's own directory (`--dir`).
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &node_timeout_ms.to_string(),
                // A replica fails over whatever its replication lag: within a couple of node
                // timeouts of its master's death.
                "--cluster-replica-validity-factor",
                "0",
            ]);
        }
        command.args(&self.args);
        Ok(command)
    }

    /// The ports of one start on `port`: the TLS and bus ports free.
    fn ports(&self, port: u16) -> NodePorts {
        NodePorts {
            port,
            tls: self.tls.as_ref().map(|_| free_port()),
            bus: matches!(self.role, Role::ClusterNode { .. }).then(free_port),
        }
    }
}

/// The ports one start of a node listens on.
#[derive(Debug, Clone, Copy)]
struct NodePorts {
    port: u16,
    tls: Option<u16>,
    bus: Option<u16>,
}

fn sentinel_conf(sentinel: &SentinelOptions) -> String {
    let SentinelOptions {
        master_port,
        quorum,
        down_after_ms,
        failover_timeout_ms,
        auth_pass,
    } = sentinel;
    let mut conf = format!(
        "sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {quorum}\n\
         sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n\
         sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}\n"
    );
    if let Some(auth_pass) = auth_pass {
        conf.push_str(&format!("sentinel auth-pass {MASTER_NAME} {auth_pass}\n"));
    }
    conf
}

/// `path` if it is a file; else an error naming the variable that can point at it and the
/// package that brings it (a test that needs Redis fails saying so, never skips).
fn binary(path: PathBuf, variable: &str, name: &str) -> Result<PathBuf, String> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{name} not found on PATH (nor {variable} set to it): these tests need a real \
             Redis (apt-get install redis-server redis-sentinel, or `cargo xtask setup`)"
        ))
    }
}

/// A running `redis-server` or `redis-sentinel`, killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct RedisProcess {
    /// The plain port, which the harness' probes use.
    pub port: u16,
    /// The TLS port, with [`RedisOptions::tls`].
    pub tls_port: Option<u16>,
    password: Option<String>,
    process: Process,
    /// The scratch directory of a process started on its own (removed after the process).
    _scratch: Option<TempDir>,
}

impl RedisProcess {
    /// Starts `options` as `name` with its files in `dir`, on `port`, or on free ports chosen
    /// again if another process takes one first; returns once it answers `PING`.
    pub fn start(
        name: &str,
        options: &RedisOptions,
        dir: &Path,
        port: Option<u16>,
    ) -> Result<RedisProcess, String> {
        match port {
            Some(port) => {
                RedisProcess::start_once(name, options, dir, port).map_err(|e| e.to_string())
            }
            None => {
                retry_on_taken_port(|| RedisProcess::start_once(name, options, dir, free_port()))
            }
        }
    }

    /// One start of [`RedisProcess::start`], on `port` (its TLS and bus ports free): fails with
    /// [`StartError::PortTaken`] if a port was taken.
    pub fn start_once(
        name: &str,
        options: &RedisOptions,
        dir: &Path,
        port: u16,
    ) -> Result<RedisProcess, StartError> {
        let mut node = RedisProcess::spawn(name, options, dir, options.ports(port))?;
        node.until_answering()?;
        Ok(node)
    }

    /// The process of one start, not waited for.
    fn spawn(
        name: &str,
        options: &RedisOptions,
        dir: &Path,
        ports: NodePorts,
    ) -> Result<RedisProcess, StartError> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let command = options.command(&ports, dir)?;
        Ok(RedisProcess {
            port: ports.port,
            tls_port: ports.tls,
            password: options.password.clone(),
            process: Process::spawn(name, command, dir)?,
            _scratch: None,
        })
    }

    fn until_answering(&mut self) -> Result<(), StartError> {
        let (port, password) = (self.port, self.password.clone());
        self.process.await_ready(READY_WITHIN, || {
            match redis_command_as(port, password.as_deref(), &["PING"]) {
                Ok(Resp::Simple(pong)) if pong == "PONG" => Ok(()),
                other => Err(format!("PING: {other:?}")),
            }
        })
    }

    /// For a test: starts `options` in a scratch directory of its own, on free ports, or
    /// panics saying why.
    pub fn launch(options: &RedisOptions) -> RedisProcess {
        RedisProcess::launch_on(options, None)
    }

    fn launch_on(options: &RedisOptions, port: Option<u16>) -> RedisProcess {
        let (name, prefix) = match options.role {
            Role::Sentinel(_) => ("sentinel", "sentinel-"),
            _ => ("redis", "redis-"),
        };
        let scratch = scratch_dir(prefix);
        let mut node = RedisProcess::start(name, options, scratch.path(), port)
            .unwrap_or_else(|e| panic!("{e}"));
        node._scratch = Some(scratch);
        node
    }

    /// For a test: a data node with more `--option value` arguments.
    pub fn server(args: &[&str]) -> RedisProcess {
        RedisProcess::launch(&RedisOptions::server().args(args))
    }

    /// For a test: a data node on `port` (to start one again where a client expects it).
    pub fn server_on(port: u16) -> RedisProcess {
        RedisProcess::launch_on(&RedisOptions::server(), Some(port))
    }

    /// For a test: a sentinel failing the master on `master_port` over on its own
    /// ([`SentinelOptions::watching`]).
    pub fn sentinel(master_port: u16) -> RedisProcess {
        RedisProcess::launch(&RedisOptions::sentinel(SentinelOptions::watching(
            master_port,
        )))
    }

    /// One command, authenticated with the node's password if it has one.
    pub fn command(&self, args: &[&str]) -> Result<Resp, String> {
        redis_command_as(self.port, self.password.as_deref(), args)
            .map_err(|e| format!("{args:?} on port {}: {e}", self.port))
    }

    /// Sends `signal` (`libc::SIGSTOP` freezes it: it keeps its sockets and answers nothing;
    /// `libc::SIGCONT` thaws it).
    pub fn signal(&self, signal: i32) {
        self.process.signal(signal);
    }

    /// Kills the process now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.process.pid().is_some() && self.process.try_wait().is_none()
    }

    /// The process, with its name and log.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn name(&self) -> &str {
        &self.process.name
    }
}

/// A scratch directory removed on drop, named after what it holds.
pub fn scratch_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a scratch directory: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{free_listener, port_of};

    #[test]
    fn a_start_that_finds_its_port_taken_is_tried_again_on_another() {
        let held = free_listener();
        let taken = port_of(&held);
        let dir = scratch_dir("retry-");
        let mut ports = vec![taken];
        let mut attempts = 0;
        let node = retry_on_taken_port(|| {
            attempts += 1;
            let port = ports.pop().unwrap_or_else(free_port);
            RedisProcess::start_once("redis", &RedisOptions::server(), dir.path(), port)
        })
        .unwrap();
        assert_eq!(attempts, 2);
        assert_ne!(node.port, taken);
        assert_eq!(node.command(&["PING"]), Ok(Resp::Simple("PONG".into())));
    }

    #[test]
    fn a_start_that_fails_otherwise_is_not_tried_again() {
        let dir = scratch_dir("retry-");
        let mut attempts = 0;
        let refused = retry_on_taken_port(|| {
            attempts += 1;
            let options = RedisOptions::server().args(["--no-such-option", "1"]);
            RedisProcess::start_once("redis", &options, dir.path(), free_port())
        });
        assert_eq!(attempts, 1);
        let message = refused.unwrap_err();
        assert!(message.contains("no-such-option"), "{message}");
    }
}
