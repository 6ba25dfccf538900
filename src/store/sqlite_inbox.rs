//! [`SqliteInbox`]: the inbox in a SQLite file, durable for a single
//! instance (feature `sqlite`, SQLite bundled).

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};
use tokio::sync::Notify;

use super::inbox_trait::{order_key, read_entry, EntryRow, ENTRY_COLUMNS};
use super::{
    BoxFuture, Inbox, InboxClaim, InboxEntry, InboxStats, InboxStatus, Inserted, LeaseToken,
    NewEvent, Settle, StoreError, StoreErrorKind,
};
use crate::Timestamp;

/// The inbox in a SQLite file: durable (WAL, `synchronous = FULL`: an
/// acknowledged delivery survives a crash of the process or the machine),
/// for an app running as one instance. Several processes on one machine may
/// share the file (SQLite locks it), but only PostgreSQL spreads an inbox
/// over machines: see `PostgresInbox`.
///
/// Calls run on Tokio's blocking threads, one at a time per inbox.
///
/// ```no_run
/// use clink_webhooks::store::SqliteInbox;
///
/// # fn main() -> Result<(), clink_webhooks::store::StoreError> {
/// let inbox = SqliteInbox::open("clink-inbox.db")?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteInbox {
    connection: Arc<Mutex<Connection>>,
    inserted: Arc<Notify>,
}

impl fmt::Debug for SqliteInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteInbox").finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = FULL;
    CREATE TABLE IF NOT EXISTS clink_webhook_inbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        account TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        created_ms INTEGER,
        order_ms INTEGER NOT NULL,
        object_key TEXT,
        signed_at_ms INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL,
        body BLOB NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        lease_until_ms INTEGER NOT NULL DEFAULT 0,
        token TEXT,
        last_error TEXT,
        signing_key TEXT,
        UNIQUE (account, event_id)
    );
    CREATE INDEX IF NOT EXISTS clink_webhook_inbox_object
        ON clink_webhook_inbox (object_key, order_ms, event_id)
        WHERE status IN ('pending', 'retrying', 'running');
";

const CANDIDATE: &str = "
    SELECT e.seq FROM clink_webhook_inbox e
    WHERE e.status IN ('pending', 'retrying', 'running')
      AND ((e.status <> 'running' AND e.next_attempt_ms <= ?1 AND e.received_at_ms <= ?1 - ?2)
           OR (e.status = 'running' AND e.lease_until_ms <= ?1))
      AND (e.object_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM clink_webhook_inbox o
            WHERE o.object_key = e.object_key AND o.seq <> e.seq
              AND o.status IN ('pending', 'retrying', 'running')
              AND ((o.status = 'running' AND o.lease_until_ms > ?1)
                   OR (o.status <> 'running' AND (o.order_ms, o.event_id) < (e.order_ms, e.event_id)))))
    ORDER BY e.seq
    LIMIT 1";

fn sqlite_error(context: &str, error: &rusqlite::Error) -> StoreError {
    let kind = match error {
        rusqlite::Error::SqliteFailure(e, _)
            if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StoreErrorKind::Timeout
        }
        rusqlite::Error::SqliteFailure(..) => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Protocol,
    };
    StoreError::new(kind, format!("{context}: {error}"))
}

/// Adds the columns later versions added to a table an earlier one made.
fn add_missing_columns(connection: &Connection) -> rusqlite::Result<()> {
    let has_signing_key: bool = connection.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('clink_webhook_inbox') WHERE name = 'signing_key'",
        [],
        |row| row.get(0),
    )?;
    if !has_signing_key {
        connection.execute_batch("ALTER TABLE clink_webhook_inbox ADD COLUMN signing_key TEXT")?;
    }
    Ok(())
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl EntryRow for Row<'_> {
    type Error = rusqlite::Error;

    fn int(&self, column: usize) -> rusqlite::Result<i64> {
        self.get(column)
    }

    fn optional_int(&self, column: usize) -> rusqlite::Result<Option<i64>> {
        self.get(column)
    }

    fn text(&self, column: usize) -> rusqlite::Result<String> {
        self.get(column)
    }

    fn optional_text(&self, column: usize) -> rusqlite::Result<Option<String>> {
        self.get(column)
    }

    fn blob(&self, column: usize) -> rusqlite::Result<Vec<u8>> {
        self.get(column)
    }
}

impl SqliteInbox {
    /// Opens (creating if needed) the inbox in the SQLite file at `path`.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the file cannot be opened or its table created.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let connection = Connection::open(path)
            .map_err(|err| sqlite_error("cannot open the inbox file", &err))?;
        Self::with_connection(connection)
    }

    fn with_connection(connection: Connection) -> Result<Self, StoreError> {
        connection
            .busy_timeout(Duration::from_secs(5))
            .and_then(|()| connection.execute_batch(SCHEMA))
            .and_then(|()| add_missing_columns(&connection))
            .map_err(|err| sqlite_error("cannot create the inbox table", &err))?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            inserted: Arc::new(Notify::new()),
        })
    }

    /// Runs `call` on the connection, on a blocking thread.
    fn with<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let connection = Arc::clone(&self.connection);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
                call(&mut connection)
            })
            .await
            .map_err(|_| StoreError::new(StoreErrorKind::Unavailable, "the inbox call stopped"))?
        })
    }

    fn settle(
        &self,
        set: &'static str,
        claim: &InboxClaim,
        retry: Option<i64>,
        error: Option<String>,
    ) -> BoxFuture<'static, Result<Settle, StoreError>> {
        let (seq, token) = (claim.entry.seq, claim.token.as_str().to_owned());
        let sql = format!(
            "UPDATE clink_webhook_inbox SET {set}, token = NULL
             WHERE seq = ?1 AND token = ?2 AND status = 'running' AND lease_until_ms > ?3"
        );
        let inserted = Arc::clone(&self.inserted);
        let settled = self.with(move |connection| {
            let now = Timestamp::now().as_millis();
            let changed = if set.contains("?4") {
                connection.execute(&sql, params![seq, token, now, retry, error])
            } else {
                connection.execute(&sql, params![seq, token, now])
            }
            .map_err(|err| sqlite_error("cannot settle the event", &err))?;
            Ok(if changed == 1 {
                Settle::Applied
            } else {
                Settle::LeaseLost
            })
        });
        Box::pin(async move {
            let settled = settled.await;
            inserted.notify_waiters();
            settled
        })
    }
}

impl Inbox for SqliteInbox {
    fn insert<'a>(&'a self, event: &'a NewEvent) -> BoxFuture<'a, Result<Inserted, StoreError>> {
        let event = event.clone();
        let inserted = Arc::clone(&self.inserted);
        let call = self.with(move |connection| {
            let changed = connection
                .execute(
                    "INSERT INTO clink_webhook_inbox (account, event_id, event_type, created_ms,
                         order_ms, object_key, signed_at_ms, received_at_ms, body, next_attempt_ms,
                         signing_key)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?8, ?10)
                     ON CONFLICT (account, event_id) DO NOTHING",
                    params![
                        event.account.clone().unwrap_or_default(),
                        event.event_id,
                        event.event_type,
                        event.created.map(Timestamp::as_millis),
                        order_key(&event).0,
                        event.object_key,
                        event.signed_at.as_millis(),
                        event.received_at.as_millis(),
                        &event.body[..],
                        event.signing_key,
                    ],
                )
                .map_err(|err| sqlite_error("cannot keep the event", &err))?;
            Ok(if changed == 1 {
                Inserted::New
            } else {
                Inserted::Duplicate
            })
        });
        Box::pin(async move {
            let result = call.await;
            inserted.notify_waiters();
            result
        })
    }

    fn claim(
        &self,
        lease: Duration,
        reorder_window: Duration,
    ) -> BoxFuture<'_, Result<Option<InboxClaim>, StoreError>> {
        let (lease, window) = (ms(lease), ms(reorder_window));
        self.with(move |connection| {
            let now = Timestamp::now().as_millis();
            let token = LeaseToken::generate();
            let tx = connection
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|err| sqlite_error("cannot start a claim", &err))?;
            let seq: Option<i64> = tx
                .query_row(CANDIDATE, params![now, window], |row| row.get(0))
                .optional()
                .map_err(|err| sqlite_error("cannot take an event", &err))?;
            let Some(seq) = seq else {
                return Ok(None);
            };
            let entry = tx
                .query_row(
                    &format!(
                        "UPDATE clink_webhook_inbox SET status = 'running', attempts = attempts + 1,
                             lease_until_ms = ?2, token = ?3
                         WHERE seq = ?1 RETURNING {ENTRY_COLUMNS}"
                    ),
                    params![seq, now.saturating_add(lease), token.as_str()],
                    |row| read_entry(row),
                )
                .map_err(|err| sqlite_error("cannot take an event", &err))?;
            tx.commit()
                .map_err(|err| sqlite_error("cannot take an event", &err))?;
            Ok(Some(InboxClaim { entry, token }))
        })
    }

    fn complete<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>> {
        self.settle("status = 'done'", claim, None, None)
    }

    fn fail<'a>(
        &'a self,
        claim: &'a InboxClaim,
        error: &'a str,
        retry_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        self.settle(
            "status = CASE WHEN ?4 IS NULL THEN 'dead' ELSE 'retrying' END, \
             next_attempt_ms = COALESCE(?4, next_attempt_ms), last_error = ?5",
            claim,
            retry_at.map(Timestamp::as_millis),
            Some(error.to_owned()),
        )
    }

    fn release<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>> {
        self.settle(
            "status = CASE WHEN attempts <= 1 THEN 'pending' ELSE 'retrying' END, \
             attempts = attempts - 1, lease_until_ms = 0",
            claim,
            None,
            None,
        )
    }

    fn list(
        &self,
        status: Option<InboxStatus>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<InboxEntry>, StoreError>> {
        let status = status.map(InboxStatus::as_str);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |connection| {
            let mut statement = connection
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM clink_webhook_inbox
                     WHERE ?1 IS NULL OR status = ?1 ORDER BY seq LIMIT ?2"
                ))
                .map_err(|err| sqlite_error("cannot list the inbox", &err))?;
            let rows = statement
                .query_map(params![status, limit], |row| read_entry(row))
                .map_err(|err| sqlite_error("cannot list the inbox", &err))?;
            rows.collect::<Result<_, _>>()
                .map_err(|err| sqlite_error("cannot read an event", &err))
        })
    }

    fn get(&self, seq: i64) -> BoxFuture<'_, Result<Option<InboxEntry>, StoreError>> {
        self.with(move |connection| {
            connection
                .query_row(
                    &format!("SELECT {ENTRY_COLUMNS} FROM clink_webhook_inbox WHERE seq = ?1"),
                    params![seq],
                    |row| read_entry(row),
                )
                .optional()
                .map_err(|err| sqlite_error("cannot read the event", &err))
        })
    }

    fn replay(&self, seq: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        let inserted = Arc::clone(&self.inserted);
        let call = self.with(move |connection| {
            connection
                .execute(
                    "UPDATE clink_webhook_inbox SET status = 'pending', attempts = 0,
                         next_attempt_ms = ?2, token = NULL
                     WHERE seq = ?1 AND status <> 'running'",
                    params![seq, Timestamp::now().as_millis()],
                )
                .map(|changed| changed == 1)
                .map_err(|err| sqlite_error("cannot replay the event", &err))
        });
        Box::pin(async move {
            let replayed = call.await;
            inserted.notify_waiters();
            replayed
        })
    }

    fn replay_dead(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        let inserted = Arc::clone(&self.inserted);
        let call = self.with(move |connection| {
            connection
                .execute(
                    "UPDATE clink_webhook_inbox SET status = 'pending', attempts = 0,
                         next_attempt_ms = ?1, token = NULL
                     WHERE status = 'dead'",
                    params![Timestamp::now().as_millis()],
                )
                .map(|changed| changed as u64)
                .map_err(|err| sqlite_error("cannot replay the dead events", &err))
        });
        Box::pin(async move {
            let replayed = call.await;
            inserted.notify_waiters();
            replayed
        })
    }

    fn purge(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.with(move |connection| {
            connection
                .execute(
                    "DELETE FROM clink_webhook_inbox
                     WHERE status IN ('done', 'dead') AND received_at_ms < ?1",
                    params![before.as_millis()],
                )
                .map(|changed| changed as u64)
                .map_err(|err| sqlite_error("cannot purge the inbox", &err))
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>> {
        self.with(move |connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT status, count(*), min(received_at_ms) FROM clink_webhook_inbox
                     WHERE status <> 'done' GROUP BY status",
                )
                .map_err(|err| sqlite_error("cannot count the inbox", &err))?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, Option<i64>>(2)?,
                    ))
                })
                .map_err(|err| sqlite_error("cannot count the inbox", &err))?;
            let mut stats = InboxStats::default();
            for row in rows {
                let (status, count, oldest) =
                    row.map_err(|err| sqlite_error("cannot count the inbox", &err))?;
                if let Some(status) = InboxStatus::parse(&status) {
                    let count = u64::try_from(count).unwrap_or(0);
                    stats.add(status, count, oldest.map(Timestamp::from_millis));
                }
            }
            Ok(stats)
        })
    }

    fn wait(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = tokio::time::timeout(timeout, self.inserted.notified()).await;
        })
    }
}
