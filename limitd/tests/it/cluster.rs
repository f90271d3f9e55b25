//! limitd on a real Redis Cluster (3 masters, 3 replicas): checks in one slot, checks spanning
//! slots (all or nothing, never over the limit under concurrency), and a master killed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use limitd::AppState;

use e2e::{eventually_async, ClusterOptions, RedisCluster, Resp};

use crate::metrics::{scrape, value};
use crate::support::{config, post_check, send};

/// The password of every node of the clusters here (`requirepass` and `masterauth`): limitd
/// authenticates to a cluster as to one Redis.
pub(crate) const CLUSTER_PASSWORD: &str = "cluster-test-password";

/// A cluster whose every node requires [`CLUSTER_PASSWORD`].
pub(crate) fn protected() -> ClusterOptions {
    ClusterOptions {
        password: Some(CLUSTER_PASSWORD.to_owned()),
        ..ClusterOptions::default()
    }
}

/// The app on `cluster`, with the given response timeout.
async fn app_on(cluster: &RedisCluster, response_timeout_ms: u64) -> (Router, AppState) {
    let state = AppState::connect(&config(&[
        ("REDIS_CLUSTER_NODES", cluster.seeds()),
        ("REDIS_PASSWORD", CLUSTER_PASSWORD.to_owned()),
        ("REDIS_RESPONSE_TIMEOUT_MS", response_timeout_ms.to_string()),
    ]))
    .await
    .expect("store");
    assert!(state.store().is_connected(), "connected at start-up");
    (limitd::app(state.clone()), state)
}

/// The window of every hit here: the longest there is, so that no test run crosses a window's
/// end (windows are aligned to the epoch; the next end of a 366-day window is weeks away) and
/// counters read back hold every unit counted in the test.
const WINDOW_MS: u64 = protocol::bounds::MAX_WINDOW_MS;

/// The counter key limitd stores a fixed-window hit of `key` under.
fn counter(key: &str) -> String {
    format!("rl:v2:{{{key}}}:w{WINDOW_MS}")
}

/// Client keys starting with `prefix`, one served by each of `count` different masters.
fn keys_on_different_masters(cluster: &RedisCluster, prefix: &str, count: usize) -> Vec<String> {
    let mut keys: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let key = format!("{prefix}{i}");
        let master = cluster
            .master_of(cluster.slot_of(&counter(&key)).expect("a slot"))
            .expect("every slot served");
        if keys.iter().all(|(_, m)| *m != master) {
            keys.push((key, master));
            if keys.len() == count {
                break;
            }
        }
    }
    keys.into_iter().map(|(key, _)| key).collect()
}

/// The units counted in the current window of the counter of `key`, read from the cluster.
fn counted(cluster: &RedisCluster, key: &str) -> u64 {
    match cluster.command(&["HGET", &counter(key), "c"]) {
        Ok(Resp::Bulk(None)) => 0,
        Ok(reply) => reply.to_string().parse().expect("a count"),
        Err(e) => panic!("{e}"),
    }
}

fn hit(key: &str, limit: u64) -> String {
    format!(r#"{{"key":"{key}","limit":{limit},"window_ms":{WINDOW_MS}}}"#)
}

fn check_body(hits: &[String]) -> String {
    format!(r#"{{"hits":[{}]}}"#, hits.join(","))
}

/// `POST /v1/check`: `Some(allowed)`, or `None` for an error status.
async fn allowed(app: &Router, body: &str) -> Option<bool> {
    let (status, text) = post_check(app, body).await;
    if status != StatusCode::OK {
        println!("check answered {status}: {text}");
        return None;
    }
    let response: protocol::CheckResponse = serde_json::from_str(&text).expect("a CheckResponse");
    Some(response.allowed)
}

/// `GET /readyz`'s status.
async fn readyz(app: &Router) -> StatusCode {
    let request = axum::http::Request::get("/readyz")
        .body(axum::body::Body::empty())
        .unwrap();
    send(app, request).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_slot_checks_are_exact_on_a_cluster() {
    let cluster = RedisCluster::start(&protected());
    let (app, _state) = app_on(&cluster, 1000).await;

    let body = check_body(&[hit("one:k", 5)]);
    for n in 1..=5 {
        assert_eq!(allowed(&app, &body).await, Some(true), "check {n} of 5");
    }
    assert_eq!(allowed(&app, &body).await, Some(false), "the 6th is over");
    assert_eq!(counted(&cluster, "one:k"), 5);

    // Two hits whose keys happen to hash to one slot: one script run, all or nothing as with
    // one master.
    let first = "one:t0";
    let slot = cluster.slot_of(&counter(first)).expect("a slot");
    // limitd's own grouping finds a candidate quickly; the cluster confirms it.
    let hit_of = |key: &str| protocol::Hit {
        key: key.to_owned(),
        limit: 1,
        window_ms: WINDOW_MS,
        cost: 1,
        algorithm: protocol::Algorithm::FixedWindow,
        burst: None,
        shadow: false,
        lease: 0,
    };
    let second = (1..)
        .map(|i| format!("one:t{i}"))
        .find(|key| limitd::cluster::slot_groups(&[hit_of(first), hit_of(key)]).len() == 1)
        .expect("a key in the same slot");
    assert_eq!(cluster.slot_of(&counter(&second)).expect("a slot"), slot);
    let both = check_body(&[hit(first, 3), hit(&second, 2)]);
    assert_eq!(allowed(&app, &both).await, Some(true));
    assert_eq!(allowed(&app, &both).await, Some(true));
    assert_eq!(allowed(&app, &both).await, Some(false));
    assert_eq!(counted(&cluster, first), 2, "the denied check took nothing");
    assert_eq!(counted(&cluster, &second), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_spanning_slots_is_all_or_nothing() {
    let cluster = RedisCluster::start(&protected());
    let (app, _state) = app_on(&cluster, 1000).await;
    let keys = keys_on_different_masters(&cluster, "span:", 2);
    let (roomy, tight) = (&keys[0], &keys[1]);
    let body = check_body(&[hit(roomy, 10), hit(tight, 1)]);

    let (status, text) = post_check(&app, &body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let first: protocol::CheckResponse = serde_json::from_str(&text).unwrap();
    assert!(first.allowed, "{text}");
    assert_eq!((first.hits[0].remaining, first.hits[1].remaining), (9, 0));
    assert_eq!(counted(&cluster, roomy), 1);
    assert_eq!(counted(&cluster, tight), 1);

    // The second hit is denied now: the first hit's slot was charged, and given back before
    // the answer, which counts that give-back.
    assert_eq!(give_backs(&app).await, [0.0; 4]);
    assert_eq!(allowed(&app, &body).await, Some(false));
    assert_eq!(
        counted(&cluster, roomy),
        1,
        "the denied check consumed none of its hits"
    );
    assert_eq!(counted(&cluster, tight), 1);
    assert_eq!(
        give_backs(&app).await,
        [1.0, 0.0, 0.0, 0.0],
        "one slot group charged, found and returned"
    );

    // The v2 answer describes the counters after the give-back.
    let request = axum::http::Request::post(protocol::CHECKS_PATH)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(format!(r#"{{"checks":[{body}]}}"#)))
        .unwrap();
    let (status, text) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let batch: protocol::BatchResponse = serde_json::from_str(&text).unwrap();
    match &batch.results[0] {
        protocol::CheckResult::Denied { hits } => {
            assert_eq!(hits[0].remaining, 9, "{text}");
            assert!(hits[0].allowed && !hits[1].allowed, "{text}");
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    assert_eq!(counted(&cluster, roomy), 1);

    // A shadow hit counts only in an allowed check, wherever its slot.
    let shadowed = format!(
        r#"{{"hits":[{{"key":"{roomy}","limit":10,"window_ms":{WINDOW_MS},"shadow":true}},{}]}}"#,
        hit(tight, 1)
    );
    assert_eq!(allowed(&app, &shadowed).await, Some(false));
    assert_eq!(counted(&cluster, roomy), 1);
    // Each denied check above gave back the one group it had charged (the shadow hit's too).
    assert_eq!(give_backs(&app).await, [3.0, 0.0, 0.0, 0.0]);
    let text = scrape(&app).await;
    assert_eq!(
        value(&text, "limitd_give_backs_in_flight"),
        Some(0.0),
        "given back at once, none left to the background:\n{text}"
    );
}

/// `limitd_give_backs_total` by outcome: returned, voided, settled, failed.
async fn give_backs(app: &Router) -> [f64; 4] {
    let text = scrape(app).await;
    ["returned", "voided", "settled", "failed"].map(|outcome| {
        let series = format!(r#"limitd_give_backs_total{{outcome="{outcome}"}}"#);
        value(&text, &series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_spanning_slots_never_admit_more_than_the_limit() {
    let cluster = RedisCluster::start(&protected());
    let (app, state) = app_on(&cluster, 2000).await;
    let keys = keys_on_different_masters(&cluster, "many:", 3);
    let limits: HashMap<&str, u64> = [(&keys[0], 20), (&keys[1], 1000), (&keys[2], 15)]
        .into_iter()
        .map(|(k, l)| (k.as_str(), l))
        .collect();
    // Checks over pairs of keys on different masters: every check spans two slots.
    let shapes: Vec<Vec<&str>> = vec![
        vec![&keys[0], &keys[1]],
        vec![&keys[1], &keys[2]],
        vec![&keys[2], &keys[0]],
    ];
    let body_of = |shape: &Vec<&str>| {
        check_body(&shape.iter().map(|k| hit(k, limits[k])).collect::<Vec<_>>())
    };

    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..150 {
        let app = app.clone();
        let shape = shapes[i % shapes.len()].clone();
        let body = body_of(&shape);
        let shape: Vec<String> = shape.into_iter().map(str::to_owned).collect();
        tasks.push(tokio::spawn(
            async move { (shape, allowed(&app, &body).await) },
        ));
    }
    let mut admitted: HashMap<String, u64> = HashMap::new();
    let mut errors = 0;
    for task in tasks {
        let (shape, answer) = task.await.unwrap();
        match answer {
            Some(true) => {
                for key in shape {
                    *admitted.entry(key).or_default() += 1;
                }
            }
            Some(false) => {}
            None => errors += 1,
        }
    }
    // Checks in doubt are given back in the background: let them settle before reading.
    eventually_async(Duration::from_secs(40), || async {
        (state.metrics().give_backs_in_flight() == 0).then_some(())
    })
    .await
    .expect("give-backs to settle");
    println!("concurrent: admitted {admitted:?}, errors {errors}");
    for key in &keys {
        let got = admitted.get(key).copied().unwrap_or(0);
        assert!(got <= limits[key.as_str()], "{key}: {got} admitted");
        assert_eq!(
            counted(&cluster, key),
            got,
            "{key}: the counter holds exactly the admitted checks, nothing given back stays"
        );
    }

    // Sequentially, each key takes checks until exactly its limit: nothing leaked.
    for shape in &shapes {
        let body = body_of(shape);
        while allowed(&app, &body).await == Some(true) {
            for key in shape {
                *admitted.entry((*key).to_owned()).or_default() += 1;
            }
        }
    }
    let full = |key: &str| admitted.get(key).copied().unwrap_or(0);
    assert_eq!(full(&keys[0]), 20, "{admitted:?}");
    assert_eq!(full(&keys[2]), 15, "{admitted:?}");
    for key in &keys {
        assert_eq!(counted(&cluster, key), full(key), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_and_limitd_follows_without_a_restart() {
    let mut cluster = RedisCluster::start(&protected());
    let (app, state) = app_on(&cluster, 250).await;
    let key = "failover:k";
    let slot = cluster.slot_of(&counter(key)).expect("a slot");
    let old_master = cluster.master_of(slot).expect("a master for the key");
    let body = check_body(&[hit(key, 100_000)]);
    // A cluster names no single master, but readiness has its series.
    let text = scrape(&app).await;
    assert_eq!(value(&text, "limitd_ready"), Some(1.0), "{text}");
    assert!(!text.contains("limitd_redis_master{"), "{text}");

    let mut allowed_total = 0u64;
    for _ in 0..20 {
        assert_eq!(allowed(&app, &body).await, Some(true));
        allowed_total += 1;
    }
    // Replication is asynchronous: make sure the replica has every acknowledged count before
    // the kill, so that what the new master holds can be compared exactly.
    let old = cluster.node_mut(old_master).expect("a node of the cluster");
    let acked = old.command(&["WAIT", "1", "5000"]);
    assert_eq!(
        acked,
        Ok(Resp::Integer(1)),
        "the replica acknowledged the writes"
    );

    old.kill();
    let killed = Instant::now();
    // A master that does not answer: the cluster cannot serve all its slots, and /readyz says so.
    assert_eq!(readyz(&app).await, StatusCode::SERVICE_UNAVAILABLE);
    let text = scrape(&app).await;
    assert_eq!(
        value(&text, "limitd_ready"),
        Some(0.0),
        "as /readyz:\n{text}"
    );
    let mut failed = 0u64;
    let mut slowest_failure = Duration::ZERO;
    let recovered_after = loop {
        let sent = Instant::now();
        match allowed(&app, &body).await {
            Some(true) => {
                allowed_total += 1;
                break killed.elapsed();
            }
            Some(false) => panic!("a check far below its limit was denied"),
            None => {
                failed += 1;
                slowest_failure = slowest_failure.max(sent.elapsed());
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "limitd did not answer again within 30 s of the kill ({failed} checks failed)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The node asked may learn of the promotion a moment after limitd used it.
    let new_master = eventually_async(Duration::from_secs(10), || async {
        cluster.master_of(slot).filter(|m| *m != old_master)
    })
    .await
    .expect("the cluster to name the promoted replica");
    println!(
        "master killed: checks answered again after {recovered_after:?}; {failed} failed \
         meanwhile, the slowest in {slowest_failure:?}"
    );
    assert!(
        slowest_failure < Duration::from_secs(5),
        "a check during the failover took {slowest_failure:?} to fail"
    );
    if failed > 0 {
        let text = scrape(&app).await;
        let errors: f64 = text
            .lines()
            .filter(|l| l.starts_with("limitd_redis_errors_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(
            errors > 0.0,
            "failed checks are counted in limitd_redis_errors_total:\n{text}"
        );
    }

    for _ in 0..20 {
        assert_eq!(allowed(&app, &body).await, Some(true));
        allowed_total += 1;
    }
    eventually_async(Duration::from_secs(40), || async {
        (state.metrics().give_backs_in_flight() == 0).then_some(())
    })
    .await
    .expect("give-backs to settle");
    let text = scrape(&app).await;
    assert!(
        !text.lines().any(
            |l| l.starts_with("limitd_give_backs_total{outcome=\"failed\"}") && !l.ends_with(" 0")
        ),
        "no give-back failed:\n{text}"
    );
    // Counts acknowledged by the replica before the kill survive; checks that failed were
    // given back or never ran: the new master holds exactly the allowed checks.
    let new_master = cluster.node(new_master).expect("a node of the cluster");
    assert_eq!(
        new_master.command(&["HGET", &counter(key), "c"]),
        Ok(Resp::Bulk(Some(allowed_total.to_string()))),
        "{failed} checks failed during the failover; metrics:\n{text}"
    );

    // /readyz and the gauge: every master answers again. Each asks a node for the slot map, and
    // for a moment after the failover a node may still be the dead master or see it: both must
    // agree once the cluster has settled.
    eventually_async(Duration::from_secs(10), || async {
        let ready = readyz(&app).await == StatusCode::OK;
        let gauge = value(&scrape(&app).await, "limitd_ready");
        (ready && gauge == Some(1.0)).then_some(())
    })
    .await
    .expect("/readyz to answer 200 and limitd_ready to be 1");
}
