//! End-to-end tests: real Envoy with ratelimit.wasm, real Redis master,
//! replicas and sentinels, real limitd and backends, as local processes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use e2e::{
    await_window_left, eventually, http_get, Binaries, EnvoyOptions, HttpConnection, HttpResponse,
    Resp, Stack, StackOptions, COUNTED_SPAN, SHIPPED_WINDOW,
};

const CLIENT_1: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
const CLIENT_2: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));

fn start(envoy: EnvoyOptions) -> Stack {
    Stack::for_test(envoy)
}

fn get(to: SocketAddr, path: &str, from: Option<IpAddr>) -> HttpResponse {
    http_get(to, path, from).unwrap_or_else(|e| panic!("GET {path} via {to}: {e}"))
}

fn json(response: &HttpResponse) -> serde_json::Value {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("body {:?} is not JSON: {e}", response.body))
}

fn statuses(to: SocketAddr, path: &str, from: Option<IpAddr>, count: usize) -> Vec<u16> {
    (0..count).map(|_| get(to, path, from).status).collect()
}

#[test]
fn requests_to_root_alternate_between_the_backends() {
    let stack = start(EnvoyOptions::default());
    // One kept-alive connection stays on one Envoy worker, whose round robin is then
    // visible. A worker learns that a backend passed its first health check a moment
    // after the admin endpoint shows it, so the first connections may still see one
    // backend: poll (bounded) for a connection that shows the steady state.
    let instances = eventually(Duration::from_secs(10), || {
        let mut connection =
            HttpConnection::open(stack.envoy(0), CLIENT_1).map_err(|e| e.to_string())?;
        let instances = (0..6)
            .map(|_| {
                let response = connection.get("/").map_err(|e| e.to_string())?;
                if response.status != 200 {
                    return Err(format!("{response:?}"));
                }
                Ok(json(&response)["instance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned())
            })
            .collect::<Result<Vec<String>, String>>()?;
        if instances.windows(2).all(|pair| pair[0] != pair[1]) {
            Ok(instances)
        } else {
            Err(format!("no alternation: {instances:?}"))
        }
    })
    .unwrap();
    let mut seen = instances.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["backend-1", "backend-2"]);
}

#[test]
fn the_limited_endpoint_admits_ten_per_client_then_answers_429() {
    let stack = start(EnvoyOptions::default());
    let envoy = stack.envoy(0);
    assert_eq!(
        statuses(envoy, "/limited_endpoint", CLIENT_1, 10),
        [200; 10]
    );

    let denied = get(envoy, "/limited_endpoint", CLIENT_1);
    assert_eq!(denied.status, 429, "{denied:?}");
    let retry_after: u64 = denied
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        denied.header("content-type"),
        Some("application/problem+json")
    );
    let body = json(&denied);
    assert_eq!(body["status"], 429);
    assert_eq!(
        body["violated_policies"],
        serde_json::json!(["limited_endpoint"])
    );
    assert_eq!(body["retry_after"], retry_after);

    // Another client has its own counter.
    assert_eq!(get(envoy, "/limited_endpoint", CLIENT_2).status, 200);
    // Other paths are never limited, even for the client over its limit.
    assert_eq!(statuses(envoy, "/", CLIENT_1, 15), [200; 15]);
    assert_eq!(statuses(envoy, "/health", CLIENT_1, 15), [200; 15]);
    assert_eq!(get(envoy, "/limited_endpoint", CLIENT_1).status, 429);
    // A denial from the worker's deny cache is counted at its next timer tick (100 ms).
    eventually(STATS_LAG, || {
        match stack.envoy_stat(0, "wasmcustom.ratelimit.denied") {
            2 => Ok(()),
            n => Err(format!("{n} denials counted")),
        }
    })
    .unwrap();
    assert_eq!(stack.envoy_stat(0, "wasmcustom.ratelimit.allowed"), 11);
}

/// How long the filter's counts of decisions made without a callout (lease admissions, denials
/// from the deny cache) may take to reach Envoy's counters: they are added every 100 ms.
const STATS_LAG: Duration = Duration::from_secs(5);

#[test]
fn a_forged_forwarded_for_header_does_not_change_the_client() {
    let stack = start(EnvoyOptions::default());
    let envoy = stack.envoy(0);
    for i in 0..12 {
        let forged = format!("203.0.113.{i}");
        let response = e2e::http_request(
            "GET",
            envoy,
            "/limited_endpoint",
            &[("x-forwarded-for", &forged)],
            b"",
            CLIENT_1,
        )
        .unwrap();
        assert_eq!(
            response.status,
            if i < 10 { 200 } else { 429 },
            "request {i}"
        );
    }
}

#[test]
fn two_envoys_share_one_limit() {
    let mut stack = start(EnvoyOptions::default());
    stack.add_envoy(&EnvoyOptions::default()).unwrap();
    let first = statuses(stack.envoy(0), "/limited_endpoint", CLIENT_1, 6);
    let second = statuses(stack.envoy(1), "/limited_endpoint", CLIENT_1, 6);
    assert_eq!(first, [200; 6]);
    assert_eq!(second, [200, 200, 200, 200, 429, 429]);
}

#[test]
fn with_limitd_unreachable_failure_mode_allow_lets_requests_through_and_counts_them() {
    let mut stack = start(EnvoyOptions::default());
    stack.kill("limitd-1");
    stack.kill("limitd-2");
    let envoy = stack.envoy(0);
    // Past the limit of 10: every one passes while limitd is away.
    assert_eq!(
        statuses(envoy, "/limited_endpoint", CLIENT_1, 12),
        [200; 12]
    );
    assert_eq!(
        stack.envoy_stat(0, "wasmcustom.ratelimit.failure_mode_allowed"),
        12
    );
    assert_eq!(
        stack.envoy_stat(0, "wasmcustom.ratelimit.callout_errors"),
        12
    );
    assert_eq!(stack.envoy_stat(0, "wasmcustom.ratelimit.allowed"), 0);
}

#[test]
fn with_limitd_unreachable_failure_mode_deny_answers_the_failure_status() {
    let mut stack = start(
        EnvoyOptions::default().replace(r#""failure_mode": "allow""#, r#""failure_mode": "deny""#),
    );
    stack.kill("limitd-1");
    stack.kill("limitd-2");
    let envoy = stack.envoy(0);
    let response = get(envoy, "/limited_endpoint", CLIENT_1);
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(json(&response)["title"], "Rate Limiter Unavailable");
    // Requests no rule matches need no limitd.
    assert_eq!(get(envoy, "/", CLIENT_1).status, 200);
    assert_eq!(
        stack.envoy_stat(0, "wasmcustom.ratelimit.failure_mode_denied"),
        1
    );
}

#[test]
fn a_limitd_that_never_answers_costs_no_more_than_the_timeout() {
    let mut stack = start(EnvoyOptions::default());
    // Replace both limitd by listeners that accept connections and never answer.
    let mut silent = Vec::new();
    for (name, port) in [
        ("limitd-1", stack.ports.limitd[0]),
        ("limitd-2", stack.ports.limitd[1]),
    ] {
        stack.kill(name);
        let listener = eventually(Duration::from_secs(5), || {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|e| e.to_string())
        })
        .unwrap();
        silent.push(listener);
    }
    let held = std::thread::spawn(move || {
        let mut connections = Vec::new();
        for listener in &silent {
            listener.set_nonblocking(true).unwrap();
        }
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            for listener in &silent {
                if let Ok((conn, _)) = listener.accept() {
                    connections.push(conn);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let envoy = stack.envoy(0);
    for _ in 0..3 {
        let started = Instant::now();
        let response = get(envoy, "/limited_endpoint", CLIENT_1);
        let took = started.elapsed();
        assert_eq!(response.status, 200, "{response:?}");
        // The shipped timeout is 250ms; allow generous slack for a loaded machine.
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
    assert_eq!(
        stack.envoy_stat(0, "wasmcustom.ratelimit.failure_mode_allowed"),
        3
    );
    drop(held);
}

/// Envoy reads the rules through extension config discovery, so a malformed rules file does not
/// stop it from starting: it refuses the file, says why, and answers every request on the
/// listener with 500 (nothing passes unchecked) until a valid file is moved into place.
#[test]
fn envoy_started_with_a_malformed_rules_file_says_why_admits_nothing_and_takes_a_fixed_one() {
    let mut stack = start(
        EnvoyOptions::default().replace(r#""window": "60s""#, r#""window": "sixty seconds""#),
    );
    let envoy = stack.envoy(0);
    assert_eq!(
        stack.envoy_stat(
            0,
            "extension_config_discovery.http_filter.ratelimit.update_rejected"
        ),
        1
    );
    let log = stack.process("envoy-1").expect("envoy-1").log_text();
    assert!(
        log.contains(r#"invalid plugin configuration: rules[0].limit.window: "sixty seconds" is not a duration"#),
        "the log does not say why:\n{log}"
    );
    assert_eq!(statuses(envoy, "/", CLIENT_1, 3), [500; 3]);
    assert_eq!(statuses(envoy, "/limited_endpoint", CLIENT_1, 3), [500; 3]);

    let fixed = stack
        .rules(0)
        .replace(r#""window": "sixty seconds""#, r#""window": "60s""#);
    stack.set_rules(0, &fixed).unwrap();
    let response = eventually(Duration::from_secs(10), || {
        let response = get(envoy, "/limited_endpoint", CLIENT_1);
        if response.status == 200 {
            Ok(response)
        } else {
            Err(format!("{response:?}"))
        }
    })
    .unwrap();
    assert!(response.header("ratelimit").is_some(), "{response:?}");
}

/// A fleet upgrades limitd first: filters released before `/v2/checks` keep
/// deciding every request through the v1 endpoints, with and without batching
/// (`/v1/checks`, `/v1/check`). The fixture is the filter of that release
/// (tests/fixtures/README.md).
#[test]
fn a_filter_released_before_v2_keeps_working_against_this_limitd() {
    let fixture = e2e::paths::workspace_root().join("tests/fixtures/ratelimit-v1.wasm");
    assert!(fixture.is_file(), "{} is missing", fixture.display());
    for batching in [true, false] {
        // That filter knows no limitd_token (it refuses fields it does not know), so this
        // limitd runs without one, as a fleet does until every filter is upgraded.
        let mut options = EnvoyOptions::default()
            .wasm(&fixture)
            .replace(r#""limitd_token": "demo-only-token-change-me","#, "");
        if !batching {
            options = options.replace(
                r#""limitd_cluster": "limitd","#,
                r#""limitd_cluster": "limitd", "batch": {"enabled": false},"#,
            );
        }
        let stack = Stack::start(StackOptions {
            envoy: options,
            limitd_without_token: true,
            ..StackOptions::default()
        })
        .unwrap();
        await_window_left(SHIPPED_WINDOW, COUNTED_SPAN);
        let envoy = stack.envoy(0);
        assert_eq!(
            statuses(envoy, "/limited_endpoint", CLIENT_1, 11),
            [[200; 10].as_slice(), &[429]].concat(),
            "batching {batching}"
        );
        assert_eq!(get(envoy, "/limited_endpoint", CLIENT_2).status, 200);
        let v1_requests: f64 = (0..2)
            .filter_map(|i| stack.limitd_metric(i, "limitd_v1_requests_total"))
            .sum();
        assert!(
            v1_requests >= 12.0,
            "{v1_requests} v1 requests, batching {batching}"
        );
        for counter in [
            "callout_errors",
            "failure_mode_allowed",
            "failure_mode_denied",
        ] {
            assert_eq!(
                stack.envoy_stat(0, &format!("wasmcustom.ratelimit.{counter}")),
                0,
                "{counter}, batching {batching}"
            );
        }
        assert_eq!(stack.envoy_stat(0, "wasmcustom.ratelimit.allowed"), 11);
    }
}

/// And the filter of this release speaks only `/v2/checks`.
#[test]
fn this_filter_speaks_only_v2() {
    let stack = start(EnvoyOptions::default());
    let envoy = stack.envoy(0);
    assert_eq!(get(envoy, "/limited_endpoint", CLIENT_1).status, 200);
    let v1_requests: f64 = (0..2)
        .filter_map(|i| stack.limitd_metric(i, "limitd_v1_requests_total"))
        .sum();
    assert_eq!(v1_requests, 0.0);
    let allowed: f64 = (0..2)
        .filter_map(|i| stack.limitd_metric(i, r#"limitd_checks_total{result="allowed"}"#))
        .sum();
    assert_eq!(allowed, 1.0);
}

/// A client cannot escape a rule by spelling its path or host another way:
/// Envoy normalizes both before the filter matches them.
#[test]
fn other_spellings_of_a_limited_path_count_against_the_same_rule() {
    // The demo rule, limited to one host as well.
    let stack = start(EnvoyOptions::default().replace(
        r#""match": { "path": { "prefix": "/limited_endpoint" } },"#,
        r#""match": { "path": { "prefix": "/limited_endpoint" }, "host": "localhost" },"#,
    ));
    let envoy = stack.envoy(0);
    let spellings = [
        ("/limited_endpoint", "localhost"),
        ("//limited_endpoint", "localhost"),
        ("/./limited_endpoint", "localhost"),
        ("/x/../limited_endpoint", "localhost"),
        ("/%6cimited_endpoint", "localhost"),
        ("/limited_endpoint", "localhost."),
        ("/limited_endpoint", "LOCALHOST.:8000"),
    ];
    let mut statuses = Vec::new();
    for i in 0..11 {
        let (path, host) = spellings[i % spellings.len()];
        let mut connection = HttpConnection::open(envoy, CLIENT_1).unwrap();
        let response = connection.get_with_host(path, host).unwrap();
        statuses.push((path, host, response.status));
    }
    let codes: Vec<u16> = statuses.iter().map(|(_, _, s)| *s).collect();
    assert_eq!(
        codes,
        [[200; 10].as_slice(), &[429]].concat(),
        "{statuses:?}"
    );
}

/// limitd answers checks only to callers with its token: the filter has it
/// (from rules/ratelimit.yaml), anyone else gets 401 and spends nothing.
#[test]
fn limitd_refuses_checks_without_its_token() {
    let stack = start(EnvoyOptions::default());
    let limitd = SocketAddr::from(([127, 0, 0, 1], stack.ports.limitd[0]));
    let body = br#"{"checks":[{"hits":[{"key":"limited_endpoint:127.0.0.1","limit":10,"window_ms":60000,"cost":10}]}]}"#;
    let post = |headers: &[(&str, &str)]| {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        e2e::http_request("POST", limitd, "/v2/checks", &all, body, None).unwrap()
    };
    assert_eq!(post(&[]).status, 401);
    assert_eq!(
        post(&[("authorization", "Bearer not-the-token-at-all")]).status,
        401
    );
    assert_eq!(
        post(&[("authorization", "demo-only-token-change-me")]).status,
        401,
        "the scheme is required"
    );
    assert!(stack.limitd_metric(0, "limitd_unauthorized_total") >= Some(3.0));
    // Nothing was spent: the client still has its 10 through Envoy.
    let envoy = stack.envoy(0);
    assert_eq!(
        statuses(envoy, "/limited_endpoint", CLIENT_1, 11),
        [[200; 10].as_slice(), &[429]].concat()
    );
    // Health and metrics stay open, for Envoy's health checks and Prometheus.
    assert_eq!(get(limitd, "/healthz", None).status, 200);
}

#[test]
fn a_flood_of_huge_client_keys_never_lets_another_client_past_its_limit() {
    // Once, one client sending keys limitd refused made whole batches fail open, so a fresh
    // client got 60 × 200 on a 10-per-60 s rule. Now keys are bounded by the filter, rules
    // limitd would refuse are refused when Envoy loads them, and a refused check fails alone.
    let stack = start(EnvoyOptions::default());
    let envoy = stack.envoy(0);
    let flood = std::thread::spawn(move || {
        for i in 0..300 {
            let key = format!("{i:04}{}", "k".repeat(8 * 1024));
            let response = e2e::http_request(
                "GET",
                envoy,
                "/api/anything",
                &[("x-api-key", &key)],
                b"",
                CLIENT_2,
            )
            .expect("a flood request is answered");
            assert!(matches!(response.status, 200 | 429), "{response:?}");
        }
    });
    let victim: Vec<u16> = (0..15)
        .map(|_| get(envoy, "/limited_endpoint", CLIENT_1).status)
        .collect();
    flood.join().expect("the flood");
    let mut expected = vec![200; 10];
    expected.extend([429; 5]);
    assert_eq!(victim, expected);
    assert_eq!(
        stack.envoy_stat(0, "wasmcustom.ratelimit.callout_errors"),
        0
    );
    assert_eq!(
        stack.envoy_stat(0, "wasmcustom.ratelimit.failure_mode_allowed"),
        0
    );
}

#[test]
fn each_rule_counts_its_decisions_under_rule_and_outcome_labels() {
    let stack = start(EnvoyOptions::default());
    let envoy = stack.envoy(0);
    assert_eq!(
        statuses(envoy, "/limited_endpoint", CLIENT_1, 12),
        [[200; 10].as_slice(), &[429; 2]].concat()
    );
    // Denials from a deny cache reach the counters at the worker's next tick: read once both
    // denials are counted (a flush adds the rule's `deny_cache_hits` before its `denied`).
    let text = eventually(STATS_LAG, || {
        let text = http_get(stack.envoys[0].admin, "/stats/prometheus", None)
            .map_err(|e| e.to_string())?
            .body;
        let denied = text.lines().any(|l| {
            l.starts_with("ratelimit_rule{")
                && l.contains("rule=\"limited_endpoint\"")
                && l.contains("outcome=\"denied\"")
                && l.ends_with(" 2")
        });
        if denied {
            Ok(text)
        } else {
            Err("the two denials not counted yet".to_owned())
        }
    })
    .unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ratelimit_rule{"))
        .collect();
    let value = |rule: &str, outcome: &str| -> u64 {
        series
            .iter()
            .find(|l| {
                l.contains(&format!("rule=\"{rule}\""))
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {rule}/{outcome} series in {series:#?}"))
    };
    assert_eq!(value("limited_endpoint", "allowed"), 10);
    // The 11th and 12th were denied, by limitd or, on a worker that saw a denial already, from
    // its deny cache (counted as both).
    assert_eq!(value("limited_endpoint", "denied"), 2);
    assert_eq!(
        value("limited_endpoint", "deny_cache_hits"),
        stack.envoy_stat(0, "wasmcustom.ratelimit.deny_cache_hits")
    );
    assert_eq!(value("limited_endpoint", "failure_mode"), 0);
    assert_eq!(value("api_gcra", "allowed"), 0);
    // Labels are rule names and outcomes only: one series per rule and outcome.
    let rules = [
        "limited_endpoint",
        "api_sliding",
        "api_gcra",
        "api_key",
        "api_global_shadow",
    ];
    assert_eq!(series.len(), rules.len() * 7, "{series:#?}");
    assert!(series
        .iter()
        .all(|l| rules.iter().any(|r| l.contains(&format!("rule=\"{r}\"")))));
}

#[test]
fn on_a_redis_cluster_limits_hold_and_a_denied_request_consumes_none_of_its_hits() {
    Binaries::require();
    // The api_key rule's window is stretched to 366 days (8784 h), so that no run crosses its
    // end and its counter holds every request of the test.
    let stack = Stack::start(StackOptions {
        redis_cluster: true,
        envoy: EnvoyOptions::default().replace(
            r#""limit": { "requests": 20, "window": "1m" }"#,
            r#""limit": { "requests": 20, "window": "8784h" }"#,
        ),
        ..StackOptions::default()
    })
    .unwrap_or_else(|e| panic!("stack did not start: {e}"));
    await_window_left(SHIPPED_WINDOW, COUNTED_SPAN);
    let envoy = stack.envoy(0);
    assert_eq!(
        statuses(envoy, "/limited_endpoint", CLIENT_1, 11),
        [[200; 10].as_slice(), &[429]].concat()
    );
    assert_eq!(get(envoy, "/limited_endpoint", CLIENT_2).status, 200);

    // /api/gcra with an API key matches three rules whose counters are in different slots:
    // api_gcra (per client, burst 5), api_key (20 a minute per key) and the shadow global one.
    let gcra_key = "rl:v2:{api_gcra:127.0.0.1}:g1000";
    let api_key = "rl:v2:{api_key:k-cluster}:w31622400000";
    let slot = |key: &str| match stack.cluster_command(&["CLUSTER", "KEYSLOT", key]) {
        Ok(Resp::Integer(slot)) => slot,
        other => panic!("CLUSTER KEYSLOT {key}: {other:?}"),
    };
    assert_ne!(slot(gcra_key), slot(api_key), "the check spans two slots");
    let mut admitted = 0;
    let mut denied = 0;
    for _ in 0..12 {
        let response = e2e::http_request(
            "GET",
            envoy,
            "/api/gcra",
            &[("x-api-key", "k-cluster")],
            b"",
            CLIENT_1,
        )
        .unwrap_or_else(|e| panic!("GET /api/gcra: {e}"));
        match response.status {
            200 => admitted += 1,
            429 => denied += 1,
            other => panic!("unexpected {other}: {response:?}"),
        }
    }
    assert!(
        admitted >= 1 && denied >= 1,
        "{admitted} admitted, {denied} denied"
    );
    // Each request denied by the gcra rule was charged on api_key's slot and given back before
    // its answer: the key's counter holds exactly the admitted requests.
    let counted = match stack.cluster_command(&["HGET", api_key, "c"]) {
        Ok(Resp::Bulk(Some(count))) => count.parse::<u64>().unwrap_or(0),
        other => panic!("HGET {api_key}: {other:?}"),
    };
    assert_eq!(counted, admitted, "{admitted} admitted, {denied} denied");
}
