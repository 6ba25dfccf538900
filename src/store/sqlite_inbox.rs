//! [`SqliteInbox`]: the inbox in a SQLite file, durable for a single
//! instance (feature `sqlite`, SQLite bundled).

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};
use tokio::sync::{Notify, Semaphore};

use super::inbox_history::bounded_error;
use super::inbox_history::sql::{self as history, append_sql, Dialect};
use super::inbox_page::{read_summary, sql as browse};
use super::inbox_trait::{
    count_unreadable_dead, filter_sql, order_key, purge_in_steps, read_entry, wait_for,
    wake_another, EntryRow, FilterParams, ENTRY_COLUMNS, FILTER_PARAMS,
};
use super::{
    BoxFuture, Inbox, InboxClaim, InboxEntry, InboxFilter, InboxStats, Inserted, LeaseToken,
    NewEvent, ReplayPin, Replayed, Settle, StoreError, StoreErrorKind, PURGE_STEP,
};
use super::{InboxActivity, InboxSummary, PageStart};
use crate::events::InboxAttempt;
use crate::{BoxError, Timestamp};

/// The inbox in a SQLite file: durable (WAL, `synchronous = FULL`: an
/// acknowledged delivery survives a crash of the process or the machine),
/// for an app running as one instance. Several processes on one machine may
/// share the file (SQLite locks it), but only PostgreSQL spreads an inbox
/// over machines: see `PostgresInbox`.
///
/// Calls run on Tokio's blocking threads, one at a time per inbox. At most
/// 64 calls (those of all the clones of one inbox together) wait for the
/// connection or run at once: while SQLite is stalled (a slow `fsync`,
/// another process holding the write lock), a call over that is refused at
/// once with [`StoreErrorKind::Unavailable`] (a delivery answered `503`,
/// to be sent again), so that memory stays bounded however fast deliveries
/// arrive (each waiting insert holds its event's body). A call whose caller
/// stopped waiting (its timeout passed, its delivery was answered `503`)
/// before it reached the connection is skipped, not run late. Workers
/// over one SQLite inbox gain nothing past a few at once (their calls run
/// one at a time); past some 60, their claims would meet that bound.
///
/// Opening a file an earlier version made adds what this one reads: its
/// columns, the indexes of the waiting events by when they are due and
/// of the running ones by their lease (built once, as it opens: about a
/// second for a file of a million events), and the trigger that makes an
/// event a claim set aside due again (see the trait's
/// [claim order](Inbox#claim-order)) when the event before it stops
/// running (a file this process may not write opens without it).
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
    /// A permit per call waiting for the connection or running: see
    /// [`MAX_CALLS`].
    calls: Arc<Semaphore>,
    inserted: Arc<Notify>,
}

/// How many calls may wait for an inbox's connection or run at once; one
/// over that is refused at once (see [`SqliteInbox`]).
const MAX_CALLS: usize = 64;

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
        handled_at_ms INTEGER,
        replays INTEGER NOT NULL DEFAULT 0,
        last_replay_ms INTEGER,
        UNIQUE (account, event_id)
    );
    CREATE TABLE IF NOT EXISTS clink_webhook_inbox_health (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        at_ms INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS clink_webhook_inbox_object
        ON clink_webhook_inbox (object_key, order_ms, event_id)
        WHERE status IN ('pending', 'retrying', 'running');
    -- The events still to run, in order (a claim of the versions before
    -- read these; kept for one still running on the same file).
    CREATE INDEX IF NOT EXISTS clink_webhook_inbox_live
        ON clink_webhook_inbox (seq)
        WHERE status IN ('pending', 'retrying', 'running');
    -- The events waiting to run, by when each is due: a claim finds the
    -- first due without reading the retries not due yet (a destination
    -- down for a day leaves thousands of them).
    CREATE INDEX IF NOT EXISTS clink_webhook_inbox_due
        ON clink_webhook_inbox (next_attempt_ms, seq)
        WHERE status IN ('pending', 'retrying');
    -- The events running, by when their lease ends.
    CREATE INDEX IF NOT EXISTS clink_webhook_inbox_leased
        ON clink_webhook_inbox (lease_until_ms, seq)
        WHERE status = 'running';
    -- The counts of `stats` read the events not done, and only those.
    CREATE INDEX IF NOT EXISTS clink_webhook_inbox_status
        ON clink_webhook_inbox (status);
    -- Pages and counts by type, account, object and time (the console's
    -- filters), newest first within each: what they match, not the table.
    CREATE INDEX IF NOT EXISTS clink_webhook_inbox_type
        ON clink_webhook_inbox (event_type, seq);
    CREATE INDEX IF NOT EXISTS clink_webhook_inbox_account
        ON clink_webhook_inbox (account, seq);
    CREATE INDEX IF NOT EXISTS clink_webhook_inbox_object_all
        ON clink_webhook_inbox (object_key, seq);
    CREATE INDEX IF NOT EXISTS clink_webhook_inbox_received
        ON clink_webhook_inbox (received_at_ms);
";

/// A claim sets aside a waiting event that an older event of its object
/// holds back, until that one is due ([`PARK`]). When an event about an
/// object stops running (done, failed, given back, dead), the oldest event
/// of its object still to handle, if a claim set it aside, is due again as
/// it was, at its arrival or replay: the one event that may run next, whose
/// own end does the same for the one after it, so that this reads and
/// writes one row whatever the object's backlog. Made in
/// [`add_missing_columns`], so that a file that has it opens for reading.
const UNPARK_TRIGGER: &str = "
    CREATE TRIGGER IF NOT EXISTS clink_webhook_inbox_unpark
    AFTER UPDATE OF status ON clink_webhook_inbox
    WHEN OLD.status = 'running' AND NEW.status <> 'running' AND OLD.object_key IS NOT NULL
    BEGIN
        UPDATE clink_webhook_inbox SET next_attempt_ms = COALESCE(last_replay_ms, received_at_ms)
        WHERE seq = (
            SELECT seq FROM clink_webhook_inbox INDEXED BY clink_webhook_inbox_object
            WHERE object_key = OLD.object_key AND status IN ('pending', 'retrying', 'running')
            ORDER BY order_ms, event_id
            LIMIT 1)
          AND status = 'pending' AND next_attempt_ms > COALESCE(last_replay_ms, received_at_ms);
    END;
";

/// Indexes on columns a file made by an older version gains in
/// [`add_missing_columns`], made once they are there.
const INDEXES_OF_ADDED_COLUMNS: &str = "
    -- The console's count of the events handled in each minute of its
    -- window reads those, not the table.
    CREATE INDEX IF NOT EXISTS clink_webhook_inbox_handled
        ON clink_webhook_inbox (handled_at_ms)
        WHERE handled_at_ms IS NOT NULL;
";

/// The condition a claim's candidate `e` meets when it names no object,
/// or no other event about its object is running with its lease, and none
/// older (by `created`, then event id) is still to handle; `?1` is the
/// time now.
macro_rules! unblocked {
    () => {
        "(e.object_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM clink_webhook_inbox o
            WHERE o.object_key = e.object_key AND o.seq <> e.seq
              AND o.status IN ('pending', 'retrying', 'running')
              AND ((o.status = 'running' AND o.lease_until_ms > ?1)
                   OR (o.order_ms, o.event_id) < (e.order_ms, e.event_id))))"
    };
}

/// When the oldest event still to handle about the object of the event
/// being updated, and older than it, is due: its retry, or the end of its
/// worker's lease; `NULL` when there is none.
macro_rules! head_due {
    () => {
        "(SELECT CASE WHEN o.status = 'running' THEN o.lease_until_ms ELSE o.next_attempt_ms END
          FROM clink_webhook_inbox o INDEXED BY clink_webhook_inbox_object
          WHERE o.object_key = clink_webhook_inbox.object_key
            AND o.status IN ('pending', 'retrying', 'running')
            AND (o.order_ms, o.event_id) < (clink_webhook_inbox.order_ms, clink_webhook_inbox.event_id)
          ORDER BY o.order_ms, o.event_id LIMIT 1)"
    };
}

/// The running event a claim would take over: the first whose worker's
/// lease ended before the time now, `?1` (due since it ended), read from
/// the index of running events by their lease (named, as the others: so
/// that the planner never prefers one that would read more); when it was
/// due (an integer, even from a time set by hand as a real number), and its
/// number.
const TAKEN_OVER: &str = concat!(
    "SELECT CAST(e.lease_until_ms AS INTEGER), e.seq FROM clink_webhook_inbox e
         INDEXED BY clink_webhook_inbox_leased
     WHERE e.status = 'running' AND e.lease_until_ms <= ?1 AND ",
    unblocked!(),
    " ORDER BY e.lease_until_ms, e.seq LIMIT 1"
);

/// The waiting events a claim reads, in the order it takes them: those due
/// at `?1`, the time now (a new event is due as it arrives, a retry when its
/// backoff ends), of those due at once the first to arrive; read from the
/// index of waiting events by when they are due, which ends at the first
/// not due yet, so that a claim never reads the retries still waiting. For
/// each: when it was due (an integer, as for [`TAKEN_OVER`]), its number,
/// whether it arrived `?2` milliseconds (the reorder window) or more ago,
/// whether nothing holds it back, and whether it is a new event about an
/// object (one a claim may set aside, see [`PARK`]).
const CANDIDATES: &str = concat!(
    "SELECT CAST(e.next_attempt_ms AS INTEGER), e.seq, e.received_at_ms <= ?1 - ?2, ",
    unblocked!(),
    ", e.status = 'pending' AND e.object_key IS NOT NULL
     FROM clink_webhook_inbox e INDEXED BY clink_webhook_inbox_due
     WHERE e.status IN ('pending', 'retrying') AND e.next_attempt_ms <= ?1
     ORDER BY e.next_attempt_ms, e.seq"
);

/// Sets the waiting event `?1` aside until the oldest event of its object
/// before it is due (its retry, or the end of its worker's lease), when that
/// is after `?2`, the time now: so that the claims after this one do not
/// read it again, and again, while it cannot run (a destination down for
/// hours leaves an object's oldest event retrying and its newer ones
/// behind it). When that event stops running, the trigger
/// [`UNPARK_TRIGGER`] makes the next of them due again.
const PARK: &str = concat!(
    "UPDATE clink_webhook_inbox SET next_attempt_ms = ",
    head_due!(),
    " WHERE seq = ?1 AND status = 'pending' AND ",
    head_due!(),
    " > ?2"
);

/// How many waiting events one claim sets aside at most (see [`PARK`]).
const PARK_LIMIT: usize = 4096;

/// The first waiting event a claim may take at `now` with the reorder
/// `window` (when it was due, and its number), reading [`CANDIDATES`]; the
/// events read before it that an older event of their object holds back
/// are set aside ([`PARK`]), up to [`PARK_LIMIT`] of them.
fn first_waiting(
    tx: &rusqlite::Transaction<'_>, now: i64, window: i64,
) -> Result<Option<(i64, i64)>, StoreError> {
    let failed = |err: rusqlite::Error| sqlite_error("cannot take an event", &err);
    let mut waiting = None;
    let mut held = Vec::new();
    {
        let mut statement = tx.prepare_cached(CANDIDATES).map_err(failed)?;
        let mut rows = statement.query(params![now, window]).map_err(failed)?;
        while let Some(row) = rows.next().map_err(failed)? {
            let (due, seq): (i64, i64) = (row.get(0).map_err(failed)?, row.get(1).map_err(failed)?);
            let (arrived, free, new_of_object): (bool, bool, bool) = (
                row.get(2).map_err(failed)?,
                row.get(3).map_err(failed)?,
                row.get(4).map_err(failed)?,
            );
            if free && arrived {
                waiting = Some((due, seq));
                break;
            }
            if !free && new_of_object && held.len() < PARK_LIMIT {
                held.push(seq);
            }
        }
    }
    if !held.is_empty() {
        let mut park = tx.prepare_cached(PARK).map_err(failed)?;
        for seq in held {
            park.execute(params![seq, now]).map_err(failed)?;
        }
    }
    Ok(waiting)
}

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
    match error {
        // SQLite's own words, without the statement it quotes (the whole
        // schema, for the inbox's creation).
        rusqlite::Error::SqlInputError { msg, .. } => {
            StoreError::new(kind, format!("{context}: {msg}"))
        }
        _ => StoreError::new(kind, format!("{context}: {error}")),
    }
}

/// The columns later versions added, with their definitions.
const ADDED_COLUMNS: [(&str, &str); 9] = [
    ("signing_key", "TEXT"),
    ("handled_at_ms", "INTEGER"),
    ("replays", "INTEGER NOT NULL DEFAULT 0"),
    ("last_replay_ms", "INTEGER"),
    ("receipt", "TEXT"),
    ("header_timestamp", "TEXT"),
    ("header_signature", "TEXT"),
    ("claimed_at_ms", "INTEGER"),
    ("history", "TEXT NOT NULL DEFAULT '[]'"),
];

/// Adds the columns later versions added to a table an earlier one made,
/// in one immediate transaction: two processes opening an older file at
/// once take turns, and the second finds the columns there. A file that
/// has them all (every open but the first after an upgrade) is only read:
/// no write lock is taken, so an open does not wait behind another
/// process's writes (the receiver's, while `clink-webhook inbox` lists),
/// and a file the process may not write opens for reading.
fn add_missing_columns(connection: &Connection) -> rusqlite::Result<()> {
    let names: Vec<String> = ADDED_COLUMNS
        .iter()
        .map(|(name, _)| format!("'{name}'"))
        .collect();
    let present: usize = connection.query_row(
        &format!(
            "SELECT (SELECT count(*) FROM pragma_table_info('clink_webhook_inbox') \
                     WHERE name IN ({})) \
                  + (SELECT count(*) FROM sqlite_master \
                     WHERE type = 'index' AND name = 'clink_webhook_inbox_handled') \
                  + (SELECT count(*) FROM sqlite_master \
                     WHERE type = 'trigger' AND name = 'clink_webhook_inbox_unpark')",
            names.join(", ")
        ),
        [],
        |row| row.get(0),
    )?;
    if present == ADDED_COLUMNS.len() + 2 {
        return Ok(());
    }
    // A file with every column and index, but not yet the trigger, which
    // only settles fire: one this process may not write is read as it is.
    if present == ADDED_COLUMNS.len() + 1
        && connection.is_readonly(rusqlite::MAIN_DB)?
        && !connection.query_row(
            "SELECT count(*) > 0 FROM sqlite_master \
             WHERE type = 'trigger' AND name = 'clink_webhook_inbox_unpark'",
            [],
            |row| row.get::<_, bool>(0),
        )?
    {
        return Ok(());
    }
    let tx =
        rusqlite::Transaction::new_unchecked(connection, rusqlite::TransactionBehavior::Immediate)?;
    for (column, definition) in ADDED_COLUMNS {
        let present: bool = tx.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('clink_webhook_inbox') WHERE name = ?1",
            params![column],
            |row| row.get(0),
        )?;
        if !present {
            tx.execute_batch(&format!(
                "ALTER TABLE clink_webhook_inbox ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    tx.execute_batch(INDEXES_OF_ADDED_COLUMNS)?;
    tx.execute_batch(UNPARK_TRIGGER)?;
    tx.commit()
}

/// What a settle matches: the row (`?1`) still running with its token
/// (`?2`); `?3` is the time now. The token alone fences: every claim makes a
/// new one, so a claim whose lease ended that nobody took over still
/// settles (its handler ran; running it again would repeat its effects).
const HOLDS: &str = "seq = ?1 AND token = ?2 AND status = 'running'";

/// A settle that sets `set`, ending the claim's attempt with `outcome` and
/// `error` at `?3`.
fn settle_sql(set: &str, outcome: &str, error: &str) -> String {
    format!(
        "UPDATE clink_webhook_inbox SET {set}, token = NULL, history = {}
         WHERE {HOLDS}",
        append_sql(Dialect::Sqlite, "?3", outcome, error)
    )
}

/// Marks the event done: `?1` to `?3` as [`HOLDS`] says.
static COMPLETE: LazyLock<String> = LazyLock::new(|| {
    settle_sql(
        "status = 'done', handled_at_ms = ?3",
        history::COMPLETED,
        "NULL",
    )
});

/// Fails the attempt: `?1` to `?3` as [`HOLDS`] says, the retry's time
/// (`?4`, `NULL` for dead), the error (`?5`) and the error as the attempt
/// keeps it (`?6`).
static FAIL: LazyLock<String> = LazyLock::new(|| {
    settle_sql(
        "status = CASE WHEN ?4 IS NULL THEN 'dead' ELSE 'retrying' END, \
         next_attempt_ms = COALESCE(?4, next_attempt_ms), last_error = ?5",
        history::FAILED,
        "?6",
    )
});

/// Makes event `?1`, whose row cannot be read, dead with the error `?2`.
const UNREADABLE: &str = "UPDATE clink_webhook_inbox SET status = 'dead', lease_until_ms = 0, \
     token = NULL, last_error = ?2 WHERE seq = ?1";

/// Gives the event back: `?1` to `?3` as [`HOLDS`] says.
static RELEASE: LazyLock<String> = LazyLock::new(|| {
    settle_sql(
        "status = CASE WHEN attempts <= 1 THEN 'pending' ELSE 'retrying' END, \
         attempts = attempts - 1, lease_until_ms = 0",
        history::RELEASED,
        "NULL",
    )
});

/// Takes event `?1` until `?2` with token `?3` at `?4`, the time now; an
/// event still `running` was taken over from a worker whose lease ended,
/// and that lost attempt goes into its history.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE clink_webhook_inbox SET status = 'running', attempts = attempts + 1,
             lease_until_ms = ?2, token = ?3, claimed_at_ms = ?4,
             history = CASE WHEN status = 'running' THEN {} ELSE history END
         WHERE seq = ?1 RETURNING {ENTRY_COLUMNS}",
        append_sql(
            Dialect::Sqlite,
            "lease_until_ms",
            history::LEASE_EXPIRED,
            "NULL"
        )
    )
});

/// What a replay sets, `?N` being the time now.
fn replay_set(now: usize) -> String {
    format!(
        "status = 'pending', attempts = 0, next_attempt_ms = ?{now}, token = NULL, \
         replays = replays + 1, last_replay_ms = ?{now}, receipt = NULL"
    )
}

/// The values of the parameters [`filter_sql`] writes for `f`, in order.
fn filter_values<'a>(f: &'a FilterParams<'a>) -> [&'a dyn rusqlite::ToSql; FILTER_PARAMS] {
    [
        &f.status,
        &f.event_type,
        &f.account,
        &f.object_key,
        &f.from,
        &f.until,
        &f.through,
    ]
}

/// One step of a replay by filter: the last number among the next
/// [`PURGE_STEP`] events the filter of `f` matches (its parameters first,
/// written for its values: see [`filter_sql`]) numbered after `?N` (the
/// parameter after the filter's), done ones too if the one after that is
/// true.
fn replay_step_sql(f: &FilterParams<'_>) -> String {
    format!(
        "SELECT max(seq) FROM (SELECT seq FROM clink_webhook_inbox
         WHERE {} AND seq > ?{} ORDER BY seq LIMIT {PURGE_STEP})",
        replay_matches(f),
        FILTER_PARAMS + 1
    )
}

/// Replays the events of one step, numbered after `?N` (the parameter
/// after the filter's) up to the step's last, `?N+3`, at the time now,
/// `?N+2`; each is checked against the filter again as the `UPDATE` takes
/// it. Returns their numbers.
fn replay_matching_sql(f: &FilterParams<'_>) -> String {
    format!(
        "UPDATE clink_webhook_inbox SET {}
         WHERE {} AND seq > ?{} AND seq <= ?{}
         RETURNING seq",
        replay_set(FILTER_PARAMS + 3),
        replay_matches(f),
        FILTER_PARAMS + 1,
        FILTER_PARAMS + 4
    )
}

/// The events a replay by the filter of `f` takes: those it matches but
/// the running ones, and the done ones only if `?N+2` (the second
/// parameter after the filter's) is true.
fn replay_matches(f: &FilterParams<'_>) -> String {
    format!(
        "{} AND status <> 'running' AND (status <> 'done' OR ?{})",
        filter_sql('?', 1, Some(f)),
        FILTER_PARAMS + 2
    )
}

/// Replays event `?1` at `?2`, the time now, only if it is still as
/// pinned: status `?3` (not `running`), `?4` replays, handled at `?5`
/// (`NULL`: never).
static REPLAY_IF: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE clink_webhook_inbox SET {}
         WHERE seq = ?1 AND status = ?3 AND status <> 'running'
           AND replays = ?4 AND handled_at_ms IS ?5",
        replay_set(2)
    )
});

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl EntryRow for Row<'_> {
    type Error = rusqlite::Error;

    fn int(&self, column: usize) -> rusqlite::Result<i64> {
        match self.optional_int(column)? {
            Some(value) => Ok(value),
            // NULL: the client's own error, which names the column.
            None => self.get(column),
        }
    }

    fn optional_int(&self, column: usize) -> rusqlite::Result<Option<i64>> {
        // A time set by hand as a real number (`unixepoch('subsec') * 1000`
        // in the sqlite3 shell, which an INTEGER column keeps as REAL when
        // it has a fraction) is read to the millisecond below it.
        match self.get_ref(column)? {
            rusqlite::types::ValueRef::Real(real) if real.is_finite() && real.abs() < 9.0e18 =>
            {
                #[allow(clippy::cast_possible_truncation)]
                Ok(Some(real.floor() as i64))
            }
            _ => self.get(column),
        }
    }

    fn text(&self, column: usize) -> rusqlite::Result<String> {
        self.get(column)
    }

    fn optional_text(&self, column: usize) -> rusqlite::Result<Option<String>> {
        self.get(column)
    }

    fn blob(&self, column: usize) -> rusqlite::Result<Vec<u8>> {
        // A body set by hand as text (an operator mending a dead event in
        // the sqlite3 shell) is its bytes all the same.
        match self.get_ref(column)? {
            rusqlite::types::ValueRef::Text(bytes) => Ok(bytes.to_vec()),
            _ => self.get(column),
        }
    }

    fn json(&self, column: usize) -> rusqlite::Result<Option<String>> {
        self.get(column)
    }
}

impl SqliteInbox {
    /// Opens (creating if needed) the inbox in the SQLite file at `path`.
    ///
    /// `path` names a file, always: an empty path and `:memory:`, which
    /// SQLite takes for a database that is gone when its connection
    /// closes, are refused (an inbox acknowledges events it keeps), and a
    /// `file:` URI is a file of that name.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the file cannot be opened or its table created,
    /// or ([`StoreErrorKind::InvalidInput`]) when `path` names no file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
            return Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                "an inbox's SQLite path names a file, not an empty path or :memory: (a database \
                 gone when it closes, with the events it acknowledged)",
            ));
        }
        // A path is a file's name, never a URI that could name a database
        // in memory: SQLite reads one that begins with `file:` as a URI
        // (the bundled build, whatever the open's flags), and `./` before
        // it makes it a file's name again.
        let named;
        let path = if path.as_os_str().as_encoded_bytes().starts_with(b"file:") {
            named = Path::new(".").join(path);
            &named
        } else {
            path
        };
        let connection = Connection::open(path)
            .map_err(|err| sqlite_error("cannot open the inbox file", &err))?;
        Self::with_connection(connection)
    }

    /// Runs `effects` in a transaction on the inbox's own connection and
    /// marks the event of `attempt` (from
    /// [`Event::inbox_attempt`](crate::Event::inbox_attempt), in a handler
    /// that workers over this inbox run) done in the same transaction, so
    /// that a crash at any point leaves both or neither: the writes in
    /// `effects` happen exactly once. Keep the effects in the inbox's file
    /// (tables of your own next to the inbox's).
    ///
    /// `effects` runs on a blocking thread while the inbox waits for it:
    /// keep it to the writes. It counts as one of the inbox's calls (see
    /// [`SqliteInbox`]): refused at once when too many wait, and not run at
    /// all when this future is dropped before it has the connection. When it fails, or another worker took the
    /// event over before the commit (its lease had ended), the transaction
    /// is rolled back and the error returned; return it from the handler
    /// (the event runs, or already ran, on that other worker).
    ///
    /// ```no_run
    /// use clink_webhooks::data::Order;
    /// use clink_webhooks::store::SqliteInbox;
    /// use clink_webhooks::{BoxError, Event};
    ///
    /// async fn fulfil(inbox: SqliteInbox, event: Event<Order>) -> Result<(), BoxError> {
    ///     let attempt = event.inbox_attempt().ok_or("run this handler with inbox::Workers")?;
    ///     let order = event.data.order_id.clone();
    ///     inbox
    ///         .complete_with(attempt, move |tx| {
    ///             tx.execute("INSERT INTO paid_orders (order_id) VALUES (?1)", [order])?;
    ///             Ok(())
    ///         })
    ///         .await
    /// }
    /// ```
    ///
    /// `effects` must return the first error a statement gives: SQLite
    /// rolls the transaction back by itself on some (a full disk,
    /// `ON CONFLICT ROLLBACK`, `RAISE(ROLLBACK)`), and a statement run after
    /// that runs outside it, committed at once. The completion is then
    /// refused, and the event runs again.
    ///
    /// # Errors
    ///
    /// The error of `effects`, or a [`StoreError`] when the transaction
    /// cannot be written, was rolled back by SQLite inside `effects`, or
    /// the event was taken over; nothing of the transaction was committed.
    pub async fn complete_with<T, F>(
        &self, attempt: &InboxAttempt, effects: F,
    ) -> Result<T, BoxError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, BoxError> + Send + 'static,
    {
        let (seq, token) = (attempt.seq(), attempt.token().to_owned());
        let done = on_connection(
            &self.connection,
            &self.calls,
            move |connection| -> Result<T, BoxError> {
                let failed = |err: rusqlite::Error| sqlite_error("cannot complete the event", &err);
                let tx = connection
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(failed)?;
                // An error drops `tx`, which rolls it back.
                let value = effects(&tx)?;
                // SQLite rolls a transaction back by itself on some errors
                // (a full disk, `RAISE(ROLLBACK)`, `ON CONFLICT ROLLBACK`):
                // effects that went past such an error have nothing left to
                // commit, and the completion must not be written alone.
                if tx.is_autocommit() {
                    return Err(Box::new(StoreError::new(
                        StoreErrorKind::Protocol,
                        "the effects' transaction was rolled back by SQLite on an error they went \
                         past; the event is not done (and statements run after that error ran \
                         outside the transaction): effects must return their first error",
                    )));
                }
                let now = Timestamp::now().as_millis();
                let changed = tx
                    .execute(&COMPLETE, params![seq, token, now])
                    .map_err(failed)?;
                if changed != 1 {
                    return Err(Box::new(StoreError::new(
                        StoreErrorKind::LeaseLost,
                        "the event was taken over by another worker (its lease had ended) before \
                     its effects were committed; they were rolled back and it runs there",
                    )));
                }
                tx.commit().map_err(failed)?;
                Ok(value)
            },
        )
        .await??;
        attempt.mark_completed();
        self.inserted.notify_one();
        Ok(done)
    }

    fn with_connection(connection: Connection) -> Result<Self, StoreError> {
        connection
            .busy_timeout(Duration::from_secs(5))
            .and_then(|()| connection.execute_batch(SCHEMA))
            .and_then(|()| add_missing_columns(&connection))
            .map_err(|err| sqlite_error("cannot create the inbox table", &err))?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            calls: Arc::new(Semaphore::new(MAX_CALLS)),
            inserted: Arc::new(Notify::new()),
        })
    }

    /// Runs `call` on the connection, on a blocking thread.
    fn with<T: Send + 'static>(
        &self, call: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        Box::pin(with_connection(&self.connection, &self.calls, call))
    }

    /// `call`, then a wake-up for idle workers: what it changed may have
    /// made an event ready.
    fn waking<T: Send + 'static>(
        &self, call: BoxFuture<'static, Result<T, StoreError>>,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let inserted = Arc::clone(&self.inserted);
        Box::pin(async move {
            let result = call.await;
            inserted.notify_one();
            result
        })
    }

    /// Settles `claim` with `sql` (one of [`COMPLETE`], [`FAIL`] with
    /// `failure`'s retry time and error, [`RELEASE`]).
    fn settle(
        &self, sql: &'static str, claim: &InboxClaim, failure: Option<(Option<i64>, String)>,
    ) -> BoxFuture<'static, Result<Settle, StoreError>> {
        let (seq, token) = (claim.entry.seq, claim.token.as_str().to_owned());
        let settled = self.with(move |connection| {
            let now = Timestamp::now().as_millis();
            let mut statement = connection
                .prepare_cached(sql)
                .map_err(|err| sqlite_error("cannot settle the event", &err))?;
            let changed = match failure {
                Some((retry, error)) => {
                    let kept = bounded_error(&error);
                    statement.execute(params![seq, token, now, retry, error, kept])
                }
                None => statement.execute(params![seq, token, now]),
            }
            .map_err(|err| sqlite_error("cannot settle the event", &err))?;
            Ok(Settle::applied_if(changed == 1))
        });
        self.waking(settled)
    }
}

impl SqliteInbox {
    /// Keeps `event` as `pending`, or as `dead` with `error`.
    fn keep(
        &self, event: &NewEvent, dead_with: Option<&str>,
    ) -> BoxFuture<'static, Result<Inserted, StoreError>> {
        let event = event.clone();
        // An error holding a NUL is kept with U+FFFD in its place, as in
        // PostgreSQL: SQLite's text functions (the summaries' cut) stop at one.
        let error = dead_with.map(|error| crate::store::without_nul(error).into_owned());
        let headers = event.signature_headers.clone();
        let call = self.with(move |connection| {
            let changed = connection
                .execute(
                    "INSERT INTO clink_webhook_inbox (account, event_id, event_type, created_ms,
                         order_ms, object_key, signed_at_ms, received_at_ms, body, next_attempt_ms,
                         signing_key, status, last_error, header_timestamp, header_signature)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?8, ?10,
                             CASE WHEN ?11 IS NULL THEN 'pending' ELSE 'dead' END, ?11, ?12, ?13)
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
                        error,
                        headers.as_ref().map(|h| h.timestamp.as_str()),
                        headers.as_ref().map(|h| h.signature.as_str()),
                    ],
                )
                .map_err(|err| sqlite_error("cannot keep the event", &err))?;
            Ok(Inserted::new_if(changed == 1))
        });
        self.waking(call)
    }
}

impl SqliteInbox {
    /// A page of the events `filter` matches, by `sql` (a page statement of
    /// [`browse`]), each row read by `read`, newest first.
    fn paged<'a, T: Send + 'static>(
        &'a self, filter: &'a InboxFilter, start: PageStart, limit: usize, sql: String,
        read: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> BoxFuture<'a, Result<Vec<T>, StoreError>> {
        let filter = filter.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |connection| {
            let f = filter.params();
            let failed = |err: rusqlite::Error| sqlite_error("cannot list the inbox", &err);
            let mut statement = connection.prepare_cached(&sql).map_err(failed)?;
            let bound = browse::page_bound(start);
            let values = filter_values(&f)
                .into_iter()
                .chain([&bound as &dyn rusqlite::ToSql, &limit]);
            let mut page = statement
                .query_map(rusqlite::params_from_iter(values), read)
                .map_err(failed)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(failed)?;
            if matches!(start, PageStart::After(_)) {
                page.reverse();
            }
            Ok(page)
        })
    }

    /// Deletes the events in `status` that settled before `before`, in
    /// steps (see [`Inbox::purge`]); how many.
    fn purge_status(
        &self, before: Timestamp, status: &'static str,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        let span = self.with(|connection| {
            connection
                .query_row(
                    "SELECT min(seq), max(seq) FROM clink_webhook_inbox",
                    [],
                    |row| {
                        Ok(row
                            .get::<_, Option<i64>>(0)?
                            .zip(row.get::<_, Option<i64>>(1)?))
                    },
                )
                .map_err(|err| sqlite_error("cannot purge the inbox", &err))
        });
        let (connection, calls) = (Arc::clone(&self.connection), Arc::clone(&self.calls));
        Box::pin(async move {
            let Some((oldest, newest)) = span.await? else {
                return Ok(0);
            };
            // One step at a time, the connection given back between them:
            // deliveries and claims wait for one step, not the whole purge.
            purge_in_steps(oldest, newest, |from| {
                with_connection(&connection, &calls, move |connection| {
                    let failed = |err| sqlite_error("cannot purge the inbox", &err);
                    // The next PURGE_STEP events, read through the primary
                    // key: the last number among them.
                    let last: Option<i64> = connection
                        .prepare_cached(&format!(
                            "SELECT max(seq) FROM (SELECT seq FROM clink_webhook_inbox
                             WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq LIMIT {PURGE_STEP})"
                        ))
                        .and_then(|mut statement| {
                            statement.query_row(params![from, newest], |row| row.get(0))
                        })
                        .map_err(failed)?;
                    let Some(last) = last else {
                        return Ok((None, 0));
                    };
                    // Among them, those settled before `before`: the latest
                    // of its arrival, last claim, handling and last replay
                    // (`max` of several values is NULL if one is, hence the
                    // COALESCEs).
                    let deleted = connection
                        .prepare_cached(
                            "DELETE FROM clink_webhook_inbox
                             WHERE seq BETWEEN ?2 AND ?3 AND status = ?4
                               AND max(received_at_ms, COALESCE(claimed_at_ms, 0),
                                       COALESCE(handled_at_ms, 0), COALESCE(last_replay_ms, 0)) < ?1",
                        )
                        .and_then(|mut statement| {
                            statement.execute(params![before.as_millis(), from, last, status])
                        })
                        .map_err(failed)?;
                    Ok((Some(last), deleted as u64))
                })
            })
            .await
        })
    }
}

/// `call` on the inbox's connection, on a thread that may block.
fn with_connection<T: Send + 'static>(
    connection: &Arc<Mutex<Connection>>, calls: &Arc<Semaphore>,
    call: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
    let called = on_connection(connection, calls, call);
    async move { called.await? }
}

/// `call` on the inbox's connection, on a thread that may block, holding
/// one of `calls`' permits from its first poll until it has run: refused
/// at once when there is none left. Dropped before `call` has the
/// connection, the future leaves `call` skipped, not run: its caller no
/// longer waits for it.
fn on_connection<R: Send + 'static>(
    connection: &Arc<Mutex<Connection>>, calls: &Arc<Semaphore>,
    call: impl FnOnce(&mut Connection) -> R + Send + 'static,
) -> impl Future<Output = Result<R, StoreError>> + Send + 'static {
    let (connection, calls) = (Arc::clone(connection), Arc::clone(calls));
    async move {
        let permit = calls.try_acquire_owned().map_err(|_| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!(
                    "the SQLite inbox already has {MAX_CALLS} calls waiting for its file (a slow \
                     disk, or another process holding its write lock); refused at once rather \
                     than queued"
                ),
            )
        })?;
        let waiting = Waiting(Arc::new(AtomicBool::new(true)));
        let still_waiting = Arc::clone(&waiting.0);
        let ran = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
            // Its caller gone, the call is not made: nothing waits for it
            // (a delivery was answered 503 and is sent again).
            still_waiting
                .load(Ordering::SeqCst)
                .then(|| call(&mut connection))
        })
        .await;
        drop(waiting);
        match ran {
            Ok(Some(answer)) => Ok(answer),
            // Skipped only once `waiting` is dropped, which this is not yet.
            Ok(None) | Err(_) => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "the inbox call stopped",
            )),
        }
    }
}

/// Clears its flag when dropped: the caller of a call no longer waits.
struct Waiting(Arc<AtomicBool>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Inbox for SqliteInbox {
    fn insert<'a>(&'a self, event: &'a NewEvent) -> BoxFuture<'a, Result<Inserted, StoreError>> {
        self.keep(event, None)
    }

    fn insert_dead<'a>(
        &'a self, event: &'a NewEvent, error: &'a str,
    ) -> BoxFuture<'a, Result<Inserted, StoreError>> {
        self.keep(event, Some(error))
    }

    fn claim(
        &self, lease: Duration, reorder_window: Duration,
    ) -> BoxFuture<'_, Result<Option<InboxClaim>, StoreError>> {
        let (lease, window) = (ms(lease), ms(reorder_window));
        let inserted = Arc::clone(&self.inserted);
        // The claim, or none; and whether a row that cannot be read was
        // made dead instead.
        let claimed = self.with(move |connection| {
            let now = Timestamp::now().as_millis();
            let token = LeaseToken::generate();
            let tx = connection
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|err| sqlite_error("cannot start a claim", &err))?;
            // The one due first of the running event to take over and the
            // waiting one; of two due at once, the first to arrive.
            let first = |sql: &str, values: &[&dyn rusqlite::ToSql]| {
                tx.prepare_cached(sql)
                    .and_then(|mut statement| {
                        statement
                            .query_row(values, |row| Ok((row.get::<_, i64>(0)?, row.get(1)?)))
                            .optional()
                    })
                    .map_err(|err| sqlite_error("cannot take an event", &err))
            };
            let taken_over: Option<(i64, i64)> = first(TAKEN_OVER, params![now])?;
            let waiting = first_waiting(&tx, now, window)?;
            let seq = match (taken_over, waiting) {
                (Some(a), Some(b)) => Some(a.min(b).1),
                (a, b) => a.or(b).map(|(_, seq)| seq),
            };
            let Some(seq) = seq else {
                // What was set aside stays so.
                tx.commit()
                    .map_err(|err| sqlite_error("cannot take an event", &err))?;
                return Ok((None, false));
            };
            let entry = tx.query_row(
                &CLAIM,
                params![seq, now.saturating_add(lease), token.as_str(), now],
                |row| read_entry(row),
            );
            let entry = match entry {
                Ok(entry) => entry,
                // A row no worker can read (a value of the wrong type, set
                // by hand) would be taken first by every claim, and hold
                // back every event behind it: it is dead, saying why.
                Err(
                    err @ (rusqlite::Error::InvalidColumnType(..)
                    | rusqlite::Error::FromSqlConversionFailure(..)
                    | rusqlite::Error::IntegralValueOutOfRange(..)),
                ) => {
                    let error = format!(
                        "dead: its stored row cannot be read ({err}); mend it, then replay it"
                    );
                    tx.execute(UNREADABLE, params![seq, error])
                        .and_then(|_| tx.commit())
                        .map_err(|err| sqlite_error("cannot take an event", &err))?;
                    tracing::error!(
                        seq,
                        "inbox: an event's stored row cannot be read; it is dead"
                    );
                    wake_another(&inserted);
                    return Ok((None, true));
                }
                Err(err) => return Err(sqlite_error("cannot take an event", &err)),
            };
            tx.commit()
                .map_err(|err| sqlite_error("cannot take an event", &err))?;
            wake_another(&inserted);
            Ok((Some(InboxClaim { entry, token }), false))
        });
        Box::pin(async move {
            let (claim, made_dead) = claimed.await?;
            if made_dead {
                count_unreadable_dead();
            }
            Ok(claim)
        })
    }

    fn complete<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>> {
        self.settle(&COMPLETE, claim, None)
    }

    fn fail<'a>(
        &'a self, claim: &'a InboxClaim, error: &'a str, retry_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        self.settle(
            &FAIL,
            claim,
            Some((
                retry_at.map(Timestamp::as_millis),
                crate::store::without_nul(error).into_owned(),
            )),
        )
    }

    fn release<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>> {
        self.settle(&RELEASE, claim, None)
    }

    fn list<'a>(
        &'a self, filter: &'a InboxFilter, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
        let filter = filter.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |connection| {
            let f = filter.params();
            let mut statement = connection
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM clink_webhook_inbox
                     WHERE {} ORDER BY seq LIMIT ?{}",
                    filter_sql('?', 1, Some(&f)),
                    FILTER_PARAMS + 1
                ))
                .map_err(|err| sqlite_error("cannot list the inbox", &err))?;
            let values = params![
                f.status,
                f.event_type,
                f.account,
                f.object_key,
                f.from,
                f.until,
                f.through,
                limit
            ];
            let rows = statement
                .query_map(values, |row| read_entry(row))
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

    fn replay(&self, seq: i64, force: bool) -> BoxFuture<'_, Result<Replayed, StoreError>> {
        let call = self.with(move |connection| {
            let failed = |err: rusqlite::Error| sqlite_error("cannot replay the event", &err);
            let tx = connection
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(failed)?;
            let found = tx
                .query_row(
                    "SELECT status, handled_at_ms FROM clink_webhook_inbox WHERE seq = ?1",
                    params![seq],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, Option<i64>>(1)?)),
                )
                .optional()
                .map_err(failed)?;
            let replayed = match found {
                None => Replayed::Missing,
                Some((status, _)) if status == "running" => Replayed::Running,
                Some((status, handled)) if status == "done" && !force => Replayed::Handled {
                    at: handled.map(Timestamp::from_millis),
                },
                Some(_) => {
                    tx.execute(
                        &format!(
                            "UPDATE clink_webhook_inbox SET {} WHERE seq = ?1",
                            replay_set(2)
                        ),
                        params![seq, Timestamp::now().as_millis()],
                    )
                    .map_err(failed)?;
                    Replayed::Replayed
                }
            };
            tx.commit().map_err(failed)?;
            Ok(replayed)
        });
        self.waking(call)
    }

    fn replay_if<'a>(
        &'a self, seq: i64, pin: &'a ReplayPin,
    ) -> BoxFuture<'a, Result<Replayed, StoreError>> {
        let pin = *pin;
        let call = self.with(move |connection| {
            let failed = |err: rusqlite::Error| sqlite_error("cannot replay the event", &err);
            // One statement checks the pinned state and replays.
            let changed = connection
                .prepare_cached(&REPLAY_IF)
                .and_then(|mut statement| {
                    statement.execute(params![
                        seq,
                        Timestamp::now().as_millis(),
                        pin.status.as_str(),
                        i64::from(pin.replays),
                        pin.handled_at.map(Timestamp::as_millis),
                    ])
                })
                .map_err(failed)?;
            if changed == 1 {
                return Ok(Replayed::Replayed);
            }
            // Nothing replayed: say why.
            let found = connection
                .query_row(
                    "SELECT status, replays, handled_at_ms FROM clink_webhook_inbox WHERE seq = ?1",
                    params![seq],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, Option<i64>>(2)?,
                        ))
                    },
                )
                .optional()
                .map_err(failed)?;
            Ok(pin.unreplayed(
                found
                    .as_ref()
                    .map(|(status, replays, handled)| (status.as_str(), *replays, *handled)),
            ))
        });
        self.waking(call)
    }

    fn replay_matching<'a>(
        &'a self, filter: &'a InboxFilter, force: bool,
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        Box::pin(async move {
            // In steps of PURGE_STEP events, each a call of its own, as a
            // purge goes: deliveries and claims wait for one step, not the
            // whole replay, and a caller that gives up (the console at its
            // deadline) stops it after the step under way, where one
            // statement over a large backlog ran on to its end.
            let mut seqs = Vec::new();
            let mut after = i64::MIN;
            let mut steps = 0_u32;
            loop {
                let filter = filter.clone();
                let step = self.with(move |connection| {
                    let f = filter.params();
                    let failed =
                        |err: rusqlite::Error| sqlite_error("cannot replay the events", &err);
                    let filtered = filter_values(&f);
                    let last: Option<i64> = connection
                        .prepare_cached(&replay_step_sql(&f))
                        .and_then(|mut statement| {
                            let values = filtered
                                .iter()
                                .copied()
                                .chain([&after as &dyn rusqlite::ToSql, &force]);
                            statement
                                .query_row(rusqlite::params_from_iter(values), |row| row.get(0))
                        })
                        .map_err(failed)?;
                    let Some(last) = last else {
                        return Ok((None, Vec::new()));
                    };
                    let now = Timestamp::now().as_millis();
                    let mut statement = connection
                        .prepare_cached(&replay_matching_sql(&f))
                        .map_err(failed)?;
                    let values = filtered.iter().copied().chain([
                        &after as &dyn rusqlite::ToSql,
                        &force,
                        &now,
                        &last,
                    ]);
                    let replayed = statement
                        .query_map(rusqlite::params_from_iter(values), |row| {
                            row.get::<_, i64>(0)
                        })
                        .map_err(failed)?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(failed)?;
                    Ok((Some(last), replayed))
                });
                // Idle workers are woken after each step: its events are
                // ready now, whatever the steps after it do.
                let (last, replayed) = self.waking(step).await?;
                seqs.extend(replayed);
                match last {
                    Some(last) => {
                        after = last;
                        steps += 1;
                    }
                    None => break,
                }
            }
            seqs.sort_unstable();
            tracing::debug!(
                replayed = seqs.len(),
                steps,
                "inbox: replayed the events a filter matches"
            );
            Ok(seqs)
        })
    }

    fn check_writable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(move |connection| {
            connection
                .execute(
                    "INSERT INTO clink_webhook_inbox_health (id, at_ms) VALUES (1, ?1)
                     ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
                    params![Timestamp::now().as_millis()],
                )
                .map(drop)
                .map_err(|err| sqlite_error("cannot write to the inbox", &err))
        })
    }

    fn purge(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.purge_status(before, "done")
    }

    fn purge_dead(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.purge_status(before, "dead")
    }

    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>> {
        self.with(move |connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT status, count(*), min(received_at_ms),
                            sum(CASE WHEN status = 'running' OR next_attempt_ms <= ?1 THEN 1 ELSE 0 END)
                     FROM clink_webhook_inbox
                     WHERE status IN ('pending', 'retrying', 'running', 'dead')
                     GROUP BY status",
                )
                .map_err(|err| sqlite_error("cannot count the inbox", &err))?;
            let rows = statement
                .query_map(params![Timestamp::now().as_millis()], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, Option<i64>>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })
                .map_err(|err| sqlite_error("cannot count the inbox", &err))?;
            let mut stats = InboxStats::default();
            for row in rows {
                let (status, count, oldest, due) =
                    row.map_err(|err| sqlite_error("cannot count the inbox", &err))?;
                stats.add_row(&status, count, oldest, due);
            }
            Ok(stats)
        })
    }

    fn wait(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        wait_for(&self.inserted, timeout)
    }

    fn record_receipt<'a>(
        &'a self, attempt: &'a InboxAttempt, receipt: &'a str,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        let (seq, token, receipt) = (
            attempt.seq(),
            attempt.token().to_owned(),
            receipt.to_owned(),
        );
        self.with(move |connection| {
            let changed = connection
                .execute(
                    "UPDATE clink_webhook_inbox SET receipt = ?3
                     WHERE seq = ?1 AND token = ?2 AND status = 'running'",
                    params![seq, token, receipt],
                )
                .map_err(|err| sqlite_error("cannot record the receipt", &err))?;
            Ok(Settle::applied_if(changed == 1))
        })
    }

    fn page<'a>(
        &'a self, filter: &'a InboxFilter, start: PageStart, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
        let sql = browse::page("clink_webhook_inbox", '?', start, Some(&filter.params()));
        self.paged(filter, start, limit, sql, |row| read_entry(row))
    }

    fn page_summaries<'a>(
        &'a self, filter: &'a InboxFilter, start: PageStart, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxSummary>, StoreError>> {
        let sql = browse::summary_page("clink_webhook_inbox", '?', start, Some(&filter.params()));
        self.paged(filter, start, limit, sql, |row| read_summary(row))
    }

    fn count<'a>(&'a self, filter: &'a InboxFilter) -> BoxFuture<'a, Result<u64, StoreError>> {
        let filter = filter.clone();
        self.with(move |connection| {
            let f = filter.params();
            connection
                .prepare_cached(&browse::count("clink_webhook_inbox", '?', Some(&f)))
                .and_then(|mut statement| {
                    statement.query_row(
                        params![
                            f.status,
                            f.event_type,
                            f.account,
                            f.object_key,
                            f.from,
                            f.until,
                            f.through
                        ],
                        |row| row.get::<_, i64>(0),
                    )
                })
                .map(|count| u64::try_from(count).unwrap_or(0))
                .map_err(|err| sqlite_error("cannot count the inbox", &err))
        })
    }

    fn activity(
        &self, since: Timestamp, interval: Duration, intervals: usize,
    ) -> BoxFuture<'_, Result<InboxActivity, StoreError>> {
        self.with(move |connection| {
            let mut activity = InboxActivity::new(since, interval, intervals);
            let failed = |err: rusqlite::Error| sqlite_error("cannot count the inbox", &err);
            let mut statement = connection
                .prepare_cached(&browse::activity("clink_webhook_inbox", '?'))
                .map_err(failed)?;
            let rows = statement
                .query_map(
                    params![
                        since.as_millis(),
                        activity.interval_ms(),
                        activity.until().as_millis()
                    ],
                    |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    },
                )
                .map_err(failed)?;
            for row in rows {
                let (kind, slot, count) = row.map_err(failed)?;
                activity.add(kind == 1, slot, u64::try_from(count).unwrap_or(0));
            }
            Ok(activity)
        })
    }
}

#[cfg(test)]
mod plan_tests {
    use rusqlite::{Connection, OptionalExtension};

    use super::{
        add_missing_columns, first_waiting, replay_matching_sql, replay_step_sql, CANDIDATES,
        FILTER_PARAMS, PARK, SCHEMA, TAKEN_OVER,
    };

    /// An error in a statement is told in SQLite's words, without the
    /// statement (the inbox's whole schema, when a file holds a table of
    /// that name made otherwise).
    #[test]
    fn an_error_in_a_statement_is_told_without_the_statement() {
        let connection = Connection::open_in_memory().unwrap();
        connection
            .execute_batch("CREATE TABLE clink_webhook_inbox (seq INTEGER PRIMARY KEY);")
            .unwrap();
        let error = connection.execute_batch(SCHEMA).unwrap_err();
        let told = super::sqlite_error("cannot create the inbox table", &error).to_string();
        assert!(
            told.contains("cannot create the inbox table: no such column"),
            "{told}"
        );
        assert!(!told.contains("CREATE INDEX"), "{told}");
    }

    /// The steps SQLite plans for `sql`, as `EXPLAIN QUERY PLAN` words them.
    fn plan(connection: &Connection, sql: &str) -> String {
        let mut statement = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let steps = statement
            .query_map(
                rusqlite::params_from_iter(std::iter::repeat_n(0_i64, statement.parameter_count())),
                |row| row.get::<_, String>(3),
            )
            .unwrap();
        steps.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    /// A claim reads the events still to run through their indexes, never
    /// the whole table: done and dead events are kept for days beside them,
    /// and a claim that read them all held the inbox for a long time.
    #[test]
    fn a_claim_reads_only_the_events_still_to_run() {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA).unwrap();
        add_missing_columns(&connection).unwrap();
        for (sql, index) in [
            (TAKEN_OVER, "clink_webhook_inbox_leased"),
            (CANDIDATES, "clink_webhook_inbox_due"),
            (PARK, "clink_webhook_inbox_object"),
        ] {
            let steps = plan(&connection, sql);
            assert!(
                !steps.contains("SCAN e;") && !steps.ends_with("SCAN e"),
                "{steps}"
            );
            assert!(steps.contains(index), "{steps}");
        }
    }

    /// A claim reads no retry that is not due yet: with a destination down
    /// for a day, thousands wait, and a claim that walked them all on every
    /// new event held the inbox's one connection for milliseconds each
    /// (counted in SQLite's steps, not timed). With none due, it reads
    /// next to nothing; with one new event behind them, it takes that one
    /// as cheaply.
    #[test]
    fn a_claim_reads_no_retry_not_due_yet() {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA).unwrap();
        add_missing_columns(&connection).unwrap();
        let now: i64 = 1_700_000_000_000;
        let waiting = 20_000;
        connection
            .execute(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?1)
                 INSERT INTO clink_webhook_inbox (account, event_id, event_type, order_ms,
                     object_key, signed_at_ms, received_at_ms, body, status, attempts,
                     next_attempt_ms)
                 SELECT '', 'evt_' || n, 'order.succeeded', ?2, 'order:ord_' || n, ?2, ?2,
                        X'7B7D', 'retrying', 3, ?2 + 3600000 + n
                 FROM g",
                rusqlite::params![waiting, now],
            )
            .unwrap();
        let steps = |sql: &str| {
            let mut statement = connection.prepare(sql).unwrap();
            let found: Option<i64> = statement
                .query_row(rusqlite::params![now, 0], |row| row.get(1))
                .optional()
                .unwrap();
            let steps = statement.get_status(rusqlite::StatementStatus::VmStep);
            (found, steps)
        };
        let (none, read) = steps(CANDIDATES);
        assert_eq!(none, None);
        assert!(read < 1_000, "{read} steps to find that nothing is due");
        connection
            .execute(
                "INSERT INTO clink_webhook_inbox (account, event_id, event_type, order_ms,
                     object_key, signed_at_ms, received_at_ms, body, next_attempt_ms)
                 VALUES ('', 'evt_new', 'order.succeeded', ?1, 'order:ord_new', ?1, ?1,
                         X'7B7D', ?1)",
                [now],
            )
            .unwrap();
        let (new, read) = steps(CANDIDATES);
        assert_eq!(new, Some(waiting + 1));
        assert!(read < 1_000, "{read} steps to find the one new event");
    }

    /// A claim sets aside the waiting events an older event of their
    /// object holds back, until that one is due: a destination down for
    /// hours leaves each object's oldest event retrying and its newer ones
    /// behind it, and every claim read them all, holding the inbox's one
    /// connection (counted in SQLite's steps, not timed). Once that event
    /// stops running, its object's events are due again as they were.
    #[test]
    fn one_claim_reads_the_events_held_back_not_every_claim() {
        let mut connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA).unwrap();
        add_missing_columns(&connection).unwrap();
        let now: i64 = 1_700_000_000_000;
        let retry = now + 3_600_000;
        let (objects, behind): (i64, i64) = (1_000, 3);
        connection
            .execute(
                "WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n < ?1 - 1)
                 INSERT INTO clink_webhook_inbox (account, event_id, event_type, order_ms,
                     object_key, signed_at_ms, received_at_ms, body, status, attempts,
                     next_attempt_ms)
                 SELECT '', 'evt_' || n, 'order.succeeded', ?2 - 100000 + n,
                        'order:ord_' || (n % ?3), ?2, ?2 - 100000 + n, X'7B7D',
                        CASE WHEN n < ?3 THEN 'retrying' ELSE 'pending' END,
                        CASE WHEN n < ?3 THEN 1 ELSE 0 END,
                        CASE WHEN n < ?3 THEN ?4 ELSE ?2 - 100000 + n END
                 FROM g",
                rusqlite::params![objects * (behind + 1), now, objects, retry],
            )
            .unwrap();
        // What a claim reads: the events due, up to the first that may run.
        let steps = |connection: &Connection| {
            let mut statement = connection.prepare(CANDIDATES).unwrap();
            let mut rows = statement.query(rusqlite::params![now, 0]).unwrap();
            let mut found = None;
            while let Some(row) = rows.next().unwrap() {
                if row.get::<_, bool>(2).unwrap() && row.get::<_, bool>(3).unwrap() {
                    found = Some(row.get::<_, i64>(1).unwrap());
                    break;
                }
            }
            drop(rows);
            (
                found,
                statement.get_status(rusqlite::StatementStatus::VmStep),
            )
        };
        let (none, before) = steps(&connection);
        assert_eq!(none, None);
        assert!(
            i64::from(before) > objects * behind,
            "{before} steps read every event held back"
        );

        let tx = connection.transaction().unwrap();
        assert_eq!(first_waiting(&tx, now, 0).unwrap(), None);
        tx.commit().unwrap();
        let (none, after) = steps(&connection);
        assert_eq!(none, None);
        assert!(after < 1_000, "{after} steps after they were set aside");
        let count = |sql: &str| -> i64 {
            connection
                .query_row(sql, rusqlite::params![retry], |row| row.get(0))
                .unwrap()
        };
        assert_eq!(
            count(
                "SELECT count(*) FROM clink_webhook_inbox
                 WHERE status = 'pending' AND next_attempt_ms = ?1"
            ),
            objects * behind
        );

        // The first object's oldest event runs and is done: the first event
        // behind it is due again as it arrived (the others wait for it), and
        // it is taken.
        connection
            .execute_batch(
                "UPDATE clink_webhook_inbox SET status = 'running' WHERE event_id = 'evt_0';
                 UPDATE clink_webhook_inbox SET status = 'done' WHERE event_id = 'evt_0';",
            )
            .unwrap();
        assert_eq!(
            count(
                "SELECT count(*) FROM clink_webhook_inbox
                 WHERE status = 'pending' AND next_attempt_ms = ?1"
            ),
            objects * behind - 1
        );
        let tx = connection.transaction().unwrap();
        let first_behind: i64 = tx
            .query_row(
                "SELECT seq FROM clink_webhook_inbox WHERE event_id = ?1",
                [format!("evt_{objects}")],
                |row| row.get(0),
            )
            .unwrap();
        let taken = first_waiting(&tx, now, 0).unwrap();
        assert_eq!(taken.map(|(_, seq)| seq), Some(first_behind));
    }

    /// A file made before the trigger that makes events set aside due
    /// again, every column and index there, opens for reading where it
    /// cannot be written (a reader never settles), and gets the trigger
    /// where it can.
    #[test]
    fn a_file_without_the_trigger_opens_for_reading() {
        let dir = std::env::temp_dir().join(format!(
            "clink-unpark-{}-{}",
            std::process::id(),
            crate::Timestamp::now().as_millis()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("inbox.db");
        let trigger = |connection: &Connection| -> bool {
            connection
                .query_row(
                    "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'trigger'",
                    [],
                    |row| row.get(0),
                )
                .unwrap()
        };
        {
            let connection = Connection::open(&path).unwrap();
            connection.execute_batch(SCHEMA).unwrap();
            add_missing_columns(&connection).unwrap();
            connection
                .execute_batch("DROP TRIGGER clink_webhook_inbox_unpark")
                .unwrap();
        }
        let reader =
            Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        add_missing_columns(&reader).unwrap();
        assert!(!trigger(&reader));
        drop(reader);
        let writer = Connection::open(&path).unwrap();
        add_missing_columns(&writer).unwrap();
        assert!(trigger(&writer));
        drop(writer);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A page or a count filtered by one criterion reads the events it
    /// matches through an index, never the whole table: the console's
    /// filters ran over every event kept, holding the inbox's only
    /// connection while deliveries waited. So does a replay of what a
    /// filter matches, and a bound on the number narrows the search.
    #[test]
    fn filtered_pages_and_counts_read_through_an_index() {
        use super::super::inbox_page::{sql as browse, PageStart};
        use crate::store::{InboxFilter, InboxStatus};

        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA).unwrap();
        add_missing_columns(&connection).unwrap();
        let plan_of = |sql: &str, params: usize| {
            let mut statement = connection
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let nulls = std::iter::repeat_n(rusqlite::types::Null, params);
            let steps = statement
                .query_map(rusqlite::params_from_iter(nulls), |row| {
                    row.get::<_, String>(3)
                })
                .unwrap();
            steps.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        let filters = [
            InboxFilter::default().status(InboxStatus::Dead),
            InboxFilter::default().event_type("order.succeeded"),
            InboxFilter::default().account("acct_1"),
            InboxFilter::default().object_key("order:ord_1"),
            InboxFilter::default()
                .status(InboxStatus::Dead)
                .seq_through(10),
            InboxFilter::default()
                .event_type("order.succeeded")
                .seq_through(10),
        ];
        for filter in &filters {
            let f = filter.params();
            for start in [
                PageStart::Newest,
                PageStart::Before(10),
                PageStart::After(10),
            ] {
                let steps = plan_of(
                    &browse::page("clink_webhook_inbox", '?', start, Some(&f)),
                    FILTER_PARAMS + 2,
                );
                assert!(
                    steps.contains("USING INDEX"),
                    "{filter:?} {start:?}: {steps}"
                );
                assert!(!steps.contains("SCAN"), "{filter:?} {start:?}: {steps}");
            }
            let steps = plan_of(
                &browse::count("clink_webhook_inbox", '?', Some(&f)),
                FILTER_PARAMS,
            );
            assert!(!steps.contains("SCAN"), "{filter:?}: {steps}");
            // Each step of the replay of what the filter matches finds its
            // events as the count does.
            for (sql, params) in [
                (replay_step_sql(&f), FILTER_PARAMS + 2),
                (replay_matching_sql(&f), FILTER_PARAMS + 4),
            ] {
                let steps = plan_of(&sql, params);
                assert!(!steps.contains("SCAN"), "{filter:?}: {steps}");
                assert!(
                    filter.seq_through.is_none()
                        || steps.contains("seq<?")
                        || steps.contains("rowid<?"),
                    "the bound on the number narrows the search: {filter:?}: {steps}"
                );
            }
        }
        // Bounded by number alone: through the primary key, not the table.
        let through = InboxFilter::default().seq_through(10);
        let f = through.params();
        for (sql, params) in [
            (
                browse::page("clink_webhook_inbox", '?', PageStart::Newest, Some(&f)),
                FILTER_PARAMS + 2,
            ),
            (
                browse::count("clink_webhook_inbox", '?', Some(&f)),
                FILTER_PARAMS,
            ),
            (replay_step_sql(&f), FILTER_PARAMS + 2),
            (replay_matching_sql(&f), FILTER_PARAMS + 4),
        ] {
            let steps = plan_of(&sql, params);
            assert!(
                steps.contains("INTEGER PRIMARY KEY") && !steps.contains("SCAN"),
                "{steps}"
            );
        }
        let since = InboxFilter::default().received(Some(crate::Timestamp::from_millis(5)), None);
        let steps = plan_of(
            &browse::count("clink_webhook_inbox", '?', Some(&since.params())),
            FILTER_PARAMS,
        );
        assert!(steps.contains("clink_webhook_inbox_received"), "{steps}");
        let range = InboxFilter::default().received(
            Some(crate::Timestamp::from_millis(5)),
            Some(crate::Timestamp::from_millis(9)),
        );
        for start in [
            PageStart::Newest,
            PageStart::Before(10),
            PageStart::After(10),
        ] {
            let steps = plan_of(
                &browse::page("clink_webhook_inbox", '?', start, Some(&range.params())),
                FILTER_PARAMS + 2,
            );
            assert!(
                steps.contains("clink_webhook_inbox_received"),
                "{start:?}: {steps}"
            );
        }
        // The overview's activity: the events received and handled in its
        // window, each through its index.
        let steps = plan_of(&browse::activity("clink_webhook_inbox", '?'), 3);
        assert!(!steps.contains("SCAN"), "{steps}");
        assert!(
            steps.contains("clink_webhook_inbox_received")
                && steps.contains("clink_webhook_inbox_handled"),
            "{steps}"
        );
    }
}

#[cfg(test)]
mod settle_tests {
    use std::time::Duration;

    use super::SqliteInbox;
    use crate::store::inbox_trait::outlived::{attempt, claim, taken_over};
    use crate::store::{Inbox, InboxStatus, StoreError, StoreErrorKind};

    /// A path that names no file (SQLite's private database, gone when its
    /// connection closes, or one in memory) is refused; a `file:` URI is
    /// a file of that name, kept on disk.
    #[tokio::test]
    async fn a_path_that_names_no_file_is_refused() {
        for path in ["", ":memory:"] {
            let refused = SqliteInbox::open(path).unwrap_err();
            assert_eq!(refused.kind(), StoreErrorKind::InvalidInput, "{path:?}");
        }
        // Read as a URI, this is a database in memory; as a file's name,
        // it is in a directory `file:` that does not exist here.
        let uri = format!(
            "file:{}/clink-uri-{}.db?mode=memory",
            std::env::temp_dir().display(),
            std::process::id()
        );
        assert!(!std::path::Path::new("file:").exists());
        let refused = SqliteInbox::open(&uri).unwrap_err();
        assert_eq!(
            refused.kind(),
            StoreErrorKind::Unavailable,
            "{uri}: {refused}"
        );
    }

    /// A file whose schema is current opens without a write lock: while
    /// another process holds one (a receiver writing), an open to read it
    /// (`clink-webhook inbox list`) does not wait for it, and fail after
    /// the busy timeout. A file that lacks what a later version added
    /// still takes the lock to add it.
    #[tokio::test]
    async fn a_current_file_opens_while_another_connection_writes() {
        let dir = std::env::temp_dir().join(format!(
            "clink-open-{}-{}",
            std::process::id(),
            crate::store::LeaseToken::generate().as_str()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("inbox.db");
        drop(SqliteInbox::open(&path).unwrap());
        let writer = rusqlite::Connection::open(&path).unwrap();
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        let started = std::time::Instant::now();
        let opened = tokio::task::spawn_blocking({
            let path = path.clone();
            move || SqliteInbox::open(&path)
        })
        .await
        .unwrap();
        assert!(opened.is_ok(), "{opened:?} after {:?}", started.elapsed());
        assert_eq!(opened.unwrap().stats().await.unwrap().pending, 0);
        writer.execute_batch("ROLLBACK").unwrap();

        // An index missing (as in a file an older version made): the open
        // adds it.
        writer
            .execute_batch("DROP INDEX clink_webhook_inbox_handled")
            .unwrap();
        drop(SqliteInbox::open(&path).unwrap());
        let indexes: i64 = writer
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'clink_webhook_inbox_handled'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 1);
        drop(writer);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A transactional completion after the claim's lease ended commits
    /// while no other worker took the event over (the token fences, not
    /// the clock), and rolls back once one did.
    #[tokio::test]
    async fn a_transaction_that_outlived_its_lease_commits_unless_taken_over() {
        let dir = std::env::temp_dir().join(format!(
            "clink-settle-{}-{}",
            std::process::id(),
            crate::store::LeaseToken::generate().as_str()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("inbox.db");
        let inbox = SqliteInbox::open(&path).unwrap();
        let lease = Duration::from_millis(20);

        let outlived = claim(&inbox, "evt_a", lease).await;
        inbox
            .complete_with(&attempt(&outlived), |tx| {
                tx.execute_batch(
                    "CREATE TABLE effects (id TEXT); INSERT INTO effects VALUES ('evt_a')",
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let done = inbox.get(outlived.entry.seq).await.unwrap().unwrap();
        assert_eq!(done.status, InboxStatus::Done);

        let lost = taken_over(&inbox, "evt_b", lease).await;
        let error = inbox
            .complete_with(&attempt(&lost), |tx| {
                tx.execute("INSERT INTO effects VALUES ('evt_b')", [])?;
                Ok(())
            })
            .await
            .unwrap_err();
        let kind = error.downcast_ref::<StoreError>().map(StoreError::kind);
        assert_eq!(kind, Some(StoreErrorKind::LeaseLost), "{error}");
        let effects: Vec<String> = rusqlite::Connection::open(&path)
            .unwrap()
            .prepare("SELECT id FROM effects")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            effects,
            ["evt_a"],
            "the taken-over claim's effects rolled back"
        );
        drop(inbox);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Effects that go past an error on which SQLite rolled their
    /// transaction back (here `ON CONFLICT ROLLBACK`) do not make the event
    /// done: the completion is refused, nothing is committed. Before, the
    /// completion was written alone, in autocommit, and the event was done
    /// without its effects.
    #[tokio::test]
    async fn effects_rolled_back_by_sqlite_leave_the_event_not_done() {
        let dir = std::env::temp_dir().join(format!(
            "clink-rolled-back-{}-{}",
            std::process::id(),
            crate::store::LeaseToken::generate().as_str()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("inbox.db");
        let inbox = SqliteInbox::open(&path).unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE paid (id TEXT UNIQUE ON CONFLICT ROLLBACK); \
                 INSERT INTO paid VALUES ('ord_1')",
            )
            .unwrap();
        inbox
            .insert(&crate::store::NewEvent::order_succeeded("evt_a"))
            .await
            .unwrap();
        let claimed = inbox
            .claim(Duration::from_secs(300), Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let error = inbox
            .complete_with(&attempt(&claimed), |tx| {
                // "Paid already": an error the effects go past.
                let _ = tx.execute("INSERT INTO paid VALUES ('ord_1')", []);
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(error.to_string().contains("rolled back"), "{error}");
        let entry = inbox.get(claimed.entry.seq).await.unwrap().unwrap();
        assert_eq!(entry.status, InboxStatus::Running, "{entry:?}");
        drop(inbox);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod queue_tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::{SqliteInbox, MAX_CALLS};
    use crate::store::{Inbox, InboxFilter, NewEvent, StoreErrorKind};
    use crate::Timestamp;

    fn event(id: &str) -> NewEvent {
        let body = format!(r#"{{"id":"{id}","type":"order.succeeded","data":{{}}}}"#);
        let now = Timestamp::now();
        NewEvent::new(
            None,
            id.to_owned(),
            "order.succeeded".to_owned(),
            None,
            None,
            now,
            now,
            Bytes::from(body),
        )
    }

    /// While the connection is held, inserts whose callers stop waiting
    /// are not applied once it is free, and a call over the bound is
    /// refused at its first poll rather than queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_given_up_on_are_skipped_and_a_call_over_the_bound_is_refused() {
        let dir = std::env::temp_dir().join(format!(
            "clink-queue-{}-{}",
            std::process::id(),
            crate::store::LeaseToken::generate().as_str()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let inbox = SqliteInbox::open(dir.join("inbox.db")).unwrap();

        // A call holding the connection until released: dropped at the
        // test's end, or as a failed assert unwinds, the sender frees it.
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let (entered, holding) = tokio::sync::oneshot::channel();
        let busy = tokio::spawn(inbox.with(move |_connection| {
            let _ = entered.send(());
            let _ = blocked.recv();
            Ok(())
        }));
        holding.await.unwrap();

        // Every other permit taken by an insert whose caller gives up: it
        // cannot finish while the connection is held.
        let given_up: Vec<String> = (1..MAX_CALLS).map(|n| format!("evt_{n}")).collect();
        for id in &given_up {
            let event = event(id);
            let insert = inbox.insert(&event);
            assert!(
                tokio::time::timeout(Duration::from_millis(1), insert)
                    .await
                    .is_err(),
                "{id} was inserted while the connection was held"
            );
        }
        // One more is refused at its first poll.
        let over = event("evt_over");
        let refused =
            futures_now(inbox.insert(&over)).expect("a call over the bound answers at once");
        assert_eq!(
            refused.map_err(|e| e.kind()),
            Err(StoreErrorKind::Unavailable),
            "a call over the bound"
        );

        drop(release);
        busy.await.unwrap().unwrap();
        // Every call queued has run or been skipped once its permit is back.
        let all = u32::try_from(MAX_CALLS).unwrap();
        drop(inbox.calls.acquire_many(all).await.unwrap());
        let kept = inbox.list(&InboxFilter::default(), 1000).await.unwrap();
        let ids: Vec<&str> = kept.iter().map(|e| e.event.event_id.as_str()).collect();
        assert_eq!(ids, Vec::<&str>::new(), "inserts given up on were applied");
        // The inbox works as before.
        inbox.insert(&event("evt_after")).await.unwrap();
        assert_eq!(
            inbox.list(&InboxFilter::default(), 10).await.unwrap().len(),
            1
        );
        drop(inbox);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What `future` answers at its first poll, if it does.
    fn futures_now<F: std::future::Future + Unpin>(mut future: F) -> Option<F::Output> {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut future).poll(&mut context) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }
}
