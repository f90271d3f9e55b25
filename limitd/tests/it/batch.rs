//! `POST /v1/checks`: several independent checks in one request, each all or
//! nothing on its own, answered in order (the filter's group commit).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use protocol::BatchResponse;

use crate::support::{app_for_redis, check_one, send, RedisProcess};

async fn post_batch(app: &axum::Router, body: &str) -> (StatusCode, String) {
    let request = Request::post(protocol::BATCH_PATH)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request");
    send(app, request).await
}

fn hit(key: &str, limit: u64) -> String {
    format!(r#"{{"key":"{key}","limit":{limit},"window_ms":60000}}"#)
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
    let (status, text) = post_batch(&app, &body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let answer: BatchResponse = serde_json::from_str(&text).expect("a BatchResponse");
    let decisions: Vec<bool> = answer.results.iter().map(|r| r.allowed).collect();
    assert_eq!(decisions, [true, false, true]);
    // The denied check consumed nothing: "free" was spent by the first and third only.
    assert_eq!(answer.results[1].hits.len(), 2);
    let after = check_one(&app, "batch:free", 10, 60_000, 0).await;
    assert_eq!(after.hits[0].remaining, 8);
}

#[tokio::test]
async fn checks_of_one_batch_on_one_key_never_exceed_its_limit() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let one = format!(r#"{{"hits":[{}]}}"#, hit("batch:hot", 5));
    let body = format!(r#"{{"checks":[{}]}}"#, vec![one; 12].join(","));
    let (status, text) = post_batch(&app, &body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let answer: BatchResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(answer.results.iter().filter(|r| r.allowed).count(), 5);
}

#[tokio::test]
async fn malformed_batches_are_refused_naming_the_check() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let (status, text) = post_batch(&app, r#"{"checks":[]}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("checks: 0 checks"), "{text}");
    let too_many = format!(
        r#"{{"checks":[{}]}}"#,
        vec![format!(r#"{{"hits":[{}]}}"#, hit("k", 1)); protocol::MAX_CHECKS + 1].join(",")
    );
    let (status, text) = post_batch(&app, &too_many).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let bad_second = format!(
        r#"{{"checks":[{{"hits":[{}]}},{{"hits":[]}}]}}"#,
        hit("k", 1)
    );
    let (status, text) = post_batch(&app, &bad_second).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("checks[1]: "), "{text}");
    let (status, _) = post_batch(&app, r#"{"hits":[]}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Nothing was counted for the refused batches.
    assert_eq!(
        check_one(&app, "k", 1, 60_000, 0).await.hits[0].remaining,
        1
    );
}
