//! Group commit of checks, free of host calls: requests that arrive while a
//! callout is in flight wait, and go out together in the next one.
//!
//! One [`Batcher`] lives in each worker's VM, shared by its root context
//! (which makes the callouts, so that it receives their answers) and its HTTP
//! contexts (which queue their checks and wake the root), beside the [`Live`]
//! set of the requests still there to be answered. The glue drives both; this
//! module decides what waits, what goes out, and who is still alive.

use std::collections::{HashMap, HashSet, VecDeque};

use protocol::bounds::{MAX_ANSWER_BYTES, MAX_BODY_BYTES};
use protocol::{BatchResponse, CheckResponse, CheckResult, Hit};
use serde::Serialize;

use crate::verdict::{CalloutError, Check, Headers};

/// The context id of a lease refill's entry: no request waits for it (HTTP contexts have
/// non-zero ids), and its answer only fills a lease block.
pub const REFILL: u32 = 0;

/// A request's check, waiting for or riding in a callout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The HTTP context of the request.
    pub context_id: u32,
    pub check: Check,
    /// When it was queued (proxy clock, ms): its share of the timeout starts then.
    pub queued_ms: u64,
    /// Whether it already went out once to an unreachable limitd.
    pub retried: bool,
}

/// The requests of a worker that have a check, from their headers until their context is done:
/// only these are resumed, answered or sent; with the rate-limit headers decided for the
/// responses of those a batch allowed, until the response comes.
#[derive(Debug)]
pub struct Live {
    ids: HashSet<u32>,
    /// Rate-limit headers for the responses of allowed requests, by context.
    headers: HashMap<u32, Headers>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            // Refills are always live: their answer is wanted whoever asked.
            ids: HashSet::from([REFILL]),
            headers: HashMap::new(),
        }
    }
}

impl Live {
    /// A request has a check: it is live (there to be resumed or answered)
    /// until [`Live::done`]. A request that no rule matched is never here.
    pub fn created(&mut self, context_id: u32) {
        self.ids.insert(context_id);
    }

    /// A request's context is done: whatever it waited for is dropped.
    pub fn done(&mut self, context_id: u32) {
        self.ids.remove(&context_id);
        self.headers.remove(&context_id);
    }

    /// Whether the request is still there to be resumed or answered.
    pub fn contains(&self, context_id: u32) -> bool {
        self.ids.contains(&context_id)
    }

    /// Keeps the headers for a live request's response (nothing for one that is gone).
    pub fn set_headers(&mut self, context_id: u32, headers: Headers) {
        if !headers.is_empty() && self.ids.contains(&context_id) {
            self.headers.insert(context_id, headers);
        }
    }

    pub fn take_headers(&mut self, context_id: u32) -> Headers {
        self.headers.remove(&context_id).unwrap_or_default()
    }
}

/// The queue and the callouts in flight.
#[derive(Debug)]
pub struct Batcher {
    max_batch: usize,
    max_in_flight: usize,
    waiting: VecDeque<Entry>,
    in_flight: HashMap<u32, Vec<Entry>>,
    /// Requests whose own callout is in flight (sent at once, nothing waited).
    direct: HashSet<u32>,
    /// True while a wake-up of the root is queued and not yet handled.
    woken: bool,
}

impl Batcher {
    pub fn new(max_batch: usize, max_in_flight: usize) -> Self {
        Batcher {
            max_batch: max_batch.max(1),
            max_in_flight: max_in_flight.max(1),
            waiting: VecDeque::new(),
            in_flight: HashMap::new(),
            direct: HashSet::new(),
            woken: false,
        }
    }

    /// Queues a request's check. Returns true when the caller must wake the
    /// root (no wake-up is pending yet).
    pub fn push(&mut self, context_id: u32, check: Check, now_ms: u64) -> bool {
        self.waiting.push_back(Entry {
            context_id,
            check,
            queued_ms: now_ms,
            retried: false,
        });
        !std::mem::replace(&mut self.woken, true)
    }

    /// Takes back the check just pushed (its request could not wake the root).
    pub fn unpush(&mut self) -> Option<Entry> {
        self.woken = false;
        self.waiting.pop_back()
    }

    /// Takes the live requests that have waited `timeout_ms` or more without
    /// going out (the callout ahead of them hung): they get the failure mode
    /// now, so no request waits longer than the timeout in all.
    pub fn take_expired(&mut self, live: &Live, now_ms: u64, timeout_ms: u64) -> Vec<Entry> {
        let mut expired = Vec::new();
        while self
            .waiting
            .front()
            .is_some_and(|e| e.queued_ms.saturating_add(timeout_ms) <= now_ms)
        {
            if let Some(entry) = self.waiting.pop_front() {
                if live.contains(entry.context_id) {
                    expired.push(entry);
                }
            }
        }
        expired
    }
    /// Whether a request may send its check at once in a callout of its own:
    /// nothing waits and a callout may start. Then nothing is gained by going
    /// through the root, which costs a wake-up (the low-load case). If so, the
    /// callout counts as in flight until [`Batcher::direct_done`].
    pub fn try_direct(&mut self, context_id: u32) -> bool {
        let free = self.waiting.is_empty()
            && self.in_flight.len() + self.direct.len() < self.max_in_flight;
        if free {
            self.direct.insert(context_id);
        }
        free
    }

    /// A request's own callout finished (or the request went away). Returns
    /// true when the root must be woken to send what waited meanwhile.
    pub fn direct_done(&mut self, context_id: u32) -> bool {
        self.direct.remove(&context_id)
            && !self.waiting.is_empty()
            && !std::mem::replace(&mut self.woken, true)
    }

    /// The root was woken: later pushes must wake it again.
    pub fn wake_handled(&mut self) {
        self.woken = false;
    }

    /// The next batch to send, if a callout may start and live requests wait.
    /// Requests whose client went away are dropped here. A batch holds at most
    /// `max_batch` checks and stays within limitd's body limit.
    pub fn next_batch(&mut self, live: &Live) -> Option<Vec<Entry>> {
        if self.in_flight.len() + self.direct.len() >= self.max_in_flight {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = BATCH_OVERHEAD_BYTES;
        while batch.len() < self.max_batch {
            let Some(entry) = self.waiting.front() else {
                break;
            };
            let size = encoded_bound(&entry.check);
            if !batch.is_empty() && bytes + size > MAX_BODY_BYTES {
                break;
            }
            let Some(entry) = self.waiting.pop_front() else {
                break;
            };
            if live.contains(entry.context_id) {
                bytes += size;
                batch.push(entry);
            }
        }
        (!batch.is_empty()).then_some(batch)
    }

    /// A batch went out as the callout `token`.
    pub fn sent(&mut self, token: u32, batch: Vec<Entry>) {
        self.in_flight.insert(token, batch);
    }

    /// The callout `token` finished: its batch, if it was ours.
    pub fn finished(&mut self, token: u32) -> Option<Vec<Entry>> {
        self.in_flight.remove(&token)
    }
    /// Puts a batch that never reached limitd back at the head of the queue, to
    /// go out again (once) within what is left of its timeout. Returns the
    /// entries that had been retried already, which the caller settles with
    /// the failure mode. Entries whose client left are dropped.
    pub fn retry(&mut self, live: &Live, batch: Vec<Entry>) -> Vec<Entry> {
        let (done, again): (Vec<Entry>, Vec<Entry>) = batch.into_iter().partition(|e| e.retried);
        for mut entry in again.into_iter().rev() {
            if live.contains(entry.context_id) {
                entry.retried = true;
                self.waiting.push_front(entry);
            }
        }
        done
    }

    /// Whether nothing waits and no callout is in flight: a retired
    /// configuration's batcher in this state has nothing left to answer.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.in_flight.is_empty() && self.direct.is_empty()
    }

    /// Takes a request's check out of the queue, if it waits there.
    pub fn take_waiting(&mut self, context_id: u32) -> Option<Entry> {
        let at = self
            .waiting
            .iter()
            .position(|e| e.context_id == context_id)?;
        self.waiting.remove(at)
    }

    /// How many requests wait for a callout.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// An upper bound of a batch's encoded size besides its checks.
const BATCH_OVERHEAD_BYTES: usize = 64;

/// An upper bound of one check's encoded size: JSON may escape each byte of a
/// key into two, and a hit's other fields take at most 150 bytes.
fn encoded_bound(check: &Check) -> usize {
    12 + check
        .hits
        .iter()
        .map(|hit| 150 + 2 * hit.key.len())
        .sum::<usize>()
}

/// Whether a 503 is Envoy's own answer for a limitd it could not connect to
/// (or none healthy): then the check never reached limitd. A reset after the
/// request was sent ("connection termination") may have been counted, and
/// limitd's own 503s are JSON; neither is matched.
///
/// The body's text is the only sign of the cause: proxy-wasm 0.2.5 on Envoy
/// 1.40 gives none typed for a callout that got an answer. `get_status` is set
/// only for a callout reset after its headers (`BrokenConnection`, "reset",
/// seen as no headers: [`CalloutError::Reset`]), and these 503s are the
/// router's local replies with no header but `content-length` and
/// `content-type` (checked against Envoy 1.40). The one `x-envoy-overloaded`
/// marks a circuit breaker's overflow, which is not retried: a second try
/// would only add to the overload.
fn never_reached(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text == "no healthy upstream"
        || (text.starts_with("upstream connect error")
            && text.contains("reset reason: remote connection failure"))
        || (text.starts_with("upstream connect error")
            && text.contains("reset reason: local connection failure"))
}

/// The timeout of a batch's callout: what is left of its oldest request's
/// `timeout_ms` (at least 1 ms; Envoy reads 0 as "no timeout").
pub fn remaining_ms(batch: &[Entry], now_ms: u64, timeout_ms: u64) -> u64 {
    let oldest = batch.iter().map(|e| e.queued_ms).min().unwrap_or(now_ms);
    timeout_ms
        .saturating_sub(now_ms.saturating_sub(oldest))
        .clamp(1, timeout_ms.max(1))
}

#[derive(Serialize)]
struct CheckRef<'a> {
    hits: &'a [Hit],
}

#[derive(Serialize)]
struct BatchRef<'a> {
    timeout_ms: u64,
    checks: Vec<CheckRef<'a>>,
}

/// The JSON body of `POST /v2/checks` for a batch whose callout waits
/// `timeout_ms` for the answer.
pub fn encode_batch(batch: &[Entry], timeout_ms: u64) -> Vec<u8> {
    let body = BatchRef {
        timeout_ms,
        checks: batch
            .iter()
            .map(|e| CheckRef {
                hits: &e.check.hits,
            })
            .collect(),
    };
    // Serializing plain structs of strings and integers cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// What became of one check of an answered batch: limitd's decision, or why
/// there is none (then the request gets its rule's failure mode).
pub type CheckAnswer = Result<CheckResponse, CalloutError>;

/// Reads limitd's answer to a batch: one result per check. A callout that
/// failed as a whole (a status, a body that is not an answer to this batch)
/// is an error for every check; otherwise each check has its own result, and
/// one whose result does not fit it (a wrong number of hit results, a kind
/// this filter does not know) is an error for that check alone.
pub fn read_batch_answer(
    batch: &[Entry],
    status: &[u8],
    body: &[u8],
) -> Result<Vec<CheckAnswer>, CalloutError> {
    if status == b"503" && never_reached(body) {
        return Err(CalloutError::Unreachable(
            String::from_utf8_lossy(body).into_owned(),
        ));
    }
    if status != b"200" {
        return Err(CalloutError::Status(
            String::from_utf8_lossy(status).into_owned(),
        ));
    }
    let answer: BatchResponse =
        serde_json::from_slice(body).map_err(|e| CalloutError::Body(e.to_string()))?;
    if answer.results.len() != batch.len() {
        return Err(CalloutError::Body(format!(
            "{} results for {} checks",
            answer.results.len(),
            batch.len()
        )));
    }
    Ok(batch
        .iter()
        .zip(answer.results)
        .map(|(entry, result)| check_answer(&entry.check, result))
        .collect())
}

fn check_answer(check: &Check, result: CheckResult) -> CheckAnswer {
    let (allowed, hits) = match result {
        CheckResult::Allowed { hits } => (true, hits),
        CheckResult::Denied { hits } => (false, hits),
        CheckResult::Error { error, detail } => {
            return Err(CalloutError::Refused {
                kind: error,
                detail,
            })
        }
        CheckResult::Unknown => {
            return Err(CalloutError::Body(
                "a result kind this filter does not know".into(),
            ))
        }
    };
    if hits.len() != check.hits.len() {
        return Err(CalloutError::Body(format!(
            "{} hit results for {} hits",
            hits.len(),
            check.hits.len()
        )));
    }
    Ok(CheckResponse { allowed, hits })
}

/// Whether an answer of `body_size` bytes may be read into the VM: a larger
/// one cannot be a real answer, and copying it would only cost memory.
pub fn answer_fits(body_size: usize) -> bool {
    body_size <= MAX_ANSWER_BYTES
}

#[cfg(test)]
pub(crate) mod tests {
    use protocol::{Algorithm, BatchRequest, HitResult};

    use super::*;

    /// A check of one fixed-window hit on `key` (limit 10 per second), of rule 0.
    pub(crate) fn check(key: &str) -> Check {
        Check {
            hits: vec![Hit {
                key: key.into(),
                limit: 10,
                window_ms: 1000,
                cost: 1,
                algorithm: Algorithm::FixedWindow,
                burst: None,
                shadow: false,
                lease: 0,
            }],
            rules: vec![0],
        }
    }

    fn ids(batch: &[Entry]) -> Vec<u32> {
        batch.iter().map(|e| e.context_id).collect()
    }

    #[test]
    fn the_first_push_wakes_the_root_and_later_ones_ride_along() {
        let mut b = Batcher::new(64, 1);
        let mut live = Live::default();
        for id in 1..=3 {
            live.created(id);
        }
        assert!(b.push(1, check("a"), 0));
        assert!(!b.push(2, check("b"), 0));
        b.wake_handled();
        assert!(b.push(3, check("c"), 0));
        assert_eq!(ids(&b.next_batch(&live).unwrap()), [1, 2, 3]);
        assert_eq!(b.next_batch(&live), None);
    }

    #[test]
    fn requests_wait_while_the_callouts_in_flight_are_at_their_bound() {
        let mut b = Batcher::new(64, 1);
        let mut live = Live::default();
        for id in 1..=4 {
            live.created(id);
        }
        b.push(1, check("a"), 0);
        let first = b.next_batch(&live).unwrap();
        b.sent(7, first);
        b.push(2, check("b"), 0);
        b.push(3, check("c"), 0);
        assert_eq!(b.next_batch(&live), None, "one callout in flight at most");
        assert_eq!(b.waiting(), 2);
        assert_eq!(ids(&b.finished(7).unwrap()), [1]);
        assert_eq!(b.finished(7), None);
        assert_eq!(ids(&b.next_batch(&live).unwrap()), [2, 3]);
    }

    #[test]
    fn batches_are_bounded() {
        let mut b = Batcher::new(2, 4);
        let mut live = Live::default();
        for id in 1..=5 {
            live.created(id);
            b.push(id, check("k"), 0);
        }
        assert_eq!(ids(&b.next_batch(&live).unwrap()), [1, 2]);
        assert_eq!(ids(&b.next_batch(&live).unwrap()), [3, 4]);
        assert_eq!(ids(&b.next_batch(&live).unwrap()), [5]);
    }

    #[test]
    fn requests_whose_client_went_away_are_dropped() {
        let mut b = Batcher::new(64, 1);
        let mut live = Live::default();
        for id in 1..=3 {
            live.created(id);
            b.push(id, check("k"), 0);
        }
        live.done(2);
        assert!(!live.contains(2));
        assert_eq!(ids(&b.next_batch(&live).unwrap()), [1, 3]);
        live.done(1);
        live.done(3);
        live.created(4);
        b.push(5, check("never created"), 0);
        assert_eq!(b.next_batch(&live), None);
    }

    #[test]
    fn headers_are_kept_for_live_requests_only() {
        let mut live = Live::default();
        live.created(1);
        live.set_headers(1, vec![("ratelimit", "x".into())]);
        live.set_headers(2, vec![("ratelimit", "y".into())]);
        assert_eq!(live.take_headers(1), vec![("ratelimit", "x".to_owned())]);
        assert!(live.take_headers(1).is_empty());
        assert!(live.take_headers(2).is_empty());
        live.set_headers(1, vec![("ratelimit", "z".into())]);
        live.done(1);
        assert!(live.take_headers(1).is_empty());
    }

    #[test]
    fn a_batch_encodes_as_one_check_per_request() {
        let batch = vec![
            Entry {
                context_id: 1,
                check: check("a"),
                queued_ms: 0,
                retried: false,
            },
            Entry {
                context_id: 2,
                check: check("b"),
                queued_ms: 0,
                retried: false,
            },
        ];
        let sent: BatchRequest = serde_json::from_slice(&encode_batch(&batch, 250)).unwrap();
        assert_eq!(sent.checks.len(), 2);
        assert_eq!(sent.checks[1].hits[0].key, "b");
        assert_eq!(sent.timeout_ms, Some(250));
    }

    #[test]
    fn answers_must_fit_the_batch() {
        let batch = vec![Entry {
            context_id: 1,
            check: check("a"),
            queued_ms: 0,
            retried: false,
        }];
        let result = |hits: usize| CheckResult::Allowed {
            hits: vec![
                HitResult {
                    allowed: true,
                    limit: 10,
                    remaining: 9,
                    reset_ms: 1,
                    retry_after_ms: 0,
                    leased: 0,
                    lease_ms: 0,
                };
                hits
            ],
        };
        let body =
            |results: Vec<CheckResult>| serde_json::to_vec(&BatchResponse { results }).unwrap();
        let answers = read_batch_answer(&batch, b"200", &body(vec![result(1)])).unwrap();
        assert!(answers[0].as_ref().unwrap().allowed);
        // A wrong number of results fails the whole callout.
        assert!(matches!(
            read_batch_answer(&batch, b"200", &body(vec![])),
            Err(CalloutError::Body(_))
        ));
        assert!(matches!(
            read_batch_answer(&batch, b"200", &body(vec![result(1), result(1)])),
            Err(CalloutError::Body(_))
        ));
        // A wrong number of hit results fails that check alone.
        let answers = read_batch_answer(&batch, b"200", &body(vec![result(2)])).unwrap();
        assert!(
            matches!(&answers[0], Err(CalloutError::Body(e)) if e.contains("2 hit results for 1 hits"))
        );
        assert_eq!(
            read_batch_answer(&batch, b"503", b""),
            Err(CalloutError::Status("503".into()))
        );
        for garbage in [
            &b"{"[..],
            b"",
            b"null",
            b"[]",
            br#"{"results":{}}"#,
            br#"{"results":[1]}"#,
            br#"{"results":[{"result":"allowed","hits":"x"}]}"#,
            b"\xff\xfe",
        ] {
            assert!(
                matches!(
                    read_batch_answer(&batch, b"200", garbage),
                    Err(CalloutError::Body(_))
                ),
                "{}",
                String::from_utf8_lossy(garbage)
            );
        }
    }

    #[test]
    fn each_check_of_a_batch_has_its_own_answer() {
        let batch: Vec<Entry> = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, key)| Entry {
                context_id: i as u32,
                check: check(key),
                queued_ms: 0,
                retried: false,
            })
            .collect();
        let hit =
            r#"{"allowed":true,"limit":10,"remaining":9,"reset_ms":1,"retry_after_ms":0,"new":1}"#;
        let body = format!(
            r#"{{"results":[{{"result":"allowed","hits":[{hit}]}},
                {{"result":"error","error":"invalid","detail":"hits[0].limit: must be ..."}},
                {{"result":"leased","hits":[{hit}]}},
                {{"result":"denied","hits":[{hit}]}}],"version":3}}"#
        );
        let answers = read_batch_answer(&batch, b"200", body.as_bytes()).unwrap();
        assert!(answers[0].as_ref().unwrap().allowed);
        assert!(matches!(
            &answers[1],
            Err(CalloutError::Refused { kind: protocol::ErrorKind::Invalid, detail }) if detail.contains("limit")
        ));
        assert!(matches!(&answers[2], Err(CalloutError::Body(_))));
        assert!(!answers[3].as_ref().unwrap().allowed);
    }

    #[test]
    fn batches_stay_within_limitds_body_limit() {
        let mut b = Batcher::new(256, 1);
        let mut live = Live::default();
        let long = "k".repeat(2000);
        for id in 1..=40 {
            live.created(id);
            b.push(id, check(&long), 0);
        }
        let first = b.next_batch(&live).unwrap();
        let entries: Vec<Entry> = first.clone();
        assert!(first.len() < 40, "{}", first.len());
        assert!(encode_batch(&entries, 250).len() <= MAX_BODY_BYTES);
        b.sent(1, first);
        b.finished(1);
        let mut rest = 0;
        while let Some(batch) = b.next_batch(&live) {
            assert!(encode_batch(&batch, 250).len() <= MAX_BODY_BYTES);
            rest += batch.len();
            b.sent(2, batch);
            b.finished(2);
        }
        assert_eq!(entries.len() + rest, 40);
        assert!(answer_fits(MAX_ANSWER_BYTES) && !answer_fits(MAX_ANSWER_BYTES + 1));
    }

    #[test]
    fn requests_that_waited_a_whole_timeout_are_taken_out() {
        let mut b = Batcher::new(64, 1);
        let mut live = Live::default();
        for id in 1..=4 {
            live.created(id);
        }
        b.push(1, check("a"), 1_000);
        b.push(2, check("b"), 1_100);
        b.push(3, check("c"), 1_200);
        b.push(4, check("d"), 1_300);
        live.done(2);
        assert!(b.take_expired(&live, 1_249, 250).is_empty());
        // 1 and 2 waited 250 ms (2 is gone, so only 1 comes back); 3 and 4 wait on.
        assert_eq!(ids(&b.take_expired(&live, 1_350, 250)), [1]);
        assert_eq!(b.waiting(), 2);
        let batch = b.next_batch(&live).unwrap();
        assert_eq!(ids(&batch), [3, 4]);
        // The batch may take what is left of its oldest request's timeout.
        assert_eq!(remaining_ms(&batch, 1_350, 250), 100);
        assert_eq!(remaining_ms(&batch, 1_200, 250), 250);
        assert_eq!(remaining_ms(&batch, 9_999, 250), 1);
    }

    #[test]
    fn a_batch_that_never_reached_limitd_goes_out_again_once() {
        let mut b = Batcher::new(64, 1);
        let mut live = Live::default();
        for id in 1..=3 {
            live.created(id);
            b.push(id, check("k"), 5);
        }
        let first = b.next_batch(&live).unwrap();
        b.sent(1, first);
        live.created(4);
        b.push(4, check("later"), 6);
        live.done(2);
        let unreachable = b.finished(1).unwrap();
        assert!(b.retry(&live, unreachable).is_empty());
        // Back at the head of the queue, in order, keeping their queued time.
        let again = b.next_batch(&live).unwrap();
        assert_eq!(ids(&again), [1, 3, 4]);
        assert!(again[0].retried && !again[2].retried);
        assert_eq!(again[0].queued_ms, 5);
        // A second failure is not retried.
        let settled = b.retry(&live, again);
        assert_eq!(ids(&settled), [1, 3]);
        assert_eq!(b.waiting(), 1);
    }

    #[test]
    fn only_envoys_own_connect_failures_are_unreachable() {
        let batch = [Entry {
            context_id: 1,
            check: check("a"),
            queued_ms: 0,
            retried: false,
        }];
        let unreachable = |body: &str| {
            matches!(
                read_batch_answer(&batch, b"503", body.as_bytes()),
                Err(CalloutError::Unreachable(_))
            )
        };
        assert!(unreachable("no healthy upstream"));
        assert!(unreachable(
            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: delayed connect error: Connection refused"
        ));
        assert!(!unreachable("upstream connect error or disconnect/reset before headers. reset reason: connection termination"));
        assert!(!unreachable(r#"{"error":"redis unavailable"}"#));
    }

    /// The bodies Envoy 1.40's router answers with, as seen on routes to a
    /// cluster with no endpoint, one with nothing listening and one whose
    /// circuit breaker is full; a local connection failure reads like a remote one.
    #[test]
    fn envoys_local_replies_are_told_apart_by_their_text_alone() {
        let batch = [Entry {
            context_id: 1,
            check: check("a"),
            queued_ms: 0,
            retried: false,
        }];
        let answer = |status: &[u8], body: &str| read_batch_answer(&batch, status, body.as_bytes());
        let no_healthy_upstream = "no healthy upstream";
        let connect_failure = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
        let local_failure = "upstream connect error or disconnect/reset before headers. reset reason: local connection failure";
        for body in [no_healthy_upstream, connect_failure, local_failure] {
            assert_eq!(
                answer(b"503", body),
                Err(CalloutError::Unreachable(body.into())),
                "{body}"
            );
            // The same text under another status is not Envoy's connect failure.
            assert_eq!(
                answer(b"500", body),
                Err(CalloutError::Status("500".into())),
                "{body}"
            );
        }
        let overflow =
            "upstream connect error or disconnect/reset before headers. reset reason: overflow";
        assert_eq!(
            answer(b"503", overflow),
            Err(CalloutError::Status("503".into()))
        );
    }

    #[test]
    fn at_low_load_a_request_sends_its_own_check_and_later_ones_wait_for_it() {
        let mut b = Batcher::new(64, 1);
        let mut live = Live::default();
        for id in 1..=3 {
            live.created(id);
        }
        assert!(b.try_direct(1), "nothing in flight, nothing waiting");
        assert!(!b.try_direct(2), "one callout in flight at most");
        b.push(2, check("b"), 0);
        b.push(3, check("c"), 0);
        b.wake_handled(); // The root woke, and found a callout in flight.
        assert_eq!(b.next_batch(&live), None, "the direct callout is in flight");
        // When it finishes, the root is woken once to send what waited.
        assert!(b.direct_done(1));
        assert_eq!(ids(&b.next_batch(&live).unwrap()), [2, 3]);
        assert!(!b.direct_done(1), "already done");
    }

    #[test]
    fn a_direct_callout_with_nothing_waiting_wakes_nobody() {
        let mut b = Batcher::new(64, 1);
        let mut live = Live::default();
        live.created(1);
        assert!(b.try_direct(1));
        assert!(!b.direct_done(1));
        assert!(b.try_direct(1));
    }
}
