//! What only `PostgresStore` has: the caller's transaction, the schema, the
//! reaper, its errors and timeout, and its freshness table.

use std::sync::Arc;
use std::time::Duration;

use clink_webhooks::events::ObjectKey;
use clink_webhooks::events::Version;
use clink_webhooks::store::FreshnessStore;
use clink_webhooks::store::{
    Claim, IdempotencyStore, PostgresInbox, PostgresStore, Settle, StoreErrorKind, DEFAULT_LEASE,
    DEFAULT_RETENTION, MAX_TTL,
};
use clink_webhooks::Timestamp;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

use crate::support::servers::shared;
use crate::support::stores::{
    claimed, pg_pool, pg_pool_for, postgres_store, postgres_store_in, server_url, Keys, PG_TABLE,
};

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
    let _servers = shared().await;
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
    let _servers = shared().await;
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
    let _servers = shared().await;
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

/// The reaper deletes ended idempotency keys and ended freshness records,
/// and nothing else. (One test for both tables: a reap deletes every ended
/// row, so two reaping tests would race for each other's rows.)
#[tokio::test]
async fn reap_deletes_ended_rows_only() {
    let _servers = shared().await;
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

    let brief = store
        .clone()
        .with_freshness_retention(short)
        .expect("valid retention");
    let [ended_object, kept_object] = [expired, kept.clone()].map(|id| ObjectKey::new("order", id));
    let version = Version::new(Timestamp::from_millis(1_736_942_400_000), "evt_1");
    brief.record(&ended_object, &version).await.expect("record");
    store.record(&kept_object, &version).await.expect("record");

    let keys_rows = Rows::new(PG_TABLE, "key", &keys).await;
    let freshness_rows = Rows::new(store.freshness_table(), "object_id", &keys).await;
    keys_rows.wait_until_ended(2).await;
    freshness_rows.wait_until_ended(1).await;
    assert_eq!(store.newest(&ended_object).await.ok(), Some(None));
    assert!(store.reap().await.expect("reap") >= 3);
    assert_eq!(keys_rows.count(false).await, 2);
    assert_eq!(freshness_rows.count(false).await, 1);
    assert_eq!(
        store.claim(&kept, DEFAULT_LEASE).await.ok(),
        Some(Claim::Completed)
    );
    assert!(matches!(
        store.claim(&held, DEFAULT_LEASE).await,
        Ok(Claim::InFlight { .. })
    ));
    assert_eq!(store.newest(&kept_object).await.ok(), Some(Some(version)));
}

/// The rows of one test in a table, by the database's clock.
struct Rows {
    client: deadpool_postgres::Object,
    sql: String,
    ours: String,
}

impl Rows {
    /// The rows of `table` whose `column` starts with the test's keys.
    async fn new(table: &str, column: &str, keys: &Keys) -> Self {
        let pool = pg_pool(&server_url("DATABASE_URL"));
        Self {
            client: pool.get().await.expect("connection"),
            sql: format!("SELECT count(*) FROM {table} WHERE {column} LIKE $1"),
            ours: format!("{}%", keys.key("")),
        }
    }

    /// How many there are; only the ended ones if `ended`.
    async fn count(&self, ended: bool) -> i64 {
        let sql = format!(
            "{} AND {}",
            self.sql,
            if ended { "expires_at <= now()" } else { "true" }
        );
        let row = self
            .client
            .query_one(&sql, &[&self.ours])
            .await
            .expect("count");
        row.get(0)
    }

    /// Waits until `ended` of them have ended.
    async fn wait_until_ended(&self, ended: i64) {
        let start = Instant::now();
        while self.count(true).await < ended {
            assert!(start.elapsed() < super::PATIENCE, "the rows never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Event ids compare byte-wise even in a database whose default collation
/// orders text by language (`evt_a` before `evt_B`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ids_compare_byte_wise_under_a_language_collation() {
    let _servers = shared().await;
    const DATABASE: &str = "clink_collation_en";
    let url = server_url("DATABASE_URL");
    let admin = pg_pool(&url).get().await.expect("connection");
    let create = format!(
        "CREATE DATABASE {DATABASE} TEMPLATE template0 ENCODING 'UTF8' \
         LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C'"
    );
    match admin.batch_execute(&create).await {
        Err(err) if err.code() != Some(&SqlState::DUPLICATE_DATABASE) => {
            panic!("cannot create the database {DATABASE}: {err}")
        }
        _ => {}
    }
    let mut config: tokio_postgres::Config = url.parse().expect("the database URL parses");
    config.dbname(DATABASE);
    let pool = pg_pool_for(config);
    let client = pool.get().await.expect("connection");
    let row = client
        .query_one("SELECT 'evt_a' < 'evt_B'", &[])
        .await
        .expect("compare");
    assert!(
        row.get::<_, bool>(0),
        "the database orders text by language"
    );
    drop(client);

    let store = postgres_store_in(pool).await;
    let open = async |retention| {
        let store = store.clone().with_freshness_retention(retention);
        Arc::new(store.expect("valid retention")) as Arc<dyn FreshnessStore>
    };
    super::equal_created_times_compare_ids_byte_wise(open, Keys::new("pg_collation")).await;
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_to_race() {
    let _servers = shared().await;
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

    // A database migrated before freshness records existed gets their table.
    let freshness = format!("{table}_freshness");
    assert_eq!(store.freshness_table(), freshness);
    assert!(store
        .schema_sql()
        .contains(&format!("CREATE TABLE IF NOT EXISTS \"{freshness}\"")));
    let client = pool.get().await.expect("connection");
    client
        .batch_execute(&format!("DROP TABLE \"{freshness}\""))
        .await
        .expect("drop");
    store.migrate().await.expect("migrate after the drop");
    let object = ObjectKey::new("order", "ord_1");
    let version = Version::new(Timestamp::from_millis(1), "evt_1");
    store.record(&object, &version).await.expect("record");
    assert_eq!(store.newest(&object).await.ok(), Some(Some(version)));

    client
        .batch_execute(&format!(
            "DROP TABLE \"{table}\"; DROP TABLE \"{freshness}\""
        ))
        .await
        .expect("drop");
}

#[tokio::test]
async fn a_missing_table_says_to_migrate() {
    let _servers = shared().await;
    let pool = pg_pool(&server_url("DATABASE_URL"));
    let store = PostgresStore::new(pool)
        .with_table("clink_never_migrated")
        .expect("valid table name");
    let err = store.claim("k", DEFAULT_LEASE).await.expect_err("no table");
    assert_eq!(err.kind(), StoreErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("migrate()"), "{err}");
}

/// A claim sent to a server that takes no writes (a standby, or a primary
/// just demoted: here a session whose transactions are read-only) is
/// unavailable, worth retrying, as Redis's `READONLY` is: not a protocol
/// error, which would stop a completion's retries.
#[tokio::test]
async fn a_read_only_server_is_unavailable() {
    let _servers = shared().await;
    let pool = pg_pool(&server_url("DATABASE_URL"));
    PostgresStore::new(pool).migrate().await.expect("migrate");
    let mut config: tokio_postgres::Config = server_url("DATABASE_URL").parse().unwrap();
    config.options("-c default_transaction_read_only=on");
    let store = PostgresStore::new(crate::support::stores::pg_pool_for(config));
    let err = store
        .claim(&format!("read_only_{}", std::process::id()), DEFAULT_LEASE)
        .await
        .expect_err("a read-only session writes nothing");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("25006"), "{err}");
}

/// A pooled connection whose session takes no writes (one still open to a
/// primary since demoted to a standby, here a session made read-only) is
/// closed once it answers `25006`, not handed back to the pool: the next
/// call gets a fresh connection, where the write lands. Handed back, it
/// would answer every call it is given for as long as it lives.
#[tokio::test]
async fn a_connection_to_a_standby_is_not_handed_back_to_the_pool() {
    let _servers = shared().await;
    let pool = pg_pool(&server_url("DATABASE_URL"));
    PostgresStore::new(pool).migrate().await.expect("migrate");
    let config: tokio_postgres::Config = server_url("DATABASE_URL").parse().unwrap();
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    // One connection, so that a call is handed the one the last call used.
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(1)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .unwrap();
    {
        let client = pool.get().await.unwrap();
        client
            .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            .await
            .unwrap();
    }
    let store = PostgresStore::new(pool);
    let key = format!(
        "standby_{}_{}",
        std::process::id(),
        Timestamp::now().as_millis()
    );
    let err = store
        .claim(&key, DEFAULT_LEASE)
        .await
        .expect_err("the read-only session writes nothing");
    assert!(err.to_string().contains("25006"), "{err}");
    assert!(err.spent_connection(), "{err}");
    let claim = store.claim(&key, DEFAULT_LEASE).await;
    assert!(
        matches!(claim, Ok(Claim::Claimed(_))),
        "the next call was handed the read-only connection again: {claim:?}"
    );
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
    let _servers = shared().await;
    let pool = pg_pool(&server_url("DATABASE_URL"));
    let store = PostgresStore::new(pool);
    for bad in ["Events", "events; drop table x", "a.b.c", ""] {
        let err = store.clone().with_table(bad).expect_err(bad);
        assert!(err.to_string().contains("lowercase"), "{err}");
    }
    // Zero, and past an hour: with Duration::MAX every call panicked on
    // its deadline, and past 24.8 days PostgreSQL refuses the lock wait.
    for bad in [Duration::ZERO, Duration::from_secs(3_601), Duration::MAX] {
        assert!(store.clone().with_timeout(bad).is_err(), "{bad:?}");
        assert!(PostgresInbox::new(pg_pool(&server_url("DATABASE_URL")))
            .with_timeout(bad)
            .is_err());
    }
    assert!(store
        .clone()
        .with_timeout(Duration::from_secs(3_600))
        .is_ok());
    for bad in [Duration::ZERO, MAX_TTL + Duration::from_millis(1)] {
        let err = store
            .clone()
            .with_freshness_retention(bad)
            .expect_err("out of range");
        assert!(err.to_string().contains("retention"), "{err}");
    }
    assert!(store.spawn_reaper(Duration::ZERO).is_err());

    let reaper = store
        .spawn_reaper(Duration::from_secs(3600))
        .expect("reaper");
    reaper.abort();
}

/// A statement the server cancels (a role's or a database's
/// `statement_timeout` shorter than the store's) is out of time: `Timeout`,
/// not `Unavailable`.
#[tokio::test]
async fn a_statement_the_server_cancels_is_out_of_time() {
    let _servers = shared().await;
    let keys = Keys::new("pg_statement_timeout");
    let locked = keys.key("locked");
    let url = server_url("DATABASE_URL");
    // A role's or database's statement_timeout, shorter than the store's.
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.options("-c statement_timeout=200");
    let store = postgres_store()
        .await
        .with_timeout(Duration::from_secs(30))
        .unwrap();
    let cut = PostgresStore::new(pg_pool_for(config))
        .with_table(PG_TABLE)
        .unwrap()
        .with_timeout(Duration::from_secs(30))
        .unwrap();
    let mut holder = pg_pool(&url).get().await.unwrap();
    let held = holder.transaction().await.unwrap();
    claimed(store.claim_in(&held, &locked, DEFAULT_LEASE).await);
    // The claim waits for the row's lock until the server cancels it:
    // out of time (as the reaper reads it, halving its batch), not down.
    let err = cut.claim(&locked, DEFAULT_LEASE).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("57014"), "{err}");
    held.rollback().await.unwrap();
}

/// A claim made in the caller's transaction behind another transaction's
/// lock waits at most the store's timeout, ended by the server: the claim
/// fails as a timeout, the caller's rollback and what the pool's next user
/// sends on that connection run at once (they queued behind the waiting
/// claim until the other transaction ended), and nothing reaches a later
/// statement once the lock is let go (a cancel sent from the client landed
/// on whatever the connection ran when it arrived). The transaction's own
/// `lock_timeout` is put back after each claim.
#[tokio::test]
async fn a_claim_in_a_transaction_waits_for_a_lock_at_most_the_timeout() {
    let _servers = shared().await;
    let keys = Keys::new("pg_claim_in_timeout");
    let locked = keys.key("locked");
    let url = server_url("DATABASE_URL");
    // One connection: the next user of the pool gets the same one.
    let one = {
        let manager = deadpool_postgres::Manager::new(url.parse().unwrap(), tokio_postgres::NoTls);
        deadpool_postgres::Pool::builder(manager)
            .max_size(1)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .unwrap()
    };
    let patient = postgres_store().await;
    let quick = patient
        .clone()
        .with_timeout(Duration::from_millis(300))
        .unwrap();

    // The transaction's own lock_timeout is put back after a claim.
    {
        let mut client = one.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        tx.batch_execute("SET LOCAL lock_timeout = '7s'")
            .await
            .unwrap();
        claimed(
            patient
                .claim_in(&tx, &keys.key("free"), DEFAULT_LEASE)
                .await,
        );
        let setting: String = tx.query_one("SHOW lock_timeout", &[]).await.unwrap().get(0);
        assert_eq!(setting, "7s");
        tx.rollback().await.unwrap();
    }

    // Another delivery's transaction claims `locked` and stays open.
    let mut holder = pg_pool(&url).get().await.unwrap();
    let held = holder.transaction().await.unwrap();
    claimed(patient.claim_in(&held, &locked, DEFAULT_LEASE).await);
    {
        let mut client = one.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let answer = quick.claim_in(&tx, &locked, DEFAULT_LEASE).await;
        assert_eq!(answer.unwrap_err().kind(), StoreErrorKind::Timeout);
        // Dropped: rolled back, and the connection goes back to the pool.
    }
    // A bound far above a round trip, well below forever.
    let next = tokio::time::timeout(Duration::from_secs(60), async {
        let client = one.get().await.unwrap();
        client
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
    })
    .await;
    assert_eq!(
        next.ok(),
        Some(1),
        "the connection was stuck behind the claim that timed out"
    );

    // Timed out again, and the lock let go right after: the statements sent
    // next on that connection run to their end.
    {
        let mut client = one.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let answer = quick.claim_in(&tx, &locked, DEFAULT_LEASE).await;
        assert_eq!(answer.unwrap_err().kind(), StoreErrorKind::Timeout);
        held.rollback().await.unwrap();
        tx.rollback().await.unwrap();
        client.batch_execute("SELECT pg_sleep(0.3)").await.unwrap();
        let tx = client.transaction().await.unwrap();
        claimed(patient.claim_in(&tx, &locked, DEFAULT_LEASE).await);
        tx.rollback().await.unwrap();
    }
}

/// A claim stuck behind another transaction's lock times out, and takes
/// nothing down with it: its statement is cancelled and its connection is
/// not handed to the next caller. The cancel races the lock's release: when
/// the server finishes the statement first, the abandoned claim lands, and
/// it holds the key no longer than its lease.
#[tokio::test]
async fn a_timed_out_statement_is_cancelled_and_its_connection_dropped() {
    let _servers = shared().await;
    let keys = Keys::new("pg_timeout");
    let (locked, other) = (keys.key("locked"), keys.key("other"));
    let url = server_url("DATABASE_URL");
    let small_pool = {
        let manager = deadpool_postgres::Manager::new(url.parse().unwrap(), tokio_postgres::NoTls);
        deadpool_postgres::Pool::builder(manager)
            .max_size(2)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .unwrap()
    };
    // The calls that must answer go through `patient`, with a timeout no
    // busy machine reaches; `store` shares its pool, and its calls stuck
    // behind the lock time out soon.
    let patient = postgres_store_in(small_pool).await;
    let store = patient
        .clone()
        .with_timeout(Duration::from_millis(300))
        .unwrap();

    // Another transaction claims `locked` and stays open, holding the row lock.
    let mut holder = pg_pool(&url).get().await.unwrap();
    let tx = holder.transaction().await.unwrap();
    claimed(patient.claim_in(&tx, &locked, DEFAULT_LEASE).await);

    // Both pooled connections time out waiting behind that lock.
    let short_lease = Duration::from_secs(2);
    for _ in 0..2 {
        let answer = store.claim(&locked, short_lease).await;
        assert_eq!(answer.unwrap_err().kind(), StoreErrorKind::Timeout);
    }
    // Unrelated keys are not stuck behind them: a connection handed on
    // with its statement still waiting would hold this claim until the
    // patient timeout.
    claimed(patient.claim(&other, DEFAULT_LEASE).await);

    // Once the holder rolls back, `locked` is free at once (the abandoned
    // claims were cancelled) or, if the server finished one first, once its
    // short lease has ended: never held for longer by a token nobody holds.
    // The bound is generous beside the short lease, and still well inside
    // the default lease.
    tx.rollback().await.unwrap();
    let limit = short_lease + (DEFAULT_LEASE - short_lease) / 2;
    let rolled_back = Instant::now();
    loop {
        match patient.claim(&locked, DEFAULT_LEASE).await {
            Ok(Claim::Claimed(_)) => break,
            other => assert!(
                rolled_back.elapsed() < limit,
                "still {other:?} {:?} after the rollback",
                rolled_back.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A claim whose caller stops waiting (its future dropped: the sender hung
/// up, or a shorter timeout around the store's ended first) while it waits
/// behind another transaction's lock is cancelled on the server, and its
/// connection is not handed to the next caller: with every pooled
/// connection given up on so, an unrelated claim still answers while the
/// lock is held.
#[tokio::test]
async fn a_dropped_call_is_cancelled_and_its_connection_dropped() {
    let _servers = shared().await;
    let keys = Keys::new("pg_dropped");
    let (locked, other) = (keys.key("locked"), keys.key("other"));
    let url = server_url("DATABASE_URL");
    let table = format!("clink_dropped_{}", std::process::id());
    let small_pool = {
        let manager = deadpool_postgres::Manager::new(url.parse().unwrap(), tokio_postgres::NoTls);
        deadpool_postgres::Pool::builder(manager)
            .max_size(2)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .unwrap()
    };
    let store = PostgresStore::new(small_pool)
        .with_table(&table)
        .and_then(|store| store.with_timeout(Duration::from_secs(10)))
        .unwrap();
    store.migrate().await.unwrap();

    // Another transaction claims `locked` and stays open, holding the row lock.
    let mut holder = pg_pool(&url).get().await.unwrap();
    let tx = holder.transaction().await.unwrap();
    claimed(store.claim_in(&tx, &locked, DEFAULT_LEASE).await);

    // Both pooled connections wait behind it, as the server says (a bounded
    // wait on the server's word, not on time); then their callers give up.
    let watcher = pg_pool(&url).get().await.unwrap();
    let waiting = async || -> i64 {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'",
                &[&table],
            )
            .await
            .unwrap()
            .get(0)
    };
    let short_lease = Duration::from_secs(2);
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let (store, locked) = (store.clone(), locked.clone());
            tokio::spawn(async move { store.claim(&locked, short_lease).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while waiting().await < 2 {
        assert!(
            Instant::now() < deadline && calls.iter().all(|call| !call.is_finished()),
            "the claims did not wait behind the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for call in calls {
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
    }

    // Their statements are cancelled: none waits on the lock any more.
    while waiting().await > 0 {
        assert!(
            Instant::now() < deadline,
            "a statement whose caller gave up still waits on the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An unrelated key is not stuck behind them: a connection handed on
    // with its statement still waiting would hold this claim until the
    // store's timeout.
    claimed(store.claim(&other, DEFAULT_LEASE).await);
    tx.rollback().await.unwrap();
    watcher
        .execute(&format!("DROP TABLE IF EXISTS \"{table}\""), &[])
        .await
        .unwrap();
}

/// A migration whose caller gives up on it (the future dropped, as a start
/// that times out drops it) while it waits for the migration lock another
/// instance holds is cancelled on the server, for the store and for the
/// inbox: its statement stops waiting at once, not when its lock timeout
/// (a minute here) ends, and the connection that ran it is never handed
/// out again in the middle of its transaction. Before, the migration took
/// its connection outside the guard every other call has.
#[tokio::test]
async fn a_migration_given_up_on_is_cancelled_and_its_connection_dropped() {
    let _servers = shared().await;
    let url = server_url("DATABASE_URL");
    let watcher = pg_pool(&url).get().await.unwrap();
    // Waiting for this table's migration lock (an advisory lock on the
    // hash of its name), not another test's.
    let waiting = async |table: &str| -> i64 {
        watcher
            .query_one(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
                   AND ((classid::int8 << 32) | objid::int8) = hashtext($1)::int8",
                &[&table],
            )
            .await
            .map(|row| row.get(0))
            .unwrap_or_else(|e| panic!("{table}: {e}"))
    };
    let minute = Duration::from_secs(60);
    for kind in ["store", "inbox"] {
        let table = format!("clink_migrate_dropped_{kind}_{}", std::process::id());
        // Another instance holds the migration's lock.
        let holder = pg_pool(&url).get().await.unwrap();
        holder
            .execute("SELECT pg_advisory_lock(hashtext($1))", &[&table])
            .await
            .unwrap();
        let pool = pg_pool(&url);
        let migration = match kind {
            "store" => {
                let store = PostgresStore::new(pool)
                    .with_table(&table)
                    .and_then(|store| store.with_timeout(minute))
                    .unwrap();
                tokio::spawn(async move { store.migrate().await })
            }
            _ => {
                let inbox = clink_webhooks::store::PostgresInbox::new(pool)
                    .with_table(&table)
                    .and_then(|inbox| inbox.with_timeout(minute))
                    .unwrap();
                tokio::spawn(async move { inbox.migrate().await })
            }
        };
        // It waits for the lock, as the server says (a bounded wait on the
        // server's word, not on time); then its caller gives up.
        let deadline = Instant::now() + Duration::from_secs(30);
        while waiting(&table).await < 1 {
            assert!(
                Instant::now() < deadline && !migration.is_finished(),
                "{kind}: the migration did not wait for the lock"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        migration.abort();
        assert!(migration.await.unwrap_err().is_cancelled(), "{kind}");
        // Well inside the minute its lock timeout would take.
        let deadline = Instant::now() + Duration::from_secs(20);
        while waiting(&table).await > 0 {
            assert!(
                Instant::now() < deadline,
                "{kind}: a migration whose caller gave up still waits for the lock"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        holder
            .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&table])
            .await
            .unwrap();
    }
}
