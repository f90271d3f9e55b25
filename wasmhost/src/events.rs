//! Timers and queues: `proxy_on_tick` and `proxy_on_queue_ready`, fired by
//! the test or by advancing the host's clock.

use std::time::Duration;

use crate::error::HostError;
use crate::vm::Vm;

impl Vm {
    /// The tick period the module asked for (0: none).
    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    /// Fires `proxy_on_tick` on the root context now.
    pub fn tick(&mut self) -> Result<(), HostError> {
        self.event(self.root, "proxy_on_tick", &[self.root as i32])
            .map(drop)
    }

    /// The host clock, in nanoseconds since the Unix epoch.
    pub fn now_ns(&self) -> u64 {
        self.store.data().shared().now_ns
    }

    /// Moves the host clock forward, firing every tick that falls due on the
    /// way (with the clock at its due time). Returns how many fired.
    pub fn advance_time(&mut self, by: Duration) -> Result<u32, HostError> {
        let target = self.now_ns().saturating_add(by.as_nanos() as u64);
        let mut fired = 0;
        loop {
            let state = self.store.data();
            let period_ns = u64::from(state.tick_period_ms) * 1_000_000;
            let due = state.tick_anchor_ns.saturating_add(period_ns);
            if period_ns == 0 || due > target {
                break;
            }
            self.store.data_mut().tick_anchor_ns = due;
            self.store.data().shared().now_ns = due;
            self.tick()?;
            fired += 1;
        }
        self.store.data().shared().now_ns = target;
        Ok(fired)
    }

    /// Keeps queue-ready events waiting until [`Vm::deliver_queue_events`]
    /// (default: each is delivered right after the callback that enqueued,
    /// as Envoy's event loop does when idle). Holding lets a test have several
    /// requests enqueue before the root context runs, as under load.
    pub fn hold_queue_events(&mut self, hold: bool) {
        self.hold_queue_events = hold;
    }

    /// The queue ids of this VM's undelivered queue-ready events, oldest first.
    pub fn pending_queue_events(&self) -> Vec<u32> {
        let state = self.store.data();
        state
            .shared()
            .pending_events(state.vm)
            .iter()
            .map(|e| e.queue_id)
            .collect()
    }

    /// Delivers every waiting queue-ready event; returns how many.
    pub fn deliver_queue_events(&mut self) -> Result<usize, HostError> {
        let mut delivered = 0;
        while self.deliver_one_queue_event()? {
            delivered += 1;
            self.settle()?;
        }
        Ok(delivered)
    }

    /// Fires `proxy_on_queue_ready(root, queue_id)` now, event or not.
    pub fn queue_ready(&mut self, queue_id: u32) -> Result<(), HostError> {
        self.event(
            self.root,
            "proxy_on_queue_ready",
            &[self.root as i32, queue_id as i32],
        )
        .map(drop)
    }

    /// The id of the shared queue registered as `name` in this VM's `vm_id`
    /// (`proxy_resolve_shared_queue`), if any VM registered it.
    pub fn resolve_queue(&self, name: &str) -> Option<u32> {
        let state = self.store.data();
        state.shared().resolve_queue(&state.vm_id, name)
    }

    /// Whether the last VM to register queue `queue_id` is this one: its
    /// events come here.
    pub fn owns_queue(&self, queue_id: u32) -> bool {
        let state = self.store.data();
        state.shared().queue_owner(queue_id) == Some(state.vm)
    }

    /// How many items a shared queue holds (`None`: no such queue).
    pub fn queue_len(&self, queue_id: u32) -> Option<usize> {
        self.store.data().shared().queue_len(queue_id)
    }

    /// Delivers this VM's oldest queue-ready event, if any. An event for a
    /// context that no longer exists is dropped.
    pub(crate) fn deliver_one_queue_event(&mut self) -> Result<bool, HostError> {
        let state = self.store.data();
        let vm = state.vm;
        let Some(event) = state.shared().next_event(vm) else {
            return Ok(false);
        };
        let live = self.context(event.context_id).is_some_and(|c| !c.deleted);
        if live {
            self.call(
                event.context_id,
                "proxy_on_queue_ready",
                &[event.context_id as i32, event.queue_id as i32],
            )?;
        }
        Ok(true)
    }
}
