//! Group commit in the built `ratelimit.wasm`: requests that arrive while a
//! callout is in flight wait, and go out together as one `POST /v2/checks`
//! from the worker's root context, which answers each of them on their own.
//!
//! Queue events are held (`hold_queue_events`) where the test needs several
//! requests to queue before the root runs, as under load.

mod common;

use common::filter::{
    answer, batch_answer, batch_of, config, fail, first_keys, get, get_from, json, metric,
    only_pending_call, result, with_batch, FAILURES,
};
use common::host;
use wasmhost::{Action, Request, Vm};

/// The client address of the `i`th request of a test: each has its own key.
fn ip(i: usize) -> String {
    format!("10.0.0.{i}")
}

fn key(i: usize) -> String {
    format!("limited_endpoint:{}", ip(i))
}

/// A VM with one request (client 0) whose check is in flight: what arrives
/// next waits for the next callout. At low load a request sends its own check
/// at once, from its own context, without waking the root.
fn one_in_flight(config: &str) -> (Vm, Request, u32) {
    let mut vm = host().start(config).unwrap();
    let first = get_from(&mut vm, "/limited_endpoint", &ip(0));
    assert!(vm.pending_queue_events().is_empty(), "no wake-up needed");
    let call = only_pending_call(&vm);
    assert_eq!(call.context_id, first.id, "sent by the request itself");
    assert_eq!(first_keys(&call), [key(0)]);
    (vm, first, call.token)
}

/// Requests from clients `ids`, arriving now.
fn arrive(vm: &mut Vm, ids: std::ops::RangeInclusive<usize>) -> Vec<Request> {
    ids.map(|i| {
        let req = get_from(vm, "/limited_endpoint", &ip(i));
        assert_eq!(req.action, Action::Pause);
        req
    })
    .collect()
}

#[test]
fn requests_arriving_while_a_callout_is_in_flight_go_out_together_in_the_next_one() {
    let (mut vm, first, token) = one_in_flight(&config("allow"));
    let waiting = arrive(&mut vm, 1..=4);
    assert_eq!(
        vm.pending_calls().len(),
        1,
        "one callout in flight at a time (max_in_flight 1)"
    );

    vm.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    assert!(vm.request_forwarded(first));

    // The answer lets the root send everything that waited, in arrival order.
    let call = only_pending_call(&vm);
    assert_eq!(call.context_id, vm.root_id());
    assert_eq!(call.cluster, "limitd");
    assert_eq!(call.timeout_ms, 250);
    assert_eq!(first_keys(&call), (1..=4).map(key).collect::<Vec<_>>());
    assert!(batch_of(&call).checks.iter().all(|c| c.hits.len() == 1));
    for req in &waiting {
        assert!(!vm.request_resumed(req.id) && vm.local_reply(req.id).is_none());
    }

    let results = (1..=4).map(|_| result(true, 5, 0)).collect();
    vm.respond_to_call(call.token, &[(":status", "200")], &batch_answer(results))
        .unwrap();
    assert!(waiting.iter().all(|req| vm.request_forwarded(*req)));
    assert!(vm.pending_calls().is_empty());
    assert_eq!(
        (
            metric(&vm, "checks"),
            metric(&vm, "callouts"),
            metric(&vm, "allowed")
        ),
        (5, 2, 5),
        "five checks in two callouts"
    );
}

#[test]
fn each_request_of_a_batch_gets_its_own_decision_and_headers() {
    let (mut vm, _, token) = one_in_flight(&config("allow"));
    let reqs = arrive(&mut vm, 1..=4);
    vm.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    let call = only_pending_call(&vm);
    assert_eq!(first_keys(&call), (1..=4).map(key).collect::<Vec<_>>());

    let results = vec![
        result(true, 7, 0),
        result(false, 0, 3_000),
        result(true, 2, 0),
        result(false, 0, 12_500),
    ];
    vm.respond_to_call(call.token, &[(":status", "200")], &batch_answer(results))
        .unwrap();

    // Allowed: resumed, and their own quota on their own upstream responses.
    for (req, remaining) in [(reqs[0], 7), (reqs[2], 2)] {
        assert!(vm.request_forwarded(req), "{req:?}");
        let response = vm.response_headers(req.id, &[(":status", "200")]).unwrap();
        assert_eq!(
            response.headers.get_all("ratelimit"),
            [format!(r#""limited_endpoint";r={remaining};t=42"#)],
            "{req:?}"
        );
        assert_eq!(
            response.headers.get("ratelimit-policy").as_deref(),
            Some(r#""limited_endpoint";q=10;w=60"#)
        );
    }
    // Denied: answered 429 with their own wait.
    for (req, retry_after) in [(reqs[1], "3"), (reqs[3], "13")] {
        assert!(!vm.request_resumed(req.id), "{req:?}");
        let reply = vm.local_reply(req.id).expect("a denial");
        assert_eq!(reply.status, 429);
        assert_eq!(
            reply.headers.get("retry-after").as_deref(),
            Some(retry_after)
        );
        assert_eq!(
            reply.headers.get("content-type").as_deref(),
            Some("application/problem+json")
        );
        assert_eq!(
            json(&reply.body)["violated_policies"],
            serde_json::json!(["limited_endpoint"])
        );
        let sent = reply.sent_headers.as_ref().expect("the reply was sent");
        assert_eq!(sent.get_all("retry-after"), [retry_after]);
    }
    assert_eq!((metric(&vm, "allowed"), metric(&vm, "denied")), (3, 2));
    for req in reqs {
        vm.finish(req.id).unwrap();
    }
    assert!(vm.trap().is_none());
}

#[test]
fn max_checks_bounds_a_batch() {
    let config = with_batch(&config("allow"), r#"{"max_checks": 2}"#);
    let mut vm = host().start(config).unwrap();
    vm.hold_queue_events(true);
    let reqs = arrive(&mut vm, 1..=5);
    vm.deliver_queue_events().unwrap();
    vm.hold_queue_events(false);

    // One callout in flight at a time: the first request's own, then the
    // four that waited, 2 and 2.
    let mut sizes = Vec::new();
    let mut keys = Vec::new();
    while let Some(call) = vm.pending_calls().first().cloned() {
        assert_eq!(vm.pending_calls().len(), 1);
        let sent = first_keys(&call);
        sizes.push(sent.len());
        keys.extend(sent.clone());
        let results = sent.iter().map(|_| result(true, 9, 0)).collect();
        vm.respond_to_call(call.token, &[(":status", "200")], &batch_answer(results))
            .unwrap();
    }
    assert_eq!(sizes, [1, 2, 2]);
    assert_eq!(keys, (1..=5).map(key).collect::<Vec<_>>());
    assert!(reqs.iter().all(|req| vm.request_forwarded(*req)));
    assert_eq!((metric(&vm, "checks"), metric(&vm, "callouts")), (5, 3));

    // With room for four callouts in flight, requests go out on their own
    // while there is room, and what waits goes out in batches as room frees.
    let config = with_batch(
        &common::filter::config("allow"),
        r#"{"max_checks": 2, "max_in_flight": 4}"#,
    );
    let mut vm = host().start(config).unwrap();
    let reqs = arrive(&mut vm, 1..=6);
    let calls = vm.pending_calls();
    let sizes: Vec<usize> = calls.iter().map(|c| first_keys(c).len()).collect();
    assert_eq!(sizes, [1, 1, 1, 1], "1 to 4 on their own; 5 and 6 wait");
    // Answered out of order, each request still gets its own answer; the first
    // answer frees room, and 5 and 6 go out together.
    let deny = |n: usize| batch_answer((0..n).map(|_| result(false, 0, 1_000)).collect());
    for call in calls.iter().rev() {
        vm.respond_to_call(call.token, &[(":status", "200")], &deny(1))
            .unwrap();
    }
    let rest = only_pending_call(&vm);
    assert_eq!(first_keys(&rest), [key(5), key(6)]);
    vm.respond_to_call(rest.token, &[(":status", "200")], &deny(2))
        .unwrap();
    assert!(reqs
        .iter()
        .all(|req| vm.local_reply(req.id).map(|r| r.status) == Some(429)));
}

#[test]
fn a_request_whose_client_went_away_while_waiting_is_left_out_of_the_batch() {
    let (mut vm, _, token) = one_in_flight(&config("deny"));
    let reqs = arrive(&mut vm, 1..=4);
    vm.finish(reqs[1].id).unwrap();
    vm.finish(reqs[3].id).unwrap();
    vm.deliver_queue_events().unwrap();

    vm.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    let call = only_pending_call(&vm);
    assert_eq!(first_keys(&call), [key(1), key(3)]);
    let results = vec![result(true, 1, 0), result(false, 0, 2_000)];
    vm.respond_to_call(call.token, &[(":status", "200")], &batch_answer(results))
        .unwrap();
    assert!(vm.request_forwarded(reqs[0]));
    assert_eq!(vm.local_reply(reqs[2].id).map(|r| r.status), Some(429));
    assert_eq!(metric(&vm, "checks"), 5);

    // If every waiting client went away, there is nothing to send.
    let (mut vm, _, token) = one_in_flight(&config("deny"));
    let reqs = arrive(&mut vm, 1..=2);
    for req in &reqs {
        vm.finish(req.id).unwrap();
    }
    vm.deliver_queue_events().unwrap();
    vm.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    assert!(vm.pending_calls().is_empty());
    assert_eq!(metric(&vm, "callouts"), 1);

    // And the VM carries on.
    let next = get(&mut vm, "/limited_endpoint");
    vm.deliver_queue_events().unwrap();
    let call = only_pending_call(&vm);
    vm.respond_to_call(call.token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    assert!(vm.request_forwarded(next));
}

#[test]
fn a_client_that_went_away_while_its_batch_was_in_flight_is_skipped_when_the_answer_arrives() {
    for allowed in [true, false] {
        let (mut vm, _, token) = one_in_flight(&config("allow"));
        let reqs = arrive(&mut vm, 1..=4);
        vm.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
            .unwrap();
        let call = only_pending_call(&vm);
        assert_eq!(first_keys(&call).len(), 4);

        // Gone for good; deleted alone (Envoy 1.40 calls `proxy_on_delete`
        // right after `proxy_on_done`, which the module does not export); and
        // gone in the module while the host still has it (the disconnect and
        // the answer in one event-loop pass, where acting on it traps the SDK).
        vm.finish(reqs[0].id).unwrap();
        vm.delete(reqs[1].id).unwrap();
        vm.finish_in_module_only(reqs[2].id).unwrap();

        let remaining = if allowed { 4 } else { 0 };
        let results = (0..4).map(|_| result(allowed, remaining, 4_000)).collect();
        vm.respond_to_call(call.token, &[(":status", "200")], &batch_answer(results))
            .unwrap();
        assert!(vm.trap().is_none(), "allowed {allowed}: {:?}", vm.trap());
        for gone in &reqs[..3] {
            assert!(vm.local_reply(gone.id).is_none(), "allowed {allowed}");
            assert!(!vm.request_resumed(gone.id), "allowed {allowed}");
        }
        // The one still there is answered.
        if allowed {
            assert!(vm.request_forwarded(reqs[3]));
            assert_eq!(metric(&vm, "allowed"), 2, "the first and the last");
        } else {
            assert_eq!(vm.local_reply(reqs[3].id).map(|r| r.status), Some(429));
            assert_eq!(metric(&vm, "denied"), 1);
        }

        // The VM is still healthy: the next request is checked as usual.
        let next = get(&mut vm, "/limited_endpoint");
        vm.deliver_queue_events().unwrap();
        let token = only_pending_call(&vm).token;
        vm.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
            .unwrap();
        assert!(vm.request_forwarded(next));
        assert!(vm.trap().is_none());
    }
}

#[test]
fn a_failed_batch_applies_the_failure_mode_to_every_request_in_it() {
    let config = r#"{"failure_mode": "allow", "failure_status": 500, "rules": [
        {"name": "open", "limit": {"requests": 10, "window": "1s"}},
        {"name": "closed", "match": {"path": {"prefix": "/pay"}}, "limit": {"requests": 10, "window": "1s"},
         "failure_mode": "deny"}]}"#;
    for failure in FAILURES {
        let mut vm = host().start(config).unwrap();
        // A first request's own callout is in flight while the four arrive.
        let busy = get_from(&mut vm, "/home", &ip(9));
        let own = only_pending_call(&vm);
        let reqs = [
            get_from(&mut vm, "/home", &ip(1)),
            get_from(&mut vm, "/pay/now", &ip(2)),
            get_from(&mut vm, "/about", &ip(3)),
            get_from(&mut vm, "/pay/later", &ip(4)),
        ];
        vm.respond_to_call(own.token, &[(":status", "200")], &answer(true, 0))
            .unwrap();
        assert!(vm.request_forwarded(busy));
        let call = only_pending_call(&vm);
        assert_eq!(batch_of(&call).checks.len(), 4);
        fail(&mut vm, call.token, 4, failure).unwrap();

        assert!(vm.trap().is_none(), "{failure:?}");
        assert!(vm.request_forwarded(reqs[0]), "{failure:?}");
        assert!(vm.request_forwarded(reqs[2]), "{failure:?}");
        for closed in [reqs[1], reqs[3]] {
            let reply = vm.local_reply(closed.id);
            assert_eq!(reply.map(|r| r.status), Some(500), "{failure:?}");
            assert!(!vm.request_resumed(closed.id), "{failure:?}");
        }
        assert_eq!(
            (
                metric(&vm, "failure_mode_allowed"),
                metric(&vm, "failure_mode_denied"),
                metric(&vm, "allowed"),
                metric(&vm, "denied"),
            ),
            (2, 2, 1, 0),
            "{failure:?}"
        );
        assert!(metric(&vm, "callout_errors") >= 1, "{failure:?}");
        assert!(vm.pending_calls().is_empty(), "{failure:?}");
    }
}

#[test]
fn each_vm_wakes_its_own_root_under_its_own_queue_name() {
    let host = host();
    let mut a = host.start(config("allow")).unwrap();
    let mut b = host.start(config("allow")).unwrap();
    // Numbered by a counter in shared data, not by the clock both VMs read alike.
    assert_eq!(
        a.shared_data("ratelimit.vm_sequence").map(|(v, _)| v),
        Some(b"2".to_vec())
    );
    let queue_a = a.resolve_queue("ratelimit.wake.0").expect("A's queue");
    let queue_b = a.resolve_queue("ratelimit.wake.1").expect("B's queue");
    assert_ne!(queue_a, queue_b);
    assert!(a.owns_queue(queue_a) && !a.owns_queue(queue_b));
    assert!(b.owns_queue(queue_b) && !b.owns_queue(queue_a));
    a.hold_queue_events(true);
    b.hold_queue_events(true);
    // A request on an idle VM sends its own check; the next one waits, and
    // wakes its own VM's root.
    let busy_a = get_from(&mut a, "/limited_endpoint", &ip(3));
    let busy_b = get_from(&mut b, "/limited_endpoint", &ip(4));
    assert!(a.pending_queue_events().is_empty() && b.pending_queue_events().is_empty());
    let on_a = get_from(&mut a, "/limited_endpoint", &ip(1));
    assert_eq!(a.pending_queue_events(), [queue_a]);
    assert!(b.pending_queue_events().is_empty());
    let on_b = get_from(&mut b, "/limited_endpoint", &ip(2));
    assert_eq!(b.pending_queue_events(), [queue_b]);
    for (vm, busy, req, client) in [(&mut a, busy_a, on_a, 1), (&mut b, busy_b, on_b, 2)] {
        vm.deliver_queue_events().unwrap();
        let own = only_pending_call(vm);
        assert_eq!(own.context_id, busy.id);
        vm.respond_to_call(own.token, &[(":status", "200")], &answer(true, 0))
            .unwrap();
        assert!(vm.request_forwarded(busy));
        vm.deliver_queue_events().unwrap();
        let call = only_pending_call(vm);
        assert_eq!(call.context_id, vm.root_id());
        assert_eq!(first_keys(&call), [key(client)]);
        vm.respond_to_call(call.token, &[(":status", "200")], &answer(true, 0))
            .unwrap();
        assert!(vm.request_forwarded(req));
    }
}

#[test]
fn a_vm_started_later_does_not_take_over_an_earlier_vms_requests() {
    let host = host();
    let mut a = host.start(config("allow")).unwrap();
    let first = get(&mut a, "/limited_endpoint");
    let token = only_pending_call(&a).token;

    // Another worker starts while A has a callout in flight and a request waiting.
    let waiting = get_from(&mut a, "/limited_endpoint", &ip(1));
    let mut b = host.start(config("allow")).unwrap();
    let later = get_from(&mut a, "/limited_endpoint", &ip(2));
    assert!(
        b.pending_queue_events().is_empty(),
        "A's wake-ups stay on A"
    );
    assert!(b.pending_calls().is_empty());

    a.respond_to_call(token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    assert!(a.request_forwarded(first));
    let call = only_pending_call(&a);
    assert_eq!(first_keys(&call), [key(1), key(2)]);
    let results = vec![result(true, 8, 0), result(true, 7, 0)];
    a.respond_to_call(call.token, &[(":status", "200")], &batch_answer(results))
        .unwrap();
    assert!(a.request_forwarded(waiting) && a.request_forwarded(later)); // And B's own requests go out from B.
    let on_b = get(&mut b, "/limited_endpoint");
    let call = only_pending_call(&b);
    assert_eq!(call.context_id, on_b.id);
    b.respond_to_call(call.token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    assert!(b.request_forwarded(on_b));
    assert!(a.pending_calls().is_empty());
}

#[test]
fn no_request_waits_longer_than_the_timeout_behind_a_hung_callout() {
    // The test configuration's timeout is 250ms; failure mode deny makes a
    // failure visible as a 503.
    let (mut vm, first, token) = one_in_flight(&config("deny"));
    assert_eq!(only_pending_call(&vm).timeout_ms, 250);

    // One request arrives 100ms into the hung callout, another 150ms in.
    vm.advance_time(std::time::Duration::from_millis(100))
        .unwrap();
    let waiting = arrive(&mut vm, 1..=1);
    vm.deliver_queue_events().unwrap();
    vm.advance_time(std::time::Duration::from_millis(50))
        .unwrap();
    let late = arrive(&mut vm, 2..=2);
    vm.deliver_queue_events().unwrap();

    // The callout times out at 250ms: the waiting requests go out, with only
    // what is left of the oldest one's timeout (150ms waited of 250ms).
    vm.advance_time(std::time::Duration::from_millis(100))
        .unwrap();
    vm.time_out_call(token).unwrap();
    assert_eq!(vm.local_reply(first.id).map(|r| r.status), Some(503));
    let next = only_pending_call(&vm);
    assert_eq!(batch_of(&next).checks.len(), 2);
    assert_eq!(next.timeout_ms, 100);

    // That one hangs too and times out after its 100ms: both requests get the
    // failure mode 250ms and 200ms after they arrived. One that arrived in the
    // meantime still has its whole timeout, and goes out next.
    vm.advance_time(std::time::Duration::from_millis(100))
        .unwrap();
    let after = arrive(&mut vm, 3..=3);
    vm.deliver_queue_events().unwrap();
    vm.time_out_call(next.token).unwrap();
    for req in waiting.iter().chain(&late) {
        assert_eq!(vm.local_reply(req.id).map(|r| r.status), Some(503));
    }
    // The newest request still has its whole timeout: it goes out now.
    let last = only_pending_call(&vm);
    assert_eq!(first_keys(&last), [key(3)]);
    assert!(vm.local_reply(after[0].id).is_none());
}

#[test]
fn requests_that_waited_out_their_timeout_are_failed_without_waiting_for_the_callout() {
    let (mut vm, _first, _token) = one_in_flight(&config("deny"));
    let waiting = arrive(&mut vm, 1..=1);
    vm.deliver_queue_events().unwrap();
    // 250ms later the callout ahead still hangs; the next arrival wakes the root,
    // which fails the request that has waited its whole timeout.
    vm.advance_time(std::time::Duration::from_millis(250))
        .unwrap();
    let newcomer = arrive(&mut vm, 2..=2);
    vm.deliver_queue_events().unwrap();
    assert_eq!(vm.local_reply(waiting[0].id).map(|r| r.status), Some(503));
    assert!(
        vm.local_reply(newcomer[0].id).is_none(),
        "the newcomer still waits"
    );
    assert_eq!(metric(&vm, "failure_mode_denied"), 1);
}

/// What Envoy answers for a limitd it could not connect to.
const CONNECT_FAILURE: &str = "upstream connect error or disconnect/reset before headers. \
     reset reason: remote connection failure, transport failure reason: delayed connect error: Connection refused";

#[test]
fn a_batch_that_could_not_reach_limitd_is_sent_again_once() {
    let (mut vm, first, token) = one_in_flight(&config("deny"));
    vm.respond_to_call(
        token,
        &[(":status", "503"), ("content-type", "text/plain")],
        CONNECT_FAILURE.as_bytes(),
    )
    .unwrap();
    // Sent again at once (to whichever limitd Envoy picks), not failed.
    assert!(vm.local_reply(first.id).is_none());
    let again = only_pending_call(&vm);
    assert_eq!(first_keys(&again), [key(0)]);
    assert_eq!(metric(&vm, "callout_retries"), 1);
    vm.respond_to_call(again.token, &[(":status", "200")], &answer(true, 0))
        .unwrap();
    assert!(vm.request_resumed(first.id));
    assert_eq!(metric(&vm, "callout_errors"), 0);
}

#[test]
fn a_second_connect_failure_or_a_reset_after_sending_is_not_retried() {
    let (mut vm, first, token) = one_in_flight(&config("deny"));
    vm.respond_to_call(token, &[(":status", "503")], CONNECT_FAILURE.as_bytes())
        .unwrap();
    let again = only_pending_call(&vm);
    vm.respond_to_call(
        again.token,
        &[(":status", "503")],
        CONNECT_FAILURE.as_bytes(),
    )
    .unwrap();
    assert_eq!(vm.local_reply(first.id).map(|r| r.status), Some(503));
    assert!(vm.pending_calls().is_empty());

    // A reset after the check was sent may have been counted: never sent twice.
    let second = get_from(&mut vm, "/limited_endpoint", &ip(7));
    vm.deliver_queue_events().unwrap();
    let call = only_pending_call(&vm);
    let terminated = "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
    vm.respond_to_call(call.token, &[(":status", "503")], terminated.as_bytes())
        .unwrap();
    assert_eq!(vm.local_reply(second.id).map(|r| r.status), Some(503));
    assert!(vm.pending_calls().is_empty());
}
