//! `RedisStore` over TLS (feature `redis-tls`), against the TLS
//! redis-server in `REDIS_TLS_URL` whose certificate the CA in the PEM file
//! `REDIS_TLS_CA` signed: the stores the conformance suite runs its cases
//! on, and what only TLS has (the certificate is really verified).

use std::sync::Arc;
use std::time::Duration;

use clink_webhooks::store::{
    FreshnessStore, IdempotencyStore, RedisStore, StoreErrorKind, DEFAULT_LEASE,
};

use crate::support::stores::{claimed, server_url, Keys, TEST_TIMEOUT};

/// The test CA's certificate, PEM.
pub(crate) fn test_ca() -> Vec<u8> {
    let path = server_url("REDIS_TLS_CA");
    std::fs::read(&path).unwrap_or_else(|err| panic!("cannot read REDIS_TLS_CA ({path}): {err}"))
}

/// A store over TLS to `REDIS_TLS_URL`, trusting the test CA only.
pub(crate) async fn tls_store() -> RedisStore {
    let url = server_url("REDIS_TLS_URL");
    RedisStore::connect_with_tls(&url, &test_ca())
        .await
        .unwrap_or_else(|err| panic!("cannot connect to REDIS_TLS_URL: {err}"))
        .with_timeout(TEST_TIMEOUT)
        .expect("valid timeout")
}

pub(crate) async fn store() -> Arc<dyn IdempotencyStore> {
    Arc::new(tls_store().await)
}

pub(crate) async fn freshness_store(retention: Duration) -> Arc<dyn FreshnessStore> {
    let store = tls_store().await.with_freshness_retention(retention);
    Arc::new(store.expect("valid retention"))
}

/// The port of `REDIS_TLS_URL`.
fn tls_port() -> u16 {
    let url = server_url("REDIS_TLS_URL");
    let port = url.trim_end_matches('/').rsplit(':').next();
    port.and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("REDIS_TLS_URL has no port: {url}"))
}

#[tokio::test]
async fn the_system_roots_do_not_trust_the_test_ca() {
    // The same server, verified against the system's roots: the handshake
    // fails, so the certificate is really checked.
    let err = RedisStore::connect(&server_url("REDIS_TLS_URL"))
        .await
        .expect_err("a certificate from an unknown CA");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn the_certificate_must_name_the_host() {
    // The server's certificate names localhost and 127.0.0.1.
    let port = tls_port();
    let by_name = RedisStore::connect_with_tls(&format!("rediss://localhost:{port}/"), &test_ca())
        .await
        .unwrap_or_else(|err| panic!("localhost is named in the certificate: {err}"));
    let keys = Keys::new("redis_tls_by_name");
    claimed(by_name.claim(&keys.key("event"), DEFAULT_LEASE).await);

    // 127.0.0.2 reaches the same server (it listens there too) but is not
    // named in its certificate.
    tokio::net::TcpStream::connect(("127.0.0.2", port))
        .await
        .expect("the TLS server listens on 127.0.0.2 too (scripts/services.sh binds it)");
    let err = RedisStore::connect_with_tls(&format!("rediss://127.0.0.2:{port}/"), &test_ca())
        .await
        .expect_err("127.0.0.2 is not in the certificate");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn a_root_certificate_needs_a_rediss_url_and_pem() {
    let plain = format!("redis://127.0.0.1:{}/", tls_port());
    let err = RedisStore::connect_with_tls(&plain, &test_ca())
        .await
        .expect_err("not rediss://");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("rediss://"), "{err}");

    let url = server_url("REDIS_TLS_URL");
    for bad in [&b""[..], b"not a certificate"] {
        let err = RedisStore::connect_with_tls(&url, bad)
            .await
            .expect_err("no certificate");
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    }
}

#[tokio::test]
async fn an_unreachable_tls_server_is_unavailable_and_the_password_stays_secret() {
    let port = closed_port();
    let err = RedisStore::connect_with_tls(
        &format!("rediss://:hunter2-secret@127.0.0.1:{port}/"),
        &test_ca(),
    )
    .await
    .expect_err("nothing listens there");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

/// A loopback port nothing listens on (one just closed).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}
