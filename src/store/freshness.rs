//! [`FreshnessStore`]: the newest handled version of each object.

use std::sync::Arc;
use std::time::Duration;

use super::{check_text, BoxFuture, StoreError, DEFAULT_RETENTION};
#[cfg(doc)]
use super::{StoreErrorKind, MAX_KEY_LEN};
use crate::events::{ObjectKey, Version};

/// Keeps the newest handled [`Version`] per object.
///
/// Object safe: held as `Arc<dyn FreshnessStore>`; an `Arc` of a store is
/// a store too. Implemented by [`MemoryStore`](super::MemoryStore), and by
/// the Redis and PostgreSQL stores when their features are on (see
/// [Stores](super#stores)); `tests/suite/stores` checks all three with the same
/// code. What the records are for is in [`ordering`](crate::ordering).
///
/// Every store refuses, with [`StoreErrorKind::InvalidInput`], a family,
/// object id or event id longer than
/// [`MAX_KEY_LEN`] bytes or containing a
/// NUL character.
///
/// A record only needs to outlive the deliveries that could still arrive
/// about its object: Clink gives up retrying after about a day, so a stale
/// event cannot arrive much later than that. Stores therefore forget a record
/// [`DEFAULT_FRESHNESS_RETENTION`] (72 h) after it was last written, unless
/// configured otherwise.
///
/// The [router](crate::EventRouter::ordering) waits at most 5 s for a read
/// and 1 s for a record, whatever the store's own timeout.
pub trait FreshnessStore: Send + Sync + 'static {
    /// The newest version recorded for `object`, if any.
    fn newest<'a>(
        &'a self, object: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Option<Version>, StoreError>>;

    /// Records `version` for `object`, unless a newer version is already
    /// recorded (atomically: concurrent records keep the newest).
    fn record<'a>(
        &'a self, object: &'a ObjectKey, version: &'a Version,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// How long a freshness record is kept after it was last written: 72 h,
/// well beyond Clink's retries of about a day.
pub const DEFAULT_FRESHNESS_RETENTION: Duration = DEFAULT_RETENTION;

/// Checks that every store accepts `object` and, if given, `version`.
pub(crate) fn check_record(
    object: &ObjectKey, version: Option<&Version>,
) -> Result<(), StoreError> {
    check_text("the object's family", &object.family)?;
    check_text("the object id", &object.id)?;
    match version {
        Some(version) => check_text("the event id", version.event_id()),
        None => Ok(()),
    }
}

impl<T: FreshnessStore + ?Sized> FreshnessStore for Arc<T> {
    fn newest<'a>(
        &'a self, object: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Option<Version>, StoreError>> {
        (**self).newest(object)
    }

    fn record<'a>(
        &'a self, object: &'a ObjectKey, version: &'a Version,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).record(object, version)
    }
}
