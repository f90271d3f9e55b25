//! Rules changed without a restart: Envoy reads the filter's configuration from
//! `rules/ratelimit.yaml` through extension config discovery and applies a new version moved
//! into place, under load, with nothing failed and the counters of unchanged rules kept; a version
//! with an error is refused, says why, and leaves the rules in force.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use e2e::{eventually, http_request, EnvoyOptions, HttpResponse, Load, LoadOptions, Stack};

const CLIENT: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
const LOAD_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
/// Versions of the rules file Envoy took, and refused.
const APPLIED: &str = "extension_config_discovery.http_filter.ratelimit.update_success";
const REFUSED: &str = "extension_config_discovery.http_filter.ratelimit.update_rejected";

/// The demo's `api_key` limit, and what the new version sets it to.
const API_KEY_LIMIT: &str = r#""key": [ { "header": "x-api-key" } ],
                  "missing": "skip",
                  "limit": { "requests": 20, "window": "1m" }"#;
const API_KEY_LIMIT_NEW: &str = r#""key": [ { "header": "x-api-key" } ],
                  "missing": "skip",
                  "limit": { "requests": 3, "window": "1m" }"#;
/// A rule the new version adds, to see when it is in force.
const FIRST_RULE: &str = r#""rules": [
"#;
const FIRST_RULE_NEW: &str = r#""rules": [
                {
                  "name": "live",
                  "match": { "path": { "prefix": "/live" } },
                  "limit": { "requests": 1000, "window": "1m" }
                },
"#;

fn get(to: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request("GET", to, path, headers, b"", CLIENT)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn replaced(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} in the rules file");
    text.replacen(from, to, 1)
}

#[test]
fn a_limit_changed_in_the_rules_file_applies_under_load_without_a_restart() {
    // One worker: once one request sees the new rules, every later one does.
    let stack = Stack::for_test(EnvoyOptions::default().concurrency(1));
    let envoy = stack.envoy(0);
    assert_eq!(stack.envoy_stat(0, APPLIED), 1, "the first version");

    // Counted under the first version: 4 of limited_endpoint's 10.
    for _ in 0..4 {
        assert_eq!(get(envoy, "/limited_endpoint", &[]).status, 200);
    }
    let before = get(envoy, "/api/x", &[("x-api-key", "old")]);
    assert_eq!(before.remaining("api_key"), Some(19));
    assert_eq!(get(envoy, "/live", &[]).remaining("live"), None);

    // Kept-alive connections through the filter while the rules change, one of which is denied
    // by limited_endpoint soon (429 is an answer, not a failure).
    let load = Load::start(LoadOptions {
        to: envoy,
        paths: vec!["/".into(), "/limited_endpoint".into(), "/api/y".into()],
        from: Some(LOAD_CLIENT),
        connections: 3,
        rate_per_s: 150.0,
        max_duration: Duration::from_secs(60),
    });
    eventually(Duration::from_secs(10), || {
        (load.answered() >= 50)
            .then_some(())
            .ok_or_else(|| "the load to get going".to_owned())
    })
    .unwrap();

    let rules = stack.rules(0);
    let new_rules = replaced(
        &replaced(&rules, API_KEY_LIMIT, API_KEY_LIMIT_NEW),
        FIRST_RULE,
        FIRST_RULE_NEW,
    );
    stack.set_rules(0, &new_rules).unwrap();
    eventually(Duration::from_secs(10), || {
        match stack.envoy_stat(0, APPLIED) {
            2 => Ok(()),
            n => Err(format!("{n} versions applied")),
        }
    })
    .unwrap();
    // The new rule answers with its headers once the worker runs the new version.
    eventually(Duration::from_secs(5), || {
        get(envoy, "/live", &[])
            .remaining("live")
            .ok_or_else(|| "the new rule in force".to_owned())
    })
    .unwrap();

    // The changed limit holds; the unchanged rule kept its count.
    let statuses: Vec<u16> = (0..4)
        .map(|_| get(envoy, "/api/x", &[("x-api-key", "new")]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(
        get(envoy, "/limited_endpoint", &[]).remaining("limited_endpoint"),
        Some(5),
        "limited_endpoint's count of the first version is kept"
    );

    // Let the load run on the new version a little, then look at every answer.
    let answered = load.answered();
    eventually(Duration::from_secs(10), || {
        (load.answered() >= answered + 50)
            .then_some(())
            .ok_or_else(|| "more load".to_owned())
    })
    .unwrap();
    let report = load.stop();
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the reload: {failures:#?}",
        failures.len(),
        report.samples.len()
    );
    assert!(
        report.samples.iter().any(|s| s.status == 429) && report.samples.iter().any(|s| s.global),
        "the load went through the filter, allowed and denied: {}",
        report.statuses()
    );
    assert_eq!(
        stack.envoy_stat(0, "http.ingress.downstream_cx_drain_close"),
        0,
        "no connection was closed for the reload"
    );
    assert_eq!(stack.envoy_stat(0, REFUSED), 0);
}

#[test]
fn a_rules_file_with_an_error_is_refused_says_why_and_the_rules_in_force_stay() {
    let mut stack = Stack::for_test(EnvoyOptions::default().concurrency(1));
    let envoy = stack.envoy(0);
    assert_eq!(get(envoy, "/limited_endpoint", &[]).status, 200);

    let broken = replaced(
        &stack.rules(0),
        r#""window": "60s""#,
        r#""window": "sixty seconds""#,
    );
    stack.set_rules(0, &broken).unwrap();
    eventually(Duration::from_secs(10), || {
        match stack.envoy_stat(0, REFUSED) {
            0 => Err("the broken version not refused yet".to_owned()),
            _ => Ok(()),
        }
    })
    .unwrap();
    assert_eq!(
        stack.envoy_stat(0, APPLIED),
        1,
        "only the first version applied"
    );
    let log = stack.process("envoy-1").expect("envoy-1").log_text();
    assert!(
        log.contains(r#"rules[0].limit.window: "sixty seconds" is not a duration"#),
        "the log does not say why:\n{log}"
    );

    // The first version still decides: limited_endpoint counts on, and its 10 hold.
    let statuses: Vec<u16> = (0..10)
        .map(|_| get(envoy, "/limited_endpoint", &[]).status)
        .collect();
    assert_eq!(statuses, [[200; 9].as_slice(), &[429]].concat());
}
