//! Hostile check bodies: every one gets a clear 4xx (or, if valid, reaches the store), none
//! panics, and none reaches Redis unless it is valid.
//!
//! Besides a table of named cases, a property-style test feeds thousands of generated bodies
//! (valid ones, deliberately broken ones, random byte mutations of valid ones, deep nesting,
//! oversized ones, odd content types) through `app().oneshot` against a store whose Redis is
//! unreachable. Its oracle is the protocol itself: a body with a JSON content type, within the
//! size limit, that decodes as a `CheckRequest` and passes `validate` must reach the store
//! (`503`, since Redis is down); anything else must be refused (`400`/`413`) with a one-line
//! reason. The cases come from a seeded generator ([`testrng`], no proptest: build time
//! matters); a failure prints its seed, and `TEST_SEED=<seed>` replays it.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use limitd::AppState;
use protocol::bounds::{validate_check as validate, MAX_UNITS, MAX_WINDOW_MS};
use protocol::CheckRequest;
use testrng::{Cases, Rng};

use crate::metrics::{scrape, value};
use e2e::{free_port, RedisProcess, Resp};

use crate::support::{config, post_check, send};

/// The body limit of the generated cases: small, so oversized bodies are cheap to make.
const FUZZ_MAX_BODY: usize = 8192;
const FUZZ_CASES: usize = 4000;

/// An app whose Redis is a closed port: every valid check gets `503` without any I/O.
async fn app_without_redis(max_body_bytes: usize) -> Router {
    let state = AppState::connect(&config(&[
        ("REDIS_URL", format!("redis://127.0.0.1:{}", free_port())),
        ("LIMITD_MAX_BODY_BYTES", max_body_bytes.to_string()),
    ]))
    .await
    .expect("store");
    limitd::app(state)
}

async fn post_raw(app: &Router, body: Vec<u8>, content_type: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::post(protocol::v1::CHECK_PATH);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    send(app, request.body(Body::from(body)).expect("request")).await
}

/// The reason of an error answer, checked to be one short line of JSON.
fn reason(body: &str) -> String {
    assert!(!body.contains(['\n', '\r']), "not one line: {body}");
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let reason = value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {body}"));
    assert!(
        !reason.is_empty() && reason.chars().count() <= 240,
        "{reason}"
    );
    reason.to_owned()
}

fn hit(key_literal: &str, limit: &str, window_ms: &str) -> String {
    format!(r#"{{"key":{key_literal},"limit":{limit},"window_ms":{window_ms}}}"#)
}

fn one(hit: &str) -> String {
    format!(r#"{{"hits":[{hit}]}}"#)
}

#[tokio::test]
async fn named_hostile_bodies_get_clear_answers() {
    let app = app_without_redis(65536).await;
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let many = |n: usize| {
        format!(
            r#"{{"hits":[{}]}}"#,
            vec![hit(r#""k""#, "1", "1000"); n].join(",")
        )
    };
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        // Numbers.
        (
            one(&hit(r#""k""#, "18446744073709551615", "1000")).into(),
            StatusCode::BAD_REQUEST,
            "limit: must be between",
        ),
        (
            one(&hit(r#""k""#, "18446744073709551616", "1000")).into(),
            StatusCode::BAD_REQUEST,
            "expected u64",
        ),
        (
            one(&hit(r#""k""#, "1e400", "1000")).into(),
            StatusCode::BAD_REQUEST,
            "number out of range",
        ),
        (
            one(&hit(r#""k""#, "-1", "1000")).into(),
            StatusCode::BAD_REQUEST,
            "invalid value: integer `-1`",
        ),
        (
            one(&hit(r#""k""#, "1.5", "1000")).into(),
            StatusCode::BAD_REQUEST,
            "invalid type: floating point",
        ),
        (
            one(&hit(r#""k""#, "1e3", "1000")).into(),
            StatusCode::BAD_REQUEST,
            "invalid type: floating point",
        ),
        (
            one(&hit(r#""k""#, r#""10""#, "1000")).into(),
            StatusCode::BAD_REQUEST,
            "invalid type: string",
        ),
        (
            one(&hit(r#""k""#, "null", "1000")).into(),
            StatusCode::BAD_REQUEST,
            "invalid type: null",
        ),
        (
            one(&hit(r#""k""#, "1", "18446744073709551615")).into(),
            StatusCode::BAD_REQUEST,
            "window_ms: must be between",
        ),
        (
            one(r#"{"key":"k","limit":1,"window_ms":1000,"cost":18446744073709551615}"#).into(),
            StatusCode::BAD_REQUEST,
            "cost: must be at most",
        ),
        (
            one(r#"{"key":"k","limit":1,"window_ms":1000,"cost":-5}"#).into(),
            StatusCode::BAD_REQUEST,
            "invalid value",
        ),
        // Keys.
        (
            one(&hit("7", "1", "1000")).into(),
            StatusCode::BAD_REQUEST,
            "invalid type: integer `7`, expected a string",
        ),
        (
            one(&hit(r#""\ud800""#, "1", "1000")).into(),
            StatusCode::BAD_REQUEST,
            "hex escape",
        ),
        (
            one(&hit(r#""\x41""#, "1", "1000")).into(),
            StatusCode::BAD_REQUEST,
            "invalid escape",
        ),
        (
            one(&hit("\"a\u{1}b\"", "1", "1000")).into(),
            StatusCode::BAD_REQUEST,
            "control character",
        ),
        (
            one(&hit("\"a\nb\"", "1", "1000")).into(),
            StatusCode::BAD_REQUEST,
            "control character",
        ),
        (
            [
                br#"{"hits":[{"key":""#.as_slice(),
                &[0xff, 0xfe],
                br#"","limit":1,"window_ms":1000}]}"#,
            ]
            .concat(),
            StatusCode::BAD_REQUEST,
            "invalid unicode code point",
        ),
        (
            one(&hit(&format!("\"{}\"", "k".repeat(1 << 20)), "1", "1000")).into(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 65536 bytes",
        ),
        // Keys of any content are fine once decoded: escapes, controls, unicode, braces.
        (
            one(&hit(
                r#""\u0000\n\t\"\\\/{}\ud83d\ude00 é€\u2028""#,
                "1",
                "1000",
            ))
            .into(),
            StatusCode::SERVICE_UNAVAILABLE,
            "redis unavailable",
        ),
        // Structure.
        (
            many(65).into(),
            StatusCode::BAD_REQUEST,
            "at most 64 hits per check, got 65",
        ),
        (
            many(1000).into(),
            StatusCode::BAD_REQUEST,
            "at most 64 hits per check, got 1000",
        ),
        (
            format!(r#"{{"hits":{}}}"#, nested(100_000)).into(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        // Deep nesting stops at the first value of the wrong type, long before serde_json's
        // own recursion limit (128), so it cannot exhaust the stack.
        (
            format!(r#"{{"hits":{}}}"#, nested(20_000)).into(),
            StatusCode::BAD_REQUEST,
            "hits[0][0]: invalid type: sequence, expected a string",
        ),
        (
            nested(30_000).into(),
            StatusCode::BAD_REQUEST,
            "invalid type: sequence",
        ),
        (
            format!(r#"{{"x":{}}}"#, nested(30_000)).into(),
            StatusCode::BAD_REQUEST,
            "missing field `hits`",
        ),
        (
            one(r#"{"key":"k","limit":1,"limit":2,"window_ms":1000}"#).into(),
            StatusCode::BAD_REQUEST,
            "duplicate field `limit`",
        ),
        (
            format!(r#"{{"hits":[{}],"hits":[]}}"#, hit(r#""k""#, "1", "1000")).into(),
            StatusCode::BAD_REQUEST,
            "duplicate field `hits`",
        ),
        (
            r#"{"hits":null}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid type: null",
        ),
        (
            "true".into(),
            StatusCode::BAD_REQUEST,
            "invalid type: boolean `true`, expected struct CheckRequest",
        ),
        (
            format!("{} {{}}", one(&hit(r#""k""#, "1", "1000"))).into(),
            StatusCode::BAD_REQUEST,
            "trailing characters",
        ),
        (Vec::new(), StatusCode::BAD_REQUEST, "EOF while parsing"),
        (
            b"\xef\xbb\xbf{\"hits\":[]}".to_vec(),
            StatusCode::BAD_REQUEST,
            "expected value",
        ),
    ];
    for (body, expected, needle) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
        let (status, text) = post_raw(&app, body, Some("application/json")).await;
        assert_eq!(status, expected, "{shown}: {text}");
        let reason = reason(&text);
        assert!(reason.contains(needle), "{shown}: {reason}");
    }
}

#[tokio::test]
async fn a_one_megabyte_key_is_refused_by_its_bound_even_when_the_body_limit_allows_it() {
    let redis = RedisProcess::server(&[]);
    let state = AppState::connect(&config(&[
        ("REDIS_URL", format!("redis://127.0.0.1:{}", redis.port)),
        ("LIMITD_MAX_BODY_BYTES", (4 << 20).to_string()),
    ]))
    .await
    .expect("store");
    let app = limitd::app(state);
    let body = one(&hit(&format!("\"{}\"", "€".repeat(350_000)), "2", "60000"));
    assert!(body.len() > 1 << 20);
    let (status, text) = post_check(&app, &body).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(
        text.contains("hits[0].key: must be 1 to 2048 bytes long, got 1050000"),
        "{text}"
    );
    assert_eq!(redis.command(&["DBSIZE"]), Ok(Resp::Integer(0)));
}

#[tokio::test]
async fn refused_bodies_never_reach_a_real_redis() {
    let redis = RedisProcess::server(&[]);
    let state = AppState::connect(&config(&[(
        "REDIS_URL",
        format!("redis://127.0.0.1:{}", redis.port),
    )]))
    .await
    .expect("store");
    let app = limitd::app(state);
    // redis-rs' connection set-up itself draws errors from Redis 7.0 (`CLIENT SETINFO` is
    // 7.2+): compare with what is there before the bodies are sent.
    let errors_before = redis
        .command(&["INFO", "errorstats"])
        .expect("redis answers");
    let mut rng = testrng::rng("refused_bodies_never_reach_a_real_redis");
    let mut refused = 0;
    while refused < 300 {
        let (body, _) = broken_body(&mut rng);
        let (status, text) = post_raw(&app, body, Some("application/json")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        refused += 1;
    }
    // Only the start-up `SCRIPT LOAD` (and whatever Redis runs by itself) may be there.
    let stats = redis
        .command(&["INFO", "commandstats"])
        .expect("redis answers")
        .to_string();
    assert!(
        !stats.contains("cmdstat_evalsha") && !stats.contains("cmdstat_eval:"),
        "{stats}"
    );
    let errors = redis
        .command(&["INFO", "errorstats"])
        .expect("redis answers");
    assert_eq!(errors, errors_before);
    assert_eq!(redis.command(&["DBSIZE"]), Ok(Resp::Integer(0)));
}

#[tokio::test]
async fn thousands_of_generated_bodies_are_answered_as_the_protocol_says() {
    let app = app_without_redis(FUZZ_MAX_BODY).await;
    let mut rng = testrng::rng("thousands_of_generated_bodies_are_answered_as_the_protocol_says");
    let mut counts = [0u64; 3]; // 400, 413, 503
    let mut by_class = [0u64; 5];
    for case in 0..FUZZ_CASES {
        let class = rng.u64(..100);
        let (body, intended_valid) = match class {
            0..=34 => (valid_body(&mut rng), Some(true)),
            35..=64 => {
                let (body, _) = broken_body(&mut rng);
                (body, Some(false))
            }
            65..=89 => {
                let body = valid_body(&mut rng);
                (mutate(&mut rng, body), None)
            }
            90..=94 => (nested_body(&mut rng), Some(false)),
            _ => (oversized_body(&mut rng), None),
        };
        by_class[match class {
            0..=34 => 0,
            35..=64 => 1,
            65..=89 => 2,
            90..=94 => 3,
            _ => 4,
        }] += 1;
        let content_type = content_type(&mut rng);
        let json_type = matches!(
            content_type,
            Some(
                "application/json"
                    | "application/json; charset=utf-8"
                    | "application/cloudevents+json"
            )
        );
        let decoded_valid = serde_json::from_slice::<CheckRequest>(&body)
            .ok()
            .is_some_and(|request| validate(&request).is_ok());
        if let Some(intended) = intended_valid {
            assert_eq!(
                decoded_valid,
                intended,
                "case {case}: the generator and the decoder disagree on {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        let expected = if !json_type {
            StatusCode::BAD_REQUEST
        } else if body.len() > FUZZ_MAX_BODY {
            StatusCode::PAYLOAD_TOO_LARGE
        } else if decoded_valid {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        let (status, text) = post_raw(&app, body, content_type).await;
        assert_eq!(
            status, expected,
            "case {case} ({content_type:?}): {shown}\n-> {text}"
        );
        let reason = reason(&text);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(reason, "redis unavailable");
        }
        counts[match status {
            StatusCode::BAD_REQUEST => 0,
            StatusCode::PAYLOAD_TOO_LARGE => 1,
            _ => 2,
        }] += 1;
    }
    // Every class was exercised, and every outcome seen.
    eprintln!("classes {by_class:?}, answers 400/413/503 {counts:?}");
    assert!(by_class.iter().all(|n| *n > 100), "{by_class:?}");
    assert!(counts.iter().all(|n| *n > 100), "{counts:?}");
    // The metrics agree with what the clients saw.
    let text = scrape(&app).await;
    let get = |series: &str| value(&text, series).unwrap_or(-1.0) as u64;
    assert_eq!(get(r#"limitd_bad_requests_total{status="400"}"#), counts[0]);
    assert_eq!(get(r#"limitd_bad_requests_total{status="413"}"#), counts[1]);
    assert_eq!(get(r#"limitd_checks_total{result="error"}"#), counts[2]);
}

/// Mostly small numbers, sometimes the bounds, sometimes anything in range.
fn number_in(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    match rng.u64(..6) {
        0 => lo,
        1 => hi,
        2 => rng.u64(lo..=hi),
        _ => rng.u64(lo..=lo.saturating_add(1000).min(hi)),
    }
}

/// The inside of a JSON string literal (no quotes) that decodes to a non-empty key: plain
/// text, every escape form, controls, surrogate pairs, raw multi-byte characters, braces.
fn key_text(rng: &mut Rng) -> String {
    let pieces = if rng.chance(5) {
        rng.u64(100..=600)
    } else {
        rng.u64(1..=12)
    };
    let mut out = String::new();
    for _ in 0..pieces {
        match rng.u64(..10) {
            0 => {
                let escape = *rng.pick(&[r#"\""#, r"\\", r"\/", r"\b", r"\f", r"\n", r"\r", r"\t"]);
                out.push_str(escape);
            }
            1 => out.push_str(&format!(r"\u{:04x}", rng.u64(..0x20))),
            2 => {
                // Any BMP scalar value, escaped (surrogates excluded: they need a pair).
                let mut c = rng.u64(..0x1_0000);
                if (0xd800..0xe000).contains(&c) {
                    c -= 0x800;
                }
                out.push_str(&format!(r"\u{c:04X}"));
            }
            3 => {
                let high = rng.u64(0xd800..=0xdbff);
                let low = rng.u64(0xdc00..=0xdfff);
                out.push_str(&format!(r"\u{high:04x}\u{low:04x}"));
            }
            4 => {
                let odd = ['é', '€', '😀', '\u{2028}', '\u{7f}', 'ß', '中', '\u{feff}'];
                out.push(*rng.pick(&odd));
            }
            5 => out.push(*rng.pick(&['{', '}', ':', ',', '[', ']', ' '])),
            _ => {
                let len = rng.u64(1..=8);
                for _ in 0..len {
                    out.push(char::from(b'a' + rng.u64(..26) as u8));
                }
            }
        }
    }
    out
}

/// A valid hit; `index` makes its key unique within the check.
fn valid_hit(rng: &mut Rng, index: usize) -> String {
    let mut fields = vec![
        format!(r#""key":"{}#{index}""#, key_text(rng)),
        format!(r#""limit":{}"#, number_in(rng, 1, MAX_UNITS)),
        format!(r#""window_ms":{}"#, number_in(rng, 1, MAX_WINDOW_MS)),
    ];
    if rng.chance(50) {
        fields.push(format!(r#""cost":{}"#, number_in(rng, 0, MAX_UNITS)));
    }
    if rng.chance(20) {
        fields.push(r#""algorithm":"fixed_window""#.into());
    }
    rng.shuffle(&mut fields);
    let space = |rng: &mut Rng| if rng.chance(10) { " \n\t\r" } else { "" };
    let mut out = String::from("{");
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(space(rng));
        out.push_str(field);
    }
    out.push_str(space(rng));
    out.push('}');
    out
}

fn valid_hits(rng: &mut Rng) -> Vec<String> {
    let n = if rng.chance(10) {
        rng.u64(1..=64)
    } else {
        rng.u64(1..=4)
    };
    (0..n as usize).map(|i| valid_hit(rng, i)).collect()
}

fn valid_body(rng: &mut Rng) -> Vec<u8> {
    format!(r#"{{"hits":[{}]}}"#, valid_hits(rng).join(",")).into_bytes()
}

/// A body broken on purpose, in one of many ways, and a name for the way.
fn broken_body(rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let mut hits = valid_hits(rng);
    let at = rng.u64(..hits.len() as u64) as usize;
    let bad_number = [
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999",
        "-1",
        "-9223372036854775808",
        "1.5",
        "1e3",
        "0.0",
        "1e400",
        "\"10\"",
        "null",
        "true",
        "[]",
        "{}",
        "NaN",
        "Infinity",
        "0x10",
        "01",
        "+1",
    ];
    let replace = |hit: &str, field: &str, value: &str| -> String {
        // Drop the field wherever it is, then put the bad value first.
        let trimmed = hit.trim_start_matches('{');
        let kept: Vec<&str> = split_fields(trimmed.trim_end_matches('}'))
            .into_iter()
            .filter(|f| !f.trim_start().starts_with(&format!("\"{field}\"")))
            .collect();
        let mut out = format!(r#"{{"{field}":{value}"#);
        for f in kept {
            out.push(',');
            out.push_str(f);
        }
        out.push('}');
        out
    };
    let way = rng.u64(..16);
    let name = match way {
        0 => {
            let value = match rng.u64(..3) {
                0 => "0",
                1 => "1000000000000001",
                _ => *rng.pick(&bad_number),
            };
            let value = if value == "1000000000000001" {
                (MAX_UNITS + 1).to_string()
            } else {
                value.to_owned()
            };
            hits[at] = replace(&hits[at], "limit", &value);
            "bad limit"
        }
        1 => {
            let value = match rng.u64(..3) {
                0 => "0".to_owned(),
                1 => (MAX_WINDOW_MS + 1).to_string(),
                _ => (*rng.pick(&bad_number)).to_owned(),
            };
            hits[at] = replace(&hits[at], "window_ms", &value);
            "bad window_ms"
        }
        2 => {
            let value = if rng.chance(30) {
                (MAX_UNITS + 1 + rng.u64(..1000)).to_string()
            } else {
                (*rng.pick(&bad_number)).to_owned()
            };
            hits[at] = replace(&hits[at], "cost", &value);
            "bad cost"
        }
        3 => {
            let value = *rng.pick(&[
                r#""""#,
                "7",
                "null",
                r#"["a"]"#,
                r#"{"k":1}"#,
                r#""\ud800""#,
                r#""\udc00x""#,
                r#""\ud800\u0041""#,
                r#""\x""#,
                r#""\u12""#,
                "\"a\u{1}b\"",
                "\"tab\there\"",
                r#""unterminated"#,
                "'single'",
            ]);
            hits[at] = replace(&hits[at], "key", value);
            "bad key"
        }
        4 => {
            let field = *rng.pick(&["key", "limit", "window_ms"]);
            let hit = replace(&hits[at], field, "1");
            // Remove the field we just put first.
            hits[at] = format!("{{{}", hit.split_once(',').map_or("}", |(_, rest)| rest));
            "missing field"
        }
        5 => {
            // Unknown fields are fine (upgrade safety); a key over the bound is not.
            let field = *rng.pick(&[
                r#""colour":"red""#,
                r#""Key":"k""#,
                r#""limit ":1"#,
                r#""":0"#,
            ]);
            let long = format!("\"{}\"", "x".repeat(protocol::bounds::MAX_KEY_BYTES + 1));
            hits[at] = format!("{{{field},{}", &replace(&hits[at], "key", &long)[1..]);
            "key too long"
        }
        6 => {
            let field = *rng.pick(&["key", "limit", "window_ms"]);
            let value = if field == "key" { "\"dup\"" } else { "1" };
            hits[at] = format!("{{\"{field}\":{value},{}", &hits[at][1..]);
            "duplicate field"
        }
        7 => {
            let value = *rng.pick(&[
                r#""leaky_bucket""#,
                r#""FIXED_WINDOW""#,
                "1",
                "null",
                r#""""#,
            ]);
            hits[at] = replace(&hits[at], "algorithm", value);
            "bad algorithm"
        }
        8 => {
            // The same key under two windows.
            hits = vec![hit(r#""same""#, "5", "1000"), hit(r#""same""#, "5", "2000")];
            "conflicting windows"
        }
        9 => {
            let n = rng.u64(65..=120) as usize;
            hits = (0..n)
                .map(|i| hit(&format!("\"k{i}\""), "1", "1"))
                .collect();
            "too many hits"
        }
        10 => return (br#"{"hits":[]}"#.to_vec(), "no hits"),
        11 => {
            let body = *rng.pick(&[
                "",
                "null",
                "[]",
                "1",
                "\"hits\"",
                r#"{"hits":{}}"#,
                r#"{"hits":null}"#,
                r#"{"hits":"many"}"#,
                r#"{}"#,
                r#"{"HITS":[]}"#,
                "{",
                "}",
                "{\"hits\":[",
                "\u{feff}{\"hits\":[]}",
            ]);
            return (body.as_bytes().to_vec(), "bad top level");
        }
        12 => {
            let body = format!(r#"{{"hits":[{}]}}"#, hits.join(","));
            let tail = *rng.pick(&[" x", "{}", ",", "]", " null", "\u{0}"]);
            return (format!("{body}{tail}").into_bytes(), "trailing data");
        }
        13 => {
            let body = format!(r#"{{"hits":[{}]}}"#, hits.join(","));
            return (
                format!(r#"{{"hits":[],{}"#, &body[1..]).into_bytes(),
                "duplicate hits",
            );
        }
        14 => {
            // Invalid UTF-8 inside a key.
            let mut body = format!(r#"{{"hits":[{}]}}"#, hits.join(",")).into_bytes();
            let key = body
                .windows(7)
                .position(|w| w == br#""key":""#)
                .expect("a key")
                + 7;
            let bad = *rng.pick(&[
                &[0xffu8][..],
                &[0xc3, 0x28],
                &[0xed, 0xa0, 0x80],
                &[0xf8, 0x88, 0x80, 0x80, 0x80],
                &[0x80],
            ]);
            body.splice(key..key, bad.iter().copied());
            return (body, "invalid utf-8");
        }
        _ => {
            // A misspelt field is ignored, so the hit lacks the one it meant.
            let hit = replace(&hits[at], "window_ms", "1");
            let rest = hit.split_once(',').map_or("}", |(_, rest)| rest);
            let value = *rng.pick(&["1", "\"x\"", "[1]", "{}", "null"]);
            hits[at] = format!("{{\"window\":{value},{rest}");
            "misspelt field"
        }
    };
    (
        format!(r#"{{"hits":[{}]}}"#, hits.join(",")).into_bytes(),
        name,
    )
}

/// Splits the inside of a generated hit object at its top-level commas (keys may contain
/// commas and braces, so track strings and escapes).
fn split_fields(text: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let (mut start, mut in_string, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            ',' if !in_string => {
                fields.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(&text[start..]);
    fields
}

/// 1–5 random byte edits of `body`: flips, insertions, deletions, duplications, truncation.
fn mutate(rng: &mut Rng, mut body: Vec<u8>) -> Vec<u8> {
    let interesting = b"{}[]\":,\\-+.0123456789eEtrufalsn \x00\x1f\x7f\xff\xc3";
    for _ in 0..rng.u64(1..=5) {
        if body.is_empty() {
            body.push(b'{');
        }
        let at = rng.u64(..body.len() as u64) as usize;
        match rng.u64(..6) {
            0 => body[at] = *rng.pick(interesting),
            1 => body[at] ^= 1 << rng.u64(..8),
            2 => body.insert(at, *rng.pick(interesting)),
            3 => {
                body.remove(at);
            }
            4 => {
                let end = (at + rng.u64(1..=40) as usize).min(body.len());
                let slice = body[at..end].to_vec();
                body.splice(at..at, slice);
            }
            _ => body.truncate(at),
        }
    }
    body
}

/// Deep nesting somewhere a value goes.
fn nested_body(rng: &mut Rng) -> Vec<u8> {
    let depth = rng.u64(2..=3000) as usize;
    let (open, close) = if rng.chance(50) {
        ("[", "]")
    } else {
        (r#"{"a":"#, "}")
    };
    let value = format!("{}1{}", open.repeat(depth), close.repeat(depth));
    let body = match rng.u64(..4) {
        0 => value,
        1 => format!(r#"{{"hits":{value}}}"#),
        2 => format!(r#"{{"hits":[{value}]}}"#),
        _ => format!(r#"{{"hits":[{{"key":"k","limit":{value},"window_ms":1}}]}}"#),
    };
    body.into_bytes()
}

/// A body over (or, sometimes, exactly at) the fuzz body limit.
fn oversized_body(rng: &mut Rng) -> Vec<u8> {
    let target = FUZZ_MAX_BODY + rng.u64(0..=3 * FUZZ_MAX_BODY as u64) as usize;
    let mut body = valid_body(rng);
    if body.len() >= target {
        return body;
    }
    let pad = target - body.len();
    if rng.chance(50) {
        // Whitespace is valid JSON: at the limit this body is fine, one byte over it is not.
        let mut padded = vec![b' '; pad];
        padded.append(&mut body);
        padded
    } else {
        let key = "k".repeat(pad.saturating_sub(40).max(1));
        format!(r#"{{"hits":[{{"key":"{key}","limit":1,"window_ms":1}}]}}"#).into_bytes()
    }
}

fn content_type(rng: &mut Rng) -> Option<&'static str> {
    match rng.u64(..100) {
        0..=84 => Some("application/json"),
        85..=88 => Some("application/json; charset=utf-8"),
        89..=90 => Some("application/cloudevents+json"),
        91..=92 => None,
        93..=94 => Some("text/plain"),
        95..=96 => Some("application/jsonx"),
        97 => Some("application/x-www-form-urlencoded"),
        _ => Some("json"),
    }
}
