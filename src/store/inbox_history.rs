//! The attempts an [`Inbox`](super::Inbox) records on each event: when a
//! worker took it, for how long, and how that attempt ended
//! ([`InboxEntry::history`](super::InboxEntry::history)).

use std::fmt;
use std::time::Duration;

use crate::Timestamp;

/// How many attempts an event keeps in its history: the newest 20. An event
/// retried without end (a poison event replayed again and again) keeps a
/// history of bounded size.
pub(crate) const HISTORY_LEN: usize = 20;

/// The longest error an attempt keeps, in bytes: 2 KiB, cut at a character
/// boundary (with `…`). Twenty of them bound the history's size.
pub(crate) const HISTORY_ERROR_LEN: usize = 2048;

/// One attempt at an event: a worker's claim, from the time it took the
/// event until it settled it or its lease ended.
///
/// An inbox keeps the newest 20 of an event's attempts, oldest first, in
/// [`InboxEntry::history`](super::InboxEntry::history), across replays.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxAttemptRecord {
    /// Which attempt it was, as [`InboxEntry::attempts`](super::InboxEntry::attempts)
    /// counted it: 1 for the first since the event arrived or was last
    /// replayed. A [released](InboxAttemptOutcome::Released) attempt does
    /// not count, so the next one has the same number.
    pub attempt: u32,
    /// When the worker took the event.
    pub started_at: Timestamp,
    /// How long the attempt ran: until it was settled, or until its lease
    /// ended for an attempt that was [lost](InboxAttemptOutcome::LeaseExpired).
    /// Zero if the clocks of the instances that took and settled it disagree
    /// the other way.
    pub duration: Duration,
    /// How it ended.
    pub outcome: InboxAttemptOutcome,
}

impl InboxAttemptRecord {
    /// An attempt numbered `attempt` that started at `started_at`, ran for
    /// `duration` and ended with `outcome`.
    #[must_use]
    pub fn new(
        attempt: u32, started_at: Timestamp, duration: Duration, outcome: InboxAttemptOutcome,
    ) -> Self {
        Self {
            attempt,
            started_at,
            duration,
            outcome,
        }
    }

    /// When the attempt ended: [`started_at`](Self::started_at) plus its
    /// [`duration`](Self::duration).
    #[must_use]
    pub fn ended_at(&self) -> Timestamp {
        let millis = i64::try_from(self.duration.as_millis()).unwrap_or(i64::MAX);
        Timestamp::from_millis(self.started_at.as_millis().saturating_add(millis))
    }
}

/// How an [attempt](InboxAttemptRecord) at an event ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InboxAttemptOutcome {
    /// The event was handled and marked done
    /// ([`complete`](super::Inbox::complete), or in the handler's own
    /// transaction).
    Completed,
    /// The handler failed (an error, a panic, a timeout) and the attempt was
    /// recorded with [`fail`](super::Inbox::fail): the event was retried
    /// later, or dead.
    Failed {
        /// The error the attempt was failed with, cut to its first 2 KiB
        /// (at a character boundary, `…` marking the cut). It can hold text
        /// from the event: escape it where it is shown.
        error: String,
    },
    /// The worker gave the event back unfinished, at shutdown
    /// ([`release`](super::Inbox::release)).
    Released,
    /// The lease ended before the worker settled the event: the worker
    /// crashed, hung, or could not reach the inbox. Recorded when the event
    /// was next taken, with the attempt's duration up to the lease's end.
    LeaseExpired,
}

impl InboxAttemptOutcome {
    /// The outcome as a word: `completed`, `failed`, `released` or
    /// `lease expired`.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed { .. } => "failed",
            Self::Released => "released",
            Self::LeaseExpired => "lease expired",
        }
    }

    /// The error of a [failed](Self::Failed) attempt.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Failed { error } => Some(error),
            _ => None,
        }
    }
}

impl fmt::Display for InboxAttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed { error } => write!(f, "failed: {error}"),
            _ => f.write_str(self.as_str()),
        }
    }
}

/// `error` as an attempt keeps it: at most [`HISTORY_ERROR_LEN`] bytes, cut
/// at a character boundary with `…`; NUL characters (which PostgreSQL's
/// `jsonb` refuses) as U+FFFD.
pub(crate) fn bounded_error(error: &str) -> String {
    const MARK: char = '…';
    let mut kept = error.replace('\0', "\u{fffd}");
    if kept.len() > HISTORY_ERROR_LEN {
        let mut end = HISTORY_ERROR_LEN - MARK.len_utf8();
        while !kept.is_char_boundary(end) {
            end -= 1;
        }
        kept.truncate(end);
        kept.push(MARK);
    }
    kept
}

/// Adds `record` to `history`, keeping the newest [`HISTORY_LEN`].
pub(crate) fn push(history: &mut Vec<InboxAttemptRecord>, record: InboxAttemptRecord) {
    history.push(record);
    if history.len() > HISTORY_LEN {
        history.drain(..history.len() - HISTORY_LEN);
    }
}

/// The SQL backends' history: a JSON array of attempts, oldest first, as
/// the statements of [`append_sql`] write it.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql {
    use std::time::Duration;

    use serde::Deserialize;

    use super::{InboxAttemptOutcome, InboxAttemptRecord, HISTORY_LEN};
    use crate::Timestamp;

    /// The words the history stores for each outcome.
    pub(crate) const COMPLETED: &str = "completed";
    pub(crate) const FAILED: &str = "failed";
    pub(crate) const RELEASED: &str = "released";
    pub(crate) const LEASE_EXPIRED: &str = "lease_expired";

    /// One attempt as stored.
    #[derive(Deserialize)]
    struct Stored {
        attempt: i64,
        started_ms: i64,
        duration_ms: i64,
        outcome: String,
        #[serde(default)]
        error: Option<String>,
    }

    /// The history stored as `json`; an attempt this version does not know
    /// is left out, and a history that does not read is empty (it is a
    /// record for people, never what the inbox runs on).
    pub(crate) fn parse(json: Option<&str>) -> Vec<InboxAttemptRecord> {
        let Some(json) = json else {
            return Vec::new();
        };
        let Ok(stored) = serde_json::from_str::<Vec<Stored>>(json) else {
            return Vec::new();
        };
        stored
            .into_iter()
            .filter_map(|s| {
                let outcome = match s.outcome.as_str() {
                    COMPLETED => InboxAttemptOutcome::Completed,
                    FAILED => InboxAttemptOutcome::Failed {
                        error: s.error.unwrap_or_default(),
                    },
                    RELEASED => InboxAttemptOutcome::Released,
                    LEASE_EXPIRED => InboxAttemptOutcome::LeaseExpired,
                    _ => return None,
                };
                Some(InboxAttemptRecord {
                    attempt: u32::try_from(s.attempt).unwrap_or(0),
                    started_at: Timestamp::from_millis(s.started_ms),
                    duration: Duration::from_millis(u64::try_from(s.duration_ms).unwrap_or(0)),
                    outcome,
                })
            })
            .collect()
    }

    /// The SQL dialect an expression is written in.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Dialect {
        /// `history` is `TEXT` holding JSON.
        #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
        Sqlite,
        /// `history` is `jsonb`.
        #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
        Postgres,
    }

    /// The new value of `history` once the attempt the row's claim started
    /// (`attempts` and `claimed_at_ms` as they are before the statement)
    /// ended at `ended` with `outcome` (one of the words above) and `error`
    /// (a text expression, `NULL` but for a failure): the attempt appended,
    /// the oldest dropped beyond [`HISTORY_LEN`]. A row claimed before the
    /// inbox recorded claim times (`claimed_at_ms` null) keeps its history
    /// as it is.
    pub(crate) fn append_sql(dialect: Dialect, ended: &str, outcome: &str, error: &str) -> String {
        match dialect {
            // A history that is not JSON (edited by hand) starts again
            // rather than failing every settle of its event.
            Dialect::Sqlite => format!(
                "CASE WHEN claimed_at_ms IS NULL THEN history ELSE json_insert(
                    CASE WHEN NOT json_valid(history) THEN '[]'
                         WHEN json_array_length(history) >= {HISTORY_LEN}
                         THEN json_remove(history, '$[0]') ELSE history END,
                    '$[#]',
                    json_object('attempt', attempts, 'started_ms', claimed_at_ms,
                                'duration_ms', max(0, {ended} - claimed_at_ms),
                                'outcome', '{outcome}', 'error', {error})) END"
            ),
            Dialect::Postgres => format!(
                "CASE WHEN claimed_at_ms IS NULL THEN history ELSE jsonb_path_query_array(
                    history || jsonb_build_array(jsonb_build_object(
                        'attempt', attempts, 'started_ms', claimed_at_ms,
                        'duration_ms', GREATEST(0, {ended} - claimed_at_ms),
                        'outcome', '{outcome}'::text, 'error', {error})),
                    '$[last - {keep} to last]') END",
                keep = HISTORY_LEN - 1
            ),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_stored_history_reads_back_and_skips_what_it_does_not_know() {
            let json = r#"[
                {"attempt": 1, "started_ms": 1000, "duration_ms": 250, "outcome": "failed", "error": "boom"},
                {"attempt": 2, "started_ms": 2000, "duration_ms": -5, "outcome": "lease_expired", "error": null},
                {"attempt": 2, "started_ms": 3000, "duration_ms": 1, "outcome": "teleported"},
                {"attempt": 2, "started_ms": 4000, "duration_ms": 7, "outcome": "released"},
                {"attempt": 2, "started_ms": 5000, "duration_ms": 9, "outcome": "completed"}
            ]"#;
            let history = parse(Some(json));
            assert_eq!(
                history,
                [
                    InboxAttemptRecord::new(
                        1,
                        Timestamp::from_millis(1000),
                        Duration::from_millis(250),
                        InboxAttemptOutcome::Failed {
                            error: "boom".to_owned()
                        }
                    ),
                    InboxAttemptRecord::new(
                        2,
                        Timestamp::from_millis(2000),
                        Duration::ZERO,
                        InboxAttemptOutcome::LeaseExpired
                    ),
                    InboxAttemptRecord::new(
                        2,
                        Timestamp::from_millis(4000),
                        Duration::from_millis(7),
                        InboxAttemptOutcome::Released
                    ),
                    InboxAttemptRecord::new(
                        2,
                        Timestamp::from_millis(5000),
                        Duration::from_millis(9),
                        InboxAttemptOutcome::Completed
                    ),
                ]
            );
            assert!(parse(None).is_empty());
            assert!(parse(Some("not json")).is_empty());
        }

        #[cfg(feature = "sqlite")]
        #[test]
        fn sqlite_keeps_the_newest_attempts_and_starts_again_from_a_broken_history() {
            let db = rusqlite::Connection::open_in_memory().unwrap();
            db.execute_batch(
                "CREATE TABLE t (attempts INTEGER, claimed_at_ms INTEGER,
                                 history TEXT NOT NULL DEFAULT '[]');
                 INSERT INTO t (attempts, claimed_at_ms) VALUES (0, 1000);",
            )
            .unwrap();
            let append = format!(
                "UPDATE t SET attempts = attempts + 1, history = {}",
                append_sql(Dialect::Sqlite, "?1", FAILED, "?2")
            );
            for n in 1..=25 {
                db.execute(&append, rusqlite::params![1000 + n, format!("e{n}")])
                    .unwrap();
            }
            let read = |db: &rusqlite::Connection| {
                let json: String = db
                    .query_row("SELECT history FROM t", [], |r| r.get(0))
                    .unwrap();
                parse(Some(&json))
            };
            let history = read(&db);
            assert_eq!(history.len(), HISTORY_LEN);
            assert_eq!(history[0].attempt, 5, "numbered before the statement");
            assert_eq!(history[0].outcome.error(), Some("e6"));
            assert_eq!(history[19].duration, Duration::from_millis(25));
            db.execute_batch("UPDATE t SET history = 'not json'")
                .unwrap();
            db.execute(&append, rusqlite::params![2000, "after"])
                .unwrap();
            assert_eq!(read(&db).len(), 1);
            // Claimed before claim times were recorded: nothing to add.
            db.execute_batch("UPDATE t SET claimed_at_ms = NULL")
                .unwrap();
            db.execute(&append, rusqlite::params![3000, "unknown"])
                .unwrap();
            assert_eq!(read(&db).len(), 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_cut_at_a_character_boundary() {
        assert_eq!(bounded_error("boom"), "boom");
        assert_eq!(bounded_error("a\0b"), "a\u{fffd}b");
        let exact = "x".repeat(HISTORY_ERROR_LEN);
        assert_eq!(bounded_error(&exact), exact);
        let long = "é".repeat(HISTORY_ERROR_LEN);
        let cut = bounded_error(&long);
        assert!(cut.len() <= HISTORY_ERROR_LEN, "{}", cut.len());
        assert!(cut.ends_with("é…"), "{cut}");
    }

    #[test]
    fn the_history_keeps_the_newest() {
        let mut history = Vec::new();
        for n in 1..=25 {
            push(
                &mut history,
                InboxAttemptRecord::new(
                    n,
                    Timestamp::from_millis(i64::from(n)),
                    Duration::ZERO,
                    InboxAttemptOutcome::Completed,
                ),
            );
        }
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history[0].attempt, 6);
        assert_eq!(history[19].attempt, 25);
        assert_eq!(history[0].ended_at(), Timestamp::from_millis(6));
    }
}
