//! Fallback limits in the built `ratelimit.wasm`: while limitd cannot answer,
//! a rule's `fallback` limit is enforced by the Envoy itself, with fixed
//! windows by the proxy's clock and counters in shared data, so every worker
//! (VM) of one Envoy spends from the same budget.

mod common;

use std::time::Duration;

use common::filter::{
    answer, batch_of, get_from, json, limitd_down, metric, only_pending_call, without_batching,
};
use common::host;
use wasmhost::{Request, Vm};

/// A rule of 10 per minute that fails closed, with a local limit of 2 per
/// second for when limitd is away.
const CONFIG: &str = r#"{
    "failure_mode": "deny",
    "rules": [{
        "name": "limited_endpoint",
        "match": { "path": { "prefix": "/limited_endpoint" } },
        "limit": { "requests": 10, "window": "60s" },
        "fallback": { "requests": 2, "window": "1s" }
    }]
}"#;

/// A request from `ip` while limitd answers 503.
fn request(vm: &mut Vm, ip: &str) -> Request {
    let req = get_from(vm, "/limited_endpoint", ip);
    limitd_down(vm);
    req
}

/// Asserts the request got the fallback's 429, naming the rule.
fn assert_fallback_denied(vm: &Vm, req: Request, retry_after: &str) {
    assert!(!vm.request_resumed(req.id));
    let reply = vm.local_reply(req.id).expect("a local reply");
    assert_eq!(reply.status, 429, "over the fallback limit, not 503");
    assert_eq!(
        reply.headers.get("retry-after").as_deref(),
        Some(retry_after)
    );
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
    assert_eq!(body["retry_after"].to_string(), retry_after);
    let sent = reply.sent_headers.as_ref().expect("the reply was sent");
    assert_eq!(sent.get_all("retry-after"), [retry_after]);
}

#[test]
fn a_fallback_limit_admits_its_requests_then_denies_while_limitd_is_down() {
    let mut vm = host().start(CONFIG).unwrap();
    let first = request(&mut vm, "10.0.0.1");
    let second = request(&mut vm, "10.0.0.1");
    assert!(vm.request_forwarded(first) && vm.request_forwarded(second));
    assert_eq!(metric(&vm, "fallback_allowed"), 2);

    let third = request(&mut vm, "10.0.0.1");
    // The host clock starts on a whole second: the window ends 1 s from now.
    assert_fallback_denied(&vm, third, "1");
    assert_eq!(metric(&vm, "fallback_denied"), 1);

    // Another client has its own budget.
    let other = request(&mut vm, "10.0.0.2");
    assert!(vm.request_forwarded(other));
    assert_eq!(metric(&vm, "fallback_allowed"), 3);

    // Neither the failure mode nor limitd decided any of them.
    assert_eq!(
        (
            metric(&vm, "failure_mode_allowed"),
            metric(&vm, "failure_mode_denied"),
            metric(&vm, "allowed"),
            metric(&vm, "denied"),
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(metric(&vm, "callout_errors"), 4);
    assert!(vm.trap().is_none());
}

#[test]
fn fallback_counters_are_shared_by_the_vms_of_one_envoy() {
    let host = host();
    let mut a = host.start(CONFIG).unwrap();
    let mut b = host.start(CONFIG).unwrap();
    let on_a = request(&mut a, "10.0.0.1");
    let on_b = request(&mut b, "10.0.0.1");
    assert!(a.request_forwarded(on_a) && b.request_forwarded(on_b));

    let again_a = request(&mut a, "10.0.0.1");
    assert_fallback_denied(&a, again_a, "1");
    let again_b = request(&mut b, "10.0.0.1");
    assert_fallback_denied(&b, again_b, "1");
    assert_eq!(host.metric("ratelimit.fallback_allowed"), Some(2));
    assert_eq!(host.metric("ratelimit.fallback_denied"), Some(2));
}

#[test]
fn a_new_fallback_window_admits_again() {
    let mut vm = host().start(CONFIG).unwrap();
    for _ in 0..2 {
        let req = request(&mut vm, "10.0.0.1");
        assert!(vm.request_forwarded(req));
    }
    // Later in the same window: still over, for what is left of it.
    vm.advance_time(Duration::from_millis(400)).unwrap();
    let over = request(&mut vm, "10.0.0.1");
    assert_fallback_denied(&vm, over, "1");

    vm.advance_time(Duration::from_millis(600)).unwrap();
    let next = request(&mut vm, "10.0.0.1");
    assert!(vm.request_forwarded(next), "a new window");
    let next = request(&mut vm, "10.0.0.1");
    assert!(vm.request_forwarded(next));
    let over = request(&mut vm, "10.0.0.1");
    assert_fallback_denied(&vm, over, "1");
    assert_eq!(
        (
            metric(&vm, "fallback_allowed"),
            metric(&vm, "fallback_denied")
        ),
        (4, 2)
    );
}

#[test]
fn a_failed_batch_spends_the_fallback_in_arrival_order() {
    let mut vm = host().start(CONFIG).unwrap();
    // Another client's own callout is in flight while these three arrive.
    let busy = get_from(&mut vm, "/limited_endpoint", "10.9.9.9");
    let own = only_pending_call(&vm);
    let reqs: Vec<Request> = (0..3)
        .map(|_| get_from(&mut vm, "/limited_endpoint", "10.0.0.1"))
        .collect();
    vm.respond_to_call(own.token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    assert!(vm.request_forwarded(busy));
    let call = only_pending_call(&vm);
    assert_eq!(batch_of(&call).checks.len(), 3, "one batch of three");
    vm.reset_call(call.token).unwrap();

    assert!(vm.request_forwarded(reqs[0]) && vm.request_forwarded(reqs[1]));
    assert_fallback_denied(&vm, reqs[2], "1");
    assert_eq!(
        (
            metric(&vm, "fallback_allowed"),
            metric(&vm, "fallback_denied")
        ),
        (2, 1)
    );
}

#[test]
fn without_a_fallback_the_failure_mode_applies_and_without_batching_the_fallback_still_does() {
    // A rule without a fallback, beside one with: the failure mode decides for it.
    let config = CONFIG.replace(
        r#""rules": ["#,
        r#""rules": [{"name": "plain", "match": {"path": {"prefix": "/plain"}},
                      "limit": {"requests": 1, "window": "1s"}},"#,
    );
    let mut vm = host().start(&config).unwrap();
    let plain = get_from(&mut vm, "/plain", "10.0.0.1");
    limitd_down(&mut vm);
    assert_eq!(vm.local_reply(plain.id).map(|r| r.status), Some(503));
    assert_eq!(metric(&vm, "failure_mode_denied"), 1);

    // Each request with its own callout: the same fallback.
    let mut vm = host().start(without_batching(CONFIG)).unwrap();
    for _ in 0..2 {
        let req = request(&mut vm, "10.0.0.1");
        assert_eq!(
            vm.calls().last().and_then(|c| c.headers.get(":path")),
            Some("/v2/checks".to_owned())
        );
        assert!(vm.request_forwarded(req));
    }
    let over = request(&mut vm, "10.0.0.1");
    assert_fallback_denied(&vm, over, "1");
}

#[test]
fn a_client_that_went_away_while_its_batch_was_in_flight_spends_no_fallback() {
    let mut vm = host().start(CONFIG).unwrap();
    // Another client's own callout is in flight while these three arrive.
    let busy = get_from(&mut vm, "/limited_endpoint", "10.9.9.9");
    let own = only_pending_call(&vm);
    let reqs: Vec<Request> = (0..3)
        .map(|_| get_from(&mut vm, "/limited_endpoint", "10.0.0.1"))
        .collect();
    vm.respond_to_call(own.token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    assert!(vm.request_forwarded(busy));
    let call = only_pending_call(&vm);
    assert_eq!(batch_of(&call).checks.len(), 3);

    // The first client leaves before limitd's failure is known: only two
    // requests are left to decide, and the fallback admits two.
    vm.finish(reqs[0].id).unwrap();
    vm.reset_call(call.token).unwrap();
    assert!(vm.request_forwarded(reqs[1]));
    assert!(
        vm.request_forwarded(reqs[2]),
        "denied {:?}: the departed client spent a fallback unit",
        vm.local_reply(reqs[2].id).map(|r| r.status)
    );
    assert_eq!(
        (
            metric(&vm, "fallback_allowed"),
            metric(&vm, "fallback_denied")
        ),
        (2, 0)
    );
}
