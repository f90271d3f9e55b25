//! Quota leases, free of host calls: requests admitted from blocks of quota that limitd has
//! already counted in Redis, so that the allowed path of a rule in lease mode needs no callout.
//!
//! A rule with `"lease"` asks limitd, with each check it sends, to charge a few more units than
//! the request costs ([`protocol::Hit::lease`]). limitd grants a share of what is left (see
//! `check.lua`), counted in Redis at once; the filter keeps the units in a *block* and admits
//! later requests from it without asking. Every admitted request was counted before it was
//! admitted, so the fleet never admits more than the limit; what a block holds and nobody spends
//! before it expires is under-admission.
//!
//! - **One block per key per Envoy.** Blocks live in proxy-wasm shared data, one process-wide map
//!   for all workers, and are spent with compare-and-swap, so two workers never spend one unit.
//!   Keys hash into [`SLOTS`] entries (shared data has no deletion); a slot whose block belongs
//!   to another key and still holds units leaves this key to per-request checks meanwhile.
//! - **Conservative expiry.** A block may be spent until `sent + min(lease_ms, lifetime)`, where
//!   `sent` is when the check left this proxy and `lease_ms` is what limitd computed from Redis
//!   time (the window's end): latency and clock skew only shorten it. Units granted while a block
//!   still holds some join it and take the earlier expiry.
//! - **Refilled early.** When a block falls below half of its last size, the request that sees
//!   it marks the block as refilling and has a refill (a check of cost 0 asking for a lease) sent
//!   in the background; requests keep spending the rest meanwhile. Only a request that finds the
//!   block empty waits for a callout, and it asks for the lease itself if no refill is out.
//! - **Slices for each worker.** A worker that spends from a block of more than [`SLICE_SHARE`]
//!   units takes a share of it (a quarter) into its own VM, and spends that with no host call;
//!   only the next slice costs a shared-data read and write. Near the limit blocks hold a few
//!   units, slices shrink to the request's own cost and every spend goes through the block again.
//!   A slice keeps its block's expiry; what a worker has not spent within [`SLICE_IDLE_MS`] goes
//!   back to the block (if it is still that block), so idle workers strand little.
//! - **All or nothing across rules.** A request takes a unit from the block of every rule it
//!   matches; if one is empty (or the request has a rule without leases), the units taken are put
//!   back and the whole request is checked by limitd as before.

use std::collections::HashMap;
use std::fmt::Write as _;

use protocol::{Algorithm, Hit, HitResult};

use crate::fallback::LocalCounters;

/// How many shared-data entries hold blocks. Every leased key hashes to one; this bounds what
/// blocks can ever take, however many keys come and go.
pub const SLOTS: u64 = 4096;

/// Compare-and-swap attempts before giving up (then the request is checked by limitd).
const ATTEMPTS: usize = 16;

/// A worker's slice is this fraction of what its block holds (1 ÷ `SLICE_SHARE`), and at least
/// the request's cost.
pub const SLICE_SHARE: u64 = 4;

/// A slice unused for this long goes back to its block, for the other workers.
pub const SLICE_IDLE_MS: u64 = 200;

/// The most keys one worker holds slices of; beyond, a worker spends from blocks unit by unit.
const SLICE_KEYS: usize = 1024;

/// A rule's lease settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRule {
    /// The most units one Envoy holds for one key.
    pub max_units: u64,
    /// How long after its check was sent a block may be spent, at most; `None`: until the window
    /// ends (the window algorithms' natural bound). Always set for gcra.
    pub lifetime_ms: Option<u64>,
}

/// The lifetime of a gcra lease when the rule does not set one.
pub const DEFAULT_GCRA_LIFETIME_MS: u64 = 1000;

/// The largest block of a rule when the rule does not say.
pub const DEFAULT_MAX_UNITS: u64 = 100;

/// One key's block, as stored in its slot: these fields, then the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Block {
    /// Which rule parameters (and key) the block is for: see [`block_id`]. The id picks the
    /// slot and tells a rule's blocks from those of the same key under other parameters; the
    /// key stored with it tells two keys apart whose ids collide, which a client choosing a
    /// header value could otherwise arrange to spend another client's block.
    id: u64,
    /// Units left to spend.
    units: u64,
    /// When they may no longer be spent (proxy clock, ms).
    expires_ms: u64,
    /// limitd's `remaining` with the last grant (the units of other proxies and of Redis).
    remaining: u64,
    /// The block's size after its last grant: refills start below half of it.
    size: u64,
    /// When a refill was sent (0: none out).
    refill_ms: u64,
}

const BLOCK_BYTES: usize = 48;

impl Block {
    /// The block in a slot's value, and the key it is for.
    fn decode(value: Option<&[u8]>) -> Option<(Block, &[u8])> {
        let value = value?;
        let (bytes, key) = value.split_at_checked(BLOCK_BYTES)?;
        let bytes: &[u8; BLOCK_BYTES] = bytes.try_into().ok()?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let block = Block {
            id: word(0),
            units: word(1),
            expires_ms: word(2),
            remaining: word(3),
            size: word(4),
            refill_ms: word(5),
        };
        Some((block, key))
    }

    /// The slot's value for this block of `key`.
    fn encode(&self, key: &str) -> Vec<u8> {
        let mut bytes = vec![0u8; BLOCK_BYTES];
        let words = [
            self.id,
            self.units,
            self.expires_ms,
            self.remaining,
            self.size,
            self.refill_ms,
        ];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        bytes.extend_from_slice(key.as_bytes());
        bytes
    }

    /// Units that may still be spent at `now`.
    fn live_units(&self, now_ms: u64) -> u64 {
        if self.expires_ms > now_ms {
            self.units
        } else {
            0
        }
    }

    fn refilling(&self, now_ms: u64, stale_ms: u64) -> bool {
        self.refill_ms != 0 && self.refill_ms.saturating_add(stale_ms) > now_ms
    }
}

/// A leased hit's identity: its key and every parameter that decides what a unit is, so that a
/// rule changed by a reconfiguration never spends a block granted under the old one.
pub fn block_id(hit: &Hit) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(hit.key.as_bytes());
    feed(&[0xff]);
    feed(&hit.limit.to_le_bytes());
    feed(&hit.window_ms.to_le_bytes());
    feed(&hit.burst.unwrap_or(0).to_le_bytes());
    feed(&[match hit.algorithm {
        Algorithm::FixedWindow => 0,
        Algorithm::SlidingWindow => 1,
        Algorithm::Gcra => 2,
    }]);
    h
}

fn slot_key(id: u64) -> String {
    let mut key = String::with_capacity(24);
    let _ = write!(key, "ratelimit.lease.{}", id % SLOTS);
    key
}

/// Reads a slot, applies `change` to the block of `key` with `id` (a fresh one if the slot is
/// empty, holds an expired block, or one of another key that is spent), and writes it back with
/// compare-and-swap, again on a conflict. `change` returns what to report and whether to write.
/// `None` when the slot belongs to another key's live block, or the writes kept conflicting.
fn update<T>(
    store: &impl LocalCounters,
    id: u64,
    key: &str,
    now_ms: u64,
    mut change: impl FnMut(&mut Block) -> (T, bool),
) -> Option<T> {
    let slot = slot_key(id);
    for _ in 0..ATTEMPTS {
        let (value, cas) = store.load(&slot);
        let mut block = match Block::decode(value.as_deref()) {
            Some((block, of)) if block.id == id && of == key.as_bytes() => block,
            Some((block, _)) if block.live_units(now_ms) > 0 => return None,
            _ => Block {
                id,
                ..Block::default()
            },
        };
        let (result, write) = change(&mut block);
        if !write || store.store(&slot, &block.encode(key), cas) {
            return Some(result);
        }
    }
    None
}

/// What a request gets from the blocks of its leased rules.
#[derive(Debug, PartialEq, Eq)]
pub enum Spend {
    /// Every hit took its cost from its rule's block: admit the request now. `results` describe
    /// each hit as a limitd answer would (for the rate-limit headers; `remaining` is an
    /// estimate); `refills` are the hits (with their index) to refill in the background.
    Admitted {
        results: Vec<HitResult>,
        refills: Vec<(usize, Hit)>,
    },
    /// The request must be checked by limitd; its hits carry the leases to ask for. Nothing was
    /// taken (what had been is back in its blocks).
    Check { hits: Vec<Hit> },
}

/// Takes each hit's cost from its block, all or nothing. `leases[i]` is hit i's rule's lease
/// settings (`None`: the rule checks every request). `stale_ms`: a refill out longer than this
/// is taken as lost.
pub fn spend(
    store: &impl LocalCounters,
    slices: &mut Slices,
    hits: &[Hit],
    leases: &[Option<LeaseRule>],
    stale_ms: u64,
) -> Spend {
    let now_ms = store.now_ms();
    // Each hit taken, and whether from a slice (`None`) or its block (the block's expiry).
    let mut taken: Vec<(usize, Option<u64>)> = Vec::new();
    let mut results = Vec::with_capacity(hits.len());
    let mut refills = Vec::new();
    let mut short = false;
    for (i, (hit, lease)) in hits.iter().zip(leases).enumerate() {
        let Some(lease) = lease else {
            short = true;
            break;
        };
        let id = block_id(hit);
        // This worker's slice first: no host call.
        if let Some(result) = slices.spend(id, hit, now_ms) {
            taken.push((i, None));
            results.push(result);
            continue;
        }
        let took = update(store, id, &hit.key, now_ms, |block| {
            let units = block.live_units(now_ms);
            if units < hit.cost {
                return (None, false);
            }
            let take = slices.take(id, units, hit.cost);
            block.units = units - take;
            let refill = block.units < block.size.div_ceil(2)
                && !block.refilling(now_ms, stale_ms)
                && block.units < lease.max_units;
            if refill {
                block.refill_ms = now_ms.max(1);
            }
            let slice = Slice {
                key: hit.key.clone(),
                units: take - hit.cost,
                expires_ms: block.expires_ms,
                remaining: block.remaining.saturating_add(block.units),
                used_ms: now_ms,
            };
            let result = admitted_locally(hit, &slice, now_ms);
            let ask = refill.then(|| lease.max_units - block.units);
            (Some((result, ask, slice)), true)
        });
        match took.flatten() {
            Some((result, ask, slice)) => {
                let expires_ms = slice.expires_ms;
                if slice.units > 0 {
                    slices.keep(id, slice);
                }
                taken.push((i, Some(expires_ms)));
                results.push(result);
                if let Some(ask) = ask {
                    refills.push((
                        i,
                        Hit {
                            cost: 0,
                            lease: ask,
                            ..hit.clone()
                        },
                    ));
                }
            }
            None => {
                short = true;
                break;
            }
        }
    }
    if !short {
        return Spend::Admitted { results, refills };
    }
    // What was taken goes back where it came from: a slice, or the block.
    for &(i, from_block) in &taken {
        let hit = &hits[i];
        let id = block_id(hit);
        match from_block {
            None => slices.put_back(id, hit, now_ms),
            Some(expires_ms) => put_back(store, id, &hit.key, hit.cost, expires_ms),
        }
    }
    // Refills marked above will not be sent: clear their marks.
    for (_, refill) in &refills {
        update(store, block_id(refill), &refill.key, now_ms, |block| {
            block.refill_ms = 0;
            ((), true)
        });
    }
    // Ask for a lease on each leased hit whose block is short and has no refill out.
    let hits = hits
        .iter()
        .zip(leases)
        .map(|(hit, lease)| {
            let ask = lease.and_then(|lease| {
                update(store, block_id(hit), &hit.key, now_ms, |block| {
                    if block.refilling(now_ms, stale_ms) {
                        return (0, false);
                    }
                    block.refill_ms = now_ms.max(1);
                    (
                        lease.max_units.saturating_sub(block.live_units(now_ms)),
                        true,
                    )
                })
            });
            Hit {
                lease: ask.unwrap_or(0),
                ..hit.clone()
            }
        })
        .collect();
    Spend::Check { hits }
}

/// Returns `units` that expire at `expires_ms` to the block of `key` with `id`, if it is live
/// and expires no later: units never outlive the grant they came from (those of a block that
/// expired, or was replaced by the next window's, are lost: their window is over).
fn put_back(store: &impl LocalCounters, id: u64, key: &str, units: u64, expires_ms: u64) {
    let now_ms = store.now_ms();
    update(store, id, key, now_ms, |block| {
        // An empty block that has not expired takes units back; an expired one does not.
        if block.expires_ms <= now_ms || block.expires_ms > expires_ms {
            return ((), false);
        }
        block.units += units;
        ((), true)
    });
}

/// What a hit spent inside this Envoy looks like as a limitd answer (for the rate-limit headers):
/// `remaining` is the global estimate, `slice` what this worker still holds after the spend.
fn admitted_locally(hit: &Hit, slice: &Slice, now_ms: u64) -> HitResult {
    HitResult {
        allowed: true,
        limit: hit.limit,
        remaining: slice.remaining.saturating_add(slice.units),
        reset_ms: slice.expires_ms.saturating_sub(now_ms),
        retry_after_ms: 0,
        leased: 0,
        lease_ms: 0,
    }
}

/// Units a worker took from its Envoy's block for one key, spent without host calls.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slice {
    /// The key of the block it came from: two keys whose ids collide never share a slice.
    key: String,
    units: u64,
    /// The block's expiry when the slice was taken.
    expires_ms: u64,
    /// The global figure for the rate-limit headers, less this slice: limitd's `remaining` plus
    /// what the block held when the slice was taken.
    remaining: u64,
    /// When a unit was last spent from it.
    used_ms: u64,
}

impl Slice {
    fn live_units(&self, now_ms: u64) -> u64 {
        if self.expires_ms > now_ms {
            self.units
        } else {
            0
        }
    }
}

/// One worker's slices, by block id (one VM, one thread: no sharing, no host call).
#[derive(Debug)]
pub struct Slices {
    slices: HashMap<u64, Slice>,
    /// A slice is 1 ÷ `share` of its block; 0: no slices, every unit spent from the block.
    share: u64,
}

impl Default for Slices {
    fn default() -> Self {
        Slices {
            slices: HashMap::new(),
            share: SLICE_SHARE,
        }
    }
}

impl Slices {
    /// No slices: every spend goes to the block (for tests of the blocks alone).
    pub fn none() -> Self {
        Slices {
            slices: HashMap::new(),
            share: 0,
        }
    }

    /// The slice of `id` for `hit`'s key.
    fn of(&mut self, id: u64, hit: &Hit) -> Option<&mut Slice> {
        self.slices
            .get_mut(&id)
            .filter(|slice| slice.key == hit.key)
    }

    /// Spends a hit's cost from its slice, if the slice holds it.
    fn spend(&mut self, id: u64, hit: &Hit, now_ms: u64) -> Option<HitResult> {
        let slice = self.of(id, hit)?;
        if slice.live_units(now_ms) < hit.cost {
            return None;
        }
        slice.units -= hit.cost;
        slice.used_ms = now_ms;
        Some(admitted_locally(hit, slice, now_ms))
    }

    /// How many of a block's `units` a request of `cost` takes: a share as this worker's slice
    /// of `id` (and its own cost), or only its cost when there are no slices or no room for one
    /// more key.
    fn take(&self, id: u64, units: u64, cost: u64) -> u64 {
        let room = self.slices.len() < SLICE_KEYS || self.slices.contains_key(&id);
        if self.share > 0 && room {
            (units / self.share).clamp(cost, units)
        } else {
            cost
        }
    }

    /// Keeps a new slice of `id`. Units the old one of the same key still holds (fewer than a
    /// request's cost) join it and take the earlier expiry, as grants joining a block do; one of
    /// another key with a colliding id is dropped (its units lost, never spent for this key).
    fn keep(&mut self, id: u64, mut slice: Slice) {
        if let Some(old) = self.slices.get(&id).filter(|old| old.key == slice.key) {
            let units = old.live_units(slice.used_ms);
            if units > 0 {
                slice.units += units;
                slice.expires_ms = slice.expires_ms.min(old.expires_ms);
            }
        }
        self.slices.insert(id, slice);
    }

    /// Puts a hit's cost back into its slice (a request that could not be admitted after all).
    fn put_back(&mut self, id: u64, hit: &Hit, now_ms: u64) {
        if let Some(slice) = self.of(id, hit) {
            if slice.expires_ms > now_ms {
                slice.units += hit.cost;
            }
        }
    }

    /// Units this worker holds for a hit's key at `now_ms`.
    #[cfg(test)]
    fn units(&self, hit: &Hit, now_ms: u64) -> u64 {
        self.slices
            .get(&block_id(hit))
            .filter(|slice| slice.key == hit.key)
            .map_or(0, |slice| slice.live_units(now_ms))
    }

    /// Returns to their blocks the slices not spent from for [`SLICE_IDLE_MS`] (all of them if
    /// `all`), and forgets those returned or expired. Host calls happen here, on the worker's
    /// timer, not on a request's path.
    pub fn return_idle(&mut self, store: &impl LocalCounters, all: bool) {
        let now_ms = store.now_ms();
        self.slices.retain(|&id, slice| {
            let units = slice.live_units(now_ms);
            if units == 0 {
                return false;
            }
            if !all && slice.used_ms.saturating_add(SLICE_IDLE_MS) > now_ms {
                return true;
            }
            put_back(store, id, &slice.key, units, slice.expires_ms);
            false
        });
    }
}

/// The answer to a check that asked for a lease on `hit` (sent at `sent_ms`, proxy clock), or
/// `None` if it was not answered: adds what limitd leased to the block and ends the refill.
pub fn settled(
    store: &impl LocalCounters,
    hit: &Hit,
    lease: &LeaseRule,
    result: Option<&HitResult>,
    sent_ms: u64,
) {
    let now_ms = store.now_ms();
    update(store, block_id(hit), &hit.key, now_ms, |block| {
        block.refill_ms = 0;
        if let Some(result) = result.filter(|r| r.allowed && r.leased > 0) {
            let valid_ms = lease
                .lifetime_ms
                .map_or(result.lease_ms, |l| l.min(result.lease_ms));
            let expires_ms = sent_ms.saturating_add(valid_ms);
            if expires_ms > now_ms {
                if block.live_units(now_ms) > 0 {
                    // Units of the earlier grant must not outlive it.
                    block.units = block.units.saturating_add(result.leased);
                    block.expires_ms = block.expires_ms.min(expires_ms);
                } else {
                    block.units = result.leased;
                    block.expires_ms = expires_ms;
                }
                block.remaining = result.remaining;
                block.size = block.units;
            }
        }
        ((), true)
    });
}

/// Units a key's block holds at `now` (for tests and the module's users' metrics).
pub fn units(store: &impl LocalCounters, hit: &Hit) -> u64 {
    let (value, _) = store.load(&slot_key(block_id(hit)));
    Block::decode(value.as_deref())
        .filter(|(b, key)| b.id == block_id(hit) && *key == hit.key.as_bytes())
        .map_or(0, |(b, _)| b.live_units(store.now_ms()))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::fallback::tests::FakeCounters;

    const WINDOWED: LeaseRule = LeaseRule {
        max_units: 40,
        lifetime_ms: None,
    };

    fn hit(key: &str) -> Hit {
        Hit {
            key: key.into(),
            limit: 1000,
            window_ms: 60_000,
            cost: 1,
            algorithm: Algorithm::FixedWindow,
            burst: None,
            shadow: false,
            lease: 0,
        }
    }

    fn asking(h: &Hit, lease: u64) -> Hit {
        Hit { lease, ..h.clone() }
    }

    fn granted(leased: u64, lease_ms: u64, remaining: u64) -> HitResult {
        HitResult {
            allowed: true,
            limit: 1000,
            remaining,
            reset_ms: lease_ms,
            retry_after_ms: 0,
            leased,
            lease_ms,
        }
    }

    fn store_at(now: u64) -> FakeCounters {
        let store = FakeCounters::default();
        store.now.set(now);
        store
    }

    /// One request's spend, by a worker without slices (each unit from the block).
    fn spend_one(store: &impl LocalCounters, h: &Hit) -> Spend {
        spend(
            store,
            &mut Slices::none(),
            std::slice::from_ref(h),
            &[Some(WINDOWED)],
            400,
        )
    }

    /// The hits of a check the request must send, or a panic.
    fn must_check(spend: Spend) -> Vec<Hit> {
        match spend {
            Spend::Check { hits } => hits,
            other => panic!("expected a check, got {other:?}"),
        }
    }

    fn admitted(spend: Spend) -> (Vec<HitResult>, Vec<(usize, Hit)>) {
        match spend {
            Spend::Admitted { results, refills } => (results, refills),
            other => panic!("expected an admission, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_block_asks_for_a_lease_once_and_a_grant_is_spent_unit_by_unit() {
        let store = store_at(10_000);
        let h = hit("r:a");
        let asked = must_check(spend_one(&store, &h));
        assert_eq!(asked[0].lease, 40);
        // A second request meanwhile is checked without asking again.
        assert_eq!(must_check(spend_one(&store, &h))[0].lease, 0);

        let grant = granted(10, 50_000, 900);
        settled(&store, &asked[0], &WINDOWED, Some(&grant), 9_990);
        assert_eq!(units(&store, &h), 10);
        for i in 0..10u64 {
            let (results, _) = admitted(spend_one(&store, &h));
            // remaining: limitd's figure plus what this Envoy still holds.
            assert_eq!(results[0].remaining, 900 + 9 - i);
            assert!(results[0].allowed);
        }
        assert_eq!(units(&store, &h), 0);
        assert!(matches!(spend_one(&store, &h), Spend::Check { .. }));
    }

    #[test]
    fn a_block_expires_at_the_send_time_plus_its_validity_and_the_lifetime_shortens_it() {
        let store = store_at(10_000);
        let h = hit("r:exp");
        settled(
            &store,
            &asking(&h, 5),
            &WINDOWED,
            Some(&granted(5, 300, 0)),
            9_900,
        );
        assert_eq!(units(&store, &h), 5);
        store.now.set(10_199);
        assert_eq!(units(&store, &h), 5);
        store.now.set(10_200); // 9_900 + 300: the window is over.
        assert_eq!(units(&store, &h), 0);
        assert!(matches!(spend_one(&store, &h), Spend::Check { .. }));

        let short = LeaseRule {
            max_units: 40,
            lifetime_ms: Some(100),
        };
        let g = hit("r:gcra");
        let grant = granted(5, 60_000, 0);
        settled(&store, &asking(&g, 5), &short, Some(&grant), 10_150);
        store.now.set(10_249);
        assert_eq!(units(&store, &g), 5);
        store.now.set(10_250);
        assert_eq!(units(&store, &g), 0);
        // A grant already expired on arrival adds nothing.
        settled(&store, &asking(&g, 5), &short, Some(&grant), 10_000);
        assert_eq!(units(&store, &g), 0);
    }

    #[test]
    fn a_grant_joining_a_live_block_keeps_the_earlier_expiry() {
        let store = store_at(1_000);
        let h = hit("r:join");
        let ask = asking(&h, 9);
        settled(&store, &ask, &WINDOWED, Some(&granted(4, 500, 0)), 1_000);
        settled(&store, &ask, &WINDOWED, Some(&granted(3, 5_000, 0)), 1_100);
        assert_eq!(units(&store, &h), 7);
        store.now.set(1_500);
        assert_eq!(
            units(&store, &h),
            0,
            "the joined units expire with the first grant"
        );
    }

    #[test]
    fn a_refill_is_asked_once_when_half_is_spent_and_again_only_when_it_is_stale() {
        let store = store_at(1_000);
        let h = hit("r:refill");
        let grant = granted(10, 50_000, 500);
        settled(&store, &asking(&h, 40), &WINDOWED, Some(&grant), 1_000);
        let asked: Vec<Vec<(usize, Hit)>> =
            (0..8).map(|_| admitted(spend_one(&store, &h)).1).collect();
        // 10 units: spending the 6th leaves 4 < 5, which asks for a refill; not again after.
        let counts: Vec<usize> = asked.iter().map(Vec::len).collect();
        assert_eq!(counts, [0, 0, 0, 0, 0, 1, 0, 0]);
        let refill = &asked[5][0].1;
        assert_eq!((refill.cost, refill.lease), (0, 40 - 4));
        // The refill's answer is lost; once it is stale, the next spend asks again.
        store.now.set(1_000 + 400);
        let (_, again) = admitted(spend_one(&store, &h));
        assert_eq!(again.len(), 1);
        // It is answered: the block grows.
        let grant = granted(30, 50_000, 400);
        settled(&store, &again[0].1, &WINDOWED, Some(&grant), 1_400);
        assert_eq!(units(&store, &h), 31);
    }

    #[test]
    fn a_request_with_one_empty_block_puts_back_what_it_took_from_the_others() {
        let store = store_at(1_000);
        let (a, b) = (hit("r:a"), hit("r:b"));
        settled(
            &store,
            &asking(&a, 5),
            &WINDOWED,
            Some(&granted(5, 50_000, 0)),
            1_000,
        );
        let both = [a.clone(), b.clone()];
        let hits = must_check(spend(
            &store,
            &mut Slices::none(),
            &both,
            &[Some(WINDOWED); 2],
            400,
        ));
        assert_eq!(units(&store, &a), 5, "the unit taken from a is back");
        // b has no block: the check asks for one; a's block asks for the rest of its size.
        assert_eq!((hits[0].lease, hits[1].lease), (35, 40));
        // A rule that checks every request sends the whole request to limitd too.
        let mixed = [hit("r:c"), b];
        let hits = must_check(spend(
            &store,
            &mut Slices::none(),
            &mixed,
            &[Some(WINDOWED), None],
            400,
        ));
        assert_eq!(hits[1].lease, 0);
    }

    #[test]
    fn a_slot_held_by_another_live_key_leaves_this_key_to_per_request_checks() {
        let store = store_at(1_000);
        let a = hit("r:a");
        settled(
            &store,
            &asking(&a, 5),
            &WINDOWED,
            Some(&granted(5, 50_000, 0)),
            1_000,
        );
        let other = (0..1_000_000)
            .map(|i| hit(&format!("r:{i}")))
            .find(|h| block_id(h) % SLOTS == block_id(&a) % SLOTS && block_id(h) != block_id(&a))
            .expect("a key in the same slot");
        assert_eq!(must_check(spend_one(&store, &other))[0].lease, 0);
        settled(
            &store,
            &asking(&other, 5),
            &WINDOWED,
            Some(&granted(5, 50_000, 0)),
            1_000,
        );
        assert_eq!((units(&store, &a), units(&store, &other)), (5, 0));
        // Once a's block is spent, the slot is free for the other key.
        for _ in 0..5 {
            admitted(spend_one(&store, &a));
        }
        assert_eq!(must_check(spend_one(&store, &other))[0].lease, 40);
    }

    #[test]
    fn a_changed_rule_never_spends_the_old_rules_block() {
        let store = store_at(1_000);
        let old = hit("r:a");
        settled(
            &store,
            &asking(&old, 5),
            &WINDOWED,
            Some(&granted(5, 50_000, 0)),
            1_000,
        );
        let new = Hit {
            limit: 10,
            ..old.clone()
        };
        assert_ne!(block_id(&old), block_id(&new));
        assert_eq!(units(&store, &new), 0);
    }

    /// Shared data where another worker spends from the same block between this worker's read
    /// and its write, `conflicts` times.
    struct Racing {
        inner: FakeCounters,
        conflicts: Cell<usize>,
        racer: Hit,
    }

    impl LocalCounters for Racing {
        fn now_ms(&self) -> u64 {
            self.inner.now_ms()
        }
        fn load(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            self.inner.load(key)
        }
        fn store(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            if self.conflicts.get() > 0 {
                self.conflicts.set(self.conflicts.get() - 1);
                // The other worker's spend lands first.
                let _ = spend_one(&self.inner, &self.racer);
            }
            self.inner.store(key, value, cas)
        }
    }

    #[test]
    fn two_workers_racing_for_the_last_units_never_spend_one_twice() {
        let h = hit("r:race");
        for conflicts in [1usize, 2, 3] {
            let racing = Racing {
                inner: store_at(1_000),
                conflicts: Cell::new(conflicts),
                racer: h.clone(),
            };
            let grant = granted(3, 50_000, 0);
            settled(
                &racing.inner,
                &asking(&h, 3),
                &WINDOWED,
                Some(&grant),
                1_000,
            );
            // This worker wants one unit; the other spends `conflicts` meanwhile.
            let mine = spend_one(&racing, &h);
            let left = units(&racing.inner, &h);
            match mine {
                Spend::Admitted { .. } => assert_eq!(left + conflicts as u64 + 1, 3),
                Spend::Check { .. } => assert_eq!((left, conflicts), (0, 3)),
            }
        }
    }

    /// Writes to a key's slot so far (the CAS version counts them).
    fn writes(store: &FakeCounters, h: &Hit) -> u32 {
        store
            .data
            .borrow()
            .get(&slot_key(block_id(h)))
            .map_or(0, |(_, version)| *version)
    }

    fn spend_sliced(store: &FakeCounters, slices: &mut Slices, h: &Hit) -> Spend {
        spend(
            store,
            slices,
            std::slice::from_ref(h),
            &[Some(WINDOWED)],
            400,
        )
    }

    #[test]
    fn a_worker_spends_a_quarter_of_the_block_as_its_slice_without_touching_the_block() {
        let store = store_at(1_000);
        let h = hit("r:slice");
        settled(
            &store,
            &asking(&h, 40),
            &WINDOWED,
            Some(&granted(40, 50_000, 500)),
            1_000,
        );
        let mut worker = Slices::default();
        let written = writes(&store, &h);
        let (results, _) = admitted(spend_sliced(&store, &mut worker, &h));
        // 40 / 4 = 10 taken: one for this request, nine in the slice.
        assert_eq!((units(&store, &h), worker.units(&h, 1_000)), (30, 9));
        assert_eq!(writes(&store, &h), written + 1);
        assert_eq!(results[0].remaining, 500 + 39);
        for i in 0..9u64 {
            let (results, _) = admitted(spend_sliced(&store, &mut worker, &h));
            assert_eq!(results[0].remaining, 500 + 30 + 8 - i, "spend {i}");
        }
        assert_eq!(writes(&store, &h), written + 1, "nine spends, no write");
        assert_eq!(worker.units(&h, 1_000), 0);
        // The slice is spent: the next takes a quarter of what is left (7 of 30).
        admitted(spend_sliced(&store, &mut worker, &h));
        assert_eq!((units(&store, &h), worker.units(&h, 1_000)), (23, 6));
    }

    #[test]
    fn workers_with_slices_admit_exactly_what_was_granted_and_no_more() {
        let store = store_at(1_000);
        let h = hit("r:fair");
        settled(
            &store,
            &asking(&h, 40),
            &WINDOWED,
            Some(&granted(40, 50_000, 0)),
            1_000,
        );
        let mut workers = [Slices::default(), Slices::default(), Slices::default()];
        let mut admissions = 0;
        for round in 0..100 {
            let worker = &mut workers[round % 3];
            if matches!(spend_sliced(&store, worker, &h), Spend::Admitted { .. }) {
                admissions += 1;
            }
        }
        // Near the end blocks hold a few units and slices shrink to single units: a worker may
        // find the block empty while another still holds a unit or two, but never admit more.
        assert!((36..=40).contains(&admissions), "{admissions}");
        let held: u64 = workers.iter().map(|w| w.units(&h, 1_000)).sum();
        assert_eq!(admissions + held + units(&store, &h), 40);
        // What the others hold goes back to the block once idle, and is spent.
        store.now.set(1_000 + SLICE_IDLE_MS);
        for worker in &mut workers {
            worker.return_idle(&store, false);
        }
        assert_eq!(units(&store, &h), held);
        let mut last = Slices::none();
        for _ in 0..held {
            admitted(spend_sliced(&store, &mut last, &h));
        }
        assert!(matches!(
            spend_sliced(&store, &mut last, &h),
            Spend::Check { .. }
        ));
    }

    #[test]
    fn a_slice_in_use_is_kept_and_one_of_an_expired_block_never_joins_the_next_windows() {
        let store = store_at(1_000);
        let h = hit("r:idle");
        settled(
            &store,
            &asking(&h, 40),
            &WINDOWED,
            Some(&granted(40, 2_000, 0)),
            1_000,
        );
        let mut worker = Slices::default();
        admitted(spend_sliced(&store, &mut worker, &h));
        assert_eq!(worker.units(&h, 1_000), 9);
        store.now.set(1_000 + SLICE_IDLE_MS - 1);
        worker.return_idle(&store, false);
        assert_eq!(
            worker.units(&h, 1_000),
            9,
            "used within the idle time: kept"
        );
        // The block (and the slice) expire with the window; the next window's grant must not
        // receive the old slice's units.
        store.now.set(3_000);
        settled(
            &store,
            &asking(&h, 40),
            &WINDOWED,
            Some(&granted(5, 60_000, 0)),
            3_000,
        );
        worker.return_idle(&store, true);
        assert_eq!(units(&store, &h), 5);
        // A block of five is spent unit by unit: a quarter of it is less than one request.
        let mut other = Slices::default();
        store.now.set(3_001);
        admitted(spend_sliced(&store, &mut other, &h));
        assert_eq!((units(&store, &h), other.units(&h, 3_001)), (4, 0));
    }

    #[test]
    fn a_request_over_two_rules_puts_its_slice_unit_back_when_the_other_block_is_empty() {
        let store = store_at(1_000);
        let (a, b) = (hit("r:a"), hit("r:b"));
        settled(
            &store,
            &asking(&a, 40),
            &WINDOWED,
            Some(&granted(40, 50_000, 0)),
            1_000,
        );
        let mut worker = Slices::default();
        admitted(spend_sliced(&store, &mut worker, &a));
        assert_eq!(worker.units(&a, 1_000), 9);
        let both = [a.clone(), b];
        let hits = must_check(spend(&store, &mut worker, &both, &[Some(WINDOWED); 2], 400));
        assert_eq!(
            worker.units(&a, 1_000),
            9,
            "the unit taken from the slice is back"
        );
        assert_eq!(units(&store, &a), 30);
        assert_eq!(hits[1].lease, 40);
    }

    #[test]
    fn blocks_round_trip_and_garbage_reads_as_no_block() {
        let block = Block {
            id: 7,
            units: 1,
            expires_ms: 2,
            remaining: 3,
            size: 4,
            refill_ms: 5,
        };
        let value = block.encode("r:a");
        assert_eq!(
            Block::decode(Some(&value)),
            Some((block, b"r:a".as_slice()))
        );
        assert_eq!(Block::decode(Some(b"short")), None);
        assert_eq!(Block::decode(None), None);
    }

    /// A live block of another key, stored as if its id were `h`'s: what two keys whose ids
    /// collide would leave in the slot.
    fn store_colliding_block(store: &FakeCounters, h: &Hit, units: u64) {
        let block = Block {
            id: block_id(h),
            units,
            expires_ms: store.now_ms() + 30_000,
            remaining: 100,
            size: units,
            refill_ms: 0,
        };
        assert!(store.store(
            &slot_key(block_id(h)),
            &block.encode("r:someone-else"),
            None
        ));
    }

    #[test]
    fn a_key_never_spends_the_block_of_another_key_whose_id_collides_with_its_own() {
        let store = store_at(1_000);
        let h = hit("r:a");
        store_colliding_block(&store, &h, 30);
        let before = store.load(&slot_key(block_id(&h)));
        // Checked by limitd, and not even asking for a lease: the slot is the other key's.
        let hits = must_check(spend_sliced(&store, &mut Slices::default(), &h));
        assert_eq!(hits[0].lease, 0);
        assert_eq!(
            store.load(&slot_key(block_id(&h))),
            before,
            "the other block is untouched"
        );
        assert_eq!(units(&store, &h), 0);
        // A grant for this key does not join the other key's block either.
        settled(
            &store,
            &asking(&h, 40),
            &WINDOWED,
            Some(&granted(40, 50_000, 0)),
            1_000,
        );
        assert_eq!(store.load(&slot_key(block_id(&h))), before);
    }

    #[test]
    fn a_key_never_spends_a_slice_of_another_key_whose_id_collides_with_its_own() {
        let store = store_at(1_000);
        let mut slices = Slices::default();
        let h = hit("r:a");
        slices.slices.insert(
            block_id(&h),
            Slice {
                key: "r:someone-else".into(),
                units: 9,
                expires_ms: 50_000,
                remaining: 100,
                used_ms: 1_000,
            },
        );
        assert_eq!(slices.units(&h, 1_000), 0);
        must_check(spend_sliced(&store, &mut slices, &h));
        assert_eq!(
            slices.slices[&block_id(&h)].units,
            9,
            "the other slice is untouched"
        );
    }
}
