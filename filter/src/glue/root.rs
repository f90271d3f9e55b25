//! The root context of a worker's VM: configuration, and the batched callouts.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::SystemTime;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel, Status};

use crate::batch::{encode_batch, remaining_ms, Batcher, Live};
use crate::config::Policy;
use crate::deny_cache::DenyCache;
use crate::lease::Slices;
use crate::log_limit::LogLimit;
use crate::verdict::{CalloutError, Decision};

use super::metrics::{Metrics, FLUSH_PERIOD};
use super::request::Request;
use super::vm::{SharedCounters, Vm};
use super::{log, now, now_ms, VM_SEQUENCE_KEY};

pub(super) struct Root {
    pub(super) root_id: u32,
    pub(super) vm: Option<Rc<Vm>>,
    /// The VMs of earlier configurations that still have checks waiting or in
    /// flight: they are sent and answered as before, and dropped once idle.
    pub(super) retired: Vec<Rc<Vm>>,
    /// The queue that wakes this root, under a name unique to this VM.
    pub(super) queue: Option<u32>,
    /// When each batch callout in flight was sent, for the latency histogram.
    pub(super) sent_at: HashMap<u32, Option<SystemTime>>,
}

impl Root {
    /// Registers this VM's wake-up queue under `ratelimit.wake.<n>`, with `n`
    /// taken from a counter in shared data (compare-and-swap).
    pub(super) fn register_queue(&self) -> Option<u32> {
        for _ in 0..64 {
            let (value, cas) = hostcalls::get_shared_data(VM_SEQUENCE_KEY).ok()?;
            let n: u64 = value
                .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(0);
            match hostcalls::set_shared_data(
                VM_SEQUENCE_KEY,
                Some((n + 1).to_string().as_bytes()),
                cas,
            ) {
                Ok(()) => {
                    return hostcalls::register_shared_queue(&format!("ratelimit.wake.{n}")).ok()
                }
                Err(Status::CasMismatch) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// Sends what waits, for the current configuration and the retired ones,
    /// and forgets retired ones with nothing left to do.
    pub(super) fn pump(&mut self) {
        if let Some(vm) = self.vm.clone() {
            self.pump_vm(&vm);
        }
        for vm in self.retired.clone() {
            self.pump_vm(&vm);
        }
        self.retired.retain(|vm| !vm.batcher.borrow().is_idle());
    }

    /// Sends what waits in `vm`, as long as the bound on callouts in flight
    /// allows.
    ///
    /// Every request gets at most the configured timeout in all: those that
    /// waited that long behind a hung callout get the failure mode now, and a
    /// batch's callout may only take what is left of its oldest request's.
    fn pump_vm(&mut self, vm: &Rc<Vm>) {
        let now_ms = now_ms();
        let timeout_ms = vm.policy.timeout_ms;
        let expired = vm
            .batcher
            .borrow_mut()
            .take_expired(&vm.live.borrow(), now_ms, timeout_ms);
        if !expired.is_empty() {
            let decisions = vm.failed_live(expired, &CalloutError::Expired);
            self.deliver(vm, decisions);
        }
        loop {
            let Some(batch) = vm.batcher.borrow_mut().next_batch(&vm.live.borrow()) else {
                return;
            };
            let budget_ms = remaining_ms(&batch, now_ms, timeout_ms);
            match vm.dispatch(&encode_batch(&batch, budget_ms), budget_ms) {
                Ok(token) => {
                    self.sent_at.insert(token, now());
                    vm.batcher.borrow_mut().sent(token, batch);
                }
                Err(e) => {
                    let decisions = vm.failed_live(batch, &e);
                    self.deliver(vm, decisions);
                }
            }
        }
    }

    /// Resumes or answers each request, as its own effective context.
    pub(super) fn deliver(&self, vm: &Vm, decisions: Vec<(u32, Decision)>) {
        for (context_id, decision) in decisions {
            if !vm.live.borrow().contains(context_id) {
                continue;
            }
            if hostcalls::set_effective_context(context_id).is_err() {
                continue; // Gone on the host's side too.
            }
            let (_, headers) = vm.carry_out(decision, true);
            vm.live.borrow_mut().set_headers(context_id, headers);
        }
        let _ = hostcalls::set_effective_context(self.root_id);
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        // The batch is the current configuration's, or a retired one's.
        let Some((vm, batch)) = self
            .vm
            .iter()
            .chain(&self.retired)
            .find_map(|vm| Some((vm.clone(), vm.batcher.borrow_mut().finished(token_id)?)))
        else {
            return;
        };
        let sent = self.sent_at.remove(&token_id).flatten();
        let decisions = vm.settle(batch, num_headers, body_size, sent);
        self.deliver(&vm, decisions);
        self.pump();
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // The main thread's VM starts before the workers' and creates the counter;
        // a missing key's first write is unconditional, so workers must not race on it.
        if let Ok((None, _)) = hostcalls::get_shared_data(VM_SEQUENCE_KEY) {
            let _ = hostcalls::set_shared_data(VM_SEQUENCE_KEY, Some(b"0"), None);
        }
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                log(
                    LogLevel::Critical,
                    &format!("ratelimit: cannot read the plugin configuration: {status:?}"),
                );
                return false;
            }
        };
        let policy = match Policy::from_json(&bytes) {
            Ok(policy) => policy,
            Err(e) => {
                log(
                    LogLevel::Critical,
                    &format!("ratelimit: invalid plugin configuration: {e}"),
                );
                return false;
            }
        };
        // The timer that adds deferred counts to Envoy's counters (see `metrics`) and returns
        // idle lease slices; without one, everything is counted at once and nothing sliced.
        let timer = match hostcalls::set_tick_period(FLUSH_PERIOD) {
            Ok(()) => true,
            Err(status) => {
                log(
                    LogLevel::Warn,
                    &format!("ratelimit: no timer, every count goes to Envoy at once: {status:?}"),
                );
                false
            }
        };
        if policy.batch.enabled && self.queue.is_none() {
            self.queue = self.register_queue();
            if self.queue.is_none() {
                log(
                    LogLevel::Error,
                    "ratelimit: no wake-up queue; checking each request with its own callout",
                );
            }
        }
        log(
            LogLevel::Info,
            &format!(
                "ratelimit: configured {} rule(s), limitd cluster {:?}, timeout {}ms, batching {}",
                policy.rules.len(),
                policy.limitd_cluster,
                policy.timeout_ms,
                if policy.batch.enabled && self.queue.is_some() {
                    "on"
                } else {
                    "off"
                },
            ),
        );
        let batcher = Batcher::new(policy.batch.max_checks, policy.batch.max_in_flight);
        // Checks of the previous configuration still waiting or in flight keep
        // their VM until they are answered: none is dropped or left hanging.
        if let Some(previous) = self.vm.take() {
            // The new configuration's requests spend from the blocks, not from these slices.
            previous
                .slices
                .borrow_mut()
                .return_idle(&SharedCounters, true);
            if !previous.batcher.borrow().is_idle() {
                self.retired.push(previous);
            }
        }
        let names: Vec<String> = policy.rules.iter().map(|r| r.name.clone()).collect();
        self.vm = Some(Rc::new(Vm {
            policy,
            metrics: Metrics::define(&names, timer),
            batcher: RefCell::new(batcher),
            live: RefCell::new(Live::default()),
            deny_cache: RefCell::new(DenyCache::default()),
            failure_log: RefCell::new(LogLimit::default()),
            // Idle slices go back on the timer: without one, every unit comes from the block.
            slices: RefCell::new(if timer {
                Slices::default()
            } else {
                Slices::none()
            }),
        }));
        true
    }

    /// Every [`FLUSH_PERIOD`]: deferred counts go to Envoy, idle lease slices back to their
    /// blocks.
    fn on_tick(&mut self) {
        for vm in self.vm.iter().chain(&self.retired) {
            vm.metrics.flush();
            vm.slices.borrow_mut().return_idle(&SharedCounters, false);
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        for vm in self.vm.iter().chain(&self.retired) {
            vm.batcher.borrow_mut().wake_handled();
        }
        self.pump();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        let queue = if vm.policy.batch.enabled {
            self.queue
        } else {
            None
        };
        Some(Box::new(Request {
            context_id,
            vm,
            queue,
            direct: None,
            response_headers: Vec::new(),
            sent_at: None,
            live: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
