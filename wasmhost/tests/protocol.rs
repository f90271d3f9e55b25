//! The check protocol as the built `ratelimit.wasm` speaks it: one result per
//! check, only the requests whose own check failed get their failure mode,
//! answers from a newer limitd are read, and a reconfiguration keeps the
//! checks already in flight.

mod common;

use common::filter::{config, get_from, metric, only_pending_call, result};
use common::host;
use protocol::{BatchResponse, CheckResult, ErrorKind};
use wasmhost::{Request, Vm};

/// limitd answers callout `token` with `results`, one per check.
fn respond(vm: &mut Vm, token: u32, results: Vec<CheckResult>) {
    let body = serde_json::to_vec(&BatchResponse { results }).unwrap();
    vm.respond_to_call(token, &[(":status", "200")], &body)
        .unwrap();
}

/// A VM whose first request's own callout is in flight, and three more
/// requests that then went out together in the root's batch (its token).
fn batch_of_three(vm: &mut Vm) -> ([Request; 3], u32) {
    let first = get_from(vm, "/limited_endpoint", "10.0.0.9");
    let own = only_pending_call(vm);
    let reqs = [
        get_from(vm, "/limited_endpoint", "10.0.0.1"),
        get_from(vm, "/limited_endpoint", "10.0.0.2"),
        get_from(vm, "/limited_endpoint", "10.0.0.3"),
    ];
    respond(vm, own.token, vec![CheckResult::from(result(true, 9, 0))]);
    assert!(vm.request_forwarded(first));
    let call = only_pending_call(vm);
    (reqs, call.token)
}

#[test]
fn only_the_check_limitd_could_not_decide_gets_its_failure_mode() {
    for (mode, status) in [("allow", None), ("deny", Some(503))] {
        let mut vm = host().start(config(mode)).unwrap();
        let (reqs, token) = batch_of_three(&mut vm);
        let results = vec![
            CheckResult::from(result(true, 8, 0)),
            CheckResult::Error {
                error: ErrorKind::Timeout,
                detail: "redis did not answer in time".into(),
            },
            CheckResult::from(result(false, 0, 4_000)),
        ];
        respond(&mut vm, token, results);
        assert!(vm.trap().is_none());
        assert!(vm.request_forwarded(reqs[0]), "{mode}");
        assert_eq!(
            vm.local_reply(reqs[2].id).map(|r| r.status),
            Some(429),
            "{mode}"
        );
        match status {
            None => assert!(vm.request_forwarded(reqs[1]), "{mode}"),
            Some(status) => assert_eq!(vm.local_reply(reqs[1].id).map(|r| r.status), Some(status)),
        }
        assert_eq!(metric(&vm, "callout_errors"), 1, "{mode}");
        assert_eq!(metric(&vm, "allowed"), 2, "{mode}");
        assert_eq!(metric(&vm, "denied"), 1, "{mode}");
    }
}

#[test]
fn an_answer_from_a_newer_limitd_with_fields_this_filter_does_not_know_is_read() {
    let mut vm = host().start(config("deny")).unwrap();
    let (reqs, token) = batch_of_three(&mut vm);
    let hit =
        r#"{"allowed":true,"limit":10,"remaining":7,"reset_ms":1000,"retry_after_ms":0,"grant":5}"#;
    let body = format!(
        r#"{{"results":[{{"result":"allowed","hits":[{hit}],"lease_ms":900}},
            {{"result":"allowed","hits":[{hit}]}},{{"result":"allowed","hits":[{hit}]}}],
            "limitd":"9.9"}}"#
    );
    vm.respond_to_call(token, &[(":status", "200")], body.as_bytes())
        .unwrap();
    for req in reqs {
        assert!(vm.request_forwarded(req));
    }
    assert_eq!(metric(&vm, "callout_errors"), 0);
}

#[test]
fn a_reconfiguration_keeps_the_checks_in_flight() {
    let mut vm = host().start(config("deny")).unwrap();
    let (reqs, token) = batch_of_three(&mut vm);
    // New rules arrive for the same root while the batch is out.
    assert!(vm
        .configure(config("allow").replace("\"requests\": 10", "\"requests\": 20"))
        .unwrap());
    let results = vec![
        CheckResult::from(result(true, 8, 0)),
        CheckResult::from(result(false, 0, 1_000)),
        CheckResult::from(result(true, 7, 0)),
    ];
    respond(&mut vm, token, results);
    assert!(vm.trap().is_none());
    assert!(vm.request_forwarded(reqs[0]));
    assert_eq!(vm.local_reply(reqs[1].id).map(|r| r.status), Some(429));
    assert!(vm.request_forwarded(reqs[2]));
    // And the new configuration is in force for what comes next.
    let next = get_from(&mut vm, "/limited_endpoint", "10.0.0.4");
    let call = only_pending_call(&vm);
    let sent: protocol::BatchRequest = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(sent.checks[0].hits[0].limit, 20);
    vm.time_out_call(call.token).unwrap();
    assert!(vm.request_forwarded(next), "the new failure mode: allow");
}

#[test]
fn a_retry_time_beyond_what_the_rule_can_produce_is_capped() {
    // The demo rule: 10 per 60 s, fixed window. A confused or hostile limitd
    // claims the client must wait some 585,000 years.
    let mut vm = host().start(config("allow")).unwrap();
    let first = get_from(&mut vm, "/limited_endpoint", "10.0.0.1");
    let call = only_pending_call(&vm);
    respond(
        &mut vm,
        call.token,
        vec![CheckResult::from(result(false, 0, u64::MAX / 1000))],
    );
    let reply = vm.local_reply(first.id).expect("a denial");
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers.get("retry-after").as_deref(), Some("60"));
    // The deny cache holds the key for one window at most: after it, a callout again.
    let cached = get_from(&mut vm, "/limited_endpoint", "10.0.0.1");
    assert!(vm.pending_calls().is_empty(), "denied from the cache");
    assert_eq!(vm.local_reply(cached.id).map(|r| r.status), Some(429));
    vm.advance_time(std::time::Duration::from_secs(60)).unwrap();
    let later = get_from(&mut vm, "/limited_endpoint", "10.0.0.1");
    let call = only_pending_call(&vm);
    respond(
        &mut vm,
        call.token,
        vec![CheckResult::from(result(true, 9, 0))],
    );
    assert!(vm.request_forwarded(later));
}

#[test]
fn an_outage_is_logged_once_per_interval_with_a_count_of_the_rest() {
    let mut vm = host().start(config("allow")).unwrap();
    let failures = |vm: &Vm| {
        vm.logs()
            .iter()
            .filter(|l| l.message.contains("failure mode applies"))
            .map(|l| l.message.clone())
            .collect::<Vec<_>>()
    };
    for i in 0..50 {
        let req = get_from(&mut vm, "/limited_endpoint", &format!("10.0.1.{i}"));
        let call = only_pending_call(&vm);
        vm.time_out_call(call.token).unwrap();
        assert!(vm.request_forwarded(req));
    }
    assert_eq!(failures(&vm).len(), 1, "{:?}", failures(&vm));
    vm.advance_time(std::time::Duration::from_secs(10)).unwrap();
    let req = get_from(&mut vm, "/limited_endpoint", "10.0.2.1");
    let call = only_pending_call(&vm);
    vm.time_out_call(call.token).unwrap();
    assert!(vm.request_forwarded(req));
    let lines = failures(&vm);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[1].ends_with("(49 more like this since the last)"),
        "{}",
        lines[1]
    );
    assert_eq!(metric(&vm, "callout_errors"), 51);
}
