//! The built `ratelimit.wasm`, run through the fake host: what the filter does
//! across the proxy-wasm ABI (callouts, replies, resumptions, metrics) for the
//! rules, answers and failures Envoy would give it.
//!
//! The module is the one `cargo xtask build` (and `cargo xtask test`) produce;
//! these tests do not build it.

mod common;

use common::host;
use protocol::{Algorithm, CheckRequest, CheckResponse, HitResult};
use wasmhost::{Action, HostError, LogLevel, Request, Vm};

/// The demo's rule, with the given failure mode.
fn config(failure_mode: &str) -> String {
    format!(
        r#"{{
            "limitd_cluster": "limitd",
            "timeout": "250ms",
            "failure_mode": "{failure_mode}",
            "rules": [{{
                "name": "limited_endpoint",
                "match": {{ "path": {{ "prefix": "/limited_endpoint" }} }},
                "limit": {{ "requests": 10, "window": "60s" }}
            }}]
        }}"#
    )
}

fn start(failure_mode: &str) -> Vm {
    host().start(config(failure_mode)).unwrap()
}

/// A `GET` from 127.0.0.2:5555.
fn get(vm: &mut Vm, path: &str) -> Request {
    vm.request()
        .header(":method", "GET")
        .header(":path", path)
        .header(":authority", "example.com")
        .property("source.address", "127.0.0.2:5555")
        .send_headers()
        .unwrap()
}

/// limitd's answer to a one-hit check.
fn answer(allowed: bool, retry_after_ms: u64) -> Vec<u8> {
    serde_json::to_vec(&CheckResponse {
        allowed,
        hits: vec![HitResult {
            allowed,
            limit: 10,
            remaining: if allowed { 9 } else { 0 },
            reset_ms: 41_234,
            retry_after_ms,
        }],
    })
    .unwrap()
}

/// The token of the one callout waiting for an answer.
fn only_pending_token(vm: &Vm) -> u32 {
    let pending = vm.pending_calls();
    assert_eq!(
        pending.len(),
        1,
        "expected one pending callout: {pending:?}"
    );
    pending[0].token
}

fn metric(vm: &Vm, name: &str) -> i64 {
    vm.metric(&format!("ratelimit.{name}")).unwrap_or(0)
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn a_matching_request_pauses_and_sends_its_check_to_limitd() {
    let mut vm = start("allow");
    let req = get(&mut vm, "/limited_endpoint?page=2");
    assert_eq!(req.action, Action::Pause);

    let calls = vm.pending_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.cluster, "limitd");
    assert_eq!(call.headers.get(":method").as_deref(), Some("POST"));
    assert_eq!(call.headers.get(":path").as_deref(), Some("/v1/check"));
    assert_eq!(call.headers.get(":authority").as_deref(), Some("limitd"));
    assert_eq!(
        call.headers.get("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(call.timeout_ms, 250);
    assert_eq!(call.context_id, req.id);

    let check: CheckRequest = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(check.hits.len(), 1);
    let hit = &check.hits[0];
    assert_eq!(hit.key, "limited_endpoint:127.0.0.2");
    assert_eq!((hit.limit, hit.window_ms, hit.cost), (10, 60_000, 1));
    assert_eq!(hit.algorithm, Algorithm::FixedWindow);

    assert_eq!(metric(&vm, "checks"), 1);
    assert!(!vm.request_resumed(req.id));
    assert!(vm.local_reply(req.id).is_none());
}

#[test]
fn the_callout_authority_and_client_key_follow_config_and_properties() {
    let config = r#"{"limitd_authority": "limitd.internal", "rules": [
        {"name": "all", "limit": {"requests": 5, "window": "1s"}}]}"#;
    let mut vm = host().start(config).unwrap();
    let req = vm
        .request()
        .header(":path", "/anything")
        .property("source.address", "10.1.2.3:443")
        .send_headers()
        .unwrap();
    assert_eq!(req.action, Action::Pause);
    let call = &vm.pending_calls()[0];
    assert_eq!(
        call.headers.get(":authority").as_deref(),
        Some("limitd.internal")
    );
    assert_eq!(call.timeout_ms, 200, "the default timeout");
    let check: CheckRequest = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(check.hits[0].key, "all:10.1.2.3");
    assert_eq!((check.hits[0].limit, check.hits[0].window_ms), (5, 1_000));
}

#[test]
fn every_matching_rule_is_one_hit_of_the_same_check() {
    let config = r#"{"rules": [
        {"name": "global", "limit": {"requests": 100, "window": "1m"}},
        {"name": "api", "match": {"path": {"prefix": "/api"}}, "limit": {"requests": 3, "window": "10s"}}]}"#;
    let mut vm = host().start(config).unwrap();
    let req = vm
        .request()
        .header(":path", "/api/items")
        .property("source.address", "10.0.0.1:1")
        .send_headers()
        .unwrap();
    let call = vm.pending_calls()[0].clone();
    let check: CheckRequest = serde_json::from_slice(&call.body).unwrap();
    let keys: Vec<&str> = check.hits.iter().map(|h| h.key.as_str()).collect();
    assert_eq!(keys, ["global:10.0.0.1", "api:10.0.0.1"]);

    // The second hit is over its limit: the reply names it and its wait.
    let body = serde_json::to_vec(&CheckResponse {
        allowed: false,
        hits: vec![
            HitResult {
                allowed: true,
                limit: 100,
                remaining: 50,
                reset_ms: 30_000,
                retry_after_ms: 0,
            },
            HitResult {
                allowed: false,
                limit: 3,
                remaining: 0,
                reset_ms: 7_000,
                retry_after_ms: 6_500,
            },
        ],
    })
    .unwrap();
    vm.respond_to_call(call.token, &[(":status", "200")], &body)
        .unwrap();
    let reply = vm.local_reply(req.id).expect("a denial");
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers.get("retry-after").as_deref(), Some("7"));
    assert_eq!(
        json(&reply.body)["violated_policies"],
        serde_json::json!(["api"])
    );
}

#[test]
fn a_request_no_rule_matches_continues_without_a_callout() {
    let mut vm = start("allow");
    for path in ["/", "/limited", "/other/limited_endpoint"] {
        let req = get(&mut vm, path);
        assert_eq!(req.action, Action::Continue, "{path}");
        assert!(vm.request_forwarded(req));
    }
    assert!(vm.calls().is_empty());
    assert_eq!(metric(&vm, "checks"), 0);
}

#[test]
fn a_denied_check_is_answered_429_with_retry_after_and_a_problem_body() {
    let mut vm = start("allow");
    let req = get(&mut vm, "/limited_endpoint");
    let token = only_pending_token(&vm);
    vm.respond_to_call(
        token,
        &[(":status", "200"), ("content-type", "application/json")],
        &answer(false, 41_234),
    )
    .unwrap();

    assert!(!vm.request_resumed(req.id));
    assert!(!vm.request_forwarded(req));
    let reply = vm.local_reply(req.id).expect("a local reply");
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers.get("retry-after").as_deref(), Some("42"));
    assert_eq!(
        reply.headers.get("content-type").as_deref(),
        Some("application/problem+json")
    );
    let body = json(&reply.body);
    assert_eq!(body["status"], 429);
    assert_eq!(
        body["violated_policies"],
        serde_json::json!(["limited_endpoint"])
    );
    assert_eq!(body["retry_after"], 42);

    // What the client gets, after the reply went through the filter's own
    // response callback (as in Envoy): every header once, not twice.
    let sent = reply.sent_headers.as_ref().expect("the reply was sent");
    assert_eq!(sent.get(":status").as_deref(), Some("429"));
    assert_eq!(sent.get_all("retry-after"), ["42"]);
    assert_eq!(sent.get_all("ratelimit").len(), 1, "{sent:?}");

    assert_eq!(metric(&vm, "denied"), 1);
    assert_eq!(metric(&vm, "allowed"), 0);
    vm.finish(req.id).unwrap();
}

#[test]
fn an_allowed_check_resumes_the_request_and_reports_the_quota_on_the_response() {
    let mut vm = start("deny");
    let req = get(&mut vm, "/limited_endpoint");
    let token = only_pending_token(&vm);
    vm.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
        .unwrap();

    assert!(vm.request_resumed(req.id));
    assert!(vm.local_reply(req.id).is_none());
    assert!(vm.request_forwarded(req));
    assert_eq!(metric(&vm, "allowed"), 1);
    assert_eq!(metric(&vm, "callout_errors"), 0);

    let response = vm
        .response_headers(req.id, &[(":status", "200"), ("content-length", "2")])
        .unwrap();
    assert_eq!(response.action, Action::Continue);
    let headers = &response.headers;
    assert_eq!(headers.get(":status").as_deref(), Some("200"));
    assert_eq!(headers.get("content-length").as_deref(), Some("2"));
    // draft-ietf-httpapi-ratelimit-headers, the default style.
    assert_eq!(
        headers.get("ratelimit-policy").as_deref(),
        Some(r#""limited_endpoint";q=10;w=60"#)
    );
    assert_eq!(
        headers.get("ratelimit").as_deref(),
        Some(r#""limited_endpoint";r=9;t=42"#)
    );
    vm.finish(req.id).unwrap();
    assert!(vm.pending_calls().is_empty());
}

#[test]
fn the_response_header_style_is_configurable() {
    let allowed_response = |style: &str| {
        let config = config("allow").replace(
            r#""timeout""#,
            &format!(r#""response_headers": "{style}", "timeout""#),
        );
        let mut vm = host().start(config).unwrap();
        let req = get(&mut vm, "/limited_endpoint");
        let token = only_pending_token(&vm);
        vm.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
            .unwrap();
        vm.response_headers(req.id, &[(":status", "200")])
            .unwrap()
            .headers
    };

    let legacy = allowed_response("legacy");
    assert_eq!(legacy.get("x-ratelimit-limit").as_deref(), Some("10"));
    assert_eq!(legacy.get("x-ratelimit-remaining").as_deref(), Some("9"));
    assert_eq!(legacy.get("x-ratelimit-reset").as_deref(), Some("42"));
    assert_eq!(legacy.get("ratelimit"), None);

    let none = allowed_response("none");
    assert_eq!(none, wasmhost::Headers::from_pairs(&[(":status", "200")]));
}

#[test]
fn a_request_that_matched_no_rule_gets_no_rate_limit_headers() {
    let mut vm = start("allow");
    let req = get(&mut vm, "/");
    let response = vm.response_headers(req.id, &[(":status", "200")]).unwrap();
    assert_eq!(
        response.headers,
        wasmhost::Headers::from_pairs(&[(":status", "200")])
    );
}

#[test]
fn a_shadow_rule_is_counted_but_never_denies() {
    let config = r#"{"rules": [
        {"name": "shadow", "key": [{"constant": "all"}], "limit": {"requests": 1, "window": "1s"}, "shadow": true}]}"#;
    let mut vm = host().start(config).unwrap();
    let req = get(&mut vm, "/anything");
    let call = vm.pending_calls()[0].clone();
    let check: CheckRequest = serde_json::from_slice(&call.body).unwrap();
    assert!(check.hits[0].shadow);
    assert_eq!(check.hits[0].key, "shadow:all");

    // limitd's overall answer ignores shadow hits; the shadow hit itself is over.
    let body = serde_json::to_vec(&CheckResponse {
        allowed: true,
        hits: vec![HitResult {
            allowed: false,
            limit: 1,
            remaining: 0,
            reset_ms: 800,
            retry_after_ms: 800,
        }],
    })
    .unwrap();
    vm.respond_to_call(call.token, &[(":status", "200")], &body)
        .unwrap();
    assert!(vm.request_forwarded(req));
    assert_eq!(metric(&vm, "shadow_denied"), 1);
    assert_eq!(metric(&vm, "denied"), 0);
}

/// The ways a callout can fail, as Envoy reports them to the filter.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// Nothing listening: Envoy answers 503 itself.
    Unavailable,
    /// The timeout fired: Envoy answers 504 itself.
    Timeout,
    /// The upstream reset after its headers: the callback gets no headers.
    Reset,
    /// A 200 whose body is not a check response.
    GarbageBody,
    /// A 200 with a result count that does not match the hits.
    WrongHitCount,
}

const FAILURES: [Failure; 5] = [
    Failure::Unavailable,
    Failure::Timeout,
    Failure::Reset,
    Failure::GarbageBody,
    Failure::WrongHitCount,
];

fn fail(vm: &mut Vm, token: u32, failure: Failure) -> Result<(), HostError> {
    match failure {
        Failure::Unavailable => vm.respond_to_call(
            token,
            &[(":status", "503"), ("content-type", "text/plain")],
            b"no healthy upstream",
        ),
        Failure::Timeout => vm.time_out_call(token),
        Failure::Reset => vm.reset_call(token),
        Failure::GarbageBody => {
            vm.respond_to_call(token, &[(":status", "200")], b"<html>oops</html>")
        }
        Failure::WrongHitCount => vm.respond_to_call(
            token,
            &[(":status", "200")],
            br#"{"allowed": true, "hits": []}"#,
        ),
    }
}

#[test]
fn a_failed_callout_lets_the_request_through_in_failure_mode_allow() {
    for failure in FAILURES {
        let mut vm = start("allow");
        let req = get(&mut vm, "/limited_endpoint");
        let token = only_pending_token(&vm);
        fail(&mut vm, token, failure).unwrap();

        assert!(vm.request_resumed(req.id), "{failure:?}");
        assert!(vm.local_reply(req.id).is_none(), "{failure:?}");
        assert_eq!(metric(&vm, "failure_mode_allowed"), 1, "{failure:?}");
        assert_eq!(metric(&vm, "callout_errors"), 1, "{failure:?}");
        assert_eq!(metric(&vm, "allowed"), 0, "{failure:?}");
        // Counted and logged, never silent.
        assert!(
            vm.logs().iter().any(|l| l.level >= LogLevel::Warn),
            "{failure:?}"
        );
    }
}

#[test]
fn a_failed_callout_is_answered_503_in_failure_mode_deny() {
    for failure in FAILURES {
        let mut vm = start("deny");
        let req = get(&mut vm, "/limited_endpoint");
        let token = only_pending_token(&vm);
        fail(&mut vm, token, failure).unwrap();

        assert!(!vm.request_resumed(req.id), "{failure:?}");
        let reply = vm
            .local_reply(req.id)
            .unwrap_or_else(|| panic!("{failure:?}: no local reply"));
        assert_eq!(reply.status, 503, "{failure:?}");
        assert_eq!(reply.headers.get("retry-after").as_deref(), Some("1"));
        assert_eq!(
            reply.headers.get("content-type").as_deref(),
            Some("application/problem+json")
        );
        assert_eq!(json(&reply.body)["status"], 503);
        assert_eq!(metric(&vm, "failure_mode_denied"), 1, "{failure:?}");
        assert_eq!(metric(&vm, "callout_errors"), 1, "{failure:?}");
        assert_eq!(metric(&vm, "denied"), 0, "{failure:?}");
    }
}

#[test]
fn a_callout_to_an_unknown_cluster_fails_at_once_by_the_failure_mode() {
    let config = |mode: &str| {
        config(mode).replace(
            r#""limitd_cluster": "limitd""#,
            r#""limitd_cluster": "nowhere""#,
        )
    };

    let mut vm = host().start(config("allow")).unwrap();
    let req = get(&mut vm, "/limited_endpoint");
    assert_eq!(req.action, Action::Continue);
    assert!(
        vm.calls().is_empty(),
        "Envoy refuses the dispatch: no callout"
    );
    assert!(vm.request_forwarded(req));
    assert_eq!(metric(&vm, "failure_mode_allowed"), 1);
    assert_eq!(metric(&vm, "callout_errors"), 1);

    let mut vm = host().start(config("deny")).unwrap();
    let req = get(&mut vm, "/limited_endpoint");
    assert_eq!(req.action, Action::Pause);
    assert!(vm.calls().is_empty());
    assert_eq!(vm.local_reply(req.id).map(|r| r.status), Some(503));
    assert_eq!(metric(&vm, "failure_mode_denied"), 1);
}

#[test]
fn a_rules_own_failure_mode_overrides_the_filters() {
    let config = r#"{"failure_mode": "allow", "failure_status": 500, "rules": [
        {"name": "open", "limit": {"requests": 10, "window": "1s"}},
        {"name": "closed", "match": {"path": {"prefix": "/pay"}}, "limit": {"requests": 10, "window": "1s"},
         "failure_mode": "deny"}]}"#;
    let mut vm = host().start(config).unwrap();
    let open = get(&mut vm, "/home");
    let closed = get(&mut vm, "/pay/now");
    for call in vm.pending_calls() {
        vm.reset_call(call.token).unwrap();
    }
    assert!(vm.request_forwarded(open));
    assert_eq!(vm.local_reply(closed.id).map(|r| r.status), Some(500));
    assert_eq!(
        (
            metric(&vm, "failure_mode_allowed"),
            metric(&vm, "failure_mode_denied")
        ),
        (1, 1)
    );
}

#[test]
fn a_custom_deny_status_is_used_for_denials() {
    let config = config("allow").replace(r#""timeout""#, r#""deny_status": 403, "timeout""#);
    let mut vm = host().start(config).unwrap();
    let req = get(&mut vm, "/limited_endpoint");
    let token = only_pending_token(&vm);
    vm.respond_to_call(token, &[(":status", "200")], &answer(false, 500))
        .unwrap();
    let reply = vm.local_reply(req.id).expect("a denial");
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.headers.get("retry-after").as_deref(),
        Some("1"),
        "rounded up, at least 1"
    );
}

#[test]
fn a_malformed_configuration_is_refused_naming_the_field() {
    let cases = [
        (
            r#"{"rules": [{"name": "x", "limit": {"requests": 10, "window": "5 minutes"}}]}"#,
            "rules[0].limit.window",
        ),
        (r#"{"rules": [], "timeuot": "1s"}"#, "timeuot"),
        (
            r#"{"rules": [{"name": "x", "match": {"path_prefix": "/"}, "limit": {"requests": 1, "window": "1s"}}]}"#,
            "rules[0].match.path_prefix",
        ),
        (
            r#"{"rules": [{"name": "x", "limit": {"requests": "ten", "window": "1s"}}]}"#,
            "rules[0].limit.requests",
        ),
        (r#"{"timeout": "0ms", "rules": []}"#, "timeout"),
        ("not json", "invalid plugin configuration"),
        ("", "invalid plugin configuration"),
    ];
    for (config, field) in cases {
        let err = host().start(config).expect_err(config);
        let HostError::ConfigureRefused { logs } = &err else {
            panic!("{config}: expected a refused configuration, got {err}");
        };
        assert!(
            logs.iter()
                .any(|l| l.level >= LogLevel::Error && l.message.contains(field)),
            "{config}: no error log naming {field}: {logs:?}"
        );
    }
}

#[test]
fn non_utf8_and_huge_header_values_do_not_trap() {
    let mut vm = start("allow");
    let huge = vec![b'a'; 1 << 20];

    // A non-UTF-8 path that matches, with a non-UTF-8 source address.
    let mut path = b"/limited_endpoint/".to_vec();
    path.extend_from_slice(&[0xff, 0xfe, 0x80]);
    let req = vm
        .request()
        .header(":path", &path)
        .header("x-binary", [0xc3, 0x28, 0x00, 0xa0])
        .property("source.address", [0xff, b':', b'1'])
        .send_headers()
        .unwrap();
    assert_eq!(req.action, Action::Pause);
    let call = vm.pending_calls()[0].clone();
    let check: CheckRequest = serde_json::from_slice(&call.body).unwrap();
    assert!(check.hits[0].key.starts_with("limited_endpoint:"));
    vm.respond_to_call(call.token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    assert!(vm.request_resumed(req.id));

    // A huge path that matches, and a huge header beside a path that does not.
    let mut path = b"/limited_endpoint/".to_vec();
    path.extend_from_slice(&huge);
    let req = vm
        .request()
        .header(":path", &path)
        .header("x-huge", &huge)
        .send_headers()
        .unwrap();
    assert_eq!(req.action, Action::Pause);
    let req = vm
        .request()
        .header(":path", [0xff, 0xff])
        .header("cookie", &huge)
        .send_headers()
        .unwrap();
    assert_eq!(req.action, Action::Continue);

    // A huge, non-UTF-8 answer from limitd is a failure, not a trap.
    let token = vm.pending_calls()[0].token;
    vm.respond_to_call(
        token,
        &[(":status", "200"), ("x-junk", "\u{fffd}")],
        &[0xff; 1 << 16],
    )
    .unwrap();
    assert_eq!(metric(&vm, "failure_mode_allowed"), 1);
    assert!(vm.trap().is_none());
}

#[test]
fn an_answer_for_a_client_that_went_away_does_not_trap() {
    for allowed in [true, false] {
        let mut vm = start("deny");

        // The client disconnects while its check is in flight; the answer still arrives.
        let gone = get(&mut vm, "/limited_endpoint");
        let token = only_pending_token(&vm);
        vm.finish(gone.id).unwrap();
        vm.respond_to_call(token, &[(":status", "200")], &answer(allowed, 1_000))
            .unwrap();
        assert!(vm.local_reply(gone.id).is_none());
        assert!(!vm.request_resumed(gone.id));

        // Ended (`proxy_on_done`) but not yet deleted when the answer lands.
        let ending = get(&mut vm, "/limited_endpoint");
        let token = only_pending_token(&vm);
        vm.done(ending.id).unwrap();
        vm.respond_to_call(token, &[(":status", "200")], &answer(allowed, 1_000))
            .unwrap();
        vm.log(ending.id).unwrap();
        vm.delete(ending.id).unwrap();

        // Gone in the module while the host still has it (a disconnect and
        // the answer in the same event-loop pass).
        let racing = get(&mut vm, "/limited_endpoint");
        let token = only_pending_token(&vm);
        vm.finish_in_module_only(racing.id).unwrap();
        vm.respond_to_call(token, &[(":status", "200")], &answer(allowed, 1_000))
            .unwrap();

        // The VM is still healthy: the next request is checked as usual.
        let next = get(&mut vm, "/limited_endpoint");
        let token = only_pending_token(&vm);
        vm.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
            .unwrap();
        assert!(vm.request_resumed(next.id));
        assert!(vm.trap().is_none());
    }
}

#[test]
fn concurrent_requests_each_get_their_own_answer() {
    let mut vm = start("allow");
    let first = get(&mut vm, "/limited_endpoint");
    let second = get(&mut vm, "/limited_endpoint");
    let calls = vm.pending_calls();
    assert_eq!(calls.len(), 2);
    let token_of = |id| {
        calls
            .iter()
            .find(|c| c.context_id == id)
            .map(|c| c.token)
            .unwrap()
    };

    // Answered out of order.
    vm.respond_to_call(
        token_of(second.id),
        &[(":status", "200")],
        &answer(false, 2_000),
    )
    .unwrap();
    vm.respond_to_call(token_of(first.id), &[(":status", "200")], &answer(true, 0))
        .unwrap();
    assert!(vm.request_resumed(first.id) && vm.local_reply(first.id).is_none());
    assert!(!vm.request_resumed(second.id) && vm.local_reply(second.id).is_some());
    assert_eq!(
        (
            metric(&vm, "allowed"),
            metric(&vm, "denied"),
            metric(&vm, "checks")
        ),
        (1, 1, 2)
    );
}

#[test]
fn metrics_add_up_across_the_vms_of_one_host() {
    let host = host();
    let mut workers = [
        host.start(config("allow")).unwrap(),
        host.start(config("allow")).unwrap(),
    ];
    for vm in &mut workers {
        get(vm, "/limited_endpoint");
    }
    assert_eq!(host.metric("ratelimit.checks"), Some(2));
    assert_eq!(workers[0].metric("ratelimit.checks"), Some(2));
}
