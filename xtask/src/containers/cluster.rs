//! The `cluster` profile: the limiter on a Redis Cluster (3 masters, each with a replica) behind
//! an Envoy of its own, `envoy-cluster`, checked from a client container of its own.
//!
//! It checks that the cluster forms and that a second `up` leaves it as it is; that through that
//! Envoy each key admits exactly its limit, the keys spread over the masters; that a master
//! killed under load is replaced by its replica, with counted decisions resuming and no client
//! seeing a 5xx, and the killed node back as a replica of the promoted one; and that nodes
//! restarted at other addresses form the same cluster again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::client::Client;
use super::docker::{docker, Project};
use super::redis::redis_cli;
use super::scenarios::{
    assert_no_failures, expect, fresh_window, poll, report, resumed_after, secs, start_keyed_load,
    tally, unix_ms, BOUND, KEY_LIMIT, LOAD_PATH,
};

/// The cluster's nodes: their compose services, which are also the host names they announce.
pub(super) const NODES: [&str; 6] = [
    "redis-cluster-1",
    "redis-cluster-2",
    "redis-cluster-3",
    "redis-cluster-4",
    "redis-cluster-5",
    "redis-cluster-6",
];
/// Where every node listens, each in its own container.
const NODE_PORT: u16 = 7000;
/// The one-shot service that forms the cluster.
const INIT: &str = "redis-cluster-init";
/// The shadow rule of rules/ratelimit.yaml that every request of the load also hits, with one
/// counter for all clients: with the master of its slot gone, no check of the load can be
/// decided until that master's replica is promoted.
const SHADOW_RULE: &str = "api_global_shadow";
/// How many keys the exactness check drains: enough that their slots fall on more than one
/// master.
const EXACT_KEYS: u32 = 9;

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    id: String,
    /// Its IP address, as the node asked knows it.
    ip: String,
    /// The host name it announces.
    host: String,
    master: bool,
    /// Flagged `fail` or `fail?` by the node asked.
    failing: bool,
    /// A replica's master, by id.
    master_id: Option<String>,
    connected: bool,
    /// How many slot ranges it serves.
    slot_ranges: usize,
}

/// The lines of `CLUSTER NODES`: `id ip:port@bus,hostname flags master ping pong epoch link
/// slot...`.
fn parse_nodes(text: &str) -> Result<Vec<Node>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [id, address, flags, master, _ping, _pong, _epoch, link, slots @ ..] =
                words.as_slice()
            else {
                return Err(format!("CLUSTER NODES: bad line {line:?}"));
            };
            let flags: Vec<&str> = flags.split(',').collect();
            Ok(Node {
                id: (*id).to_owned(),
                ip: address
                    .split_once(':')
                    .map_or(String::new(), |(ip, _)| ip.to_owned()),
                host: address
                    .split_once(',')
                    .map_or(String::new(), |(_, host)| host.to_owned()),
                master: flags.contains(&"master"),
                failing: flags.iter().any(|f| f.starts_with("fail")),
                master_id: (*master != "-").then(|| (*master).to_owned()),
                connected: *link == "connected",
                slot_ranges: slots.len(),
            })
        })
        .collect()
}

fn cluster_nodes(project: &Project, via: &str) -> Result<Vec<Node>, String> {
    parse_nodes(&redis_cli(project, via, NODE_PORT, &["CLUSTER", "NODES"])?)
}

/// What one node says: its `CLUSTER INFO` and `INFO replication`, and its `CLUSTER NODES`.
struct View {
    info: String,
    nodes: Vec<Node>,
}

/// Every node's [`View`], asked from inside `via`'s container in one `docker exec` (on a busy
/// machine each exec costs a good fraction of a second). Fails if a node does not answer.
fn views(project: &Project, via: &str) -> Result<BTreeMap<&'static str, View>, String> {
    let script: String = NODES
        .iter()
        .map(|node| {
            let cli = format!("redis-cli -h {node} -p {NODE_PORT}");
            format!(
                "echo '### {node} info'; {cli} CLUSTER INFO && {cli} INFO replication && \
                 echo '### {node} nodes' && {cli} CLUSTER NODES || exit 1; "
            )
        })
        .collect();
    let id = project.container(via)?;
    let output = docker(&["exec", &id, "sh", "-c", &script])?;
    let mut sections: BTreeMap<(String, String), String> = output
        .split("### ")
        .filter_map(|section| {
            let (heading, text) = section.split_once('\n')?;
            let (node, kind) = heading.trim().split_once(' ')?;
            Some(((node.to_owned(), kind.to_owned()), text.to_owned()))
        })
        .collect();
    NODES
        .iter()
        .map(|&node| {
            let mut take = |kind: &str| {
                sections
                    .remove(&(node.to_owned(), kind.to_owned()))
                    .ok_or_else(|| format!("{node} did not answer: {output}"))
            };
            let info = take("info")?;
            let nodes = parse_nodes(&take("nodes")?)?;
            Ok((node, View { info, nodes }))
        })
        .collect()
}

/// Each master's replica, by host name, once the cluster is whole: every node reports
/// `cluster_state:ok` and sees the six nodes connected and none failing, with the same 3
/// masters serving slots, each with exactly one replica whose link is up.
fn whole(project: &Project) -> Result<BTreeMap<String, String>, String> {
    let views = views(project, NODES[0])?;
    let mut agreed: Option<BTreeMap<String, String>> = None;
    for (node, view) in &views {
        expect(view.info.contains("cluster_state:ok"), || {
            format!("{node} is not cluster_state:ok")
        })?;
        let nodes = &view.nodes;
        let hosts: BTreeSet<&str> = nodes.iter().map(|n| n.host.as_str()).collect();
        expect(hosts == BTreeSet::from(NODES), || {
            format!("{node} knows nodes announcing {hosts:?}, not the six services")
        })?;
        expect(nodes.iter().all(|n| n.connected && !n.failing), || {
            format!("{node} does not see every node connected and healthy: {nodes:?}")
        })?;
        let mut pairs = BTreeMap::new();
        for master in nodes.iter().filter(|n| n.master) {
            let replicas: Vec<&Node> = nodes
                .iter()
                .filter(|n| n.master_id.as_ref() == Some(&master.id))
                .collect();
            let [replica] = replicas.as_slice() else {
                return Err(format!(
                    "{node} sees {} with {} replicas: {nodes:?}",
                    master.host,
                    replicas.len()
                ));
            };
            expect(master.slot_ranges > 0, || {
                format!("{node} sees {} serving no slot", master.host)
            })?;
            pairs.insert(master.host.clone(), replica.host.clone());
        }
        expect(pairs.len() == 3, || {
            format!("{node} sees {} masters: {nodes:?}", pairs.len())
        })?;
        match &agreed {
            Some(seen) if *seen != pairs => {
                return Err(format!("the nodes disagree: {seen:?}, {node}: {pairs:?}"));
            }
            _ => agreed = Some(pairs),
        }
    }
    let pairs = agreed.unwrap_or_default();
    for (master, replica) in &pairs {
        let linked = views
            .get(replica.as_str())
            .is_some_and(|view| view.info.contains("master_link_status:up"));
        expect(linked, || format!("{replica}'s link to {master} is not up"))?;
    }
    Ok(pairs)
}

/// The keys matching `pattern` on `node`.
fn scan(project: &Project, node: &str, pattern: &str) -> Result<Vec<String>, String> {
    let keys = redis_cli(project, node, NODE_PORT, &["--scan", "--pattern", pattern])?;
    Ok(keys.lines().map(str::to_owned).collect())
}

/// Waits until a request with a new key through envoy-cluster is admitted and counted.
fn deciding(c: &mut Client) -> Result<(), String> {
    poll(BOUND, || {
        let reply = c.get(LOAD_PATH, Some(&format!("cluster-probe-{}", unix_ms())))?;
        if reply.status == 200 && reply.counted {
            Ok(())
        } else {
            Err(format!("envoy-cluster answers {reply:?}"))
        }
    })
}

/// Every cluster scenario, leaving the cluster whole again.
pub fn run(project: &mut Project, client_image: &str) -> Result<(), String> {
    let started = Instant::now();
    let pairs = poll(BOUND, || whole(project))?;
    report(&format!(
        "cluster: formed by {INIT}, 3 masters each with a replica: {pairs:?}"
    ));
    second_up_changes_nothing(project, &pairs)?;
    let mut c = Client::start(project, "c", client_image, "envoy-cluster")?;
    // The cluster's Envoy answers, and its limitd decide.
    deciding(&mut c)?;
    exact_limits(project, &mut c, &pairs)?;
    master_killed_under_load(project, &mut c, &pairs)?;
    restarted_at_new_addresses(project, &mut c)?;
    report(&format!(
        "cluster: the cluster scenarios took {}",
        secs(started.elapsed())
    ));
    Ok(())
}

/// `up` again, which runs the one-shot again; returns once it has exited 0.
fn up_again(project: &Project) -> Result<(), String> {
    let init = project.container(INIT)?;
    let state = || {
        docker(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}} {{.State.StartedAt}}",
            &init,
        ])
        .map(|s| s.trim().to_owned())
    };
    let first_run = state()?;
    // `up` fails if the one-shot does (its dependents wait for it to succeed): say why.
    let up = project.compose(&["up", "-d"]);
    let second_run = poll(BOUND, || {
        let now = state()?;
        if now.starts_with("exited ") && now != first_run {
            Ok(now)
        } else {
            Err(format!("{INIT} has not run again: {now}"))
        }
    })?;
    expect(up.is_ok() && second_run.starts_with("exited 0 "), || {
        let logs = project
            .compose(&["logs", "--tail", "15", INIT])
            .unwrap_or_default();
        format!("`up` again: {INIT} {second_run}, {up:?}\n{logs}")
    })
}

fn node_ids(project: &Project) -> Result<BTreeSet<String>, String> {
    Ok(cluster_nodes(project, NODES[0])?
        .into_iter()
        .map(|n| n.id)
        .collect())
}

/// `up` again: the one-shot runs again, succeeds, and the cluster keeps its nodes and roles.
fn second_up_changes_nothing(
    project: &Project,
    pairs: &BTreeMap<String, String>,
) -> Result<(), String> {
    let before = node_ids(project)?;
    up_again(project)?;
    let after_pairs = poll(BOUND, || whole(project))?;
    let after = node_ids(project)?;
    expect(after == before && after_pairs == *pairs, || {
        format!(
            "a second `up` changed the cluster: nodes {before:?} → {after:?}, masters and \
             replicas {pairs:?} → {after_pairs:?}"
        )
    })?;
    report("cluster: a second `up` ran the one-shot again, which left the cluster as it was");
    Ok(())
}

/// Every node stopped, then started again in the reverse order, so that they come back at
/// other addresses than the ones they remember (as after a `down` and an `up` that keeps the
/// volumes): with `up` running the one-shot again, the cluster is whole again, with the same
/// nodes, and envoy-cluster's limitd decide again.
fn restarted_at_new_addresses(project: &Project, c: &mut Client) -> Result<(), String> {
    let addresses = |project: &Project| -> Result<BTreeMap<String, String>, String> {
        Ok(cluster_nodes(project, NODES[0])?
            .into_iter()
            .map(|n| (n.host, n.ip))
            .collect())
    };
    let (ids, before) = (node_ids(project)?, addresses(project)?);
    let containers = NODES
        .iter()
        .map(|node| project.container(node))
        .collect::<Result<Vec<_>, _>>()?;
    let mut stop = vec!["stop", "-t", "5"];
    stop.extend(containers.iter().map(String::as_str));
    docker(&stop)?;
    let restarted = Instant::now();
    for id in containers.iter().rev() {
        docker(&["start", id])?;
    }
    up_again(project)?;
    let formed_again = restarted.elapsed();
    poll(BOUND, || whole(project))?;
    let whole_after = restarted.elapsed();
    deciding(c)?;
    let deciding = restarted.elapsed();
    let (ids_after, after) = (node_ids(project)?, addresses(project)?);
    expect(ids_after == ids, || {
        format!("the restarted cluster has other nodes: {ids:?} → {ids_after:?}")
    })?;
    let moved = NODES
        .iter()
        .filter(|node| before.get(**node) != after.get(**node))
        .count();
    report(&format!(
        "cluster: all six nodes stopped and started again in reverse order ({moved} of 6 at \
         another address); after {} `up` had run {INIT} again, whole with the same nodes \
         after {}, limitd deciding after {}",
        secs(formed_again),
        secs(whole_after),
        secs(deciding)
    ));
    Ok(())
}

/// Through envoy-cluster, each of [`EXACT_KEYS`] keys admits exactly [`KEY_LIMIT`] requests in
/// a window, every one decided by limitd, then 429; their counters are on more than one master.
fn exact_limits(
    project: &Project,
    c: &mut Client,
    pairs: &BTreeMap<String, String>,
) -> Result<(), String> {
    fresh_window(c, "cluster", 10)?;
    let prefix = format!("cl-{}-", unix_ms());
    for i in 0..EXACT_KEYS {
        let key = format!("{prefix}{i}");
        let (admitted, last) = c.drain(LOAD_PATH, &key, KEY_LIMIT + 1)?;
        expect(admitted == KEY_LIMIT && last == 429, || {
            format!(
                "key {key} through envoy-cluster: {admitted} counted admissions of {KEY_LIMIT}, \
                 then {last} (expected exactly {KEY_LIMIT}, then 429)"
            )
        })?;
    }
    // Which master holds each key's counter (the keys carry the client key, `{prefix}{i}`).
    let mut spread: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    for master in pairs.keys() {
        let keys = scan(project, master, &format!("*{prefix}*"))?;
        let found: BTreeSet<u32> = keys
            .iter()
            .filter_map(|k| k.split(&prefix).nth(1))
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .collect();
        if !found.is_empty() {
            spread.insert(master, found);
        }
    }
    let held: usize = spread.values().map(BTreeSet::len).sum();
    expect(held == EXACT_KEYS as usize && spread.len() >= 2, || {
        format!("the {EXACT_KEYS} keys' counters are on the masters as {spread:?}")
    })?;
    let per_master: BTreeMap<&str, usize> = spread.iter().map(|(m, k)| (*m, k.len())).collect();
    report(&format!(
        "cluster: through envoy-cluster, {EXACT_KEYS} keys each admitted exactly {KEY_LIMIT}, \
         then 429; their counters on the masters {per_master:?}"
    ));
    Ok(())
}

/// The master of the shadow rule's counter killed under load: its replica is promoted, counted
/// decisions resume, no client sees a 5xx; started again, the old master rejoins as a replica.
fn master_killed_under_load(
    project: &Project,
    c: &mut Client,
    pairs: &BTreeMap<String, String>,
) -> Result<(), String> {
    start_keyed_load(c, "clkill")?;
    c.wait_counted(40, BOUND)?;
    // Under load the shadow counter always exists (it lives a second).
    let victim = poll(BOUND, || {
        for master in pairs.keys() {
            if !scan(project, master, &format!("*{SHADOW_RULE}*"))?.is_empty() {
                return Ok(master.clone());
            }
        }
        Err(format!("no master holds the {SHADOW_RULE} counter"))
    })?;
    let heir = pairs
        .get(&victim)
        .cloned()
        .ok_or_else(|| format!("{victim} has no replica"))?;
    let id = project.container(&victim)?;

    let killed = Instant::now();
    let killed_ms = unix_ms();
    docker(&["kill", &id])?;
    poll(BOUND, || {
        let nodes = cluster_nodes(project, &heir)?;
        if nodes
            .iter()
            .any(|n| n.host == heir && n.master && n.slot_ranges > 0)
        {
            Ok(())
        } else {
            Err(format!("{heir} not promoted yet"))
        }
    })?;
    let promoted = killed.elapsed();
    c.wait_counted(40, BOUND)?;
    let records = c.stop_load()?;
    assert_no_failures("cluster master killed under load", &records)?;
    let resumed_ms = resumed_after(&records, killed_ms)?;
    let (total, counted, open) = tally(&records);
    report(&format!(
        "cluster: master {victim} killed under load, its replica {heir} seen promoted after {}, \
         counted decisions resumed {:.1} s after the kill; {total} requests, 0 failed, \
         {counted} counted, {open} let through by the failure mode",
        secs(promoted),
        resumed_ms as f64 / 1000.0
    ));

    // Started again (perhaps at another address), it rejoins as the replica of its heir.
    let restarted = Instant::now();
    docker(&["start", &id])?;
    let now = poll(BOUND, || whole(project))?;
    expect(now.get(&heir) == Some(&victim), || {
        format!("after {victim} came back, the masters and replicas are {now:?}")
    })?;
    report(&format!(
        "cluster: {victim} started again, a synced replica of {heir} after {}",
        secs(restarted.elapsed())
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_give_roles_hosts_and_slots() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 172.18.0.5:7000@17000,redis-cluster-4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 172.18.0.2:7000@17000,redis-cluster-1 myself,master - 0 0 1 connected 0-5460
6ec23923021cf3ffec47632106199cb7f496ce01 172.18.0.3:7000@17000,redis-cluster-2 master,fail - 1426238316232 1426238315000 2 disconnected 5461-10922 10923
";
        let nodes = parse_nodes(text).unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(
            (nodes[0].host.as_str(), nodes[0].ip.as_str()),
            ("redis-cluster-4", "172.18.0.5")
        );
        assert!(!nodes[0].master);
        assert_eq!(nodes[0].master_id.as_deref(), Some(nodes[1].id.as_str()));
        assert!(nodes[1].master && nodes[1].connected && !nodes[1].failing);
        assert_eq!(
            (nodes[1].slot_ranges, nodes[1].master_id.clone()),
            (1, None)
        );
        assert!(nodes[2].failing && !nodes[2].connected);
        assert_eq!(nodes[2].slot_ranges, 2);
        assert!(parse_nodes("not a node line").is_err());
    }
}
