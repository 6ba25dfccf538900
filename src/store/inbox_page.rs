//! What a person browsing an [`Inbox`](super::Inbox) needs of it: pages of
//! events newest first ([`Inbox::page`](super::Inbox::page)), the same
//! pages without the bodies and with only the start of each last error
//! ([`Inbox::page_summaries`](super::Inbox::page_summaries)),
//! counts ([`Inbox::count`](super::Inbox::count)) and events received and
//! handled per interval ([`Inbox::activity`](super::Inbox::activity)). The
//! console (feature `console`) is built on them; the trait's default
//! methods derive them from [`list`](super::Inbox::list), and every backend
//! in the crate answers them in one query.

use std::time::Duration;

use super::{InboxEntry, InboxFilter, InboxStatus};
use crate::Timestamp;

/// How much of an event's last error an [`InboxSummary`] carries: its
/// first 120 characters (Unicode scalar values, so never a character cut
/// in two), what a row of the console's lists shows of it.
pub const SUMMARY_ERROR_CHARS: usize = 120;

/// An event as a row of a list shows it: what the inbox holds of it less
/// its body, its receipt, its signature and its attempts' history, with
/// only the start of its last error (its first [`SUMMARY_ERROR_CHARS`]
/// characters), so that a page of them costs a few hundred bytes an event
/// however large the bodies and errors are. What
/// [`Inbox::page_summaries`](super::Inbox::page_summaries) returns; the
/// crate's SQL backends cut the error in SQL, so a long one is never read
/// whole.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxSummary {
    /// Its number in the inbox, in arrival order.
    pub seq: i64,
    /// The merchant account, when the layer serves several.
    pub account: Option<String>,
    /// The event id.
    pub event_id: String,
    /// The event type, as sent.
    pub event_type: String,
    /// When the event occurred, if the envelope says.
    pub created: Option<Timestamp>,
    /// The object the event is about, as `family:id`, if it names one.
    pub object_key: Option<String>,
    /// When Clink signed the delivery.
    pub signed_at: Timestamp,
    /// When this receiver got it.
    pub received_at: Timestamp,
    /// Where it is now.
    pub status: InboxStatus,
    /// How many times a worker took it since it arrived or was last replayed.
    pub attempts: u32,
    /// When it may run next.
    pub next_attempt_at: Timestamp,
    /// The start of the error of its last failed attempt
    /// ([`InboxEntry::last_error`]): its first [`SUMMARY_ERROR_CHARS`]
    /// characters, all of it when it is no longer.
    pub last_error: Option<String>,
    /// Whether the last error is longer than [`last_error`](Self::last_error)
    /// holds: it was cut.
    pub last_error_cut: bool,
    /// When a worker last completed it.
    pub handled_at: Option<Timestamp>,
    /// How many times it was replayed.
    pub replays: u32,
    /// When it was last replayed.
    pub last_replayed_at: Option<Timestamp>,
}

impl From<&InboxEntry> for InboxSummary {
    /// The summary of `entry`, its last error cut as
    /// [`Inbox::page_summaries`](super::Inbox::page_summaries) cuts it.
    fn from(entry: &InboxEntry) -> Self {
        let event = &entry.event;
        let error = entry.last_error.as_deref().map(cut_error);
        Self {
            seq: entry.seq,
            account: event.account.clone(),
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            created: event.created,
            object_key: event.object_key.clone(),
            signed_at: event.signed_at,
            received_at: event.received_at,
            status: entry.status,
            attempts: entry.attempts,
            next_attempt_at: entry.next_attempt_at,
            last_error: error.map(|(start, _)| start.to_owned()),
            last_error_cut: error.is_some_and(|(_, cut)| cut),
            handled_at: entry.handled_at,
            replays: entry.replays,
            last_replayed_at: entry.last_replayed_at,
        }
    }
}

/// The start of `error` a summary carries (its first
/// [`SUMMARY_ERROR_CHARS`] characters), and whether `error` is longer.
pub(crate) fn cut_error(error: &str) -> (&str, bool) {
    match error.char_indices().nth(SUMMARY_ERROR_CHARS) {
        Some((at, _)) => (&error[..at], true),
        None => (error, false),
    }
}

/// The columns an [`InboxSummary`] is read from, in the order
/// [`read_summary`] reads them: no body, receipt or history, and of the
/// error only its start and whether there is more, cut in SQL (with
/// `left` where `mark` is `$`, PostgreSQL, and `substr` where it is `?`,
/// SQLite; both count characters). Both keep a NUL in an error as U+FFFD
/// (SQLite's text functions would stop at one); the memory inbox keeps it
/// as is.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn summary_columns(mark: char) -> String {
    let start = |chars: usize| {
        if mark == '$' {
            format!("left(last_error, {chars})")
        } else {
            format!("substr(last_error, 1, {chars})")
        }
    };
    format!(
        "seq, account, event_id, event_type, created_ms, object_key, signed_at_ms, \
         received_at_ms, status, attempts, next_attempt_ms, handled_at_ms, replays, \
         last_replay_ms, {}, CASE WHEN length({}) > {SUMMARY_ERROR_CHARS} THEN 1 ELSE 0 END",
        start(SUMMARY_ERROR_CHARS),
        start(SUMMARY_ERROR_CHARS + 1),
    )
}

/// Reads an [`InboxSummary`] from a row selected with [`summary_columns`].
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn read_summary<R: super::inbox_trait::EntryRow>(
    row: &R,
) -> Result<InboxSummary, R::Error> {
    let account = row.text(1)?;
    Ok(InboxSummary {
        seq: row.int(0)?,
        account: (!account.is_empty()).then_some(account),
        event_id: row.text(2)?,
        event_type: row.text(3)?,
        created: row.optional_int(4)?.map(Timestamp::from_millis),
        object_key: row.optional_text(5)?,
        signed_at: Timestamp::from_millis(row.int(6)?),
        received_at: Timestamp::from_millis(row.int(7)?),
        status: InboxStatus::parse(&row.text(8)?).unwrap_or(InboxStatus::Pending),
        attempts: u32::try_from(row.int(9)?).unwrap_or(0),
        next_attempt_at: Timestamp::from_millis(row.int(10)?),
        handled_at: row.optional_int(11)?.map(Timestamp::from_millis),
        replays: u32::try_from(row.int(12)?).unwrap_or(0),
        last_replayed_at: row.optional_int(13)?.map(Timestamp::from_millis),
        last_error: row.optional_text(14)?,
        last_error_cut: row.int(15)? != 0,
    })
}

/// Where a page of [`Inbox::page`](super::Inbox::page) starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PageStart {
    /// The newest events.
    #[default]
    Newest,
    /// The events numbered below `seq`: the next page back in time.
    Before(i64),
    /// The events numbered above `seq` (the ones nearest to it): the page
    /// before this one, toward the newest.
    After(i64),
}

/// How many events arrived and how many were handled in each of a row of
/// equal intervals: what [`Inbox::activity`](super::Inbox::activity) counts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxActivity {
    /// When the first interval starts.
    pub since: Timestamp,
    /// How long each interval is.
    pub interval: Duration,
    /// Events received in each interval, oldest interval first.
    pub received: Vec<u64>,
    /// Events handled in each interval (by the time the inbox keeps: a
    /// replayed event handled again counts at its last handling).
    pub handled: Vec<u64>,
}

impl InboxActivity {
    /// No activity in `intervals` intervals of `interval` from `since`.
    #[must_use]
    pub fn new(since: Timestamp, interval: Duration, intervals: usize) -> Self {
        Self {
            since,
            interval,
            received: vec![0; intervals],
            handled: vec![0; intervals],
        }
    }

    /// The interval in milliseconds, at least 1.
    pub(crate) fn interval_ms(&self) -> i64 {
        i64::try_from(self.interval.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    }

    /// When the last interval ends.
    pub(crate) fn until(&self) -> Timestamp {
        let span = self
            .interval_ms()
            .saturating_mul(i64::try_from(self.received.len()).unwrap_or(i64::MAX));
        Timestamp::from_millis(self.since.as_millis().saturating_add(span))
    }

    /// The interval `at` falls in, if any.
    fn slot(&self, at: Timestamp) -> Option<usize> {
        if at < self.since || at >= self.until() {
            return None;
        }
        usize::try_from((at.as_millis() - self.since.as_millis()) / self.interval_ms()).ok()
    }

    /// Counts `count` events received (`handled == false`) or handled in
    /// interval number `slot`, as a backend's `GROUP BY` gives them.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn add(&mut self, handled: bool, slot: i64, count: u64) {
        let row = if handled {
            &mut self.handled
        } else {
            &mut self.received
        };
        if let Some(cell) = usize::try_from(slot).ok().and_then(|s| row.get_mut(s)) {
            *cell += count;
        }
    }

    /// Counts `entry`'s arrival and handling where they fall.
    pub(crate) fn tally(&mut self, entry: &InboxEntry) {
        if let Some(slot) = self.slot(entry.event.received_at) {
            self.received[slot] += 1;
        }
        if let Some(slot) = entry.handled_at.and_then(|at| self.slot(at)) {
            self.handled[slot] += 1;
        }
    }
}

/// An event as [`page_of`] sorts it: whole or by reference.
pub(crate) trait Numbered {
    /// Its number in the inbox.
    fn seq(&self) -> i64;
}

impl Numbered for InboxEntry {
    fn seq(&self) -> i64 {
        self.seq
    }
}

impl Numbered for &InboxEntry {
    fn seq(&self) -> i64 {
        self.seq
    }
}

/// The page of `entries` (all the matching events, oldest first) that
/// `start` and `limit` select, newest first.
pub(crate) fn page_of<E: Numbered>(
    entries: impl DoubleEndedIterator<Item = E>, start: PageStart, limit: usize,
) -> Vec<E> {
    match start {
        PageStart::Newest => entries.rev().take(limit).collect(),
        PageStart::Before(seq) => entries
            .rev()
            .filter(|e| e.seq() < seq)
            .take(limit)
            .collect(),
        PageStart::After(seq) => {
            let mut page: Vec<_> = entries.filter(|e| e.seq() > seq).take(limit).collect();
            page.reverse();
            page
        }
    }
}

/// Whether `entry` matches `filter` and lies where `start` says.
pub(crate) fn on_page(filter: &InboxFilter, start: PageStart, entry: &InboxEntry) -> bool {
    filter.matches(entry)
        && match start {
            PageStart::Newest => true,
            PageStart::Before(seq) => entry.seq < seq,
            PageStart::After(seq) => entry.seq > seq,
        }
}

/// The SQL of the browsing queries for an inbox in `table` (quoted), with
/// parameters marked `mark` (`$` for PostgreSQL, `?` for SQLite).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql {
    use super::super::inbox_trait::{filter_sql, FilterParams, ENTRY_COLUMNS, FILTER_PARAMS};
    use super::{summary_columns, PageStart};

    fn param(mark: char, n: usize) -> String {
        if mark == '$' {
            format!("${n}::bigint")
        } else {
            format!("?{n}")
        }
    }

    /// A page: the filter's [`FILTER_PARAMS`] parameters (written for the
    /// values in `present`, when given: see [`filter_sql`]), then the
    /// bound on `seq` of the page's start and the limit; rows come newest
    /// first, except for
    /// [`PageStart::After`], whose rows come oldest first (reverse them).
    pub(crate) fn page(
        table: &str, mark: char, start: PageStart, present: Option<&FilterParams<'_>>,
    ) -> String {
        page_of_columns(ENTRY_COLUMNS, table, mark, start, present)
    }

    /// As [`page`], of [`summary_columns`]: the body is not selected, and
    /// the last error is cut.
    pub(crate) fn summary_page(
        table: &str, mark: char, start: PageStart, present: Option<&FilterParams<'_>>,
    ) -> String {
        page_of_columns(&summary_columns(mark), table, mark, start, present)
    }

    fn page_of_columns(
        columns: &str, table: &str, mark: char, start: PageStart,
        present: Option<&FilterParams<'_>>,
    ) -> String {
        let (op, order) = match start {
            PageStart::After(_) => (">", "ASC"),
            PageStart::Newest | PageStart::Before(_) => ("<", "DESC"),
        };
        format!(
            "SELECT {columns} FROM {table} WHERE {} AND seq {op} {} ORDER BY seq {order} LIMIT {}",
            filter_sql(mark, 1, present),
            param(mark, FILTER_PARAMS + 1),
            param(mark, FILTER_PARAMS + 2),
        )
    }

    /// The bound on `seq` for a page from `start`.
    pub(crate) fn page_bound(start: PageStart) -> i64 {
        match start {
            PageStart::Newest => i64::MAX,
            PageStart::Before(seq) | PageStart::After(seq) => seq,
        }
    }

    /// How many events match: the filter's [`FILTER_PARAMS`] parameters.
    pub(crate) fn count(table: &str, mark: char, present: Option<&FilterParams<'_>>) -> String {
        format!(
            "SELECT count(*) FROM {table} WHERE {}",
            filter_sql(mark, 1, present)
        )
    }

    /// Events received (kind 0) and handled (kind 1) per interval: since
    /// (1), the interval in milliseconds (2) and until (3); rows of kind,
    /// interval number and count.
    pub(crate) fn activity(table: &str, mark: char) -> String {
        let (since, interval, until) = (param(mark, 1), param(mark, 2), param(mark, 3));
        let per = |kind: u8, column: &str| {
            format!(
                "SELECT CAST({kind} AS bigint), ({column} - {since}) / {interval} AS slot, count(*)
                 FROM {table} WHERE {column} >= {since} AND {column} < {until} GROUP BY slot"
            )
        };
        format!(
            "{} UNION ALL {}",
            per(0, "received_at_ms"),
            per(1, "handled_at_ms")
        )
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::{InboxStatus, NewEvent};

    fn entry(seq: i64, received: i64, handled: Option<i64>) -> InboxEntry {
        InboxEntry {
            seq,
            event: NewEvent::new(
                None,
                format!("evt_{seq}"),
                "order.succeeded".to_owned(),
                None,
                None,
                Timestamp::from_millis(received),
                Timestamp::from_millis(received),
                Bytes::new(),
            ),
            status: InboxStatus::Done,
            attempts: 1,
            next_attempt_at: Timestamp::from_millis(received),
            last_error: None,
            handled_at: handled.map(Timestamp::from_millis),
            replays: 0,
            last_replayed_at: None,
            receipt: None,
            history: Vec::new(),
        }
    }

    fn seqs(page: &[InboxEntry]) -> Vec<i64> {
        page.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn pages_run_newest_first_from_either_side() {
        let all = || (1..=10).map(|n| entry(n, n, None));
        assert_eq!(seqs(&page_of(all(), PageStart::Newest, 3)), [10, 9, 8]);
        assert_eq!(seqs(&page_of(all(), PageStart::Before(8), 3)), [7, 6, 5]);
        assert_eq!(seqs(&page_of(all(), PageStart::After(4), 3)), [7, 6, 5]);
        assert_eq!(seqs(&page_of(all(), PageStart::Before(2), 3)), [1]);
        assert!(page_of(all(), PageStart::After(10), 3).is_empty());
    }

    #[test]
    fn a_summary_carries_the_start_of_the_error_cut_between_characters() {
        let exact = format!("{}é", "x".repeat(SUMMARY_ERROR_CHARS - 1));
        assert_eq!(cut_error(&exact), (exact.as_str(), false));
        let long = format!("{exact}🦀 and more");
        assert_eq!(cut_error(&long), (exact.as_str(), true));
        assert_eq!(cut_error(""), ("", false));

        let mut failed = entry(1, 1, None);
        failed.last_error = Some(long);
        let summary = InboxSummary::from(&failed);
        assert_eq!(
            (summary.last_error.as_deref(), summary.last_error_cut),
            (Some(exact.as_str()), true)
        );
        let summary = InboxSummary::from(&entry(2, 2, None));
        assert_eq!((summary.last_error, summary.last_error_cut), (None, false));
    }

    #[test]
    fn activity_counts_each_time_in_its_interval() {
        let mut activity =
            InboxActivity::new(Timestamp::from_millis(1_000), Duration::from_millis(100), 3);
        for e in [
            entry(1, 999, Some(1_000)),
            entry(2, 1_000, Some(1_250)),
            entry(3, 1_199, Some(1_300)),
        ] {
            activity.tally(&e);
        }
        assert_eq!(activity.received, [1, 1, 0]);
        assert_eq!(activity.handled, [1, 0, 1]);
        assert_eq!(activity.until(), Timestamp::from_millis(1_300));
        activity.add(true, 2, 5);
        activity.add(false, 3, 5);
        activity.add(false, -1, 5);
        assert_eq!(activity.handled, [1, 0, 6]);
        assert_eq!(activity.received, [1, 1, 0]);
    }
}
