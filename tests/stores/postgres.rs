//! What only `PostgresStore` has: the caller's transaction, the schema, the
//! reaper, its errors and timeout.

use std::time::Duration;

use clink_webhooks::idempotency::{
    Claim, IdempotencyStore, PostgresStore, Settle, StoreErrorKind, DEFAULT_LEASE,
    DEFAULT_RETENTION,
};
use tokio::time::Instant;
use tokio_postgres::Transaction;

use crate::support::{claimed, pg_pool, postgres_store, server_url, Keys, PG_TABLE};

/// A store, and a connection with a table for the business writes.
async fn with_ledger() -> (PostgresStore, deadpool_postgres::Object) {
    let store = postgres_store().await;
    let client = pg_pool(&server_url("DATABASE_URL"))
        .get()
        .await
        .expect("connection");
    client
        .batch_execute(
            "SELECT pg_advisory_lock(4242);
             CREATE TABLE IF NOT EXISTS clink_test_ledger (event text PRIMARY KEY);
             SELECT pg_advisory_unlock(4242);",
        )
        .await
        .expect("ledger table");
    (store, client)
}

/// What a handler does in its transaction: claim, write, mark completed.
async fn handle_in(store: &PostgresStore, tx: &Transaction<'_>, key: &str) {
    let token = claimed(store.claim_in(tx, key, DEFAULT_LEASE).await);
    tx.execute("INSERT INTO clink_test_ledger (event) VALUES ($1)", &[&key])
        .await
        .expect("business write");
    let done = store.complete_in(tx, key, &token, DEFAULT_RETENTION).await;
    assert_eq!(done.ok(), Some(Settle::Applied));
}

async fn in_ledger(client: &tokio_postgres::Client, key: &str) -> bool {
    let row = client
        .query_one(
            "SELECT count(*) FROM clink_test_ledger WHERE event = $1",
            &[&key],
        )
        .await
        .expect("ledger query");
    row.get::<_, i64>(0) == 1
}

#[tokio::test]
async fn business_write_and_completed_mark_commit_together() {
    let key = Keys::new("pg_commit").key("event");
    let (store, mut client) = with_ledger().await;
    let tx = client.transaction().await.expect("begin");
    handle_in(&store, &tx, &key).await;

    // Until the commit, another delivery waits on the row and times out (503).
    let impatient = store
        .clone()
        .with_timeout(Duration::from_millis(200))
        .expect("valid timeout");
    let err = impatient
        .claim(&key, DEFAULT_LEASE)
        .await
        .expect_err("row locked");
    assert_eq!(err.kind(), StoreErrorKind::Timeout, "{err}");

    tx.commit().await.expect("commit");
    assert_eq!(
        store.claim(&key, DEFAULT_LEASE).await.ok(),
        Some(Claim::Completed)
    );
    assert!(in_ledger(&client, &key).await);
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_no_trace() {
    let key = Keys::new("pg_rollback").key("event");
    let (store, mut client) = with_ledger().await;
    let tx = client.transaction().await.expect("begin");
    handle_in(&store, &tx, &key).await;
    tx.rollback().await.expect("rollback");

    // Neither the write nor the mark happened: the retry runs the handler.
    assert!(!in_ledger(&client, &key).await);
    claimed(store.claim(&key, DEFAULT_LEASE).await);
}

#[tokio::test]
async fn a_transaction_sees_keys_completed_elsewhere() {
    let keys = Keys::new("pg_seen");
    let key = keys.key("event");
    let store = postgres_store().await;
    let token = claimed(store.claim(&key, DEFAULT_LEASE).await);
    let done = store.complete(&key, &token, DEFAULT_RETENTION).await;
    assert_eq!(done.ok(), Some(Settle::Applied));

    let pool = pg_pool(&server_url("DATABASE_URL"));
    let mut client = pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    assert_eq!(
        store.claim_in(&tx, &key, DEFAULT_LEASE).await.ok(),
        Some(Claim::Completed)
    );
    tx.rollback().await.expect("rollback");
}

#[tokio::test]
async fn reap_deletes_ended_rows_only() {
    let keys = Keys::new("pg_reap");
    let store = postgres_store().await;
    let short = Duration::from_millis(200);
    let [lapsed, expired, kept, held] =
        ["lapsed claim", "expired", "kept", "held"].map(|name| keys.key(name));

    claimed(store.claim(&lapsed, short).await);
    let token = claimed(store.claim(&expired, DEFAULT_LEASE).await);
    assert_eq!(
        store.complete(&expired, &token, short).await.ok(),
        Some(Settle::Applied)
    );
    let token = claimed(store.claim(&kept, DEFAULT_LEASE).await);
    let done = store.complete(&kept, &token, DEFAULT_RETENTION).await;
    assert_eq!(done.ok(), Some(Settle::Applied));
    claimed(store.claim(&held, DEFAULT_LEASE).await);

    let pool = pg_pool(&server_url("DATABASE_URL"));
    let client = pool.get().await.expect("connection");
    let ours = format!("{}%", keys.key(""));
    let count = |ended: bool| {
        let sql = format!(
            "SELECT count(*) FROM {PG_TABLE} WHERE key LIKE $1 AND {}",
            if ended { "expires_at <= now()" } else { "true" }
        );
        let (client, ours) = (&client, &ours);
        async move {
            let row = client.query_one(&sql, &[ours]).await.expect("count");
            row.get::<_, i64>(0)
        }
    };

    // Wait, by the database's clock, for the two short deadlines to pass.
    let start = Instant::now();
    while count(true).await < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the rows never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.reap().await.expect("reap") >= 2);
    assert_eq!(count(false).await, 2);
    assert_eq!(
        store.claim(&kept, DEFAULT_LEASE).await.ok(),
        Some(Claim::Completed)
    );
    assert!(matches!(
        store.claim(&held, DEFAULT_LEASE).await,
        Ok(Claim::InFlight { .. })
    ));
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_to_race() {
    let pool = pg_pool(&server_url("DATABASE_URL"));
    let table = format!("clink_migrate_{}", std::process::id());
    let store = PostgresStore::new(pool.clone())
        .with_table(&table)
        .expect("valid table name");
    assert!(store
        .schema_sql()
        .contains(&format!("CREATE TABLE IF NOT EXISTS \"{table}\"")));

    let runs: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    for run in runs {
        run.await.expect("task").expect("migrate");
    }
    store.migrate().await.expect("migrate again");
    claimed(store.claim("k", DEFAULT_LEASE).await);

    let client = pool.get().await.expect("connection");
    client
        .batch_execute(&format!("DROP TABLE \"{table}\""))
        .await
        .expect("drop");
}

#[tokio::test]
async fn a_missing_table_says_to_migrate() {
    let pool = pg_pool(&server_url("DATABASE_URL"));
    let store = PostgresStore::new(pool)
        .with_table("clink_never_migrated")
        .expect("valid table name");
    let err = store.claim("k", DEFAULT_LEASE).await.expect_err("no table");
    assert_eq!(err.kind(), StoreErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("migrate()"), "{err}");
}

#[tokio::test]
async fn unreachable_database_is_unavailable_and_the_password_stays_secret() {
    // Nothing listens on port 1 of the loopback interface.
    let pool = pg_pool("postgres://clink:hunter2-secret@127.0.0.1:1/clink");
    let store = PostgresStore::new(pool);
    let err = store
        .claim("k", DEFAULT_LEASE)
        .await
        .expect_err("nothing listens there");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

#[tokio::test]
async fn bad_configuration_is_refused() {
    let pool = pg_pool(&server_url("DATABASE_URL"));
    let store = PostgresStore::new(pool);
    for bad in ["Events", "events; drop table x", "a.b.c", ""] {
        let err = store.clone().with_table(bad).expect_err(bad);
        assert!(err.to_string().contains("lowercase"), "{err}");
    }
    assert!(store.clone().with_timeout(Duration::ZERO).is_err());
    assert!(store.spawn_reaper(Duration::ZERO).is_err());

    let reaper = store
        .spawn_reaper(Duration::from_secs(3600))
        .expect("reaper");
    reaper.abort();
}
