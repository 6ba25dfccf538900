//! The freshness half of [`MemoryStore`]: the newest handled version per
//! object, bounded and expiring.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::MemoryStore;
use crate::events::{ObjectKey, Version};
use crate::store::{
    check_record, BoxFuture, FreshnessStore, StoreError, StoreErrorKind,
    DEFAULT_FRESHNESS_RETENTION,
};

/// The default number of objects a [`MemoryStore`] keeps freshness records for.
pub const DEFAULT_FRESHNESS_CAPACITY: usize = 1_000_000;

#[derive(Debug, Clone)]
struct Record {
    version: Version,
    expires: Instant,
}

/// How long a full store waits between two sweeps for expired records at
/// least, so that a full store does not scan its records on every record.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Freshness records: at most `capacity` objects, each kept `retention`
/// after it was last written.
#[derive(Debug)]
pub(super) struct Records {
    newest: DashMap<ObjectKey, Record>,
    /// The records held plus the places reserved for records being added:
    /// never above `capacity`.
    taken: AtomicUsize,
    /// When a full store may next sweep for expired records (none before
    /// the first sweep).
    next_sweep: Mutex<Option<Instant>>,
    /// How many sweeps ran.
    #[cfg(test)]
    sweeps: AtomicUsize,
    pub(super) capacity: usize,
    pub(super) retention: Duration,
}

impl Default for Records {
    fn default() -> Self {
        Self {
            newest: DashMap::new(),
            taken: AtomicUsize::new(0),
            next_sweep: Mutex::new(None),
            #[cfg(test)]
            sweeps: AtomicUsize::new(0),
            capacity: DEFAULT_FRESHNESS_CAPACITY,
            retention: DEFAULT_FRESHNESS_RETENTION,
        }
    }
}

impl Records {
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.newest.len()
    }

    /// The newest version recorded for `object` and live at `now`.
    fn newest(&self, object: &ObjectKey, now: Instant) -> Result<Option<Version>, StoreError> {
        check_record(object, None)?;
        Ok(self
            .newest
            .get(object)
            .filter(|record| record.expires > now)
            .map(|record| record.version.clone()))
    }

    /// Records `version` for `object` at `now`, unless a newer one is live.
    fn record(
        &self, object: &ObjectKey, version: &Version, now: Instant,
    ) -> Result<(), StoreError> {
        check_record(object, Some(version))?;
        // The retention was checked at configuration (at most MAX_TTL), so
        // this only saturates on a clock near the end of time.
        let expires = now.checked_add(self.retention).unwrap_or(now);
        let fresh = Record {
            version: version.clone(),
            expires,
        };
        let keep_newest = |held: &mut Record| {
            if held.expires <= now || *version > held.version {
                *held = fresh.clone();
            }
        };
        if let Some(mut held) = self.newest.get_mut(object) {
            keep_newest(&mut held);
            return Ok(());
        }
        // A place freed meanwhile (by a sweep of another call, or an object
        // added twice) counts even when this call's own sweep did not run.
        let placed = self.reserve() || {
            self.sweep(now);
            self.reserve()
        };
        if !placed {
            return Err(StoreError::new(
                StoreErrorKind::Full,
                "the in-memory freshness records are full of live objects; raise the store's freshness capacity or use a shared store",
            ));
        }
        match self.newest.entry(object.clone()) {
            dashmap::Entry::Occupied(mut held) => {
                // Added meanwhile by another call: its place is not needed.
                keep_newest(held.get_mut());
                self.taken.fetch_sub(1, Ordering::Relaxed);
            }
            dashmap::Entry::Vacant(place) => {
                place.insert(fresh);
            }
        }
        Ok(())
    }

    /// Reserves a place for a new record, unless the store is full.
    fn reserve(&self) -> bool {
        self.taken
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |taken| {
                (taken < self.capacity).then_some(taken + 1)
            })
            .is_ok()
    }

    /// Drops the records expired at `now`, unless a sweep ran less than
    /// [`SWEEP_INTERVAL`] ago, or no record can have expired since the last
    /// one, or another call is sweeping: so a full store scans its records
    /// at most once a second, not on every record.
    fn sweep(&self, now: Instant) {
        let Ok(mut next) = self.next_sweep.try_lock() else {
            return;
        };
        if next.is_some_and(|next| now < next) {
            return;
        }
        #[cfg(test)]
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        let mut removed = 0;
        let mut soonest: Option<Instant> = None;
        self.newest.retain(|_, record| {
            let live = record.expires > now;
            if live {
                soonest = Some(soonest.map_or(record.expires, |at| at.min(record.expires)));
            } else {
                removed += 1;
            }
            live
        });
        self.taken.fetch_sub(removed, Ordering::Relaxed);
        // A record written later expires later than those kept: before the
        // soonest expiry, a sweep would free nothing.
        let interval = now.checked_add(SWEEP_INTERVAL).unwrap_or(now);
        *next = Some(soonest.map_or(interval, |soonest| soonest.max(interval)));
    }
}

impl FreshnessStore for MemoryStore {
    fn newest<'a>(
        &'a self, object: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Option<Version>, StoreError>> {
        Box::pin(std::future::ready(
            self.freshness.newest(object, Instant::now()),
        ))
    }

    fn record<'a>(
        &'a self, object: &'a ObjectKey, version: &'a Version,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(std::future::ready(self.freshness.record(
            object,
            version,
            Instant::now(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;

    fn v(ms: i64, id: &str) -> Version {
        Version::new(Timestamp::from_millis(ms), id)
    }

    #[tokio::test]
    async fn the_memory_store_keeps_the_newest_and_is_bounded() {
        let store = MemoryStore::new().with_freshness_capacity(1).unwrap();
        let key = ObjectKey::new("order", "ord_1");
        store.record(&key, &v(5, "e5")).await.unwrap();
        store.record(&key, &v(3, "e3")).await.unwrap();
        assert_eq!(store.newest(&key).await.unwrap(), Some(v(5, "e5")));
        store.record(&key, &v(7, "e7")).await.unwrap();
        assert_eq!(store.newest(&key).await.unwrap(), Some(v(7, "e7")));
        let other = ObjectKey::new("order", "ord_2");
        let full = store.record(&other, &v(1, "x")).await.unwrap_err();
        assert_eq!(full.kind(), StoreErrorKind::Full);
        assert!(full.to_string().contains("freshness"), "{full}");
        assert_eq!(store.newest(&other).await.unwrap(), None);
    }

    #[tokio::test]
    async fn records_expire_after_their_retention_and_free_their_place() {
        let store = MemoryStore::new()
            .with_freshness_capacity(1)
            .unwrap()
            .with_freshness_retention(Duration::from_millis(1))
            .unwrap();
        let key = ObjectKey::new("order", "ord_1");
        store.record(&key, &v(5, "e5")).await.unwrap();
        let expired = Instant::now() + Duration::from_millis(1);
        while Instant::now() < expired {
            std::thread::yield_now();
        }
        assert_eq!(store.newest(&key).await.unwrap(), None);
        // An expired record neither blocks an older version nor holds its place.
        store.record(&key, &v(3, "e3")).await.unwrap();
        assert_eq!(store.newest(&key).await.unwrap(), Some(v(3, "e3")));
        let other = ObjectKey::new("order", "ord_2");
        let expired = Instant::now() + Duration::from_millis(1);
        while Instant::now() < expired {
            std::thread::yield_now();
        }
        store.record(&other, &v(1, "x")).await.unwrap();
        assert_eq!(store.freshness.len(), 1);
    }

    #[test]
    fn a_record_lives_its_retention_from_when_it_was_written() {
        let records = Records {
            capacity: 2,
            retention: Duration::from_secs(10),
            ..Records::default()
        };
        let at = |secs| Instant::now() + Duration::from_secs(secs);
        let start = at(0);
        let key = ObjectKey::new("order", "ord_1");
        records.record(&key, &v(5, "e5"), start).unwrap();
        // Live up to, not at, the end of its retention.
        let live = start + Duration::from_secs(10) - Duration::from_nanos(1);
        assert_eq!(records.newest(&key, live).unwrap(), Some(v(5, "e5")));
        assert_eq!(
            records
                .newest(&key, start + Duration::from_secs(10))
                .unwrap(),
            None
        );
        // The same version again is no newer: its retention is not renewed.
        records
            .record(&key, &v(5, "e5"), start + Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            records
                .newest(&key, start + Duration::from_secs(10))
                .unwrap(),
            None
        );
        // An older version is kept once the newer one has expired, not before.
        let later = start + Duration::from_secs(9);
        records.record(&key, &v(3, "e3"), later).unwrap();
        assert_eq!(records.newest(&key, later).unwrap(), Some(v(5, "e5")));
        let expired = start + Duration::from_secs(10);
        records.record(&key, &v(3, "e3"), expired).unwrap();
        assert_eq!(records.newest(&key, expired).unwrap(), Some(v(3, "e3")));

        // Full: a second object fits, a third only once one has expired.
        let other = ObjectKey::new("order", "ord_2");
        records.record(&other, &v(1, "x"), expired).unwrap();
        let third = ObjectKey::new("order", "ord_3");
        let full = records.record(&third, &v(1, "y"), expired).unwrap_err();
        assert_eq!(full.kind(), StoreErrorKind::Full);
        // ord_1 and ord_2 were both written at `expired`: both live until
        // ten seconds after it, and both gone at that instant.
        let freed = expired + Duration::from_secs(10);
        let still_full = freed - Duration::from_nanos(1);
        assert!(records.record(&third, &v(1, "y"), still_full).is_err());
        records.record(&third, &v(1, "y"), freed).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records.newest(&third, freed).unwrap(), Some(v(1, "y")));
    }

    /// A full store of live records refuses new objects without scanning
    /// its records each time: one sweep, then none until a record can have
    /// expired and a second has passed.
    #[test]
    fn a_full_store_does_not_sweep_on_every_record() {
        let records = Records {
            capacity: 2,
            retention: Duration::from_secs(10),
            ..Records::default()
        };
        let start = Instant::now();
        for id in ["ord_1", "ord_2"] {
            records
                .record(&ObjectKey::new("order", id), &v(1, "e"), start)
                .unwrap();
        }
        for i in 0..1000 {
            let at = start + Duration::from_millis(i);
            let object = ObjectKey::new("order", format!("new_{i}"));
            let full = records.record(&object, &v(1, "e"), at).unwrap_err();
            assert_eq!(full.kind(), StoreErrorKind::Full);
        }
        assert_eq!(records.sweeps.load(Ordering::Relaxed), 1);
        assert_eq!(records.len(), 2);
        // Once the records have expired, the next new object sweeps them.
        let later = start + Duration::from_secs(10);
        let object = ObjectKey::new("order", "after");
        records.record(&object, &v(1, "e"), later).unwrap();
        assert_eq!(records.sweeps.load(Ordering::Relaxed), 2);
        assert_eq!(records.len(), 1);
        assert_eq!(records.taken.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn freshness_configuration_is_checked() {
        assert!(MemoryStore::new().with_freshness_capacity(0).is_err());
        assert!(MemoryStore::new()
            .with_freshness_retention(Duration::ZERO)
            .is_err());
        assert!(MemoryStore::new()
            .with_freshness_retention(crate::store::MAX_TTL + Duration::from_secs(1))
            .is_err());
    }
}
