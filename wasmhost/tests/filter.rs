//! The built `ratelimit.wasm`, run through the fake host: what the filter does
//! across the proxy-wasm ABI (callouts, replies, resumptions, metrics) for the
//! rules, answers and failures Envoy would give it.
//!
//! By default the filter batches: a request queues its check and pauses, the
//! worker's root context sends what waits as one `POST /v2/checks`, and its
//! answer resumes or answers each request. The requests here come one at a
//! time, so each batch holds one check; `batching.rs` tests group commit
//! itself, `fallback.rs` the local limits used while limitd is away. A few
//! tests here keep `"batch": {"enabled": false}` (one `POST /v2/checks` batch of one per
//! request, from the request's own context).
//!
//! The module is the one `cargo xtask build` (and `cargo xtask test`) produce;
//! these tests do not build it.

mod common;

use common::filter::{
    answer, batch_answer, batch_of, config, fail, get, get_from, json, metric, only_pending_call,
    result, without_batching, FAILURES,
};
use common::host;
use protocol::{Algorithm, CheckResponse, HitResult};
use wasmhost::{Action, HostError, LogLevel, Vm};

fn start(failure_mode: &str) -> Vm {
    host().start(config(failure_mode)).unwrap()
}

#[test]
fn a_matching_request_pauses_and_its_check_goes_to_limitd() {
    let mut vm = start("allow");
    let req = get(&mut vm, "/limited_endpoint?page=2");
    assert_eq!(req.action, Action::Pause);

    let call = only_pending_call(&vm);
    assert_eq!(call.cluster, "limitd");
    assert_eq!(call.headers.get(":method").as_deref(), Some("POST"));
    assert_eq!(call.headers.get(":path").as_deref(), Some("/v2/checks"));
    assert_eq!(call.headers.get(":authority").as_deref(), Some("limitd"));
    assert_eq!(
        call.headers.get("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(call.timeout_ms, 250); // Nothing else waits, so the request sends its check at once, itself (a
                                      // batch of one); under load the root sends the checks that wait together.
    assert_eq!(call.context_id, req.id);

    let batch = batch_of(&call);
    assert_eq!(batch.checks.len(), 1);
    let check = &batch.checks[0];
    assert_eq!(check.hits.len(), 1);
    let hit = &check.hits[0];
    assert_eq!(hit.key, "limited_endpoint:127.0.0.2");
    assert_eq!((hit.limit, hit.window_ms, hit.cost), (10, 60_000, 1));
    assert_eq!(hit.algorithm, Algorithm::FixedWindow);

    assert_eq!((metric(&vm, "checks"), metric(&vm, "callouts")), (1, 1));
    assert!(!vm.request_resumed(req.id));
    assert!(vm.local_reply(req.id).is_none());
}

#[test]
fn without_batching_a_request_sends_its_own_check_from_its_own_context() {
    let mut vm = host().start(without_batching(&config("allow"))).unwrap();
    let req = get(&mut vm, "/limited_endpoint?page=2");
    assert_eq!(req.action, Action::Pause);

    let call = only_pending_call(&vm);
    assert_eq!(call.cluster, "limitd");
    assert_eq!(call.headers.get(":method").as_deref(), Some("POST"));
    assert_eq!(call.headers.get(":authority").as_deref(), Some("limitd"));
    assert_eq!(call.timeout_ms, 250);
    assert_eq!(call.context_id, req.id);
    let batch = batch_of(&call);
    assert_eq!(batch.timeout_ms, Some(250));
    assert_eq!(batch.checks.len(), 1);
    assert_eq!(batch.checks[0].hits.len(), 1);
    assert_eq!(batch.checks[0].hits[0].key, "limited_endpoint:127.0.0.2");

    vm.respond_to_call(call.token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    assert!(vm.request_forwarded(req));
    let response = vm.response_headers(req.id, &[(":status", "200")]).unwrap();
    assert_eq!(
        response.headers.get("ratelimit").as_deref(),
        Some(r#""limited_endpoint";r=9;t=42"#)
    );
    assert_eq!(
        vm.resolve_queue("ratelimit.wake.0"),
        None,
        "no wake-up queue without batching"
    );
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
    let call = only_pending_call(&vm);
    assert_eq!(
        call.headers.get(":authority").as_deref(),
        Some("limitd.internal")
    );
    assert_eq!(call.timeout_ms, 200, "the default timeout");
    let hit = &batch_of(&call).checks[0].hits[0];
    assert_eq!(hit.key, "all:10.1.2.3");
    assert_eq!((hit.limit, hit.window_ms), (5, 1_000));
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
    let call = only_pending_call(&vm);
    let batch = batch_of(&call);
    assert_eq!(batch.checks.len(), 1, "one request, one check");
    let keys: Vec<&str> = batch.checks[0]
        .hits
        .iter()
        .map(|h| h.key.as_str())
        .collect();
    assert_eq!(keys, ["global:10.0.0.1", "api:10.0.0.1"]);

    // The second hit is over its limit: the reply names it and its wait.
    let body = batch_answer(vec![CheckResponse {
        allowed: false,
        hits: vec![
            HitResult {
                allowed: true,
                limit: 100,
                remaining: 50,
                reset_ms: 30_000,
                retry_after_ms: 0,
                leased: 0,
                lease_ms: 0,
            },
            HitResult {
                allowed: false,
                limit: 3,
                remaining: 0,
                reset_ms: 7_000,
                retry_after_ms: 6_500,
                leased: 0,
                lease_ms: 0,
            },
        ],
    }]);
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
    assert!(
        vm.pending_queue_events().is_empty(),
        "nothing to wake the root for"
    );
    assert_eq!((metric(&vm, "checks"), metric(&vm, "callouts")), (0, 0));
}

#[test]
fn a_denied_check_is_answered_429_with_retry_after_and_a_problem_body() {
    let mut vm = start("allow");
    let req = get(&mut vm, "/limited_endpoint");
    let token = only_pending_call(&vm).token;
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
    let token = only_pending_call(&vm).token;
    vm.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
        .unwrap();

    assert!(vm.request_resumed(req.id));
    assert!(vm.local_reply(req.id).is_none());
    assert!(vm.request_forwarded(req));
    assert_eq!(metric(&vm, "allowed"), 1);
    assert_eq!(metric(&vm, "callout_errors"), 0);
    assert_eq!(
        vm.histogram("ratelimit.callout_latency_us")
            .map(|h| h.len()),
        Some(1)
    );

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
        let token = only_pending_call(&vm).token;
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
    let call = only_pending_call(&vm);
    let hit = batch_of(&call).checks[0].hits[0].clone();
    assert!(hit.shadow);
    assert_eq!(hit.key, "shadow:all");

    // limitd's overall answer ignores shadow hits; the shadow hit itself is over.
    let body = batch_answer(vec![CheckResponse {
        allowed: true,
        hits: vec![HitResult {
            allowed: false,
            limit: 1,
            remaining: 0,
            reset_ms: 800,
            retry_after_ms: 800,
            leased: 0,
            lease_ms: 0,
        }],
    }]);
    vm.respond_to_call(call.token, &[(":status", "200")], &body)
        .unwrap();
    assert!(vm.request_forwarded(req));
    assert_eq!(metric(&vm, "shadow_denied"), 1);
    assert_eq!(metric(&vm, "denied"), 0);
    // A shadow rule shows in no response header.
    let response = vm.response_headers(req.id, &[(":status", "200")]).unwrap();
    assert_eq!(response.headers.get("ratelimit"), None);
}

#[test]
fn a_failed_callout_lets_the_request_through_in_failure_mode_allow() {
    for failure in FAILURES {
        let mut vm = start("allow");
        let req = get(&mut vm, "/limited_endpoint");
        let token = only_pending_call(&vm).token;
        fail(&mut vm, token, 1, failure).unwrap();

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
        assert!(vm.trap().is_none(), "{failure:?}");
    }
}

#[test]
fn a_failed_callout_is_answered_503_in_failure_mode_deny() {
    for failure in FAILURES {
        let mut vm = start("deny");
        let req = get(&mut vm, "/limited_endpoint");
        let token = only_pending_call(&vm).token;
        fail(&mut vm, token, 1, failure).unwrap();

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

    // Batched: the root's dispatch is refused, and it decides the waiting request.
    let mut vm = host().start(config("allow")).unwrap();
    let req = get(&mut vm, "/limited_endpoint");
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
    // The next request is not stuck behind the failed one.
    let next = get(&mut vm, "/limited_endpoint");
    assert_eq!(vm.local_reply(next.id).map(|r| r.status), Some(503));

    // Without batching the request decides at once, in its own callback.
    let mut vm = host().start(without_batching(&config("allow"))).unwrap();
    let req = get(&mut vm, "/limited_endpoint");
    assert_eq!(req.action, Action::Continue);
    assert!(vm.calls().is_empty());
    assert_eq!(metric(&vm, "failure_mode_allowed"), 1);
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
    // The second waits for the first callout; each is reset in turn.
    while let Some(call) = vm.pending_calls().first().cloned() {
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
    let token = only_pending_call(&vm).token;
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
        (
            r#"{"batch": {"max_checks": 0}, "rules": []}"#,
            "batch.max_checks",
        ),
        (
            r#"{"batch": {"max_in_flight": 17}, "rules": []}"#,
            "batch.max_in_flight",
        ),
        (r#"{"batch": {"size": 8}, "rules": []}"#, "size"),
        (
            r#"{"rules": [{"name": "x", "limit": {"requests": 1, "window": "1s"},
                "fallback": {"requests": 1, "window": "soon"}}]}"#,
            "rules[0].fallback.window",
        ),
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
    let call = only_pending_call(&vm);
    assert!(batch_of(&call).checks[0].hits[0]
        .key
        .starts_with("limited_endpoint:"));
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
    let other = vm
        .request()
        .header(":path", [0xff, 0xff])
        .header("cookie", &huge)
        .send_headers()
        .unwrap();
    assert_eq!(other.action, Action::Continue);

    // A huge, non-UTF-8 answer from limitd is a failure, not a trap.
    let token = only_pending_call(&vm).token;
    vm.respond_to_call(
        token,
        &[(":status", "200"), ("x-junk", "\u{fffd}")],
        &[0xff; 1 << 16],
    )
    .unwrap();
    assert!(vm.request_resumed(req.id));
    assert_eq!(metric(&vm, "failure_mode_allowed"), 1);
    assert!(vm.trap().is_none());
}

#[test]
fn an_answer_for_a_client_that_went_away_does_not_trap() {
    for batching in [true, false] {
        for allowed in [true, false] {
            let case = format!("batching {batching}, allowed {allowed}");
            let config = if batching {
                config("deny")
            } else {
                without_batching(&config("deny"))
            };
            let body = |allowed| answer(allowed, 1_000);
            let mut vm = host().start(config).unwrap();

            // The client disconnects while its check is in flight; the answer still arrives.
            // Each from its own client: a denial teaches the deny cache, which would
            // answer the same client's next request without a callout.
            let gone = get_from(&mut vm, "/limited_endpoint", "10.0.0.1");
            let token = only_pending_call(&vm).token;
            vm.finish(gone.id).unwrap();
            vm.respond_to_call(token, &[(":status", "200")], &body(allowed))
                .unwrap();
            assert!(vm.local_reply(gone.id).is_none(), "{case}");
            assert!(!vm.request_resumed(gone.id), "{case}");

            // Ended (`proxy_on_done`) but not yet deleted when the answer lands. The
            // module exports no `proxy_on_done` (Envoy 1.40 calls `proxy_on_delete`
            // right after it): for the module the request is still there, and
            // answering it must not trap.
            let ending = get_from(&mut vm, "/limited_endpoint", "10.0.0.2");
            let token = only_pending_call(&vm).token;
            vm.done(ending.id).unwrap();
            vm.respond_to_call(token, &[(":status", "200")], &body(allowed))
                .unwrap();
            vm.log(ending.id).unwrap();
            vm.delete(ending.id).unwrap();

            // Gone in the module while the host still has it (a disconnect and
            // the answer in the same event-loop pass).
            let racing = get_from(&mut vm, "/limited_endpoint", "10.0.0.3");
            let token = only_pending_call(&vm).token;
            vm.finish_in_module_only(racing.id).unwrap();
            vm.respond_to_call(token, &[(":status", "200")], &body(allowed))
                .unwrap();
            assert!(vm.local_reply(racing.id).is_none(), "{case}");

            // The VM is still healthy: the next request is checked as usual.
            let next = get_from(&mut vm, "/limited_endpoint", "10.0.0.4");
            let token = only_pending_call(&vm).token;
            vm.respond_to_call(token, &[(":status", "200")], &body(true))
                .unwrap();
            assert!(vm.request_resumed(next.id), "{case}");
            assert!(vm.trap().is_none(), "{case}");
        }
    }
}

#[test]
fn without_batching_concurrent_requests_each_get_their_own_answer() {
    let mut vm = host().start(without_batching(&config("allow"))).unwrap();
    let first = get(&mut vm, "/limited_endpoint");
    let second = get(&mut vm, "/limited_endpoint");
    let calls = vm.pending_calls();
    assert_eq!(calls.len(), 2, "one callout per request");
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
            metric(&vm, "checks"),
            metric(&vm, "callouts")
        ),
        (1, 1, 2, 2)
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
        let req = get(vm, "/limited_endpoint");
        let token = only_pending_call(vm).token;
        vm.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
            .unwrap();
        assert!(vm.request_resumed(req.id));
    }
    assert_eq!(host.metric("ratelimit.checks"), Some(2));
    assert_eq!(host.metric("ratelimit.callouts"), Some(2));
    assert_eq!(host.metric("ratelimit.allowed"), Some(2));
    assert_eq!(workers[0].metric("ratelimit.allowed"), Some(2));
    assert_eq!(
        workers[0]
            .histogram("ratelimit.callout_latency_us")
            .map(|h| h.len()),
        Some(2)
    );
}

/// A batch answer is read as one result per check, in order; limitd's
/// single-check shape is not mistaken for one.
#[test]
fn a_batch_answer_is_one_result_per_check() {
    let mut vm = start("allow");
    let req = get(&mut vm, "/limited_endpoint");
    let token = only_pending_call(&vm).token;
    vm.respond_to_call(
        token,
        &[(":status", "200")],
        &batch_answer(vec![result(true, 3, 0)]),
    )
    .unwrap();
    let response = vm.response_headers(req.id, &[(":status", "200")]).unwrap();
    assert_eq!(
        response.headers.get("ratelimit").as_deref(),
        Some(r#""limited_endpoint";r=3;t=42"#)
    );
    // v1's single-check answer is not a batch answer: a failure, not a guess.
    let req = get(&mut vm, "/limited_endpoint");
    let token = only_pending_call(&vm).token;
    let v1_single = serde_json::to_vec(&result(false, 0, 5_000)).unwrap();
    vm.respond_to_call(token, &[(":status", "200")], &v1_single)
        .unwrap();
    assert!(vm.request_forwarded(req));
    assert_eq!(metric(&vm, "failure_mode_allowed"), 1);
}

#[test]
fn a_learnt_denial_answers_the_same_client_without_a_callout_until_it_expires() {
    let mut vm = start("allow");
    let first = get(&mut vm, "/limited_endpoint");
    let token = only_pending_call(&vm).token;
    vm.respond_to_call(token, &[(":status", "200")], &answer(false, 2_000))
        .unwrap();
    assert_eq!(vm.local_reply(first.id).map(|r| r.status), Some(429));

    // Same client, within the denial: answered at once, no callout.
    let cached = get(&mut vm, "/limited_endpoint");
    assert!(
        vm.pending_calls().is_empty(),
        "no callout for a known denial"
    );
    let reply = vm.local_reply(cached.id).expect("a local reply");
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers.get("retry-after").as_deref(), Some("2"));
    // A denial from the cache is counted at the worker's next timer tick.
    assert_eq!(metric(&vm, "deny_cache_hits"), 0);
    assert_eq!(metric(&vm, "denied"), 1);
    vm.tick().unwrap();
    assert_eq!(metric(&vm, "deny_cache_hits"), 1);
    assert_eq!(metric(&vm, "denied"), 2);
    assert_eq!(metric(&vm, "checks"), 1);

    // Another client is checked as usual.
    let other = get_from(&mut vm, "/limited_endpoint", "10.9.9.9");
    let token = only_pending_call(&vm).token;
    vm.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    assert!(vm.request_resumed(other.id));

    // Once the denial has run out, the client is checked by limitd again.
    vm.advance_time(std::time::Duration::from_millis(2_001))
        .unwrap();
    let later = get(&mut vm, "/limited_endpoint");
    let token = only_pending_call(&vm).token;
    vm.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    assert!(vm.request_resumed(later.id));
}
