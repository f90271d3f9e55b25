//! The Prometheus alert rules under `deploy/prometheus` and the Grafana dashboard under
//! `deploy/grafana`: the rules pass their `promtool` unit tests, and every metric the rules and
//! the dashboard's panels use is one the running stack really exposes (Envoy's
//! `/stats/prometheus` and limitd's `/metrics`), so no alert or panel silently points at nothing.
//! `LimitdNotReady` is also seen to hold in a real Prometheus when Redis goes away, with either
//! counter store (Sentinel, Redis Cluster).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use e2e::paths::workspace_root;
use e2e::process::{retry_on_taken_port, Process};
use e2e::{http_get, Binaries, EnvoyOptions, Stack, StackOptions};

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

/// The metric names in PromQL expressions: identifiers followed by `{`, `[` or a space, that
/// are not PromQL functions, keywords or label names.
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

/// After traffic that defines the filter's counters (allowed, then denied): Envoy's
/// `/stats/prometheus` and the first limitd's `/metrics`.
fn expositions(stack: &Stack) -> (String, String) {
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
    (envoy, limitd)
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_use_is_exposed_by_the_running_stack() {
    let mut used = metric_names(alerts().into_iter().map(|(_, expr)| expr).collect());
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
    let (envoy, limitd) = expositions(&stack);
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

/// The metric names in the first column of each table of `docs/metrics.md`: (the table of
/// Prometheus metrics, the table of Envoy stats).
fn documented_metrics() -> (BTreeSet<String>, BTreeSet<String>) {
    let text =
        std::fs::read_to_string(workspace_root().join("docs/metrics.md")).expect("docs/metrics.md");
    let mut tables: Vec<BTreeSet<String>> = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        let Some(row) = line.strip_prefix("| `") else {
            in_table = false;
            continue;
        };
        if !in_table {
            tables.push(BTreeSet::new());
            in_table = true;
        }
        let name = row.split('`').next().unwrap_or_default();
        tables.last_mut().unwrap().insert(name.to_owned());
    }
    let [metrics, stats] = <[BTreeSet<String>; 2]>::try_from(tables)
        .unwrap_or_else(|t| panic!("docs/metrics.md should hold two tables, not {}", t.len()));
    (metrics, stats)
}

/// The metrics of a Prometheus exposition whose names start with `prefix`, histograms by their
/// own name (not `_bucket`, `_sum`, `_count`).
fn exposed_metrics(text: &str, prefix: &str) -> BTreeSet<String> {
    let histograms: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|name| name.starts_with(prefix))
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| histograms.contains(base))
                })
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

#[test]
fn the_metrics_table_lists_every_metric_the_running_stack_exposes_and_no_other() {
    let (documented, stats) = documented_metrics();
    let stack = Stack::for_test(EnvoyOptions::default());
    let (envoy, limitd) = expositions(&stack);
    let mut exposed = exposed_metrics(&envoy, "ratelimit_");
    exposed.extend(exposed_metrics(&limitd, "limitd_"));
    assert!(
        exposed.contains("ratelimit_callout_latency_us") && exposed.contains("limitd_checks_total"),
        "the expositions were not read: {exposed:?}"
    );
    let undocumented: Vec<&String> = exposed.difference(&documented).collect();
    let absent: Vec<&String> = documented.difference(&exposed).collect();
    assert!(
        undocumented.is_empty() && absent.is_empty(),
        "docs/metrics.md misses {undocumented:?} and lists {absent:?}, which the stack does not expose"
    );

    let envoy_stats = http_get(stack.envoys[0].admin, "/stats", None)
        .expect("Envoy's /stats")
        .body;
    let names: BTreeSet<&str> = envoy_stats
        .lines()
        .filter_map(|l| l.split(':').next())
        .collect();
    let missing: Vec<&String> = stats
        .iter()
        .filter(|s| !names.contains(s.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/metrics.md lists Envoy stats Envoy does not have: {missing:?}"
    );
}

/// Every alert of `alerts.yml`: (name, expression).
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(prometheus_dir().join("alerts.yml")).expect("alerts.yml");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("alerts.yml is YAML");
    yaml["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_sequence().cloned().unwrap_or_default())
        .map(|rule| {
            (
                rule["alert"].as_str().expect("an alert name").to_owned(),
                rule["expr"].as_str().expect("an expr").to_owned(),
            )
        })
        .collect()
}

/// An alert's expression made to return its data instead of filtering it: every comparison
/// gets `bool` (a 0 or 1 per series instead of dropping the series that do not fire), `unless`
/// becomes `and` (so the series it would subtract must match on the same labels), and `offset`s
/// go (the stack is younger than they reach back). Empty only if a selector finds nothing or a
/// join matches no series.
fn returning_data(expr: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut tokens = expr.split_whitespace();
    while let Some(token) = tokens.next() {
        match token {
            "==" | "!=" | ">" | ">=" | "<" | "<=" => {
                out.push(token);
                out.push("bool");
            }
            "unless" => out.push("and"),
            // `offset 5m))`: the duration goes, what closes after it stays.
            "offset" => {
                let after = tokens.next().unwrap_or_default();
                let rest = after.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
                if !rest.is_empty() {
                    out.push(rest);
                }
            }
            _ => out.push(token),
        }
    }
    out.join(" ")
}

#[test]
fn an_alert_expression_is_made_to_return_data_without_changing_what_it_reads() {
    assert_eq!(
        returning_data("limitd_ready == 0"),
        "limitd_ready == bool 0"
    );
    assert_eq!(
        returning_data("up{job=\"limitd\"} == 1 unless on (instance) limitd_ready"),
        "up{job=\"limitd\"} == bool 1 and on (instance) limitd_ready"
    );
    assert_eq!(
        returning_data("sum(rate(a[1h] offset 5m))\n  > 3 * b"),
        "sum(rate(a[1h] )) > bool 3 * b"
    );
}

/// A real Prometheus (Debian's `prometheus`, which `cargo xtask setup` installs) with the
/// shipped `prometheus.yml` and `alerts.yml`, its targets pointed at a local stack and its
/// scrape interval made 1 s.
struct Prometheus {
    /// Killed on drop.
    _process: e2e::process::Process,
    addr: std::net::SocketAddr,
    /// Its configuration and data (declared after the process, so removed after it stops).
    _dir: e2e::TempDir,
}

impl Prometheus {
    fn scraping(stack: &Stack) -> Prometheus {
        // Tests of this binary run at once: each Prometheus has its own directory.
        let scratch = e2e::scratch_dir("ratelimit-prometheus-");
        let dir = scratch.path();
        let shipped = std::fs::read_to_string(prometheus_dir().join("prometheus.yml"))
            .expect("prometheus.yml");
        let mut config = shipped.clone();
        for (from, to) in [
            (
                r#"["limitd-1:8081", "limitd-2:8082"]"#.to_owned(),
                format!(
                    r#"["127.0.0.1:{}", "127.0.0.1:{}"]"#,
                    stack.ports.limitd[0], stack.ports.limitd[1]
                ),
            ),
            (
                r#"["envoy:9901"]"#.to_owned(),
                format!(r#"["{}"]"#, stack.envoys[0].admin),
            ),
            (
                "scrape_interval: 5s".to_owned(),
                "scrape_interval: 1s".to_owned(),
            ),
            (
                "evaluation_interval: 5s".to_owned(),
                "evaluation_interval: 1s".to_owned(),
            ),
        ] {
            assert_eq!(config.matches(&from).count(), 1, "prometheus.yml: {from}");
            config = config.replace(&from, &to);
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        std::fs::copy(prometheus_dir().join("alerts.yml"), dir.join("alerts.yml")).unwrap();
        // A port taken by another process before Prometheus binds it: start it again elsewhere.
        let (process, addr) = retry_on_taken_port(|| {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], e2e::free_port()));
            let mut command = Command::new("prometheus");
            command
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"));
            let mut process = Process::spawn("prometheus", command, dir).map_err(|e| {
                format!("cannot run prometheus ({e}): install it (apt-get install prometheus, or `cargo xtask setup`)")
            })?;
            process.await_ready(Duration::from_secs(30), || {
                match http_get(addr, "/-/ready", None) {
                    Ok(r) if r.status == 200 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })?;
            Ok((process, addr))
        })
        .unwrap_or_else(|e| panic!("prometheus not ready: {e}"));
        Prometheus {
            _process: process,
            addr,
            _dir: scratch,
        }
    }

    /// The result of an instant query: its series (an error if Prometheus refuses the query).
    fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .finish();
        let response = http_get(self.addr, &format!("/api/v1/query?{query}"), None)
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value =
            serde_json::from_str(&response.body).map_err(|e| format!("{e}: {}", response.body))?;
        if body["status"] != "success" {
            return Err(format!("Prometheus refused `{expr}`: {}", response.body));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

#[test]
fn every_alert_and_panel_expression_returns_data_from_a_prometheus_scraping_the_stack() {
    let stack = Stack::for_test(EnvoyOptions::default());
    let prometheus = Prometheus::scraping(&stack);
    e2e::eventually(Duration::from_secs(30), || {
        let up = prometheus.query("up == 1")?;
        match up.len() {
            3 => Ok(()),
            n => Err(format!("{n} of 3 targets up")),
        }
    })
    .unwrap();

    let mut exprs: Vec<(String, String)> = alerts()
        .into_iter()
        .map(|(name, expr)| (format!("alert {name}"), returning_data(&expr)))
        .collect();
    assert_eq!(exprs.len(), 6, "the alerts were not read");
    exprs.extend(
        dashboard_exprs()
            .into_iter()
            .map(|expr| ("dashboard panel".to_owned(), expr)),
    );
    // Traffic while Prometheus scrapes, allowed and denied, so every rate has two samples
    // that differ somewhere; then each expression must return series.
    let mut empty = Vec::new();
    for (what, expr) in &exprs {
        let found = e2e::eventually(Duration::from_secs(30), || {
            for _ in 0..3 {
                http_get(stack.envoy(0), "/limited_endpoint", None).map_err(|e| e.to_string())?;
            }
            let result = prometheus.query(expr)?;
            if result.is_empty() {
                Err(format!("{what} `{expr}` returns no series"))
            } else {
                Ok(())
            }
        });
        if let Err(e) = found {
            assert!(!e.contains("refused"), "{e}");
            empty.push(e);
        }
    }
    assert!(
        empty.is_empty(),
        "expressions that return nothing:\n{}",
        empty.join("\n")
    );
}

/// The `instance` labels of a query's series, sorted.
fn instances(series: &[serde_json::Value]) -> Vec<String> {
    let mut found: Vec<String> = series
        .iter()
        .filter_map(|s| s["metric"]["instance"].as_str().map(str::to_owned))
        .collect();
    found.sort();
    found
}

/// With Prometheus scraping `stack`: both limitd are ready and `LimitdNotReady` is quiet; after
/// `take_redis_away`, both limitd still answer scrapes (`up`, so not `LimitdDown`), report
/// `limitd_ready 0`, and the alert is active for both (pending: its `for: 1m` is left to the
/// promtool unit tests).
fn the_not_ready_alert_holds_when_redis_is_gone(
    mut stack: Stack,
    take_redis_away: impl FnOnce(&mut Stack),
) {
    let prometheus = Prometheus::scraping(&stack);
    let mut limitds: Vec<String> = stack
        .ports
        .limitd
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    limitds.sort();
    e2e::eventually(Duration::from_secs(30), || {
        let ready = instances(&prometheus.query("limitd_ready == 1")?);
        if ready == limitds {
            Ok(())
        } else {
            Err(format!("ready: {ready:?}"))
        }
    })
    .unwrap();
    let active = prometheus
        .query(r#"ALERTS{alertname="LimitdNotReady"}"#)
        .unwrap();
    assert!(
        active.is_empty(),
        "LimitdNotReady with Redis up: {active:?}"
    );

    take_redis_away(&mut stack);
    e2e::eventually(Duration::from_secs(30), || {
        let active = instances(&prometheus.query(r#"ALERTS{alertname="LimitdNotReady"}"#)?);
        let up = instances(&prometheus.query(r#"up{job="limitd"} == 1"#)?);
        if active == limitds && up == limitds {
            Ok(())
        } else {
            Err(format!(
                "LimitdNotReady active for {active:?}, limitd up: {up:?}"
            ))
        }
    })
    .unwrap();
    for port in stack.ports.limitd {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let readyz = http_get(addr, "/readyz", None).expect("limitd answers");
        assert_eq!(readyz.status, 503, "/readyz agrees with limitd_ready");
    }
}

#[test]
fn the_not_ready_alert_holds_for_a_limitd_whose_sentinel_master_and_replicas_are_gone() {
    let stack = Stack::for_test(EnvoyOptions::default());
    the_not_ready_alert_holds_when_redis_is_gone(stack, |stack| {
        for node in ["redis-master", "redis-replica-1", "redis-replica-2"] {
            stack.kill(node);
        }
    });
}

#[test]
fn the_not_ready_alert_holds_for_a_limitd_whose_redis_cluster_cannot_serve_every_slot() {
    Binaries::require();
    let stack = Stack::start(StackOptions {
        redis_cluster: true,
        ..StackOptions::default()
    })
    .unwrap_or_else(|e| panic!("stack did not start: {e}"));
    // The first master's slots with nobody to serve them: the master killed, and every replica,
    // so that none is promoted. The other two masters still answer.
    the_not_ready_alert_holds_when_redis_is_gone(stack, |stack| {
        for node in [1, 4, 5, 6] {
            stack.kill(&format!("redis-cluster-{node}"));
        }
    });
}
