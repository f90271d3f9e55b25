//! What the built `ratelimit.wasm` itself executes for the requests it decides without a
//! callout, counted in the fake host's fuel (about one unit per wasm instruction): the same on
//! every machine and run, unlike the time Envoy takes, so a change that makes these paths do
//! more work shows here even when the benchmark's noise hides it.
//!
//! The bounds are a quarter above what the paths cost when they were set (each test prints its
//! figure: `cargo test -p wasmhost --test cost -- --nocapture`): 48.1k for an admission and 62.6k
//! for a denial, down from 67.9k and 100.4k before the rate-limit headers and the denial's body
//! were written without `core::fmt` and serde, and before these requests stayed out of the
//! batcher's live set, so a change that undoes that fails here.

mod common;

use common::filter::{batch_answer, batch_of, get_from};
use common::host;
use protocol::{CheckResponse, HitResult};
use wasmhost::{Request, Vm};

/// The benchmark's lease rule (`xtask/src/bench/scenarios.rs`) after the shipped rules, which
/// every request is matched against too.
const CONFIG: &str = r#"{
    "limitd_cluster": "limitd",
    "timeout": "250ms",
    "rules": [
        { "name": "bench_leased", "match": { "path": { "exact": "/" } }, "key": [ "client_ip" ],
          "limit": { "requests": 1000000000000, "window": "1h" }, "lease": { "max_units": 1000 } },
        { "name": "limited_endpoint", "match": { "path": { "prefix": "/limited_endpoint" } },
          "limit": { "requests": 1, "window": "1h" } },
        { "name": "api_sliding", "match": { "path": { "prefix": "/api/sliding" } },
          "limit": { "requests": 5, "window": "10s", "algorithm": "sliding_window" } },
        { "name": "api_gcra", "match": { "path": { "prefix": "/api/gcra" } },
          "limit": { "requests": 2, "window": "1s", "algorithm": "gcra", "burst": 5 } },
        { "name": "api_key", "match": { "path": { "prefix": "/api/" } },
          "key": [ { "header": "x-api-key" } ], "missing": "skip",
          "limit": { "requests": 20, "window": "1m" } }
    ]
}"#;

/// The bounds are for the module as `cargo xtask build` makes it, shrunk by `wasm-opt`: without
/// it the same code runs about a third more instructions (65.5k and 85.4k).
const UNOPTIMIZED: &str = " (is the module built without wasm-opt? `cargo xtask build` runs it \
                           when binaryen is installed)";

/// Requests measured per path, after the first few (which fill the VM's maps and the block).
const MEASURED: usize = 200;

/// Answers every callout: a lease of what was asked (the bench's rule is never near its limit),
/// a denial for a check of the 1-per-hour rule.
fn answer_all(vm: &mut Vm) {
    while let Some(call) = vm.pending_calls().pop() {
        let batch = batch_of(&call);
        let hit = &batch.checks[0].hits[0];
        let allowed = hit.limit > 1;
        let result = HitResult {
            allowed,
            limit: hit.limit,
            remaining: if allowed { hit.limit / 2 } else { 0 },
            reset_ms: 1_800_000,
            retry_after_ms: if allowed { 0 } else { 1_800_000 },
            leased: if allowed { hit.lease } else { 0 },
            lease_ms: if allowed { 1_800_000 } else { 0 },
        };
        let body = batch_answer(vec![CheckResponse {
            allowed,
            hits: vec![result],
        }]);
        vm.respond_to_call(call.token, &[(":status", "200")], &body)
            .unwrap();
    }
}

/// One request for `path` from start to end, as Envoy drives it; the local reply, if any, runs
/// through the response callback inside the host.
fn one_request(vm: &mut Vm, path: &str) -> Request {
    let request = get_from(vm, path, "10.0.0.1");
    if request.action == wasmhost::Action::Continue {
        vm.response_headers(request.id, &[(":status", "200")])
            .unwrap();
    }
    vm.finish(request.id).unwrap();
    request
}

/// The median fuel of [`MEASURED`] requests for `path` decided without a callout, each checked
/// with `decided`.
fn fuel_per_request(vm: &mut Vm, path: &str, decided: impl Fn(&Vm, Request) -> bool) -> u64 {
    // The first requests go to limitd (the lease, the denial), and fill the VM's tables.
    for _ in 0..3 {
        let request = get_from(vm, path, "10.0.0.1");
        answer_all(vm);
        vm.finish(request.id).unwrap();
    }
    let mut fuel = Vec::with_capacity(MEASURED);
    while fuel.len() < MEASURED {
        let before = vm.fuel_used();
        let request = one_request(vm, path);
        let used = vm.fuel_used() - before;
        if vm.pending_calls().is_empty() {
            assert!(decided(vm, request), "{path}: not decided inside the VM");
            fuel.push(used);
        } else {
            // A background refill went out with this one: not what is measured.
            answer_all(vm);
        }
    }
    fuel.sort_unstable();
    fuel[fuel.len() / 2]
}

#[test]
fn an_admission_from_a_lease_block_runs_few_instructions() {
    let mut vm = host().start(CONFIG).unwrap();
    let fuel = fuel_per_request(&mut vm, "/", |vm, request| {
        vm.request_forwarded(request)
            && vm
                .context(request.id)
                .is_some_and(|c| c.response_headers.get("ratelimit").is_some())
    });
    println!("an admission from a lease block: {fuel} fuel");
    assert!(
        fuel < 60_000,
        "an admission from a lease block: {fuel} fuel{UNOPTIMIZED}"
    );
}

#[test]
fn a_denial_from_the_deny_cache_runs_few_instructions() {
    let mut vm = host().start(CONFIG).unwrap();
    let fuel = fuel_per_request(&mut vm, "/limited_endpoint", |vm, request| {
        vm.local_reply(request.id).is_some_and(|r| r.status == 429)
    });
    println!("a denial from the deny cache: {fuel} fuel");
    assert!(
        fuel < 78_000,
        "a denial from the deny cache: {fuel} fuel{UNOPTIMIZED}"
    );
}
