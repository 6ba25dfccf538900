//! [`Inbox`]: verified deliveries kept durably, to be handled later by
//! workers (see [`inbox`](crate::inbox)).

use std::fmt;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::inbox_history::InboxAttemptRecord;
use super::inbox_page::{InboxActivity, InboxSummary, PageStart};
use super::{BoxFuture, LeaseToken, Settle, StoreError};
use crate::events::InboxAttempt;
use crate::{Timestamp, VerifiedEvent};

/// A verified delivery to keep: everything a worker needs to handle it
/// later, and what ordering and operations need to see.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewEvent {
    /// The merchant account, when the layer serves several.
    pub account: Option<String>,
    /// The event id; with the account, what makes a delivery a duplicate.
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
    /// The body, byte for byte as verified.
    pub body: Bytes,
    /// The [name](crate::SigningKey::named) of the key that verified it
    /// (its fingerprint when unnamed); `None` for events kept before the
    /// inbox recorded it.
    pub signing_key: Option<String>,
    /// The delivery's `X-Clink-Timestamp` and `X-Clink-Signature` as
    /// received, so that the event can be forwarded for its recipient to
    /// verify with its own key; `None` for events kept before the inbox
    /// recorded them, or not kept from a delivery.
    pub signature_headers: Option<SignatureHeaders>,
}

/// A delivery's signature headers, byte for byte as received.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignatureHeaders {
    /// `X-Clink-Timestamp`.
    pub timestamp: String,
    /// `X-Clink-Signature`.
    pub signature: String,
}

impl SignatureHeaders {
    /// The two header values.
    #[must_use]
    pub fn new(timestamp: impl Into<String>, signature: impl Into<String>) -> Self {
        Self {
            timestamp: timestamp.into(),
            signature: signature.into(),
        }
    }
}

#[cfg(test)]
impl NewEvent {
    /// An `order.succeeded` with id `id`, about no object, arrived and
    /// signed now, for the stores' own tests.
    pub(crate) fn order_succeeded(id: &str) -> Self {
        let body = format!(r#"{{"id":"{id}","type":"order.succeeded","data":{{}}}}"#);
        Self::new(
            None,
            id.to_owned(),
            "order.succeeded".to_owned(),
            None,
            None,
            Timestamp::now(),
            Timestamp::now(),
            Bytes::from(body),
        )
    }
}

impl NewEvent {
    /// A new event to keep; the fields are public to read.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        account: Option<String>, event_id: String, event_type: String, created: Option<Timestamp>,
        object_key: Option<String>, signed_at: Timestamp, received_at: Timestamp, body: Bytes,
    ) -> Self {
        Self {
            account,
            event_id,
            event_type,
            created,
            object_key,
            signed_at,
            received_at,
            body,
            signing_key: None,
            signature_headers: None,
        }
    }

    /// Sets the delivery's signature headers, as received.
    #[must_use]
    pub fn with_signature_headers(mut self, headers: SignatureHeaders) -> Self {
        self.signature_headers = Some(headers);
        self
    }

    /// Sets the name of the key that verified the event.
    #[must_use]
    pub fn with_signing_key(mut self, name: impl Into<String>) -> Self {
        self.signing_key = Some(name.into());
        self
    }

    /// The event to keep for `verified`, received at `received_at`; its
    /// object key names the account too, so that two accounts' objects
    /// never share an order, and holds an object id over 256 bytes (or one
    /// starting with `sha256:`) as `sha256:` and its SHA-256 in hex, so
    /// that it fits every inbox's index (see
    /// [`ObjectKey`](crate::events::ObjectKey)).
    #[must_use]
    pub fn from_verified(verified: &VerifiedEvent, received_at: Timestamp) -> Self {
        let event = verified.event();
        let object_key = event
            .object_key()
            .map(crate::events::ObjectKey::bounded)
            .map(|key| match event.account() {
                Some(account) => key.within(account),
                None => key,
            })
            .map(|key| key.to_string());
        Self::new(
            event.account().map(str::to_owned),
            event.id().to_owned(),
            event.event_type().as_str().to_owned(),
            event.created(),
            object_key,
            verified.signed_at(),
            received_at,
            event.body().clone(),
        )
        .with_signing_key(verified.key_name())
    }
}

/// The columns an inbox row is read from, in the order [`read_entry`] reads them.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) const ENTRY_COLUMNS: &str = "seq, account, event_id, event_type, created_ms, \
     object_key, signed_at_ms, received_at_ms, body, status, attempts, next_attempt_ms, \
     last_error, signing_key, handled_at_ms, replays, last_replay_ms, receipt, \
     header_timestamp, header_signature, history";

/// A row of an SQL inbox, read column by column: what [`read_entry`] needs
/// of each backend's row type.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) trait EntryRow {
    type Error;
    fn int(&self, column: usize) -> Result<i64, Self::Error>;
    fn optional_int(&self, column: usize) -> Result<Option<i64>, Self::Error>;
    fn text(&self, column: usize) -> Result<String, Self::Error>;
    fn optional_text(&self, column: usize) -> Result<Option<String>, Self::Error>;
    fn blob(&self, column: usize) -> Result<Vec<u8>, Self::Error>;
    /// A JSON column (`TEXT` in SQLite, `jsonb` in PostgreSQL), as text.
    fn json(&self, column: usize) -> Result<Option<String>, Self::Error>;
}

/// Counts an event a claim made dead because its row cannot be read, as
/// the workers count the events they make dead
/// (`clink_webhook_inbox_dead_total`): the workers never see it.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn count_unreadable_dead() {
    #[cfg(feature = "metrics")]
    metrics::counter!("clink_webhook_inbox_dead_total").increment(1);
}

/// Reads an [`InboxEntry`] from a row selected with [`ENTRY_COLUMNS`].
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn read_entry<R: EntryRow>(row: &R) -> Result<InboxEntry, R::Error> {
    let account = row.text(1)?;
    let mut event = NewEvent::new(
        (!account.is_empty()).then_some(account),
        row.text(2)?,
        row.text(3)?,
        row.optional_int(4)?.map(Timestamp::from_millis),
        row.optional_text(5)?,
        Timestamp::from_millis(row.int(6)?),
        Timestamp::from_millis(row.int(7)?),
        Bytes::from(row.blob(8)?),
    );
    event.signing_key = row.optional_text(13)?;
    if let (Some(timestamp), Some(signature)) = (row.optional_text(18)?, row.optional_text(19)?) {
        event.signature_headers = Some(SignatureHeaders::new(timestamp, signature));
    }
    Ok(InboxEntry {
        seq: row.int(0)?,
        event,
        status: InboxStatus::parse(&row.text(9)?).unwrap_or(InboxStatus::Pending),
        attempts: u32::try_from(row.int(10)?).unwrap_or(0),
        next_attempt_at: Timestamp::from_millis(row.int(11)?),
        last_error: row.optional_text(12)?,
        handled_at: row.optional_int(14)?.map(Timestamp::from_millis),
        replays: u32::try_from(row.int(15)?).unwrap_or(0),
        last_replayed_at: row.optional_int(16)?.map(Timestamp::from_millis),
        receipt: row.optional_text(17)?,
        history: super::inbox_history::sql::parse(row.json(20)?.as_deref()),
    })
}

/// Where an event is in its life in the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InboxStatus {
    /// Waiting for its first run.
    Pending,
    /// Its handler failed; waiting for the next attempt.
    Retrying,
    /// A worker holds it now.
    Running,
    /// Handled.
    Done,
    /// Failed on its last attempt; kept with its last error until replayed.
    Dead,
}

impl InboxStatus {
    /// The status as stored: `pending`, `retrying`, `running`, `done`, `dead`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Retrying => "retrying",
            Self::Running => "running",
            Self::Done => "done",
            Self::Dead => "dead",
        }
    }

    /// The status stored as `text`, if it is one.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "retrying" => Self::Retrying,
            "running" => Self::Running,
            "done" => Self::Done,
            "dead" => Self::Dead,
            _ => return None,
        })
    }
}

impl fmt::Display for InboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event as the inbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxEntry {
    /// Its number in the inbox, in arrival order.
    pub seq: i64,
    /// What was kept at arrival.
    pub event: NewEvent,
    /// Where it is now.
    pub status: InboxStatus,
    /// How many times a worker took it since it arrived or was last
    /// replayed (an attempt given back at shutdown is not counted).
    pub attempts: u32,
    /// When it may run next: for a new event that an older event of its
    /// object holds back, in the SQLite and PostgreSQL inboxes, possibly
    /// when that one is next due (see the [claim order](Inbox#claim-order)).
    pub next_attempt_at: Timestamp,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// When a worker last completed it (kept through a replay, so that a
    /// replay can say the event was handled before).
    pub handled_at: Option<Timestamp>,
    /// How many times it was replayed.
    pub replays: u32,
    /// When it was last replayed.
    pub last_replayed_at: Option<Timestamp>,
    /// What the destination its handler forwarded it to said it kept (a
    /// Redis stream entry id, a JetStream sequence), as the handler
    /// [recorded](Inbox::record_receipt) it; cleared by a replay.
    pub receipt: Option<String>,
    /// Its newest 20 attempts, oldest first: when each started, how long it
    /// ran and how it ended (completed, failed with its error, given back
    /// at shutdown, or lost when its lease ended). Kept through a replay;
    /// empty for an event no worker took since the inbox recorded them.
    pub history: Vec<InboxAttemptRecord>,
}

/// An event a worker took, with the fencing token that alone can settle it.
#[derive(Debug, Clone)]
pub struct InboxClaim {
    /// The event.
    pub entry: InboxEntry,
    /// The claim's token: a settle with another (or after the lease ended
    /// and another worker took the event) changes nothing.
    pub token: LeaseToken,
}

/// Which events an operation applies to: each field that is set must
/// match; the default matches every event.
///
/// ```
/// use clink_webhooks::store::{InboxFilter, InboxStatus};
///
/// let dead_orders = InboxFilter::default()
///     .status(InboxStatus::Dead)
///     .event_type("order.succeeded");
/// # let _ = dead_orders;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxFilter {
    /// Events with this status.
    pub status: Option<InboxStatus>,
    /// Events of this type, as sent (`order.succeeded`).
    pub event_type: Option<String>,
    /// Events of this account (`""` for events with no account).
    pub account: Option<String>,
    /// Events about this object, as `family:id` (with the account's prefix
    /// for events of an account, as [`NewEvent::object_key`] holds it).
    pub object_key: Option<String>,
    /// Events received at or after this time.
    pub received_from: Option<Timestamp>,
    /// Events received before this time.
    pub received_until: Option<Timestamp>,
    /// Events numbered at most this ([`InboxEntry::seq`], given in order
    /// of arrival): for an operation that holds for the events a page
    /// showed, up to the newest of them (see [`Inbox::replay_matching`]
    /// for what an inbox of your own does with it).
    pub seq_through: Option<i64>,
}

impl InboxFilter {
    /// Only events with `status`.
    #[must_use]
    pub fn status(mut self, status: InboxStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only events of `event_type`.
    #[must_use]
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Only events of `account` (`""`: events with no account).
    #[must_use]
    pub fn account(mut self, account: impl Into<String>) -> Self {
        self.account = Some(account.into());
        self
    }

    /// Only events about `object_key`.
    #[must_use]
    pub fn object_key(mut self, object_key: impl Into<String>) -> Self {
        self.object_key = Some(object_key.into());
        self
    }

    /// Only events received at or after `from` and before `until`.
    #[must_use]
    pub fn received(mut self, from: Option<Timestamp>, until: Option<Timestamp>) -> Self {
        self.received_from = from;
        self.received_until = until;
        self
    }

    /// Only events numbered at most `seq`.
    #[must_use]
    pub fn seq_through(mut self, seq: i64) -> Self {
        self.seq_through = Some(seq);
        self
    }

    /// Whether `entry` matches.
    #[must_use]
    pub fn matches(&self, entry: &InboxEntry) -> bool {
        let event = &entry.event;
        let received = event.received_at;
        self.status.is_none_or(|status| entry.status == status)
            && self
                .event_type
                .as_ref()
                .is_none_or(|t| *t == event.event_type)
            && self
                .account
                .as_ref()
                .is_none_or(|a| a.as_str() == event.account.as_deref().unwrap_or(""))
            && self
                .object_key
                .as_ref()
                .is_none_or(|o| Some(o.as_str()) == event.object_key.as_deref())
            && self.received_from.is_none_or(|from| received >= from)
            && self.received_until.is_none_or(|until| received < until)
            && self.seq_through.is_none_or(|through| entry.seq <= through)
    }

    /// The filter as SQL parameters, in the order of [`filter_sql`]:
    /// status, type, account, object, from, until, through.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn params(&self) -> FilterParams<'_> {
        FilterParams {
            status: self.status.map(InboxStatus::as_str),
            event_type: self.event_type.as_deref(),
            account: self.account.as_deref(),
            object_key: self.object_key.as_deref(),
            from: self.received_from.map(Timestamp::as_millis),
            until: self.received_until.map(Timestamp::as_millis),
            through: self.seq_through,
        }
    }
}

/// An [`InboxFilter`] as SQL parameters.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) struct FilterParams<'a> {
    pub(crate) status: Option<&'a str>,
    pub(crate) event_type: Option<&'a str>,
    pub(crate) account: Option<&'a str>,
    pub(crate) object_key: Option<&'a str>,
    pub(crate) from: Option<i64>,
    pub(crate) until: Option<i64>,
    pub(crate) through: Option<i64>,
}

/// How many parameters [`filter_sql`] numbers: a statement's own come
/// after them, from `FILTER_PARAMS + 1`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) const FILTER_PARAMS: usize = 7;

/// How many events one statement of a purge reads in the SQLite and
/// PostgreSQL inboxes (see [`Inbox::purge`]): the next this many, in
/// order, whether they are deleted or kept.
pub const PURGE_STEP: i64 = 5_000;

/// A purge over the events numbered `oldest` to `newest`, in steps:
/// `step(from)` reads the next [`PURGE_STEP`] events numbered `from` to
/// `newest` and deletes those to purge among them, and says the last number
/// it read (`None`: none left) and how many it deleted. The next step starts
/// after that number, so a step reads events, never runs of numbers none
/// holds (PostgreSQL spends a number on every duplicate delivery). Logged at
/// debug with the count of steps; how many were deleted.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) async fn purge_in_steps<F, Fut>(
    oldest: i64, newest: i64, mut step: F,
) -> Result<u64, StoreError>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = Result<(Option<i64>, u64), StoreError>>,
{
    let (mut from, mut purged, mut steps) = (oldest, 0, 0_u64);
    while from <= newest {
        let (last, deleted) = step(from).await?;
        steps += 1;
        purged += deleted;
        match last.and_then(|last| last.checked_add(1)) {
            Some(next) if next > from => from = next,
            _ => break,
        }
    }
    tracing::debug!(purged, steps, "inbox: purged the old events");
    Ok(purged)
}

/// The condition of an [`InboxFilter`] in SQL, its parameters numbered from
/// `first` (`$n` for PostgreSQL with its type, `?n` for SQLite).
///
/// Without `present`, each criterion is written `(p IS NULL OR col = p)`,
/// for PostgreSQL, which plans each statement with the values it is given
/// (what is `NULL` drops out). With the parameters it will be given, each
/// criterion is written as its value says: `col = p` for one that is set,
/// `p IS NULL` (always true, and it keeps every parameter in the statement)
/// for one that is not. SQLite plans a statement once, before any value:
/// the first form kept it from every index, and a filtered page or count
/// read the whole table while it held the inbox's only connection.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn filter_sql(mark: char, first: usize, present: Option<&FilterParams<'_>>) -> String {
    let p = |n: usize, ty: &str| {
        if mark == '$' {
            format!("${}::{ty}", first + n)
        } else {
            format!("?{}", first + n)
        }
    };
    let criteria: [_; FILTER_PARAMS] = [
        ("status =", "text", present.map(|f| f.status.is_some())),
        (
            "event_type =",
            "text",
            present.map(|f| f.event_type.is_some()),
        ),
        ("account =", "text", present.map(|f| f.account.is_some())),
        (
            "object_key =",
            "text",
            present.map(|f| f.object_key.is_some()),
        ),
        (
            "received_at_ms >=",
            "bigint",
            present.map(|f| f.from.is_some()),
        ),
        (
            "received_at_ms <",
            "bigint",
            present.map(|f| f.until.is_some()),
        ),
        ("seq <=", "bigint", present.map(|f| f.through.is_some())),
    ];
    criteria
        .iter()
        .enumerate()
        .map(|(n, (test, ty, set))| {
            let p = p(n, ty);
            match set {
                None => format!("({p} IS NULL OR {test} {p})"),
                Some(true) => format!("{test} {p}"),
                Some(false) => format!("{p} IS NULL"),
            }
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// What [`Inbox::replay`] or [`Inbox::replay_if`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replayed {
    /// The event is pending again, its attempts reset.
    Replayed,
    /// The event was handled (at that time, when known) and was left as it
    /// is: replaying it would run its handler a second time. Replay it
    /// with `force` to do that on purpose.
    Handled {
        /// When it was handled.
        at: Option<Timestamp>,
    },
    /// A worker holds the event now; it was left alone.
    Running,
    /// No event has that number.
    Missing,
    /// The event is no longer as the [`ReplayPin`] given to
    /// [`Inbox::replay_if`] says (replayed, handled or failed since): it
    /// was left as it is.
    Changed,
}

/// The state of an event that a conditional replay
/// ([`Inbox::replay_if`]) holds to: what a person was shown and confirmed.
///
/// ```
/// use clink_webhooks::store::{InboxStatus, ReplayPin};
/// use clink_webhooks::Timestamp;
///
/// // Handled at that time, and never replayed since it arrived.
/// let shown = ReplayPin::new(InboxStatus::Done, 0, Some(Timestamp::from_millis(1_700_000_000_000)));
/// # let _ = shown;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayPin {
    /// Its status.
    pub status: InboxStatus,
    /// How many times it had been replayed ([`InboxEntry::replays`]).
    pub replays: u32,
    /// When a worker had last completed it ([`InboxEntry::handled_at`]),
    /// to the millisecond.
    pub handled_at: Option<Timestamp>,
}

impl ReplayPin {
    /// An event with `status`, replayed `replays` times, last handled at
    /// `handled_at` (`None`: never).
    #[must_use]
    pub fn new(status: InboxStatus, replays: u32, handled_at: Option<Timestamp>) -> Self {
        Self {
            status,
            replays,
            handled_at,
        }
    }

    /// `entry` as it is now.
    #[must_use]
    pub fn of(entry: &InboxEntry) -> Self {
        Self::new(entry.status, entry.replays, entry.handled_at)
    }

    /// Whether `entry` is still as pinned.
    #[must_use]
    pub fn holds_for(&self, entry: &InboxEntry) -> bool {
        self.status == entry.status
            && self.replays == entry.replays
            && self.handled_at.map(Timestamp::as_millis)
                == entry.handled_at.map(Timestamp::as_millis)
    }

    /// What [`Inbox::replay_if`] answers when its conditional update
    /// changed nothing, from the event as read beside it (`None`:
    /// missing): [`Replayed::Running`] when it is running as pinned, and
    /// [`Replayed::Changed`] otherwise (an event read as pinned and not
    /// running was no longer so when the update ran).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn unreplayed(&self, found: Option<(&str, i64, Option<i64>)>) -> Replayed {
        match found {
            None => Replayed::Missing,
            Some((status, replays, handled))
                if status == InboxStatus::Running.as_str()
                    && self.status == InboxStatus::Running
                    && i64::from(self.replays) == replays
                    && self.handled_at.map(Timestamp::as_millis) == handled =>
            {
                Replayed::Running
            }
            Some(_) => Replayed::Changed,
        }
    }
}

/// What [`Inbox::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new event was kept.
    New,
    /// The account already had an event with this id: nothing was written.
    Duplicate,
}

impl Inserted {
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    /// `New` when a row was written, `Duplicate` otherwise.
    pub(crate) fn new_if(written: bool) -> Self {
        if written {
            Self::New
        } else {
            Self::Duplicate
        }
    }
}

/// How many events are where, for operations and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxStats {
    /// Waiting for their first run.
    pub pending: u64,
    /// Waiting for a retry.
    pub retrying: u64,
    /// Due now: pending, retrying with the retry's time come, or running.
    /// Workers with nothing due have drained the inbox. A pending event set
    /// aside behind an older one of its object (see the
    /// [claim order](Inbox#claim-order)) is not due until that one is.
    pub due: u64,
    /// Held by a worker.
    pub running: u64,
    /// Dead, until replayed or purged.
    pub dead: u64,
    /// When the oldest event still to handle arrived.
    pub oldest_unhandled: Option<Timestamp>,
}

/// An [`Inbox::wait`] for a backend that is told of new events by `notify`:
/// until it is, or `timeout` has passed. The backend wakes one waiter with
/// [`Notify::notify_one`](tokio::sync::Notify::notify_one) when an event may
/// be due, and one more with [`wake_another`] after each claim that took one.
pub(crate) fn wait_for(notify: &tokio::sync::Notify, timeout: Duration) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        let _ = tokio::time::timeout(timeout, notify.notified()).await;
    })
}

/// After a claim that took an event: wakes one more idle worker, since the
/// wake-up that brought this one may stand for more events than one (a
/// batch inserted at once, a replay of many, `NOTIFY`s of one transaction
/// folded into one). A worker that then finds nothing waits again.
pub(crate) fn wake_another(notify: &tokio::sync::Notify) {
    notify.notify_one();
}

impl InboxStats {
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    /// [`add`](Self::add) for a row of an SQL backend's `GROUP BY status`:
    /// the status as stored, the count, the oldest arrival in epoch
    /// milliseconds, how many are due. A status this version does not know
    /// is left out.
    pub(crate) fn add_row(&mut self, status: &str, count: i64, oldest: Option<i64>, due: i64) {
        if let Some(status) = InboxStatus::parse(status) {
            let count = u64::try_from(count).unwrap_or(0);
            let due = u64::try_from(due).unwrap_or(0);
            self.add(status, count, due, oldest.map(Timestamp::from_millis));
        }
    }

    /// Counts `count` events with `status`, the oldest of them arrived at
    /// `oldest`: what a backend's `GROUP BY status` gives, row by row.
    pub(crate) fn add(
        &mut self, status: InboxStatus, count: u64, due: u64, oldest: Option<Timestamp>,
    ) {
        if matches!(
            status,
            InboxStatus::Pending | InboxStatus::Retrying | InboxStatus::Running
        ) {
            self.due += due;
        }
        let unhandled = match status {
            InboxStatus::Pending => {
                self.pending += count;
                true
            }
            InboxStatus::Retrying => {
                self.retrying += count;
                true
            }
            InboxStatus::Running => {
                self.running += count;
                true
            }
            InboxStatus::Dead => {
                self.dead += count;
                false
            }
            InboxStatus::Done => false,
        };
        if let (true, Some(oldest)) = (unhandled, oldest) {
            self.oldest_unhandled = Some(self.oldest_unhandled.map_or(oldest, |o| o.min(oldest)));
        }
    }
}

/// Keeps verified deliveries until workers have handled them.
///
/// Object safe; `Arc<I>` is an inbox when `I` is. Implemented by
/// [`MemoryInbox`](super::MemoryInbox) (tests), `PostgresInbox` (feature
/// `postgres`, many instances) and `SqliteInbox` (feature `sqlite`, one
/// instance, durable). `tests/suite/inbox.rs` runs one conformance suite against
/// each.
///
/// # Claim order
///
/// [`claim`](Self::claim) hands out an event only when
///
/// - it is `pending`, or `retrying` and due, or `running` with its lease
///   ended (its worker is presumed dead);
/// - it arrived at least `reorder_window` ago, so that deliveries arriving close
///   together are sorted before either runs;
/// - it names no object, or no other event about its object is running
///   within its lease (a handler run past its lease no longer holds its
///   object back: its event is presumed abandoned, as above), and none
///   older (by `created`, then event id) is still to handle.
///
/// Among those it takes the one due first (a new event is due as it is
/// kept, a retry when its backoff ends, a replayed event as it is replayed,
/// one whose worker's lease ended when it ended), of those due at once the
/// one kept first. So the events of one object run one at a time, oldest
/// first, and new events about no object run in the order they were kept
/// without waiting on each other.
///
/// The SQLite and PostgreSQL inboxes read the waiting events by when they
/// are due, so that a claim never reads the retries not due yet (a
/// destination down for a day leaves thousands of them, and each claim
/// read them all). Two take the first kept instead, whenever it was
/// due: the [`MemoryInbox`](super::MemoryInbox), and a PostgreSQL table
/// made by an earlier version and in use, as before, until its index by
/// due time is built and the inbox migrated again (see
/// `PostgresInbox::migrate`).
///
/// The SQLite and PostgreSQL inboxes reading by due time also set aside a
/// new event that an older event of its object holds back (SQLite when a
/// claim reads it, PostgreSQL when a claim finds nothing to take): it is
/// due again when that one is (its retry, or the end of its worker's
/// lease), and at once, as it was before, when it becomes the oldest of
/// its object still to handle (the events before it done or dead) or an
/// event of its object stops running while it is (done, failed, given
/// back, dead). Its
/// [`next_attempt_at`](InboxEntry::next_attempt_at) says when, and
/// [`InboxStats::due`] does not count it. Otherwise every claim would read
/// all of them again: a destination down for hours leaves each object's
/// oldest event retrying and its newer events behind it, as many as
/// arrive meanwhile. A claim sets aside at most 64 at a time in
/// PostgreSQL (each under its object's advisory lock), 4,096 in SQLite.
pub trait Inbox: Send + Sync + 'static {
    /// Keeps `event` unless its account already has an event with its id.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when nothing could be written: the delivery must not
    /// be acknowledged. [`StoreErrorKind::InvalidInput`](super::StoreErrorKind::InvalidInput)
    /// is for an event id this inbox cannot keep (too long, say), and for
    /// nothing else: the [intake](crate::layer::InboxIntake) refuses such a
    /// delivery `400` for good, or keeps it in the layer's
    /// [dead letters](crate::ClinkLayer::dead_letters) and acknowledges it.
    fn insert<'a>(&'a self, event: &'a NewEvent) -> BoxFuture<'a, Result<Inserted, StoreError>>;

    /// Keeps `event` as `dead` with `error`, unless its account already has
    /// an event with its id: for an event no retry can help (its data does
    /// not decode), kept to look at and to [`replay`](Self::replay) after an
    /// upgrade.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    fn insert_dead<'a>(
        &'a self, event: &'a NewEvent, error: &'a str,
    ) -> BoxFuture<'a, Result<Inserted, StoreError>>;

    /// Takes the next event to handle (see [Claim order](Self#claim-order))
    /// for `lease`, counting an attempt and noting when it started; `None`
    /// when there is none. An event taken over because its lease ended
    /// gets the lost attempt in its [history](InboxEntry::history), as
    /// [`LeaseExpired`](super::InboxAttemptOutcome::LeaseExpired).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be read.
    fn claim(
        &self, lease: Duration, reorder_window: Duration,
    ) -> BoxFuture<'_, Result<Option<InboxClaim>, StoreError>>;

    /// Marks a claimed event handled, if the claim still holds, and records
    /// the attempt as [`Completed`](super::InboxAttemptOutcome::Completed).
    /// A claim holds until it is settled or another claim takes the event
    /// over (after its lease ended): its token fences, not the clock, so a
    /// handler that outlived its lease while nobody took the event still
    /// settles it, and the event does not run again. This and the other
    /// settles answer [`Settle::LeaseLost`] when the claim no longer holds.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be written; the lease then
    /// frees the event and it runs again.
    fn complete<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>>;

    /// Records a failed attempt: the event is `retrying` from `retry_at`, or
    /// `dead` when `retry_at` is `None`, with `error` kept as its last error
    /// and (cut to 2 KiB) in the attempt's
    /// [`Failed`](super::InboxAttemptOutcome::Failed) record.
    ///
    /// # Errors
    ///
    /// As [`complete`](Self::complete).
    fn fail<'a>(
        &'a self, claim: &'a InboxClaim, error: &'a str, retry_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<Settle, StoreError>>;

    /// Gives a claimed event back without counting the attempt (shutdown),
    /// recording it as [`Released`](super::InboxAttemptOutcome::Released).
    ///
    /// # Errors
    ///
    /// As [`complete`](Self::complete).
    fn release<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>>;

    /// The events `filter` matches, oldest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be read.
    fn list<'a>(
        &'a self, filter: &'a InboxFilter, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>>;

    /// The event numbered `seq`.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be read.
    fn get(&self, seq: i64) -> BoxFuture<'_, Result<Option<InboxEntry>, StoreError>>;

    /// Makes event `seq` pending again now, with its attempts reset (its
    /// [history](InboxEntry::history) kept), and counts the replay on it.
    /// A handled (`done`) event is left as it is
    /// unless `force`: replaying it runs its handler a second time. A
    /// running event is always left alone.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be written.
    fn replay(&self, seq: i64, force: bool) -> BoxFuture<'_, Result<Replayed, StoreError>>;

    /// Replays event `seq` only if it is still as `pin` says (its status,
    /// its replays and when it was handled): for the second confirmation a
    /// person gives to replay a handled event, which holds for the event as
    /// they were shown it. The pin stands for that confirmation: an event
    /// still as pinned is replayed as [`replay`](Self::replay) with `force`
    /// replays it, even a handled one. It answers [`Replayed::Changed`],
    /// doing nothing, when the event is no longer as pinned;
    /// [`Replayed::Running`] when it is, and a worker holds it (a running
    /// event is always left alone); [`Replayed::Missing`]; or
    /// [`Replayed::Replayed`].
    ///
    /// The crate's backends check and replay in one step (in SQL, one
    /// `UPDATE` whose `WHERE` holds the pinned state; in memory, under the
    /// inbox's lock), so a worker that settles the event, or another
    /// replay, in the meantime is caught. **The default is not atomic**: it
    /// reads the event with [`get`](Self::get), then replays it if it was
    /// as pinned (with `force` when pinned `done`), so an event that
    /// changes between the two calls is replayed all the same (a handled
    /// one only when pinned as handled). Implement it in an inbox of
    /// your own that can check and write in one step.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be read or written.
    fn replay_if<'a>(
        &'a self, seq: i64, pin: &'a ReplayPin,
    ) -> BoxFuture<'a, Result<Replayed, StoreError>> {
        Box::pin(async move {
            match self.get(seq).await? {
                None => Ok(Replayed::Missing),
                Some(entry) if !pin.holds_for(&entry) => Ok(Replayed::Changed),
                // Forced only for a pin of a handled event: one pinned
                // dead and handled since its read is left as it is.
                Some(_) => self.replay(seq, pin.status == InboxStatus::Done).await,
            }
        })
    }

    /// As [`replay`](Self::replay) for every event `filter` matches; the
    /// numbers of the events replayed.
    ///
    /// The crate's inboxes apply the whole filter in the replay's own step
    /// (in SQL, the `WHERE` of its `UPDATE`; in memory, under the inbox's
    /// lock), [`seq_through`](InboxFilter::seq_through) included: an event
    /// numbered past it is left as it is, even one that died an instant
    /// before the replay. The console's replay of the dead events bounds
    /// its filter so, to replay no event newer than its page showed. The
    /// SQLite and PostgreSQL inboxes replay in steps of [`PURGE_STEP`]
    /// events in order, each a statement of its own under the store's
    /// timeout (on SQLite two, on one held connection: where the step ends,
    /// then the `UPDATE`), as a purge goes: what a step replayed stays
    /// replayed if a later one fails, and a caller that stops waiting (the
    /// console at its deadline) stops the replay at the step under way,
    /// which lands whole or not at all (PostgreSQL cancels it and it rolls
    /// back; SQLite's runs to its end). The memory inbox replays in one
    /// step.
    ///
    /// [`InboxFilter`] is `#[non_exhaustive]`, and an inbox of your own
    /// reads only the fields it knows: one written before `seq_through`
    /// existed ignores it, and replays the events past it too. Apply every
    /// field, in the step that replays (with [`InboxFilter::matches`] on
    /// each event, or in your statement's condition); an inbox that cannot
    /// apply one should answer an error when the filter sets it, rather
    /// than replay more than asked (a filter rebuilt with the builder
    /// methods from the fields the inbox applies compares unequal to one
    /// that sets another).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be written.
    fn replay_matching<'a>(
        &'a self, filter: &'a InboxFilter, force: bool,
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>>;

    /// Deletes the done events that settled before `before`; how many.
    /// Dead events are kept until they are replayed (and then handled), or
    /// deleted on purpose by [`purge_dead`](Self::purge_dead): an event
    /// that never ran to the end is never deleted by a retention alone.
    /// An event is deleted only when it arrived, was last taken by a
    /// worker, was last handled and was last replayed all before `before`,
    /// so that purging everything older than a retention keeps each
    /// finished event for the retention after it was last handled, failed
    /// or replayed, however long ago it arrived (a failed attempt counts
    /// from when it was taken: usually within one lease before it failed,
    /// up to a few leases for a failure whose settle the inbox refused for
    /// a while and the worker retried; an event
    /// kept dead at arrival, by [`insert_dead`](Self::insert_dead), from
    /// its arrival). Events still to run are never deleted.
    ///
    /// The SQLite and PostgreSQL inboxes delete in steps of
    /// [`PURGE_STEP`] events in order, each step a statement of its own
    /// (on SQLite two, on one held connection: where the step ends, then
    /// the deletion) under the store's timeout, from the oldest event to
    /// the newest there was
    /// when the purge began: however large the inbox, no statement reads
    /// more than a step's rows, and no step is spent on numbers no event
    /// holds (one statement over the whole table
    /// ran past the timeout on a large inbox every time, and the inbox
    /// grew for good), deliveries and claims run between the steps, and
    /// what a step deleted stays deleted if a later one fails.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be written (the steps before
    /// it kept their deletions).
    fn purge(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Deletes the dead events that settled before `before` (by the same
    /// rule as [`purge`](Self::purge)); how many. Nothing calls it but an
    /// operator's decision: each of them is an event acknowledged to Clink
    /// that no handler finished.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be written; by default
    /// (an inbox of your own that does not have it), one of kind
    /// [`InvalidInput`](crate::store::StoreErrorKind::InvalidInput) that
    /// says so.
    fn purge_dead(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
        let _ = before;
        Box::pin(std::future::ready(Err(StoreError::new(
            crate::store::StoreErrorKind::InvalidInput,
            "this inbox cannot delete its dead events",
        ))))
    }

    /// How many events are where.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be read.
    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>>;

    /// Writes to the inbox and commits, the way [`insert`](Self::insert)
    /// does, without keeping an event: whether it can take deliveries now
    /// (a full disk, a read-only file or a lost connection fails it).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] saying why it cannot write.
    fn check_writable(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Waits until an event may have arrived, or `timeout` passed. The
    /// default just waits `timeout`; backends that can be told of inserts
    /// (in memory, SQLite, PostgreSQL's `LISTEN`) wake an idle worker at
    /// once. They wake one, not all: a claim that takes an event wakes one
    /// more, in case another is due too, so that a wake-up standing for
    /// several events reaches as many workers as it needs and no more. A
    /// caller that is not a worker takes a worker's wake-up when it waits
    /// here (the worker then looks at its next poll, within 250 ms): one
    /// that watches the inbox polls [`stats`](Self::stats) instead.
    fn wait(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(timeout))
    }

    /// The longest one call may take before it fails (a networked inbox's
    /// per-call timeout), or zero (the default) for an inbox that answers
    /// at once. [`Workers`](crate::inbox::Workers) stop a handler at least
    /// this long before its lease ends (and at least a tenth of the lease,
    /// at most half of it), so that a completion sent then and answered in
    /// time lands before another worker can take the event over and run it
    /// again. [`PostgresInbox`](crate::store::PostgresInbox) answers its
    /// [`with_timeout`](crate::store::PostgresInbox::with_timeout); give an
    /// inbox of your own that waits on a network its timeout.
    fn call_timeout(&self) -> Duration {
        Duration::ZERO
    }

    /// Records on the event of `attempt` (from
    /// [`Event::inbox_attempt`](crate::Event::inbox_attempt), in a handler
    /// that workers over this inbox run) what the destination it was
    /// forwarded to said it kept, if the attempt's claim still holds (no
    /// other worker took the event over): a
    /// retry after a crash reads it in [`InboxEntry::receipt`] and need not
    /// forward the event again. The crate's backends record it; the default
    /// says the inbox cannot.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be written, or records no receipts.
    fn record_receipt<'a>(
        &'a self, attempt: &'a InboxAttempt, receipt: &'a str,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        let _ = (attempt, receipt);
        Box::pin(std::future::ready(Err(StoreError::new(
            super::StoreErrorKind::InvalidInput,
            "this inbox does not record receipts",
        ))))
    }

    /// The events `filter` matches, newest first, at most `limit`, from
    /// `start`: a page of a list a person reads. The default reads every
    /// matching event with [`list`](Self::list); the crate's backends read
    /// only the page.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be read.
    fn page<'a>(
        &'a self, filter: &'a InboxFilter, start: PageStart, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
        Box::pin(async move {
            let all = self.list(filter, usize::MAX).await?;
            Ok(super::inbox_page::page_of(all.into_iter(), start, limit))
        })
    }

    /// The page [`page`](Self::page) returns, as summaries: each event
    /// without its body, its attempts' history, its receipt or its
    /// signature (see [`InboxSummary`]), and with only the first
    /// [`SUMMARY_ERROR_CHARS`](super::SUMMARY_ERROR_CHARS) characters of its
    /// last error, for a list that shows a row per event. The default
    /// reads the events whole with [`page`](Self::page) and keeps what
    /// [`InboxSummary::from`] does; the crate's backends never read the
    /// bodies, nor a long error whole (in SQL, they do not select the
    /// bodies, and select only the start of the error).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be read.
    fn page_summaries<'a>(
        &'a self, filter: &'a InboxFilter, start: PageStart, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxSummary>, StoreError>> {
        Box::pin(async move {
            let page = self.page(filter, start, limit).await?;
            Ok(page.iter().map(InboxSummary::from).collect())
        })
    }

    /// How many events `filter` matches. The default counts what
    /// [`list`](Self::list) returns.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be read.
    fn count<'a>(&'a self, filter: &'a InboxFilter) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let all = self.list(filter, usize::MAX).await?;
            Ok(all.len() as u64)
        })
    }

    /// How many events arrived and how many were handled in each of
    /// `intervals` intervals of `interval`, the first starting at `since`.
    /// The default reads every event with [`list`](Self::list).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be read.
    fn activity(
        &self, since: Timestamp, interval: Duration, intervals: usize,
    ) -> BoxFuture<'_, Result<InboxActivity, StoreError>> {
        Box::pin(async move {
            let mut activity = InboxActivity::new(since, interval, intervals);
            for entry in self.list(&InboxFilter::default(), usize::MAX).await? {
                activity.tally(&entry);
            }
            Ok(activity)
        })
    }
}

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*) -> $out:ty;)+) => {
        impl<I: Inbox + ?Sized> Inbox for Arc<I> {
            fn insert<'a>(&'a self, event: &'a NewEvent) -> BoxFuture<'a, Result<Inserted, StoreError>> {
                (**self).insert(event)
            }
            fn complete<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>> {
                (**self).complete(claim)
            }
            fn fail<'a>(
                &'a self,
                claim: &'a InboxClaim,
                error: &'a str,
                retry_at: Option<Timestamp>,
            ) -> BoxFuture<'a, Result<Settle, StoreError>> {
                (**self).fail(claim, error, retry_at)
            }
            fn release<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>> {
                (**self).release(claim)
            }
            fn insert_dead<'a>(&'a self, event: &'a NewEvent, error: &'a str) -> BoxFuture<'a, Result<Inserted, StoreError>> {
                (**self).insert_dead(event, error)
            }
            fn list<'a>(&'a self, filter: &'a InboxFilter, limit: usize) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
                (**self).list(filter, limit)
            }
            fn replay_matching<'a>(&'a self, filter: &'a InboxFilter, force: bool) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
                (**self).replay_matching(filter, force)
            }
            fn record_receipt<'a>(&'a self, attempt: &'a InboxAttempt, receipt: &'a str) -> BoxFuture<'a, Result<Settle, StoreError>> {
                (**self).record_receipt(attempt, receipt)
            }
            fn page<'a>(&'a self, filter: &'a InboxFilter, start: PageStart, limit: usize) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
                (**self).page(filter, start, limit)
            }
            fn count<'a>(&'a self, filter: &'a InboxFilter) -> BoxFuture<'a, Result<u64, StoreError>> {
                (**self).count(filter)
            }
            fn page_summaries<'a>(&'a self, filter: &'a InboxFilter, start: PageStart, limit: usize) -> BoxFuture<'a, Result<Vec<InboxSummary>, StoreError>> {
                (**self).page_summaries(filter, start, limit)
            }
            fn replay_if<'a>(&'a self, seq: i64, pin: &'a ReplayPin) -> BoxFuture<'a, Result<Replayed, StoreError>> {
                (**self).replay_if(seq, pin)
            }
            fn call_timeout(&self) -> Duration {
                (**self).call_timeout()
            }
            $(
                fn $method(&self, $($arg: $ty),*) -> BoxFuture<'_, $out> {
                    (**self).$method($($arg),*)
                }
            )+
        }
    };
}

forward! {
    claim(lease: Duration, reorder_window: Duration) -> Result<Option<InboxClaim>, StoreError>;
    purge_dead(before: Timestamp) -> Result<u64, StoreError>;
    get(seq: i64) -> Result<Option<InboxEntry>, StoreError>;
    replay(seq: i64, force: bool) -> Result<Replayed, StoreError>;
    check_writable() -> Result<(), StoreError>;
    purge(before: Timestamp) -> Result<u64, StoreError>;
    stats() -> Result<InboxStats, StoreError>;
    wait(timeout: Duration) -> ();
    activity(since: Timestamp, interval: Duration, intervals: usize) -> Result<InboxActivity, StoreError>;
}

/// The order key of an event about an object: `created` (or, without it,
/// arrival), then the event id.
pub(crate) fn order_key(event: &NewEvent) -> (i64, &str) {
    (
        event.created.unwrap_or(event.received_at).as_millis(),
        event.event_id.as_str(),
    )
}

#[cfg(all(test, any(feature = "sqlite", feature = "postgres")))]
mod tests {
    use super::purge_in_steps;

    /// Each step starts after the last number the one before read, and
    /// the purge ends at the newest number, when a step reads none, or at
    /// the largest number.
    #[tokio::test]
    async fn a_purge_steps_from_the_last_number_read() {
        let mut asked = Vec::new();
        let purged = purge_in_steps(3, 40, |from| {
            asked.push(from);
            // Events at every tenth number, two read per step, one deleted.
            let last = (from..=40).filter(|n| n % 10 == 0).nth(1);
            async move { Ok((last, 1)) }
        })
        .await
        .unwrap();
        assert_eq!(asked, [3, 21]);
        assert_eq!(purged, 2);

        let mut asked = Vec::new();
        purge_in_steps(5, 100, |from| {
            asked.push(from);
            async move { Ok((None, 0)) }
        })
        .await
        .unwrap();
        assert_eq!(asked, [5], "a step that read nothing ends the purge");

        let mut asked = Vec::new();
        purge_in_steps(i64::MAX - 1, i64::MAX, |from| {
            asked.push(from);
            async move { Ok((Some(i64::MAX), 0)) }
        })
        .await
        .unwrap();
        assert_eq!(asked, [i64::MAX - 1]);
        assert_eq!(
            purge_in_steps(8, 7, |_| async { Ok((Some(8), 1)) })
                .await
                .unwrap(),
            0
        );
    }
}

/// Claims for the stores' tests of a settle after the lease ended.
#[cfg(test)]
pub(crate) mod outlived {
    use std::time::{Duration, Instant};

    use super::{Inbox, InboxClaim, NewEvent};
    use crate::events::InboxAttempt;

    /// The attempt a handler run for `claim` is given.
    pub(crate) fn attempt(claim: &InboxClaim) -> InboxAttempt {
        InboxAttempt::new(
            claim.entry.seq,
            claim.entry.attempts,
            claim.token.as_str().to_owned(),
        )
    }

    /// An event `id` put in `inbox` and claimed for `lease`, returned once
    /// that lease has surely ended by this machine's clock (nobody took it
    /// over).
    pub(crate) async fn claim(inbox: &dyn Inbox, id: &str, lease: Duration) -> InboxClaim {
        inbox.insert(&NewEvent::order_succeeded(id)).await.unwrap();
        let claim = inbox.claim(lease, Duration::ZERO).await.unwrap().unwrap();
        let ended = Instant::now() + lease * 5;
        while Instant::now() < ended {
            tokio::time::sleep(lease).await;
        }
        claim
    }

    /// As [`claim`], then taken over by another claim: the first claim.
    pub(crate) async fn taken_over(inbox: &dyn Inbox, id: &str, lease: Duration) -> InboxClaim {
        let lost = claim(inbox, id, lease).await;
        let taken_over = inbox
            .claim(Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap()
            .expect("the lease ended");
        assert_eq!(taken_over.entry.seq, lost.entry.seq);
        lost
    }
}
