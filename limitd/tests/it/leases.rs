//! Quota leases: a hit that asks for one is charged, beyond its cost, a share of what is left,
//! counted in Redis at once; the share shrinks to nothing as the quota runs out, a give-back
//! returns the lease with the cost, and a lease on a shadow hit is refused.

use protocol::{CheckRequest, CheckResult, ErrorKind, HitResult};

use crate::batch::post_v2;
use e2e::RedisProcess;

use crate::support::{app_for_redis, check_one, redis_connection};

fn leased_hit(key: &str, limit: u64, extra: &str, lease: u64) -> String {
    format!(r#"{{"key":"{key}","limit":{limit},"window_ms":60000,"lease":{lease}{extra}}}"#)
}

fn one(results: Vec<CheckResult>) -> (bool, HitResult) {
    match results.into_iter().next() {
        Some(CheckResult::Allowed { mut hits }) => (true, hits.remove(0)),
        Some(CheckResult::Denied { mut hits }) => (false, hits.remove(0)),
        other => panic!("not a decision: {other:?}"),
    }
}

#[tokio::test]
async fn a_lease_is_a_quarter_of_what_is_left_and_is_counted_at_once() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let body = format!(
        r#"{{"checks":[{{"hits":[{}]}}]}}"#,
        leased_hit("l:q", 100, "", 1000)
    );

    let (allowed, first) = one(post_v2(&app, &body).await);
    assert!(allowed);
    // 99 left after the request's own unit: a quarter of it, whole units.
    assert_eq!((first.leased, first.remaining), (24, 75), "{first:?}");
    assert!(first.lease_ms > 0 && first.lease_ms <= 60_000, "{first:?}");
    assert_eq!(
        check_one(&app, "l:q", 100, 60_000, 0).await.hits[0].remaining,
        75
    );

    // Leases shrink as the quota runs out; every unit charged is either the request's or leased,
    // and their sum reaches the limit exactly before the first denial.
    let mut charged = 1 + first.leased;
    let mut grants = vec![first.leased];
    loop {
        let (allowed, hit) = one(post_v2(&app, &body).await);
        if !allowed {
            assert_eq!((hit.leased, hit.remaining), (0, 0), "{hit:?}");
            break;
        }
        charged += 1 + hit.leased;
        grants.push(hit.leased);
        assert_eq!(hit.remaining, 100 - charged, "{hit:?}");
    }
    println!("lease grants while 100 units ran out: {grants:?}");
    assert_eq!(charged, 100);
    assert!(grants.windows(2).all(|w| w[1] <= w[0]), "{grants:?}");
    assert_eq!(
        grants.last(),
        Some(&0),
        "near the limit a check leases nothing: {grants:?}"
    );
}

#[tokio::test]
async fn a_lease_never_exceeds_what_was_asked_and_a_refill_costs_nothing_itself() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let body = format!(
        r#"{{"checks":[{{"hits":[{}]}}]}}"#,
        leased_hit("l:cap", 1000, "", 5)
    );
    let (_, hit) = one(post_v2(&app, &body).await);
    assert_eq!((hit.leased, hit.remaining), (5, 994));
    // A refill: cost 0 and a lease.
    let refill = format!(
        r#"{{"checks":[{{"hits":[{}]}}]}}"#,
        leased_hit("l:cap", 1000, r#","cost":0"#, 7)
    );
    let (allowed, hit) = one(post_v2(&app, &refill).await);
    assert!(allowed);
    assert_eq!((hit.leased, hit.remaining), (7, 987));
}

#[tokio::test]
async fn a_gcra_lease_takes_whole_tokens_from_the_bucket() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let hit =
        r#"{"key":"l:g","limit":10,"window_ms":1000,"algorithm":"gcra","burst":20,"lease":100}"#;
    let body = format!(r#"{{"checks":[{{"hits":[{hit}]}}]}}"#);
    let (allowed, first) = one(post_v2(&app, &body).await);
    assert!(allowed);
    // 19 tokens left after the request's own: a quarter is 4.
    assert_eq!(first.leased, 4, "{first:?}");
    assert!(first.remaining <= 15, "{first:?}");
    assert_eq!(
        first.lease_ms, 1000,
        "gcra reports its window; the filter shortens it"
    );
}

#[tokio::test]
async fn a_shadow_hit_may_not_ask_for_a_lease() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let body = format!(
        r#"{{"checks":[{{"hits":[{}]}}]}}"#,
        leased_hit("l:s", 10, r#","shadow":true"#, 3)
    );
    match post_v2(&app, &body).await.remove(0) {
        CheckResult::Error { error, detail } => {
            assert_eq!(error, ErrorKind::Invalid);
            assert!(detail.contains("lease"), "{detail}");
        }
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn a_give_back_returns_the_lease_with_the_cost() {
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let mut conn = redis_connection(&redis).await;
    let script = limitd::script::CheckScript::default();
    let request: CheckRequest = serde_json::from_str(&format!(
        r#"{{"hits":[{},{{"key":"l:other","limit":50,"window_ms":60000,"cost":2}}]}}"#,
        leased_hit("l:gb", 100, "", 1000)
    ))
    .unwrap();
    let receipt = "rl:r1:{test}:gb";
    let reply: Vec<i64> = script
        .invocation(&request, receipt, limitd::script::Mode::Check)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    let answer = limitd::script::decode_reply(&request, &reply).unwrap();
    assert!(answer.allowed);
    assert_eq!(answer.hits[0].leased, 24);
    assert_eq!(
        check_one(&app, "l:gb", 100, 60_000, 0).await.hits[0].remaining,
        75
    );

    let back: Vec<i64> = script
        .invocation(&request, receipt, limitd::script::Mode::GiveBack)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        limitd::script::decode_give_back(&back),
        Ok(limitd::script::GiveBack::Returned)
    );
    assert_eq!(
        check_one(&app, "l:gb", 100, 60_000, 0).await.hits[0].remaining,
        100
    );
    assert_eq!(
        check_one(&app, "l:other", 50, 60_000, 0).await.hits[0].remaining,
        50
    );
}

#[tokio::test]
async fn a_receipt_of_the_previous_script_is_still_given_back() {
    // Receipts written before leases existed: '<time> <1|0 per hit>', the 1 meaning "its cost".
    let redis = RedisProcess::server(&[]);
    let (app, _) = app_for_redis(redis.port).await;
    let mut conn = redis_connection(&redis).await;
    let script = limitd::script::CheckScript::default();
    let request: CheckRequest =
        serde_json::from_str(r#"{"hits":[{"key":"l:old","limit":10,"window_ms":60000,"cost":3}]}"#)
            .unwrap();
    assert!(check_one(&app, "l:old", 10, 60_000, 3).await.allowed);
    let now: (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let receipt = "rl:r1:{test}:old";
    let _: () = redis::cmd("SET")
        .arg(receipt)
        .arg(format!("{} 1", now.0 * 1000 + now.1 / 1000))
        .query_async(&mut conn)
        .await
        .unwrap();
    let back: Vec<i64> = script
        .invocation(&request, receipt, limitd::script::Mode::GiveBack)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(back, vec![1]);
    assert_eq!(
        check_one(&app, "l:old", 10, 60_000, 0).await.hits[0].remaining,
        10
    );
}
