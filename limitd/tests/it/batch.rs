//! `POST /v2/checks`: several independent checks in one request, each all or nothing on its
//! own and answered with its own result, in order (the filter's group commit); and the
//! deprecated v1 batch endpoint that filters not yet upgraded still use.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use protocol::{BatchResponse, CheckResult, ErrorKind};

use e2e::{RedisProcess, Resp};

use crate::support::{app_for_redis, check_one, send};

pub async fn post_batch(app: &axum::Router, path: &str, body: &str) -> (StatusCode, String) {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request");
    send(app, request).await
}

/// `POST /v2/checks`, expecting `200` and a well-formed answer.
pub async fn post_v2(app: &axum::Router, body: &str) -> Vec<CheckResult> {
    let (status, text) = post_batch(app, protocol::CHECKS_PATH, body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str::<BatchResponse>(&text)
        .expect("a BatchResponse")
        .results
}

pub fn hit(key: &str, limit: u64) -> String {
    format!(r#"{{"key":"{key}","limit":{limit},"window_ms":60000}}"#)
}

fn kinds(results: &[CheckResult]) -> Vec<&'static str> {
    results
        .iter()
        .map(|r| match r {
            CheckResult::Allowed { .. } => "allowed",
            CheckResult::Denied { .. } => "denied",
            CheckResult::Error { .. } => "error",
            CheckResult::Unknown => "unknown",
        })
        .collect()
}

#[tokio::test]
async fn each_check_of_a_batch_is_decided_on_its_own_in_order() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    // "full" has no room left; "free" has plenty.
    assert!(check_one(&app, "batch:full", 1, 60_000, 1).await.allowed);
    let body = format!(
        r#"{{"checks":[{{"hits":[{free}]}},{{"hits":[{free},{full}]}},{{"hits":[{free}]}}]}}"#,
        free = hit("batch:free", 10),
        full = hit("batch:full", 1),
    );
    let results = post_v2(&app, &body).await;
    assert_eq!(kinds(&results), ["allowed", "denied", "allowed"]);
    // The denied check consumed nothing: "free" was spent by the first and third only.
    assert_eq!(results[1].decided().map(|(_, hits)| hits.len()), Some(2));
    let after = check_one(&app, "batch:free", 10, 60_000, 0).await;
    assert_eq!(after.hits[0].remaining, 8);
}

#[tokio::test]
async fn checks_of_one_batch_on_one_key_never_exceed_its_limit() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let one = format!(r#"{{"hits":[{}]}}"#, hit("batch:hot", 5));
    let body = format!(r#"{{"checks":[{}]}}"#, vec![one; 12].join(","));
    let results = post_v2(&app, &body).await;
    let allowed = kinds(&results).iter().filter(|k| **k == "allowed").count();
    assert_eq!(allowed, 5);
}

#[tokio::test]
async fn an_invalid_check_gets_its_own_error_and_the_others_are_decided() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let body = format!(
        r#"{{"checks":[{{"hits":[{a}]}},{{"hits":[{{"key":"batch:bad","limit":0,"window_ms":1000}}]}},
                       {{"hits":[]}},{{"hits":[{a}]}}]}}"#,
        a = hit("batch:valid", 10),
    );
    let results = post_v2(&app, &body).await;
    assert_eq!(kinds(&results), ["allowed", "error", "error", "allowed"]);
    match &results[1] {
        CheckResult::Error { error, detail } => {
            assert_eq!(*error, ErrorKind::Invalid);
            assert!(
                detail.contains("hits[0].limit: must be between 1 and"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        &results[2],
        CheckResult::Error { error: ErrorKind::Invalid, detail } if detail.contains("hits must not be empty")
    ));
    // Only the two valid checks were counted; the invalid one never reached Redis.
    assert_eq!(
        check_one(&app, "batch:valid", 10, 60_000, 0).await.hits[0].remaining,
        8
    );
    assert_eq!(
        redis.command(&["EXISTS", "rl:v2:{batch:bad}:w1000"]),
        Ok(Resp::Integer(0))
    );
}

#[tokio::test]
async fn a_script_error_on_one_key_fails_only_its_check_and_counts_nothing_for_it() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    // A key of the wrong type makes the script fail for the checks that touch it.
    assert_eq!(
        redis.command(&["LPUSH", "rl:v2:{batch:broken}:w60000", "x"]),
        Ok(Resp::Integer(1))
    );
    let body = format!(
        r#"{{"checks":[{{"hits":[{ok}]}},{{"hits":[{ok},{broken}]}},{{"hits":[{ok}]}}]}}"#,
        ok = hit("batch:fine", 10),
        broken = hit("batch:broken", 10),
    );
    let results = post_v2(&app, &body).await;
    assert_eq!(kinds(&results), ["allowed", "error", "allowed"]);
    // The failed check's hit on "fine" was not counted: two units spent, not three.
    assert_eq!(
        check_one(&app, "batch:fine", 10, 60_000, 0).await.hits[0].remaining,
        8
    );
}

#[tokio::test]
async fn fields_a_reader_does_not_know_are_ignored_at_every_level() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let body = r#"{"checks":[{"hits":[{"key":"batch:new","limit":3,"window_ms":60000,
        "reserve":{"max":5}}],"priority":1}],"timeout_ms":1000,"trace_id":"abc"}"#;
    let results = post_v2(&app, body).await;
    assert_eq!(kinds(&results), ["allowed"]);
}

#[tokio::test]
async fn malformed_batches_are_refused_whole_and_count_nothing() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    for path in [protocol::CHECKS_PATH, protocol::v1::BATCH_PATH] {
        let (status, text) = post_batch(&app, path, r#"{"checks":[]}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains("checks: 0 checks"), "{text}");
        let too_many = format!(
            r#"{{"checks":[{}]}}"#,
            vec![format!(r#"{{"hits":[{}]}}"#, hit("k", 1)); protocol::MAX_CHECKS + 1].join(",")
        );
        let (status, text) = post_batch(&app, path, &too_many).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let (status, _) = post_batch(&app, path, r#"{"hits":[]}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = post_batch(&app, path, r#"{"checks":[{"hits":[{"key":"k""#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    // v1 has no per-check error: an invalid check refuses the whole batch before anything runs.
    let bad_second = format!(
        r#"{{"checks":[{{"hits":[{}]}},{{"hits":[]}}]}}"#,
        hit("k", 1)
    );
    let (status, text) = post_batch(&app, protocol::v1::BATCH_PATH, &bad_second).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("checks[1]: "), "{text}");
    assert_eq!(
        check_one(&app, "k", 1, 60_000, 0).await.hits[0].remaining,
        1
    );
}

#[tokio::test]
async fn the_v1_batch_answer_keeps_the_shape_v1_filters_read() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let body = format!(
        r#"{{"checks":[{{"hits":[{a}]}},{{"hits":[{a}]}}]}}"#,
        a = hit("batch:v1", 1)
    );
    let (status, text) = post_batch(&app, protocol::v1::BATCH_PATH, &body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    // v1 filters refuse unknown fields: the frozen types, which do too, must read it.
    let answer: protocol::v1::BatchResponse = serde_json::from_str(&text).expect("v1 shape");
    let decisions: Vec<bool> = answer.results.iter().map(|r| r.allowed).collect();
    assert_eq!(decisions, [true, false]);
}

/// A hit for an existing client key with other parameters (a tiny window, a year-long gcra
/// window) is another counter: it can neither reset the rule's counter nor lock its client out.
#[tokio::test]
async fn hits_with_other_parameters_cannot_reset_or_poison_a_counter() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let rule = r#"{"key":"victim:10.0.0.1","limit":10,"window_ms":60000}"#;
    let check = |hit: &str| format!(r#"{{"checks":[{{"hits":[{hit}]}}]}}"#);
    for _ in 0..10 {
        assert_eq!(kinds(&post_v2(&app, &check(rule)).await), ["allowed"]);
    }
    assert_eq!(kinds(&post_v2(&app, &check(rule)).await), ["denied"]);
    // The reset attempt: same key, a 7 ms window.
    let reset = r#"{"key":"victim:10.0.0.1","limit":10,"window_ms":7}"#;
    assert_eq!(kinds(&post_v2(&app, &check(reset)).await), ["allowed"]);
    assert_eq!(
        kinds(&post_v2(&app, &check(rule)).await),
        ["denied"],
        "the exhausted counter was reset"
    );
    // The lock-out attempt on another client: a gcra hit of a year that empties its bucket.
    let other = r#"{"key":"victim:10.0.0.2","limit":10,"window_ms":60000}"#;
    let lock = r#"{"key":"victim:10.0.0.2","limit":1,"window_ms":31622400000,"algorithm":"gcra"}"#;
    assert_eq!(kinds(&post_v2(&app, &check(lock)).await), ["allowed"]);
    assert_eq!(
        kinds(&post_v2(&app, &check(other)).await),
        ["allowed"],
        "the client was locked out"
    );
}
