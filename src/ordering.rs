//! Telling a stale event from a fresh one when Clink delivers out of order.
//!
//! Clink does not deliver in order: `order.succeeded` can arrive before
//! `order.created`, and a retried `subscription.past_due` can arrive after
//! the `subscription.activated` that resolved it. Each typed event is about
//! one object ([`ObjectKey`]: family and id) and has a [`Version`]: its
//! `created` time, then its id to break ties.
//!
//! Give the [`EventRouter`](crate::EventRouter) a [`FreshnessStore`] with
//! [`ordering`](crate::EventRouter::ordering) and it tells every handler
//! whether its event is [`Fresh`](Freshness::Fresh) or
//! [`Stale`](Freshness::Stale) (an event newer than it about the same object
//! was already handled), through [`Event::freshness`](crate::Event::freshness).
//! A version is recorded only after its handler succeeds, so a failed
//! handler never hides the event it failed on.
//!
//! # What freshness can and cannot see
//!
//! Freshness compares an event with the events *already handled* about its
//! object. Two events about one object handled at the same moment (on two
//! instances, or while a slow handler runs) both see `Fresh`, and an older
//! event arriving while a newer one is still being handled is `Fresh` too.
//! So freshness is a strong hint, not a lock: a handler that writes state
//! should still write it conditionally (compare the event's
//! [`Version`](crate::Event::version) with the one stored next to your row,
//! in the same transaction), and then any arrival order and any
//! concurrency leave the newest state.
//!
//! # Which events to skip
//!
//! For events that *replace* state (an order's or a subscription's status),
//! only the newest matters: call [`skip_stale`](crate::EventRouter::skip_stale)
//! and stale events are acknowledged without running their handler.
//!
//! For events where *every one matters* (each `refund.succeeded` moves
//! money, each `dispute.*` step has a deadline), do not skip: handle them
//! all, and when one is stale, re-read the object's current state from
//! Clink's API rather than applying the event's snapshot over a newer one.
//!
//! # Stores
//!
//! | store | feature | scope | round trips per tracked delivery |
//! |---|---|---|---|
//! | [`MemoryFreshnessStore`] | always | one process | none |
//! | `RedisStore` | `redis` | many instances sharing one Redis | 2 (read, then record after success) |
//! | `PostgresStore` | `postgres` | many instances sharing one database | 2 (read, then record after success) |
//!
//! `RedisStore` and `PostgresStore` are the [idempotency](crate::idempotency)
//! stores: one value serves both traits, with its freshness records under
//! their own keys (Redis) or in their own table (PostgreSQL).
//!
//! ```
//! use clink_webhooks::ordering::{Freshness, MemoryFreshnessStore};
//! use clink_webhooks::{events, EventRouter};
//!
//! let router = EventRouter::new()
//!     .ordering(MemoryFreshnessStore::new())
//!     .on::<events::SubscriptionPastDue, _>(|event| async move {
//!         if let Freshness::Stale { newest_seen } = event.freshness() {
//!             // A newer event about this subscription was already handled:
//!             // re-read its state instead of applying this snapshot.
//!             tracing::info!(%newest_seen, "stale past_due");
//!         }
//!         Ok::<_, std::io::Error>(())
//!     });
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::event::ObjectKey;
use crate::idempotency::{check_text, BoxFuture, StoreError, StoreErrorKind, DEFAULT_RETENTION};
use crate::Timestamp;

/// How new an event is: its `created` time, then its id to break ties.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    created: Timestamp,
    event_id: String,
}

impl Version {
    /// The version of the event `event_id` created at `created`.
    pub fn new(created: Timestamp, event_id: impl Into<String>) -> Self {
        Self {
            created,
            event_id: event_id.into(),
        }
    }

    /// When the event was created.
    #[must_use]
    pub fn created(&self) -> Timestamp {
        self.created
    }

    /// The event's id.
    #[must_use]
    pub fn event_id(&self) -> &str {
        &self.event_id
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.created
            .cmp(&other.created)
            .then_with(|| self.event_id.cmp(&other.event_id))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.created, self.event_id)
    }
}

/// Whether an event is the newest seen about its object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Freshness {
    /// Not tracked: the router has no [`FreshnessStore`], or the event has no
    /// `created` time or no object id.
    #[default]
    Untracked,
    /// No newer event about the same object has been handled.
    Fresh,
    /// A newer event about the same object was already handled.
    Stale {
        /// The newest version handled so far.
        newest_seen: Version,
    },
}

impl Freshness {
    /// Whether the event is known to be stale.
    #[must_use]
    pub fn is_stale(&self) -> bool {
        matches!(self, Self::Stale { .. })
    }

    /// How `version` compares with the `newest` recorded.
    #[must_use]
    pub fn of(version: &Version, newest: Option<Version>) -> Self {
        match newest {
            Some(newest) if newest > *version => Self::Stale {
                newest_seen: newest,
            },
            _ => Self::Fresh,
        }
    }
}

/// Keeps the newest handled [`Version`] per object.
///
/// Object safe: held as `Arc<dyn FreshnessStore>`. Implemented by
/// [`MemoryFreshnessStore`], and by the Redis and PostgreSQL stores when
/// their features are on (see [Stores](self#stores)); `tests/stores` checks
/// all three with the same code.
///
/// Every store refuses, with [`StoreErrorKind::InvalidInput`], a family,
/// object id or event id longer than
/// [`MAX_KEY_LEN`](crate::idempotency::MAX_KEY_LEN) bytes or containing a
/// NUL character.
///
/// A record only needs to outlive the deliveries that could still arrive
/// about its object: Clink gives up retrying after about a day, so a stale
/// event cannot arrive much later than that. Stores therefore forget a record
/// [`DEFAULT_FRESHNESS_RETENTION`] (72 h) after it was last written, unless
/// configured otherwise.
pub trait FreshnessStore: Send + Sync + 'static {
    /// The newest version recorded for `object`, if any.
    fn newest<'a>(
        &'a self,
        object: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Option<Version>, StoreError>>;

    /// Records `version` for `object`, unless a newer version is already
    /// recorded (atomically: concurrent records keep the newest).
    fn record<'a>(
        &'a self,
        object: &'a ObjectKey,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// How long a freshness record is kept after it was last written: 72 h,
/// well beyond Clink's retries of about a day.
pub const DEFAULT_FRESHNESS_RETENTION: Duration = DEFAULT_RETENTION;

/// Checks that every store accepts `object` and, if given, `version`.
pub(crate) fn check_record(
    object: &ObjectKey,
    version: Option<&Version>,
) -> Result<(), StoreError> {
    check_text("the object's family", &object.family)?;
    check_text("the object id", &object.id)?;
    match version {
        Some(version) => check_text("the event id", version.event_id()),
        None => Ok(()),
    }
}

/// The default number of objects a [`MemoryFreshnessStore`] remembers.
pub const DEFAULT_FRESHNESS_CAPACITY: usize = 1_000_000;

#[derive(Debug, Clone)]
struct Record {
    version: Version,
    expires: Instant,
}

/// An in-process [`FreshnessStore`] for apps on one machine.
///
/// Records expire [`DEFAULT_FRESHNESS_RETENTION`] after they were last
/// written. Bounded: when full, expired records are dropped first; if it is
/// still full, a new object is refused with a [`StoreError`] (answered `503`)
/// rather than silently forgetting what it knows.
#[derive(Debug)]
pub struct MemoryFreshnessStore {
    newest: DashMap<ObjectKey, Record>,
    capacity: usize,
    retention: Duration,
}

impl Default for MemoryFreshnessStore {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_FRESHNESS_CAPACITY)
    }
}

impl MemoryFreshnessStore {
    /// A store that remembers up to [`DEFAULT_FRESHNESS_CAPACITY`] objects.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that remembers up to `capacity` objects.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            newest: DashMap::new(),
            capacity,
            retention: DEFAULT_FRESHNESS_RETENTION,
        }
    }

    /// Keeps each record for `retention` after it was last written.
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How many objects it remembers.
    #[must_use]
    pub fn len(&self) -> usize {
        self.newest.len()
    }

    /// Whether it remembers none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.newest.is_empty()
    }
}

impl FreshnessStore for MemoryFreshnessStore {
    fn newest<'a>(
        &'a self,
        object: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Option<Version>, StoreError>> {
        let now = Instant::now();
        let newest = check_record(object, None).map(|()| {
            self.newest
                .get(object)
                .filter(|record| record.expires > now)
                .map(|record| record.version.clone())
        });
        Box::pin(std::future::ready(newest))
    }

    fn record<'a>(
        &'a self,
        object: &'a ObjectKey,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let now = Instant::now();
        let fresh = Record {
            version: version.clone(),
            expires: now + self.retention,
        };
        let keep_newest = |held: &mut Record| {
            if held.expires <= now || *version > held.version {
                *held = fresh.clone();
            }
        };
        let result = if let Err(err) = check_record(object, Some(version)) {
            Err(err)
        } else if let Some(mut held) = self.newest.get_mut(object) {
            keep_newest(&mut held);
            Ok(())
        } else {
            if self.newest.len() >= self.capacity {
                self.newest.retain(|_, record| record.expires > now);
            }
            if self.newest.len() >= self.capacity {
                Err(StoreError::new(
                    StoreErrorKind::Full,
                    "the in-memory freshness store is full of live records; raise its capacity or use a shared store",
                ))
            } else {
                self.newest
                    .entry(object.clone())
                    .and_modify(keep_newest)
                    .or_insert_with(|| fresh.clone());
                Ok(())
            }
        };
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ms: i64, id: &str) -> Version {
        Version::new(Timestamp::from_millis(ms), id)
    }

    #[test]
    fn versions_order_by_created_then_id() {
        assert!(v(1, "b") > v(1, "a"));
        assert!(v(2, "a") > v(1, "z"));
        assert_eq!(Freshness::of(&v(1, "a"), None), Freshness::Fresh);
        assert_eq!(Freshness::of(&v(2, "a"), Some(v(1, "a"))), Freshness::Fresh);
        assert_eq!(Freshness::of(&v(1, "a"), Some(v(1, "a"))), Freshness::Fresh);
        assert!(Freshness::of(&v(1, "a"), Some(v(2, "a"))).is_stale());
    }

    #[tokio::test]
    async fn the_memory_store_keeps_the_newest_and_is_bounded() {
        let store = MemoryFreshnessStore::with_capacity(1);
        let key = ObjectKey::new("order", "ord_1");
        store.record(&key, &v(5, "e5")).await.unwrap();
        store.record(&key, &v(3, "e3")).await.unwrap();
        assert_eq!(store.newest(&key).await.unwrap(), Some(v(5, "e5")));
        store.record(&key, &v(7, "e7")).await.unwrap();
        assert_eq!(store.newest(&key).await.unwrap(), Some(v(7, "e7")));
        let other = ObjectKey::new("order", "ord_2");
        assert!(store.record(&other, &v(1, "x")).await.is_err());
        assert_eq!(store.newest(&other).await.unwrap(), None);
    }

    #[tokio::test]
    async fn records_expire_after_their_retention_and_free_their_place() {
        let store = MemoryFreshnessStore::with_capacity(1).retention(Duration::ZERO);
        let key = ObjectKey::new("order", "ord_1");
        store.record(&key, &v(5, "e5")).await.unwrap();
        assert_eq!(store.newest(&key).await.unwrap(), None);
        // An expired record neither blocks an older version nor holds its place.
        store.record(&key, &v(3, "e3")).await.unwrap();
        let other = ObjectKey::new("order", "ord_2");
        store.record(&other, &v(1, "x")).await.unwrap();
        assert_eq!(store.len(), 1);
    }
}
