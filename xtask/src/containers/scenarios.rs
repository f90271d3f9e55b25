//! What the container test checks, through Envoy only, from client containers of their own:
//! per-client limiting and load balancing, the `cluster` profile ([`super::cluster`]), then the
//! faults, each asserting what clients saw and printing its figures on lines starting
//! `container-test:`.
//!
//! The load requests `/api/items` with a key (`x-api-key`) that changes every [`PER_KEY`]
//! requests: the demo rule `api_key` allows 20 per key per minute, so the load is never denied,
//! and every answer shows whether limitd decided and counted it (RateLimit headers) or the
//! failure mode let it through (none).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::client::{Client, Record, Reply};
use super::docker::{docker, Project};
use super::redis::{current_master, wait_replica};

/// The demo rule `api_key` in rules/ratelimit.yaml: 20 requests per key per minute, windows aligned to
/// Redis time.
pub(super) const KEY_LIMIT: u32 = 20;
pub(super) const LOAD_PATH: &str = "/api/items";
/// Requests per key in a load: half the limit, so only lost counts could ever reach it.
pub(super) const PER_KEY: u32 = 10;
pub(super) const LOAD_RATE_PER_S: u32 = 40;
/// No load runs longer than this, whatever happens to the test.
pub(super) const LOAD_BOUND: Duration = Duration::from_secs(150);
/// How long any one recovery may take before the test fails (safety bounds, not speed
/// targets).
pub(super) const BOUND: Duration = Duration::from_secs(60);

pub(super) fn report(line: &str) {
    println!("container-test: {line}");
}

pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Polls `probe` every 100 ms for at most `within`.
pub(super) fn poll<T>(
    within: Duration,
    probe: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    e2e::poll_every(within, Duration::from_millis(100), probe)
}

pub(super) fn wait_container_healthy(project: &Project, service: &str) -> Result<(), String> {
    let id = project.container(service)?;
    poll(BOUND, || {
        let state = docker(&["inspect", "--format", "{{.State.Health.Status}}", &id])?;
        if state.trim() == "healthy" {
            Ok(())
        } else {
            Err(format!("{service} is {}", state.trim()))
        }
    })
}

/// Waits, if needed, until the current window of the `api_key` rule has at least `need_s`
/// seconds left, so that a scenario's counts all fall in one window. Returns when the window
/// ends, by this machine's clock.
pub(super) fn fresh_window(client: &mut Client, tag: &str, need_s: u64) -> Result<Instant, String> {
    for attempt in 0..3 {
        let probe = format!("window-{tag}-{attempt}-{}", unix_ms());
        let reply = client.get(LOAD_PATH, Some(&probe))?;
        let left = reply
            .reset_s
            .ok_or_else(|| format!("no RateLimit reset in {reply:?}"))?;
        if left >= need_s {
            return Ok(Instant::now() + Duration::from_secs(left));
        }
        // A wait for the clock, not for readiness: the next window starts in `left` seconds.
        std::thread::sleep(Duration::from_secs(left) + Duration::from_millis(500));
    }
    Err(format!("no window with {need_s} s left after three tries"))
}

/// Starts the client's load on [`LOAD_PATH`]: [`LOAD_RATE_PER_S`], a new key (`TAG-<ms>-<n>`)
/// every [`PER_KEY`] requests, for at most [`LOAD_BOUND`].
pub(super) fn start_keyed_load(client: &mut Client, tag: &str) -> Result<(), String> {
    client.start_load(
        LOAD_PATH,
        &format!("{tag}-{}", unix_ms()),
        PER_KEY,
        LOAD_RATE_PER_S,
        LOAD_BOUND,
    )
}

/// Requests that got no answer or a 5xx.
fn failures(records: &[Record]) -> Vec<&Record> {
    records
        .iter()
        .filter(|r| r.reply.status == 0 || r.reply.status >= 500)
        .collect()
}

pub(super) fn assert_no_failures(what: &str, records: &[Record]) -> Result<(), String> {
    let failed = failures(records);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {} of {} requests failed, first: {:?}",
            failed.len(),
            records.len(),
            &failed[..failed.len().min(5)]
        ))
    }
}

/// How long after `killed_ms` (this machine's clock) a load's counted decisions resumed. Checks
/// answered just after the kill may still have been counted by the old master: the outage starts
/// with the first request let through by the failure mode, and limiting has resumed with the
/// first counted decision after that.
pub(super) fn resumed_after(records: &[Record], killed_ms: u64) -> Result<u64, String> {
    let after_kill = || records.iter().filter(|r| r.sent_unix_ms >= killed_ms);
    let outage_ms = after_kill()
        .filter(|r| !r.reply.counted)
        .map(|r| r.sent_unix_ms)
        .min();
    after_kill()
        .filter(|r| r.reply.counted && outage_ms.is_none_or(|outage| r.sent_unix_ms > outage))
        .map(|r| r.sent_unix_ms - killed_ms)
        .min()
        .ok_or_else(|| "no counted decision after the kill".to_owned())
}

/// `(requests, admitted and counted, admitted by the failure mode)`.
pub(super) fn tally(records: &[Record]) -> (usize, usize, usize) {
    let counted = records
        .iter()
        .filter(|r| r.reply.status == 200 && r.reply.counted)
        .count();
    let open = records
        .iter()
        .filter(|r| r.reply.status == 200 && !r.reply.counted)
        .count();
    (records.len(), counted, open)
}

pub(super) fn expect(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(message())
    }
}

/// A copy of the shipped `rules/` that the Envoy container reads its rules from (compose's
/// `RULES_DIR`), removed on drop.
pub struct RulesDir(PathBuf);

impl RulesDir {
    pub fn copy_of_shipped(project: &str) -> Result<RulesDir, String> {
        let dir = std::env::temp_dir().join(format!("{project}-rules"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let dir = RulesDir(dir);
        let shipped = e2e::envoy_config::EnvoyConfig::shipped()?.rules;
        e2e::stack::write_atomically(&dir.file(), &shipped)?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self) -> PathBuf {
        self.0.join(e2e::envoy_config::RULES_FILE)
    }
}

impl Drop for RulesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every scenario, in an order that leaves the stack whole for the next one.
pub fn run(project: &mut Project, client_image: &str, rules: &RulesDir) -> Result<(), String> {
    let mut a = Client::start(project, "a", client_image, "envoy")?;
    let mut b = Client::start(project, "b", client_image, "envoy")?;
    poll(BOUND, || match a.get("/", None)?.status {
        200 => Ok(()),
        other => Err(format!("Envoy answers {other}")),
    })?;
    per_client_limiting(project, &mut a, &mut b)?;
    load_balancing(&mut b)?;
    prometheus_scrapes_the_stack(project)?;
    super::cluster::run(project, client_image)?;
    master_restarted_quickly(project, &mut a)?;
    master_killed_under_load(project, &mut a, &mut b)?;
    super::partition::run(project, &mut a)?;
    rolling_restart(project, &mut a)?;
    rules_changed_live(rules, &mut b)?;
    Ok(())
}

/// The rules file `text` with `rule` (one JSON object) put first in the plugin configuration's
/// `"rules"`, indented as the YAML block scalar that holds the JSON requires.
pub(super) fn with_first_rule(text: &str, rule: &str) -> Result<String, String> {
    let first = "\"rules\": [\n";
    if text.matches(first).count() != 1 {
        return Err(format!("the rules file has no single {first:?}"));
    }
    let at = text.find(first).unwrap_or(0);
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let indent = &text[line_start..at];
    Ok(text.replacen(first, &format!("{first}{indent}  {rule},\n"), 1))
}

/// A new rules file moved into the directory the Envoy container watches (a bind mount of a
/// directory on this machine) applies without a restart: a rule it adds limits at once.
fn rules_changed_live(rules: &RulesDir, b: &mut Client) -> Result<(), String> {
    const LIMIT: usize = 3;
    // The backends answer /live with 404: what matters is whether the filter limited it.
    let before = b.get("/live", None)?;
    expect(
        before.status != 429 && before.status != 0 && !before.counted,
        || format!("/live is limited before the rule exists: {before:?}"),
    )?;
    let text = std::fs::read_to_string(rules.file()).map_err(|e| e.to_string())?;
    // A day's window: it does not end while the scenario runs (short of midnight UTC).
    let rule = format!(
        r#"{{ "name": "live", "match": {{ "path": {{ "prefix": "/live" }} }}, "limit": {{ "requests": {LIMIT}, "window": "1d" }} }}"#
    );
    let new_rules = with_first_rule(&text, &rule)?;
    let moved = Instant::now();
    e2e::stack::write_atomically(&rules.file(), &new_rules)?;
    // Envoy's workers each take the new version; until then /live is not limited.
    let mut counted = 0;
    let denied = poll(BOUND, || {
        let reply = b.get("/live", None)?;
        match (reply.status, reply.counted) {
            (429, _) => Ok(reply),
            (0, _) => Err(format!("/live answered {reply:?}")),
            (_, true) => {
                counted += 1;
                Err(format!("{counted} admitted under the new rule"))
            }
            (_, false) => Err("the new rules not in force yet".to_owned()),
        }
    })?;
    let took = moved.elapsed();
    expect(counted == LIMIT && denied.retry_after.is_some(), || {
        format!("the new rule admitted {counted} of {LIMIT}, then {denied:?}")
    })?;
    report(&format!(
        "rules changed live: a rule added by moving a new rules file into place limited /live \
         ({LIMIT} admitted, then 429) {} after the move, without a restart",
        secs(took)
    ));
    Ok(())
}

/// 10 × 200 then 429 with Retry-After for one client; the other client is unaffected.
fn per_client_limiting(project: &Project, a: &mut Client, b: &mut Client) -> Result<(), String> {
    let (addr_a, addr_b) = (a.address(project)?, b.address(project)?);
    expect(addr_a != addr_b, || {
        format!("both clients have the address {addr_a}")
    })?;
    // The rule allows 10 per client per 60 s window: start at a window's beginning if the
    // current one is about to end.
    let mut first = a.get("/limited_endpoint", None)?;
    if first.reset_s.is_some_and(|left| left < 10) {
        std::thread::sleep(Duration::from_secs(first.reset_s.unwrap_or(0) + 1));
        first = a.get("/limited_endpoint", None)?;
    }
    let mut statuses = vec![first];
    for _ in 1..11 {
        statuses.push(a.get("/limited_endpoint", None)?);
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status).collect();
    expect(
        codes[..10].iter().all(|&c| c == 200) && codes[10] == 429,
        || format!("client A ({addr_a}) got {codes:?}, expected 10 × 200 then 429"),
    )?;
    let denied = &statuses[10];
    expect(denied.retry_after.is_some_and(|s| s > 0), || {
        format!("the 429 has no Retry-After: {denied:?}")
    })?;
    let other = b.get("/limited_endpoint", None)?;
    expect(other.status == 200 && other.counted, || {
        format!("client B ({addr_b}) got {other:?} after client A was limited")
    })?;
    report(&format!(
        "per-client limiting: client {addr_a}: 10 × 200, then 429 (Retry-After {} s); client {addr_b}: 200",
        denied.retry_after.unwrap_or(0)
    ));
    Ok(())
}

/// The `monitoring` profile's Prometheus scrapes both limitd and Envoy (every target up) and has
/// loaded the alert rules from deploy/prometheus.
fn prometheus_scrapes_the_stack(project: &Project) -> Result<(), String> {
    let id = project.container("prometheus")?;
    let published = docker(&["port", &id, "9090"])?;
    let addr: std::net::SocketAddr = published
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .ok_or_else(|| format!("Prometheus is not published: {published:?}"))?;
    let api = |path: &str| -> Result<serde_json::Value, String> {
        let response = e2e::http_get(addr, path, None).map_err(|e| format!("Prometheus: {e}"))?;
        serde_json::from_str(&response.body).map_err(|e| format!("{path}: {e}"))
    };
    let started = Instant::now();
    let up = poll(BOUND, || {
        let targets = api("/api/v1/targets?state=active")?;
        let active = targets["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let jobs: Vec<String> = active
            .iter()
            .filter(|t| t["health"] == "up")
            .filter_map(|t| t["labels"]["job"].as_str().map(str::to_owned))
            .collect();
        if active.len() == 3 && jobs.len() == 3 {
            Ok(jobs)
        } else {
            Err(format!("{} of {} targets up", jobs.len(), active.len()))
        }
    })?;
    let rules = api("/api/v1/rules?type=alert")?;
    let alerts: usize = rules["data"]["groups"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .map(|g| g["rules"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0);
    expect(alerts == 6, || {
        format!("Prometheus loaded {alerts} alert rules, not the 6 of alerts.yml")
    })?;
    report(&format!(
        "monitoring: Prometheus scrapes {up:?} (all up {} after the stack was healthy) and \
         evaluates the {alerts} alert rules",
        secs(started.elapsed())
    ));
    Ok(())
}

fn load_balancing(b: &mut Client) -> Result<(), String> {
    let mut seen = BTreeMap::new();
    for _ in 0..10 {
        let reply = b.get("/", None)?;
        expect(reply.status == 200, || format!("GET / answered {reply:?}"))?;
        *seen
            .entry(reply.instance.unwrap_or_else(|| "?".to_owned()))
            .or_insert(0) += 1;
    }
    expect(
        seen.contains_key("backend-1") && seen.contains_key("backend-2"),
        || format!("10 requests reached {seen:?}, not both backends"),
    )?;
    report(&format!("load balancing: 10 requests reached {seen:?}"));
    Ok(())
}

/// The master killed and started again before Sentinel's down-after: its counters survive (AOF).
fn master_restarted_quickly(project: &Project, a: &mut Client) -> Result<(), String> {
    let master = current_master(project)?;
    fresh_window(a, "restart", 30)?;
    let key = format!("restart-{}", unix_ms());
    for i in 0..KEY_LIMIT {
        let reply = a.get(LOAD_PATH, Some(&key))?;
        expect(reply.status == 200 && reply.counted, || {
            format!("request {} with a fresh key: {reply:?}", i + 1)
        })?;
    }
    let over = a.get(LOAD_PATH, Some(&key))?;
    expect(over.status == 429, || {
        format!("request {} with the key: {over:?}", KEY_LIMIT + 1)
    })?;

    let id = project.container(&master)?;
    let restarted = Instant::now();
    docker(&["kill", &id])?;
    docker(&["start", &id])?;
    wait_container_healthy(project, &master)?;
    // The first answer limitd decides again must still be a denial.
    let reply: Reply = poll(BOUND, || {
        let reply = a.get(LOAD_PATH, Some(&key))?;
        if reply.counted {
            Ok(reply)
        } else {
            Err(format!("not decided by limitd yet: {reply:?}"))
        }
    })?;
    let resumed = restarted.elapsed();
    expect(reply.status == 429, || {
        format!("after {master} restarted, the exhausted key got {reply:?}: its counter was lost")
    })?;
    let now_master = current_master(project)?;
    expect(now_master == master, || {
        format!("a failover happened ({master} → {now_master}): the restart was not quick enough to test")
    })?;
    report(&format!(
        "master restarted quickly: {master} killed and started again, no failover, counter kept \
         (429 again), limitd deciding again after {}",
        secs(resumed)
    ));
    Ok(())
}

/// The master killed under load: Sentinel promotes, limitd follows, no client sees a 5xx.
fn master_killed_under_load(
    project: &Project,
    a: &mut Client,
    b: &mut Client,
) -> Result<(), String> {
    let old = current_master(project)?;
    let id = project.container(&old)?;
    start_keyed_load(a, "kill")?;
    a.wait_counted(40, BOUND)?;

    let killed = Instant::now();
    let killed_ms = unix_ms();
    docker(&["kill", &id])?;
    let new = poll(BOUND, || match current_master(project)? {
        master if master != old => Ok(master),
        _ => Err("no promotion yet".to_owned()),
    })?;
    let promoted = killed.elapsed();
    a.wait_counted(40, BOUND)?;
    // Client B sees limiting too.
    let probe = b.get(LOAD_PATH, Some(&format!("kill-probe-{}", unix_ms())))?;
    let records = a.stop_load()?;
    assert_no_failures("master killed under load", &records)?;
    expect(probe.status == 200 && probe.counted, || {
        format!("client B after the failover: {probe:?}")
    })?;
    let resumed_ms = resumed_after(&records, killed_ms)?;
    let (total, counted, open) = tally(&records);
    report(&format!(
        "master killed under load: {old} killed, {new} promoted after {}, counted decisions \
         resumed {:.1} s after the kill; {total} requests, 0 failed, {counted} counted, {open} let \
         through by the failure mode",
        secs(promoted),
        resumed_ms as f64 / 1000.0
    ));

    // Back to three nodes: the old master rejoins as a replica.
    docker(&["start", &id])?;
    wait_replica(project, &old)
}

/// Whether Envoy's admin endpoint reports both limitd instances healthy. Envoy lists them by
/// the address it resolved (which a restarted container may change), so count them.
fn envoy_sees_both_limitd(project: &Project) -> Result<(), String> {
    let envoy = project.container("envoy")?;
    let admin = docker(&["port", &envoy, "9901"])?;
    let admin = admin
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .ok_or_else(|| format!("Envoy admin is not published: {admin:?}"))?;
    let clusters = e2e::http_get(admin, "/clusters", None)
        .map_err(|e| format!("Envoy admin: {e}"))?
        .body;
    let flags: Vec<&str> = clusters
        .lines()
        .filter(|line| line.starts_with("limitd::") && line.contains("::health_flags::"))
        .collect();
    if flags.len() == 2 && flags.iter().all(|line| line.ends_with("::healthy")) {
        Ok(())
    } else {
        Err(format!("Envoy's limitd endpoints: {flags:?}"))
    }
}

/// limitd stopped and started again, one instance at a time, under load: no request fails.
fn rolling_restart(project: &Project, a: &mut Client) -> Result<(), String> {
    start_keyed_load(a, "roll")?;
    a.wait_counted(40, BOUND)?;
    let started = Instant::now();
    for service in ["limitd-1", "limitd-2"] {
        let id = project.container(service)?;
        docker(&["stop", "-t", "10", &id])?;
        a.wait_counted(20, BOUND)?;
        docker(&["start", &id])?;
        wait_container_healthy(project, service)?;
        poll(BOUND, || envoy_sees_both_limitd(project))?;
        a.wait_counted(20, BOUND)?;
    }
    let took = started.elapsed();
    let records = a.stop_load()?;
    assert_no_failures("rolling restart", &records)?;
    let (total, counted, open) = tally(&records);
    report(&format!(
        "rolling restart of limitd-1 then limitd-2 under load ({}): {total} requests, 0 failed, \
         {counted} counted, {open} let through by the failure mode",
        secs(took)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plugin configuration (JSON) of a rules file.
    fn plugin_configuration(rules: &str) -> serde_json::Value {
        let yaml: serde_yaml::Value = serde_yaml::from_str(rules).expect("the rules file is YAML");
        let json = yaml["resources"][0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .expect("a plugin configuration");
        serde_json::from_str(json).expect("the plugin configuration is JSON")
    }

    #[test]
    fn a_rule_put_first_keeps_the_rules_file_valid_yaml_and_json() {
        let shipped = e2e::envoy_config::EnvoyConfig::shipped().unwrap().rules;
        let before = plugin_configuration(&shipped)["rules"]
            .as_array()
            .map_or(0, Vec::len);
        let changed = with_first_rule(
            &shipped,
            r#"{ "name": "live", "limit": { "requests": 3, "window": "1d" } }"#,
        )
        .unwrap();
        let rules = plugin_configuration(&changed)["rules"].clone();
        assert_eq!(rules.as_array().map_or(0, Vec::len), before + 1);
        assert_eq!(rules[0]["name"], "live");
        assert!(with_first_rule("no rules here", "{}").is_err());
    }
}
