//! The proxy-wasm glue: Envoy's callbacks in, host calls out, nothing else.
//!
//! Every host call here goes through `proxy_wasm::hostcalls` and has its
//! `Result` handled: the SDK's convenience trait methods `unwrap`, and a panic
//! traps the VM (which `failure_policy` then turns into 503s for a moment).
//!
//! # Group commit
//!
//! A callout's answer goes to the context that dispatched it, and Envoy
//! cancels a callout whose context is destroyed; so a callout shared by many
//! requests is dispatched by the worker's root context. A request with a check
//! queues it in the VM's [`Batcher`], wakes the root through a shared queue
//! registered under a name unique to this VM (a timestamp is not unique: two
//! workers read the same clock), and pauses. The root sends what waits as one
//! `POST /v2/checks` as soon as no callout is in flight, and on the answer
//! resumes or answers each request after making it the effective context.
//! Requests whose client went away are skipped: the set of live contexts is
//! kept as each request's context is dropped, because acting on a context the
//! SDK has dropped traps.
//!
//! The `Batcher` is shared through `Rc<RefCell<..>>` between the contexts of
//! one VM (one thread). No borrow is held across a host call: a local reply
//! re-enters the filter (`on_http_response_headers`) synchronously.

use std::time::SystemTime;

use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

use self::root::Root;

mod metrics;
mod request;
mod root;
mod vm;

// `proxy_wasm::main!` expands to a `#[no_mangle] extern "C"` export that calls
// `__wasm_call_ctors` in an `unsafe` block, the one unsafe code the filter
// needs. An attribute on the macro call itself is ignored, so the call sits in
// a module of its own.
#[allow(unsafe_code)]
mod entry {
    use std::collections::HashMap;

    use proxy_wasm::traits::RootContext;
    use proxy_wasm::types::LogLevel;

    use super::{log, Root};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        std::panic::set_hook(Box::new(|info| log(LogLevel::Critical, &format!("ratelimit: panic: {info}"))));
        proxy_wasm::set_root_context(|root_id| -> Box<dyn RootContext> {
            Box::new(Root { root_id, vm: None, retired: Vec::new(), queue: None, sent_at: HashMap::new() })
        });
    }}
}

/// The shared-data key of the counter that gives each VM a unique queue name.
const VM_SEQUENCE_KEY: &str = "ratelimit.vm_sequence";

fn log(level: LogLevel, message: &str) {
    // Nothing useful can be done if logging itself fails.
    let _ = hostcalls::log(level, message);
}

fn now() -> Option<SystemTime> {
    hostcalls::get_current_time().ok()
}

/// The proxy's clock in milliseconds since the epoch (0 if it cannot be read).
fn now_ms() -> u64 {
    now().and_then(epoch_ms).unwrap_or(0)
}

fn epoch_ms(time: SystemTime) -> Option<u64> {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok())
}
