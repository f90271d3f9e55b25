//! End-to-end tests of the policy language through real Envoy, limitd and
//! Redis: each algorithm, shadow mode, several rules at once, per-header
//! keys, and both header styles. The rules are the demo's in `rules/ratelimit.yaml`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use e2e::{eventually, http_request, EnvoyOptions, HttpResponse, Stack};

const CLIENT: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));

fn start(envoy: EnvoyOptions) -> Stack {
    Stack::for_test(envoy)
}

fn get(to: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request("GET", to, path, headers, b"", CLIENT)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn statuses(to: SocketAddr, path: &str, headers: &[(&str, &str)], count: usize) -> Vec<u16> {
    (0..count).map(|_| get(to, path, headers).status).collect()
}

#[test]
fn sliding_window_admits_its_limit_then_denies() {
    let stack = start(EnvoyOptions::default());
    let envoy = stack.envoy(0);
    // api_sliding: 5 per 10s.
    assert_eq!(statuses(envoy, "/api/sliding", &[], 5), [200; 5]);
    let denied = get(envoy, "/api/sliding", &[]);
    assert_eq!(denied.status, 429, "{denied:?}");
    let retry_after: u64 = denied
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=20).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(denied.remaining("api_sliding"), Some(0));
}

#[test]
fn gcra_admits_a_burst_then_paces_at_its_rate() {
    let stack = start(EnvoyOptions::default());
    let envoy = stack.envoy(0);
    // api_gcra: 2 per second, burst 5. A burst of 5 passes at once, plus the
    // tokens refilled while it runs (one per 500ms), then requests are paced.
    let started = std::time::Instant::now();
    let mut admitted = 0;
    let denied = loop {
        let response = get(envoy, "/api/gcra", &[]);
        if response.status != 200 || admitted == 20 {
            break response;
        }
        admitted += 1;
    };
    let refilled = started.elapsed().as_millis() / 500 + 1;
    assert!(
        admitted >= 5 && admitted as u128 <= 5 + refilled,
        "{admitted} admitted in {:?}",
        started.elapsed()
    );
    assert_eq!(denied.status, 429);
    assert_eq!(
        denied.header("retry-after"),
        Some("1"),
        "one token comes every 500ms"
    );
    // A token comes back within half a second.
    eventually(Duration::from_secs(2), || {
        match get(envoy, "/api/gcra", &[]).status {
            200 => Ok(()),
            other => Err(format!("status {other}")),
        }
    })
    .unwrap();
}

#[test]
fn a_shadow_rule_counts_would_be_denials_but_never_denies() {
    let tight = EnvoyOptions::default().replace(
        r#""limit": { "requests": 1000, "window": "1s" }"#,
        r#""limit": { "requests": 2, "window": "1m" }"#,
    );
    let stack = start(tight);
    let envoy = stack.envoy(0);
    assert_eq!(statuses(envoy, "/api/other", &[], 5), [200; 5]);
    assert_eq!(stack.envoy_stat(0, "wasmcustom.ratelimit.shadow_denied"), 3);
    assert_eq!(stack.envoy_stat(0, "wasmcustom.ratelimit.denied"), 0);
}

#[test]
fn several_rules_apply_at_once_and_a_denied_request_consumes_none() {
    let stack = start(EnvoyOptions::default());
    let envoy = stack.envoy(0);
    let key = [("x-api-key", "k-1")];
    // /api/sliding with a key meets api_sliding (5 per 10s) and api_key (20 per minute).
    for i in 0..5 {
        let response = get(envoy, "/api/sliding", &key);
        assert_eq!(response.status, 200);
        assert_eq!(response.remaining("api_key"), Some(19 - i));
        assert_eq!(response.remaining("api_sliding"), Some(4 - i));
    }
    // Denied by api_sliding: api_key's counter must not move. (The first denial
    // comes from limitd and reports every rule; later ones come from the filter's
    // deny cache, which reports only the violated rule.)
    for i in 0..3 {
        let denied = get(envoy, "/api/sliding", &key);
        assert_eq!(denied.status, 429);
        let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(
            body["violated_policies"],
            serde_json::json!(["api_sliding"])
        );
        if i == 0 {
            assert_eq!(denied.remaining("api_key"), Some(15));
        }
    }
    let other_path = get(envoy, "/api/items", &key);
    assert_eq!(other_path.status, 200);
    assert_eq!(other_path.remaining("api_key"), Some(14));
}

#[test]
fn each_header_value_has_its_own_counter() {
    let stack = start(EnvoyOptions::default());
    let envoy = stack.envoy(0);
    for _ in 0..3 {
        assert_eq!(
            get(envoy, "/api/items", &[("x-api-key", "alice")]).status,
            200
        );
    }
    let bob = get(envoy, "/api/items", &[("x-api-key", "bob")]);
    assert_eq!(bob.remaining("api_key"), Some(19));
    let alice = get(envoy, "/api/items", &[("x-api-key", "alice")]);
    assert_eq!(alice.remaining("api_key"), Some(16));
    // Without the header the rule is skipped ("missing": "skip").
    let anonymous = get(envoy, "/api/items", &[]);
    assert_eq!(anonymous.status, 200);
    assert_eq!(anonymous.remaining("api_key"), None);
}

#[test]
fn ietf_headers_describe_every_enforced_rule() {
    let stack = start(EnvoyOptions::default());
    let response = get(stack.envoy(0), "/limited_endpoint", &[]);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("ratelimit-policy"),
        Some(r#""limited_endpoint";q=10;w=60"#)
    );
    let state = response.header("ratelimit").expect("RateLimit header");
    assert!(state.starts_with(r#""limited_endpoint";r=9;t="#), "{state}");
    let t: u64 = state
        .rsplit("t=")
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap();
    assert!((1..=60).contains(&t), "{state}");
    // Shadow rules are not reported to clients.
    let api = get(stack.envoy(0), "/api/items", &[("x-api-key", "k")]);
    assert_eq!(
        api.header("ratelimit-policy"),
        Some(r#""api_key";q=20;w=60"#)
    );
    // Unlimited paths carry none.
    assert_eq!(get(stack.envoy(0), "/", &[]).header("ratelimit"), None);
}

#[test]
fn legacy_headers_show_the_rule_closest_to_its_limit() {
    let stack = start(EnvoyOptions::default().replace(
        r#""response_headers": "ietf""#,
        r#""response_headers": "legacy""#,
    ));
    let envoy = stack.envoy(0);
    let key = [("x-api-key", "k")];
    let first = get(envoy, "/api/sliding", &key);
    assert_eq!(first.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("4"));
    assert!(first.header("x-ratelimit-reset").is_some());
    assert_eq!(first.header("ratelimit"), None);
    for _ in 0..4 {
        get(envoy, "/api/sliding", &key);
    }
    let denied = get(envoy, "/api/sliding", &key);
    assert_eq!(denied.status, 429);
    assert_eq!(denied.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(denied.header("x-ratelimit-limit"), Some("5"));
}
