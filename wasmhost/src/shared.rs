//! What every VM started from one [`crate::Host`] shares, as Envoy's VMs of one
//! process do: shared data (per `vm_id`, with CAS), shared queues, metrics
//! (same-named metrics add up) and the clock.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::abi::{MetricType, Status};

/// One shared-data entry: its value and its CAS version.
#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    cas: u32,
}

/// A shared queue: events go to the VM (and root context) that registered it last.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    vm_id: String,
    name: String,
    pub(crate) owner_vm: u64,
    pub(crate) owner_context: u32,
    items: VecDeque<Vec<u8>>,
}

/// A defined metric and its value.
#[derive(Debug, Clone)]
pub(crate) struct Metric {
    pub(crate) name: String,
    pub(crate) kind: MetricType,
    /// Counters and gauges.
    pub(crate) value: i64,
    /// Histograms: every recorded value.
    pub(crate) samples: Vec<u64>,
}

/// A queue-ready event waiting to be delivered to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueEvent {
    pub(crate) context_id: u32,
    pub(crate) queue_id: u32,
}

/// The process-wide state, behind a mutex in [`crate::Host`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) now_ns: u64,
    data: HashMap<(String, Vec<u8>), Entry>,
    next_cas: u32,
    /// Queue id `i + 1` is `queues[i]` (0 is never a queue id).
    queues: Vec<Queue>,
    /// Pending queue-ready events per owner VM, in enqueue order.
    events: BTreeMap<u64, VecDeque<QueueEvent>>,
    /// Metric id `i + 1` is `metrics[i]`.
    pub(crate) metrics: Vec<Metric>,
    next_vm: u64,
}

/// 2026-01-01T00:00:00Z: a fixed start, so runs are reproducible.
const START_NS: u64 = 1_767_225_600_000_000_000;

impl Default for Shared {
    fn default() -> Self {
        Shared {
            now_ns: START_NS,
            data: HashMap::new(),
            next_cas: 1,
            queues: Vec::new(),
            events: BTreeMap::new(),
            metrics: Vec::new(),
            next_vm: 1,
        }
    }
}

impl Shared {
    pub(crate) fn new_vm(&mut self) -> u64 {
        self.next_vm += 1;
        self.next_vm - 1
    }

    /// `proxy_get_shared_data`: the value and its CAS, or `NotFound`.
    pub(crate) fn get_data(&self, vm_id: &str, key: &[u8]) -> Result<(Vec<u8>, u32), Status> {
        self.data
            .get(&(vm_id.to_owned(), key.to_vec()))
            .map(|e| (e.value.clone(), e.cas))
            .ok_or(Status::NotFound)
    }

    /// `proxy_set_shared_data`: a non-zero `cas` must match the entry's; as in
    /// Envoy, the first write of a missing key succeeds whatever its `cas`.
    pub(crate) fn set_data(
        &mut self,
        vm_id: &str,
        key: &[u8],
        value: &[u8],
        cas: u32,
    ) -> Result<(), Status> {
        let slot = (vm_id.to_owned(), key.to_vec());
        if let Some(entry) = self.data.get(&slot) {
            if cas != 0 && cas != entry.cas {
                return Err(Status::CasMismatch);
            }
        }
        let cas = self.next_cas;
        // Zero means "no CAS" to the SDK: skip it on wrap-around.
        self.next_cas = self.next_cas.checked_add(1).unwrap_or(1);
        self.data.insert(
            slot,
            Entry {
                value: value.to_vec(),
                cas,
            },
        );
        Ok(())
    }

    /// `proxy_register_shared_queue`: a new queue, or the existing one taken over.
    pub(crate) fn register_queue(
        &mut self,
        vm_id: &str,
        name: &str,
        owner_vm: u64,
        owner_context: u32,
    ) -> u32 {
        if let Some(id) = self.resolve_queue(vm_id, name) {
            let queue = &mut self.queues[id as usize - 1];
            queue.owner_vm = owner_vm;
            queue.owner_context = owner_context;
            return id;
        }
        self.queues.push(Queue {
            vm_id: vm_id.to_owned(),
            name: name.to_owned(),
            owner_vm,
            owner_context,
            items: VecDeque::new(),
        });
        self.queues.len() as u32
    }

    /// `proxy_resolve_shared_queue`.
    pub(crate) fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
            .map(|i| i as u32 + 1)
    }

    fn queue_mut(&mut self, id: u32) -> Result<&mut Queue, Status> {
        let index = (id as usize).checked_sub(1).ok_or(Status::NotFound)?;
        self.queues.get_mut(index).ok_or(Status::NotFound)
    }

    /// `proxy_enqueue_shared_queue`: stores the item and posts one event to the owner.
    pub(crate) fn enqueue(&mut self, id: u32, item: &[u8]) -> Result<(), Status> {
        let queue = self.queue_mut(id)?;
        queue.items.push_back(item.to_vec());
        let (vm, context_id) = (queue.owner_vm, queue.owner_context);
        self.events.entry(vm).or_default().push_back(QueueEvent {
            context_id,
            queue_id: id,
        });
        Ok(())
    }

    /// `proxy_dequeue_shared_queue`: the oldest item, `Empty`, or `NotFound`.
    pub(crate) fn dequeue(&mut self, id: u32) -> Result<Vec<u8>, Status> {
        self.queue_mut(id)?.items.pop_front().ok_or(Status::Empty)
    }

    /// How many items queue `id` holds.
    pub(crate) fn queue_len(&self, id: u32) -> Option<usize> {
        let index = (id as usize).checked_sub(1)?;
        self.queues.get(index).map(|q| q.items.len())
    }

    /// The VM whose root gets queue `id`'s events.
    pub(crate) fn queue_owner(&self, id: u32) -> Option<u64> {
        let index = (id as usize).checked_sub(1)?;
        self.queues.get(index).map(|q| q.owner_vm)
    }

    /// The oldest undelivered queue-ready event of VM `vm`.
    pub(crate) fn next_event(&mut self, vm: u64) -> Option<QueueEvent> {
        self.events.get_mut(&vm)?.pop_front()
    }

    pub(crate) fn pending_events(&self, vm: u64) -> Vec<QueueEvent> {
        self.events
            .get(&vm)
            .map(|e| e.iter().copied().collect())
            .unwrap_or_default()
    }

    /// `proxy_define_metric`: the id of `name` of this kind, defined on first use.
    pub(crate) fn define_metric(&mut self, kind: MetricType, name: &str) -> u32 {
        if let Some(i) = self
            .metrics
            .iter()
            .position(|m| m.name == name && m.kind == kind)
        {
            return i as u32 + 1;
        }
        self.metrics.push(Metric {
            name: name.to_owned(),
            kind,
            value: 0,
            samples: Vec::new(),
        });
        self.metrics.len() as u32
    }

    pub(crate) fn metric_mut(&mut self, id: u32) -> Result<&mut Metric, Status> {
        let index = (id as usize).checked_sub(1).ok_or(Status::NotFound)?;
        self.metrics.get_mut(index).ok_or(Status::NotFound)
    }

    /// The value of the counter or gauge called `name` (summed over every VM).
    pub(crate) fn metric_value(&self, name: &str) -> Option<i64> {
        self.metrics
            .iter()
            .find(|m| m.name == name && m.kind != MetricType::Histogram)
            .map(|m| m.value)
    }

    pub(crate) fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        self.metrics
            .iter()
            .find(|m| m.name == name && m.kind == MetricType::Histogram)
            .map(|m| m.samples.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_guards_updates_but_not_the_first_write() {
        let mut s = Shared::default();
        assert_eq!(s.get_data("", b"k"), Err(Status::NotFound));
        s.set_data("", b"k", b"1", 77).unwrap();
        let (value, cas) = s.get_data("", b"k").unwrap();
        assert_eq!(value, b"1");
        assert_eq!(
            s.set_data("", b"k", b"2", cas + 1),
            Err(Status::CasMismatch)
        );
        s.set_data("", b"k", b"2", cas).unwrap();
        assert_eq!(s.set_data("", b"k", b"3", cas), Err(Status::CasMismatch));
        s.set_data("", b"k", b"3", 0).unwrap();
        assert_eq!(s.get_data("other-vm", b"k"), Err(Status::NotFound));
    }

    #[test]
    fn queues_post_events_to_the_last_registrant() {
        let mut s = Shared::default();
        let id = s.register_queue("", "q", 1, 1);
        assert_eq!(s.register_queue("", "q", 2, 1), id);
        assert_eq!(s.resolve_queue("", "q"), Some(id));
        assert_eq!(s.resolve_queue("x", "q"), None);
        assert_eq!(s.dequeue(id), Err(Status::Empty));
        assert_eq!(s.enqueue(id + 1, b"x"), Err(Status::NotFound));
        s.enqueue(id, b"a").unwrap();
        s.enqueue(id, b"b").unwrap();
        assert_eq!(s.next_event(1), None);
        assert_eq!(s.pending_events(2).len(), 2);
        assert_eq!(s.dequeue(id).unwrap(), b"a");
        assert_eq!(s.queue_len(id), Some(1));
    }
}
