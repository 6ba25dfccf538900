//! [`Inbox`]: verified deliveries kept durably, to be handled later by
//! workers (see [`inbox`](crate::inbox)).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{BoxFuture, LeaseToken, Settle, StoreError};
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
}

impl NewEvent {
    /// A new event to keep; the fields are public to read.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        account: Option<String>,
        event_id: String,
        event_type: String,
        created: Option<Timestamp>,
        object_key: Option<String>,
        signed_at: Timestamp,
        received_at: Timestamp,
        body: Bytes,
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
        }
    }

    /// Sets the name of the key that verified the event.
    #[must_use]
    pub fn with_signing_key(mut self, name: impl Into<String>) -> Self {
        self.signing_key = Some(name.into());
        self
    }

    /// The event to keep for `verified`, received at `received_at`; its
    /// object key names the account too, so that two accounts' objects
    /// never share an order.
    #[must_use]
    pub fn from_verified(verified: &VerifiedEvent, received_at: Timestamp) -> Self {
        let event = verified.event();
        let object_key = event
            .object_key()
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
     last_error, signing_key";

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
    Ok(InboxEntry {
        seq: row.int(0)?,
        event,
        status: InboxStatus::parse(&row.text(9)?).unwrap_or(InboxStatus::Pending),
        attempts: u32::try_from(row.int(10)?).unwrap_or(0),
        next_attempt_at: Timestamp::from_millis(row.int(11)?),
        last_error: row.optional_text(12)?,
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
    /// How many times a worker took it.
    pub attempts: u32,
    /// When it may run next.
    pub next_attempt_at: Timestamp,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
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

/// What [`Inbox::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new event was kept.
    New,
    /// The account already had an event with this id: nothing was written.
    Duplicate,
}

/// How many events are where, for operations and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxStats {
    /// Waiting for their first run.
    pub pending: u64,
    /// Waiting for a retry.
    pub retrying: u64,
    /// Held by a worker.
    pub running: u64,
    /// Dead, until replayed or purged.
    pub dead: u64,
    /// When the oldest event still to handle arrived.
    pub oldest_unhandled: Option<Timestamp>,
}

impl InboxStats {
    /// Counts `count` events with `status`, the oldest of them arrived at
    /// `oldest`: what a backend's `GROUP BY status` gives, row by row.
    pub(crate) fn add(&mut self, status: InboxStatus, count: u64, oldest: Option<Timestamp>) {
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
/// - it names no object, or no other event about its object is running, and
///   none older (by `created`, then event id) is still to handle.
///
/// Among those it takes the one that arrived first. So the events of one
/// object run one at a time, oldest first, and events about no object run
/// in arrival order without waiting on each other.
pub trait Inbox: Send + Sync + 'static {
    /// Keeps `event` unless its account already has an event with its id.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when nothing could be written: the delivery must not
    /// be acknowledged.
    fn insert<'a>(&'a self, event: &'a NewEvent) -> BoxFuture<'a, Result<Inserted, StoreError>>;

    /// Takes the next event to handle (see [Claim order](Self#claim-order))
    /// for `lease`, counting an attempt; `None` when there is none.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be read.
    fn claim(
        &self,
        lease: Duration,
        reorder_window: Duration,
    ) -> BoxFuture<'_, Result<Option<InboxClaim>, StoreError>>;

    /// Marks a claimed event handled, if the claim still holds.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be written; the lease then
    /// frees the event and it runs again.
    fn complete<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>>;

    /// Records a failed attempt: the event is `retrying` from `retry_at`, or
    /// `dead` when `retry_at` is `None`, with `error` kept.
    ///
    /// # Errors
    ///
    /// As [`complete`](Self::complete).
    fn fail<'a>(
        &'a self,
        claim: &'a InboxClaim,
        error: &'a str,
        retry_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<Settle, StoreError>>;

    /// Gives a claimed event back without counting the attempt (shutdown).
    ///
    /// # Errors
    ///
    /// As [`complete`](Self::complete).
    fn release<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>>;

    /// Events with `status` (any when `None`), oldest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be read.
    fn list(
        &self,
        status: Option<InboxStatus>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<InboxEntry>, StoreError>>;

    /// The event numbered `seq`.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be read.
    fn get(&self, seq: i64) -> BoxFuture<'_, Result<Option<InboxEntry>, StoreError>>;

    /// Makes event `seq` pending again now, with its attempts reset,
    /// whatever its status but running; whether it did.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be written.
    fn replay(&self, seq: i64) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Makes every dead event pending again; how many.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be written.
    fn replay_dead(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Deletes the done and dead events that arrived before `before`; how many.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be written.
    fn purge(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// How many events are where.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the inbox cannot be read.
    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>>;

    /// Waits until an event may have arrived, or `timeout` passed. The
    /// default just waits `timeout`; backends that can be told of inserts
    /// (in memory, PostgreSQL's `LISTEN`) wake idle workers at once.
    fn wait(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(timeout))
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
    list(status: Option<InboxStatus>, limit: usize) -> Result<Vec<InboxEntry>, StoreError>;
    get(seq: i64) -> Result<Option<InboxEntry>, StoreError>;
    replay(seq: i64) -> Result<bool, StoreError>;
    replay_dead() -> Result<u64, StoreError>;
    purge(before: Timestamp) -> Result<u64, StoreError>;
    stats() -> Result<InboxStats, StoreError>;
    wait(timeout: Duration) -> ();
}

/// The order key of an event about an object: `created` (or, without it,
/// arrival), then the event id.
pub(crate) fn order_key(event: &NewEvent) -> (i64, &str) {
    (
        event.created.unwrap_or(event.received_at).as_millis(),
        event.event_id.as_str(),
    )
}
