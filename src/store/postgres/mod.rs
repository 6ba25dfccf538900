//! [`PostgresStore`]: a store in a PostgreSQL table, shared by every instance,
//! that can also join the caller's own transaction.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Pool, PoolError};
use tokio::task::JoinHandle;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Transaction};

use super::DEFAULT_FRESHNESS_RETENTION;
use super::{
    check_key, check_timeout, timed, ttl_millis, BoxFuture, Claim, IdempotencyStore, LeaseToken,
    Settle, StoreError, StoreErrorKind, DEFAULT_TIMEOUT,
};
use crate::ConfigError;

mod freshness;
mod host;
mod postgres_inbox;
mod schema;
#[cfg(feature = "postgres-tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres-tls")))]
mod tls;

pub use host::{postgres_config, postgres_on_this_machine};
pub use postgres_inbox::PostgresInbox;
#[cfg(feature = "postgres-tls")]
pub use tls::{postgres_tls, MakeRustlsConnect};

use schema::{check_table_name, Statements};

/// How many expired rows one reaper statement deletes at most.
const REAP_BATCH: i64 = 10_000;

/// The fewest a batch is cut down to when batches run out of time.
const REAP_BATCH_LEAST: i64 = 100;

/// How long [`PostgresStore::migrate`] may wait (for the lock and the DDL).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a migration waits for another instance's migration of the same
/// table to end: half of [`MIGRATE_TIMEOUT`].
const MIGRATE_TURN_WAIT: Duration = Duration::from_secs(15);

/// An idempotency store in a PostgreSQL table, shared by every instance of
/// the app that uses the same database.
///
/// One row per key: `lease_token` holds the holder's token while the key is
/// claimed and is `NULL` once completed; `expires_at` is when the lease or
/// the retention ends. Every time is the database's (`statement_timestamp()`),
/// never the app's, so instances with skewed clocks agree.
///
/// * [`claim`](IdempotencyStore::claim) is one `INSERT .. ON CONFLICT DO
///   UPDATE .. RETURNING`: it inserts the key, takes over a row whose lease or
///   retention has ended, or leaves a live row as it is, and returns the row
///   either way, so every answer takes one round trip.
/// * [`complete`](IdempotencyStore::complete) and
///   [`release`](IdempotencyStore::release) are one `UPDATE` or `DELETE`
///   matching the key, the token and a live lease.
/// * Statements are sent with their parameter types (no prepare step), so
///   each call is one round trip, and the store works behind PgBouncer in
///   transaction mode.
///
/// It is also a [`FreshnessStore`](crate::store::FreshnessStore) for
/// [`EventRouter::ordering`](crate::EventRouter::ordering),
/// in a second table named after the first with `_freshness` appended
/// ([`freshness_table`](Self::freshness_table)): one row per object with the
/// newest version handled, its event id compared byte-wise (`COLLATE "C"`),
/// kept [`freshness_retention`](Self::freshness_retention) after it was last
/// written. Recording is one `INSERT .. ON CONFLICT DO UPDATE .. WHERE` the
/// new version is newer (or the held one has ended); reading is one `SELECT`.
///
/// Ended rows, in either table, read as absent at once but stay until
/// [`reap`](Self::reap) deletes them: run it periodically, for example with
/// [`spawn_reaper`](Self::spawn_reaper) on one instance or from a cron job.
///
/// Create the tables with [`migrate`](Self::migrate) at startup, or take
/// [`schema_sql`](Self::schema_sql) into your own migrations.
///
/// [`claim_in`](Self::claim_in) and [`complete_in`](Self::complete_in) run in
/// the caller's transaction, so that a business write and the dedup mark
/// commit together or not at all: commit only when `complete_in` answers
/// [`Settle::Applied`] (see `examples/postgres_transaction.rs`).
///
/// A pooled connection that answers as a standby does (`25006`, a
/// read-only transaction: after a failover, one still open to the demoted
/// primary) or as a server going away (`57P01` to `57P03`) is closed
/// rather than handed back to the pool: it fails one call, and the pool's
/// next connection goes wherever the address leads now. A connection of
/// your own that [`claim_in`](Self::claim_in) or
/// [`complete_in`](Self::complete_in) find so (their error's
/// [`spent_connection`](StoreError::spent_connection)) is yours to drop,
/// with `deadpool_postgres::Object::take`. (A database made read-only on
/// purpose answers `25006` on every connection: each call then fails on a
/// new one.)
///
/// # Example
///
/// ```no_run
/// use std::sync::Arc;
/// use clink_webhooks::store::{IdempotencyStore, PostgresStore};
///
/// # async fn run(pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::new(pool).with_table("webhook_dedup")?;
/// store.migrate().await?;
/// store.spawn_reaper(std::time::Duration::from_secs(600))?;
/// let store: Arc<dyn IdempotencyStore> = Arc::new(store);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    sql: Arc<Statements>,
    timeout: Duration,
    freshness_retention: Duration,
    cancel: Canceller,
    /// The size each reaping statement (keys, then freshness records)
    /// starts its next run at, shared by the store's clones.
    reap_sizes: Arc<[Mutex<ReapSize>; 2]>,
}

impl PostgresStore {
    /// The table used unless [`with_table`](Self::with_table) names another.
    pub const DEFAULT_TABLE: &'static str = "clink_webhook_events";

    /// A store in [`DEFAULT_TABLE`](Self::DEFAULT_TABLE) over the caller's
    /// pool, with the default per-call timeout ([`DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            sql: Arc::new(Statements::new(Self::DEFAULT_TABLE)),
            timeout: DEFAULT_TIMEOUT,
            freshness_retention: DEFAULT_FRESHNESS_RETENTION,
            cancel: Canceller::plain(),
            reap_sizes: Arc::new([Mutex::new(ReapSize::FIRST), Mutex::new(ReapSize::FIRST)]),
        }
    }

    /// Sends the cancel of a statement that ran out of time with `tls`,
    /// the connector the pool reaches the database with: a cancel sent
    /// plain where the pool's connections require TLS fails, and the
    /// statement then goes on, and may commit after its caller was told
    /// it timed out. Without it, cancels are sent plain.
    #[must_use]
    pub fn cancel_with(mut self, tls: impl PostgresConnector) -> Self {
        self.cancel = Canceller::with(tls);
        self
    }

    /// Uses the table `name`, optionally schema-qualified (`schema.table`),
    /// and `<name>_freshness` for freshness records.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless each part of `name` is 1 to 48 lowercase ASCII
    /// letters, digits and underscores, not starting with a digit.
    pub fn with_table(mut self, name: &str) -> Result<Self, ConfigError> {
        check_table_name(name)?;
        self.sql = Arc::new(Statements::new(name));
        Ok(self)
    }

    /// Sets how long each call waits (for a pooled connection and the
    /// answer) before failing with [`StoreErrorKind::Timeout`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `timeout` is zero or longer than an hour.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.timeout = check_timeout(timeout)?;
        Ok(self)
    }

    /// The table's name, as configured.
    #[must_use]
    pub fn table(&self) -> &str {
        &self.sql.table
    }

    /// The per-call timeout.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The SQL that creates both tables (idempotency keys and freshness
    /// records) and their indexes, idempotent (`CREATE .. IF NOT EXISTS`), for
    /// [`migrate`](Self::migrate) or your own migration tool.
    #[must_use]
    pub fn schema_sql(&self) -> &str {
        &self.sql.schema
    }

    /// Creates both tables and their indexes if they do not exist.
    ///
    /// Safe to run from several instances at once, and while others use the
    /// tables: when all exist it only looks them up (no lock that would queue
    /// behind open transactions); otherwise it runs
    /// [`schema_sql`](Self::schema_sql) under a transaction-scoped advisory lock.
    /// A migration that runs out of time, or whose caller stops waiting for
    /// it, is cancelled on the server and its connection closed, as every
    /// call of the store's is: nothing it left running waits on a lock.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the database cannot be reached, the role may not
    /// create the table, a lock it needs is held by others past the per-call
    /// timeout (another instance's migration of the table is waited for, up
    /// to 15 seconds), or it takes longer than 30 seconds.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        timed(self.timeout.max(MIGRATE_TIMEOUT), async {
            let client = self.pool.get().await.map_err(pool_error)?;
            guarded(client, &self.cancel, async |client| {
                let exists: bool = client
                    .query_typed_one(&self.sql.exists, &[])
                    .await
                    .and_then(|row| row.try_get(0))
                    .map_err(|err| pg_error("cannot look the table up", &err))?;
                if exists {
                    return Ok(());
                }
                create_tables(client, &self.sql.table, &self.sql.schema, self.timeout).await
            })
            .await
        })
        .await
    }

    /// Deletes the rows that have ended, and returns how many: idempotency
    /// keys whose lease or retention has ended, then freshness records whose
    /// retention has ended.
    ///
    /// Works in batches of up to 10,000 rows, each one statement under the
    /// per-call timeout (counted once a pooled connection is had), and
    /// skips rows that a transaction holds locked. A batch whose statement
    /// runs out of time (a busy database, a short timeout, the server's
    /// `statement_timeout`) is tried again at half the size, down to 100
    /// rows, so that the reaper still makes headway where a whole batch
    /// never fits in the timeout. The next call starts at the size that
    /// fitted, the store's clones alike, and at twice that (up to 10,000)
    /// after eight calls in a row that each deleted a whole batch at it
    /// with no statement out of time: a database where only small batches
    /// fit pays for a larger one once in nine ticks of a steady backlog,
    /// not at every tick.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when a batch fails (one of 100 rows runs out of
    /// time too, or no pooled connection comes within the timeout, which
    /// leaves the size as it is); the batches before it stay deleted.
    pub async fn reap(&self) -> Result<u64, StoreError> {
        let keys = self
            .reap_with(
                &self.sql.reap,
                &self.reap_sizes[0],
                "cannot reap expired keys",
            )
            .await?;
        let records = self
            .reap_with(
                &self.sql.freshness.reap,
                &self.reap_sizes[1],
                "cannot reap expired freshness records",
            )
            .await?;
        Ok(keys + records)
    }

    /// Runs the reaping `statement` in batches until one deletes less than a
    /// whole batch.
    async fn reap_with(
        &self, statement: &str, size: &Mutex<ReapSize>, context: &str,
    ) -> Result<u64, StoreError> {
        let start = *size.lock().unwrap_or_else(PoisonError::into_inner);
        let (result, next) = reap_in_batches(start, |batch| async move {
            // A wait for a connection says nothing of the batch's size.
            let client = timed(self.timeout, async {
                self.pool.get().await.map_err(pool_error)
            })
            .await
            .map_err(Batch::Failed)?;
            guarded(client, &self.cancel, async |client| {
                timed(self.timeout, async {
                    client
                        .execute_typed(statement, &[(&batch, Type::INT8)])
                        .await
                        .map_err(|err| pg_error(context, &err))
                })
                .await
            })
            .await
            .map_err(|err| match err.kind() {
                StoreErrorKind::Timeout => Batch::OutOfTime(err),
                _ => Batch::Failed(err),
            })
        })
        .await;
        *size.lock().unwrap_or_else(PoisonError::into_inner) = next;
        result
    }

    /// Runs [`reap`](Self::reap) every `every` on the current Tokio runtime
    /// until the returned task is aborted. Failures are logged (`warn`) and
    /// retried at the next tick. One reaper per database is enough.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `every` is zero or no Tokio runtime is running.
    pub fn spawn_reaper(&self, every: Duration) -> Result<JoinHandle<()>, ConfigError> {
        if every.is_zero() {
            return Err(ConfigError::new(
                "the reaper's interval must be longer than zero",
            ));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError::new("spawn_reaper must be called inside a Tokio runtime"))?;
        let store = self.clone();
        Ok(runtime.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match store.reap().await {
                    Ok(deleted) => {
                        tracing::debug!(table = store.table(), deleted, "reaped expired rows");
                    }
                    Err(error) => {
                        tracing::warn!(table = store.table(), %error, "reaper failed");
                    }
                }
            }
        }))
    }

    /// [`claim`](IdempotencyStore::claim) inside the caller's transaction.
    ///
    /// The claim commits or rolls back with `tx`. Together with
    /// [`complete_in`](Self::complete_in) on the same transaction, the
    /// business write and the completed mark land together or not at all; to
    /// give the claim up, roll back. While `tx` is open it holds the key's row
    /// lock, so another claim of the same key waits for it, at most the
    /// store's [timeout](Self::with_timeout): the server ends that wait
    /// (`lock_timeout`, set for the claim's statement alone and put back
    /// after it), and the claim fails with [`StoreErrorKind::Timeout`]
    /// (answer `503`: Clink retries). Keep such transactions short. A
    /// deadpool `Transaction` derefs to the `tokio_postgres` one, so `&tx`
    /// works for both.
    ///
    /// # Errors
    ///
    /// As [`claim`](IdempotencyStore::claim). After an error the transaction
    /// is aborted: roll it back. A claim whose answer does not come within
    /// twice the timeout (the connection stalled, not a lock) fails with
    /// [`StoreErrorKind::Timeout`] too, its statement perhaps still
    /// running: drop that connection
    /// (`deadpool_postgres::Object::take`) rather than hand it back to its
    /// pool. So too one whose error is a
    /// [`spent_connection`](StoreError::spent_connection) (`25006`, a
    /// standby's: it reaches a primary since demoted; or the server going
    /// away), which would fail every transaction it is given.
    pub async fn claim_in(
        &self, tx: &Transaction<'_>, key: &str, lease: Duration,
    ) -> Result<Claim, StoreError> {
        timed(
            self.timeout.saturating_mul(2),
            lock_wait_within(tx, self.timeout, self.claim_with(tx, key, lease)),
        )
        .await
    }

    /// [`complete`](IdempotencyStore::complete) inside the caller's
    /// transaction.
    ///
    /// Commit only on [`Settle::Applied`]. [`Settle::LeaseLost`] means the
    /// completed mark was not written (the claim's lease ended while the
    /// transaction ran): roll back, or the business write commits beside a
    /// claim any retry takes over, and runs again.
    ///
    /// # Errors
    ///
    /// As [`complete`](IdempotencyStore::complete). After an error the
    /// transaction is aborted: roll it back. A wait for another
    /// transaction's lock ends at the timeout as
    /// [`claim_in`](Self::claim_in)'s does.
    pub async fn complete_in(
        &self, tx: &Transaction<'_>, key: &str, token: &LeaseToken, retention: Duration,
    ) -> Result<Settle, StoreError> {
        timed(
            self.timeout.saturating_mul(2),
            lock_wait_within(
                tx,
                self.timeout,
                self.complete_with(tx, key, token, retention),
            ),
        )
        .await
    }

    async fn claim_with<C>(
        &self, client: &C, key: &str, lease: Duration,
    ) -> Result<Claim, StoreError>
    where
        C: GenericClient + Sync,
    {
        check_key(key)?;
        let lease = millis_param("lease", lease)?;
        let token = LeaseToken::generate();
        let token_text = token.as_str();
        let params: [(&(dyn ToSql + Sync), Type); 3] = [
            (&key, Type::TEXT),
            (&token_text, Type::TEXT),
            (&lease, Type::INT8),
        ];
        let row = client
            .query_typed_one(&self.sql.claim, &params)
            .await
            .map_err(|err| pg_error("cannot claim", &err))?;
        let holder: Option<&str> = row
            .try_get(0)
            .map_err(|err| pg_error("unexpected claim row", &err))?;
        let remaining: i64 = row
            .try_get(1)
            .map_err(|err| pg_error("unexpected claim row", &err))?;
        Ok(match holder {
            None => Claim::Completed,
            Some(holder) if holder == token.as_str() => Claim::Claimed(token),
            Some(_) => Claim::InFlight {
                retry_after: Duration::from_millis(remaining.unsigned_abs()),
            },
        })
    }

    async fn complete_with<C>(
        &self, client: &C, key: &str, token: &LeaseToken, retention: Duration,
    ) -> Result<Settle, StoreError>
    where
        C: GenericClient + Sync,
    {
        let retention = millis_param("retention", retention)?;
        self.settle(client, &self.sql.complete, key, token, Some(retention))
            .await
    }

    async fn settle<C>(
        &self, client: &C, statement: &str, key: &str, token: &LeaseToken, retention: Option<i64>,
    ) -> Result<Settle, StoreError>
    where
        C: GenericClient + Sync,
    {
        check_key(key)?;
        let token = token.as_str();
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> =
            vec![(&key, Type::TEXT), (&token, Type::TEXT)];
        if let Some(retention) = &retention {
            params.push((retention, Type::INT8));
        }
        let changed = client
            .execute_typed(statement, &params)
            .await
            .map_err(|err| pg_error("cannot settle", &err))?;
        Ok(Settle::applied_if(changed == 1))
    }

    /// Runs `call` with a pooled connection, all under the per-call timeout.
    ///
    /// A statement that runs out of time, or whose caller stops waiting for
    /// it (drops the call's future), is cancelled on the server, and its
    /// connection is closed rather than returned to the pool, so the next
    /// caller is never handed a connection busy with it. The cancel is sent
    /// at once but races the statement: if the server finishes first, an
    /// abandoned claim lands and holds its key until its lease ends.
    async fn pooled<T, F>(&self, call: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&tokio_postgres::Client) -> Result<T, StoreError>,
    {
        pooled(&self.pool, self.timeout, &self.cancel, call).await
    }
}

/// A connector for the connections a PostgreSQL store or inbox makes
/// beside its pool's (the inbox's `LISTEN`, a timed-out statement's
/// cancel): [`NoTls`](tokio_postgres::NoTls), the
/// [`postgres_tls`](crate::store::postgres_tls) connector (feature
/// `postgres-tls`), or any other `MakeTlsConnect` that can be cloned and
/// sent between threads. Implemented for every such type.
pub trait PostgresConnector:
    tokio_postgres::tls::MakeTlsConnect<
        tokio_postgres::Socket,
        Stream: Send + 'static,
        TlsConnect: Send + tokio_postgres::tls::TlsConnect<tokio_postgres::Socket, Future: Send>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> PostgresConnector for T where
    T: tokio_postgres::tls::MakeTlsConnect<
            tokio_postgres::Socket,
            Stream: Send + 'static,
            TlsConnect: Send
                            + tokio_postgres::tls::TlsConnect<tokio_postgres::Socket, Future: Send>,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// How the cancel of a statement that ran out of time is sent: with the
/// TLS connector the pool uses, or plain.
#[derive(Clone)]
pub(crate) struct Canceller(
    Arc<dyn Fn(tokio_postgres::CancelToken) -> crate::BoxFuture<'static, bool> + Send + Sync>,
);

impl Canceller {
    /// Cancels sent without TLS.
    pub(crate) fn plain() -> Self {
        Self(Arc::new(|token: tokio_postgres::CancelToken| {
            Box::pin(async move { token.cancel_query(tokio_postgres::NoTls).await.is_ok() })
        }))
    }

    /// Cancels sent with `tls`.
    pub(crate) fn with(tls: impl PostgresConnector) -> Self {
        Self(Arc::new(move |token: tokio_postgres::CancelToken| {
            let tls = tls.clone();
            Box::pin(async move { token.cancel_query(tls).await.is_ok() })
        }))
    }
}

/// `call` on a connection from `pool`, the wait for the connection and the
/// call together bounded by `timeout`. A call that times out, or whose
/// future is dropped before it answers, is cancelled on the server and its
/// connection closed, never returned to the pool: a statement the client
/// gave up on must not go on to take locks or land later.
async fn pooled<T, F>(
    pool: &deadpool_postgres::Pool, timeout: Duration, canceller: &Canceller, call: F,
) -> Result<T, StoreError>
where
    F: AsyncFnOnce(&tokio_postgres::Client) -> Result<T, StoreError>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let client = timed(
        deadline.saturating_duration_since(tokio::time::Instant::now()),
        async { pool.get().await.map_err(pool_error) },
    )
    .await?;
    guarded(client, canceller, async |client| {
        timed(
            deadline.saturating_duration_since(tokio::time::Instant::now()),
            call(client),
        )
        .await
    })
    .await
}

/// `call` on `client`, which is closed (never handed back to the pool) and
/// its statement cancelled on the server should the call run out of time
/// or its future be dropped before it answers (the sender hung up, or a
/// shorter timeout around this one ended first): a statement the client
/// gave up on must not go on to take locks or land later, nor hold up the
/// next caller handed its connection. A call whose connection is of no
/// further use (a standby's `25006`, a server shutting down) closes it too.
async fn guarded<T, F>(
    client: deadpool_postgres::Object, canceller: &Canceller, call: F,
) -> Result<T, StoreError>
where
    F: AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, StoreError>,
{
    // Armed until the call has answered.
    let mut abandoned = Abandoned {
        cancel: Some(client.cancel_token()),
        client: Some(client),
        canceller,
    };
    let result = match abandoned.client.as_mut() {
        Some(client) => call(client).await,
        None => Err(StoreError::new(
            StoreErrorKind::Protocol,
            "no pooled connection",
        )),
    };
    match &result {
        // Armed: the statement may still run; it is cancelled and its
        // connection closed.
        Err(err) if err.kind() == StoreErrorKind::Timeout => {}
        // A connection that answered as a standby does (`25006`: one still
        // open to a primary since demoted), or that the server is closing,
        // would fail every call it is handed next: it is closed, and the
        // pool makes a fresh one, to wherever its address now leads. (A
        // deadlock, a full disk or a cancelled statement leave the
        // connection as good as any other: it goes back.)
        Err(err) if err.spent_connection() => {
            abandoned.cancel = None;
            if let Some(client) = abandoned.client.take() {
                drop(deadpool_postgres::Object::take(client));
            }
        }
        _ => abandoned.cancel = None,
    }
    result
}

/// A pooled connection whose call may still run on it: while `cancel` is
/// set, dropping this closes the connection (rather than handing it back
/// to the pool) and cancels the statement on the server.
struct Abandoned<'a> {
    client: Option<deadpool_postgres::Object>,
    cancel: Option<tokio_postgres::CancelToken>,
    canceller: &'a Canceller,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        let (Some(client), Some(cancel)) = (self.client.take(), self.cancel.take()) else {
            return;
        };
        drop(deadpool_postgres::Object::take(client));
        // Outside a runtime (one shutting down) nothing can be spawned: the
        // connection, closed, is at least never handed out again.
        if tokio::runtime::Handle::try_current().is_ok() {
            cancel_in_background(self.canceller, cancel, "its connection is closed");
        }
    }
}

/// Cancels, from a task of its own, the statement a call that ran out of
/// time left running on the connection of `cancel` (it would otherwise go
/// on waiting, on a row lock say, and hold up everything sent after it on
/// that connection); `then` says what became of the connection, for the
/// warning logged when the cancel cannot be sent. Only for a connection
/// nobody sends anything on again: a cancel reaches whatever its server
/// runs when it arrives.
fn cancel_in_background(
    canceller: &Canceller, cancel: tokio_postgres::CancelToken, then: &'static str,
) {
    let sent = (canceller.0)(cancel);
    tokio::spawn(async move {
        if !sent.await {
            tracing::warn!("could not cancel a timed-out PostgreSQL statement; {then}");
        }
    });
}

/// Saves the transaction's `lock_timeout` and sets it to `$1`.
const LOCK_WAIT_SET: &str = "WITH saved AS MATERIALIZED (
         SELECT set_config('clink_webhooks.lock_timeout', current_setting('lock_timeout'), true)
     )
     SELECT set_config('lock_timeout', $1, true) FROM saved";

/// Puts back the `lock_timeout` [`LOCK_WAIT_SET`] saved.
const LOCK_WAIT_RESTORE: &str =
    "SELECT set_config('lock_timeout', current_setting('clink_webhooks.lock_timeout'), true)";

/// `statement`, run in the caller's transaction `tx` with its wait for
/// another transaction's lock ended by the server after `limit` (SQLSTATE
/// `55P03`, a [`StoreErrorKind::Timeout`]); the transaction's own
/// `lock_timeout` is put back after it. The three statements are sent
/// together, in order, in one round trip. The server ends the wait, not a
/// cancel from here: a cancel sent when the wait is over would reach
/// whatever the connection runs next.
pub(crate) async fn lock_wait_within<T>(
    tx: &Transaction<'_>, limit: Duration, statement: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let limit = format!("{}ms", limit.as_millis().max(1));
    let params: [(&(dyn ToSql + Sync), Type); 1] = [(&limit, Type::TEXT)];
    let set = tx.query_typed(LOCK_WAIT_SET, &params);
    let restore = tx.query_typed(LOCK_WAIT_RESTORE, &[]);
    // Polled in this order, so sent in this order.
    let (set, result, restored) = tokio::join!(set, statement, restore);
    set.map_err(|err| pg_error("cannot bound the wait for a lock", &err))?;
    let result = result?;
    restored.map_err(|err| pg_error("cannot put back lock_timeout", &err))?;
    Ok(result)
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.sql.table)
            .field("timeout", &self.timeout)
            .field("freshness_retention", &self.freshness_retention)
            .finish_non_exhaustive()
    }
}

impl IdempotencyStore for PostgresStore {
    fn claim<'a>(
        &'a self, key: &'a str, lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(self.pooled(async move |client| self.claim_with(client, key, lease).await))
    }

    fn complete<'a>(
        &'a self, key: &'a str, token: &'a LeaseToken, retention: Duration,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(
            self.pooled(async move |client| {
                self.complete_with(client, key, token, retention).await
            }),
        )
    }

    fn release<'a>(
        &'a self, key: &'a str, token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(self.pooled(async move |client| {
            self.settle(client, &self.sql.release, key, token, None)
                .await
        }))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.pooled(async move |client| {
            client
                .simple_query("SELECT 1")
                .await
                .map(drop)
                .map_err(|err| pg_error("cannot reach PostgreSQL", &err))
        }))
    }
}

/// Runs `schema` for `table` in one transaction, under a transaction-scoped
/// advisory lock (so that instances starting together take turns: each
/// waits its turn up to [`MIGRATE_TURN_WAIT`], half the time a migration
/// is given, so that the rest is left for its own statements), waiting
/// for any lock on a table no longer than `lock_wait`: a change that waits
/// for the table behind a long transaction would hold every statement on
/// that table up behind it.
async fn create_tables(
    client: &mut deadpool_postgres::Object, table: &str, schema: &str, lock_wait: Duration,
) -> Result<(), StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(|err| pg_error("cannot start the migration", &err))?;
    let millis = |wait: Duration| wait.as_millis().clamp(1, i32::MAX as u128);
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = {}",
        millis(MIGRATE_TURN_WAIT)
    ))
    .await
    .map_err(|err| pg_error("cannot start the migration", &err))?;
    tx.execute_typed(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[(&table, Type::TEXT)],
    )
    .await
    .map_err(|err| pg_error("cannot take the migration lock", &err))?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = {}", millis(lock_wait)))
        .await
        .map_err(|err| pg_error("cannot set the migration's lock wait", &err))?;
    tx.batch_execute(schema)
        .await
        .map_err(|err| pg_error("cannot create the table", &err))?;
    tx.commit()
        .await
        .map_err(|err| pg_error("cannot commit the migration", &err))
}

/// How a reaping batch failed.
enum Batch {
    /// Its statement ran out of time: a smaller batch may fit.
    OutOfTime(StoreError),
    /// Anything else, a wait for a pooled connection included.
    Failed(StoreError),
}

/// The size a reaping statement's next run starts at, and how many runs
/// in a row deleted a whole batch at it with none running out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReapSize {
    batch: i64,
    clean: u32,
}

impl ReapSize {
    const FIRST: Self = Self {
        batch: REAP_BATCH,
        clean: 0,
    };
}

/// How many runs in a row delete a whole batch, none out of time, before
/// the next starts at twice the size.
const REAP_CLEAN_RUNS_TO_GROW: u32 = 8;

/// Deletes with `delete` (given a batch's size, answering how many rows
/// it deleted) from `start`'s size until a batch deletes less than its
/// size; a batch that runs out of time is tried again at half the size,
/// down to [`REAP_BATCH_LEAST`]. Answers with where the next run starts:
/// the last size tried, doubled (up to [`REAP_BATCH`]) after
/// [`REAP_CLEAN_RUNS_TO_GROW`] runs in a row that deleted a whole batch
/// with none out of time. A run that deleted no whole batch says nothing
/// of a larger size, and leaves the count as it was.
async fn reap_in_batches<F: Future<Output = Result<u64, Batch>>>(
    start: ReapSize, mut delete: impl FnMut(i64) -> F,
) -> (Result<u64, StoreError>, ReapSize) {
    let mut total = 0;
    let mut batch = start.batch.clamp(REAP_BATCH_LEAST, REAP_BATCH);
    let (mut cut, mut whole) = (false, false);
    loop {
        match delete(batch).await {
            Ok(deleted) => {
                total += deleted;
                if deleted < batch.unsigned_abs() {
                    let clean = match (cut, whole) {
                        (true, _) => 0,
                        (false, true) => start.clean + 1,
                        (false, false) => start.clean,
                    };
                    let next = if clean >= REAP_CLEAN_RUNS_TO_GROW {
                        ReapSize {
                            batch: batch.saturating_mul(2).min(REAP_BATCH),
                            clean: 0,
                        }
                    } else {
                        ReapSize { batch, clean }
                    };
                    return (Ok(total), next);
                }
                whole = true;
            }
            Err(Batch::OutOfTime(_)) if batch > REAP_BATCH_LEAST => {
                batch = (batch / 2).max(REAP_BATCH_LEAST);
                cut = true;
            }
            Err(Batch::OutOfTime(err) | Batch::Failed(err)) => {
                let clean = if cut { 0 } else { start.clean };
                return (Err(err), ReapSize { batch, clean });
            }
        }
    }
}

/// A lease or retention as the `int8` milliseconds the statements take.
fn millis_param(what: &str, ttl: Duration) -> Result<i64, StoreError> {
    let millis = ttl_millis(what, ttl)?;
    // Bounded by MAX_TTL, so always in range.
    Ok(i64::try_from(millis).unwrap_or(i64::MAX))
}

fn pool_error(err: PoolError) -> StoreError {
    match err {
        PoolError::Backend(err) => pg_error("cannot connect to PostgreSQL", &err),
        PoolError::Timeout(_) => StoreError::new(
            StoreErrorKind::Timeout,
            "timed out waiting for a pooled PostgreSQL connection",
        ),
        PoolError::Closed => {
            StoreError::new(StoreErrorKind::Unavailable, "the PostgreSQL pool is closed")
        }
        PoolError::NoRuntimeSpecified => StoreError::new(
            StoreErrorKind::Unavailable,
            "the PostgreSQL pool has no runtime: build it with deadpool_postgres::Runtime::Tokio1",
        ),
        PoolError::PostCreateHook(_) => StoreError::new(
            StoreErrorKind::Unavailable,
            "the PostgreSQL pool's post_create hook failed",
        ),
    }
}

/// A [`StoreError`] for a failed statement. Server errors keep their message
/// and SQLSTATE; client-side errors keep only their I/O cause, so nothing
/// from the connection string can leak into it.
fn pg_error(context: &str, err: &tokio_postgres::Error) -> StoreError {
    if let Some(db) = err.as_db_error() {
        let code = db.code().code();
        // Whether the connection is of no further use.
        let mut spent = false;
        let (kind, hint) = match code {
            // Missing table: the schema was never applied.
            "42P01" => (StoreErrorKind::Protocol, "; run PostgresStore::migrate()"),
            // A wait for another transaction's lock ended by lock_timeout,
            // and a statement the server cancelled (a statement_timeout of
            // the role's or the database's, or a cancel): out of time.
            "55P03" | "57014" => (StoreErrorKind::Timeout, ""),
            // A write sent to a standby (a connection still open to a
            // primary just demoted): worth retrying on another connection,
            // as Redis's READONLY is; and the server going away or still
            // starting. Neither connection serves again.
            "25006" | "57P01" | "57P02" | "57P03" => {
                spent = true;
                (StoreErrorKind::Unavailable, "")
            }
            // Connection trouble, overload, and serialization failures in
            // the caller's transaction: all worth retrying.
            _ if ["08", "53", "57", "40"]
                .iter()
                .any(|class| code.starts_with(class)) =>
            {
                (StoreErrorKind::Unavailable, "")
            }
            _ => (StoreErrorKind::Protocol, ""),
        };
        let error = StoreError::new(
            kind,
            format!("{context}: {} (SQLSTATE {code}){hint}", db.message()),
        );
        return if spent {
            error.with_spent_connection()
        } else {
            error
        };
    }
    if err.is_closed() {
        return StoreError::new(
            StoreErrorKind::Unavailable,
            format!("{context}: the connection is closed"),
        );
    }
    let io = std::iter::successors(std::error::Error::source(err), |source| source.source())
        .find_map(|source| source.downcast_ref::<std::io::Error>());
    match io {
        Some(io) => StoreError::new(StoreErrorKind::Unavailable, format!("{context}: {io}")),
        None => StoreError::new(
            StoreErrorKind::Protocol,
            format!("{context}: unexpected client error"),
        ),
    }
}

#[cfg(test)]
mod reap_tests {
    use super::*;

    /// A table of `rows` expired rows in which a batch of more than
    /// `fits` rows runs out of time, reaped from a batch of `start`: the
    /// sizes asked for, the result and the size the next run starts at.
    async fn reaped_from(
        start: ReapSize, rows: u64, fits: i64,
    ) -> (Vec<i64>, Result<u64, StoreError>, ReapSize) {
        let mut left = rows;
        let mut asked = Vec::new();
        let (result, next) = reap_in_batches(start, |batch| {
            asked.push(batch);
            std::future::ready(if batch > fits {
                Err(Batch::OutOfTime(StoreError::new(
                    StoreErrorKind::Timeout,
                    "timed out",
                )))
            } else {
                let deleted = left.min(batch.unsigned_abs());
                left -= deleted;
                Ok(deleted)
            })
        })
        .await;
        (asked, result, next)
    }

    async fn reaped(rows: u64, fits: i64) -> (Vec<i64>, Result<u64, StoreError>) {
        let (asked, result, _) = reaped_from(ReapSize::FIRST, rows, fits).await;
        (asked, result)
    }

    /// A batch that runs out of time is tried at half the size, down to
    /// 100 rows, and the reaper goes on at that size: it makes headway
    /// where a whole batch never fits in the timeout.
    #[tokio::test]
    async fn batches_that_run_out_of_time_are_cut_until_they_fit() {
        let (asked, result) = reaped(25_000, 10_000).await;
        assert_eq!(result.unwrap(), 25_000);
        assert_eq!(asked, [10_000, 10_000, 10_000]);

        let (asked, result) = reaped(3_000, 2_000).await;
        assert_eq!(result.unwrap(), 3_000);
        assert_eq!(asked, [10_000, 5_000, 2_500, 1_250, 1_250, 1_250]);

        // Not even 100 rows fit: the timeout is the answer.
        let (asked, result) = reaped(3_000, 50).await;
        assert_eq!(result.unwrap_err().kind(), StoreErrorKind::Timeout);
        assert_eq!(asked.last(), Some(&REAP_BATCH_LEAST));
        assert!(asked.len() <= 8, "{asked:?}");

        // Another failure is not retried, nor is a wait for a pooled
        // connection that ran out of time, and neither cuts the size.
        for error in [
            StoreError::new(StoreErrorKind::Unavailable, "down"),
            StoreError::new(StoreErrorKind::Timeout, "no pooled connection"),
        ] {
            let kind = error.kind();
            let mut error = Some(error);
            let mut calls = 0;
            let start = ReapSize {
                batch: 2_500,
                clean: 3,
            };
            let (result, next) = reap_in_batches(start, |_| {
                calls += 1;
                std::future::ready(Err(Batch::Failed(error.take().unwrap())))
            })
            .await;
            assert_eq!(result.unwrap_err().kind(), kind);
            assert_eq!((calls, next), (1, start));
        }
    }

    /// The next run starts at the size that fitted, and at twice that only
    /// after eight runs in a row that deleted a whole batch in time: where
    /// only 1,250 rows fit, a steady backlog pays for a larger batch once
    /// in nine runs, not at every one.
    #[tokio::test]
    async fn the_size_that_fitted_is_where_the_next_run_starts() {
        let size = |batch, clean| ReapSize { batch, clean };
        let (asked, result, next) = reaped_from(ReapSize::FIRST, 3_000, 1_250).await;
        assert_eq!(result.unwrap(), 3_000);
        assert_eq!(asked, [10_000, 5_000, 2_500, 1_250, 1_250, 1_250]);
        assert_eq!(next, size(1_250, 0));

        // A steady backlog: eight runs at the size that fits, then one at
        // twice it, cut back.
        let mut next = next;
        for clean in 1..REAP_CLEAN_RUNS_TO_GROW {
            let (asked, result, after) = reaped_from(next, 3_000, 1_250).await;
            assert_eq!(result.unwrap(), 3_000);
            assert_eq!(asked, [1_250, 1_250, 1_250]);
            assert_eq!(after, size(1_250, clean));
            next = after;
        }
        let (_, _, next) = reaped_from(next, 3_000, 1_250).await;
        assert_eq!(next, size(2_500, 0));
        let (asked, _, next) = reaped_from(next, 3_000, 1_250).await;
        assert_eq!(asked, [2_500, 1_250, 1_250, 1_250]);
        assert_eq!(next, size(1_250, 0));

        // Runs that delete no whole batch (a quiet table) say nothing of a
        // larger size: neither grown nor counted.
        let quiet = size(1_250, 5);
        for _ in 0..20 {
            let (asked, _, after) = reaped_from(quiet, 10, REAP_BATCH).await;
            assert_eq!((asked, after), (vec![1_250], quiet));
        }

        // Back up to the most once whole large batches fit again.
        let mut next = size(1_250, 0);
        for _ in 0..3 * REAP_CLEAN_RUNS_TO_GROW {
            let rows = 2 * next.batch.unsigned_abs();
            next = reaped_from(next, rows, REAP_BATCH).await.2;
        }
        assert_eq!(next, size(REAP_BATCH, 0));
        // A start out of bounds is brought within them.
        assert_eq!(
            reaped_from(size(1, 0), 0, REAP_BATCH).await.0,
            [REAP_BATCH_LEAST]
        );
    }
}
