//! What the tests of the filter's behaviour share: its configuration, requests
//! from a given client, limitd's answers, the bodies of its callouts, and the
//! ways a callout fails.

use protocol::{BatchRequest, BatchResponse, CheckResponse, CheckResult, HitResult};
use wasmhost::{HostError, HttpCall, Request, Vm};

/// The demo's rule (10 per 60 s per client on `/limited_endpoint`), with the
/// given failure mode; group commit is on, as by default.
pub fn config(failure_mode: &str) -> String {
    format!(
        r#"{{
            "limitd_cluster": "limitd",
            "timeout": "250ms",
            "failure_mode": "{failure_mode}",
            "rules": [{{
                "name": "limited_endpoint",
                "match": {{ "path": {{ "prefix": "/limited_endpoint" }} }},
                "limit": {{ "requests": 10, "window": "60s" }}
            }}]
        }}"#
    )
}

/// `config` with `"batch": {"enabled": false}`: each request sends its own
/// batch of one.
pub fn without_batching(config: &str) -> String {
    with_batch(config, r#"{"enabled": false}"#)
}

/// `config` with the given `batch` object.
pub fn with_batch(config: &str, batch: &str) -> String {
    let body = config
        .trim_start()
        .strip_prefix('{')
        .expect("a JSON object");
    format!(r#"{{"batch": {batch}, {body}"#)
}

/// A `GET` from 127.0.0.2:5555.
pub fn get(vm: &mut Vm, path: &str) -> Request {
    get_from(vm, path, "127.0.0.2")
}

/// A `GET` from `ip`, port 5555: each client has its own counter key.
pub fn get_from(vm: &mut Vm, path: &str, ip: &str) -> Request {
    vm.request()
        .header(":method", "GET")
        .header(":path", path)
        .header(":authority", "example.com")
        .property("source.address", format!("{ip}:5555"))
        .send_headers()
        .unwrap()
}

/// limitd's result for a one-hit check against the demo's limit of 10.
pub fn result(allowed: bool, remaining: u64, retry_after_ms: u64) -> CheckResponse {
    CheckResponse {
        allowed,
        hits: vec![HitResult {
            allowed,
            limit: 10,
            remaining,
            reset_ms: 41_234,
            retry_after_ms,
            leased: 0,
            lease_ms: 0,
        }],
    }
}

/// limitd's answer to a batch: one result per check, in order.
pub fn batch_answer(results: Vec<CheckResponse>) -> Vec<u8> {
    let results = results.into_iter().map(CheckResult::from).collect();
    serde_json::to_vec(&BatchResponse { results }).unwrap()
}

/// limitd's answer to a batch of one one-hit check.
pub fn answer(allowed: bool, retry_after_ms: u64) -> Vec<u8> {
    let remaining = if allowed { 9 } else { 0 };
    batch_answer(vec![result(allowed, remaining, retry_after_ms)])
}

/// The one callout waiting for an answer.
pub fn only_pending_call(vm: &Vm) -> HttpCall {
    let pending = vm.pending_calls();
    assert_eq!(
        pending.len(),
        1,
        "expected one pending callout: {pending:?}"
    );
    pending[0].clone()
}

/// The body of a batch callout, checked to be a `POST /v2/checks`.
pub fn batch_of(call: &HttpCall) -> BatchRequest {
    assert_eq!(call.headers.get(":path").as_deref(), Some("/v2/checks"));
    serde_json::from_slice(&call.body).unwrap()
}

/// The key of the first hit of each check of a batch callout, in order.
pub fn first_keys(call: &HttpCall) -> Vec<String> {
    batch_of(call)
        .checks
        .into_iter()
        .map(|c| c.hits[0].key.clone())
        .collect()
}

/// A filter counter, summed over the host's VMs (0 if never defined).
pub fn metric(vm: &Vm, name: &str) -> i64 {
    vm.metric(&format!("ratelimit.{name}")).unwrap_or(0)
}

pub fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

/// The ways a callout can fail, as Envoy reports them to the filter.
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    /// Nothing listening: Envoy answers 503 itself.
    Unavailable,
    /// The timeout fired: Envoy answers 504 itself.
    Timeout,
    /// The upstream reset after its headers: the callback gets no headers.
    Reset,
    /// A 200 whose body is not an answer at all.
    GarbageBody,
    /// A 200 with fewer results than the batch has checks.
    WrongResultCount,
    /// A 200 with a result per check, but no result for their hits.
    WrongHitCount,
    /// A 200 with a valid answer cut short.
    Truncated,
    /// A 200 with a body over the largest answer the filter reads.
    Oversized,
    /// A 200 whose answer has values of the wrong types.
    WrongTypes,
    /// A 200 with an answer of a result kind this filter does not know, per check.
    UnknownKind,
    /// A 200 in which limitd reports every check as `error: unavailable`.
    CheckErrors,
}

pub const FAILURES: [Failure; 11] = [
    Failure::Unavailable,
    Failure::Timeout,
    Failure::Reset,
    Failure::GarbageBody,
    Failure::WrongResultCount,
    Failure::WrongHitCount,
    Failure::Truncated,
    Failure::Oversized,
    Failure::WrongTypes,
    Failure::UnknownKind,
    Failure::CheckErrors,
];

/// Fails callout `token`, which carries `checks` checks, in the way given.
pub fn fail(vm: &mut Vm, token: u32, checks: usize, failure: Failure) -> Result<(), HostError> {
    match failure {
        Failure::Unavailable => {
            // A batch that never reached limitd goes out once more (batching
            // only); the limitd cluster is still unavailable then.
            let checks_of = |body: &[u8]| {
                serde_json::from_slice::<BatchRequest>(body)
                    .ok()
                    .map(|b| b.checks)
            };
            let sent = vm
                .pending_calls()
                .into_iter()
                .find(|c| c.token == token)
                .and_then(|c| checks_of(&c.body));
            let unavailable = |vm: &mut Vm, token| {
                vm.respond_to_call(
                    token,
                    &[(":status", "503"), ("content-type", "text/plain")],
                    b"no healthy upstream",
                )
            };
            unavailable(vm, token)?;
            // The same checks again (with what is left of their timeout).
            let again = vm.pending_calls().into_iter().find(|c| {
                checks_of(&c.body) == sent
                    && c.headers.get(":path").as_deref() == Some("/v2/checks")
            });
            match again {
                Some(call) => unavailable(vm, call.token),
                None => Ok(()),
            }
        }
        Failure::Timeout => vm.time_out_call(token),
        Failure::Reset => vm.reset_call(token),
        Failure::GarbageBody => {
            vm.respond_to_call(token, &[(":status", "200")], b"<html>oops</html>")
        }
        Failure::WrongResultCount => {
            let results = vec![result(true, 9, 0); checks.saturating_sub(1)];
            vm.respond_to_call(token, &[(":status", "200")], &batch_answer(results))
        }
        Failure::WrongHitCount => {
            let empty = CheckResponse {
                allowed: true,
                hits: Vec::new(),
            };
            vm.respond_to_call(
                token,
                &[(":status", "200")],
                &batch_answer(vec![empty; checks]),
            )
        }
        Failure::Truncated => {
            let whole = batch_answer(vec![result(true, 9, 0); checks]);
            vm.respond_to_call(token, &[(":status", "200")], &whole[..whole.len() / 2])
        }
        Failure::Oversized => {
            // A valid answer behind 2 MiB of white space: too large to be read at all.
            let mut body = vec![b' '; 2 << 20];
            body.extend(batch_answer(vec![result(true, 9, 0); checks]));
            vm.respond_to_call(token, &[(":status", "200")], &body)
        }
        Failure::WrongTypes => {
            let one = r#"{"result":"allowed","hits":[{"allowed":"yes","limit":-1,"remaining":1.5,"reset_ms":null,"retry_after_ms":[]}]}"#;
            let body = format!(r#"{{"results":[{}]}}"#, vec![one; checks].join(","));
            vm.respond_to_call(token, &[(":status", "200")], body.as_bytes())
        }
        Failure::UnknownKind => {
            let one = r#"{"result":"granted","hits":[]}"#;
            let body = format!(r#"{{"results":[{}]}}"#, vec![one; checks].join(","));
            vm.respond_to_call(token, &[(":status", "200")], body.as_bytes())
        }
        Failure::CheckErrors => {
            let one = r#"{"result":"error","error":"unavailable","detail":"redis unavailable"}"#;
            let body = format!(r#"{{"results":[{}]}}"#, vec![one; checks].join(","));
            vm.respond_to_call(token, &[(":status", "200")], body.as_bytes())
        }
    }
}

/// limitd answers 503 to every callout, until none is left (each answer may
/// let the root send what waited meanwhile).
pub fn limitd_down(vm: &mut Vm) {
    while let Some(call) = vm.pending_calls().first().cloned() {
        vm.respond_to_call(
            call.token,
            &[(":status", "503"), ("content-type", "text/plain")],
            b"no healthy upstream",
        )
        .unwrap();
    }
}
