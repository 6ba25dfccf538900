//! Shared pieces of the store tests: stores over the real servers, unique
//! keys, and the answers the cases expect.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use clink_webhooks::store::{
    Claim, FreshnessStore, IdempotencyStore, LeaseToken, MemoryStore, Settle, StoreError,
};
use clink_webhooks::BoxFuture;

/// Per-call timeout for the networked stores under test: generous, because
/// the suite runs beside builds on a small machine and checks the state
/// machine, not latency (the timeout itself has its own tests).
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The URL in `var`; a test that needs a server fails without one.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn server_url(var: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{var} is not set, and this test needs a real server. Run scripts/test (it starts \
             private Redis and PostgreSQL servers), or `scripts/with-services cargo test \
             --all-features`, or export {var} to point at a server you run."
        ),
    }
}

/// A connection to the Redis server of `client` that waits as long as a
/// slow, busy machine needs for an answer: the `redis` crate's own default
/// gives up after 500 ms, which a long `XRANGE` on a loaded machine passes.
#[cfg(feature = "redis")]
pub(crate) async fn redis_connection(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(120)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

pub(crate) async fn memory() -> Arc<dyn IdempotencyStore> {
    Arc::new(MemoryStore::new())
}

pub(crate) async fn memory_freshness(retention: Duration) -> Arc<dyn FreshnessStore> {
    Arc::new(
        MemoryStore::new()
            .with_freshness_retention(retention)
            .expect("a retention the tests use is valid"),
    )
}

#[cfg(feature = "redis")]
pub(crate) async fn redis_store() -> clink_webhooks::store::RedisStore {
    redis_store_at("REDIS_URL").await
}

/// A `RedisStore` on the server whose URL is in `var`.
#[cfg(feature = "redis")]
pub(crate) async fn redis_store_at(var: &str) -> clink_webhooks::store::RedisStore {
    let url = server_url(var);
    clink_webhooks::store::RedisStore::connect(&url)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to {var}: {err}"))
        .with_timeout(TEST_TIMEOUT)
        .expect("valid timeout")
}

#[cfg(feature = "redis")]
pub(crate) async fn redis() -> Arc<dyn IdempotencyStore> {
    Arc::new(redis_store().await)
}

#[cfg(feature = "redis")]
pub(crate) async fn redis_freshness(retention: Duration) -> Arc<dyn FreshnessStore> {
    let store = redis_store().await.with_freshness_retention(retention);
    Arc::new(store.expect("valid retention"))
}

/// A `RedisStore` on the Valkey 8.1 server, whose `SET` takes `IFEQ`.
#[cfg(feature = "redis")]
pub(crate) async fn valkey() -> Arc<dyn IdempotencyStore> {
    Arc::new(redis_store_at("VALKEY_URL").await)
}

#[cfg(feature = "redis")]
pub(crate) async fn valkey_freshness(retention: Duration) -> Arc<dyn FreshnessStore> {
    let store = redis_store_at("VALKEY_URL")
        .await
        .with_freshness_retention(retention);
    Arc::new(store.expect("valid retention"))
}

/// A pool over `url` as an application would build one.
#[cfg(feature = "postgres")]
pub(crate) fn pg_pool(url: &str) -> deadpool_postgres::Pool {
    pg_pool_for(url.parse().expect("the database URL parses"))
}

/// A pool over `config` as an application would build one.
#[cfg(feature = "postgres")]
pub(crate) fn pg_pool_for(config: tokio_postgres::Config) -> deadpool_postgres::Pool {
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    deadpool_postgres::Pool::builder(manager)
        .max_size(16)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .expect("pool builds")
}

/// The table the conformance suite uses (keys are unique per run).
#[cfg(feature = "postgres")]
pub(crate) const PG_TABLE: &str = "clink_conformance";

#[cfg(feature = "postgres")]
pub(crate) async fn postgres_store() -> clink_webhooks::store::PostgresStore {
    postgres_store_at("DATABASE_URL").await
}

/// The conformance suite's `PostgresStore` on the database whose URL is in `var`.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_store_at(var: &str) -> clink_webhooks::store::PostgresStore {
    postgres_store_in(pg_pool(&server_url(var))).await
}

/// The conformance suite's store over `pool`, migrated.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_store_in(
    pool: deadpool_postgres::Pool,
) -> clink_webhooks::store::PostgresStore {
    let store = clink_webhooks::store::PostgresStore::new(pool)
        .with_table(PG_TABLE)
        .and_then(|store| store.with_timeout(TEST_TIMEOUT))
        .expect("valid configuration");
    store
        .migrate()
        .await
        .unwrap_or_else(|err| panic!("cannot migrate DATABASE_URL: {err}"));
    store
}

#[cfg(feature = "postgres")]
pub(crate) async fn postgres() -> Arc<dyn IdempotencyStore> {
    Arc::new(postgres_store().await)
}

#[cfg(feature = "postgres")]
pub(crate) async fn postgres_freshness(retention: Duration) -> Arc<dyn FreshnessStore> {
    let store = postgres_store().await.with_freshness_retention(retention);
    Arc::new(store.expect("valid retention"))
}

/// Keys unique to one test in one run, so that reruns against the same
/// servers never meet an earlier run's keys.
#[derive(Debug)]
pub(crate) struct Keys {
    prefix: String,
}

static RUN: LazyLock<String> = LazyLock::new(|| {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
});

impl Keys {
    pub(crate) fn new(test: &str) -> Self {
        Self {
            prefix: format!("conformance:{}:{test}:", *RUN),
        }
    }

    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// The token of a `Claimed` answer; fails the test on any other answer.
#[track_caller]
pub(crate) fn claimed(answer: Result<Claim, StoreError>) -> LeaseToken {
    match answer {
        Ok(Claim::Claimed(token)) => token,
        other => panic!("expected Claimed, got {other:?}"),
    }
}

/// The time left of an `InFlight` answer; fails the test on any other answer.
#[track_caller]
pub(crate) fn in_flight(answer: Result<Claim, StoreError>) -> Duration {
    match answer {
        Ok(Claim::InFlight { retry_after }) => retry_after,
        other => panic!("expected InFlight, got {other:?}"),
    }
}

/// A store whose calls never finish, ping included.
#[cfg_attr(not(feature = "test-util"), allow(dead_code))]
pub(crate) struct HungStore;

impl IdempotencyStore for HungStore {
    fn claim<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(std::future::pending())
    }

    fn complete<'a>(
        &'a self, _: &'a str, _: &'a LeaseToken, _: Duration,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(std::future::pending())
    }

    fn release<'a>(
        &'a self, _: &'a str, _: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(std::future::pending())
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::pending())
    }
}

/// A PostgreSQL database of its own on the `DATABASE_URL` server, so that
/// a process's inbox and stores (in their default tables) meet no other
/// test's rows, and a lock taken on them holds up no other test.
#[cfg(feature = "postgres")]
pub(crate) struct PrivateDatabase {
    /// Its name.
    pub(crate) name: String,
    /// The server's URL, naming this database.
    pub(crate) url: String,
}

#[cfg(feature = "postgres")]
impl PrivateDatabase {
    async fn admin() -> tokio_postgres::Client {
        let url = server_url("DATABASE_URL");
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    /// A new database, named after `test`.
    pub(crate) async fn create(test: &str) -> Self {
        let token = LeaseToken::generate();
        let name = format!("clink_{test}_{}", token.as_str()[..12].to_lowercase());
        Self::admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = server_url("DATABASE_URL");
        let url = match url.split_once("://") {
            // postgres://user@host:port/db?options: the path is the database.
            Some((scheme, rest)) => {
                let (rest, query) = rest
                    .split_once('?')
                    .map_or((rest, None), |(r, q)| (r, Some(q)));
                let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
                let query = query.map(|q| format!("?{q}")).unwrap_or_default();
                format!("{scheme}://{authority}/{name}{query}")
            }
            // key=value: a later dbname overrides the first.
            None => format!("{url} dbname={name}"),
        };
        Self { name, url }
    }

    /// Drops the database, closing whatever is still connected to it.
    pub(crate) async fn drop_now(self) {
        Self::admin()
            .await
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}
