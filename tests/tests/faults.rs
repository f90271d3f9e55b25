//! Fault tests: real processes under a steady background load (a few hundred
//! requests/s through Envoy), while a Redis master, a limitd, or all of Redis
//! fails. Each checks what clients see (no 5xx, the failure modes), what the
//! filter counted, and that the system recovers by itself, and prints the
//! figures docs/operations.md quotes (lines starting `faults:`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use e2e::load::{percentile, seconds_between};
use e2e::{
    eventually, http_get, redis_command, Binaries, EnvoyOptions, Load, LoadOptions, LoadReport,
    Resp, Stack, StackOptions,
};

/// The load's total rate and connections.
const RATE_PER_S: f64 = 300.0;
const CONNECTIONS: usize = 12;
/// No load runs longer than this, whatever happens to the test.
const LOAD_BOUND: Duration = Duration::from_secs(60);
/// How long any one recovery may take before the test fails.
const RECOVERY_BOUND: Duration = Duration::from_secs(30);
/// The check timeout in the shipped rules (`rules/ratelimit.yaml`).
const SHIPPED_TIMEOUT: Duration = Duration::from_millis(250);
/// Latency beyond the timeout allowed for a loaded 2-core machine.
const OUTAGE_LATENCY_SLACK: Duration = Duration::from_millis(200);
/// How long Envoy may keep routing checks to a lost limitd (envoy.yaml: "stops
/// receiving checks within a second or two").
const LOST_LIMITD_DETECTION: Duration = Duration::from_secs(2);
/// Checks in flight to a limitd when it goes, beyond its round-robin share.
const IN_FLIGHT_MARGIN: usize = 10;

/// The fault tests run one at a time: each measures timings under load, which
/// two stacks sharing this machine's cores at once would distort.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A rule on `/api/<name>` (the backend answers 200 on any `/api/` path),
/// with a limit the load never reaches and any `extra` fields.
fn rule(name: &str, extra: &str) -> String {
    format!(
        r#"{{ "name": "{name}", "match": {{ "path": {{ "prefix": "/api/{name}" }} }}, "limit": {{ "requests": 1000000000, "window": "1s" }}{extra} }},"#
    )
}

/// The shipped configuration with `rules` added in front of the demo rules
/// (on the same line: the plugin configuration is a YAML block scalar).
fn start(rules: &[String]) -> Stack {
    let envoy = EnvoyOptions::default().replace(
        r#""rules": ["#,
        &format!(r#""rules": [ {}"#, rules.join(" ")),
    );
    Stack::for_test(envoy)
}

fn load(stack: &Stack, paths: &[&str], connections: usize) -> Load {
    Load::start(LoadOptions {
        to: stack.envoy(0),
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        from: None,
        connections,
        rate_per_s: RATE_PER_S,
        max_duration: LOAD_BOUND,
    })
}

fn stat(stack: &Stack, name: &str) -> u64 {
    stack.envoy_stat(0, &format!("wasmcustom.ratelimit.{name}"))
}

fn assert_no_failures(report: &LoadReport) {
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed (statuses {}), first: {:#?}",
        failures.len(),
        report.samples.len(),
        report.statuses(),
        &failures[..failures.len().min(10)]
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn redis_master_killed_under_load_sentinel_promotes_and_limitd_follows() {
    let _serial = serial();
    let mut stack = start(&[rule("load", "")]);
    let old_master = stack.ports.redis[0];
    assert_eq!(stack.master_port(), Ok(old_master));
    let load = load(&stack, &["/api/load"], CONNECTIONS);
    load.wait_for_global(300, RECOVERY_BOUND).unwrap();

    let killed_at = Instant::now();
    stack.kill("redis-master");
    // Sentinel's answer flips at the promotion (earlier than +switch-master).
    let new_master = e2e::poll_every(RECOVERY_BOUND, Duration::from_millis(10), || {
        stack
            .master_ports()
            .into_iter()
            .flatten()
            .find(|&p| p != old_master)
            .ok_or_else(|| format!("sentinels still name {old_master}"))
    })
    .unwrap();
    let promoted_at = Instant::now();
    assert!(stack.ports.redis[1..].contains(&new_master), "{new_master}");
    // The old master comes back at once: an empty master that limitd must not
    // go back to, since the sentinels name the new one.
    stack.restart_redis(0).unwrap();
    let restarted_at = Instant::now();
    // limitd follows by itself: the load's requests are decided by limitd again.
    load.wait_for_global(300, RECOVERY_BOUND).unwrap();
    let report = load.stop();

    assert_no_failures(&report);
    // The outage began: some request after the kill was let through by the
    // failure mode; the first one decided by limitd after that ends the gap.
    let first_local = report
        .sent_from(killed_at)
        .find(|s| !s.global)
        .expect("no request fell back to the failure mode after the kill");
    let resumed = report
        .sent_from(first_local.sent)
        .find(|s| s.global)
        .expect("no request was decided by limitd after the failover");
    let last_local = report.local().last().expect("a local decision exists");
    let fell_back = report.sent_from(killed_at).filter(|s| !s.global).count();
    let gap_from_kill = seconds_between(killed_at, resumed.answered());
    let gap_from_promotion = seconds_between(promoted_at, resumed.answered());
    eprintln!(
        "faults: redis master SIGKILL under {RATE_PER_S} req/s: promotion {:.2}s after the kill; \
         first global decision {gap_from_kill:.2}s after the kill, {gap_from_promotion:+.2}s from \
         the promotion; every request global again {:.2}s after the kill; {fell_back} requests \
         fell back to failure mode allow, 0 failed ({})",
        seconds_between(killed_at, promoted_at),
        seconds_between(killed_at, last_local.answered()),
        report.statuses()
    );
    assert!(
        gap_from_promotion < 3.0,
        "global decisions resumed {gap_from_promotion:.2}s after the promotion"
    );
    assert_eq!(
        stat(&stack, "failure_mode_allowed"),
        report.local().count() as u64
    );

    // Both limitd moved to the new master without a restart.
    for index in 0..2 {
        let series = format!(r#"limitd_redis_master{{addr="127.0.0.1:{new_master}"}}"#);
        eventually(RECOVERY_BOUND, || {
            match stack.limitd_metric(index, &series) {
                Some(1.0) => Ok(()),
                other => Err(format!("limitd-{} {series}: {other:?}", index + 1)),
            }
        })
        .unwrap();
        assert!(
            stack.limitd_metric(index, "limitd_failovers_total") >= Some(1.0),
            "limitd-{} counted no failover",
            index + 1
        );
    }

    // A limit is enforced again.
    a_fresh_client_gets_exactly_its_ten(&stack);

    // The old master, started again at the promotion, joins as a replica of
    // the new one (Sentinel converts it once it has seen it report itself
    // master for a while: 8-18 s here).
    eventually(RECOVERY_BOUND, || {
        match redis_command(old_master, &["INFO", "replication"]) {
            Ok(Resp::Bulk(Some(info)))
                if info.contains("role:slave")
                    && info.contains(&format!("master_port:{new_master}\r"))
                    && info.contains("master_link_status:up") =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    eprintln!(
        "faults: the old master, restarted at the promotion, replicates from the new one {:.2}s later",
        seconds_between(restarted_at, Instant::now())
    );
    assert_eq!(stack.master_port(), Ok(new_master));
}

#[test]
fn a_cluster_master_killed_under_load_its_replica_takes_over_and_limitd_follows() {
    let _serial = serial();
    Binaries::require();
    let mut stack = Stack::start(StackOptions {
        redis_cluster: true,
        envoy: EnvoyOptions::default().replace(
            r#""rules": ["#,
            &format!(r#""rules": [ {}"#, rule("load", "")),
        ),
        ..StackOptions::default()
    })
    .unwrap_or_else(|e| panic!("stack did not start: {e}"));
    // The load's counter (per client address, 1 s windows); its checks also carry the shadow
    // global rule's hit, on another slot.
    let key = "rl:v2:{load:127.0.0.1}:w1000";
    let (victim, old_master) = stack.cluster_master_of(key).unwrap();
    let load = load(&stack, &["/api/load"], CONNECTIONS);
    load.wait_for_global(300, RECOVERY_BOUND).unwrap();

    let killed_at = Instant::now();
    stack.kill(&victim);
    let new_master = e2e::poll_every(RECOVERY_BOUND, Duration::from_millis(10), || {
        match stack.cluster_master_of(key) {
            Ok((_, port)) if port != old_master => Ok(port),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    let promoted_at = Instant::now();
    // limitd follows by itself: the load's requests are decided by limitd again.
    load.wait_for_global(300, RECOVERY_BOUND).unwrap();
    let report = load.stop();

    assert_no_failures(&report);
    let fell_back = report.sent_from(killed_at).filter(|s| !s.global).count();
    let resumed = report
        .sent_from(killed_at)
        .skip_while(|s| s.global)
        .find(|s| s.global)
        .map(|s| seconds_between(killed_at, s.answered()));
    eprintln!(
        "faults: cluster master SIGKILL under {RATE_PER_S} req/s: {old_master} replaced by \
         {new_master} {:.2}s after the kill; first global decision after the gap {resumed:?}s \
         after the kill; {fell_back} requests fell back to failure mode allow, 0 failed ({})",
        seconds_between(killed_at, promoted_at),
        report.statuses()
    );
    assert_eq!(
        stat(&stack, "failure_mode_allowed"),
        report.local().count() as u64
    );

    // A limit is enforced again.
    a_fresh_client_gets_exactly_its_ten(&stack);
}

/// A client never seen before gets exactly the 10 of `/limited_endpoint`, then 429s.
fn a_fresh_client_gets_exactly_its_ten(stack: &Stack) {
    let client = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 21)));
    let statuses: Vec<u16> = (0..12)
        .map(|_| {
            http_get(stack.envoy(0), "/limited_endpoint", client)
                .unwrap()
                .status
        })
        .collect();
    assert_eq!(statuses, [[200; 10].as_slice(), &[429, 429]].concat());
}

/// Runs the load on `/api/load`, applies `fault` to limitd-1, waits until
/// `settled` (limitd-1 out of rotation, or serving again) and until the load
/// is steady (only global decisions), and checks that no request failed, that
/// only requests routed to the lost limitd before Envoy took it out of
/// rotation fell back to the failure mode, and that requests kept being
/// decided globally through limitd-2.
fn limitd_fault(
    what: &str,
    fault: impl FnOnce(&mut Stack),
    settled: impl Fn(&Stack) -> Result<(), String>,
) {
    let mut stack = start(&[rule("load", "")]);
    let load = load(&stack, &["/api/load"], CONNECTIONS);
    load.wait_for_global(300, RECOVERY_BOUND).unwrap();
    let checks_before = stack
        .limitd_metric(1, r#"limitd_checks_total{result="allowed"}"#)
        .unwrap_or(0.0);

    let fault_at = Instant::now();
    fault(&mut stack);
    eventually(RECOVERY_BOUND, || settled(&stack)).unwrap();
    let steady_since = steady(&load);
    load.wait_for_global(300, RECOVERY_BOUND).unwrap();
    let report = load.stop();

    assert_no_failures(&report);
    let fell_back: Vec<_> = report.local().collect();
    let last_fallback = fell_back
        .last()
        .map(|s| s.answered().saturating_duration_since(fault_at))
        .unwrap_or_default();
    let exposed = report
        .sent_from(fault_at)
        .filter(|s| s.sent <= fault_at + last_fallback)
        .count();
    eprintln!(
        "faults: {what} under {RATE_PER_S} req/s: {} requests fell back to failure mode allow \
         (of {exposed} sent from the fault to +{:.0}ms, the last fallback), 0 failed ({})",
        fell_back.len(),
        ms(last_fallback),
        report.statuses()
    );
    // Envoy stops routing to a lost limitd within a second or two (envoy.yaml:
    // outlier detection, health checks every second); until then round robin
    // sends it about half the checks, and those fall back.
    assert!(
        last_fallback <= LOST_LIMITD_DETECTION,
        "requests fell back until +{last_fallback:?}"
    );
    assert!(
        fell_back.len() <= exposed / 2 + IN_FLIGHT_MARGIN,
        "{} of {exposed} requests fell back: more than limitd-1's share",
        fell_back.len()
    );
    assert!(fell_back
        .iter()
        .all(|s| s.sent >= fault_at - Duration::from_millis(50)));
    // Every request the filter could not have checked is counted as such.
    assert_eq!(stat(&stack, "failure_mode_allowed"), fell_back.len() as u64);
    assert_eq!(stat(&stack, "callout_errors"), fell_back.len() as u64);
    // Requests kept being decided globally, through limitd-2.
    let tail: Vec<_> = report.sent_from(steady_since).collect();
    assert!(
        tail.len() >= 100,
        "only {} requests after settling",
        tail.len()
    );
    assert!(
        tail.iter().all(|s| s.global),
        "{} of {} requests after settling were not decided by limitd",
        tail.iter().filter(|s| !s.global).count(),
        tail.len()
    );
    let checks_after = stack
        .limitd_metric(1, r#"limitd_checks_total{result="allowed"}"#)
        .unwrap_or(0.0);
    assert!(checks_after > checks_before, "limitd-2 checked nothing");
}

/// Waits (bounded) until 150 requests in a row were decided by limitd, and
/// returns when that run began.
fn steady(load: &Load) -> Instant {
    eventually(RECOVERY_BOUND, || {
        let since = Instant::now();
        let local = load.local();
        load.wait_for_global(150, RECOVERY_BOUND)?;
        if load.local() == local {
            Ok(since)
        } else {
            Err(format!(
                "{} requests fell back meanwhile",
                load.local() - local
            ))
        }
    })
    .unwrap()
}

#[test]
fn one_limitd_killed_under_load_no_request_fails() {
    let _serial = serial();
    limitd_fault(
        "limitd-1 SIGKILL",
        |stack| stack.kill("limitd-1"),
        |stack| {
            let port = stack.ports.limitd[0];
            match stack.envoy_health_flags(0, "limitd", port) {
                Some(flags) if flags != "healthy" => Ok(()),
                other => Err(format!("limitd-1 still in rotation: {other:?}")),
            }
        },
    );
}

#[test]
fn one_limitd_restarted_under_load_no_request_fails() {
    let _serial = serial();
    limitd_fault(
        "limitd-1 SIGTERM and restart",
        |stack| {
            let process = stack.process("limitd-1").expect("limitd-1 runs");
            let signalled = Instant::now();
            process.signal(libc::SIGTERM);
            let status = eventually(RECOVERY_BOUND, || {
                process.try_wait().ok_or_else(|| "still running".to_owned())
            })
            .unwrap();
            assert!(status.success(), "limitd-1 exited with {status}");
            let exited = Instant::now();
            stack.start_limitd(0).unwrap();
            eprintln!(
                "faults: limitd-1 exited {:.0}ms after SIGTERM, and was ready again {:.0}ms later",
                ms(exited - signalled),
                ms(exited.elapsed())
            );
        },
        |stack| {
            // In rotation again, and checks reach the new process.
            let port = stack.ports.limitd[0];
            match stack.envoy_health_flags(0, "limitd", port) {
                Some(flags) if flags == "healthy" => {}
                other => return Err(format!("limitd-1 not in rotation: {other:?}")),
            }
            match stack.limitd_metric(0, r#"limitd_checks_total{result="allowed"}"#) {
                Some(n) if n > 0.0 => Ok(()),
                other => Err(format!("the new limitd-1 checked nothing yet: {other:?}")),
            }
        },
    );
}

#[test]
fn all_of_redis_stopped_each_rule_keeps_its_failure_mode_and_recovery_is_automatic() {
    let _serial = serial();
    const FALLBACK_REQUESTS: u64 = 4;
    const FALLBACK_WINDOW_MS: u64 = 1000;
    const OUTAGE: Duration = Duration::from_secs(6);
    let shipped = e2e::envoy_config::EnvoyConfig::shipped().unwrap().rules;
    assert!(
        shipped.contains(r#""timeout": "250ms""#),
        "the shipped timeout changed"
    );

    let mut stack = start(&[
        rule("fm-allow", r#", "failure_mode": "allow""#),
        rule("fm-deny", r#", "failure_mode": "deny""#),
        rule(
            "fm-fallback",
            &format!(
                r#", "fallback": {{ "requests": {FALLBACK_REQUESTS}, "window": "{FALLBACK_WINDOW_MS}ms" }}"#
            ),
        ),
    ]);
    let (allow, deny, fallback) = (0, 1, 2);
    let load = load(
        &stack,
        &["/api/fm-allow", "/api/fm-deny", "/api/fm-fallback"],
        15,
    );
    load.wait_for_global(300, RECOVERY_BOUND).unwrap();

    let nodes = ["redis-master", "redis-replica-1", "redis-replica-2"];
    let stopped_at = Instant::now();
    for name in nodes {
        stack.process(name).expect(name).signal(libc::SIGSTOP);
    }
    // The outage itself: held on purpose.
    std::thread::sleep(OUTAGE);
    // The master first: a replica back before it could be promoted in its place.
    let resumed_at = Instant::now();
    for name in nodes {
        stack.process(name).expect(name).signal(libc::SIGCONT);
    }
    let global_at_resume = load.global();
    eventually(RECOVERY_BOUND, || {
        if load.global() > global_at_resume {
            Ok(())
        } else {
            Err("no request decided by limitd since Redis returned".to_owned())
        }
    })
    .unwrap();
    load.wait_for_global(600, RECOVERY_BOUND).unwrap();
    let report = load.stop();

    // Every request decided during the outage followed its rule's failure mode.
    let during: Vec<_> = report
        .sent_from(stopped_at)
        .filter(|s| s.answered() < resumed_at)
        .collect();
    for s in &during {
        assert!(!s.global, "decided by limitd with Redis stopped: {s:?}");
        let expected: &[u16] = match s.path {
            p if p == allow => &[200],
            p if p == deny => &[503],
            _ => &[200, 429],
        };
        assert!(expected.contains(&s.status), "{s:?}");
    }
    for path in [allow, deny, fallback] {
        let n = during.iter().filter(|s| s.path == path).count();
        assert!(
            n >= 20,
            "only {n} requests on path {path} during the outage"
        );
    }
    // Nothing else failed: only the deny rule's 503s.
    let failures: Vec<_> = report
        .samples
        .iter()
        .filter(|s| s.failed() && !(s.path == deny && s.status == 503 && !s.global))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");

    // What the filter counted matches what the clients saw.
    let count = |path: usize, status: u16| {
        report
            .local()
            .filter(|s| s.path == path && s.status == status)
            .count() as u64
    };
    assert_eq!(stat(&stack, "failure_mode_allowed"), count(allow, 200));
    assert_eq!(stat(&stack, "failure_mode_denied"), count(deny, 503));
    assert_eq!(stat(&stack, "fallback_allowed"), count(fallback, 200));
    assert_eq!(stat(&stack, "fallback_denied"), count(fallback, 429));

    // The fallback limit admits exactly its limit per window (the proxy's
    // clock). A decision lands a little before its answer: an admission
    // answered within `SLACK_MS` after a window boundary may belong to either
    // window, so it counts as "maybe" in both.
    const SLACK_MS: u64 = 50;
    let fallbacks: Vec<_> = report.local().filter(|s| s.path == fallback).collect();
    // Per window: (surely admitted, maybe admitted, surely refused).
    let mut windows = std::collections::BTreeMap::<u64, (u64, u64, u64)>::new();
    for s in &fallbacks {
        let at = s.answered_unix_ms();
        let window = at / FALLBACK_WINDOW_MS;
        let at_edge = at % FALLBACK_WINDOW_MS < SLACK_MS;
        match (s.status, at_edge) {
            (200, false) => windows.entry(window).or_default().0 += 1,
            (200, true) => {
                windows.entry(window).or_default().1 += 1;
                windows.entry(window - 1).or_default().1 += 1;
            }
            (_, false) => windows.entry(window).or_default().2 += 1,
            (_, true) => {}
        }
    }
    let mut full = 0;
    for (window, (allowed, maybe, denied)) in &windows {
        assert!(
            *allowed <= FALLBACK_REQUESTS,
            "window {window}: {allowed} admitted by the fallback limit of {FALLBACK_REQUESTS}"
        );
        if *denied > 0 {
            full += 1;
            assert!(
                allowed + maybe >= FALLBACK_REQUESTS,
                "window {window}: only {allowed} (+{maybe} at the edge) admitted before denials"
            );
        }
    }
    assert!(
        full >= 3,
        "only {full} windows reached the fallback limit: {windows:?}"
    );

    // Added latency stays bounded by the check timeout, group commit included:
    // a request queued behind a hung callout gets only what is left of its own
    // timeout, and the failure mode once that is spent.
    let latencies: Vec<Duration> = during.iter().map(|s| s.latency).collect();
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    let max = latencies.iter().max().copied().unwrap_or_default();

    // Recovery: the first request decided by limitd after Redis returned, and
    // the moment from which every request was.
    let recovered = report
        .sent_from(resumed_at)
        .find(|s| s.global)
        .expect("recovered");
    let last_local = report.local().last().expect("local decisions");
    eprintln!(
        "faults: all Redis SIGSTOP for {OUTAGE:?} under {RATE_PER_S} req/s: {} requests during \
         the outage, latency p50 {:.0}ms p99 {:.0}ms max {:.0}ms (timeout {:.0}ms); allow {} \
         passed, deny {} got 503, fallback {} admitted / {} refused over {} windows at its limit \
         of {FALLBACK_REQUESTS}; first global decision {:.2}s after SIGCONT, last failure-mode \
         answer {:+.2}s from it",
        during.len(),
        ms(p50),
        ms(p99),
        ms(max),
        ms(SHIPPED_TIMEOUT),
        count(allow, 200),
        count(deny, 503),
        count(fallback, 200),
        count(fallback, 429),
        full,
        seconds_between(resumed_at, recovered.answered()),
        seconds_between(resumed_at, last_local.answered()),
    );
    assert!(
        p99 < SHIPPED_TIMEOUT + OUTAGE_LATENCY_SLACK,
        "p99 {p99:?} during the outage (timeout {SHIPPED_TIMEOUT:?})"
    );
    // Recovered by itself: every later request is decided by limitd and passes.
    let tail: Vec<_> = report.sent_from(last_local.answered()).collect();
    assert!(
        tail.len() >= 100 && tail.iter().all(|s| s.global && s.status == 200),
        "{} requests after recovery, not all decided by limitd: {}",
        tail.len(),
        report.statuses()
    );
}

/// A rule in lease mode on `/api/leased`, keyed by client IP, with a window so long that the run
/// never crosses its end (its Redis count is then the whole run's).
const LEASED_RULE: &str = r#"{ "name": "leased", "match": { "path": { "prefix": "/api/leased" } }, "limit": { "requests": 1000000000, "window": "366d" }, "lease": { "max_units": 200 } },"#;

#[test]
fn every_limitd_killed_while_leases_are_held_no_request_fails_and_none_is_admitted_uncounted() {
    let _serial = serial();
    // The shipped shadow rule on `/api/` checks every request it matches: out of the way.
    let envoy = EnvoyOptions::default()
        .replace(r#""rules": ["#, &format!(r#""rules": [ {LEASED_RULE}"#))
        .shadow_rule_moved_off_api();
    let mut stack = Stack::for_test(envoy);
    let load = load(&stack, &["/api/leased"], CONNECTIONS);
    load.wait_for_global(300, RECOVERY_BOUND).unwrap();
    eventually(RECOVERY_BOUND, || match stat(&stack, "lease_admitted") {
        0 => Err("no request admitted from a lease yet".to_owned()),
        _ => Ok(()),
    })
    .unwrap();

    // Every limitd goes: the Envoy keeps admitting from the block it holds, then its rule's
    // failure mode (allow) takes over.
    stack.kill("limitd-1");
    stack.kill("limitd-2");
    let killed_at = Instant::now();
    let local_at_kill = load.local();
    eventually(RECOVERY_BOUND, || {
        if load.local() > local_at_kill + 50 {
            Ok(())
        } else {
            Err(format!("{} fell back so far", load.local() - local_at_kill))
        }
    })
    .unwrap();
    let report = load.stop();
    assert_no_failures(&report);

    // Sent after every limitd was gone and still admitted by the global limit (the rate-limit
    // headers say so): admitted from a block held at the kill.
    let from_blocks = report
        .sent_from(killed_at)
        .filter(|s| s.global && s.status == 200)
        .count();
    // Lease admissions reach Envoy's counters at the filter's next flush: wait until every
    // admission the clients saw is counted.
    let admitted = report
        .samples
        .iter()
        .filter(|s| s.global && s.status == 200)
        .count() as u64;
    let allowed = eventually(RECOVERY_BOUND, || match stat(&stack, "allowed") {
        n if n >= admitted => Ok(n),
        n => Err(format!("{n} of {admitted} admissions counted")),
    })
    .unwrap();
    let leased = stat(&stack, "lease_admitted");
    let units = stat(&stack, "lease_units");
    let counted = match redis_command(
        stack.ports.redis[0],
        &["HGET", "rl:v2:{leased:127.0.0.1}:w31622400000", "c"],
    ) {
        Ok(Resp::Bulk(Some(count))) => count.parse::<u64>().expect("a count"),
        other => panic!("no count in Redis: {other:?}"),
    };
    eprintln!(
        "faults: every limitd SIGKILL with leases held: {} requests admitted from the block \
         after the kill, then {} by the failure mode; over the run {allowed} admitted by the \
         global limit ({leased} from {units} leased units), {counted} counted in Redis ({})",
        from_blocks,
        report.local().count(),
        report.statuses()
    );
    assert!(from_blocks > 0, "the block held at the kill was not spent");
    // No request was admitted from units Redis did not count.
    assert!(
        leased <= units,
        "{leased} admitted from {units} leased units"
    );
    assert!(
        counted >= allowed,
        "{allowed} admitted by the global limit, only {counted} counted in Redis"
    );
}
