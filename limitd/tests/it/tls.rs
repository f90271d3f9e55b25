//! limitd to Redis and Sentinel over TLS, against real `redis-server` and `redis-sentinel` with
//! TLS ports and certificates made here by a CA of the test's own: checks work when limitd
//! trusts that CA (`REDIS_TLS_CA_FILE`), and nothing is sent to a server it cannot verify.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::StatusCode;
use limitd::AppState;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use e2e::redis::{
    ClusterOptions, RedisCluster, RedisOptions, RedisProcess, SentinelOptions, TlsFiles,
};
use e2e::{eventually_async, scratch_dir, TempDir};

use crate::cluster::{protected, CLUSTER_PASSWORD};
use crate::support::{config, post_check, until_checks_work};

const BODY: &str = r#"{"hits":[{"key":"tls:k","limit":3,"window_ms":60000}]}"#;

/// A CA and a certificate it signed for 127.0.0.1 and localhost, as PEM files.
struct Certificates {
    dir: TempDir,
}

impl Certificates {
    fn new() -> Self {
        let dir = scratch_dir("tls-");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL (a cluster node checking another's certificate) takes a
        // certificate whose subject is its issuer's for a self-signed one and refuses it.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "limitd test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let server = server_params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Self { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The files of a TLS port with these certificates.
    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.dir.path().join("server.pem"),
            key: self.dir.path().join("server.key"),
            ca: self.dir.path().join("ca.pem"),
        }
    }
}

/// A data node with a plain port (for the harness' probes) and a TLS port.
fn tls_server(certs: &Certificates) -> (RedisProcess, u16) {
    let redis = RedisProcess::launch(&RedisOptions::server().tls(certs.files()));
    let tls_port = redis.tls_port.expect("a TLS port");
    (redis, tls_port)
}

#[tokio::test]
async fn a_rediss_url_with_the_ca_checks_over_tls_and_without_it_nothing_is_sent() {
    let certs = Certificates::new();
    let (_redis, tls_port) = tls_server(&certs);
    let url = format!("rediss://127.0.0.1:{tls_port}");

    let state = AppState::connect(&config(&[
        ("REDIS_URL", url.clone()),
        ("REDIS_TLS_CA_FILE", certs.file("ca.pem")),
    ]))
    .await
    .unwrap();
    let app = limitd::app(state);
    // The TLS port speaks nothing else: a check that works went over TLS.
    until_checks_work(&app, BODY, Duration::from_secs(10), "a check over TLS").await;

    // Without the CA the server's certificate cannot be verified: limitd refuses it.
    let state = AppState::connect(&config(&[("REDIS_URL", url)]))
        .await
        .unwrap();
    let app = limitd::app(state.clone());
    eventually_async(Duration::from_secs(10), || async {
        (post_check(&app, BODY).await.0 == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await
    .expect("a refused certificate");
    assert_eq!(state.store().master_addr(), None);
}

#[tokio::test]
async fn sentinels_and_the_master_over_tls() {
    let certs = Certificates::new();
    let (_master, master_tls) = tls_server(&certs);
    let sentinel = RedisProcess::launch(
        &RedisOptions::sentinel(SentinelOptions::watching(master_tls)).tls(certs.files()),
    );
    let sentinel_tls = sentinel.tls_port.expect("a TLS port");

    let state = AppState::connect(&config(&[
        ("SENTINEL_HOSTS", format!("127.0.0.1:{sentinel_tls}")),
        ("REDIS_TLS", "true".into()),
        ("REDIS_TLS_CA_FILE", certs.file("ca.pem")),
    ]))
    .await
    .unwrap();
    let app = limitd::app(state.clone());
    until_checks_work(
        &app,
        BODY,
        Duration::from_secs(15),
        "a check through TLS sentinels",
    )
    .await;
    assert_eq!(
        state.store().master_addr(),
        Some(format!("127.0.0.1:{master_tls}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_with_its_ca_and_nothing_sent_without_it() {
    let certs = Certificates::new();
    // Each node also has a TLS port, which its cluster bus and replication use too, and which it
    // announces to TLS clients.
    let cluster = RedisCluster::start(&ClusterOptions {
        tls: Some(certs.files()),
        ..protected()
    });
    let seeds = cluster.tls_seeds();
    // Two keys (almost surely in two slots): the per-slot path over TLS too.
    let body = r#"{"hits":[{"key":"tls:a","limit":3,"window_ms":60000},
                            {"key":"tls:b","limit":3,"window_ms":60000}]}"#;

    let state = AppState::connect(&config(&[
        ("REDIS_CLUSTER_NODES", seeds.clone()),
        ("REDIS_PASSWORD", CLUSTER_PASSWORD.to_owned()),
        ("REDIS_TLS", "true".into()),
        ("REDIS_TLS_CA_FILE", certs.file("ca.pem")),
    ]))
    .await
    .unwrap();
    let app = limitd::app(state);
    // The TLS ports speak nothing else: a check that works went over TLS.
    until_checks_work(&app, body, Duration::from_secs(15), "a check over TLS").await;

    // Without the CA the nodes' certificates cannot be verified: limitd sends nothing.
    let state = AppState::connect(&config(&[
        ("REDIS_CLUSTER_NODES", seeds),
        ("REDIS_PASSWORD", CLUSTER_PASSWORD.to_owned()),
        ("REDIS_TLS", "true".into()),
    ]))
    .await
    .unwrap();
    assert!(!state.store().is_connected());
    let app = limitd::app(state);
    assert_eq!(
        post_check(&app, body).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[test]
fn tls_settings_that_cannot_work_are_refused_at_start() {
    let missing: PathBuf = std::env::temp_dir().join("no-such-ca.pem");
    let err = limitd::Config::from_lookup(|name| match name {
        "REDIS_URL" => Some("rediss://127.0.0.1:6380".into()),
        "REDIS_TLS_CA_FILE" => Some(missing.display().to_string()),
        _ => None,
    })
    .unwrap_err();
    assert_eq!(err.var, "REDIS_TLS_CA_FILE", "{err}");
    let err = limitd::Config::from_lookup(|name| match name {
        "REDIS_URL" => Some("redis://127.0.0.1:6379".into()),
        "REDIS_TLS" => Some("true".into()),
        _ => None,
    })
    .unwrap_err();
    assert_eq!(err.var, "REDIS_TLS", "{err}");
    assert!(err.to_string().contains("rediss://"), "{err}");
}
