//! Quota leases in the built `ratelimit.wasm`: the workers (VMs) of one Envoy spend one shared
//! block per key, without callouts, never more units than limitd leased; the block is refilled
//! in the background before it runs out, and the request after the last unit goes to limitd.

mod common;

use common::filter::{batch_of, get_from, metric};
use common::host;
use protocol::{BatchResponse, CheckResult, HitResult};
use wasmhost::Vm;

const CONFIG: &str = r#"{
    "limitd_cluster": "limitd",
    "timeout": "250ms",
    "rules": [{
        "name": "hot",
        "match": { "path": { "prefix": "/hot" } },
        "key": [ { "constant": "all" } ],
        "limit": { "requests": 1000, "window": "60s" },
        "lease": { "max_units": 10 }
    }]
}"#;

/// An allowed answer to a one-check batch, leasing `leased` units.
fn leased(leased: u64, remaining: u64) -> Vec<u8> {
    let hit = HitResult {
        allowed: true,
        limit: 1000,
        remaining,
        reset_ms: 30_000,
        retry_after_ms: 0,
        leased,
        lease_ms: 30_000,
    };
    serde_json::to_vec(&BatchResponse {
        results: vec![CheckResult::Allowed { hits: vec![hit] }],
    })
    .unwrap()
}

/// Every callout not yet answered, on either worker.
fn pending(vms: &[&Vm]) -> usize {
    vms.iter().map(|vm| vm.pending_calls().len()).sum()
}

#[test]
fn two_workers_spend_one_block_and_never_more_than_was_leased() {
    let host = host();
    let mut a = host.start(CONFIG).unwrap();
    let mut b = host.start(CONFIG).unwrap();

    // The first request finds no block: it is checked, asking for a lease of the rule's size.
    let first = get_from(&mut a, "/hot", "10.0.0.1");
    let call = a.pending_calls().pop().expect("a check");
    let batch = batch_of(&call);
    assert_eq!(batch.checks[0].hits[0].lease, 10);
    assert_eq!(batch.checks[0].hits[0].cost, 1);
    a.respond_to_call(call.token, &[(":status", "200")], &leased(6, 993))
        .unwrap();
    assert!(a.request_forwarded(first));

    // Six units, spent by both workers alternately, with no callout of their own.
    for i in 0..6 {
        let vm = if i % 2 == 0 { &mut b } else { &mut a };
        let request = get_from(vm, "/hot", "10.0.0.1");
        assert!(vm.request_forwarded(request), "request {i} from the block");
    }
    // Admissions from a block are counted at each worker's next timer tick (every 100 ms),
    // not one host call at a time: the first request, checked by limitd, is counted at once.
    assert_eq!(a.tick_period_ms(), 100);
    assert_eq!(metric(&a, "lease_admitted"), 0);
    assert_eq!(metric(&a, "allowed"), 1);
    a.tick().unwrap();
    assert_eq!(metric(&a, "lease_admitted"), 3, "worker a's three");
    assert_eq!(metric(&a, "allowed"), 4);
    b.tick().unwrap();
    assert_eq!(metric(&a, "lease_admitted"), 6);
    assert_eq!(metric(&a, "allowed"), 7);
    assert_eq!(a.metric("ratelimit.rule.hot.lease_admitted"), Some(6));
    assert_eq!(a.metric("ratelimit.rule.hot.allowed"), Some(7));
    // A tick with nothing deferred adds nothing.
    a.tick().unwrap();
    assert_eq!(metric(&a, "lease_admitted"), 6);
    assert_eq!(metric(&a, "lease_units"), 6);

    // Below half of the block (6 -> 2 left after the 4th), one refill went out in the
    // background: a check of cost 0 asking to top the block up.
    assert_eq!(metric(&a, "lease_refills"), 1);
    let (refill_vm, refill) = if let Some(call) = a.pending_calls().pop() {
        (&mut a, call)
    } else {
        let call = b.pending_calls().pop().expect("the refill");
        (&mut b, call)
    };
    let hit = batch_of(&refill).checks[0].hits[0].clone();
    assert_eq!((hit.cost, hit.lease), (0, 8));
    // limitd has nothing more to lease.
    refill_vm
        .respond_to_call(refill.token, &[(":status", "200")], &leased(0, 993))
        .unwrap();
    assert_eq!(pending(&[&a, &b]), 0);

    // The block is empty: the next request waits for limitd, and asks for a lease again.
    let seventh = get_from(&mut b, "/hot", "10.0.0.1");
    assert!(!b.request_forwarded(seventh));
    let call = b.pending_calls().pop().expect("a check");
    assert_eq!(batch_of(&call).checks[0].hits[0].lease, 10);
    assert_eq!(metric(&a, "lease_admitted"), 6);
}

/// [`CONFIG`] with blocks large enough to be sliced (a quarter of 40 is 10 units).
fn sliced_config() -> String {
    let config = CONFIG.replace(r#""max_units": 10"#, r#""max_units": 40"#);
    assert_ne!(config, CONFIG);
    config
}

/// Sends one request to `vm`: whether it was admitted without a callout. A background refill
/// it set off is answered at once with nothing more to lease.
fn admitted_from_lease(vm: &mut Vm) -> bool {
    let request = get_from(vm, "/hot", "10.0.0.1");
    let forwarded = vm.request_forwarded(request);
    if forwarded {
        for call in vm.pending_calls() {
            assert_eq!(
                batch_of(&call).checks[0].hits[0].cost,
                0,
                "only refills go out"
            );
            vm.respond_to_call(call.token, &[(":status", "200")], &leased(0, 900))
                .unwrap();
        }
    }
    forwarded
}

#[test]
fn sliced_workers_admit_every_leased_unit_once_and_idle_slices_go_back_on_the_timer() {
    let host = host();
    let mut a = host.start(sliced_config()).unwrap();
    let mut b = host.start(sliced_config()).unwrap();
    let first = get_from(&mut a, "/hot", "10.0.0.1");
    let call = a.pending_calls().pop().expect("a check");
    assert_eq!(batch_of(&call).checks[0].hits[0].lease, 40);
    a.respond_to_call(call.token, &[(":status", "200")], &leased(40, 900))
        .unwrap();
    assert!(a.request_forwarded(first));

    // Worker a takes a quarter of the block and spends it with no shared-data write.
    let slot = host_slot(&a);
    assert!(admitted_from_lease(&mut a));
    let version = a.shared_data(&slot).expect("the block").1;
    for _ in 0..9 {
        assert!(admitted_from_lease(&mut a));
    }
    assert_eq!(
        a.shared_data(&slot).unwrap().1,
        version,
        "spent from a's slice"
    );

    // b spends until the block and its own slices run dry; a still holds a slice of 7.
    assert!(admitted_from_lease(&mut a));
    let mut from_b = 0;
    while admitted_from_lease(&mut b) {
        from_b += 1;
        assert!(from_b <= 40, "b admitted more than was leased");
    }
    assert_eq!(
        from_b, 23,
        "40 less a's 10 and the slice of 7 it took with its 11th"
    );
    b.pending_calls().into_iter().for_each(|call| {
        b.respond_to_call(call.token, &[(":status", "429")], b"")
            .unwrap();
    });

    // a's slice, idle for the timer's idle time, goes back to the block, where b spends it.
    a.advance_time(std::time::Duration::from_millis(300))
        .unwrap();
    let mut later = 0;
    while admitted_from_lease(&mut b) {
        later += 1;
        assert!(later <= 6, "more than a's slice came back");
    }
    assert_eq!(later, 6, "a's six unspent units");
}

/// The shared-data key of the one lease block the test uses (the only `ratelimit.lease.*` of
/// the filter's 4,096 slots).
fn host_slot(vm: &Vm) -> String {
    (0..4096)
        .map(|slot| format!("ratelimit.lease.{slot}"))
        .find(|key| vm.shared_data(key).is_some())
        .expect("a lease block in shared data")
}
