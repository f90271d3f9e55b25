//! The benchmark's Envoy configurations, each the shipped `envoy.yaml` and rules as the
//! harness rewrites it, plus one change:
//!
//! - `baseline`: the wasm filter removed (no limiter at all);
//! - `local_ratelimit`: Envoy's own in-process token bucket in its place, with
//!   a bucket so large that everything passes (the in-process reference);
//! - `ours`: our filter, with one rule added for the allowed path (`GET /`,
//!   keyed by client IP, a limit no run reaches) and the shipped
//!   `limited_endpoint` rule tightened to 1 per hour for the denied path;
//! - `ours_per_request`: the same without group commit (one callout per
//!   request), so the gain of batching is measured side by side;
//! - `shipped`: our filter with the shipped rules unchanged, none of which
//!   matches `GET /`: what the filter costs before it decides anything;
//! - `leases`: our filter with rules in lease mode: the allowed path's rule
//!   (`GET /`), one whose limit the open loop's rate exceeds by 1.2×, and
//!   1,000 keys (one per path) with and without leases;
//! - `local_ratelimit_denying`: Envoy's own token bucket, empty: the
//!   in-process denial our denied path is compared with;
//! - `noop`: in place of ours, a proxy-wasm filter that lets every request
//!   through without a host call (`filter/examples/noop.rs`): the floor of any
//!   filter on Envoy's wasm runtime.
//!
//! The baseline, the reference, the idle filter and the allowed path all
//! request `GET /`, so the backends do the same work in each.

use e2e::EnvoyOptions;

const WASM_FILTER: &str = e2e::envoy_config::FILTER_NAME;

/// Requested in every allowed scenario; only the bench rule matches it.
pub const ALLOWED_PATH: &str = "/";
/// Requested in the denied scenario; only the (tightened) `limited_endpoint` rule matches it.
pub const DENIED_PATH: &str = "/limited_endpoint";

/// An Envoy scenario: which Envoy of the stack, which path, which answer.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub id: &'static str,
    pub what: &'static str,
    /// Index into the stack's Envoys (the order [`envoys`] starts them in).
    pub envoy: usize,
    pub path: &'static str,
    pub status: u16,
    /// 0: every request asks for `path`; n: for `path` followed by one of n numbers in turn
    /// (n keys of a rule keyed by path).
    pub keys: u32,
    /// Answers may be `200` as well as `status` (a rule near its limit).
    pub mixed: bool,
}

impl Scenario {
    /// The path of the scenario's `i`-th request.
    pub fn path_of(&self, i: u64) -> String {
        if self.keys == 0 {
            self.path.to_owned()
        } else {
            format!("{}{}", self.path, i % u64::from(self.keys))
        }
    }

    /// Whether an answer's status is one the scenario expects.
    pub fn expects(&self, status: u16) -> bool {
        status == self.status || (self.mixed && status == 200)
    }
}

/// How many keys the many-keys scenarios spread over.
pub const MANY_KEYS: u32 = 1000;

/// The Envoy scenarios, baseline first.
pub const SCENARIOS: [Scenario; 15] = [
    Scenario {
        id: "baseline",
        what: "Envoy without any limiter (wasm filter removed)",
        envoy: 1,
        path: ALLOWED_PATH,
        status: 200,
        keys: 0,
        mixed: false,
    },
    Scenario {
        id: "local_ratelimit",
        what: "Envoy's own in-process local_ratelimit (token bucket, never empty)",
        envoy: 2,
        path: ALLOWED_PATH,
        status: 200,
        keys: 0,
        mixed: false,
    },
    Scenario {
        id: "wasm_noop",
        what: "a proxy-wasm filter that does nothing (same SDK and build): the wasm runtime's floor",
        envoy: 7,
        path: ALLOWED_PATH,
        status: 200,
        keys: 0,
        mixed: false,
    },
    Scenario {
        id: "wasm_floor_admit",
        what: "a proxy-wasm filter making only the host calls an admission from a lease needs",
        envoy: 8,
        path: ALLOWED_PATH,
        status: 200,
        keys: 0,
        mixed: false,
    },
    Scenario {
        id: "wasm_floor_deny",
        what: "a proxy-wasm filter making only the host calls a cached denial needs: 429",
        envoy: 8,
        path: DENIED_PATH,
        status: 429,
        keys: 0,
        mixed: false,
    },
    Scenario {
        id: "filter_idle",
        what: "our filter loaded with the shipped rules, none matching the request",
        envoy: 4,
        path: ALLOWED_PATH,
        status: 200,
        keys: 0,
        mixed: false,
    },
    Scenario {
        id: "allowed",
        what: "our filter, every request checked by limitd + Redis and allowed",
        envoy: 0,
        path: ALLOWED_PATH,
        status: 200,
        keys: 0,
        mixed: false,
    },
    Scenario {
        id: "denied",
        what: "our filter, a client far over its limit (1 per hour): checked and denied 429",
        envoy: 0,
        path: DENIED_PATH,
        status: 429,
        keys: 0,
        mixed: false,
    },
    Scenario {
        id: "allowed_per_request",
        what: "as allowed, without group commit: one callout per request",
        envoy: 3,
        path: ALLOWED_PATH,
        status: 200,
        keys: 0,
        mixed: false,
    },
    Scenario {
        id: "denied_per_request",
        what: "as denied, without group commit: one callout per request",
        envoy: 3,
        path: DENIED_PATH,
        status: 429,
        keys: 0,
        mixed: false,
    },
    Scenario {
        id: "leased",
        what: "our filter, lease mode, one hot key far from its limit: admitted from blocks",
        envoy: 5,
        path: ALLOWED_PATH,
        status: 200,
        keys: 0,
        mixed: false,
    },
    Scenario {
        id: "leased_near_limit",
        what: "lease mode, a limit the open loop's rate exceeds by 1.2×: blocks shrink, denials mix in",
        envoy: 5,
        path: NEAR_PATH,
        status: 429,
        keys: 0,
        mixed: true,
    },
    Scenario {
        id: "many_keys",
        what: "lease mode, 1,000 keys in turn: each key's first request of a window reaches Redis",
        envoy: 5,
        path: LEASED_KEYS_PATH,
        status: 200,
        keys: MANY_KEYS,
        mixed: false,
    },
    Scenario {
        id: "many_keys_per_request",
        what: "as many_keys, every request checked by limitd (no lease)",
        envoy: 5,
        path: CHECKED_KEYS_PATH,
        status: 200,
        keys: MANY_KEYS,
        mixed: false,
    },
    Scenario {
        id: "local_ratelimit_denied",
        what: "Envoy's own local_ratelimit, bucket empty: every request denied 429 in-process",
        envoy: 6,
        path: ALLOWED_PATH,
        status: 429,
        keys: 0,
        mixed: false,
    },
];

/// The near-limit rule's path (lease mode).
pub const NEAR_PATH: &str = "/api/bench/near";
/// The many-keys paths, one key per number appended: in lease mode, and checked per request.
pub const LEASED_KEYS_PATH: &str = "/api/bench/leased/";
pub const CHECKED_KEYS_PATH: &str = "/api/bench/checked/";

/// Our filter with rules in lease mode (index 5). `rate` is the open loop's request rate: the
/// near-limit rule admits `rate / 1.2` per second. The shipped shadow rule on `/api/` (which
/// checks every request) is moved out of the way, so only the bench rules match their paths.
pub fn leases(concurrency: u32, rate: u32) -> EnvoyOptions {
    let near = (u64::from(rate) * 10 / 12).max(1);
    let rules = format!(
        r#""rules": [ {{ "name": "bench_leased", "match": {{ "path": {{ "exact": "/" }} }}, "key": [ "client_ip" ], "limit": {{ "requests": 1000000000000, "window": "1h" }}, "lease": {{ "max_units": 1000 }} }}, {{ "name": "bench_near", "match": {{ "path": {{ "exact": "{NEAR_PATH}" }} }}, "key": [ {{ "constant": "near" }} ], "limit": {{ "requests": {near}, "window": "1s" }}, "lease": {{ "max_units": 1000 }} }}, {{ "name": "bench_many_leased", "match": {{ "path": {{ "prefix": "{LEASED_KEYS_PATH}" }} }}, "key": [ "path" ], "limit": {{ "requests": 1000000, "window": "1s" }}, "lease": {{}} }}, {{ "name": "bench_many_checked", "match": {{ "path": {{ "prefix": "{CHECKED_KEYS_PATH}" }} }}, "key": [ "path" ], "limit": {{ "requests": 1000000, "window": "1s" }} }},"#
    );
    EnvoyOptions::default()
        .replace(r#""rules": ["#, &rules)
        .shadow_rule_moved_off_api()
        .concurrency(concurrency)
}

/// Envoy's `local_ratelimit` with an empty bucket (index 6): one token an hour, so every
/// request but the first is denied in-process.
pub fn local_ratelimit_denying(concurrency: u32) -> EnvoyOptions {
    local_ratelimit_with(concurrency, 1, 1, "3600s")
}

/// Our filter with the bench rules; the stack's first Envoy (index 0).
pub fn ours(concurrency: u32) -> EnvoyOptions {
    // On the `"rules": [` line itself: a new line would have to match the
    // YAML block scalar's indentation.
    let allowed_rule = r#""rules": [ { "name": "bench_allowed", "match": { "path": { "exact": "/" } }, "key": [ "client_ip" ], "limit": { "requests": 1000000000000, "window": "1h" } },"#;
    EnvoyOptions::default()
        .replace(r#""rules": ["#, allowed_rule)
        .replace(
            r#""limit": { "requests": 10, "window": "60s" }"#,
            r#""limit": { "requests": 1, "window": "1h" }"#,
        )
        .concurrency(concurrency)
}

/// Our filter as [`ours`], but with one callout per request (`"batch":
/// {"enabled": false}`): the filter before group commit, measured in the same
/// run (index 3).
pub fn ours_per_request(concurrency: u32) -> EnvoyOptions {
    ours(concurrency).replace(
        r#""failure_mode": "allow","#,
        r#""failure_mode": "allow", "batch": { "enabled": false },"#,
    )
}

/// Our filter with the shipped rules as they are (index 4): none matches
/// `GET /`, so every request costs what the filter does before it decides
/// anything (VM entries, header reads, rule matching).
pub fn shipped(concurrency: u32) -> EnvoyOptions {
    EnvoyOptions::default().concurrency(concurrency)
}

/// The do-nothing wasm module `noop` in place of ours (index 7), with the same plugin settings
/// and VM configuration.
pub fn noop(concurrency: u32, noop: &std::path::Path) -> EnvoyOptions {
    EnvoyOptions::default().wasm(noop).concurrency(concurrency)
}

/// The floor module `floor` in place of ours (index 8), with the same plugin settings and VM
/// configuration.
pub fn floor(concurrency: u32, floor: &std::path::Path) -> EnvoyOptions {
    EnvoyOptions::default().wasm(floor).concurrency(concurrency)
}

/// No limiter (index 1).
pub fn baseline(concurrency: u32) -> EnvoyOptions {
    EnvoyOptions::default()
        .without_http_filter(WASM_FILTER)
        .concurrency(concurrency)
}

/// The stat prefix of the local_ratelimit reference.
pub const LOCAL_STAT_PREFIX: &str = "bench_local";

/// Envoy's `local_ratelimit` in place of ours (index 2). `filter_enabled` and
/// `filter_enforced` default to 0 %: without them the filter does nothing.
/// It adds `x-ratelimit-*` headers, as ours adds `RateLimit` headers.
pub fn local_ratelimit(concurrency: u32) -> EnvoyOptions {
    local_ratelimit_with(concurrency, 1_000_000_000, 1_000_000_000, "1s")
}

fn local_ratelimit_with(
    concurrency: u32,
    max_tokens: u64,
    tokens_per_fill: u64,
    fill_interval: &str,
) -> EnvoyOptions {
    let filter = format!(
        r#"- name: envoy.filters.http.local_ratelimit
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
    stat_prefix: {LOCAL_STAT_PREFIX}
    token_bucket:
      max_tokens: {max_tokens}
      tokens_per_fill: {tokens_per_fill}
      fill_interval: {fill_interval}
    filter_enabled:
      runtime_key: local_rate_limit_enabled
      default_value: {{ numerator: 100, denominator: HUNDRED }}
    filter_enforced:
      runtime_key: local_rate_limit_enforced
      default_value: {{ numerator: 100, denominator: HUNDRED }}
    enable_x_ratelimit_headers: DRAFT_VERSION_03
"#
    );
    EnvoyOptions::default()
        .replace_http_filter(WASM_FILTER, &filter)
        .concurrency(concurrency)
}

/// The `/v2/checks` body of the limitd-alone scenario: a batch of one check
/// of one fixed-window hit with a limit no run reaches, as the `allowed`
/// scenario's rule sends.
pub const LIMITD_KEY: &str = "bench_limitd:127.0.0.1";
pub const LIMITD_LIMIT: u64 = 1_000_000_000_000;
pub const LIMITD_WINDOW_MS: u64 = 3_600_000;

pub fn limitd_body() -> String {
    limitd_body_for(LIMITD_KEY)
}

/// [`limitd_body`] with the client key `key`.
pub fn limitd_body_for(key: &str) -> String {
    format!(
        r#"{{"timeout_ms":250,"checks":[{{"hits":[{{"key":"{key}","limit":{LIMITD_LIMIT},"window_ms":{LIMITD_WINDOW_MS},"cost":1,"algorithm":"fixed_window"}}]}}]}}"#
    )
}

/// The wrk script that requests `path` followed by one of `keys` numbers in turn.
pub fn keys_wrk_script(path: &str, keys: u32) -> String {
    format!(
        "-- GET {path}<n> for n in 0..{keys} in turn (written by cargo xtask bench)\n\
         local n = 0\n\
         request = function()\n\
           n = (n + 1) % {keys}\n\
           return wrk.format(\"GET\", \"{path}\" .. n)\n\
         end\n"
    )
}

/// The wrk script that POSTs [`limitd_body`].
/// `token` is limitd's `LIMITD_TOKEN`, sent as the filter sends it.
pub fn limitd_wrk_script(token: &str) -> String {
    format!(
        "-- POST one /v2/checks batch of one per request (written by cargo xtask bench)\n\
         wrk.method = \"POST\"\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.headers[\"Authorization\"] = \"Bearer {token}\"\n\
         wrk.body = '{}'\n",
        limitd_body()
    )
}

/// The wrk script that POSTs [`limitd_body_for`] each of `keys` in turn, one per request.
pub fn limitd_keys_wrk_script(token: &str, keys: &[String]) -> String {
    let bodies: Vec<String> = keys
        .iter()
        .map(|key| format!("  '{}',\n", limitd_body_for(key)))
        .collect();
    format!(
        "-- POST /v2/checks batches of one, for each of {n} keys in turn (written by cargo xtask bench)\n\
         local bodies = {{\n{bodies}}}\n\
         local headers = {{ [\"Content-Type\"] = \"application/json\", [\"Authorization\"] = \"Bearer {token}\" }}\n\
         local requests = {{}}\n\
         init = function(args)\n\
           for i, body in ipairs(bodies) do\n\
             requests[i] = wrk.format(\"POST\", nil, headers, body)\n\
           end\n\
         end\n\
         local n = 0\n\
         request = function()\n\
           n = n % #requests + 1\n\
           return requests[n]\n\
         end\n",
        n = keys.len(),
        bodies = bodies.concat(),
    )
}

/// The Redis key limitd keeps [`LIMITD_KEY`] under (limitd/src/keys.rs:
/// `rl:v2:{<key>}:w<window_ms>` for short keys without braces). The bench checks that
/// limitd's run did write it, so a change there cannot go unnoticed.
pub fn limitd_redis_key() -> String {
    limitd_redis_key_of(LIMITD_KEY)
}

/// [`limitd_redis_key`] of the client key `key`.
pub fn limitd_redis_key_of(key: &str) -> String {
    format!("rl:v2:{{{key}}}:w{LIMITD_WINDOW_MS}")
}

/// `KEYS` and `ARGV` of the same check for `EVALSHA <sha> 2 ...`, as
/// limitd/src/script.rs builds them: a receipt key (a fresh one per call:
/// redis-benchmark replaces `__rand_int__`) and the counter; mode 0 (check),
/// the receipt's lifetime, then algorithm 0 (fixed_window), shadow 0, limit,
/// window_ms, cost 1, then burst, token and rate (0 outside gcra), and lease 0.
pub fn evalsha_arguments() -> Vec<String> {
    evalsha_arguments_for(LIMITD_KEY)
}

/// [`evalsha_arguments`] for the client key `key`. With `key` = `tag`, both keys carry
/// `redis-benchmark`'s placeholder `{tag}`, which `--cluster` replaces on each call with the
/// hash tag of a slot of the master that client is connected to.
pub fn evalsha_arguments_for(key: &str) -> Vec<String> {
    let mut args = vec![
        "2".to_owned(),
        format!("rl:r1:{{{key}}}:__rand_int__"),
        limitd_redis_key_of(key),
        "0".to_owned(),
        "60000".to_owned(),
    ];
    for value in [0, 0, LIMITD_LIMIT, LIMITD_WINDOW_MS, 1, 0, 0, 0, 0] {
        args.push(value.to_string());
    }
    args
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;

    use e2e::envoy_config::{self, EnvoyConfig, LocalAddresses};

    use super::*;

    #[test]
    fn the_cluster_scripts_name_each_key_and_the_slot_placeholder() {
        let keys = ["a:1".to_owned(), "b:2".to_owned()];
        let script = limitd_keys_wrk_script("t0ken", &keys);
        for key in &keys {
            assert!(
                script.contains(&format!("'{}'", limitd_body_for(key))),
                "{script}"
            );
        }
        assert!(script.contains("Bearer t0ken"), "{script}");
        assert_eq!(limitd_body(), limitd_body_for(LIMITD_KEY));
        let args = evalsha_arguments_for("tag");
        assert_eq!(
            args[..3],
            ["2", "rl:r1:{tag}:__rand_int__", "rl:v2:{tag}:w3600000"]
        );
        assert_eq!(args[3..], evalsha_arguments()[3..]);
    }

    /// Every Envoy the benchmark starts applies to the shipped files: each snippet it replaces
    /// and each filter it swaps is there exactly once.
    #[test]
    fn every_bench_envoy_applies_to_the_shipped_configuration() {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let local = LocalAddresses {
            listener: at(1),
            admin: at(2),
            backends: [at(3), at(4)],
            limitds: [at(5), at(6)],
            wasm: Path::new("/r.wasm"),
        };
        let files = EnvoyConfig::shipped().unwrap();
        for (name, options) in [
            ("ours", ours(1)),
            ("baseline", baseline(1)),
            ("local_ratelimit", local_ratelimit(1)),
            ("ours_per_request", ours_per_request(1)),
            ("shipped", shipped(1)),
            ("leases", leases(1, 1000)),
            ("local_ratelimit_denying", local_ratelimit_denying(1)),
            ("noop", noop(1, Path::new("/noop.wasm"))),
            ("floor", floor(1, Path::new("/floor.wasm"))),
        ] {
            let mut config = envoy_config::rewrite(&files, &local, &options.replacements)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            for (filter, items) in &options.http_filters {
                config.bootstrap =
                    envoy_config::replace_http_filter(&config.bootstrap, filter, items)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
}
