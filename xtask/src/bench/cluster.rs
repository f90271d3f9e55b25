//! The `limitd_cluster` section of `cargo xtask bench`: limitd with a Redis Cluster as its
//! counter store (3 masters, 3 replicas, 2 limitd, started by the end-to-end harness with
//! `StackOptions::redis_cluster`), measured after the main stack has stopped, in its own
//! rounds. Each round measures, in a rotating order:
//!
//! - `spread`: wrk POSTing `/v2/checks` (one one-hit check each) to one limitd, over
//!   [`KEYS`] client keys, [`KEYS_PER_MASTER`] in the slots of each master, in turn;
//! - `one_master`: the same with [`KEYS`] client keys all in slots of one master (each client
//!   key is its counter's hash tag, so choosing the keys chooses the master);
//! - raw `EVALSHA` of the same script on the same cluster: `redis-benchmark --cluster
//!   --threads 1`, whose clients are spread over every master, each call on a counter in a
//!   slot of its client's master (`{tag}`, see [`scenarios::evalsha_arguments_for`]).
//!
//! `redis-benchmark --cluster` rather than one run per master summed: a sum of runs made one
//! after the other gives each master the whole machine in turn, so on a machine with fewer
//! cores than masters it adds up capacity the three never have at once. One run over every
//! master loads them all together, from one client thread, as wrk (one thread) loads limitd,
//! which then writes to every master: the figures are of the same shape.
//!
//! What it shows depends on the cores. On 2 cores, three masters, limitd, wrk and
//! redis-benchmark share two CPUs: spreading the keys adds no CPU, so `spread` ÷ `one_master`
//! measures what talking to three masters costs limitd (more connections, less batching of
//! each connection's writes) more than what a cluster scales to. That needs a master per core,
//! or per machine.

use std::path::Path;

use e2e::{Stack, StackOptions};

use super::report::ClusterRound;
use super::scenarios;
use super::wrk::WrkResult;
use super::{
    check_key_written, cpu, cpu_shares, load_check_script, loadavg, redis_benchmark, step, wrk,
    Settings, WARM_UP_SECONDS, WRK_THREADS,
};

/// Client keys in the slots of each master in the `spread` measurement.
pub const KEYS_PER_MASTER: usize = 10;
/// The cluster's masters (the harness's cluster).
pub const MASTERS: usize = 3;
/// Client keys in each measurement.
pub const KEYS: usize = KEYS_PER_MASTER * MASTERS;

/// The cluster stack's processes, whose CPU time is the benchmark's own.
const PROCESSES: [&str; 11] = [
    "redis-cluster-1",
    "redis-cluster-2",
    "redis-cluster-3",
    "redis-cluster-4",
    "redis-cluster-5",
    "redis-cluster-6",
    "limitd-1",
    "limitd-2",
    "backend-1",
    "backend-2",
    "envoy-1",
];

/// Starts the cluster stack and measures `settings.rounds` rounds; adds the load average
/// after each round to `load`, and what looks wrong to `warnings`.
pub fn run(
    settings: &Settings,
    out: &Path,
    token: &str,
    load: &mut Vec<(String, String)>,
    warnings: &mut Vec<String>,
) -> Result<Vec<ClusterRound>, String> {
    step("limitd on a Redis Cluster: starting 3 masters + 3 replicas, 2 limitd, 2 backends, Envoy");
    let mut stack = Stack::start(StackOptions {
        redis_cluster: true,
        ..StackOptions::default()
    })?;
    let (spread_keys, one_master_keys) = choose_keys(&stack)?;
    let url = format!(
        "http://127.0.0.1:{}{}",
        stack.ports.limitd[0],
        protocol::CHECKS_PATH
    );
    let script = |name: &str, keys: &[String]| {
        let path = out.join(format!("cluster_{name}.lua"));
        std::fs::write(&path, scenarios::limitd_keys_wrk_script(token, keys))
            .map(|()| path)
            .map_err(|e| e.to_string())
    };
    let spread_lua = script("spread", &spread_keys)?;
    let one_master_lua = script("one_master", &one_master_keys)?;
    let pids: Vec<u32> = PROCESSES
        .iter()
        .filter_map(|name| stack.process(name).and_then(|p| p.pid()))
        .collect();
    let wrk =
        |lua: &Path, seconds| wrk::run(&url, WRK_THREADS, settings.connections, seconds, Some(lua));

    step(&format!("warming up ({WARM_UP_SECONDS} s each)"));
    wrk(&spread_lua, WARM_UP_SECONDS)?;
    wrk(&one_master_lua, WARM_UP_SECONDS)?;
    // The harness's cluster starts with its first three nodes as masters.
    let nodes = stack.cluster_ports();
    let masters = &nodes[..MASTERS];
    let mut evalsha = vec!["EVALSHA".to_owned(), load_check_script(masters, warnings)?];
    evalsha.extend(scenarios::evalsha_arguments_for("tag"));
    for key in [&spread_keys[0], &one_master_keys[0]] {
        let key = scenarios::limitd_redis_key_of(key);
        check_key_written(&key, stack.cluster_command(&["HGET", &key, "c"]), warnings);
    }
    let port = masters[0];
    let connections = settings.connections;
    // Calibrates redis-benchmark's request count to about `seconds`.
    let mut redis_rps = redis_benchmark(port, true, connections, 20_000, &evalsha)?;

    let mut rounds = Vec::new();
    for round in 0..settings.rounds {
        step(&format!("cluster round {}/{}", round + 1, settings.rounds));
        let cpu_start = cpu::snapshot(&pids);
        let (mut spread, mut one_master) = (WrkResult::default(), WrkResult::default());
        for k in 0..3 {
            match (round + k) % 3 {
                0 => spread = wrk(&spread_lua, settings.seconds)?,
                1 => one_master = wrk(&one_master_lua, settings.seconds)?,
                _ => {
                    let n = ((redis_rps * settings.seconds as f64) as u64).max(10_000);
                    redis_rps = redis_benchmark(port, true, connections, n, &evalsha)?;
                }
            }
        }
        eprintln!(
            "    limitd on a cluster: {:>8.0} checks/s over 3 masters, {:>8.0} on one; \
             redis-benchmark --cluster EVALSHA {:.0}/s",
            spread.requests_per_sec, one_master.requests_per_sec, redis_rps
        );
        load.push((format!("after cluster round {}", round + 1), loadavg()));
        let cpu = cpu_shares(
            &format!("cluster round {}", round + 1),
            &cpu_start,
            &pids,
            warnings,
        );
        rounds.push(ClusterRound {
            spread,
            one_master,
            redis_rps,
            cpu,
        });
    }
    for name in ["limitd-1", "limitd-2"] {
        if stack.process(name).and_then(|p| p.try_wait()).is_some() {
            warnings.push(format!("limitd_cluster: {name} exited during the run"));
        }
    }
    Ok(rounds)
}

/// Client keys `bench_cluster:<n>`: ([`KEYS_PER_MASTER`] in the slots of each master,
/// [`KEYS`] in the slots of one master), as the cluster itself places their counters.
fn choose_keys(stack: &Stack) -> Result<(Vec<String>, Vec<String>), String> {
    let mut spread: Vec<(String, u16)> = Vec::new();
    let mut one_master: Vec<String> = Vec::new();
    let mut first_master = None;
    for n in 0..10_000 {
        let key = format!("bench_cluster:{n}");
        let (_, master) = stack.cluster_master_of(&scenarios::limitd_redis_key_of(&key))?;
        if *first_master.get_or_insert(master) == master && one_master.len() < KEYS {
            one_master.push(key.clone());
        }
        if spread.iter().filter(|(_, m)| *m == master).count() < KEYS_PER_MASTER {
            spread.push((key, master));
        }
        if spread.len() == KEYS && one_master.len() == KEYS {
            return Ok((spread.into_iter().map(|(key, _)| key).collect(), one_master));
        }
    }
    Err(format!(
        "could not find {KEYS_PER_MASTER} keys on each of {MASTERS} masters: {spread:?}"
    ))
}
