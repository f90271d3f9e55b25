//! limitd to Redis and Sentinel over TLS, against real `redis-server` and `redis-sentinel` with
//! TLS ports and certificates made here by a CA of the test's own: checks work when limitd
//! trusts that CA (`REDIS_TLS_CA_FILE`), and nothing is sent to a server it cannot verify.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::StatusCode;
use limitd::AppState;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::support::{
    config, eventually, free_port, post_check, until_checks_work, RedisCluster, RedisProcess,
    TempDir, CLUSTER_PASSWORD,
};

const BODY: &str = r#"{"hits":[{"key":"tls:k","limit":3,"window_ms":60000}]}"#;

/// A CA and a certificate it signed for 127.0.0.1 and localhost, as PEM files.
struct Certificates {
    dir: TempDir,
}

impl Certificates {
    fn new() -> Self {
        let dir = TempDir::new("tls");
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

    /// The `redis-server` arguments of a TLS port with these certificates.
    fn server_args(&self, tls_port: &str) -> Vec<String> {
        [
            "--tls-port",
            tls_port,
            "--tls-cert-file",
            &self.file("server.pem"),
            "--tls-key-file",
            &self.file("server.key"),
            "--tls-ca-cert-file",
            &self.file("ca.pem"),
            "--tls-auth-clients",
            "no",
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

/// A data node with a plain port (for the harness' probes) and a TLS port.
fn tls_server(certs: &Certificates) -> (RedisProcess, u16) {
    let tls_port = free_port();
    let args = certs.server_args(&tls_port.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (RedisProcess::server(&args), tls_port)
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
    eventually(Duration::from_secs(10), "a refused certificate", || async {
        (post_check(&app, BODY).await.0 == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    assert_eq!(state.store().master_addr(), None);
}

#[tokio::test]
async fn sentinels_and_the_master_over_tls() {
    let certs = Certificates::new();
    let (_master, master_tls) = tls_server(&certs);
    let sentinel_tls = free_port();
    let extra = format!(
        "tls-port {sentinel_tls}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
         tls-auth-clients no\ntls-replication yes\n",
        certs.file("server.pem"),
        certs.file("server.key"),
        certs.file("ca.pem"),
    );
    let _sentinel = RedisProcess::sentinel_with(master_tls, &extra);

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
    let mut tls_ports = Vec::new();
    let _cluster = RedisCluster::start_with(|_| {
        let port = free_port();
        tls_ports.push(port);
        let mut args = certs.server_args(&port.to_string());
        args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(str::to_owned));
        args
    });
    let seeds = tls_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
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
