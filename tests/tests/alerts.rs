//! The Prometheus alert rules under `deploy/prometheus` and the Grafana dashboard under
//! `deploy/grafana`: the rules pass their `promtool` unit tests, and every metric the rules and
//! the dashboard's panels use is one the running stack really exposes (Envoy's
//! `/stats/prometheus` and limitd's `/metrics`), so no alert or panel silently points at nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use e2e::paths::workspace_root;
use e2e::{http_get, EnvoyOptions, Stack};

fn prometheus_dir() -> PathBuf {
    workspace_root().join("deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install it (apt-get install prometheus, or `cargo xtask setup`)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_pass_their_unit_tests() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The PromQL expressions of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let path = workspace_root().join("deploy/grafana/ratelimit.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect()
}

/// The metric names in the alerts' expressions: identifiers followed by `{`, `[` or a space,
/// that are not PromQL functions, keywords or label names.
fn metrics_used(rules: &str) -> BTreeSet<String> {
    metric_names(alert_exprs(rules))
}

fn alert_exprs(rules: &str) -> Vec<String> {
    // Each `expr:` value: on its line, or the lines indented below a `expr: >-`.
    let mut exprs = Vec::new();
    let mut block: Option<usize> = None;
    for line in rules.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if let Some(at) = block {
            if indent > at || text.is_empty() {
                exprs.push(text.to_owned());
                continue;
            }
            block = None;
        }
        if let Some(rest) = text.strip_prefix("expr:") {
            match rest.trim() {
                ">-" | ">" | "|" | "|-" => block = Some(indent),
                one_line => exprs.push(one_line.to_owned()),
            }
        }
    }
    exprs
}

fn metric_names(exprs: Vec<String>) -> BTreeSet<String> {
    const PROMQL: &[&str] = &[
        "sum",
        "rate",
        "increase",
        "histogram_quantile",
        "clamp_min",
        "by",
        "on",
        "unless",
        "and",
        "offset",
        "le",
        "up",
        "count",
    ];
    let mut names = BTreeSet::new();
    for expr in exprs {
        if expr.starts_with('#') {
            continue;
        }
        let mut word = String::new();
        for c in expr.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' {
                word.push(c);
                continue;
            }
            let looks_like_metric = word.contains('_')
                && word.starts_with(|f: char| f.is_ascii_alphabetic())
                && !PROMQL.contains(&word.as_str())
                && c != '='
                && c != '(';
            if looks_like_metric {
                names.insert(word.clone());
            }
            word.clear();
        }
    }
    names
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_use_is_exposed_by_the_running_stack() {
    let rules = std::fs::read_to_string(prometheus_dir().join("alerts.yml")).expect("alerts.yml");
    let mut used = metrics_used(&rules);
    assert!(
        used.contains("ratelimit_failure_mode_allowed") && used.contains("limitd_failovers_total"),
        "the alerts' expressions were not read: {used:?}"
    );
    let panels = metric_names(dashboard_exprs());
    assert!(
        panels.contains("ratelimit_rule") && panels.contains("limitd_checks_total"),
        "the dashboard's expressions were not read: {panels:?}"
    );
    used.extend(panels);

    let stack = Stack::for_test(EnvoyOptions::default());
    // Traffic that defines the filter's counters: allowed, then denied.
    for _ in 0..11 {
        http_get(stack.envoy(0), "/limited_endpoint", None).expect("an answer");
    }
    let envoy = http_get(stack.envoys[0].admin, "/stats/prometheus", None)
        .expect("Envoy's /stats/prometheus")
        .body;
    let limitd = http_get(
        std::net::SocketAddr::from(([127, 0, 0, 1], stack.ports.limitd[0])),
        "/metrics",
        None,
    )
    .expect("limitd's /metrics")
    .body;
    let exposed: BTreeSet<&str> = envoy
        .lines()
        .chain(limitd.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|m| !exposed.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts or panels use metrics the stack does not expose: {missing:?}"
    );
}
