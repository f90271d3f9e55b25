//! [`Vm`]: one instantiated module and its root context, driven through the
//! proxy-wasm lifecycle; the core that every other driver module builds on.
//!
//! Every call into the module goes through [`Vm::call`] (fuel, effective
//! context, trap → poisoned VM) and is followed by [`Vm::settle`], which does
//! what Envoy's event loop would do next: run a local reply through the
//! filter's response callbacks, and deliver queue-ready events.

use wasmi::{Instance, Store, Val};

use crate::error::HostError;
use crate::state::{ContextId, ContextKind, ContextState, HostState, LogEntry, Phase};

/// Fuel for one call into the module: far more than any callback needs, few
/// enough that a looping module fails within seconds.
pub(crate) const FUEL_PER_CALL: u64 = 2_000_000_000;

/// How many log lines a trap error carries.
const TRAP_LOG_LINES: usize = 10;

/// A running VM: the module's instance, its root context and everything the
/// host recorded about it.
pub struct Vm {
    pub(crate) store: Store<HostState>,
    instance: Instance,
    pub(crate) root: ContextId,
    next_context: ContextId,
    trap: Option<String>,
    pub(crate) hold_queue_events: bool,
    /// Fuel the module has burnt in all calls so far (see [`Vm::fuel_used`]).
    fuel_used: u64,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("root", &self.root)
            .field("trap", &self.trap)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Runs `_initialize` and creates the root context.
    pub(crate) fn boot(store: Store<HostState>, instance: Instance) -> Result<Vm, HostError> {
        let mut vm = Vm {
            store,
            instance,
            root: 1,
            next_context: 2,
            trap: None,
            hold_queue_events: false,
            fuel_used: 0,
        };
        if vm.instance.get_func(&vm.store, "_initialize").is_some() {
            vm.call(0, "_initialize", &[])?;
        }
        vm.create_context(vm.root, ContextKind::Root)?;
        Ok(vm)
    }

    /// Calls export `name` with `context` as the effective context. A trap
    /// poisons the VM: later calls fail, as a trapped VM in Envoy is gone.
    ///
    /// A `proxy_on_*` callback the module does not export is skipped and
    /// answers `None`, which callers read as Envoy's default (continue; done):
    /// Envoy only calls the callbacks a module exports.
    pub(crate) fn call(
        &mut self,
        context: ContextId,
        name: &str,
        args: &[i32],
    ) -> Result<Option<i32>, HostError> {
        if let Some(first_trap) = &self.trap {
            return Err(HostError::Poisoned {
                first_trap: first_trap.clone(),
            });
        }
        let Some(func) = self.instance.get_func(&self.store, name) else {
            if name.starts_with("proxy_on_") {
                return Ok(None);
            }
            return Err(HostError::Usage(format!(
                "the module does not export {name}"
            )));
        };
        let inputs: Vec<Val> = args.iter().map(|&a| Val::I32(a)).collect();
        let mut outputs: Vec<Val> = func
            .ty(&self.store)
            .results()
            .iter()
            .map(|&ty| Val::default_for_ty(ty))
            .collect();
        self.store.data_mut().effective = context;
        self.store
            .set_fuel(FUEL_PER_CALL)
            .map_err(|e| HostError::Usage(e.to_string()))?;
        let called = func.call(&mut self.store, &inputs, &mut outputs);
        let left = self.store.get_fuel().unwrap_or(FUEL_PER_CALL);
        self.fuel_used += FUEL_PER_CALL.saturating_sub(left);
        if let Err(e) = called {
            let call = format!("{name}{args:?}")
                .replace('[', "(")
                .replace(']', ")");
            let message = e.to_string();
            self.trap = Some(format!("{call}: {message}"));
            let logs = self.logs();
            let logs = logs[logs.len().saturating_sub(TRAP_LOG_LINES)..].to_vec();
            return Err(HostError::Trap {
                call,
                message,
                logs,
            });
        }
        Ok(outputs.first().and_then(Val::i32))
    }

    /// Calls an event callback, then lets the consequences play out.
    pub(crate) fn event(
        &mut self,
        context: ContextId,
        name: &str,
        args: &[i32],
    ) -> Result<Option<i32>, HostError> {
        let result = self.call(context, name, args)?;
        self.settle()?;
        Ok(result)
    }

    /// Does what Envoy's event loop would do after a callback, until nothing is left.
    pub(crate) fn settle(&mut self) -> Result<(), HostError> {
        for _ in 0..10_000 {
            if self.send_pending_local_reply()? {
                continue;
            }
            if !self.hold_queue_events && self.deliver_one_queue_event()? {
                continue;
            }
            return Ok(());
        }
        Err(HostError::Usage(
            "the module keeps producing events (10000 without rest)".to_owned(),
        ))
    }

    /// Runs the oldest local reply not yet sent through the same filter's
    /// response callbacks (Envoy does; headers added in both places appear twice).
    fn send_pending_local_reply(&mut self) -> Result<bool, HostError> {
        let pending = self.store.data().contexts.iter().find_map(|(&id, c)| {
            let index = c
                .local_replies
                .iter()
                .position(|r| r.sent_headers.is_none())?;
            (!c.deleted).then_some((id, index))
        });
        let Some((id, index)) = pending else {
            return Ok(false);
        };
        let context = self.context_mut(id)?;
        let reply = &mut context.local_replies[index];
        let mut headers = crate::Headers::new();
        headers.add(":status", reply.status.to_string());
        for (k, v) in reply.headers.iter() {
            headers.add(k, v);
        }
        // Marked first, so a reply sent from the response callback is not looped on.
        reply.sent_headers = Some(headers.clone());
        let body = reply.body.clone();
        context.response_headers = headers.clone();
        context.response_body = body.clone();
        let count = headers.len() as i32;
        self.call(
            id,
            "proxy_on_response_headers",
            &[id as i32, count, body.is_empty() as i32],
        )?;
        if !body.is_empty() {
            self.call(
                id,
                "proxy_on_response_body",
                &[id as i32, body.len() as i32, 1],
            )?;
        }
        let context = self.context_mut(id)?;
        let sent = context.response_headers.clone();
        context.local_replies[index].sent_headers = Some(sent);
        Ok(true)
    }

    pub(crate) fn context_mut(&mut self, id: ContextId) -> Result<&mut ContextState, HostError> {
        self.store
            .data_mut()
            .contexts
            .get_mut(&id)
            .ok_or_else(|| HostError::Usage(format!("no context {id}")))
    }

    /// Creates a context (`proxy_on_context_create`).
    pub(crate) fn create_context(
        &mut self,
        id: ContextId,
        kind: ContextKind,
    ) -> Result<(), HostError> {
        let parent = match kind {
            ContextKind::Root => 0,
            ContextKind::Http { root } => root,
        };
        self.store
            .data_mut()
            .contexts
            .insert(id, ContextState::new(kind));
        self.event(id, "proxy_on_context_create", &[id as i32, parent as i32])?;
        Ok(())
    }

    pub(crate) fn new_context_id(&mut self) -> ContextId {
        self.next_context += 1;
        self.next_context - 1
    }

    /// `proxy_on_vm_start(root, size)` with the host's VM configuration.
    pub fn vm_start(&mut self) -> Result<bool, HostError> {
        let size = self.store.data().vm_configuration.len() as i32;
        self.store.data_mut().phase = Phase::VmStart;
        let started = self.event(self.root, "proxy_on_vm_start", &[self.root as i32, size]);
        self.store.data_mut().phase = Phase::Other;
        Ok(started? != Some(0))
    }

    /// `proxy_on_configure(root, size)`: (re)configures the plugin, as Envoy
    /// does at start and on an xDS update. The configuration is readable only
    /// during this call.
    pub fn configure(&mut self, plugin_configuration: impl AsRef<[u8]>) -> Result<bool, HostError> {
        let bytes = plugin_configuration.as_ref().to_vec();
        let size = bytes.len() as i32;
        self.store.data_mut().plugin_configuration = bytes;
        self.store.data_mut().phase = Phase::Configure;
        let configured = self.event(self.root, "proxy_on_configure", &[self.root as i32, size]);
        self.store.data_mut().phase = Phase::Other;
        Ok(configured? != Some(0))
    }

    /// The root context's id.
    pub fn root_id(&self) -> ContextId {
        self.root
    }

    /// Everything the host knows about a context, live or finished.
    pub fn context(&self, id: ContextId) -> Option<&ContextState> {
        self.store.data().contexts.get(&id)
    }

    /// Every `proxy_log` line so far.
    pub fn logs(&self) -> &[LogEntry] {
        &self.store.data().logs
    }

    /// A counter or gauge, summed over every VM of the host (as Envoy's `/stats`).
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.store.data().shared().metric_value(name)
    }

    /// Every value recorded in the histogram `name`.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        self.store.data().shared().histogram(name)
    }

    /// What the module wrote to stdout and stderr through WASI.
    pub fn stdout(&self) -> &[u8] {
        &self.store.data().stdout
    }

    pub fn stderr(&self) -> &[u8] {
        &self.store.data().stderr
    }

    /// The fuel the module has used over every call into it so far: wasmi charges about one
    /// unit per instruction executed (more for calls and bulk memory operations), so the
    /// difference over a sequence of calls counts the module's own work in them, whatever
    /// the machine is doing.
    pub fn fuel_used(&self) -> u64 {
        self.fuel_used
    }

    /// The first trap, if the VM trapped: `"export(args): message"`.
    pub fn trap(&self) -> Option<&str> {
        self.trap.as_deref()
    }

    /// The shared-data value of `key` and its CAS, in this VM's `vm_id`.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let state = self.store.data();
        state.shared().get_data(&state.vm_id, key.as_bytes()).ok()
    }

    /// Writes shared data as another VM of the process would (no CAS).
    pub fn set_shared_data(&self, key: &str, value: impl AsRef<[u8]>) {
        let state = self.store.data();
        // Without a CAS a write cannot fail.
        let _ = state
            .shared()
            .set_data(&state.vm_id, key.as_bytes(), value.as_ref(), 0);
    }
}
