//! `cargo xtask bench`: what the limiter costs, measured side by side on this
//! machine in one run, all on loopback.
//!
//! One stack (Redis master + 2 replicas + 3 sentinels, 2 limitd, 2 backends)
//! with nine Envoys in front of the same backends: no limiter, Envoy's own
//! `local_ratelimit` (passing everything, and denying everything), a proxy-wasm filter that
//! does nothing (the wasm runtime's floor), one that makes only the host calls a decision inside
//! Envoy needs (the floor of a lease admission and of a cached denial), and ours in four
//! configurations: checked per
//! request with and without group commit, idle (the shipped rules), and in lease mode (see
//! [`scenarios`]). Each round measures every
//! scenario in turn (the order rotates each round), so slow drifts of a shared
//! machine spread over all of them; each figure is the median of the rounds:
//!
//! - requests/s: `wrk` closed loop;
//! - Envoy CPU per request: the CPU time of the scenario's Envoy over its
//!   closed-loop run ([`cpu::process_cpu_us`]) divided by the requests wrk
//!   counted, so a change shows where its microseconds went;
//! - p50/p99 latency: our open-loop generator at a fixed moderate rate
//!   ([`open_loop`]), measured from each request's scheduled send time;
//! - limitd alone (wrk POSTing `/v2/checks` to one limitd) against
//!   `redis-benchmark` running the same script by `EVALSHA` on the master;
//! - limitd on a Redis Cluster ([`cluster`]), after that stack is stopped: its own
//!   stack, its own rounds.
//!
//! Settings (environment): `BENCH_ROUNDS` (6), `BENCH_SECONDS` per measurement
//! (3), `BENCH_RATE` of the open loop in requests/s (1000),
//! `BENCH_CONNECTIONS` of wrk (32), `BENCH_ENVOY_CONCURRENCY` (1), and
//! `BENCH_SCENARIOS`: a comma-separated subset of the scenario ids (and
//! `limitd_alone`, `limitd_cluster`) for a quicker comparison; `baseline` is always
//! measured, as every ratio is to it. Default: all.
//!
//! Why Envoy `--concurrency 1` and `wrk -t1`: the machine has 2 cores, and in
//! the limiter scenarios limitd, Redis and the backends need CPU too. One Envoy
//! worker and one wrk thread leave the other core to them, so the comparison
//! measures the limiter's cost rather than a fight for cores Envoy would win in
//! the baseline only. 32 connections keep that one worker busy.

mod cluster;
mod cpu;
mod json;
mod open_loop;
mod report;
mod scenarios;
mod svg;
mod wrk;

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::paths::workspace_root;
use e2e::{http_get, redis_command, Binaries, Resp, Stack, StackOptions};

use self::report::{EnvoyRound, LimitdRound, Results};
use self::scenarios::{Scenario, SCENARIOS};
use super::{apt_install, is_root_with_apt, on_path, output, step, wasm_exports};

/// The stack's processes, whose CPU time is the benchmark's own.
const STACK_PROCESSES: [&str; 19] = [
    "redis-master",
    "redis-replica-1",
    "redis-replica-2",
    "sentinel-1",
    "sentinel-2",
    "sentinel-3",
    "limitd-1",
    "limitd-2",
    "backend-1",
    "backend-2",
    "envoy-1",
    "envoy-2",
    "envoy-3",
    "envoy-4",
    "envoy-5",
    "envoy-6",
    "envoy-7",
    "envoy-8",
    "envoy-9",
];

/// How many Envoys the stack runs (see [`scenarios`]).
const ENVOYS: usize = 9;
/// wrk's threads (see the module's comment).
const WRK_THREADS: u32 = 1;
/// Connections of the open-loop generator: at 1000 req/s, one request every
/// 8 ms on each, far more than any scenario's latency.
const OPEN_LOOP_CONNECTIONS: u32 = 8;
const WARM_UP_SECONDS: u64 = 2;
/// The id of limitd alone against Redis in `BENCH_SCENARIOS`.
const LIMITD_ALONE: &str = "limitd_alone";
/// The id of limitd on a Redis Cluster in `BENCH_SCENARIOS` (see [`cluster`]).
const LIMITD_CLUSTER: &str = "limitd_cluster";

#[derive(Debug, Clone)]
struct Settings {
    rounds: usize,
    seconds: u64,
    rate: u32,
    connections: u32,
    concurrency: u32,
    /// `BENCH_SCENARIOS`, if set: the ids to measure.
    only: Option<Vec<String>>,
}

fn setting<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a valid number")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        Ok(Settings {
            rounds: setting("BENCH_ROUNDS", 6)?.max(1),
            seconds: setting("BENCH_SECONDS", 3)?.max(1),
            rate: setting("BENCH_RATE", 1000)?.max(1),
            connections: setting("BENCH_CONNECTIONS", 32)?.max(1),
            concurrency: setting("BENCH_ENVOY_CONCURRENCY", 1)?.max(1),
            only: match std::env::var("BENCH_SCENARIOS") {
                Ok(list) => {
                    let ids: Vec<String> = list
                        .split(',')
                        .map(|id| id.trim().to_owned())
                        .filter(|id| !id.is_empty())
                        .collect();
                    if let Some(unknown) = ids.iter().find(|id| {
                        ![LIMITD_ALONE, LIMITD_CLUSTER].contains(&id.as_str())
                            && !SCENARIOS.iter().any(|s| s.id == *id)
                    }) {
                        return Err(format!("BENCH_SCENARIOS: no scenario {unknown:?}"));
                    }
                    Some(ids)
                }
                Err(_) => None,
            },
        })
    }

    /// Whether the scenario (or `limitd_alone`, `limitd_cluster`) is measured in this run.
    fn measures(&self, id: &str) -> bool {
        id == "baseline"
            || self
                .only
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|i| i == id))
    }

    fn describe(&self) -> String {
        let subset = match &self.only {
            Some(ids) => format!(", BENCH_SCENARIOS={}", ids.join(",")),
            None => String::new(),
        };
        format!(
            "Envoy --concurrency {}, wrk -t{WRK_THREADS} -c{} for {} s, open loop {} req/s on {OPEN_LOOP_CONNECTIONS} \
             connections for {} s, {} rounds, medians{subset}",
            self.concurrency, self.connections, self.seconds, self.rate, self.seconds, self.rounds
        )
    }
}

pub fn run() -> Result<(), String> {
    setup_tools()?;
    let settings = Settings::from_env()?;
    let started = Instant::now();
    let out = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut load = vec![("start".to_owned(), loadavg())];
    let mut warnings = Vec::new();

    let noop_wasm = super::build_example_wasm("noop", &wasm_exports::NOOP_CALLBACKS)?;
    let floor_wasm = super::build_example_wasm("floor", &wasm_exports::FLOOR_CALLBACKS)?;
    step("starting Redis, sentinels, 2 limitd, 2 backends and 9 Envoys (ours, none, local_ratelimit, ours per request, shipped rules, leases, local_ratelimit denying, noop wasm, floor wasm)");
    let c = settings.concurrency;
    let mut stack = Stack::start(StackOptions {
        envoy: scenarios::ours(c),
        ..StackOptions::default()
    })?;
    // Starting them also proves the rewritten configurations are valid.
    stack.add_envoy(&scenarios::baseline(c))?;
    stack.add_envoy(&scenarios::local_ratelimit(c))?;
    stack.add_envoy(&scenarios::ours_per_request(c))?;
    stack.add_envoy(&scenarios::shipped(c))?;
    stack.add_envoy(&scenarios::leases(c, settings.rate))?;
    stack.add_envoy(&scenarios::local_ratelimit_denying(c))?;
    stack.add_envoy(&scenarios::noop(c, &noop_wasm))?;
    stack.add_envoy(&scenarios::floor(c, &floor_wasm))?;
    let measured: Vec<usize> = (0..SCENARIOS.len())
        .filter(|&i| settings.measures(SCENARIOS[i].id))
        .collect();
    let limitd_alone = settings.measures(LIMITD_ALONE);
    check_scenarios(&stack, &measured, &mut warnings)?;
    let pids: Vec<u32> = STACK_PROCESSES
        .iter()
        .filter_map(|name| stack.process(name).and_then(|p| p.pid()))
        .collect();
    // By index of the stack's Envoys (`envoy-1` is index 0).
    let envoy_pids: Vec<Option<u32>> = (1..=ENVOYS)
        .map(|n| stack.process(&format!("envoy-{n}")).and_then(|p| p.pid()))
        .collect();

    let master = stack.ports.redis[0];
    let limitd_url = format!(
        "http://127.0.0.1:{}{}",
        stack.ports.limitd[0],
        protocol::CHECKS_PATH
    );
    let lua = out.join("check.lua");
    let token = e2e::envoy_config::EnvoyConfig::shipped()?.limitd_token()?;
    std::fs::write(&lua, scenarios::limitd_wrk_script(&token)).map_err(|e| e.to_string())?;
    let url = |s: &Scenario| format!("http://{}{}", stack.envoy(s.envoy), s.path);
    // The many-keys scenarios' wrk script, per scenario.
    let scripts: Vec<Option<std::path::PathBuf>> = SCENARIOS
        .iter()
        .map(|s| {
            (s.keys > 0).then(|| {
                let path = out.join(format!("{}.lua", s.id));
                std::fs::write(&path, scenarios::keys_wrk_script(s.path, s.keys))
                    .map(|()| path)
                    .map_err(|e| e.to_string())
            })
        })
        .map(Option::transpose)
        .collect::<Result<_, _>>()?;
    let callouts = |s: &Scenario| stack.envoy_stat(s.envoy, "wasmcustom.ratelimit.callouts");

    step(&format!("warming up ({WARM_UP_SECONDS} s each)"));
    for &i in &measured {
        wrk::run(
            &url(&SCENARIOS[i]),
            WRK_THREADS,
            settings.connections,
            WARM_UP_SECONDS,
            scripts[i].as_deref(),
        )?;
    }
    let mut cpu_rounds = Vec::new();
    let mut evalsha: Vec<String> = vec!["EVALSHA".to_owned()];
    let mut redis_rps = 0.0;
    if limitd_alone {
        wrk::run(
            &limitd_url,
            WRK_THREADS,
            settings.connections,
            WARM_UP_SECONDS,
            Some(&lua),
        )?;
        evalsha.push(load_check_script(&[master], &mut warnings)?);
        evalsha.extend(scenarios::evalsha_arguments());
        let key = scenarios::limitd_redis_key();
        check_key_written(
            &key,
            redis_command(master, &["HGET", &key, "c"]),
            &mut warnings,
        );
        // Calibrates redis-benchmark's request count to about `seconds`.
        redis_rps = redis_benchmark(master, false, settings.connections, 20_000, &evalsha)?;
    }

    let mut envoy_rounds: Vec<Vec<EnvoyRound>> = vec![Vec::new(); measured.len()];
    let mut limitd_rounds = Vec::new();
    for round in 0..settings.rounds {
        step(&format!("round {}/{}", round + 1, settings.rounds));
        let cpu_start = cpu::snapshot(&pids);
        for k in 0..measured.len() {
            let m = (round + k) % measured.len();
            let s = &SCENARIOS[measured[m]];
            let envoy_pid = envoy_pids.get(s.envoy).copied().flatten();
            let envoy_cpu = || envoy_pid.and_then(cpu::process_cpu_us);
            let cpu_before = envoy_cpu();
            let callouts_before = callouts(s);
            let closed = wrk::run(
                &url(s),
                WRK_THREADS,
                settings.connections,
                settings.seconds,
                scripts[measured[m]].as_deref(),
            )?;
            let callouts = callouts(s).saturating_sub(callouts_before);
            let cpu_us_per_request = match (cpu_before, envoy_cpu()) {
                (Some(before), Some(after)) if closed.requests > 0 => {
                    (after - before) / closed.requests as f64
                }
                _ => 0.0,
            };
            let open = open_loop::run(
                stack.envoy(s.envoy),
                s,
                settings.rate,
                OPEN_LOOP_CONNECTIONS,
                Duration::from_secs(settings.seconds),
            )?;
            let callouts_per_request = callouts as f64 / closed.requests.max(1) as f64;
            eprintln!(
                "    {:<22} {:>8.0} req/s  {:>5.1} µs Envoy CPU/req  {:.3} callouts/req   open loop p50 {:.3} ms  p99 {:.3} ms  ({} ok, {} other)",
                s.id, closed.requests_per_sec, cpu_us_per_request, callouts_per_request, open.p50_ms, open.p99_ms, open.ok, open.errors
            );
            envoy_rounds[m].push(EnvoyRound {
                wrk: closed,
                open,
                cpu_us_per_request,
                callouts,
            });
        }
        if limitd_alone {
            let n = ((redis_rps * settings.seconds as f64) as u64).max(10_000);
            let limitd_first = round % 2 == 0;
            let mut limitd = None;
            if limitd_first {
                limitd = Some(wrk::run(
                    &limitd_url,
                    WRK_THREADS,
                    settings.connections,
                    settings.seconds,
                    Some(&lua),
                )?);
            }
            redis_rps = redis_benchmark(master, false, settings.connections, n, &evalsha)?;
            let limitd = match limitd {
                Some(l) => l,
                None => wrk::run(
                    &limitd_url,
                    WRK_THREADS,
                    settings.connections,
                    settings.seconds,
                    Some(&lua),
                )?,
            };
            eprintln!(
                "    {:<16} {:>8.0} checks/s   Redis EVALSHA {:.0}/s",
                "limitd alone", limitd.requests_per_sec, redis_rps
            );
            limitd_rounds.push(LimitdRound { limitd, redis_rps });
        }
        load.push((format!("after round {}", round + 1), loadavg()));
        cpu_rounds.push(cpu_shares(
            &format!("round {}", round + 1),
            &cpu_start,
            &pids,
            &mut warnings,
        ));
    }

    let counters = counters(&stack);
    check_counters(
        &counters,
        settings.measures("local_ratelimit"),
        &mut warnings,
    );
    let limitd_hwm_kib: Vec<u64> = ["limitd-1", "limitd-2"]
        .iter()
        .map(|name| {
            stack
                .process(name)
                .and_then(|p| p.pid())
                .and_then(peak_rss_kib)
                .unwrap_or(0)
        })
        .collect();
    drop(stack);

    let cluster = if settings.measures(LIMITD_CLUSTER) {
        cluster::run(&settings, &out, &token, &mut load, &mut warnings)?
    } else {
        Vec::new()
    };

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wasm = Binaries::locate().wasm;
    let results = Results {
        date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
            .unwrap_or_default()
            .trim()
            .to_owned(),
        machine: machine(cores),
        settings: settings.describe(),
        seconds: started.elapsed().as_secs_f64(),
        scenarios: measured
            .iter()
            .map(|&i| SCENARIOS[i])
            .zip(envoy_rounds)
            .collect(),
        limitd: limitd_rounds,
        cluster,
        wasm_bytes: std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0),
        limitd_hwm_kib,
        load,
        cpu: cpu_rounds,
        counters,
        warnings,
    };
    let markdown = results.to_markdown();
    let chart = svg::chart(&results);
    let docs = workspace_root().join("docs");
    std::fs::create_dir_all(&docs).map_err(|e| e.to_string())?;
    for (path, text) in [
        (out.join("results.json"), results.to_json()),
        (out.join("results.md"), markdown.clone()),
        (out.join("bench.svg"), chart.clone()),
        (docs.join("bench.svg"), chart),
    ] {
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("\n{markdown}");
    eprintln!(
        "xtask: bench done in {:.0} s: target/bench/results.{{json,md}}, docs/bench.svg",
        results.seconds
    );
    Ok(())
}

/// After `round`: the share of the machine's CPU that the benchmark (`pids`)
/// and other processes used since `cpu_start` (a warning when others used much).
fn cpu_shares(
    round: &str,
    cpu_start: &cpu::Snapshot,
    pids: &[u32],
    warnings: &mut Vec<String>,
) -> cpu::Shares {
    let shares = cpu_start.shares_until(&cpu::snapshot(pids));
    eprintln!(
        "    CPU: the benchmark {:.0}%, other processes {:.0}%, steal {:.0}%",
        shares.ours * 100.0,
        shares.others * 100.0,
        shares.steal * 100.0
    );
    if shares.others > 0.10 || shares.steal > 0.05 {
        warnings.push(format!(
            "{round}: other processes used {:.0}% of the machine's CPU (steal {:.0}%): \
             its figures are disturbed",
            shares.others * 100.0,
            shares.steal * 100.0
        ));
    }
    shares
}

/// wrk, redis-benchmark (Debian redis-tools, with redis-server) and sha1sum.
fn setup_tools() -> Result<(), String> {
    let missing: Vec<&str> = [("wrk", "wrk"), ("redis-benchmark", "redis-tools")]
        .into_iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root_with_apt() {
        return Err(format!(
            "the benchmark needs {0}: install it (Debian/Ubuntu: sudo apt-get install {0}) and run again",
            missing.join(" ")
        ));
    }
    apt_install(&missing)
}

/// Checks that each measured scenario answers as it should before measuring it.
fn check_scenarios(
    stack: &Stack,
    measured: &[usize],
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let get = |s: &Scenario| {
        http_get(stack.envoy(s.envoy), &s.path_of(0), None)
            .map_err(|e| format!("{} ({}): {e}", s.id, s.path))
    };
    for s in measured.iter().map(|&i| &SCENARIOS[i]) {
        // The denied paths' first request spends their one-per-hour quota.
        let mut response = get(s)?;
        if s.status == 429 && response.status == 200 && !s.mixed {
            response = get(s)?;
        }
        if !s.expects(response.status) {
            return Err(format!(
                "{}: GET {} answered {}, expected {}: {}",
                s.id, s.path, response.status, s.status, response.body
            ));
        }
        let policy = response.header("ratelimit-policy").unwrap_or("");
        match s.id {
            "baseline" | "local_ratelimit" | "filter_idle" | "wasm_noop" if !policy.is_empty() => {
                return Err(format!("{}: our filter answered ({policy})", s.id))
            }
            "allowed" | "allowed_per_request" if !policy.contains("bench_allowed") => {
                return Err(format!(
                    "allowed: no bench_allowed RateLimit-Policy ({policy:?})"
                ))
            }
            "leased" | "wasm_floor_admit" if !policy.contains("bench_leased") => {
                return Err(format!(
                    "{}: no bench_leased RateLimit-Policy ({policy:?})",
                    s.id
                ))
            }
            "many_keys" | "many_keys_per_request" if !policy.contains("bench_many") => {
                return Err(format!(
                    "{}: no bench_many RateLimit-Policy ({policy:?})",
                    s.id
                ))
            }
            "local_ratelimit" if response.header("x-ratelimit-limit").is_none() => warnings.push(
                "local_ratelimit: no x-ratelimit-limit header: is the filter active?".to_owned(),
            ),
            _ => {}
        }
    }
    Ok(())
}

/// SCRIPT LOADs limitd/src/check.lua on each of the masters `ports` and returns
/// its SHA1, warning when limitd runs another version of it there.
fn load_check_script(ports: &[u16], warnings: &mut Vec<String>) -> Result<String, String> {
    let path = workspace_root().join("limitd/src/check.lua");
    let source = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // limitd has loaded its own copy by now (the warm-up ran checks through it).
    let digest = Command::new("sha1sum")
        .arg(&path)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .map(str::to_owned)
        });
    let mut sha = String::new();
    for &port in ports {
        if let Some(digest) = &digest {
            if redis_command(port, &["SCRIPT", "EXISTS", digest]).ok()
                != Some(Resp::Array(Some(vec![Resp::Integer(1)])))
            {
                warnings.push(format!(
                    "limitd does not run limitd/src/check.lua as it is now on the Redis at port \
                     {port} (rebuild limitd): the EVALSHA comparison runs a different script"
                ));
            }
        }
        sha = match redis_command(port, &["SCRIPT", "LOAD", &source]) {
            Ok(Resp::Bulk(Some(sha))) => sha,
            other => {
                return Err(format!(
                    "SCRIPT LOAD of check.lua on port {port}: {other:?}"
                ))
            }
        };
    }
    Ok(sha)
}

/// Warns unless `reply` (to `HGET key c`) shows that limitd's checks wrote `key`: then
/// redis-benchmark would run the script on other keys than limitd.
fn check_key_written(
    key: &str,
    reply: Result<Resp, impl std::fmt::Debug>,
    warnings: &mut Vec<String>,
) {
    if !matches!(reply, Ok(Resp::Bulk(Some(_)))) {
        warnings.push(format!(
            "limitd's check did not write {key} ({reply:?}): redis-benchmark may use another key than limitd"
        ));
    }
}

/// Runs `redis-benchmark` with `command` on 127.0.0.1:`port` (with `cluster`, on every
/// master of the cluster `port` is a node of, from one thread); returns requests/s.
fn redis_benchmark(
    port: u16,
    cluster: bool,
    clients: u32,
    requests: u64,
    command: &[String],
) -> Result<f64, String> {
    let mut benchmark = Command::new("redis-benchmark");
    benchmark.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if cluster {
        // Its default in cluster mode is one thread per master; one thread, as without
        // --cluster and as wrk drives limitd.
        benchmark.args(["--cluster", "--threads", "1"]);
    }
    let out = benchmark
        .args([
            "-c",
            &clients.to_string(),
            "-n",
            &requests.to_string(),
            "-P",
            "1",
            // A fresh receipt key per call (`__rand_int__`), as limitd sends.
            "-r",
            "1000000000",
            "--csv",
        ])
        .args(command)
        .output()
        .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    csv_requests_per_sec(&text)
        .filter(|_| out.status.success())
        .ok_or_else(|| {
            format!(
                "redis-benchmark failed ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// The requests/s of `redis-benchmark --csv`'s output: the line after its header
/// `"test","rps",...` (in cluster mode, lines naming the masters come first).
fn csv_requests_per_sec(text: &str) -> Option<f64> {
    let mut lines = text
        .lines()
        .skip_while(|line| !line.starts_with("\"test\",\"rps\""));
    lines.next()?;
    lines
        .next()?
        .split("\",\"")
        .nth(1)?
        .trim_matches('"')
        .parse()
        .ok()
}

/// The filter's counters (Envoy 0), the local_ratelimit reference's (Envoy
/// 2), and for the idle filter (Envoy 4) its checks (none expected) and its
/// live wasm VMs (some expected: the filter is loaded), and the noop module's (Envoy 7).
fn counters(stack: &Stack) -> Vec<(String, u64)> {
    let mut all = Vec::new();
    for name in [
        "checks",
        "callouts",
        "allowed",
        "denied",
        "callout_errors",
        "failure_mode_allowed",
        "failure_mode_denied",
    ] {
        let stat = format!("wasmcustom.ratelimit.{name}");
        all.push((stat.clone(), stack.envoy_stat(0, &stat)));
    }
    for name in ["ok", "rate_limited"] {
        let stat = format!(
            "{}.http_local_rate_limit.{name}",
            scenarios::LOCAL_STAT_PREFIX
        );
        all.push((stat.clone(), stack.envoy_stat(2, &stat)));
    }
    for stat in [IDLE_CHECKS, IDLE_VMS] {
        all.push((format!("filter_idle {stat}"), stack.envoy_stat(4, stat)));
    }
    all.push((
        format!("wasm_noop {IDLE_VMS}"),
        stack.envoy_stat(7, IDLE_VMS),
    ));
    all
}

const IDLE_CHECKS: &str = "wasmcustom.ratelimit.checks";
const IDLE_VMS: &str = "wasm.envoy.wasm.runtime.v8.active";

fn check_counters(counters: &[(String, u64)], local_measured: bool, warnings: &mut Vec<String>) {
    let get = |suffix: &str| {
        counters
            .iter()
            .find(|(k, _)| k.ends_with(suffix))
            .map_or(0, |(_, v)| *v)
    };
    let idle = |stat: &str| get(&format!("filter_idle {stat}"));
    if idle(IDLE_CHECKS) > 0 {
        warnings.push(format!(
            "filter_idle: the filter checked {} requests: a rule matched",
            idle(IDLE_CHECKS)
        ));
    }
    if idle(IDLE_VMS) == 0 {
        warnings
            .push("filter_idle: Envoy shows no active wasm VM: is the filter loaded?".to_owned());
    }
    if get(&format!("wasm_noop {IDLE_VMS}")) == 0 {
        warnings.push("wasm_noop: Envoy shows no active wasm VM: is noop.wasm loaded?".to_owned());
    }
    for bad in [
        "callout_errors",
        "failure_mode_allowed",
        "failure_mode_denied",
    ] {
        if get(bad) > 0 {
            warnings.push(format!(
                "our filter counted {} {bad}: some requests were not decided by limitd",
                get(bad)
            ));
        }
    }
    if local_measured && get("http_local_rate_limit.ok") == 0 {
        warnings.push("local_ratelimit counted no request: the reference did not run".to_owned());
    }
    if get("http_local_rate_limit.rate_limited") > 0 {
        warnings.push("local_ratelimit limited requests: its bucket is too small".to_owned());
    }
}

/// `/proc/loadavg`'s 1, 5 and 15-minute averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn machine(cores: usize) -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = output("uname", &["-r"]).unwrap_or_default();
    format!("{cores} cores ({model}), Linux {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_csv_is_read_with_or_without_the_cluster_preamble() {
        let plain = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\"\n\
                     \"EVALSHA abc 2 k\",\"11510.50\",\"2.7\",\"0.3\"\n";
        assert_eq!(csv_requests_per_sec(plain), Some(11510.5));
        let cluster = "Cluster has 3 master nodes:\n\n\
                       Master 0: 5f3a 127.0.0.1:40001\n\
                       Master 1: 9c1e 127.0.0.1:40002\n\
                       Master 2: 07d2 127.0.0.1:40003\n\n";
        assert_eq!(
            csv_requests_per_sec(&format!("{cluster}{plain}")),
            Some(11510.5)
        );
        assert_eq!(csv_requests_per_sec(cluster), None);
        assert_eq!(csv_requests_per_sec(""), None);
    }
}
