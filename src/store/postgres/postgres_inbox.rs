//! [`PostgresInbox`]: the inbox in a PostgreSQL table, drained by any
//! number of instances.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::Row;

use super::schema::{check_table_name, quote, Relation};
use super::{create_tables, pg_error, pool_error, MIGRATE_TIMEOUT};
use crate::events::InboxAttempt;
use crate::store::inbox_history::bounded_error;
use crate::store::inbox_history::sql::{self as history, append_sql, Dialect};
use crate::store::inbox_page::{read_summary, sql as browse};
use crate::store::inbox_trait::{
    filter_sql, order_key, purge_in_steps, read_entry, wait_for, wake_another, EntryRow,
    FilterParams, ENTRY_COLUMNS, FILTER_PARAMS,
};
use crate::store::{
    timed, BoxFuture, Inbox, InboxClaim, InboxEntry, InboxFilter, InboxStats, Inserted, LeaseToken,
    NewEvent, ReplayPin, Replayed, Settle, StoreError, DEFAULT_TIMEOUT, PURGE_STEP,
};
use crate::store::{without_nul, InboxActivity, InboxSummary, PageStart};
use crate::{ConfigError, Timestamp};

/// The columns added to the inbox's table since its first version (each
/// by an `ALTER TABLE .. ADD COLUMN IF NOT EXISTS` of the schema).
const ADDED_COLUMNS: [&str; 10] = [
    "signing_key",
    "handled_at_ms",
    "replays",
    "last_replay_ms",
    "receipt",
    "header_timestamp",
    "header_signature",
    "claimed_at_ms",
    "history",
    "arrived_ms",
];

/// How many candidates a claim tries, each found blocked by its object once
/// the claims of that object before it committed, before it gives up and
/// answers that none is due (the worker then tries again soon).
const CLAIM_CANDIDATES: u32 = 4;

/// How many waiting events one claim sets aside at most, each held back by
/// an older event of its object until that one is due. Each takes its
/// object's advisory lock, held to the end of the claim's transaction, and
/// advisory locks share the server's lock table with every other lock
/// (`max_locks_per_transaction` for each connection, 64 by default): the
/// claims after it set aside the rest.
const PARK_LIMIT: u32 = 64;

/// The inbox in a PostgreSQL table: the production backend.
///
/// - [`insert`](Inbox::insert) is one `INSERT .. ON CONFLICT (account,
///   event_id) DO NOTHING`, with a `pg_notify` that wakes an idle worker.
/// - [`claim`](Inbox::claim) is one `UPDATE` of the row a `SELECT .. FOR
///   UPDATE SKIP LOCKED` picks by the claim order, so workers on any number
///   of instances never take the same event, and an event whose object has
///   an older event to handle or one running is skipped. The claims of one
///   object take turns on an advisory lock (`pg_advisory_xact_lock`, keyed
///   by a hash of the table's name and the object) and check the object
///   again once they hold it, so that a claim which began before another
///   committed its claim of the same object (an older event replayed or
///   arriving late meanwhile) skips its event rather than running it
///   beside that one. It runs in a
///   PL/pgSQL function beside the table (`<table>_claim`), with sorting
///   turned off, so that each claim reads an index from its first entry
///   instead of sorting the live events, whatever the planner's statistics
///   say of the table: the index of the live events by when each is due (a
///   waiting one's next attempt, a running one's lease end), read up to the
///   first event not due yet, so that a claim never reads the retries still
///   waiting (on a table made before that index, until it is built, the
///   index of live events in arrival order: see [`migrate`](Self::migrate)).
///   Its statement stays prepared for the connection, so after the first
///   few claims the plan is reused instead of made again. A claim that
///   finds nothing to take sets aside the waiting events due that an older
///   event of their object holds back, until that one is due (see the
///   trait's [claim order](Inbox#claim-order)), each under its object's
///   lock, tried and never waited for.
/// - Every settle is one `UPDATE` matching the row still running with its
///   claim's token, each in a PL/pgSQL function beside the table as well
///   (`<table>_settle_complete`, `<table>_settle_fail`,
///   `<table>_settle_release`), so that its plan too is reused on the
///   connection instead of made on every call. When an event about an
///   object stops running (by a settle or otherwise), a trigger of the
///   table's (`<table>_unpark`) takes that object's lock and makes the
///   object's oldest event still to handle due again if a claim set it
///   aside.
///
/// Claims and settles follow the server's clock, in epoch milliseconds: a
/// lease is taken, found ended and checked by every settle against the
/// clock of the PostgreSQL server, never an app's, so instances whose
/// clocks drift apart (by more than a lease, even) never take an event
/// whose lease is still running. A time an app gives for a claim to read
/// (an event's arrival, which the reorder window counts from; a retry it
/// asks for; a purge's cutoff) is taken as the same distance from the
/// server's now as from the app's (the arrival as `arrived_ms`); the
/// arrival is also kept as given, read back as [`NewEvent::received_at`]
/// and by a list's `received` range. So the one clock that must be right
/// is the database server's (NTP there, and on a replica that can take
/// over). The claim and the settles take no time of the app's: instances
/// from before this took theirs, and, while any of them still runs beside
/// this version, leases are only as safe as the apps' clocks are in sync
/// (an older instance starting makes its functions beside these, under
/// other names or with other arguments, and does not replace them). The
/// settles are fenced by the claim's token alone: a handler that outlived
/// its lease while no other worker took the event still settles it.
///
/// Create the table with [`migrate`](Self::migrate). Idle workers poll
/// every 250 ms unless [`listen`](Self::listen) gives them a connection of
/// their own for `LISTEN`, which wakes one idle worker on each insert (and
/// a worker that takes an event wakes one more).
#[derive(Clone)]
pub struct PostgresInbox {
    pool: Pool,
    timeout: Duration,
    sql: Arc<Sql>,
    notified: Arc<Notify>,
    cancel: super::Canceller,
    /// Held by the inbox and its clones only: the listening connection's
    /// tasks end when the last of them is dropped.
    alive: Arc<tokio::sync::watch::Sender<()>>,
    /// Whether [`listen`](Self::listen) was called (on this inbox or a
    /// clone): the connection is kept once.
    listening: Arc<std::sync::atomic::AtomicBool>,
}

impl fmt::Debug for PostgresInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresInbox")
            .field("table", &self.sql.table)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

struct Sql {
    table: String,
    channel: String,
    /// The tables and indexes, created or brought up to date, and the
    /// functions.
    schema: String,
    /// The claim's and the settles' functions, and the function of the
    /// trigger that makes events set aside due again, alone: replaced on
    /// every migration.
    functions: String,
    /// Whether the tables, every column and the indexes exist, taking no
    /// lock on the table.
    current: String,
    /// Whether the claim's function the migration makes reads by due time.
    reads_by_due: String,
    insert: String,
    claim: String,
    complete: String,
    fail: String,
    release: String,
    /// Makes event `$1` claimed with token `$2`, whose row cannot be read,
    /// dead with the error `$3`.
    unreadable: String,
    list: String,
    get: String,
    replay: String,
    replay_if: String,
    replay_matching: String,
    writable: String,
    purge: String,
    purge_span: String,
    stats: String,
    receipt: String,
}

impl Sql {
    fn new(table: &str) -> Self {
        let t = quote(table);
        let health = quote(&format!("{table}_health"));
        let bare = table.rsplit('.').next().unwrap_or(table);
        let channel = format!("{bare}_inserted");
        let live = "('pending', 'retrying', 'running')";
        // A settle matches the row still running with its token. The token
        // alone fences: every claim makes a new one, so a claim whose lease
        // ended that nobody took over still settles (its handler ran).
        let holds = "seq = $1 AND token = $2 AND status = 'running'";
        // Each settle ends the claim's attempt now; a claim of an event still
        // running ends the attempt whose lease ended, at the lease's end.
        let ended = |outcome, error| append_sql(Dialect::Postgres, "srv_ms", outcome, error);
        let (completed, failed, released) = (
            ended(history::COMPLETED, "NULL::text"),
            ended(history::FAILED, "$5::text"),
            ended(history::RELEASED, "NULL::text"),
        );
        let lost = append_sql(
            Dialect::Postgres,
            &format!("{t}.lease_until_ms"),
            history::LEASE_EXPIRED,
            "NULL::text",
        );
        // The claim runs in a function of the table's, planned with sorting
        // turned off: the event to take is the first of an index in the
        // claim's order, never a sort of every live event. Without that, a
        // planner whose statistics say few events are live (a new table, or
        // a backlog built since the last `ANALYZE`) sorts the whole backlog
        // on every claim, and draining it takes time quadratic in its size.
        // A plpgsql function also keeps its statements prepared for the
        // connection: PostgreSQL plans the first five calls anew and then
        // reuses a generic plan (as `EXPLAIN` through `auto_explain` shows).
        // JIT is off for it as well: sorting turned off adds a large cost to
        // the plan that reads in arrival order, enough to pass
        // `jit_above_cost`, and compiling took about 10 ms of a 13 ms claim
        // over 20,000 retries not due yet, where the claim's searches are a
        // handful of index reads that gain nothing from it.
        //
        // The candidate's search reads the statement's snapshot, and only
        // the candidate is locked: a claim that began before another
        // committed the claim of a newer event of the same object (while an
        // older one was replayed or arrived late) would see that event still
        // pending and take the older one beside it. So claims of an object
        // take turns on an advisory lock of the table's and the object's,
        // held to the end of the claim's transaction, and then check the
        // object again in a statement of its own, which reads what the
        // claims before them committed; a candidate now blocked is skipped
        // for the next one, up to CLAIM_CANDIDATES of them. Only the first
        // candidate holding no such lock yet waits for its lock; later ones
        // are skipped when their lock is taken, so two claims never wait on
        // each other's locks.
        let blocker = format!(
            "SELECT 1 FROM {t} o
             WHERE o.object_key = e.object_key AND o.seq <> e.seq AND o.status IN {live}
               AND ((o.status = 'running' AND o.lease_until_ms > srv_ms)
                    OR (o.order_ms, o.event_id COLLATE \"C\") < (e.order_ms, e.event_id COLLATE \"C\"))"
        );
        let unblocked = format!("(e.object_key IS NULL OR NOT EXISTS ({blocker}))");
        let arrived = "COALESCE(e.arrived_ms, e.received_at_ms) <= srv_ms - $2";
        let claim_fn = quote(&format!("{table}_claim"));
        // A table's name is letters, digits, `_` and `.` (checked), so it
        // goes in a literal as it is.
        let object_lock = format!("hashtextextended('{table}:' || picked_key, 0)");
        // The claim and the settles take no time of the app's: each reads
        // the server's clock. Their signatures differ from those of the
        // versions before, which took the app's now, so that an older
        // instance starting (a rollback, a restart during an upgrade) makes
        // its own functions beside these instead of replacing them.
        //
        // `declare` and `find` (the variables and statements that put the
        // next candidate in `picked_seq` and `picked_key`, or return when
        // there is none) differ by the order the claim reads; the rest, the
        // object's lock and check and the claim itself, is the same.
        let claim_with = |declare: &str, find: &str| {
            format!(
                "CREATE OR REPLACE FUNCTION {claim_fn}(lease_ms bigint, window_ms bigint, new_token text)
                 RETURNS SETOF {t} LANGUAGE plpgsql SET enable_sort = off SET jit = off AS $claim$
                 DECLARE
                    -- The server's clock, so that every instance agrees when a
                    -- lease ends, an attempt is due and a reorder window ends.
                    srv_ms bigint := {SERVER_NOW};
                    picked_seq bigint;
                    picked_key text COLLATE \"C\";
                    locked boolean := false;{declare}
                 BEGIN
                    FOR candidate IN 1..{CLAIM_CANDIDATES} LOOP{find}
                        IF picked_key IS NOT NULL THEN
                            IF NOT locked THEN
                                PERFORM pg_advisory_xact_lock({object_lock});
                                locked := true;
                            ELSIF NOT pg_try_advisory_xact_lock({object_lock}) THEN
                                CONTINUE;
                            END IF;
                            CONTINUE WHEN EXISTS (
                                SELECT 1 FROM {t} e WHERE e.seq = picked_seq AND EXISTS ({blocker}));
                        END IF;
                        RETURN QUERY
                        UPDATE {t} SET status = 'running', attempts = {t}.attempts + 1,
                                       lease_until_ms = srv_ms + $1, token = $3, claimed_at_ms = srv_ms,
                                       history = CASE WHEN {t}.status = 'running' THEN {lost} ELSE {t}.history END
                        WHERE {t}.seq = picked_seq
                        RETURNING {t}.*;
                        RETURN;
                    END LOOP;
                 END
                 $claim$;"
            )
        };
        // By arrival: the live events in `seq` order, from the live index,
        // skipping the retries not due yet (all of them, on every claim).
        // The claim of a table without the index by due time.
        let claim_by_arrival = claim_with(
            "
                    past_seq bigint := 0;",
            &format!(
                "
                        SELECT e.seq, e.object_key INTO picked_seq, picked_key FROM {t} e
                        WHERE e.seq > past_seq AND e.status IN {live}
                          AND ((e.status <> 'running' AND e.next_attempt_ms <= srv_ms AND {arrived})
                               OR (e.status = 'running' AND e.lease_until_ms <= srv_ms))
                          AND {unblocked}
                        ORDER BY e.seq
                        LIMIT 1
                        FOR UPDATE SKIP LOCKED;
                        IF NOT FOUND THEN
                            RETURN;
                        END IF;
                        past_seq := picked_seq;"
            ),
        );
        // By due time: a new event is due as it is kept, a retry when its
        // backoff ends, a running event when its worker's lease ends (the
        // index's key, `due`); of those due at once, the first kept. Read
        // from the index of live events by that key, which ends at the first
        // event not due yet; a candidate found blocked is passed by its key.
        let due = |e: &str| {
            format!(
                "(CASE WHEN {e}status = 'running' THEN {e}lease_until_ms ELSE {e}next_attempt_ms END)"
            )
        };
        // A claim that finds nothing to take sets aside the waiting events
        // due that an older event of their object holds back, until that
        // one is due (its retry, or the end of its worker's lease), so that
        // the claims after it do not read them again, and again, while they
        // cannot run: a destination down for hours leaves an object's
        // oldest event retrying and its newer ones behind it. Only then: a
        // claim that takes an event reads no more than before (a second
        // walk of the index from its start, past the entries of events just
        // done, cost the drain of a backlog about a seventh), and workers
        // that drained what they could make such a claim before they wait.
        // Each is set aside under its object's lock (tried, never waited
        // for) and its row's (skipped when another holds it), and checked
        // again by a statement of its own, so that the trigger that makes
        // it due again when an event of that object stops running (which
        // takes the lock too: `unpark_function`) either comes after and sees it,
        // or before and leaves nothing to set aside.
        let head_due = format!(
            "SELECT CASE WHEN o.status = 'running' THEN o.lease_until_ms ELSE o.next_attempt_ms END
             FROM {t} o
             WHERE o.object_key = e.object_key AND o.status IN {live}
               AND (o.order_ms, o.event_id COLLATE \"C\") < (e.order_ms, e.event_id COLLATE \"C\")
             ORDER BY o.order_ms, o.event_id COLLATE \"C\" LIMIT 1"
        );
        let park = format!(
            "
                        FOR held IN
                            SELECT e.seq, e.object_key FROM {t} e
                            WHERE e.status IN {live} AND {due_e} <= srv_ms
                              AND e.status = 'pending' AND e.object_key IS NOT NULL
                              AND NOT {unblocked}
                            ORDER BY {due_e}, e.seq
                            LIMIT {PARK_LIMIT}
                        LOOP
                            CONTINUE WHEN NOT pg_try_advisory_xact_lock(
                                hashtextextended('{table}:' || held.object_key, 0));
                            UPDATE {t} e SET next_attempt_ms = ({head_due})
                            WHERE e.seq = (SELECT l.seq FROM {t} l WHERE l.seq = held.seq
                                           FOR UPDATE SKIP LOCKED)
                              AND e.status = 'pending' AND ({head_due}) > srv_ms;
                        END LOOP;",
            due_e = due("e."),
        );
        let claim_by_due = claim_with(
            "
                    picked_due bigint;
                    past_due bigint := -9223372036854775808;
                    past_seq bigint := 0;
                    held record;",
            &format!(
                "
                        SELECT e.seq, e.object_key, {due_e} INTO picked_seq, picked_key, picked_due
                        FROM {t} e
                        WHERE e.status IN {live} AND {due_e} <= srv_ms
                          AND ({due_e}, e.seq) > (past_due, past_seq)
                          AND (e.status = 'running' OR {arrived})
                          AND {unblocked}
                        ORDER BY {due_e}, e.seq
                        LIMIT 1
                        FOR UPDATE SKIP LOCKED;
                        IF NOT FOUND THEN{park}
                            RETURN;
                        END IF;
                        past_due := picked_due;
                        past_seq := picked_seq;",
                due_e = due("e.")
            ),
        );
        let index = |suffix: &str| Relation::new(table, suffix).qualified_index;
        let (dead_idx, due_idx) = (index("dead_idx"), index("due_idx"));
        // The indexes made only with the table or on an empty one: building
        // one on a table in use holds writes back while PostgreSQL reads the
        // whole table. A table already made is taken as empty only under a
        // lock that no write holds (asked for without waiting, so that no
        // write waits behind it either), and only when it looked empty.
        let empty_table_indexes = format!(
            "DO $clink$ BEGIN
                IF to_regclass('{dead_idx}') IS NULL OR to_regclass('{due_idx}') IS NULL THEN
                    IF NOT EXISTS (SELECT 1 FROM {t}) THEN
                        BEGIN
                            LOCK TABLE {t} IN SHARE MODE NOWAIT;
                            IF NOT EXISTS (SELECT 1 FROM {t}) THEN
                                CREATE INDEX IF NOT EXISTS \"{bare}_dead_idx\" ON {t} (seq) WHERE status = 'dead';
                                CREATE INDEX IF NOT EXISTS \"{bare}_due_idx\" ON {t} ({due}, seq) WHERE status IN {live};
                            END IF;
                        EXCEPTION WHEN lock_not_available THEN NULL;
                        END;
                    END IF;
                END IF;
            END $clink$;",
            due = due("")
        );
        // The claim by due time where its index exists, on this table, is
        // usable (one being built `CONCURRENTLY`, or whose build failed, is
        // not) and has the shape the claim reads (an index of that name
        // built otherwise, by hand, is not), by arrival otherwise: without
        // it, reading by due time would read and sort every live event.
        let due_index_usable = format!(
            "EXISTS (SELECT 1 FROM pg_index
                     WHERE indexrelid = to_regclass('{due_idx}') AND indrelid = to_regclass('{t}')
                       AND indisvalid AND indexprs IS NOT NULL AND indpred IS NOT NULL
                       AND pg_get_expr(indexprs, indrelid) LIKE '%running%lease_until_ms%next_attempt_ms%'
                       AND pg_get_expr(indpred, indrelid) LIKE '%pending%retrying%running%')"
        );
        let claim_def = format!(
            "DO $clink$ BEGIN
                IF {due_index_usable} THEN
                    EXECUTE $by_due$ {claim_by_due} $by_due$;
                ELSE
                    EXECUTE $by_arrival$ {claim_by_arrival} $by_arrival$;
                END IF;
            END $clink$;"
        );
        // Each settle is a function of the table's too, for the same reason
        // as the claim's: its `UPDATE` is planned once per connection and then
        // reused, where a statement sent on its own is planned on every call
        // (about a third of a completion's time on the server). It answers
        // how many rows it settled: 1, or 0 when the claim no longer holds.
        // Named `settle_*`: the settles of the versions before (`complete`,
        // `fail`, `release`) also asked that the lease had not ended, and
        // an older instance starting replaces its own functions, not these.
        let settle = |name: &str, params: &str, update: String| {
            let function = quote(&format!("{table}_settle_{name}"));
            let args = (1..=params.split(',').count())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let definition = format!(
                "CREATE OR REPLACE FUNCTION {function}({params})
                 RETURNS bigint LANGUAGE plpgsql AS $settle$
                 DECLARE
                    settled bigint;
                    srv_ms bigint := {SERVER_NOW};
                 BEGIN
                    {update};
                    GET DIAGNOSTICS settled = ROW_COUNT;
                    RETURN settled;
                 END
                 $settle$;"
            );
            (definition, format!("SELECT {function}({args})"))
        };
        let (complete_def, complete) = settle(
            "complete",
            "bigint, text",
            format!(
                "UPDATE {t} SET status = 'done', token = NULL, handled_at_ms = srv_ms,
                                history = {completed}
                 WHERE {holds}",
            ),
        );
        // $3: in how many milliseconds the retry is due, or NULL for dead.
        let (fail_def, fail) = settle(
            "fail",
            "bigint, text, bigint, text, text",
            format!(
                "UPDATE {t} SET status = CASE WHEN $3::bigint IS NULL THEN 'dead' ELSE 'retrying' END,
                                next_attempt_ms = COALESCE(srv_ms + $3::bigint, next_attempt_ms),
                                last_error = $4, token = NULL, history = {failed}
                 WHERE {holds}",
            ),
        );
        let (release_def, release) = settle(
            "release",
            "bigint, text",
            format!(
                "UPDATE {t} SET status = CASE WHEN attempts <= 1 THEN 'pending' ELSE 'retrying' END,
                                attempts = attempts - 1, token = NULL, lease_until_ms = 0,
                                history = {released}
                 WHERE {holds}",
            ),
        );
        // When an event about an object stops running (done, failed, given
        // back, dead, by any statement: a settle, a row that cannot be
        // read, an older version's settle), the oldest event of its object
        // still to handle, if a claim set it aside, is due again, as it was
        // (its arrival or replay, by the server's clock): the one event
        // that may run next, whose own end does the same for the one after
        // it, so that this reads and writes one row whatever the object's
        // backlog. A trigger of the table's, so that no
        // version's statements can leave it out; under the object's lock,
        // as a claim sets an event aside, so that a claim either committed
        // before and is seen here, or checks after this commits. A row
        // another holds (a replay under way, a claim) is skipped, not waited
        // for (a claim holding it may wait for the object's lock): it is
        // due when its time comes at the latest. Locked only when set
        // aside, so that a settle in the app's own transaction
        // (`complete_in`) holds no other event's row until it commits.
        // With the search path of the migration, as the trigger fires in
        // any session that settles.
        let unpark_fn = quote(&format!("{table}_unpark"));
        let unpark_function = format!(
            "CREATE OR REPLACE FUNCTION {unpark_fn}() RETURNS trigger LANGUAGE plpgsql
             SET search_path FROM CURRENT AS $unpark$
             DECLARE
                srv_ms bigint := {SERVER_NOW};
             BEGIN
                PERFORM pg_advisory_xact_lock(hashtextextended('{table}:' || OLD.object_key, 0));
                UPDATE {t} SET next_attempt_ms =
                        LEAST(srv_ms, COALESCE(last_replay_ms, arrived_ms, received_at_ms))
                WHERE seq = (SELECT l.seq FROM {t} l
                             WHERE l.seq = (SELECT p.seq FROM {t} p
                                            WHERE p.object_key = OLD.object_key AND p.status IN {live}
                                            ORDER BY p.order_ms, p.event_id COLLATE \"C\"
                                            LIMIT 1)
                               AND l.status = 'pending' AND l.next_attempt_ms > srv_ms
                             FOR UPDATE SKIP LOCKED)
                  AND status = 'pending' AND next_attempt_ms > srv_ms;
                RETURN NULL;
             END
             $unpark$;"
        );
        // The trigger itself changes the table (a lock every write waits
        // behind): made by the full migration alone, which `current` sends
        // a table without it to.
        let unpark_trigger = format!(
            "DO $clink$ BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_trigger
                               WHERE tgrelid = to_regclass('{t}') AND tgname = '{bare}_unpark') THEN
                    CREATE TRIGGER \"{bare}_unpark\" AFTER UPDATE OF status ON {t} FOR EACH ROW
                    WHEN (OLD.status = 'running' AND NEW.status <> 'running'
                          AND OLD.object_key IS NOT NULL)
                    EXECUTE FUNCTION {unpark_fn}();
                END IF;
             END $clink$;"
        );
        Self {
            table: table.to_owned(),
            schema: format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    seq bigserial PRIMARY KEY,
                    account text NOT NULL,
                    event_id text NOT NULL,
                    event_type text NOT NULL,
                    created_ms bigint,
                    order_ms bigint NOT NULL,
                    object_key text COLLATE \"C\",
                    signed_at_ms bigint NOT NULL,
                    received_at_ms bigint NOT NULL,
                    body bytea NOT NULL,
                    status text NOT NULL DEFAULT 'pending',
                    attempts integer NOT NULL DEFAULT 0,
                    next_attempt_ms bigint NOT NULL,
                    lease_until_ms bigint NOT NULL DEFAULT 0,
                    token text,
                    last_error text,
                    signing_key text,
                    handled_at_ms bigint,
                    replays integer NOT NULL DEFAULT 0,
                    last_replay_ms bigint,
                    UNIQUE (account, event_id)
                );
                ALTER TABLE {t} ADD COLUMN IF NOT EXISTS signing_key text;
                ALTER TABLE {t} ADD COLUMN IF NOT EXISTS handled_at_ms bigint;
                ALTER TABLE {t} ADD COLUMN IF NOT EXISTS replays integer NOT NULL DEFAULT 0;
                ALTER TABLE {t} ADD COLUMN IF NOT EXISTS last_replay_ms bigint;
                ALTER TABLE {t} ADD COLUMN IF NOT EXISTS receipt text;
                ALTER TABLE {t} ADD COLUMN IF NOT EXISTS header_timestamp text;
                ALTER TABLE {t} ADD COLUMN IF NOT EXISTS header_signature text;
                ALTER TABLE {t} ADD COLUMN IF NOT EXISTS claimed_at_ms bigint;
                ALTER TABLE {t} ADD COLUMN IF NOT EXISTS history jsonb NOT NULL DEFAULT '[]'::jsonb;
                ALTER TABLE {t} ADD COLUMN IF NOT EXISTS arrived_ms bigint;
                CREATE TABLE IF NOT EXISTS {health} (id integer PRIMARY KEY CHECK (id = 1), at_ms bigint NOT NULL);
                CREATE INDEX IF NOT EXISTS \"{bare}_live_idx\" ON {t} (seq) WHERE status IN {live};
                CREATE INDEX IF NOT EXISTS \"{bare}_object_idx\" ON {t} (object_key, order_ms, event_id COLLATE \"C\") WHERE status IN {live};
                {empty_table_indexes}
                {claim_def}
                {complete_def}
                {fail_def}
                {release_def}
                {unpark_function}
                {unpark_trigger}"
            ),
            functions: format!(
                "{empty_table_indexes}\n{claim_def}\n{complete_def}\n{fail_def}\n{release_def}\n{unpark_function}"
            ),
            reads_by_due: format!("SELECT {due_index_usable}"),
            current: {
                let columns = ADDED_COLUMNS
                    .iter()
                    .map(|column| format!("'{column}'"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "SELECT to_regclass('{t}') IS NOT NULL AND to_regclass('{health}') IS NOT NULL
                        AND to_regclass('{live_idx}') IS NOT NULL AND to_regclass('{object_idx}') IS NOT NULL
                        AND EXISTS (SELECT 1 FROM pg_trigger
                                    WHERE tgrelid = to_regclass('{t}') AND tgname = '{bare}_unpark')
                        AND (SELECT count(*) FROM pg_attribute
                             WHERE attrelid = to_regclass('{t}') AND NOT attisdropped
                               AND attname IN ({columns})) = {count}",
                    live_idx = index("live_idx"),
                    object_idx = index("object_idx"),
                    count = ADDED_COLUMNS.len(),
                )
            },
            // The arrival ($8, kept as given) by the server's clock: as far
            // from its now as from the app's ($15, that distance). The
            // reorder window counts from it. The first attempt is due as the
            // event is kept, by the server's clock alone: so events kept one
            // after another are due in that order (the claim reads by due
            // time), where the arrivals' two clock readings each could put
            // one a millisecond off.
            insert: format!(
                "WITH kept AS (
                    INSERT INTO {t} (account, event_id, event_type, created_ms, order_ms, object_key,
                                     signed_at_ms, received_at_ms, body, next_attempt_ms, signing_key,
                                     status, last_error, header_timestamp, header_signature, arrived_ms)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {SERVER_NOW}, $11,
                            CASE WHEN $12::text IS NULL THEN 'pending' ELSE 'dead' END, $12, $13, $14,
                            {SERVER_NOW} + $15::bigint)
                    ON CONFLICT (account, event_id) DO NOTHING
                    RETURNING seq)
                 SELECT seq, pg_notify($10, '') FROM kept"
            ),
            claim: format!("SELECT {ENTRY_COLUMNS} FROM {claim_fn}($1, $2, $3)"),
            complete,
            fail,
            release,
            list: format!(
                "SELECT {ENTRY_COLUMNS} FROM {t} WHERE {} ORDER BY seq LIMIT ${}",
                filter_sql('$', 1, None),
                FILTER_PARAMS + 1
            ),
            get: format!("SELECT {ENTRY_COLUMNS} FROM {t} WHERE seq = $1"),
            replay: format!(
                "WITH found AS (SELECT seq, status, handled_at_ms FROM {t} WHERE seq = $1 FOR UPDATE),
                      replayed AS (
                        UPDATE {t} SET {replay_set} FROM found
                        WHERE {t}.seq = found.seq AND found.status <> 'running'
                          AND (found.status <> 'done' OR $2::boolean)
                        RETURNING {t}.seq)
                 SELECT found.status, found.handled_at_ms, (SELECT count(*) FROM replayed) FROM found",
                replay_set = replay_set()
            ),
            // One statement: the `UPDATE` checks the pinned state (against
            // the row as committed, should it wait for another writer) and
            // replays; `found`, the row as the statement began, says why
            // when it did not.
            replay_if: format!(
                "WITH found AS (SELECT status, replays, handled_at_ms FROM {t} WHERE seq = $1),
                      replayed AS (
                        UPDATE {t} SET {replay_set}
                        WHERE seq = $1 AND status = $2::text AND status <> 'running'
                          AND replays = $3::bigint AND handled_at_ms IS NOT DISTINCT FROM $4::bigint
                        RETURNING seq)
                 SELECT (SELECT count(*) FROM replayed), status, replays, handled_at_ms FROM found",
                replay_set = replay_set()
            ),
            // One step of a replay by filter: the next PURGE_STEP events the
            // filter matches numbered after $9, replayed (each checked again
            // as the UPDATE takes it: another statement may have changed it
            // since); the last number the step read, and those replayed.
            replay_matching: {
                let matches = format!(
                    "{} AND status <> 'running' AND (status <> 'done' OR ${}::boolean)",
                    filter_sql('$', 1, None),
                    FILTER_PARAMS + 1
                );
                format!(
                    "WITH step AS (
                         SELECT seq FROM {t} WHERE {matches} AND seq > ${after}::bigint
                         ORDER BY seq LIMIT {PURGE_STEP}
                     ), replayed AS (
                         UPDATE {t} SET {set} WHERE seq IN (SELECT seq FROM step) AND {matches}
                         RETURNING seq
                     )
                     SELECT (SELECT max(seq) FROM step), (SELECT array_agg(seq) FROM replayed)",
                    after = FILTER_PARAMS + 2,
                    set = replay_set(),
                )
            },
            writable: format!(
                "INSERT INTO {health} (id, at_ms) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms"
            ),
            // One step of a purge: the next PURGE_STEP events numbered $2
            // to $3, read through the primary key, and among them those
            // settled before the cutoff deleted (the latest of its arrival,
            // last claim, handling and last replay; GREATEST skips NULLs,
            // and the arrival is never NULL), all by the server's clock, the
            // cutoff $1 (the server's now plus the offset the app gave, read
            // once by `purge_span` for every step: a cutoff that moved with
            // a long purge would delete events settled after it). The last
            // number read, and how many were deleted.
            purge: format!(
                "WITH step AS (
                     SELECT seq FROM {t} WHERE seq BETWEEN $2 AND $3 ORDER BY seq LIMIT {PURGE_STEP}
                 ), gone AS (
                     DELETE FROM {t} WHERE seq BETWEEN $2 AND (SELECT max(seq) FROM step)
                       AND status = $4::text
                       AND GREATEST(COALESCE(arrived_ms, received_at_ms), claimed_at_ms, handled_at_ms,
                                    last_replay_ms) < $1
                     RETURNING 1
                 )
                 SELECT (SELECT max(seq) FROM step), (SELECT count(*) FROM gone)"
            ),
            // The numbers to purge between, and the cutoff: $1 milliseconds
            // from the server's now.
            purge_span: format!("SELECT min(seq), max(seq), {SERVER_NOW_MS} + $1 FROM {t}"),
            unreadable: format!(
                "UPDATE {t} SET status = 'dead', token = NULL, lease_until_ms = 0, last_error = $3,
                                history = {}
                 WHERE seq = $1 AND token = $2 AND status = 'running'",
                append_sql(Dialect::Postgres, SERVER_NOW, history::FAILED, "$3::text")
            ),
            // The events still to run, through their index, and the dead
            // ones, through theirs: never the done ones, kept for days
            // beside them (a count over the whole table ran every few
            // seconds, for the metrics and for each health probe).
            stats: {
                let counts = format!(
                    "SELECT status, count(*), min(received_at_ms),
                        sum(CASE WHEN status = 'running' OR next_attempt_ms <= {SERVER_NOW_MS} THEN 1 ELSE 0 END)"
                );
                format!(
                    "{counts} FROM {t} WHERE status IN {live} GROUP BY status
                     UNION ALL
                     {counts} FROM {t} WHERE status = 'dead' GROUP BY status"
                )
            },
            receipt: format!(
                "UPDATE {t} SET receipt = $3 WHERE {holds}"
            ),
            channel,
        }
    }
}

/// A filter's parameters, `$1` to `$FILTER_PARAMS`, then `more`.
fn with_filter<'a, const N: usize>(
    f: &'a FilterParams<'a>, more: [(&'a (dyn ToSql + Sync), Type); N],
) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
        (&f.status, Type::TEXT),
        (&f.event_type, Type::TEXT),
        (&f.account, Type::TEXT),
        (&f.object_key, Type::TEXT),
        (&f.from, Type::INT8),
        (&f.until, Type::INT8),
        (&f.through, Type::INT8),
    ];
    debug_assert_eq!(params.len(), FILTER_PARAMS);
    params.extend(more);
    params
}

/// What a replay sets: due at the server's now.
fn replay_set() -> String {
    format!(
        "status = 'pending', attempts = 0, next_attempt_ms = {SERVER_NOW_MS}, token = NULL, \
         replays = replays + 1, last_replay_ms = {SERVER_NOW_MS}, receipt = NULL"
    )
}

/// The server's clock now, in epoch milliseconds (its `clock_timestamp()`,
/// not the transaction's start), rounded down as the app's
/// [`Timestamp::now`] is: for a statement of one row, and in a PL/pgSQL
/// function, where an expression without a subquery runs without the
/// executor's full path.
const SERVER_NOW: &str = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// [`SERVER_NOW`] as a subquery, so that a statement over many rows reads
/// it once, not once a row.
const SERVER_NOW_MS: &str = "(SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)";

/// The most a time an app gives is taken to be from its now, either way
/// (10 years): what the statements add to the server's now stays far from
/// `bigint`'s ends.
const MAX_OFFSET_MS: i64 = 10 * 365 * 24 * 3_600_000;

/// How far `at` is from the app's now, bounded by [`MAX_OFFSET_MS`].
fn offset_from_now(at: Timestamp) -> i64 {
    at.as_millis()
        .saturating_sub(Timestamp::now().as_millis())
        .clamp(-MAX_OFFSET_MS, MAX_OFFSET_MS)
}

/// How many rows a settle's function settled: its one row's one value.
fn settled(rows: &[tokio_postgres::Row]) -> Result<i64, tokio_postgres::Error> {
    rows.first().map_or(Ok(0), |row| row.try_get::<_, i64>(0))
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl EntryRow for Row {
    type Error = tokio_postgres::Error;

    fn int(&self, column: usize) -> Result<i64, tokio_postgres::Error> {
        // `attempts` is an `integer`; the rest are `bigint`s.
        match self.try_get::<_, i64>(column) {
            Ok(value) => Ok(value),
            Err(_) => self.try_get::<_, i32>(column).map(i64::from),
        }
    }

    fn optional_int(&self, column: usize) -> Result<Option<i64>, tokio_postgres::Error> {
        self.try_get(column)
    }

    fn text(&self, column: usize) -> Result<String, tokio_postgres::Error> {
        self.try_get(column)
    }

    fn optional_text(&self, column: usize) -> Result<Option<String>, tokio_postgres::Error> {
        self.try_get(column)
    }

    fn blob(&self, column: usize) -> Result<Vec<u8>, tokio_postgres::Error> {
        self.try_get(column)
    }

    fn json(&self, column: usize) -> Result<Option<String>, tokio_postgres::Error> {
        self.try_get::<_, Option<JsonText>>(column)
            .map(|json| json.map(|j| j.0))
    }
}

/// A `json` or `jsonb` value as its text, without a JSON library's types.
struct JsonText(String);

impl<'a> FromSql<'a> for JsonText {
    fn from_sql(
        ty: &Type, raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        // `jsonb` comes as a version byte (1) and then the JSON text.
        let text = if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, text)) => text,
                _ => return Err("an unknown jsonb format".into()),
            }
        } else {
            raw
        };
        Ok(Self(std::str::from_utf8(text)?.to_owned()))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSON | Type::JSONB)
    }
}

impl PostgresInbox {
    /// The default table: `clink_webhook_inbox`.
    pub const DEFAULT_TABLE: &'static str = "clink_webhook_inbox";

    /// An inbox in the default table of `pool`'s database, with the default
    /// per-call timeout (1 s).
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            timeout: DEFAULT_TIMEOUT,
            sql: Arc::new(Sql::new(Self::DEFAULT_TABLE)),
            notified: Arc::new(Notify::new()),
            cancel: super::Canceller::plain(),
            alive: Arc::new(tokio::sync::watch::Sender::new(())),
            listening: Arc::default(),
        }
    }

    /// Sends the cancel of a statement that ran out of time with `tls`,
    /// the connector the pool reaches the database with: a cancel sent
    /// plain where the pool's connections require TLS fails, and the
    /// statement then goes on, and may commit after its caller was told
    /// it timed out (a claim, say, whose lease then holds the event until
    /// it ends). Without it, cancels are sent plain.
    #[must_use]
    pub fn cancel_with(mut self, tls: impl super::PostgresConnector) -> Self {
        self.cancel = super::Canceller::with(tls);
        self
    }

    /// Keeps the inbox in table `name` (`table` or `schema.table`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless each part of `name` is 1 to 48 lowercase
    /// ASCII letters, digits or underscores, not starting with a digit.
    pub fn with_table(mut self, name: &str) -> Result<Self, ConfigError> {
        check_table_name(name)?;
        self.sql = Arc::new(Sql::new(name));
        Ok(self)
    }

    /// Waits at most `timeout` for any one call (default 1 s).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `timeout` is zero or longer than an hour.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.timeout = crate::store::check_timeout(timeout)?;
        Ok(self)
    }

    /// The SQL that creates the table, its indexes and the functions that
    /// claim and settle events (`<table>_claim`, which returns the table's
    /// rows, so drop the table `CASCADE` or that function first; and
    /// `<table>_settle_complete`, `<table>_settle_fail`,
    /// `<table>_settle_release`; versions before these made
    /// `<table>_complete`, `<table>_fail` and `<table>_release`, which none
    /// calls once every instance runs these), and the trigger `<table>_unpark`
    /// with its function of that name, which make an event a claim set
    /// aside due again (see the [claim order](Inbox#claim-order)). The claim's function it makes
    /// reads by due time or in arrival order as the index by due time
    /// exists or not when it runs (see [`migrate`](Self::migrate)).
    #[must_use]
    pub fn schema_sql(&self) -> &str {
        &self.sql.schema
    }

    /// The statements that build the indexes the console's pages, counts
    /// and activity chart read, one each: the events by type, account and
    /// object, each with `seq` (a page is newest first), and by the times
    /// they arrived and were handled. Without them each of those reads
    /// reads the whole table: right for thousands of events, slow for
    /// millions. (The events by status are read through the indexes
    /// [`migrate`](Self::migrate) makes, but for the count of those done,
    /// which are most of the table.) [`migrate`](Self::migrate) does not
    /// make them: each index is written at every insert and at every
    /// change of an event's status, and a receiver without the console
    /// reads none of them.
    ///
    /// Each is `CREATE INDEX CONCURRENTLY IF NOT EXISTS`, which holds no
    /// write back while it reads the table, and must run on its own, not
    /// in a transaction: run them so, or call
    /// [`build_console_indexes`](Self::build_console_indexes). A build that
    /// failed leaves an invalid index, which `IF NOT EXISTS` keeps:
    /// [`build_console_indexes`](Self::build_console_indexes) drops it and
    /// builds it again; by hand, drop it and run its statement again. Each index is named after the table's name
    /// without its schema, as [`migrate`](Self::migrate) names its own.
    #[must_use]
    pub fn console_indexes_sql(&self) -> Vec<String> {
        self.console_indexes()
            .into_iter()
            .map(|(_, statement)| statement)
            .collect()
    }

    /// Each console index's name (schema-qualified as the table is) and
    /// the statement that builds it.
    fn console_indexes(&self) -> Vec<(String, String)> {
        let table = &self.sql.table;
        let t = quote(table);
        [
            ("type_idx", "(event_type, seq)", ""),
            ("account_idx", "(account, seq)", ""),
            ("object_all_idx", "(object_key, seq)", ""),
            ("received_idx", "(received_at_ms)", ""),
            (
                "handled_idx",
                "(handled_at_ms)",
                " WHERE handled_at_ms IS NOT NULL",
            ),
        ]
        .into_iter()
        .map(|(suffix, columns, partial)| {
            let relation = Relation::new(table, suffix);
            let index = relation.index;
            (
                relation.qualified_index,
                format!(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {t} {columns}{partial}"
                ),
            )
        })
        .collect()
    }

    /// Builds the indexes of [`console_indexes_sql`](Self::console_indexes_sql),
    /// one after the other, each for as long as it takes (a build reads
    /// the whole table, and holds no write back meanwhile), on a
    /// connection of its own taken out of the pool, with its statement
    /// timeout off. An index already built is only looked up, and one
    /// another session is building is left to it; one whose build failed
    /// (invalid, and built by none) is dropped and built again. Call it
    /// after [`migrate`](Self::migrate), once or on every start.
    ///
    /// While a build runs, a [`migrate`](Self::migrate) that must change
    /// the table (a newer version's, adding a column) waits for it, past
    /// its timeout: upgrade once no build is under way.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the database refuses a statement (the indexes
    /// before it are built) or cannot be reached, or an index is left
    /// invalid.
    pub async fn build_console_indexes(&self) -> Result<(), StoreError> {
        let failed = |what: &'static str| move |err: tokio_postgres::Error| pg_error(what, &err);
        let client = deadpool_postgres::Object::take(self.pool.get().await.map_err(pool_error)?);
        client
            .batch_execute("SET statement_timeout = 0")
            .await
            .map_err(failed("cannot lift the statement timeout"))?;
        let state = async |index: &str| -> Result<Option<(bool, bool)>, StoreError> {
            let row = client
                .query_opt(
                    "SELECT i.indisvalid, EXISTS (SELECT 1 FROM pg_stat_progress_create_index p
                                                  WHERE p.index_relid = i.indexrelid)
                     FROM pg_index i WHERE i.indexrelid = to_regclass($1)",
                    &[&index],
                )
                .await
                .map_err(failed("cannot look an index of the console's up"))?;
            Ok(row.map(|row| (row.get(0), row.get(1))))
        };
        for (index, statement) in self.console_indexes() {
            match state(&index).await? {
                Some((true, _) | (false, true)) => continue,
                Some((false, false)) => {
                    tracing::warn!(
                        index = %index,
                        "inbox: an index of the console's was left invalid by a build that \
                         failed; dropping it and building it again"
                    );
                    client
                        .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
                        .await
                        .map_err(failed("cannot drop an invalid index of the console's"))?;
                }
                None => {}
            }
            client
                .batch_execute(&statement)
                .await
                .map_err(failed("cannot build an index of the console's"))?;
            if state(&index).await? == Some((false, false)) {
                return Err(StoreError::new(
                    crate::store::StoreErrorKind::Unavailable,
                    format!("the console's index {index} was left invalid"),
                ));
            }
        }
        Ok(())
    }

    /// Creates the table and its indexes if they do not exist (or adds the
    /// columns a newer version of this crate needs), and creates or replaces
    /// the functions that claim and settle events
    /// ([`schema_sql`](Self::schema_sql)). Run it again after upgrading this
    /// crate.
    ///
    /// Safe to run from several instances at once, and while others use the
    /// table, as every start of an instance does: when the table, its
    /// columns, its indexes and its trigger all exist it only looks them up
    /// and replaces the functions, taking no lock on the table that would queue behind
    /// open transactions (and every delivery behind it); when one of the two
    /// indexes below is missing, it also reads whether the table is empty.
    /// When it must change the table, it waits for the table's lock no
    /// longer than the per-call timeout ([`with_timeout`](Self::with_timeout)),
    /// so that deliveries are held up no longer than that, and fails if it
    /// cannot take it by then.
    ///
    /// Two indexes are made with the table, or by a migration that finds
    /// the table empty (and no write under way: it asks for the lock
    /// without waiting), never by one that would read a table in use
    /// (building an index holds writes back while PostgreSQL reads the
    /// whole table): the index of dead events (`_dead_idx` after the
    /// table's name), which lets [`stats`](Inbox::stats) read only the
    /// events not done, and the index of the live events by when each is
    /// due (`_due_idx`: a waiting event's next attempt, a running one's
    /// lease end), which lets a claim read only the events due (see
    /// [Claim order](Inbox#claim-order)). On a table made before them, the
    /// counts read the whole table and a claim reads the live events in
    /// arrival order, reading every retry not due yet on every claim, as
    /// they did, until they are built without holding writes back, each
    /// statement on its own (for a table of another name, each index is
    /// named after the table's name without its schema, and goes `ON` the
    /// table as configured: for `app.inbox`, `"inbox_due_idx" ON app.inbox`):
    ///
    /// ```sql
    /// CREATE INDEX CONCURRENTLY IF NOT EXISTS "clink_webhook_inbox_dead_idx"
    ///     ON clink_webhook_inbox (seq) WHERE status = 'dead';
    /// CREATE INDEX CONCURRENTLY IF NOT EXISTS "clink_webhook_inbox_due_idx"
    ///     ON clink_webhook_inbox
    ///     ((CASE WHEN status = 'running' THEN lease_until_ms ELSE next_attempt_ms END), seq)
    ///     WHERE status IN ('pending', 'retrying', 'running');
    /// ```
    ///
    /// The claim reads by due time from the next migration after the index
    /// by due time is built (every instance migrates as it starts): each
    /// migration makes the claim's function read by due time when that
    /// index exists in this shape and is valid as it runs, and in arrival
    /// order otherwise, logging a warning then. A build `CONCURRENTLY` that failed leaves an invalid
    /// index, which `IF NOT EXISTS` keeps: drop it and build it again. An
    /// instance of an earlier version that starts may make the claim read
    /// in arrival order again, until an instance of this one starts.
    ///
    /// A migration that runs out of time, or whose caller stops waiting for
    /// it, is cancelled on the server and its connection closed, as every
    /// call of the inbox's is: nothing it left running waits on a lock.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the database refuses or does not answer, or
    /// the table stays locked by others past the per-call timeout (another
    /// instance's migration of the table is waited for, up to 15 seconds).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        timed(self.timeout.max(MIGRATE_TIMEOUT), async {
            let client = self.pool.get().await.map_err(pool_error)?;
            super::guarded(client, &self.cancel, async |client| {
                let current: bool = client
                    .query_typed_one(&self.sql.current, &[])
                    .await
                    .and_then(|row| row.try_get(0))
                    .map_err(|err| pg_error("cannot look the table up", &err))?;
                let sql = if current {
                    &self.sql.functions
                } else {
                    &self.sql.schema
                };
                create_tables(client, &self.sql.table, sql, self.timeout).await?;
                let by_due: bool = client
                    .query_typed_one(&self.sql.reads_by_due, &[])
                    .await
                    .and_then(|row| row.try_get(0))
                    .map_err(|err| pg_error("cannot look the claim's index up", &err))?;
                if !by_due {
                    tracing::warn!(
                        table = %self.sql.table,
                        "inbox: the claim reads the events in arrival order, passing over every \
                         retry not due yet on each claim, until the table's index by due time is \
                         built (see PostgresInbox::migrate) and the inbox migrated again"
                    );
                }
                Ok(())
            })
            .await
        })
        .await
    }

    /// Opens a connection of its own with `config`, without TLS, and
    /// `LISTEN`s on the inbox's channel, so that an idle worker wakes at
    /// each insert instead of polling. Call it inside a Tokio runtime. A
    /// pool that reaches the database over TLS listens with
    /// [`listen_with`](Self::listen_with) and the same connector.
    ///
    /// Should that connection drop (a restart, a failover, a proxy that
    /// cuts it), it is made again, after 1 s and then at twice the wait
    /// each time up to 30 s, until the inbox and its clones are dropped
    /// (which ends the connection too); idle workers poll every 250 ms
    /// meanwhile. A drop is logged at `warn`, at most once an hour (at
    /// `debug` between: a server that ends idle sessions ends this one at
    /// each of its periods). The connection's TCP keepalives, where
    /// `config` leaves them at their defaults, are sent after 30 s of
    /// quiet, every 10 s, three times, so that a peer gone without a word
    /// is found within about a minute, not the system's two hours.
    ///
    /// One connection is kept for the inbox and its clones: a later call
    /// does nothing and answers `Ok` (to listen with another config, make
    /// the inbox again).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the first connection or `LISTEN` fails; it
    /// is tried again in the background all the same, as after a drop (a
    /// failure that goes on is logged at `warn` at most once an hour).
    pub async fn listen(&self, config: tokio_postgres::Config) -> Result<(), StoreError> {
        self.listen_with(config, tokio_postgres::NoTls).await
    }

    /// As [`listen`](Self::listen), connecting with `tls` (the connector
    /// the inbox's pool uses, say), as `config`'s `sslmode` asks.
    ///
    /// # Errors
    ///
    /// As [`listen`](Self::listen).
    pub async fn listen_with(
        &self, mut config: tokio_postgres::Config, tls: impl super::PostgresConnector,
    ) -> Result<(), StoreError> {
        if self
            .listening
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(());
        }
        if config.get_keepalives_idle() == Duration::from_secs(7200) {
            config.keepalives_idle(LISTEN_KEEPALIVE_IDLE);
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(LISTEN_KEEPALIVE_INTERVAL);
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(LISTEN_KEEPALIVE_RETRIES);
        }
        let listener = Listener {
            config,
            listen: format!("LISTEN \"{}\"", self.sql.channel),
            notified: Arc::downgrade(&self.notified),
            gone: self.alive.subscribe(),
            timeout: self.timeout,
        };
        let first = listener.once(tls.clone()).await;
        let (result, listening) = match first {
            Ok(listening) => (Ok(()), Some(listening)),
            Err(error) => (Err(error), None),
        };
        let table = self.sql.table.clone();
        tokio::spawn(listener.keep(tls, listening, table));
        result
    }

    /// Marks the event of `attempt` (from
    /// [`Event::inbox_attempt`](crate::Event::inbox_attempt), in a handler
    /// that workers over this inbox run) done inside `tx`, the handler's own
    /// transaction, so that its writes and the event's completion commit
    /// together or not at all: the handler's effects happen exactly once.
    ///
    /// Commit only on [`Settle::Applied`]. [`Settle::LeaseLost`] means the
    /// event's lease ended and another worker took it over: roll back
    /// (drop the transaction) and return an error, or its effects would
    /// commit twice. When the handler returns an error (a failed commit
    /// included), the workers record the failed attempt as for any other
    /// handler (its error, the next attempt's time, dead after the last);
    /// if the completion did commit, that changes nothing. A handler that
    /// returns `Ok` without committing leaves the event claimed until its
    /// lease ends; it then runs again.
    ///
    /// For an event about an object, the completion also takes that
    /// object's advisory lock (to make the next of its events due: see the
    /// [claim order](Inbox#claim-order)), held until the transaction ends:
    /// commit soon after, as below, for the other settles and claims of
    /// that object wait on it (the completion's own wait for it is bounded
    /// as a row's is). Run it at PostgreSQL's default isolation, `READ COMMITTED`:
    /// at a stricter one, the completion reads the table as the
    /// transaction began, and can fail with a serialization error when
    /// another event of the object changed meanwhile (the effects roll
    /// back, and the event runs again).
    ///
    /// ```no_run
    /// use clink_webhooks::data::Order;
    /// use clink_webhooks::store::{PostgresInbox, Settle};
    /// use clink_webhooks::Event;
    ///
    /// # async fn handler(event: Event<Order>, inbox: PostgresInbox, pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// // Inside a handler run by inbox::Workers over this inbox:
    /// let attempt = event.inbox_attempt().ok_or("not run by the inbox's workers")?;
    /// let mut client = pool.get().await?;
    /// // Dropped without a commit (any `?` below), it rolls back.
    /// let tx = client.transaction().await?;
    /// tx.execute("INSERT INTO paid_orders (order_id) VALUES ($1)", &[&event.data.order_id]).await?;
    /// match inbox.complete_in(&tx, attempt).await? {
    ///     Settle::Applied => tx.commit().await?,
    ///     Settle::LeaseLost => return Err("the event's lease ended; rolled back".into()),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the statement fails; roll the transaction back.
    /// A wait for a row another transaction holds ends at the store's
    /// timeout, ended by the server (`lock_timeout`, for this statement
    /// alone), with [`StoreErrorKind::Timeout`](crate::store::StoreErrorKind::Timeout);
    /// an answer that does not come within twice the timeout (the
    /// connection stalled) is a timeout too, its statement perhaps still
    /// running: drop that connection rather than hand it back to its pool.
    /// So too one whose error is a
    /// [`spent_connection`](crate::store::StoreError::spent_connection)
    /// (`25006`, a standby's: it reaches a primary since demoted; or the
    /// server going away), which would fail every transaction it is given.
    pub async fn complete_in(
        &self, tx: &tokio_postgres::Transaction<'_>, attempt: &InboxAttempt,
    ) -> Result<Settle, StoreError> {
        let seq = attempt.seq();
        let token = attempt.token();
        let changed = timed(
            self.timeout.saturating_mul(2),
            super::lock_wait_within(tx, self.timeout, async {
                tx.query_typed(
                    &self.sql.complete,
                    &[(&seq, Type::INT8), (&token, Type::TEXT)],
                )
                .await
                .and_then(|rows| settled(&rows))
                .map_err(|err| pg_error("cannot mark the event done", &err))
            }),
        )
        .await?;
        if changed == 1 {
            attempt.mark_completed();
            Ok(Settle::Applied)
        } else {
            Ok(Settle::LeaseLost)
        }
    }

    async fn call<T>(
        &self, call: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        super::pooled(&self.pool, self.timeout, &self.cancel, call).await
    }

    async fn settle(
        &self, sql: &str, claim: &InboxClaim, extra: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Settle, StoreError> {
        let token = claim.token.as_str();
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> =
            vec![(&claim.entry.seq, Type::INT8), (&token, Type::TEXT)];
        params.extend_from_slice(extra);
        self.call(async |client| {
            let changed = client
                .query_typed(sql, &params)
                .await
                .and_then(|rows| settled(&rows))
                .map_err(|err| pg_error("cannot settle the event", &err))?;
            Ok(Settle::applied_if(changed == 1))
        })
        .await
    }
}

impl PostgresInbox {
    /// Keeps `event` as `pending`, or as `dead` with `error`.
    async fn keep(
        &self, event: &NewEvent, dead_with: Option<&str>,
    ) -> Result<Inserted, StoreError> {
        {
            crate::store::check_text("the event id", &event.event_id)?;
            // PostgreSQL's `text` takes no NUL: a verified body can still
            // carry one in its type or its object's id (`\u0000`), and an
            // error can quote it. Those columns are for lists, filters and
            // the order per object; the body, which workers read, is kept
            // byte for byte.
            let event_type = without_nul(&event.event_type);
            let object_key = event.object_key.as_deref().map(without_nul);
            let signing_key = event.signing_key.as_deref().map(without_nul);
            let dead_with = dead_with.map(without_nul);
            let account = event.account.clone().unwrap_or_default();
            let created = event.created.map(Timestamp::as_millis);
            let order = order_key(event).0;
            let signed = event.signed_at.as_millis();
            let received = event.received_at.as_millis();
            let arrived = offset_from_now(event.received_at);
            let body: &[u8] = &event.body;
            let headers = event.signature_headers.as_ref();
            let header_timestamp = headers.map(|h| h.timestamp.as_str());
            let header_signature = headers.map(|h| h.signature.as_str());
            let inserted = self
                .call(async |client| {
                    client
                        .query_typed(
                            &self.sql.insert,
                            &[
                                (&account, Type::TEXT),
                                (&event.event_id, Type::TEXT),
                                (&event_type, Type::TEXT),
                                (&created, Type::INT8),
                                (&order, Type::INT8),
                                (&object_key, Type::TEXT),
                                (&signed, Type::INT8),
                                (&received, Type::INT8),
                                (&body, Type::BYTEA),
                                (&self.sql.channel, Type::TEXT),
                                (&signing_key, Type::TEXT),
                                (&dead_with, Type::TEXT),
                                (&header_timestamp, Type::TEXT),
                                (&header_signature, Type::TEXT),
                                (&arrived, Type::INT8),
                            ],
                        )
                        .await
                        .map_err(|err| pg_error("cannot keep the event", &err))
                })
                .await?;
            Ok(Inserted::new_if(!inserted.is_empty()))
        }
    }
}

impl PostgresInbox {
    /// A page of the events `filter` matches, by `sql` (a page statement of
    /// [`browse`]), each row read by `read`, newest first.
    async fn paged<T>(
        &self, filter: &InboxFilter, start: PageStart, limit: usize, sql: String,
        read: fn(&tokio_postgres::Row) -> Result<T, tokio_postgres::Error>,
    ) -> Result<Vec<T>, StoreError> {
        let f = filter.params();
        let bound = browse::page_bound(start);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .call(async |client| {
                client
                    .query_typed(
                        &sql,
                        &with_filter(&f, [(&bound, Type::INT8), (&limit, Type::INT8)]),
                    )
                    .await
                    .map_err(|err| pg_error("cannot list the inbox", &err))
            })
            .await?;
        let mut page = rows
            .iter()
            .map(read)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| pg_error("cannot read an event", &err))?;
        if matches!(start, PageStart::After(_)) {
            page.reverse();
        }
        Ok(page)
    }

    /// Deletes the events in `status` that settled before `before`, in
    /// steps (see [`Inbox::purge`]); how many.
    fn purge_status(
        &self, before: Timestamp, status: &'static str,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let offset = offset_from_now(before);
            let span = self
                .call(async |client| {
                    let failed = |err| pg_error("cannot purge the inbox", &err);
                    let row = client
                        .query_typed_one(&self.sql.purge_span, &[(&offset, Type::INT8)])
                        .await
                        .map_err(failed)?;
                    let span = row
                        .try_get::<_, Option<i64>>(0)
                        .map_err(failed)?
                        .zip(row.try_get::<_, Option<i64>>(1).map_err(failed)?);
                    Ok(span.zip(row.try_get::<_, Option<i64>>(2).map_err(failed)?))
                })
                .await?;
            let Some(((oldest, newest), before)) = span else {
                return Ok(0);
            };
            purge_in_steps(oldest, newest, |from| {
                self.call(async move |client| {
                    let failed = |err| pg_error("cannot purge the inbox", &err);
                    let rows = client
                        .query_typed(
                            &self.sql.purge,
                            &[
                                (&before, Type::INT8),
                                (&from, Type::INT8),
                                (&newest, Type::INT8),
                                (&status, Type::TEXT),
                            ],
                        )
                        .await
                        .map_err(failed)?;
                    // One row, always: two aggregates.
                    let Some(row) = rows.first() else {
                        return Ok((None, 0));
                    };
                    let last = row.try_get::<_, Option<i64>>(0).map_err(failed)?;
                    let deleted = row.try_get::<_, i64>(1).map_err(failed)?;
                    Ok((last, deleted.unsigned_abs()))
                })
            })
            .await
        })
    }
}

impl Inbox for PostgresInbox {
    fn insert<'a>(&'a self, event: &'a NewEvent) -> BoxFuture<'a, Result<Inserted, StoreError>> {
        Box::pin(self.keep(event, None))
    }

    fn insert_dead<'a>(
        &'a self, event: &'a NewEvent, error: &'a str,
    ) -> BoxFuture<'a, Result<Inserted, StoreError>> {
        Box::pin(self.keep(event, Some(error)))
    }

    fn claim(
        &self, lease: Duration, reorder_window: Duration,
    ) -> BoxFuture<'_, Result<Option<InboxClaim>, StoreError>> {
        Box::pin(async move {
            let (lease_ms, window_ms) = (ms(lease), ms(reorder_window));
            let token = LeaseToken::generate();
            let token_text = token.as_str().to_owned();
            let row = self
                .call(async |client| {
                    client
                        .query_typed(
                            &self.sql.claim,
                            &[
                                (&lease_ms, Type::INT8),
                                (&window_ms, Type::INT8),
                                (&token_text, Type::TEXT),
                            ],
                        )
                        .await
                        .map_err(|err| pg_error("cannot take an event", &err))
                })
                .await?;
            let Some(row) = row.first() else {
                return Ok(None);
            };
            let entry = match read_entry(row) {
                Ok(entry) => entry,
                // The claim has committed: a row no worker can read (a
                // column's type changed by hand, text not UTF-8 in a
                // `SQL_ASCII` database) would be taken over at each lease's
                // end, for ever, and hold back every later event of its
                // object: it is dead, saying why, found by its token.
                Err(err) => {
                    // Its number is a `bigserial`, which reads whatever
                    // else does not.
                    let seq = row
                        .try_get::<_, i64>(0)
                        .map_err(|err| pg_error("cannot read the event", &err))?;
                    let error = without_nul(&format!(
                        "dead: its stored row cannot be read ({err}); mend it, then replay it"
                    ))
                    .into_owned();
                    let changed = self
                        .call(async |client| {
                            client
                                .execute_typed(
                                    &self.sql.unreadable,
                                    &[
                                        (&seq, Type::INT8),
                                        (&token_text, Type::TEXT),
                                        (&error, Type::TEXT),
                                    ],
                                )
                                .await
                                .map_err(|err| pg_error("cannot take an event", &err))
                        })
                        .await?;
                    // Not changed: its lease ended first, and another
                    // claim took it (which makes it dead in turn).
                    if changed == 1 {
                        tracing::error!(
                            seq,
                            "inbox: an event's stored row cannot be read; it is dead"
                        );
                        crate::store::inbox_trait::count_unreadable_dead();
                    }
                    wake_another(&self.notified);
                    return Ok(None);
                }
            };
            wake_another(&self.notified);
            Ok(Some(InboxClaim { entry, token }))
        })
    }

    fn complete<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(self.settle(&self.sql.complete, claim, &[]))
    }

    fn fail<'a>(
        &'a self, claim: &'a InboxClaim, error: &'a str, retry_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(async move {
            let retry = retry_at.map(offset_from_now);
            let error = without_nul(error);
            let kept = bounded_error(&error);
            self.settle(
                &self.sql.fail,
                claim,
                &[
                    (&retry, Type::INT8),
                    (&error, Type::TEXT),
                    (&kept, Type::TEXT),
                ],
            )
            .await
        })
    }

    fn release<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(self.settle(&self.sql.release, claim, &[]))
    }

    fn list<'a>(
        &'a self, filter: &'a InboxFilter, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
        Box::pin(async move {
            let f = filter.params();
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = self
                .call(async |client| {
                    client
                        .query_typed(&self.sql.list, &with_filter(&f, [(&limit, Type::INT8)]))
                        .await
                        .map_err(|err| pg_error("cannot list the inbox", &err))
                })
                .await?;
            rows.iter()
                .map(read_entry)
                .collect::<Result<_, _>>()
                .map_err(|err| pg_error("cannot read an event", &err))
        })
    }

    fn get(&self, seq: i64) -> BoxFuture<'_, Result<Option<InboxEntry>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .call(async |client| {
                    client
                        .query_typed(&self.sql.get, &[(&seq, Type::INT8)])
                        .await
                        .map_err(|err| pg_error("cannot read the event", &err))
                })
                .await?;
            rows.first()
                .map(read_entry)
                .transpose()
                .map_err(|err| pg_error("cannot read the event", &err))
        })
    }

    fn replay(&self, seq: i64, force: bool) -> BoxFuture<'_, Result<Replayed, StoreError>> {
        Box::pin(async move {
            let rows = self
                .call(async |client| {
                    client
                        .query_typed(
                            &self.sql.replay,
                            &[(&seq, Type::INT8), (&force, Type::BOOL)],
                        )
                        .await
                        .map_err(|err| pg_error("cannot replay the event", &err))
                })
                .await?;
            let Some(row) = rows.first() else {
                return Ok(Replayed::Missing);
            };
            let read = || -> Result<(String, Option<i64>, i64), tokio_postgres::Error> {
                Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
            };
            let (status, handled, replayed) =
                read().map_err(|err| pg_error("cannot replay the event", &err))?;
            if replayed == 1 {
                // A worker of this process waiting for work runs it now;
                // another process's, at its next look.
                wake_another(&self.notified);
            }
            Ok(match status.as_str() {
                _ if replayed == 1 => Replayed::Replayed,
                "running" => Replayed::Running,
                _ => Replayed::Handled {
                    at: handled.map(Timestamp::from_millis),
                },
            })
        })
    }

    fn replay_if<'a>(
        &'a self, seq: i64, pin: &'a ReplayPin,
    ) -> BoxFuture<'a, Result<Replayed, StoreError>> {
        Box::pin(async move {
            let (status, replays) = (pin.status.as_str(), i64::from(pin.replays));
            let handled = pin.handled_at.map(Timestamp::as_millis);
            let rows = self
                .call(async |client| {
                    client
                        .query_typed(
                            &self.sql.replay_if,
                            &[
                                (&seq, Type::INT8),
                                (&status, Type::TEXT),
                                (&replays, Type::INT8),
                                (&handled, Type::INT8),
                            ],
                        )
                        .await
                        .map_err(|err| pg_error("cannot replay the event", &err))
                })
                .await?;
            let Some(row) = rows.first() else {
                return Ok(Replayed::Missing);
            };
            let read = || -> Result<(i64, String, i64, Option<i64>), tokio_postgres::Error> {
                Ok((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.int(2)?,
                    row.try_get(3)?,
                ))
            };
            let (replayed, status, replays, handled) =
                read().map_err(|err| pg_error("cannot replay the event", &err))?;
            Ok(if replayed == 1 {
                wake_another(&self.notified);
                Replayed::Replayed
            } else {
                pin.unreplayed(Some((&status, replays, handled)))
            })
        })
    }

    fn replay_matching<'a>(
        &'a self, filter: &'a InboxFilter, force: bool,
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        Box::pin(async move {
            let f = filter.params();
            let failed = |err| pg_error("cannot replay the events", &err);
            // In steps of PURGE_STEP events, each a statement of its own
            // under the store's timeout, as a purge goes: one statement over
            // a large backlog ran past the timeout, and was rolled back,
            // every time.
            let mut seqs = Vec::new();
            let mut after = i64::MIN;
            let mut steps = 0_u32;
            loop {
                let row = self
                    .call(async |client| {
                        client
                            .query_typed(
                                &self.sql.replay_matching,
                                &with_filter(&f, [(&force, Type::BOOL), (&after, Type::INT8)]),
                            )
                            .await
                            .map_err(failed)
                    })
                    .await?;
                // One row, always: two aggregates.
                let Some(row) = row.first() else { break };
                let last = row.try_get::<_, Option<i64>>(0).map_err(failed)?;
                let replayed = row.try_get::<_, Option<Vec<i64>>>(1).map_err(failed)?;
                seqs.extend(replayed.unwrap_or_default());
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
            if !seqs.is_empty() {
                wake_another(&self.notified);
            }
            Ok(seqs)
        })
    }

    fn check_writable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let now = Timestamp::now().as_millis();
            self.call(async |client| {
                client
                    .execute_typed(&self.sql.writable, &[(&now, Type::INT8)])
                    .await
                    .map(drop)
                    .map_err(|err| pg_error("cannot write to the inbox", &err))
            })
            .await
        })
    }

    fn purge(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.purge_status(before, "done")
    }

    fn purge_dead(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.purge_status(before, "dead")
    }

    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>> {
        Box::pin(async move {
            let rows = self
                .call(async |client| {
                    client
                        .query_typed(&self.sql.stats, &[])
                        .await
                        .map_err(|err| pg_error("cannot count the inbox", &err))
                })
                .await?;
            let mut stats = InboxStats::default();
            for row in &rows {
                let read = || -> Result<(String, i64, Option<i64>, i64), tokio_postgres::Error> {
                    Ok((
                        row.try_get(0)?,
                        row.try_get(1)?,
                        row.try_get(2)?,
                        row.try_get(3)?,
                    ))
                };
                let (status, count, oldest, due) =
                    read().map_err(|err| pg_error("cannot count the inbox", &err))?;
                stats.add_row(&status, count, oldest, due);
            }
            Ok(stats)
        })
    }

    fn wait(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        wait_for(&self.notified, timeout)
    }

    fn call_timeout(&self) -> Duration {
        self.timeout
    }

    fn record_receipt<'a>(
        &'a self, attempt: &'a InboxAttempt, receipt: &'a str,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(async move {
            let (seq, token) = (attempt.seq(), attempt.token());
            let changed = self
                .call(async |client| {
                    client
                        .execute_typed(
                            &self.sql.receipt,
                            &[
                                (&seq, Type::INT8),
                                (&token, Type::TEXT),
                                (&receipt, Type::TEXT),
                            ],
                        )
                        .await
                        .map_err(|err| pg_error("cannot record the receipt", &err))
                })
                .await?;
            Ok(Settle::applied_if(changed == 1))
        })
    }

    fn page<'a>(
        &'a self, filter: &'a InboxFilter, start: PageStart, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
        let sql = browse::page(&quote(&self.sql.table), '$', start, None);
        Box::pin(self.paged(filter, start, limit, sql, read_entry))
    }

    fn page_summaries<'a>(
        &'a self, filter: &'a InboxFilter, start: PageStart, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxSummary>, StoreError>> {
        let sql = browse::summary_page(&quote(&self.sql.table), '$', start, None);
        Box::pin(self.paged(filter, start, limit, sql, read_summary))
    }

    fn count<'a>(&'a self, filter: &'a InboxFilter) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let f = filter.params();
            let sql = browse::count(&quote(&self.sql.table), '$', None);
            let rows = self
                .call(async |client| {
                    client
                        .query_typed(&sql, &with_filter(&f, []))
                        .await
                        .map_err(|err| pg_error("cannot count the inbox", &err))
                })
                .await?;
            let count = rows
                .first()
                .map(|row| row.try_get::<_, i64>(0))
                .transpose()
                .map_err(|err| pg_error("cannot count the inbox", &err))?;
            Ok(count.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
        })
    }

    fn activity(
        &self, since: Timestamp, interval: Duration, intervals: usize,
    ) -> BoxFuture<'_, Result<InboxActivity, StoreError>> {
        Box::pin(async move {
            let mut activity = InboxActivity::new(since, interval, intervals);
            let (from, step, until) = (
                since.as_millis(),
                activity.interval_ms(),
                activity.until().as_millis(),
            );
            let sql = browse::activity(&quote(&self.sql.table), '$');
            let rows = self
                .call(async |client| {
                    client
                        .query_typed(
                            &sql,
                            &[
                                (&from, Type::INT8),
                                (&step, Type::INT8),
                                (&until, Type::INT8),
                            ],
                        )
                        .await
                        .map_err(|err| pg_error("cannot count the inbox", &err))
                })
                .await?;
            for row in &rows {
                let read = || -> Result<(i64, i64, i64), tokio_postgres::Error> {
                    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
                };
                let (kind, slot, count) =
                    read().map_err(|err| pg_error("cannot count the inbox", &err))?;
                activity.add(kind == 1, slot, u64::try_from(count).unwrap_or(0));
            }
            Ok(activity)
        })
    }
}

/// The quiet time after which the listening connection's TCP keepalives
/// start, unless its config sets its own.
const LISTEN_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// The time between the listening connection's keepalives.
const LISTEN_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How many keepalives go unanswered before the connection is given up.
const LISTEN_KEEPALIVE_RETRIES: u32 = 3;

/// The first wait before the listening connection is made again.
const LISTEN_RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between two tries to make it again.
const LISTEN_RETRY_MOST: Duration = Duration::from_secs(30);

/// How often a drop of the listening connection is logged at `warn`.
const LISTEN_WARN_EVERY: Duration = Duration::from_secs(3600);

/// What the listening connection is made of, and what ends it.
struct Listener {
    config: tokio_postgres::Config,
    /// The `LISTEN` statement.
    listen: String,
    /// The inbox's wake-ups, while it lives.
    notified: std::sync::Weak<Notify>,
    /// Ends (with an error) once the inbox and its clones are dropped.
    gone: tokio::sync::watch::Receiver<()>,
    timeout: Duration,
}

/// A listening connection: its client, kept as long as the connection is
/// to stay open, and a receiver that ends when the connection does.
type Listening = (tokio_postgres::Client, tokio::sync::oneshot::Receiver<()>);

impl Listener {
    /// Connects and runs `LISTEN`, waking the inbox's workers at each
    /// notification until the connection or the inbox ends.
    async fn once(&self, tls: impl super::PostgresConnector) -> Result<Listening, StoreError> {
        let (client, mut connection) = timed(self.timeout, async {
            self.config
                .connect(tls)
                .await
                .map_err(|err| pg_error("cannot connect to listen", &err))
        })
        .await?;
        let notified = self.notified.clone();
        let mut gone = self.gone.clone();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = std::future::poll_fn(|cx| connection.poll_message(cx)) => message,
                    _ = gone.changed() => break,
                };
                match message {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                        match notified.upgrade() {
                            Some(notified) => notified.notify_one(),
                            None => break,
                        }
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => break,
                }
            }
            let _ = closed_tx.send(());
        });
        timed(self.timeout, async {
            client
                .batch_execute(&self.listen)
                .await
                .map_err(|err| pg_error("cannot LISTEN", &err))
        })
        .await?;
        Ok((client, closed_rx))
    }

    /// Keeps a connection listening (`listening`, when there is one) until
    /// the inbox is dropped: each time it ends, another is made.
    async fn keep(
        mut self, tls: impl super::PostgresConnector, mut listening: Option<Listening>,
        table: String,
    ) {
        // When a drop or a failure was last told at `warn`: at most once an
        // hour, so that a server that ends idle sessions, or a cause that
        // lasts, does not fill the log.
        let mut warned: Option<tokio::time::Instant> = None;
        let mut loud = || {
            let now = tokio::time::Instant::now();
            let due = warned.is_none_or(|at| now.duration_since(at) >= LISTEN_WARN_EVERY);
            if due {
                warned = Some(now);
            }
            due
        };
        // Whether the connection's loss was told at `warn` (its return is
        // then told at `info`); the caller told a first failure.
        let mut told = listening.is_none() && loud();
        loop {
            if let Some((client, closed)) = listening.take() {
                tokio::select! {
                    _ = closed => {}
                    _ = self.gone.changed() => return,
                }
                drop(client);
                if self.notified.strong_count() == 0 {
                    return;
                }
                told = loud();
                if told {
                    tracing::warn!(
                        %table,
                        "inbox: the connection that listens for inserts closed; it is made \
                         again, and idle workers poll every 250 ms meanwhile"
                    );
                } else {
                    tracing::debug!(%table, "inbox: the connection that listens for inserts closed");
                }
            }
            let mut pause = LISTEN_RETRY_FIRST;
            while listening.is_none() {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = self.gone.changed() => return,
                }
                match self.once(tls.clone()).await {
                    Ok(made) => {
                        if told {
                            tracing::info!(%table, "inbox: listening for inserts again");
                        } else {
                            tracing::debug!(%table, "inbox: listening for inserts again");
                        }
                        listening = Some(made);
                    }
                    Err(error) => {
                        if loud() {
                            told = true;
                            tracing::warn!(
                                %table,
                                %error,
                                "inbox: cannot listen for inserts yet; idle workers poll every \
                                 250 ms meanwhile"
                            );
                        } else {
                            tracing::debug!(%table, %error, "inbox: cannot listen for inserts yet");
                        }
                        pause = (pause * 2).min(LISTEN_RETRY_MOST);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Sql, ADDED_COLUMNS};

    /// The counts of `stats` (every few seconds for the metrics, and for
    /// each health probe) read the events still to run and the dead ones
    /// through their indexes, never the done ones kept beside them: on an
    /// inbox of 20,000 done events and a few others, the plan has no
    /// sequential scan, and the counts are right.
    /// An inbox in a table of its own named `{prefix}_<random>`, migrated,
    /// on the suite's server; its pool, and the table's name.
    async fn private_inbox(
        prefix: &str,
    ) -> (crate::store::PostgresInbox, deadpool_postgres::Pool, String) {
        let url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL is not set: run scripts/test, which starts PostgreSQL");
        let config: tokio_postgres::Config = url.parse().unwrap();
        let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
            config,
            tokio_postgres::NoTls,
        ))
        .max_size(2)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .unwrap();
        let table = format!(
            "{prefix}_{}",
            &crate::store::LeaseToken::generate().as_str()[..12]
        );
        let inbox = crate::store::PostgresInbox::new(pool.clone())
            .with_table(&table)
            .unwrap();
        inbox.migrate().await.unwrap();
        (inbox, pool, table)
    }

    /// An instance starting while another migrates the table waits its
    /// turn past its per-call timeout (up to 15 s, half the time a
    /// migration is given). Before, it failed once that timeout ended ("cannot take the
    /// migration lock"), and the instance did not start.
    #[tokio::test]
    async fn a_migration_waits_its_turn_past_the_call_timeout() {
        use std::time::Duration;

        let (inbox, pool, table) = private_inbox("migrate_turn").await;
        let timeout = Duration::from_millis(200);
        let inbox = inbox.with_timeout(timeout).unwrap();
        let mut holder = pool.get().await.unwrap();
        let turn = holder.transaction().await.unwrap();
        turn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&table])
            .await
            .unwrap();
        let migrating = tokio::spawn(async move { inbox.migrate().await });
        let url = std::env::var("DATABASE_URL").unwrap();
        let (watcher, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        // Until the migration has waited for its turn five times its
        // timeout, by the server's clock, or has given up.
        loop {
            let waited: i64 = watcher
                .query_one(
                    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - a.query_start)
                                         * 1000), -1)::bigint
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                     WHERE l.locktype = 'advisory' AND NOT l.granted
                       AND l.objid::bigint = (hashtext($1)::bigint & 4294967295)",
                    &[&table],
                )
                .await
                .unwrap()
                .get(0);
            if migrating.is_finished() || waited > 5 * 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        turn.commit().await.unwrap();
        let migrated = migrating.await.unwrap();
        assert!(migrated.is_ok(), "{migrated:?}");
    }

    /// A completion inside the handler's transaction after the claim's
    /// lease ended applies while no other worker took the event over (the
    /// token fences, not the clock), and settles nothing once one did.
    #[tokio::test]
    async fn a_transaction_that_outlived_its_lease_commits_unless_taken_over() {
        use std::time::Duration;

        use crate::store::inbox_trait::outlived::{attempt, claim, taken_over};
        use crate::store::{Inbox, InboxStatus, Settle};

        let (inbox, pool, _table) = private_inbox("outlived").await;
        let lease = Duration::from_millis(20);
        let mut client = pool.get().await.unwrap();

        let outlived = claim(&inbox, "evt_a", lease).await;
        let tx = client.transaction().await.unwrap();
        let settled = inbox.complete_in(&tx, &attempt(&outlived)).await.unwrap();
        assert_eq!(settled, Settle::Applied);
        tx.commit().await.unwrap();
        let done = inbox.get(outlived.entry.seq).await.unwrap().unwrap();
        assert_eq!(done.status, InboxStatus::Done);

        let lost = taken_over(&inbox, "evt_b", lease).await;
        let tx = client.transaction().await.unwrap();
        let settled = inbox.complete_in(&tx, &attempt(&lost)).await.unwrap();
        assert_eq!(settled, Settle::LeaseLost);
        drop(tx);
        let running = inbox.get(lost.entry.seq).await.unwrap().unwrap();
        assert_eq!(running.status, InboxStatus::Running);
    }

    /// A settle in the app's own transaction locks no other row of its
    /// object but one set aside: the next event, due and not set aside,
    /// can be read for update (a replay of it, say) while that transaction
    /// is open. Before, the trigger locked the object's oldest event
    /// whatever its state, until the app's transaction ended.
    #[tokio::test]
    async fn a_settle_in_the_apps_transaction_locks_no_event_not_set_aside() {
        use std::time::Duration;

        use bytes::Bytes;

        use crate::store::inbox_trait::outlived::attempt;
        use crate::store::{Inbox, NewEvent, Settle};
        use crate::Timestamp;

        let (inbox, pool, table) = private_inbox("settle_locks").await;
        for id in ["evt_a", "evt_b"] {
            let body = format!(r#"{{"id":"{id}","type":"order.succeeded","data":{{}}}}"#);
            let event = NewEvent::new(
                None,
                id.to_owned(),
                "order.succeeded".to_owned(),
                None,
                Some("order:ord_1".to_owned()),
                Timestamp::now(),
                Timestamp::now(),
                Bytes::from(body),
            );
            inbox.insert(&event).await.unwrap();
        }
        let first = inbox
            .claim(Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap()
            .expect("the oldest is due");
        assert_eq!(first.entry.event.event_id, "evt_a");
        let mut client = pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let settled = inbox.complete_in(&tx, &attempt(&first)).await.unwrap();
        assert_eq!(settled, Settle::Applied);
        let other = pool.get().await.unwrap();
        let locked = other
            .query(
                &format!("SELECT seq FROM \"{table}\" WHERE event_id = 'evt_b' FOR UPDATE NOWAIT"),
                &[],
            )
            .await;
        assert!(
            locked.is_ok(),
            "the next event is locked by the open transaction: {locked:?}"
        );
        tx.commit().await.unwrap();
    }

    /// The console's reads, filtered by one criterion (type, account,
    /// object, status, a time range) and its activity chart, read the
    /// whole table until the console's indexes are built, and only the
    /// rows they match through an index after.
    #[tokio::test]
    async fn the_console_reads_through_its_indexes_once_built() {
        use tokio_postgres::types::Type;

        use super::super::schema::quote;
        use super::{browse, with_filter};
        use crate::store::{InboxFilter, PageStart};
        use crate::Timestamp;

        let (inbox, pool, table) = private_inbox("console_plan").await;
        let client = pool.get().await.unwrap();
        client
            .batch_execute(&format!(
                "INSERT INTO \"{table}\" (account, event_id, event_type, object_key, order_ms,
                                          signed_at_ms, received_at_ms, handled_at_ms, body,
                                          next_attempt_ms, status)
                 SELECT 'acct_' || (g % 500), 'evt_' || g, 'type_' || (g % 500),
                        'order:o' || g, 0, 0, g, g, '\\x', 0,
                        CASE g % 5000 WHEN 0 THEN 'dead' WHEN 1 THEN 'pending' ELSE 'done' END
                 FROM generate_series(1, 20000) AS g;
                 ANALYZE \"{table}\";"
            ))
            .await
            .unwrap();
        let t = quote(&inbox.sql.table);
        let filters = [
            InboxFilter::default().event_type("type_7"),
            InboxFilter::default().account("acct_7"),
            InboxFilter::default().object_key("order:o7"),
            InboxFilter::default().received(
                Some(Timestamp::from_millis(100)),
                Some(Timestamp::from_millis(110)),
            ),
        ];
        let (bound, limit) = (i64::MAX, 50_i64);
        let (from, step, until) = (100_i64, 1_i64, 110_i64);
        let plans = async || {
            let mut plans = Vec::new();
            for filter in &filters {
                let f = filter.params();
                let explain = |sql: String| format!("EXPLAIN {sql}");
                for (sql, params) in [
                    (
                        explain(browse::summary_page(&t, '$', PageStart::Newest, None)),
                        with_filter(&f, [(&bound, Type::INT8), (&limit, Type::INT8)]),
                    ),
                    (explain(browse::count(&t, '$', None)), with_filter(&f, [])),
                ] {
                    let rows = client.query_typed(&sql, &params).await.unwrap();
                    let plan: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
                    let what = if sql.contains("count(*)") {
                        "count"
                    } else {
                        "page"
                    };
                    plans.push((format!("{what} {filter:?}"), plan.join("\n")));
                }
            }
            let rows = client
                .query_typed(
                    &format!("EXPLAIN {}", browse::activity(&t, '$')),
                    &[
                        (&from, Type::INT8),
                        (&step, Type::INT8),
                        (&until, Type::INT8),
                    ],
                )
                .await
                .unwrap();
            let plan: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
            plans.push(("activity".to_owned(), plan.join("\n")));
            plans
        };
        // Before, each count reads the whole table (but by account, which
        // the table's own unique index on account and event id finds);
        // a page may read the table newest first until it has enough.
        let before = plans().await;
        for (what, plan) in &before {
            if !what.starts_with("page") && !what.contains("acct_7") {
                assert!(plan.contains("Seq Scan"), "{what}, before: {plan}");
            }
        }
        inbox.build_console_indexes().await.unwrap();
        client
            .batch_execute(&format!("ANALYZE \"{table}\""))
            .await
            .unwrap();
        // Built again, each is only looked up.
        inbox.build_console_indexes().await.unwrap();
        for (what, plan) in plans().await {
            assert!(!plan.contains("Seq Scan"), "{what}, after: {plan}");
        }
        // One left invalid (as a build that failed leaves it) is dropped
        // and built again; the others are left as they are.
        let valid = async |suffix: &str| -> (bool, u32) {
            let row = client
                .query_one(
                    &format!(
                        "SELECT i.indisvalid, c.oid FROM pg_index i JOIN pg_class c
                         ON c.oid = i.indexrelid WHERE c.relname = '{table}_{suffix}'"
                    ),
                    &[],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        client
            .batch_execute(&format!(
                "UPDATE pg_index SET indisvalid = false
                 WHERE indexrelid = '\"{table}_type_idx\"'::regclass"
            ))
            .await
            .unwrap();
        let (type_before, account_before) = (valid("type_idx").await, valid("account_idx").await);
        assert!(!type_before.0);
        inbox.build_console_indexes().await.unwrap();
        let (type_after, account_after) = (valid("type_idx").await, valid("account_idx").await);
        assert!(type_after.0, "built again");
        assert_ne!(type_after.1, type_before.1, "a new index");
        assert_eq!(account_after, account_before, "left as it was");
    }

    #[tokio::test]
    async fn stats_read_only_the_events_not_done() {
        use crate::store::Inbox;

        let (inbox, pool, table) = private_inbox("stats_plan").await;
        let client = pool.get().await.unwrap();
        client
            .batch_execute(&format!(
                "INSERT INTO \"{table}\" (account, event_id, event_type, order_ms, signed_at_ms,
                                          received_at_ms, body, next_attempt_ms, status)
                 SELECT '', 'evt_' || g, 'order.succeeded', 0, 0, g, '\\x', 0,
                        CASE g % 5000 WHEN 0 THEN 'dead' WHEN 1 THEN 'pending' ELSE 'done' END
                 FROM generate_series(1, 20000) AS g;
                 ANALYZE \"{table}\";"
            ))
            .await
            .unwrap();
        let plan: Vec<String> = client
            .query_typed(&format!("EXPLAIN {}", inbox.sql.stats), &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        let stats = inbox.stats().await.unwrap();
        assert_eq!(
            (stats.pending, stats.dead, stats.running),
            (4, 4, 0),
            "{stats:?}"
        );

        // On a table in use without the index (made before it), a
        // migration does not build it: that would hold writes back while
        // PostgreSQL reads the whole table. Nor when the schema runs again.
        let index_exists = async || -> bool {
            client
                .query_one(
                    &format!("SELECT to_regclass('\"{table}_dead_idx\"') IS NOT NULL"),
                    &[],
                )
                .await
                .unwrap()
                .get(0)
        };
        assert!(index_exists().await, "a new table has the index");
        client
            .batch_execute(&format!("DROP INDEX \"{table}_dead_idx\""))
            .await
            .unwrap();
        inbox.migrate().await.unwrap();
        client.batch_execute(&inbox.sql.schema).await.unwrap();
        assert!(!index_exists().await);
        assert_eq!(inbox.stats().await.unwrap().dead, 4);
    }

    /// Claims and settles follow the server's clock, not the app's (played
    /// here by a clock an hour off on the test's thread): a lease an app an
    /// hour behind takes lasts as long as asked by the server's clock, an
    /// app with the right clock cannot take it over, and an app an hour
    /// ahead can still complete it; a lease ended by the server's clock is
    /// taken over whatever the app's says, and its claim then settles
    /// nothing; a retry asked for 10 minutes from the
    /// app's now, and a replay, are due 10 minutes from and at the server's
    /// now; a purge by an app an hour ahead keeps what was handled after its
    /// cutoff by the server's clock; a row from before `arrived_ms` existed
    /// is taken by its arrival.
    #[tokio::test]
    async fn claims_and_settles_follow_the_servers_clock_not_the_apps() {
        use std::time::Duration;

        use crate::store::{Inbox, NewEvent, Replayed, Settle};
        use crate::timestamp::test_clock::skew;
        use crate::Timestamp;

        const HOUR: i64 = 3_600_000;
        const LEASE: Duration = Duration::from_secs(600);
        const RETRY: i64 = 600_000;
        let (inbox, pool, table) = private_inbox("server_clock").await;
        let client = pool.get().await.unwrap();
        let server_now = async || -> i64 {
            client
                .query_one(&format!("SELECT {}", super::SERVER_NOW_MS), &[])
                .await
                .unwrap()
                .get(0)
        };
        let column = async |name: &str, seq: i64| -> i64 {
            client
                .query_one(
                    &format!("SELECT {name} FROM \"{table}\" WHERE seq = $1"),
                    &[&seq],
                )
                .await
                .unwrap()
                .get(0)
        };
        let event = NewEvent::order_succeeded;
        let claim = async || inbox.claim(LEASE, Duration::ZERO).await.unwrap();
        let lease_ms = i64::try_from(LEASE.as_millis()).unwrap();

        // Taken by an app an hour behind.
        inbox.insert(&event("evt_clock_a")).await.unwrap();
        skew(-HOUR);
        let before = server_now().await;
        let a = claim().await.expect("the event is due");
        let after = server_now().await;
        let until = column("lease_until_ms", a.entry.seq).await;
        assert!(
            until >= before + lease_ms && until <= after + lease_ms,
            "the lease ends at {until}, the server's clock read {before} to {after}"
        );
        skew(0);
        assert!(
            claim().await.is_none(),
            "taken over by an app with the right clock"
        );
        skew(HOUR);
        assert_eq!(inbox.complete(&a).await.unwrap(), Settle::Applied);

        // A lease ended by the server's clock is taken over, whatever the
        // app's says, and the claim that held it settles nothing after.
        skew(0);
        inbox.insert(&event("evt_clock_b")).await.unwrap();
        skew(-HOUR);
        let b = claim().await.expect("the event is due");
        client
            .execute(
                &format!(
                    "UPDATE \"{table}\" SET lease_until_ms = {} - 1 WHERE seq = $1",
                    super::SERVER_NOW_MS
                ),
                &[&b.entry.seq],
            )
            .await
            .unwrap();
        let taken_over = claim().await.expect("the lease ended");
        assert_eq!(inbox.complete(&b).await.unwrap(), Settle::LeaseLost);

        // A retry the app behind asks for 10 minutes from its now.
        let b = taken_over;
        let before = server_now().await;
        let retry_at = Timestamp::from_millis(Timestamp::now().as_millis() + RETRY);
        let failed = inbox.fail(&b, "boom", Some(retry_at)).await.unwrap();
        assert_eq!(failed, Settle::Applied);
        let after = server_now().await;
        let due = column("next_attempt_ms", b.entry.seq).await;
        assert!(
            due >= before + RETRY && due <= after + RETRY,
            "due at {due}, the server's clock read {before} to {after}"
        );
        skew(0);
        assert!(claim().await.is_none(), "the retry is not due yet");

        // Replayed by an app an hour ahead: due now.
        skew(HOUR);
        assert_eq!(
            inbox.replay(b.entry.seq, false).await.unwrap(),
            Replayed::Replayed
        );
        skew(0);
        let b = claim().await.expect("the replay is due");
        assert_eq!(inbox.complete(&b).await.unwrap(), Settle::Applied);

        // A purge by an app an hour ahead, of what was settled more than
        // half an hour ago by its clock, deletes neither (both were
        // handled just now by the server's).
        skew(HOUR);
        let cutoff = Timestamp::from_millis(Timestamp::now().as_millis() - HOUR / 2);
        assert_eq!(inbox.purge(cutoff).await.unwrap(), 0);
        skew(0);

        // A row kept without `arrived_ms` (by an instance from before it)
        // is taken by its arrival.
        let now = Timestamp::now().as_millis();
        client
            .execute(
                &format!(
                    "INSERT INTO \"{table}\" (account, event_id, event_type, order_ms, signed_at_ms,
                                              received_at_ms, body, next_attempt_ms)
                     VALUES ('', 'evt_clock_old', 'order.succeeded', 0, $1, $1, '\\x7b7d', $1)"
                ),
                &[&now],
            )
            .await
            .unwrap();
        let old = claim().await.expect("the older instance's row is due");
        assert_eq!(old.entry.event.event_id, "evt_clock_old");
        assert_eq!(inbox.complete(&old).await.unwrap(), Settle::Applied);

        // An older instance starting makes its own claim and settles, which
        // took the app's now (or asked that the lease had not ended), beside
        // these (here ones that never take or settle anything): the claims
        // and settles of this one still run through its own, and a
        // migration again leaves both.
        client
            .batch_execute(&format!(
                "CREATE FUNCTION \"{table}_claim\"(now_ms bigint, lease_ms bigint, window_ms bigint,
                                                   new_token text)
                 RETURNS SETOF \"{table}\" LANGUAGE sql AS $$ SELECT * FROM \"{table}\" WHERE false $$;
                 CREATE FUNCTION \"{table}_complete\"(bigint, text, bigint)
                 RETURNS bigint LANGUAGE sql AS $$ SELECT 0::bigint $$;
                 CREATE OR REPLACE FUNCTION \"{table}_complete\"(bigint, text)
                 RETURNS bigint LANGUAGE sql AS $$ SELECT 0::bigint $$;"
            ))
            .await
            .unwrap();
        inbox.migrate().await.unwrap();
        inbox.insert(&event("evt_clock_c")).await.unwrap();
        let c = claim()
            .await
            .expect("claimed through this version's function");
        assert_eq!(inbox.complete(&c).await.unwrap(), Settle::Applied);
    }

    /// Rows as the tests below put them in an inbox's table `table`:
    /// `(event id, object, status, arrived, due)`, the two times in
    /// milliseconds from the server's now (a running row's lease ends at
    /// its due time); in this order, so numbered in it. An object's events
    /// are created in the order they are given.
    async fn put(
        client: &tokio_postgres::Client, table: &str, rows: &[(&str, Option<&str>, &str, i64, i64)],
    ) {
        for (created, (id, object, status, arrived, due)) in (1_i64..).zip(rows) {
            client
                .execute(
                    &format!(
                        "INSERT INTO \"{table}\" (account, event_id, event_type, order_ms, object_key,
                                                  signed_at_ms, received_at_ms, arrived_ms, body,
                                                  status, attempts, next_attempt_ms, lease_until_ms, token)
                         SELECT '', $1, 'order.succeeded', $2, $3, now_ms + $4, now_ms + $4, now_ms + $4,
                                '\\x7b7d', $5::text,
                                CASE WHEN $5::text = 'pending' THEN 0 ELSE 1 END,
                                CASE WHEN $5::text = 'running' THEN now_ms + $4 ELSE now_ms + $6 END,
                                CASE WHEN $5::text = 'running' THEN now_ms + $6 ELSE 0 END,
                                CASE WHEN $5::text = 'running' THEN 'lost' END
                         FROM (SELECT {} AS now_ms) AS server",
                        super::SERVER_NOW_MS
                    ),
                    &[id, &created, object, arrived, status, due],
                )
                .await
                .unwrap();
        }
    }

    /// The event ids of `inbox`'s claims, each completed before the next,
    /// until none is due.
    async fn claimed_in_turn(inbox: &crate::store::PostgresInbox) -> Vec<String> {
        use crate::store::{Inbox, Settle};

        let mut ids = Vec::new();
        while let Some(claim) = inbox
            .claim(
                std::time::Duration::from_secs(60),
                std::time::Duration::ZERO,
            )
            .await
            .unwrap()
        {
            assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
            ids.push(claim.entry.event.event_id);
        }
        ids
    }

    /// Whether index `name` of the tests' tables exists.
    async fn index_exists(client: &tokio_postgres::Client, name: &str) -> bool {
        client
            .query_one(
                &format!("SELECT to_regclass('\"{name}\"') IS NOT NULL"),
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// `count` retries not due for an hour, about no object, in table
    /// `table`.
    async fn put_retries_not_due(client: &tokio_postgres::Client, table: &str, count: i64) {
        client
            .execute(
                &format!(
                    "INSERT INTO \"{table}\" (account, event_id, event_type, order_ms, signed_at_ms,
                                              received_at_ms, arrived_ms, body, status, attempts,
                                              next_attempt_ms)
                     SELECT '', 'evt_waiting_' || g, 'order.succeeded', 0, now_ms, now_ms,
                            now_ms - 60000, '\\x7b7d', 'retrying', 1, now_ms + 3600000
                     FROM generate_series(1, $1::bigint) AS g, (SELECT {} AS now_ms) AS server",
                    super::SERVER_NOW_MS
                ),
                &[&count],
            )
            .await
            .unwrap();
    }

    /// The index by due time of a table made before it, built as
    /// `migrate`'s docs and the README say.
    async fn build_due_index(client: &tokio_postgres::Client, table: &str) {
        client
            .batch_execute(&format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"{table}_due_idx\"
                     ON {table} ((CASE WHEN status = 'running' THEN lease_until_ms ELSE next_attempt_ms END), seq)
                     WHERE status IN ('pending', 'retrying', 'running')"
            ))
            .await
            .unwrap();
    }

    /// Calls the claim's function of table `table` on `client`, in a
    /// transaction of its own: the event it took, if any, and how many rows
    /// of the table it read, in a sequential scan or through any of its
    /// indexes (as PostgreSQL counts them for the transaction, within which
    /// the counts only grow).
    async fn counted_claim(
        client: &mut deadpool_postgres::Object, table: &str,
    ) -> (Option<String>, i64) {
        let read = format!(
            "SELECT COALESCE((SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0)
                              FROM pg_stat_xact_user_tables WHERE relid = '\"{table}\"'::regclass), 0)"
        );
        let tx = client.transaction().await.unwrap();
        let before: i64 = tx.query_one(&read, &[]).await.unwrap().get(0);
        let claimed = tx
            .query_opt(
                &format!("SELECT event_id FROM \"{table}_claim\"(60000, 0, 'counted')"),
                &[],
            )
            .await
            .unwrap()
            .map(|row| row.get(0));
        let after: i64 = tx.query_one(&read, &[]).await.unwrap().get(0);
        tx.commit().await.unwrap();
        (claimed, after - before)
    }

    /// The claim's function runs with JIT off, whatever the server's
    /// setting (compiling its plan cost more than running it).
    #[tokio::test]
    async fn the_claim_is_never_compiled_by_jit() {
        let (_inbox, pool, table) = private_inbox("claim_jit").await;
        let client = pool.get().await.unwrap();
        let settings: Vec<String> = client
            .query_one(
                "SELECT proconfig FROM pg_proc WHERE oid = to_regproc($1)",
                &[&format!("\"{table}_claim\"")],
            )
            .await
            .unwrap()
            .get(0);
        assert!(settings.iter().any(|s| s == "jit=off"), "{settings:?}");
    }

    /// A claim reads no retry that is not due yet: with 20,000 of them
    /// waiting, a claim that finds nothing due, one that takes a new
    /// event and one that takes over an event whose lease ended each read
    /// a few rows of the table (counted by PostgreSQL's statistics of the
    /// claim's transaction, not timed), where walking the live events in
    /// arrival order read all 20,000.
    #[tokio::test]
    async fn a_claim_reads_no_retry_not_due_yet() {
        use crate::store::{Inbox, NewEvent};

        let (inbox, pool, table) = private_inbox("due_reads").await;
        let mut client = pool.get().await.unwrap();
        put_retries_not_due(&client, &table, 20_000).await;
        client
            .batch_execute(&format!("ANALYZE \"{table}\""))
            .await
            .unwrap();
        // Eight claims on one connection: PL/pgSQL plans the first five
        // calls for their values and may then keep a generic plan, which
        // must read the index as well.
        for call in 1..=8 {
            let (claimed, read) = counted_claim(&mut client, &table).await;
            assert_eq!(claimed, None);
            assert!(
                read < 100,
                "call {call}: {read} rows read to find that nothing is due"
            );
        }

        inbox
            .insert(&NewEvent::order_succeeded("evt_new"))
            .await
            .unwrap();
        let (claimed, read) = counted_claim(&mut client, &table).await;
        assert_eq!(claimed.as_deref(), Some("evt_new"));
        assert!(read < 100, "{read} rows read to take a new event");

        client
            .execute(
                &format!(
                    "UPDATE \"{table}\" SET lease_until_ms = {} - 1 WHERE event_id = 'evt_new'",
                    super::SERVER_NOW_MS
                ),
                &[],
            )
            .await
            .unwrap();
        let (claimed, read) = counted_claim(&mut client, &table).await;
        assert_eq!(claimed.as_deref(), Some("evt_new"), "taken over");
        assert!(read < 100, "{read} rows read to take an event over");
    }

    /// A claim sets aside the waiting events an older event of their
    /// object holds back, until that one is due, up to 64 of them: with 200
    /// objects whose oldest event waits for its retry and 600 newer events
    /// behind them, the first claims read them all and set them aside, and
    /// the claims after those read a few rows each (counted by PostgreSQL's
    /// statistics, not timed), where each claim read them all again.
    #[tokio::test]
    async fn one_claim_reads_the_events_held_back_not_every_claim() {
        let (_inbox, pool, table) = private_inbox("held_reads").await;
        let mut client = pool.get().await.unwrap();
        let (objects, behind) = (200_i64, 3_i64);
        client
            .execute(
                &format!(
                    "INSERT INTO \"{table}\" (account, event_id, event_type, order_ms, object_key,
                                              signed_at_ms, received_at_ms, arrived_ms, body,
                                              status, attempts, next_attempt_ms)
                     SELECT '', 'evt_' || g, 'order.succeeded', g, 'order:ord_' || (g % $1::bigint),
                            now_ms, now_ms, now_ms - 60000, '\\x7b7d',
                            CASE WHEN g < $1::bigint THEN 'retrying' ELSE 'pending' END,
                            CASE WHEN g < $1::bigint THEN 1 ELSE 0 END,
                            CASE WHEN g < $1::bigint THEN now_ms + 3600000 ELSE now_ms - 60000 + g END
                     FROM generate_series(0, $1::bigint * ($2::bigint + 1) - 1) AS g,
                          (SELECT {} AS now_ms) AS server",
                    super::SERVER_NOW_MS
                ),
                &[&objects, &behind],
            )
            .await
            .unwrap();
        client
            .batch_execute(&format!("ANALYZE \"{table}\""))
            .await
            .unwrap();
        let (claimed, first) = counted_claim(&mut client, &table).await;
        assert_eq!(claimed, None);
        assert!(
            first >= objects * behind,
            "{first} rows read by the first claim"
        );
        // Each claim sets 64 aside: ten claims for 600, and a few more
        // than that at most.
        let mut claims = 1;
        loop {
            let (claimed, read) = counted_claim(&mut client, &table).await;
            assert_eq!(claimed, None);
            claims += 1;
            if read < 100 {
                break;
            }
            assert!(claims < 15, "{read} rows read by claim {claims}");
        }
        let held: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM \"{table}\" e
                     WHERE status = 'pending' AND next_attempt_ms = (
                         SELECT h.next_attempt_ms FROM \"{table}\" h
                         WHERE h.object_key = e.object_key AND h.status = 'retrying')"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            held,
            objects * behind,
            "each set aside until its object's retry"
        );
        for call in 1..=8 {
            let (claimed, read) = counted_claim(&mut client, &table).await;
            assert_eq!(claimed, None);
            assert!(
                read < 100,
                "call {call}: {read} rows read after they were set aside"
            );
        }
    }

    /// A table made before the trigger that makes events set aside due
    /// again gets it from the next migration (the full one: creating it
    /// changes the table), and keeps it through the ones after.
    #[tokio::test]
    async fn a_table_without_the_trigger_gets_it_from_the_next_migration() {
        let (inbox, pool, table) = private_inbox("unpark_upgrade").await;
        let client = pool.get().await.unwrap();
        let exists = async || -> bool {
            client
                .query_one(
                    &format!(
                        "SELECT count(*) = 1 FROM pg_trigger
                         WHERE tgrelid = '\"{table}\"'::regclass AND tgname = '{table}_unpark'"
                    ),
                    &[],
                )
                .await
                .unwrap()
                .get(0)
        };
        assert!(exists().await, "made with the table");
        client
            .batch_execute(&format!("DROP TRIGGER \"{table}_unpark\" ON \"{table}\""))
            .await
            .unwrap();
        assert!(!exists().await);
        inbox.migrate().await.unwrap();
        assert!(exists().await, "made by the migration");
        inbox.migrate().await.unwrap();
        assert!(exists().await, "kept");
    }

    /// An index of the due index's name in another shape (built by hand
    /// from a wrong statement, say), which the claim by due time could not
    /// read in its order, leaves the claim reading in arrival order.
    #[tokio::test]
    async fn an_index_of_the_due_name_in_another_shape_leaves_the_claim_by_arrival() {
        let (inbox, pool, table) = private_inbox("due_shape").await;
        let client = pool.get().await.unwrap();
        client
            .batch_execute(&format!(
                "DROP INDEX \"{table}_due_idx\";
                 CREATE INDEX \"{table}_due_idx\" ON \"{table}\" (next_attempt_ms, seq)
                     WHERE status IN ('pending', 'retrying');"
            ))
            .await
            .unwrap();
        inbox.migrate().await.unwrap();
        put(
            &client,
            &table,
            &[
                ("evt_a", None, "retrying", -10_000, -1_000),
                ("evt_b", None, "pending", -8_000, -8_000),
            ],
        )
        .await;
        assert_eq!(claimed_in_turn(&inbox).await, ["evt_a", "evt_b"]);
    }

    /// A new event inside the reorder window is passed over, and a retry
    /// due after it is taken: the window holds back what arrived lately,
    /// not what is due.
    #[tokio::test]
    async fn the_reorder_window_passes_over_a_new_event_not_a_retry_due_after_it() {
        use crate::store::Inbox;

        let (inbox, pool, table) = private_inbox("due_window").await;
        let client = pool.get().await.unwrap();
        put(
            &client,
            &table,
            &[
                ("evt_new", None, "pending", -100, -100),
                ("evt_retry", None, "retrying", -60_000, -50),
            ],
        )
        .await;
        let window = std::time::Duration::from_secs(30);
        let lease = std::time::Duration::from_secs(60);
        let claim = inbox
            .claim(lease, window)
            .await
            .unwrap()
            .expect("the retry");
        assert_eq!(claim.entry.event.event_id, "evt_retry");
        assert!(inbox.claim(lease, window).await.unwrap().is_none());
    }

    /// A claim takes the event due first (a new event as it arrives, a
    /// retry when its backoff ends, a running event when its worker's
    /// lease ended), not the first to arrive: a retry whose backoff ended
    /// before a newer event arrived goes before it, one whose backoff ended
    /// after goes after it. An object's events still run oldest first,
    /// whichever is due first.
    #[tokio::test]
    async fn a_claim_takes_the_event_due_first_and_an_objects_oldest_first() {
        let (inbox, pool, table) = private_inbox("due_order").await;
        let client = pool.get().await.unwrap();
        put(
            &client,
            &table,
            &[
                ("evt_a", None, "retrying", -10_000, -1_000),
                ("evt_b", None, "pending", -8_000, -8_000),
                ("evt_d", None, "retrying", -7_000, -2_000),
                ("evt_r", None, "running", -6_000, -1_500),
                ("evt_o1", Some("obj"), "retrying", -5_000, -100),
                ("evt_c", None, "pending", -500, -500),
                ("evt_o2", Some("obj"), "pending", -300, -300),
                ("evt_later", None, "retrying", -9_000, 600_000),
            ],
        )
        .await;
        assert_eq!(
            claimed_in_turn(&inbox).await,
            ["evt_b", "evt_d", "evt_r", "evt_a", "evt_c", "evt_o1", "evt_o2"]
        );
    }

    /// New events are due as they are kept, by the server's clock alone,
    /// so events kept one after another are claimed in that order: here the
    /// second was received (by the app's clock) 20 ms before the first, as
    /// deliveries handled side by side can be, and still goes second. The
    /// arrival, which the reorder window counts from, is the one received.
    #[tokio::test]
    async fn new_events_are_due_in_the_order_they_are_kept() {
        use crate::store::{Inbox, NewEvent};
        use crate::Timestamp;

        let (inbox, _pool, _table) = private_inbox("kept_order").await;
        let first = NewEvent::order_succeeded("evt_first");
        let mut second = NewEvent::order_succeeded("evt_second");
        second.received_at = Timestamp::from_millis(first.received_at.as_millis() - 20);
        inbox.insert(&first).await.unwrap();
        inbox.insert(&second).await.unwrap();
        assert_eq!(claimed_in_turn(&inbox).await, ["evt_first", "evt_second"]);
        assert_eq!(
            inbox.get(2).await.unwrap().unwrap().event.received_at,
            second.received_at
        );
    }

    /// A table made before the index by due time, in use (not empty), does
    /// not get it from a migration (nor the dead events' index), and its
    /// claim then reads the live events in arrival order as before; once it
    /// is built `CONCURRENTLY`, the next migration makes the claim read by
    /// due time. An empty table without them gets them from a migration.
    #[tokio::test]
    async fn a_table_without_the_due_index_is_claimed_by_arrival_until_it_is_built() {
        let (inbox, pool, table) = private_inbox("due_upgrade").await;
        let mut client = pool.get().await.unwrap();
        let indexes = [format!("{table}_due_idx"), format!("{table}_dead_idx")];
        let exist = async || {
            let mut exist = Vec::new();
            for index in &indexes {
                exist.push(index_exists(&client, index).await);
            }
            exist
        };
        assert_eq!(exist().await, [true; 2], "made with the table");
        let drop_all = indexes
            .iter()
            .map(|index| format!("DROP INDEX \"{index}\";"))
            .collect::<String>();
        client.batch_execute(&drop_all).await.unwrap();
        inbox.migrate().await.unwrap();
        assert_eq!(exist().await, [true; 2], "made on the empty table");

        client.batch_execute(&drop_all).await.unwrap();
        let rows = [
            ("evt_a", None, "retrying", -10_000, -1_000),
            ("evt_r", Some("obj"), "running", -9_000, -1_500),
            ("evt_b", Some("obj"), "pending", -8_000, -8_000),
            ("evt_c", None, "pending", -500, -500),
        ];
        put(&client, &table, &rows).await;
        inbox.migrate().await.unwrap();
        client.batch_execute(&inbox.sql.schema).await.unwrap();
        assert_eq!(exist().await, [false; 2], "never built on a table in use");
        assert_eq!(
            claimed_in_turn(&inbox).await,
            ["evt_a", "evt_r", "evt_b", "evt_c"],
            "by arrival"
        );

        build_due_index(&client, &table).await;
        client
            .execute(&format!("DELETE FROM \"{table}\""), &[])
            .await
            .unwrap();
        put(&client, &table, &rows).await;
        assert_eq!(
            claimed_in_turn(&inbox).await,
            ["evt_a", "evt_r", "evt_b", "evt_c"],
            "still by arrival until the next migration"
        );
        client
            .execute(&format!("DELETE FROM \"{table}\""), &[])
            .await
            .unwrap();
        put(&client, &table, &rows).await;
        inbox.migrate().await.unwrap();
        assert_eq!(
            claimed_in_turn(&inbox).await,
            ["evt_r", "evt_b", "evt_a", "evt_c"],
            "by due time"
        );
        // From the index built as documented: the retries not due yet are
        // not read.
        put_retries_not_due(&client, &table, 2_000).await;
        let (claimed, read) = counted_claim(&mut client, &table).await;
        assert_eq!(claimed, None);
        assert!(read < 100, "{read} rows read to find that nothing is due");
    }

    /// The look-up that lets a migration skip the table's changes names
    /// every column the schema adds, and only those: a column added to the
    /// schema but not to the list would never be added to an older table.
    #[test]
    fn the_current_check_names_every_added_column() {
        let sql = Sql::new("inbox");
        let added: Vec<&str> = sql
            .schema
            .lines()
            .filter_map(|line| {
                line.trim()
                    .strip_prefix("ALTER TABLE \"inbox\" ADD COLUMN IF NOT EXISTS ")
            })
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        assert_eq!(added, ADDED_COLUMNS);
        for column in ADDED_COLUMNS {
            assert!(sql.current.contains(&format!("'{column}'")), "{column}");
        }
        // The functions alone are the schema's, as `schema_sql` gives them.
        for line in sql.functions.lines() {
            assert!(sql.schema.contains(line.trim()), "{line}");
        }
        // What each start runs on a current table changes no table: the
        // trigger, which does, is made by the full migration, which a
        // table without it is sent to.
        assert!(!sql.functions.contains("CREATE TRIGGER"));
        assert!(sql.schema.contains("CREATE TRIGGER"));
        assert!(sql.current.contains("inbox_unpark"), "{}", sql.current);
    }
}
