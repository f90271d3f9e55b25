//! limitd behind real Redis Sentinel: master resolution, and following a failover.

use std::time::Duration;

use limitd::AppState;

use e2e::{eventually_async, free_port, RedisProcess, Resp};

use crate::support::{check_one, config, until_checks_work};

#[tokio::test]
async fn the_master_is_found_through_sentinel_even_with_a_sentinel_down() {
    let master = RedisProcess::server(&[]);
    let sentinels = [
        RedisProcess::sentinel(master.port),
        RedisProcess::sentinel(master.port),
    ];
    // The first sentinel listed is down: the other two are still a majority of three.
    let hosts = format!(
        "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        free_port(),
        sentinels[0].port,
        sentinels[1].port
    );
    let state = AppState::connect(&config(&[
        ("SENTINEL_HOSTS", hosts),
        ("REDIS_MASTER", "mymaster".into()),
    ]))
    .await
    .unwrap();
    let app = limitd::app(state.clone());

    // The sentinel may not have connected to the master yet; the store retries by itself.
    until_checks_work(
        &app,
        r#"{"hits":[{"key":"sent:k","limit":3,"window_ms":60000}]}"#,
        Duration::from_secs(10),
        "a check through sentinel",
    )
    .await;
    assert_eq!(
        state.store().master_addr(),
        Some(format!("127.0.0.1:{}", master.port))
    );
    let response = check_one(&app, "sent:k", 3, 60_000, 1).await;
    assert_eq!(response.hits[0].remaining, 1);
}

/// A master, a replica in sync with it, and a sentinel (quorum 1) that knows
/// the replica: Sentinel discovers replicas through the master's INFO, and can
/// only promote a known one.
pub(crate) async fn master_replica_sentinel() -> (RedisProcess, RedisProcess, RedisProcess) {
    master_replica_sentinel_with(&[]).await
}

/// [`master_replica_sentinel`] with more options for the master.
pub(crate) async fn master_replica_sentinel_with(
    master_extra: &[&str],
) -> (RedisProcess, RedisProcess, RedisProcess) {
    let master = RedisProcess::server(master_extra);
    let replica_of = format!("127.0.0.1 {}", master.port);
    let replica = RedisProcess::server(&["--replicaof", &replica_of]);
    let sentinel = RedisProcess::sentinel(master.port);
    eventually_async(Duration::from_secs(10), || async {
        replica
            .command(&["INFO", "replication"])
            .ok()
            .filter(|info| info.to_string().contains("master_link_status:up"))
            .map(|_| ())
    })
    .await
    .expect("the replica to sync");
    let replica_addr = format!("{}", replica.port);
    eventually_async(Duration::from_secs(15), || async {
        sentinel
            .command(&["SENTINEL", "replicas", "mymaster"])
            .ok()
            .filter(|reply| reply.to_string().contains(&replica_addr))
            .map(|_| ())
    })
    .await
    .expect("sentinel to know the replica");
    (master, replica, sentinel)
}

#[tokio::test]
async fn a_failover_is_followed_without_restart() {
    let (mut master, replica, sentinel) = master_replica_sentinel().await;

    let state = AppState::connect(&config(&[(
        "SENTINEL_HOSTS",
        format!("127.0.0.1:{}", sentinel.port),
    )]))
    .await
    .unwrap();
    let app = limitd::app(state.clone());
    until_checks_work(
        &app,
        r#"{"hits":[{"key":"fo:k","limit":100,"window_ms":60000}]}"#,
        Duration::from_secs(10),
        "a check through sentinel",
    )
    .await;
    assert_eq!(
        state.store().master_addr(),
        Some(format!("127.0.0.1:{}", master.port))
    );

    master.kill();
    // down-after 1 s, then election and promotion: a few seconds.
    until_checks_work(
        &app,
        r#"{"hits":[{"key":"fo:k","limit":100,"window_ms":60000}]}"#,
        Duration::from_secs(30),
        "checks to work on the promoted replica",
    )
    .await;
    assert_eq!(
        state.store().master_addr(),
        Some(format!("127.0.0.1:{}", replica.port))
    );
    let text = crate::metrics::scrape(&app).await;
    assert_eq!(
        crate::metrics::value(&text, "limitd_failovers_total"),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_forced_failover_is_followed_on_the_sentinels_announcement() {
    let (master, replica, sentinel) = master_replica_sentinel().await;

    // The poll is an hour apart and no check runs during the failover (no
    // READONLY to notice): only `+switch-master` can move limitd.
    let state = AppState::connect(&config(&[
        ("SENTINEL_HOSTS", format!("127.0.0.1:{}", sentinel.port)),
        ("LIMITD_MASTER_POLL_MS", "3600000".into()),
    ]))
    .await
    .unwrap();
    let store = state.store().clone();
    assert_eq!(
        store.master_addr(),
        Some(format!("127.0.0.1:{}", master.port))
    );
    // Let the subscription be in place before the failover starts (Sentinel
    // has no PUBSUB command; its client list shows subscribers as sub=1).
    eventually_async(Duration::from_secs(5), || async {
        sentinel
            .command(&["CLIENT", "LIST"])
            .ok()
            .filter(|clients| clients.to_string().contains(" sub=1 "))
            .map(|_| ())
    })
    .await
    .expect("limitd to subscribe");

    assert_eq!(
        sentinel.command(&["SENTINEL", "FAILOVER", "mymaster"]),
        Ok(Resp::Simple("OK".into())),
        "SENTINEL FAILOVER refused"
    );
    let promoted = format!("127.0.0.1:{}", replica.port);
    eventually_async(Duration::from_secs(20), || async {
        (store.master_addr().as_deref() == Some(promoted.as_str())).then_some(())
    })
    .await
    .expect("limitd to follow the announcement");
}

/// Three sentinels monitoring `master`, the first of which an attacker re-pointed at `rogue`.
fn sentinels_one_turned(master: &RedisProcess, rogue: &RedisProcess) -> [RedisProcess; 3] {
    let sentinels = [
        RedisProcess::sentinel(master.port),
        RedisProcess::sentinel(master.port),
        RedisProcess::sentinel(master.port),
    ];
    // What an attacker who reaches an open sentinel can do.
    let turned = &sentinels[0];
    let ok = Ok(Resp::Simple("OK".into()));
    assert_eq!(turned.command(&["SENTINEL", "REMOVE", "mymaster"]), ok);
    let monitor = [
        "SENTINEL",
        "MONITOR",
        "mymaster",
        "127.0.0.1",
        &rogue.port.to_string(),
        "1",
    ];
    assert_eq!(turned.command(&monitor), ok);
    sentinels
}

/// The commands `redis` has run whose names limitd sends to a master: `ROLE` (the first thing
/// it asks any master it resolved) and the scripts. The sentinel that monitors a server talks to
/// it too, but only with PING, INFO, PUBLISH, SUBSCRIBE and CLIENT.
fn limitd_commands_seen(redis: &RedisProcess) -> Vec<String> {
    let info = redis
        .command(&["INFO", "commandstats"])
        .expect("INFO commandstats")
        .to_string();
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| l.split(':').next())
        .filter(|name| ["role", "eval", "evalsha", "script|load", "fcall"].contains(name))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn one_sentinel_naming_another_master_is_outvoted_and_its_server_never_used() {
    let master = RedisProcess::server(&[]);
    let rogue = RedisProcess::server(&[]);
    let sentinels = sentinels_one_turned(&master, &rogue);
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();

    let state = AppState::connect(&config(&[
        ("SENTINEL_HOSTS", hosts.join(",")),
        ("REDIS_MASTER", "mymaster".into()),
        ("LIMITD_MASTER_POLL_MS", "100".into()),
    ]))
    .await
    .unwrap();
    let app = limitd::app(state.clone());
    let body = r#"{"hits":[{"key":"turned:k","limit":3,"window_ms":60000}]}"#;
    until_checks_work(
        &app,
        body,
        Duration::from_secs(10),
        "checks on the real master",
    )
    .await;
    assert_eq!(
        state.store().master_addr(),
        Some(format!("127.0.0.1:{}", master.port))
    );
    // A reconnect resolves the master again: still the majority's.
    assert!(master
        .command(&["CLIENT", "KILL", "TYPE", "normal"])
        .is_ok());
    until_checks_work(
        &app,
        body,
        Duration::from_secs(10),
        "checks after a reconnect",
    )
    .await;
    assert_eq!(
        state.store().master_addr(),
        Some(format!("127.0.0.1:{}", master.port))
    );
    assert_eq!(
        limitd_commands_seen(&rogue),
        Vec::<String>::new(),
        "limitd sent commands to the server one sentinel named"
    );
    assert!(
        !limitd_commands_seen(&master).is_empty(),
        "the probe must see limitd's commands on the master it did use"
    );
}

#[tokio::test]
async fn a_master_outside_the_allowlist_is_never_used() {
    let master = RedisProcess::server(&[]);
    let sentinels = [
        RedisProcess::sentinel(master.port),
        RedisProcess::sentinel(master.port),
        RedisProcess::sentinel(master.port),
    ];
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let body = r#"{"hits":[{"key":"allow:k","limit":3,"window_ms":60000}]}"#;

    let elsewhere = format!("127.0.0.1:{}", free_port());
    let state = AppState::connect(&config(&[
        ("SENTINEL_HOSTS", hosts.join(",")),
        ("REDIS_MASTER_ALLOWLIST", elsewhere),
    ]))
    .await
    .unwrap();
    let app = limitd::app(state.clone());
    // Resolution fails, counted; checks are refused; nothing is connected.
    eventually_async(Duration::from_secs(10), || async {
        let (_, text) = crate::support::send(
            &app,
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
        text.lines()
            .any(|l| l.starts_with(r#"limitd_redis_errors_total{kind="io"}"#) && !l.ends_with(" 0"))
            .then_some(())
    })
    .await
    .expect("a refused resolution");
    let (status, _) = crate::support::post_check(&app, body).await;
    assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(state.store().master_addr(), None);

    let listed = format!("127.0.0.1:{}", master.port);
    let state = AppState::connect(&config(&[
        ("SENTINEL_HOSTS", hosts.join(",")),
        ("REDIS_MASTER_ALLOWLIST", listed.clone()),
    ]))
    .await
    .unwrap();
    let app = limitd::app(state.clone());
    until_checks_work(
        &app,
        body,
        Duration::from_secs(10),
        "checks on a listed master",
    )
    .await;
    assert_eq!(state.store().master_addr(), Some(listed));
}
