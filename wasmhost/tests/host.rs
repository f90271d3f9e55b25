//! The test host itself, checked on the real module: traps surface with the
//! module's panic message and poison the VM; reconfiguration takes effect.

mod common;

use common::host;
use wasmhost::{Action, HostError, LogLevel};

const RULE: &str = r#"{"rules": [{"name": "all", "limit": {"requests": 1, "window": "1s"}}]}"#;

#[test]
fn a_trap_is_reported_with_the_panic_message_and_poisons_the_vm() {
    let host = host();
    let mut vm = host.instantiate().unwrap();
    assert!(vm.vm_start().unwrap());
    assert!(
        !vm.configure("{}").unwrap(),
        "a configuration without rules is refused"
    );

    // With no policy the filter creates no HTTP context, and the SDK panics on that.
    let err = vm
        .request()
        .header(":path", "/")
        .send_headers()
        .unwrap_err();
    let HostError::Trap { call, logs, .. } = &err else {
        panic!("expected a trap, got {err}");
    };
    assert!(call.starts_with("proxy_on_context_create"), "{call}");
    assert!(
        logs.iter()
            .any(|l| l.level == LogLevel::Critical && l.message.contains("panic")),
        "{err}"
    );
    assert!(vm.trap().is_some());
    let again = vm
        .request()
        .header(":path", "/")
        .send_headers()
        .unwrap_err();
    assert!(matches!(again, HostError::Poisoned { .. }), "{again}");
}

#[test]
fn a_reconfiguration_replaces_the_rules() {
    let mut host = host();
    host.cluster("limitd");
    let mut vm = host.start(r#"{"rules": []}"#).unwrap();
    let req = vm.request().header(":path", "/").send_headers().unwrap();
    assert_eq!(req.action, Action::Continue);

    assert!(vm.configure(RULE).unwrap());
    let req = vm.request().header(":path", "/").send_headers().unwrap();
    assert_eq!(req.action, Action::Pause);
    assert_eq!(vm.pending_calls().len(), 1);

    // A refused update leaves the VM running with the rules it had.
    assert!(!vm.configure("{").unwrap());
    let req = vm.request().header(":path", "/").send_headers().unwrap();
    assert_eq!(req.action, Action::Pause);
}

#[test]
fn the_module_starts_with_wasi_stubbed_and_prints_nothing() {
    let vm = host().start(RULE).unwrap();
    assert!(vm.stdout().is_empty() && vm.stderr().is_empty());
    assert!(
        vm.logs()
            .iter()
            .any(|l| l.message.contains("configured 1 rule")),
        "{:?}",
        vm.logs()
    );
}
