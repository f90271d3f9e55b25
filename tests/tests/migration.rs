//! End-to-end test of `limitd convert-ratelimit`: an envoyproxy/ratelimit configuration, after
//! the examples of that project's README, is converted by the built binary, the rules replace the
//! demo's in `rules/ratelimit.yaml`, and real Envoy, limitd and Redis limit the requests ratelimit would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output};

use e2e::paths::workspace_root;
use e2e::{http_request, Binaries, EnvoyOptions, Stack};

/// The README's examples (per-IP limits, the messaging example's nested descriptors, a
/// domain-wide generic_key, an unlimited key), in one domain, with hours for their units so
/// that no window boundary falls within the test.
const RATELIMIT_CONFIG: &str = "
domain: edge
descriptors:
  - key: remote_address
    rate_limit:
      unit: hour
      requests_per_unit: 3
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: hour
          requests_per_unit: 2
  - key: to_number
    rate_limit:
      unit: hour
      requests_per_unit: 4
  - key: generic_key
    value: shared
    rate_limit:
      unit: hour
      requests_per_unit: 5
  - key: ldap
    rate_limit:
      unlimited: true
";

/// The Envoy routes whose rate_limits actions feed it (under /api/, which the demo backend
/// answers with 200).
const ACTIONS: &str = "
routes:
  - match: {prefix: /api/per-ip}
    route:
      cluster: backends
      rate_limits:
        - actions: [{remote_address: {}}]
  - match: {prefix: /api/messages}
    route:
      cluster: backends
      rate_limits:
        - actions:
            - request_headers: {header_name: x-message-type, descriptor_key: message_type}
            - request_headers: {header_name: x-to-number, descriptor_key: to_number}
        - actions:
            - request_headers: {header_name: x-to-number, descriptor_key: to_number}
  - match: {prefix: /api/shared}
    route:
      cluster: backends
      rate_limits:
        - actions: [{generic_key: {descriptor_value: shared}}]
  - match: {prefix: /api/internal}
    route:
      cluster: backends
      rate_limits:
        - actions: [{request_headers: {header_name: x-ldap, descriptor_key: ldap}}]
";

fn client(last: u8) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
}

fn status(to: SocketAddr, path: &str, headers: &[(&str, &str)], from: Option<IpAddr>) -> u16 {
    http_request("GET", to, path, headers, b"", from)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .status
}

fn statuses(to: SocketAddr, path: &str, headers: &[(&str, &str)], count: usize) -> Vec<u16> {
    (0..count)
        .map(|_| status(to, path, headers, client(1)))
        .collect()
}

/// Runs the built `limitd convert-ratelimit` on the two texts, with `extra` arguments.
fn run_converter(config_yaml: &str, actions_yaml: &str, extra: &[&str]) -> Output {
    let dir = e2e::scratch_dir("migration-");
    let (config, actions): (PathBuf, PathBuf) = (
        dir.path().join("config.yaml"),
        dir.path().join("actions.yaml"),
    );
    std::fs::write(&config, config_yaml).unwrap();
    std::fs::write(&actions, actions_yaml).unwrap();
    let output = Command::new(Binaries::require().limitd)
        .arg("convert-ratelimit")
        .arg("--config")
        .arg(&config)
        .arg("--actions")
        .arg(&actions)
        .args(extra)
        .output()
        .unwrap();
    output
}

/// The converted rules of the test's configuration: nothing may be refused.
fn convert() -> String {
    let output = run_converter(RATELIMIT_CONFIG, ACTIONS, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert!(stderr.is_empty(), "nothing is refused: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// `rules/ratelimit.yaml`'s `"rules": [...]` block, exactly as written.
fn demo_rules() -> String {
    let text = std::fs::read_to_string(workspace_root().join("rules/ratelimit.yaml")).unwrap();
    let start = text
        .find("\"rules\": [")
        .expect("rules in rules/ratelimit.yaml");
    let indent: String = text[..start]
        .chars()
        .rev()
        .take_while(|c| *c == ' ')
        .collect();
    let end_marker = format!("\n{indent}]");
    let end = start + text[start..].find(&end_marker).expect("end of rules") + end_marker.len();
    text[start..end].to_owned()
}

#[test]
fn converted_ratelimit_rules_limit_the_same_requests() {
    let rules: serde_json::Value = serde_json::from_str(&convert()).unwrap();
    // One line, so it fits the YAML block the plugin configuration is in.
    let replacement = format!("\"rules\": {rules}");
    let stack = Stack::for_test(EnvoyOptions::default().replace(&demo_rules(), &replacement));
    let envoy = stack.envoy(0);

    // remote_address: 3 per client address, each address its own counter.
    assert_eq!(statuses(envoy, "/api/per-ip", &[], 4), [200, 200, 200, 429]);
    assert_eq!(status(envoy, "/api/per-ip", &[], client(2)), 200);

    // message_type=marketing/to_number: 2 per number; to_number: 4 per number.
    let marketing_a = [("x-message-type", "marketing"), ("x-to-number", "a")];
    assert_eq!(
        statuses(envoy, "/api/messages", &marketing_a, 3),
        [200, 200, 429]
    );
    let marketing_b = [("x-message-type", "marketing"), ("x-to-number", "b")];
    assert_eq!(statuses(envoy, "/api/messages", &marketing_b, 1), [200]);
    let other_c = [("x-message-type", "receipt"), ("x-to-number", "c")];
    assert_eq!(
        statuses(envoy, "/api/messages", &other_c, 5),
        [200, 200, 200, 200, 429]
    );
    // No number, no descriptor: ratelimit never sees the request.
    assert_eq!(statuses(envoy, "/api/messages", &[], 6), [200; 6]);

    // generic_key: one counter for every client.
    let shared: Vec<u16> = (0..6)
        .map(|i| status(envoy, "/api/shared", &[], client(10 + i)))
        .collect();
    assert_eq!(shared, [200, 200, 200, 200, 200, 429]);

    // unlimited: never limited.
    assert_eq!(
        statuses(envoy, "/api/internal", &[("x-ldap", "ops")], 10),
        [200; 10]
    );
}

#[test]
fn refused_entries_fail_the_conversion_unless_partial_is_allowed() {
    // The README's black-listed address: a rule cannot match one client address.
    let config = RATELIMIT_CONFIG.replace(
        "  - key: ldap\n",
        "  - key: remote_address\n    value: 50.0.0.5\n    rate_limit: {unit: second, requests_per_unit: 0}\n  - key: ldap\n",
    );
    let refused = run_converter(&config, ACTIONS, &[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(refused.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with("refused edge: remote_address=50.0.0.5")),
        "{stderr}"
    );

    let partial = run_converter(&config, ACTIONS, &["--allow-partial"]);
    assert!(partial.status.success());
    let rules: serde_json::Value = serde_json::from_slice(&partial.stdout).unwrap();
    let names: Vec<&str> = rules
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|rule| rule["name"].as_str())
        .collect();
    // The per-client limit is refused too: it would also count 50.0.0.5.
    assert!(!names.contains(&"edge.remote_address"), "{names:?}");
    assert!(names.contains(&"edge.generic_key_shared"), "{names:?}");
}
