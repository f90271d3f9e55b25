//! The Redis nodes and sentinels of the compose stack, asked through `redis-cli` in their own
//! containers (nothing of Redis is published).

use super::docker::{docker, Project};
use super::scenarios::{poll, BOUND};

/// Where each Redis data node listens (its service name is also the name it announces).
const REDIS_NODES: &[(&str, u16)] = &[
    ("redis-master", 6379),
    ("redis-replica-1", 6380),
    ("redis-replica-2", 6381),
];

pub(super) fn node_port(service: &str) -> Result<u16, String> {
    REDIS_NODES
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, port)| *port)
        .ok_or_else(|| format!("{service} is not a Redis node of docker-compose.yml"))
}

/// `redis-cli` inside a service's container.
pub(super) fn redis_cli(
    project: &Project,
    service: &str,
    port: u16,
    args: &[&str],
) -> Result<String, String> {
    let id = project.container(service)?;
    let port = port.to_string();
    let mut command = vec!["exec", id.as_str(), "redis-cli", "-p", port.as_str()];
    command.extend(args);
    docker(&command)
}

/// The master the sentinels report (its service name), asking each until one answers.
pub(super) fn current_master(project: &Project) -> Result<String, String> {
    let mut last = String::new();
    for (sentinel, port) in [
        ("sentinel-1", 26379),
        ("sentinel-2", 26380),
        ("sentinel-3", 26381),
    ] {
        match redis_cli(
            project,
            sentinel,
            port,
            &["SENTINEL", "get-master-addr-by-name", "mymaster"],
        ) {
            Ok(answer) => match answer.lines().next() {
                Some(host) if !host.trim().is_empty() => return Ok(host.trim().to_owned()),
                _ => last = format!("{sentinel}: {answer:?}"),
            },
            Err(e) => last = e,
        }
    }
    Err(format!("no sentinel names the master: {last}"))
}

/// Waits until `service` is a replica with its link to the master up.
pub(super) fn wait_replica(project: &Project, service: &str) -> Result<(), String> {
    let port = node_port(service)?;
    poll(BOUND, || {
        let info = redis_cli(project, service, port, &["INFO", "replication"])?;
        if info.contains("role:slave") && info.contains("master_link_status:up") {
            Ok(())
        } else {
            Err(format!("{service} is not a synced replica yet"))
        }
    })
}
