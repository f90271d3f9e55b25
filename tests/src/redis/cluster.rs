//! A local Redis Cluster of 3 masters and 3 replicas, joined by `redis-cli --cluster create`,
//! and what the tests ask of it: the slot of a key, the master of a slot, a command on the
//! master of its key.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{binary, scratch_dir, RedisOptions, RedisProcess, TlsFiles, READY_WITHIN};
use crate::client::Resp;
use crate::paths;
use crate::poll::eventually;

/// How to start a [`RedisCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Every node's `requirepass` and `masterauth`.
    pub password: Option<String>,
    /// A TLS port on every node, which the cluster bus and replication use too.
    pub tls: Option<TlsFiles>,
    /// How long a master may not answer before its replica takes over.
    pub node_timeout_ms: u64,
    /// More `--option value` arguments for every node.
    pub args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            password: None,
            tls: None,
            node_timeout_ms: 1000,
            args: Vec::new(),
        }
    }
}

/// A Redis Cluster of 3 masters and 3 replicas on loopback: six `redis-server
/// --cluster-enabled yes` processes, each with its own directory and `cluster-config-file`,
/// joined by `redis-cli --cluster create`. Its nodes are killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    /// In the order of `--cluster create`: the first three are the masters at the start.
    pub nodes: Vec<RedisProcess>,
    password: Option<String>,
    _scratch: Option<TempDir>,
}

impl RedisCluster {
    /// Starts six nodes named `{prefix}-1` to `{prefix}-6` with their files under `dir`, joins
    /// them (`--cluster-replicas 1`), and waits until [`RedisCluster::until_settled`].
    pub fn start_in(
        dir: &Path,
        prefix: &str,
        options: &ClusterOptions,
    ) -> Result<RedisCluster, String> {
        let cli = binary(paths::redis_cli(), "RATELIMIT_REDIS_CLI", "redis-cli")?;
        let mut node_options =
            RedisOptions::cluster_node(options.node_timeout_ms).args(&options.args);
        node_options.password.clone_from(&options.password);
        node_options.tls.clone_from(&options.tls);
        let nodes = (1..=6)
            .map(|i| {
                let name = format!("{prefix}-{i}");
                RedisProcess::start(&name, &node_options, &dir.join(&name), None)
            })
            .collect::<Result<Vec<_>, String>>()?;
        let cluster = RedisCluster {
            nodes,
            password: options.password.clone(),
            _scratch: None,
        };
        cluster.create(&cli)?;
        cluster.until_settled(READY_WITHIN)?;
        Ok(cluster)
    }

    /// For a test: a cluster in a scratch directory of its own, or a panic saying why.
    pub fn start(options: &ClusterOptions) -> RedisCluster {
        let scratch = scratch_dir("cluster-");
        let mut cluster = RedisCluster::start_in(scratch.path(), "cluster-node", options)
            .unwrap_or_else(|e| panic!("the cluster did not start: {e}"));
        cluster._scratch = Some(scratch);
        cluster
    }

    /// `redis-cli --cluster create` of every node, bounded: redis-cli waits for the nodes to
    /// join for as long as it takes, and nodes that cannot reach each other's bus never do.
    fn create(&self, cli: &Path) -> Result<(), String> {
        let mut command = Command::new(cli);
        if let Some(password) = &self.password {
            command.args(["-a", password, "--no-auth-warning"]);
        }
        let mut child = command
            .args(["--cluster", "create"])
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
        if status.as_ref().is_ok_and(|s| s.success()) {
            Ok(())
        } else {
            Err(format!(
                "redis-cli --cluster create failed ({status:?}): {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// Waits until every running node says `cluster_state:ok` with every slot served, and
    /// every running replica's link to its master is up.
    pub fn until_settled(&self, within: Duration) -> Result<(), String> {
        eventually(within, || {
            for node in &self.nodes {
                let info = match node.command(&["CLUSTER", "INFO"]) {
                    Ok(info) => info.to_string(),
                    // A node killed by the test.
                    Err(_) => continue,
                };
                let replication = node.command(&["INFO", "replication"])?.to_string();
                let settled = info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"));
                if !settled {
                    return Err(format!("{} not settled:\n{info}\n{replication}", node.port));
                }
            }
            Ok(())
        })
        .map_err(|e| format!("the cluster did not settle: {e}"))
    }

    /// `127.0.0.1:port,…` of every node's plain port, for `REDIS_CLUSTER_NODES`.
    pub fn seeds(&self) -> String {
        self.addresses(|node| Some(node.port))
    }

    /// `127.0.0.1:port,…` of every node's TLS port (with [`ClusterOptions::tls`]).
    pub fn tls_seeds(&self) -> String {
        self.addresses(|node| node.tls_port)
    }

    fn addresses(&self, port: impl Fn(&RedisProcess) -> Option<u16>) -> String {
        self.nodes
            .iter()
            .filter_map(port)
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A command about one key, sent to each node in turn until one answers other than
    /// `MOVED`: the master of the key's slot (or any node, for a command about no key).
    pub fn command(&self, args: &[&str]) -> Result<Resp, String> {
        self.nodes
            .iter()
            .find_map(|node| match node.command(args) {
                Ok(Resp::Error(e)) if e.starts_with("MOVED") => None,
                Ok(reply) => Some(reply),
                Err(_) => None,
            })
            .ok_or_else(|| format!("no cluster node answered {args:?}"))
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn slot_of(&self, key: &str) -> Result<u16, String> {
        match self.command(&["CLUSTER", "KEYSLOT", key])? {
            Resp::Integer(slot) => u16::try_from(slot).map_err(|e| e.to_string()),
            other => Err(format!("CLUSTER KEYSLOT {key}: {other:?}")),
        }
    }

    /// The port of the master serving `slot`, as `CLUSTER NODES` on the first node that
    /// answers says now (`None` if no master it does not mark failed serves it).
    pub fn master_of(&self, slot: u16) -> Option<u16> {
        let nodes = self
            .nodes
            .iter()
            .find_map(|node| node.command(&["CLUSTER", "NODES"]).ok())?
            .to_string();
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
            // `ip:port@bus` (with TLS, `ip:port@bus,hostname` may follow): the port.
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
    pub fn node(&self, port: u16) -> Option<&RedisProcess> {
        self.nodes.iter().find(|n| n.port == port)
    }

    /// The node on `port`, to kill or signal.
    pub fn node_mut(&mut self, port: u16) -> Option<&mut RedisProcess> {
        self.nodes.iter_mut().find(|n| n.port == port)
    }
}
