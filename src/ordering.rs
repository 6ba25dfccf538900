//! Telling a stale event from a fresh one when Clink delivers out of order.
//!
//! Clink does not deliver in order: `order.succeeded` can arrive before
//! `order.created`, and a retried `subscription.past_due` can arrive after
//! the `subscription.activated` that resolved it. Each typed event is about
//! one object ([`ObjectKey`]: family and id) and has a [`Version`]: its
//! `created` time, then its id to break ties. Clink's `created` times are
//! often whole seconds, and its ids say nothing of which of two events
//! created at once happened first: of two such events, the one with the
//! greater id counts as newer, in every store and every arrival order, so
//! that [`skip_stale`](crate::EventRouter::skip_stale) leaves the same state
//! whatever order they come in (the other one's, should it have been the
//! later, is lost: where a tie matters, do not skip, and compare the
//! events' data with your own state). Such a tie is likely for
//! `dispute.closed`, which Clink sends together with `dispute.won` or
//! `dispute.lost`: a handler of the closing event should not skip it as
//! stale.
//!
//! Give the [`EventRouter`](crate::EventRouter) a [`FreshnessStore`] with
//! [`ordering`](crate::EventRouter::ordering) and it tells every handler
//! whether its event is [`Fresh`](Freshness::Fresh) or
//! [`Stale`](Freshness::Stale) (an event newer than it about the same object
//! was already handled), through [`Event::freshness`](crate::Event::freshness).
//! A version is recorded only after its handler succeeds, so a failed
//! handler never hides the event it failed on. Once the handler succeeded,
//! the event is handled whatever the record does: a record that fails, or
//! that has not answered after a second (or by the handler's deadline,
//! whichever comes first: through the layer's
//! [`route`](crate::ClinkLayer::route), with the router as the layer's
//! inner service, and in [inbox workers](crate::inbox::Workers)), is
//! logged and the event acknowledged, its handler not run again; later
//! stale events about its object may then look fresh.
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
//! Every store in [`store`](crate::store) is a [`FreshnessStore`] as well as
//! an idempotency store: one value serves both, with its freshness records
//! in their own map (memory), under their own keys (Redis) or in their own
//! table (PostgreSQL). A tracked delivery costs two calls: a read before the
//! handler, and a record after it succeeds.
//!
//! ```
//! use clink_webhooks::events::Freshness;
//! use clink_webhooks::store::MemoryStore;
//! use clink_webhooks::{events, EventRouter};
//!
//! let router = EventRouter::new()
//!     .ordering(MemoryStore::new())
//!     .on::<events::SubscriptionPastDue, _>(|event| async move {
//!         if let Freshness::Stale { newest_seen } = event.freshness() {
//!             // A newer event about this subscription was already handled:
//!             // re-read its state instead of applying this snapshot.
//!             tracing::info!(%newest_seen, "stale past_due");
//!         }
//!         Ok::<_, std::io::Error>(())
//!     });
//! ```

use crate::events::{Freshness, ObjectKey, Version};
use crate::store::FreshnessStore;

use crate::events::RawEvent;
use crate::outage::OutageLog;
use crate::store::{StoreError, StoreErrorKind};

/// An event whose version will be recorded once its handler succeeds.
pub(crate) struct Tracked<'a> {
    store: &'a dyn FreshnessStore,
    object: ObjectKey,
    version: Version,
}

/// How long the read of an object's newest version may take: a store that
/// does not answer (one of the app's own that hangs) is an outage, answered
/// `503`, not a delivery that waits for ever.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How fresh an event about `object` at `version` is, and what to record
/// after its handler succeeds. An object id or an event id no store can
/// hold (over-long, NUL) is handled untracked: retrying would not help, and
/// a version judged against records it could never join would fail to be
/// recorded once its handler ran.
///
/// # Errors
///
/// The store's error when it cannot be read, or does not answer within
/// [`READ_TIMEOUT`]; the delivery is then refused with `503` and retried.
pub(crate) async fn check<'a>(
    store: Option<&'a dyn FreshnessStore>, object: Option<ObjectKey>, version: Option<Version>,
    raw: &RawEvent,
) -> Result<(Freshness, Option<Tracked<'a>>), StoreError> {
    let (Some(store), Some(object), Some(version)) = (store, object, version) else {
        return Ok((Freshness::Untracked, None));
    };
    let newest = match crate::store::check_record(&object, Some(&version)) {
        Err(error) => Err(error),
        Ok(()) => match tokio::time::timeout(READ_TIMEOUT, store.newest(&object)).await {
            Ok(newest) => newest,
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Timeout,
                "the freshness store did not answer within 5 s",
            )),
        },
    };
    match newest {
        Ok(newest) => Ok((
            Freshness::of(&version, newest),
            Some(Tracked {
                store,
                object,
                version,
            }),
        )),
        Err(error) if error.kind() == StoreErrorKind::InvalidInput => {
            tracing::warn!(
                event_id = ?raw.id(),
                %error,
                "object or event id cannot be tracked for freshness; handling it untracked"
            );
            Ok((Freshness::Untracked, None))
        }
        Err(error) => Err(error),
    }
}

impl Tracked<'_> {
    /// Records the handled version; a failure is logged, with the event's
    /// id, since the event itself was handled and later stale events about
    /// its object may look fresh, and counted in `outage`, the log of the
    /// store's records (a store that reads but refuses writes, full or
    /// read-only, fails every record while it lasts).
    pub(crate) async fn record(self, raw: &RawEvent, outage: &std::sync::Arc<OutageLog>) {
        let recorded = self.store.record(&self.object, &self.version).await;
        if recorded.is_ok() {
            outage.succeeded();
        }
        if let Err(error) = recorded {
            outage.failed(&error);
            tracing::error!(
                event_id = ?raw.id(),
                object = ?self.object.to_string(),
                %error,
                "handled, but its version could not be recorded; later stale events may look fresh"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::Timestamp;

    /// An event id no store can hold leaves its object untracked before
    /// the handler runs. It was judged fresh, and its record failed once
    /// the handler had run, told as an outage of the freshness store.
    #[tokio::test]
    async fn an_event_id_no_store_can_hold_is_untracked() {
        let store = MemoryStore::new();
        let raw =
            RawEvent::from_slice(br#"{"id":"evt_1","type":"order.succeeded","data":{}}"#).unwrap();
        let object = ObjectKey::new("order", "ord_1");
        let long = Version::new(Timestamp::from_millis(1), "e".repeat(2048));
        let (freshness, tracked) = check(Some(&store), Some(object.clone()), Some(long), &raw)
            .await
            .unwrap();
        assert_eq!(freshness, Freshness::Untracked);
        assert!(tracked.is_none());
        let short = Version::new(Timestamp::from_millis(1), "evt_1");
        let (freshness, tracked) = check(Some(&store), Some(object), Some(short), &raw)
            .await
            .unwrap();
        assert_eq!(freshness, Freshness::Fresh);
        assert!(tracked.is_some());
    }
}
