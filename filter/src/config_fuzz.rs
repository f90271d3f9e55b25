//! A property test of the configuration parser: thousands of mutated
//! configurations never panic, and each is either accepted or refused with a
//! message that names where the problem is. The mutations come from [`testrng`]: a failure
//! prints its seed, and `TEST_SEED=<seed>` replays it.

use testrng::Rng;

use crate::config::Policy;

const VALID: &str = r#"{"limitd_cluster":"limitd","timeout":"250ms","failure_mode":"allow","response_headers":"ietf",
 "batch":{"enabled":true,"max_checks":64,"max_in_flight":1},
 "rules":[{"name":"a","match":{"path":{"prefix":"/a"},"methods":["GET"],"host":"*.x.com","headers":[{"name":"x-k","equals":"v"}]},
   "key":["client_ip",{"client_ip":{"ipv4_prefix":24,"ipv6_prefix":64}},{"header":"x-k"},"path","method",{"constant":"c"}],
   "missing":{"default":"anon"},"limit":{"requests":10,"window":"60s","cost":1,"algorithm":"gcra","burst":5},
   "shadow":false,"failure_mode":"deny","fallback":{"requests":5,"window":"1m"}},
  {"name":"b","match":{"path":{"regex":"^/v[0-9]+/"}},"limit":{"requests":3,"window":"500ms","algorithm":"sliding_window"}}]}"#;

/// Fragments that are likely to reach deep into the parser and the checks.
const FRAGMENTS: &[&str] = &[
    "0",
    "-1",
    "18446744073709551616",
    "1e400",
    "\"\"",
    "\"5 minutes\"",
    "\"0ms\"",
    "\"367d\"",
    "null",
    "true",
    "[]",
    "{}",
    "\"(\"",
    "\"*\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"gcra\"",
    "\"skip\"",
    "{\"default\":1}",
    "[\"ip\"]",
    "\"é\"",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..=rng.usize(..3) {
        let at = rng.usize(..bytes.len() + 1);
        match rng.usize(..5) {
            0 if !bytes.is_empty() => {
                let end = (at + 1 + rng.usize(..8)).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            1 => bytes.insert(at, b"{}[],:\"0a\\"[rng.usize(..10)]),
            2 => {
                let fragment = FRAGMENTS[rng.usize(..FRAGMENTS.len())].as_bytes();
                bytes.splice(at..at, fragment.iter().copied());
            }
            3 => {
                // Replace the value after some `":` with a fragment.
                if let Some(colon) = bytes[at.min(bytes.len())..].iter().position(|&b| b == b':') {
                    let start = at + colon + 1;
                    let end = bytes[start..]
                        .iter()
                        .position(|&b| b == b',' || b == b'}')
                        .map_or(bytes.len(), |e| start + e);
                    let fragment = FRAGMENTS[rng.usize(..FRAGMENTS.len())].as_bytes();
                    bytes.splice(start..end, fragment.iter().copied());
                }
            }
            _ => {
                if at < bytes.len() {
                    bytes[at] = rng.u8(..);
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn mutated_configurations_never_panic_and_errors_say_where() {
    assert!(
        Policy::from_json(VALID.as_bytes()).is_ok(),
        "the seed configuration must be valid"
    );
    let mut rng = testrng::rng("mutated_configurations_never_panic_and_errors_say_where");
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..5_000 {
        let text = mutate(&mut rng, VALID);
        match Policy::from_json(text.as_bytes()) {
            Ok(_) => accepted += 1,
            Err(e) => {
                refused += 1;
                let message = e.to_string();
                assert!(
                    !message.is_empty() && !message.contains('\n'),
                    "{text}\n=> {message:?}"
                );
                // Anything past the document's syntax names its field.
                if !e.path.is_empty() {
                    assert!(message.starts_with(&e.path), "{text}\n=> {message}");
                }
            }
        }
    }
    // Both outcomes must be exercised, or the generator proves nothing.
    assert!(
        accepted > 50 && refused > 1_000,
        "accepted {accepted}, refused {refused}"
    );
}
