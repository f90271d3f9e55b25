//! The benchmark's Envoy configurations, each the shipped `envoy.yaml` as the
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
//!   matches `GET /`: what the filter costs before it decides anything.
//!
//! The baseline, the reference, the idle filter and the allowed path all
//! request `GET /`, so the backends do the same work in each.

use e2e::EnvoyOptions;

const WASM_FILTER: &str = "envoy.filters.http.wasm";

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
}

/// The Envoy scenarios, baseline first.
pub const SCENARIOS: [Scenario; 7] = [
    Scenario {
        id: "baseline",
        what: "Envoy without any limiter (wasm filter removed)",
        envoy: 1,
        path: ALLOWED_PATH,
        status: 200,
    },
    Scenario {
        id: "local_ratelimit",
        what: "Envoy's own in-process local_ratelimit (token bucket, never empty)",
        envoy: 2,
        path: ALLOWED_PATH,
        status: 200,
    },
    Scenario {
        id: "filter_idle",
        what: "our filter loaded with the shipped rules, none matching the request",
        envoy: 4,
        path: ALLOWED_PATH,
        status: 200,
    },
    Scenario {
        id: "allowed",
        what: "our filter, every request checked by limitd + Redis and allowed",
        envoy: 0,
        path: ALLOWED_PATH,
        status: 200,
    },
    Scenario {
        id: "denied",
        what: "our filter, a client far over its limit (1 per hour): checked and denied 429",
        envoy: 0,
        path: DENIED_PATH,
        status: 429,
    },
    Scenario {
        id: "allowed_per_request",
        what: "as allowed, without group commit: one callout per request",
        envoy: 3,
        path: ALLOWED_PATH,
        status: 200,
    },
    Scenario {
        id: "denied_per_request",
        what: "as denied, without group commit: one callout per request",
        envoy: 3,
        path: DENIED_PATH,
        status: 429,
    },
];

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
    let filter = format!(
        r#"- name: envoy.filters.http.local_ratelimit
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
    stat_prefix: {LOCAL_STAT_PREFIX}
    token_bucket:
      max_tokens: 1000000000
      tokens_per_fill: 1000000000
      fill_interval: 1s
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
    format!(
        r#"{{"timeout_ms":250,"checks":[{{"hits":[{{"key":"{LIMITD_KEY}","limit":{LIMITD_LIMIT},"window_ms":{LIMITD_WINDOW_MS},"cost":1,"algorithm":"fixed_window"}}]}}]}}"#
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

/// The Redis key limitd keeps [`LIMITD_KEY`] under (limitd/src/keys.rs:
/// `rl:v2:{<key>}:w<window_ms>` for short keys without braces). The bench checks that
/// limitd's run did write it, so a change there cannot go unnoticed.
pub fn limitd_redis_key() -> String {
    format!("rl:v2:{{{LIMITD_KEY}}}:w{LIMITD_WINDOW_MS}")
}

/// `KEYS` and `ARGV` of the same check for `EVALSHA <sha> 2 ...`, as
/// limitd/src/script.rs builds them: a receipt key (a fresh one per call:
/// redis-benchmark replaces `__rand_int__`) and the counter; mode 0 (check),
/// the receipt's lifetime, then algorithm 0 (fixed_window), shadow 0, limit,
/// window_ms, cost 1, then burst, token and rate (0 outside gcra).
pub fn evalsha_arguments() -> Vec<String> {
    let mut args = vec![
        "2".to_owned(),
        format!("rl:r1:{{{LIMITD_KEY}}}:__rand_int__"),
        limitd_redis_key(),
        "0".to_owned(),
        "60000".to_owned(),
    ];
    for value in [0, 0, LIMITD_LIMIT, LIMITD_WINDOW_MS, 1, 0, 0, 0] {
        args.push(value.to_string());
    }
    args
}
