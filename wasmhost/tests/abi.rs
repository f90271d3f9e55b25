//! The host calls behind the filter's group commit (shared queues, effective
//! context, callouts from the root context, ticks, shared data with CAS,
//! gauges), checked across the ABI with a small guest written in WAT of its own:
//! the filter's pattern (`filter/src/glue/mod.rs`, "Group commit") in a few
//! dozen instructions, so the fake host's side of each call is tested apart
//! from the filter.

use std::time::Duration;

use wasmhost::{Action, Headers, Host, Vm};

/// The guest: each request enqueues its context id and pauses; the root drains
/// the queue on `proxy_on_queue_ready` and sends one callout for all; its
/// answer resumes each waiting request through `proxy_set_effective_context`,
/// skipping those that are gone. `proxy_on_configure` registers the queue,
/// asks for a 10 ms tick, defines the metrics and exercises shared-data CAS.
fn guest() -> Vec<u8> {
    let headers = Headers::from_pairs(&[
        (":method", "POST"),
        (":path", "/v2/checks"),
        (":authority", "limitd"),
    ])
    .encode();
    let escaped: String = headers.iter().map(|b| format!("\\{b:02x}")).collect();
    let text = r#"
(module
  (import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_effective (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $record (param i32 i64) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_data (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_data (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; 128: a context id to enqueue; 200/204/208: out-parameters; 1024: waiting ids.
  (global $heap (mut i32) (i32.const 8192))
  (global $queue (mut i32) (i32.const 0))
  (global $ticks (mut i32) (i32.const 0))
  (global $waiting (mut i32) (i32.const 0))
  (global $in_flight (mut i32) (i32.const 0))
  (data (i32.const 16) "q")
  (data (i32.const 32) "ticks")
  (data (i32.const 48) "cas_mismatch")
  (data (i32.const 64) "k")
  (data (i32.const 72) "v1v2")
  (data (i32.const 80) "read_value")
  (data (i32.const 96) "limitd")
  (data (i32.const 256) "HEADERS")

  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap
      (i32.and (i32.add (i32.add (global.get $heap) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.shr_u (local.get $size) (i32.const 16)) (i32.const 1))))))
    (local.get $ptr))

  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))

  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (local $cas i32)
    (drop (call $register (i32.const 16) (i32.const 1) (i32.const 208)))
    (global.set $queue (i32.load (i32.const 208)))
    (drop (call $set_tick (i32.const 10)))
    (drop (call $define (i32.const 0) (i32.const 32) (i32.const 5) (i32.const 208)))
    (global.set $ticks (i32.load (i32.const 208)))
    ;; Shared data: write "v1", read it back with its CAS, fail with a stale
    ;; CAS (the status goes to gauge cas_mismatch), succeed writing "v2" with the right one.
    (drop (call $set_data (i32.const 64) (i32.const 1) (i32.const 72) (i32.const 2) (i32.const 0)))
    (drop (call $get_data (i32.const 64) (i32.const 1) (i32.const 200) (i32.const 204) (i32.const 208)))
    (local.set $cas (i32.load (i32.const 208)))
    (drop (call $define (i32.const 1) (i32.const 80) (i32.const 10) (i32.const 208)))
    (drop (call $record (i32.load (i32.const 208))
      (i64.extend_i32_u (i32.load16_u (i32.load (i32.const 200))))))
    (drop (call $define (i32.const 1) (i32.const 48) (i32.const 12) (i32.const 208)))
    (drop (call $record (i32.load (i32.const 208))
      (i64.extend_i32_u
        (call $set_data (i32.const 64) (i32.const 1) (i32.const 74) (i32.const 2)
          (i32.add (local.get $cas) (i32.const 1))))))
    (drop (call $set_data (i32.const 64) (i32.const 1) (i32.const 74) (i32.const 2) (local.get $cas)))
    (i32.const 1))

  (func (export "proxy_on_tick") (param i32)
    (drop (call $increment (global.get $ticks) (i64.const 1))))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (i32.store (i32.const 128) (local.get $ctx))
    (drop (call $enqueue (global.get $queue) (i32.const 128) (i32.const 4)))
    (i32.const 1))

  (func (export "proxy_on_queue_ready") (param $root i32) (param $queue i32)
    (block $empty
      (loop $next
        (br_if $empty (call $dequeue (local.get $queue) (i32.const 200) (i32.const 204)))
        (i32.store
          (i32.add (i32.const 1024) (i32.mul (global.get $waiting) (i32.const 4)))
          (i32.load (i32.load (i32.const 200))))
        (global.set $waiting (i32.add (global.get $waiting) (i32.const 1)))
        (br $next)))
    (if (i32.and (i32.ne (global.get $waiting) (i32.const 0)) (i32.eqz (global.get $in_flight)))
      (then
        (global.set $in_flight (i32.const 1))
        (drop (call $http_call
          (i32.const 96) (i32.const 6) (i32.const 256) (i32.const HEADERS_LEN)
          (i32.const 1024) (i32.mul (global.get $waiting) (i32.const 4))
          (i32.const 0) (i32.const 0) (i32.const 250) (i32.const 208))))))

  (func (export "proxy_on_http_call_response") (param $ctx i32) (param i32 i32 i32 i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (global.get $waiting)))
        (if (i32.eqz (call $set_effective
              (i32.load (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 4))))))
          (then (drop (call $continue (i32.const 0)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (global.set $waiting (i32.const 0))
    (global.set $in_flight (i32.const 0))
    (drop (call $set_effective (local.get $ctx))))

  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
)"#
    .replace("HEADERS_LEN", &headers.len().to_string())
    .replace("HEADERS", &escaped);
    wat::parse_str(text).unwrap()
}

fn host() -> Host {
    let mut host = Host::from_bytes(&guest()).unwrap();
    host.cluster("limitd");
    host
}

fn start(host: &Host) -> Vm {
    host.start("").unwrap()
}

#[test]
fn a_queue_batches_paused_requests_into_one_callout_from_the_root() {
    let host = host();
    let mut vm = start(&host);
    vm.hold_queue_events(true);
    let requests: Vec<_> = (0..3)
        .map(|_| vm.request().header(":path", "/").send_headers().unwrap())
        .collect();
    assert!(requests.iter().all(|r| r.action == Action::Pause));
    assert_eq!(vm.pending_queue_events(), [1, 1, 1]);
    assert_eq!(vm.queue_len(1), Some(3));

    // The second client goes away before the root gets to run.
    vm.finish(requests[1].id).unwrap();
    assert_eq!(vm.deliver_queue_events().unwrap(), 3);
    assert_eq!(vm.queue_len(1), Some(0));

    let calls = vm.pending_calls();
    assert_eq!(calls.len(), 1, "one callout for the batch");
    let call = &calls[0];
    assert_eq!(call.context_id, vm.root_id());
    assert_eq!(call.cluster, "limitd");
    assert_eq!(call.headers.get(":path").as_deref(), Some("/v2/checks"));
    assert_eq!(call.timeout_ms, 250);
    let ids: Vec<u32> = call
        .body
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(ids, requests.iter().map(|r| r.id).collect::<Vec<_>>());

    // The answer goes to the root, which resumes each live request.
    vm.respond_to_call(call.token, &[(":status", "200")], b"{}")
        .unwrap();
    assert!(vm.request_resumed(requests[0].id));
    assert!(
        !vm.request_resumed(requests[1].id),
        "gone: set_effective_context refused"
    );
    assert!(vm.request_resumed(requests[2].id));
}

#[test]
fn queue_events_are_delivered_at_once_unless_held() {
    let host = host();
    let mut vm = start(&host);
    let req = vm.request().header(":path", "/").send_headers().unwrap();
    assert!(vm.pending_queue_events().is_empty());
    let token = vm.pending_calls()[0].token;
    vm.respond_to_call(token, &[(":status", "200")], b"")
        .unwrap();
    assert!(vm.request_resumed(req.id));
}

#[test]
fn a_queue_belongs_to_the_vm_that_registered_it_last() {
    let host = host();
    let mut first = start(&host);
    let second = start(&host);
    first.request().header(":path", "/").send_headers().unwrap();
    assert!(first.pending_queue_events().is_empty());
    assert_eq!(second.pending_queue_events(), [1]);
    assert!(first.pending_calls().is_empty());
}

#[test]
fn ticks_fire_as_the_clock_advances() {
    let host = host();
    let mut vm = start(&host);
    assert_eq!(vm.tick_period_ms(), 10);
    let before = vm.now_ns();
    assert_eq!(vm.advance_time(Duration::from_millis(35)).unwrap(), 3);
    assert_eq!(vm.now_ns() - before, 35_000_000);
    assert_eq!(vm.metric("ticks"), Some(3));
    assert_eq!(vm.advance_time(Duration::from_millis(5)).unwrap(), 1);
    vm.tick().unwrap();
    assert_eq!(host.metric("ticks"), Some(5));
}

#[test]
fn shared_data_keeps_cas_versions_across_the_abi() {
    let host = host();
    let vm = start(&host);
    // The guest read back "v1" ('v' = 0x76, '1' = 0x31, as a little-endian u16).
    assert_eq!(vm.metric("read_value"), Some(0x3176));
    assert_eq!(vm.metric("cas_mismatch"), Some(8), "a stale CAS is refused");
    let (value, cas) = vm.shared_data("k").unwrap();
    assert_eq!(value, b"v2", "the right CAS is accepted");

    // Another VM of the same host sees the same data, and a write bumps the CAS.
    let other = start(&host);
    assert_eq!(other.shared_data("k").map(|(v, _)| v), Some(b"v2".to_vec()));
    other.set_shared_data("k", "v3");
    let (value, newer) = vm.shared_data("k").unwrap();
    assert_eq!(value, b"v3");
    assert_ne!(newer, cas);
}
