//! `RedisStore` over a Redis Cluster (feature `redis-cluster`), against the
//! three nodes in `REDIS_CLUSTER_URLS` (comma-separated), and with
//! `redis-tls` too over their TLS ports in `REDIS_CLUSTER_TLS_URLS`: the
//! stores the conformance suite runs its cases on, and what only a cluster
//! has.

use std::sync::Arc;
use std::time::Duration;

use clink_webhooks::events::{ObjectKey, Version};
use clink_webhooks::store::{
    Claim, FreshnessStore, IdempotencyStore, RedisStore, Settle, StoreErrorKind, DEFAULT_LEASE,
    DEFAULT_RETENTION,
};
use clink_webhooks::Timestamp;

use crate::support::stores::{claimed, server_url, Keys, TEST_TIMEOUT};

/// The node URLs in `var`, a comma-separated list.
pub(crate) fn node_urls(var: &str) -> Vec<String> {
    let urls: Vec<String> = server_url(var)
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(String::from)
        .collect();
    assert!(!urls.is_empty(), "{var} lists no URL");
    urls
}

/// A store over the cluster in `REDIS_CLUSTER_URLS`.
pub(crate) async fn cluster_store() -> RedisStore {
    RedisStore::connect_cluster(&node_urls("REDIS_CLUSTER_URLS"))
        .await
        .unwrap_or_else(|err| panic!("cannot connect to REDIS_CLUSTER_URLS: {err}"))
        .with_timeout(TEST_TIMEOUT)
        .expect("valid timeout")
}

pub(crate) async fn store() -> Arc<dyn IdempotencyStore> {
    Arc::new(cluster_store().await)
}

pub(crate) async fn freshness_store(retention: Duration) -> Arc<dyn FreshnessStore> {
    let store = cluster_store().await.with_freshness_retention(retention);
    Arc::new(store.expect("valid retention"))
}

/// A store over the cluster's TLS ports in `REDIS_CLUSTER_TLS_URLS`,
/// trusting the test CA only.
#[cfg(feature = "redis-tls")]
pub(crate) async fn tls_cluster_store() -> RedisStore {
    let urls = node_urls("REDIS_CLUSTER_TLS_URLS");
    RedisStore::connect_cluster_with_tls(&urls, &super::redis_tls::test_ca())
        .await
        .unwrap_or_else(|err| panic!("cannot connect to REDIS_CLUSTER_TLS_URLS: {err}"))
        .with_timeout(TEST_TIMEOUT)
        .expect("valid timeout")
}

#[cfg(feature = "redis-tls")]
pub(crate) async fn tls_store() -> Arc<dyn IdempotencyStore> {
    Arc::new(tls_cluster_store().await)
}

#[cfg(feature = "redis-tls")]
pub(crate) async fn tls_freshness_store(retention: Duration) -> Arc<dyn FreshnessStore> {
    let store = tls_cluster_store()
        .await
        .with_freshness_retention(retention);
    Arc::new(store.expect("valid retention"))
}

/// A plain connection to each node by itself (not as a cluster client).
async fn node_connections() -> Vec<redis::aio::MultiplexedConnection> {
    let mut connections = Vec::new();
    for url in node_urls("REDIS_CLUSTER_URLS") {
        let client = redis::Client::open(url.as_str()).expect("a node URL parses");
        let connection = crate::support::stores::redis_connection(&client)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to the node {url}: {err}"));
        connections.push(connection);
    }
    connections
}

/// How many nodes hold `key` (a node answers `MOVED` for a key of another
/// node's slot).
async fn holders(nodes: &mut [redis::aio::MultiplexedConnection], key: &str) -> Vec<usize> {
    let mut holding = Vec::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        let answer: redis::RedisResult<i64> = redis::cmd("EXISTS").arg(key).query_async(node).await;
        match answer {
            Ok(1) => holding.push(i),
            Ok(_) => {}
            Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Moved) => {}
            Err(err) => panic!("EXISTS on node {i}: {err}"),
        }
    }
    holding
}

#[tokio::test]
async fn keys_spread_over_the_nodes_and_each_lives_on_one() {
    let _servers = crate::support::servers::shared().await;
    let keys = Keys::new("redis_cluster_spread");
    let store = cluster_store().await;
    let mut nodes = node_connections().await;

    let mut used = vec![0_usize; nodes.len()];
    for i in 0..48 {
        let key = keys.key(&format!("event {i}"));
        let token = claimed(store.claim(&key, DEFAULT_LEASE).await);
        let done = store.complete(&key, &token, DEFAULT_RETENTION).await;
        assert!(matches!(done, Ok(Settle::Applied)), "{key:?}: {done:?}");
        let holding = holders(&mut nodes, &key).await;
        assert_eq!(holding.len(), 1, "{key:?} is on nodes {holding:?}");
        used[holding[0]] += 1;
    }
    assert!(
        used.iter().filter(|&&count| count > 0).count() >= 2,
        "48 keys all on one node: {used:?}"
    );

    // Freshness keys too: one per object, each on the node of its slot.
    let prefix = keys.key("freshness");
    let freshness = cluster_store().await.with_freshness_prefix(prefix.clone());
    let version = Version::new(Timestamp::from_millis(1_736_942_400_000), "evt_1");
    for i in 0..8 {
        let object = ObjectKey::new("order", format!("ord_{i}"));
        freshness.record(&object, &version).await.expect("record");
        assert_eq!(
            freshness.newest(&object).await.ok(),
            Some(Some(version.clone()))
        );
        let key = format!("{prefix}:order:ord_{i}");
        assert_eq!(holders(&mut nodes, &key).await.len(), 1, "{key:?}");
    }
}

#[tokio::test]
async fn scripts_are_loaded_again_after_every_node_forgets_them() {
    // Every other test's scripts are flushed too: none may run meanwhile,
    // or a flush between its `SCRIPT LOAD` and its `EVALSHA` fails it.
    let _servers = crate::support::servers::exclusive().await;
    let keys = Keys::new("redis_cluster_noscript");
    let store = cluster_store().await;
    claimed(store.claim(&keys.key("warm up"), DEFAULT_LEASE).await);

    for node in &mut node_connections().await {
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(node)
            .await
            .expect("SCRIPT FLUSH");
    }
    // NOSCRIPT on whichever node serves each key, then SCRIPT LOAD and
    // the call again, invisibly.
    for i in 0..8 {
        let key = keys.key(&format!("after flush {i}"));
        let token = claimed(store.claim(&key, DEFAULT_LEASE).await);
        assert_eq!(
            store
                .claim(&key, DEFAULT_LEASE)
                .await
                .ok()
                .map(|claim| matches!(claim, Claim::InFlight { .. })),
            Some(true)
        );
        let done = store.complete(&key, &token, DEFAULT_RETENTION).await;
        assert_eq!(done.ok(), Some(Settle::Applied));
    }
}

#[tokio::test]
async fn cluster_urls_are_checked_and_never_repeated() {
    let none: [&str; 0] = [];
    let err = RedisStore::connect_cluster(&none)
        .await
        .expect_err("no URL");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");

    let err = RedisStore::connect_cluster(&["redis://:hunter2-secret@[::1"])
        .await
        .expect_err("not a URL");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");

    let port = closed_port();
    let err = RedisStore::connect_cluster(&[format!("redis://:hunter2-secret@127.0.0.1:{port}/")])
        .await
        .expect_err("nothing listens there");
    assert!(
        matches!(
            err.kind(),
            StoreErrorKind::Unavailable | StoreErrorKind::Timeout
        ),
        "{err}"
    );
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

#[cfg(feature = "redis-tls")]
#[tokio::test]
async fn a_tls_cluster_needs_rediss_urls() {
    let err = RedisStore::connect_cluster_with_tls(
        &node_urls("REDIS_CLUSTER_URLS"),
        &super::redis_tls::test_ca(),
    )
    .await
    .expect_err("redis:// URLs with a root certificate");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("rediss://"), "{err}");
}

/// A loopback port nothing listens on (one just closed).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}
