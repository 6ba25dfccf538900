//! The freshness half of [`MemoryStore`]: the newest handled version per
//! object, bounded and expiring.

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

/// Freshness records: at most `capacity` objects, each kept `retention`
/// after it was last written.
#[derive(Debug)]
pub(super) struct Records {
    newest: DashMap<ObjectKey, Record>,
    pub(super) capacity: usize,
    pub(super) retention: Duration,
}

impl Default for Records {
    fn default() -> Self {
        Self {
            newest: DashMap::new(),
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
        if self.newest.len() >= self.capacity {
            self.newest.retain(|_, record| record.expires > now);
        }
        if self.newest.len() >= self.capacity {
            return Err(StoreError::new(
                StoreErrorKind::Full,
                "the in-memory freshness records are full of live objects; raise the store's freshness capacity or use a shared store",
            ));
        }
        self.newest
            .entry(object.clone())
            .and_modify(keep_newest)
            .or_insert_with(|| fresh.clone());
        Ok(())
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
