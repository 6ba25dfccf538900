//! [`MemoryStore`]: a bounded, in-process store for a single instance.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::time::Instant;

use super::{
    check_key, check_retention, ttl_millis, BoxFuture, Claim, IdempotencyStore, LeaseToken, Settle,
    StoreError, StoreErrorKind,
};
use crate::ConfigError;

mod freshness;
mod inbox;

pub use freshness::DEFAULT_FRESHNESS_CAPACITY;
pub use inbox::MemoryInbox;

/// An in-process idempotency store: fast, bounded, and forgotten on restart.
///
/// Right for one instance (and for tests); several instances of an app need
/// a shared store such as `RedisStore` or `PostgresStore`, or two of them
/// can each run the handler for the same event.
///
/// # Expiry and bounds
///
/// Entries end by time: an expired lease or retention reads as absent at
/// once, and the memory is reclaimed a little at each call, oldest first.
/// The store holds at most [`capacity`](Self::capacity) keys
/// ([`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) unless set with
/// [`with_capacity`](Self::with_capacity)). When a new key arrives at a full
/// store it evicts, in this order:
///
/// 1. a claim whose lease has ended,
/// 2. the oldest completed key (in completion order, which is expiry order
///    when every key gets the same retention, as the layer does).
///
/// A live claim is never evicted: when the store is full of them, `claim`
/// fails with [`StoreErrorKind::Full`] (the delivery gets 503 and is retried)
/// rather than forget a claim. Evicting a completed key early means a late
/// retry of that event runs its handler again, so size the capacity above
/// the number of events received per retention window.
///
/// Every call is O(log n) in the claims in flight and O(1) otherwise: no call
/// scans the map.
///
/// # Memory
///
/// About 170 bytes per remembered key, for keys of ~40 bytes such as
/// `clink:live:evt_` followed by 24 characters: so about 160 MiB at the
/// default capacity. Measured as the growth of the process's resident memory
/// while one million completed keys are stored: 169 bytes in
/// `tests/suite/memory.rs` (run by `scripts/test`, failing above 170 bytes
/// plus 15%), 165 in `cargo bench --bench stores` (see `BENCHMARKS.md`).
/// Where it goes: a 33-byte hash table slot (dashmap sizes its tables in
/// powers of two at 7/8 load, so up to twice that), the key's shared
/// allocation (16 bytes of counts plus the key, rounded up by the allocator
/// to 64), and 32 bytes in the eviction queue. A unit test keeps this
/// structural estimate below 200 bytes.
pub struct MemoryStore {
    records: DashMap<Arc<str>, Record>,
    queues: Mutex<Queues>,
    /// Records plus slots reserved by claims about to insert one.
    used: AtomicUsize,
    capacity: usize,
    freshness: freshness::Records,
}

enum Record {
    /// Boxed so that the far more numerous completed records stay small.
    Claimed(Box<Lease>),
    Completed {
        until: Instant,
    },
}

struct Lease {
    token: LeaseToken,
    until: Instant,
}

/// The eviction order. Items are hints checked against the map before
/// anything is removed, so a stale item (its key settled, taken over or
/// already evicted) is simply dropped.
#[derive(Default)]
struct Queues {
    /// Claims by the end of their lease: one per delivery in flight.
    claims: BTreeSet<(Instant, Arc<str>)>,
    /// Completed keys in completion order, with the end of their retention.
    completed: VecDeque<(Arc<str>, Instant)>,
}

/// What a call changed, for the eviction queues.
#[derive(Clone, Copy)]
enum Change {
    None,
    Leased {
        replaced: Option<Instant>,
        until: Instant,
    },
    Completed {
        lease: Instant,
        until: Instant,
    },
    Released {
        lease: Instant,
    },
}

/// Which queue item [`MemoryStore::pop`] may take.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pick {
    ExpiredClaim,
    ExpiredCompleted,
    OldestCompleted,
}

/// How many expired items a call reclaims on its way.
const SWEEP_PER_CALL: usize = 2;

impl MemoryStore {
    /// How many keys a store made with [`new`](Self::new) remembers at most.
    pub const DEFAULT_CAPACITY: usize = 1_000_000;

    /// An empty store holding at most [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY)
    /// idempotency keys and freshness records for at most
    /// [`DEFAULT_FRESHNESS_CAPACITY`] objects, each kept
    /// [`DEFAULT_FRESHNESS_RETENTION`](super::DEFAULT_FRESHNESS_RETENTION)
    /// after it was last written.
    #[must_use]
    pub fn new() -> Self {
        Self {
            records: DashMap::new(),
            queues: Mutex::default(),
            used: AtomicUsize::new(0),
            capacity: Self::DEFAULT_CAPACITY,
            freshness: freshness::Records::default(),
        }
    }

    /// Holds at most `capacity` idempotency keys.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `capacity` is zero: such a store could claim nothing.
    pub fn with_capacity(mut self, capacity: usize) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::new(
                "a MemoryStore needs a capacity of at least one key",
            ));
        }
        self.capacity = capacity;
        Ok(self)
    }

    /// Keeps freshness records for at most `capacity` objects. When full,
    /// expired records are dropped first; if it is still full, a new object
    /// is refused with [`StoreErrorKind::Full`] (answered `503`) rather than
    /// silently forgetting what it knows.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `capacity` is zero.
    pub fn with_freshness_capacity(mut self, capacity: usize) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::new(
                "a MemoryStore needs a freshness capacity of at least one object",
            ));
        }
        self.freshness.capacity = capacity;
        Ok(self)
    }

    /// Keeps each freshness record for `retention` after it was last written.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `retention` is between 1 ms and
    /// [`MAX_TTL`](super::MAX_TTL).
    pub fn with_freshness_retention(mut self, retention: Duration) -> Result<Self, ConfigError> {
        self.freshness.retention = check_retention(retention)?;
        Ok(self)
    }

    /// The most keys the store remembers.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many keys the store holds now, counting expired ones not yet reclaimed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the store holds no key.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn claim_now(&self, key: &str, lease: Duration) -> Result<Claim, StoreError> {
        check_key(key)?;
        let now = Instant::now();
        let until = deadline(now, "lease", lease)?;

        if let Some(mut record) = self.records.get_mut(key) {
            let (claim, change) = record.claim(now, until);
            let key = Arc::clone(record.key());
            drop(record);
            self.note(now, key, change);
            return Ok(claim);
        }

        let reservation = self.reserve(now)?;
        let key: Arc<str> = Arc::from(key);
        let (claim, change) = match self.records.entry(Arc::clone(&key)) {
            Entry::Vacant(vacant) => {
                reservation.keep();
                let token = LeaseToken::generate();
                vacant.insert(Record::Claimed(Box::new(Lease {
                    token: token.clone(),
                    until,
                })));
                let change = Change::Leased {
                    replaced: None,
                    until,
                };
                (Claim::Claimed(token), change)
            }
            // Another caller inserted the key since the lookup above; the
            // reservation goes back when it drops.
            Entry::Occupied(mut occupied) => occupied.get_mut().claim(now, until),
        };
        self.note(now, key, change);
        Ok(claim)
    }

    fn complete_now(
        &self,
        key: &str,
        token: &LeaseToken,
        retention: Duration,
    ) -> Result<Settle, StoreError> {
        check_key(key)?;
        let now = Instant::now();
        let until = deadline(now, "retention", retention)?;

        let Some(mut record) = self.records.get_mut(key) else {
            return Ok(Settle::LeaseLost);
        };
        let Some(lease) = record.live_lease(token, now) else {
            return Ok(Settle::LeaseLost);
        };
        *record = Record::Completed { until };
        let key = Arc::clone(record.key());
        drop(record);
        self.note(now, key, Change::Completed { lease, until });
        Ok(Settle::Applied)
    }

    fn release_now(&self, key: &str, token: &LeaseToken) -> Result<Settle, StoreError> {
        check_key(key)?;
        let now = Instant::now();
        let removed = self
            .records
            .remove_if(key, |_, record| record.live_lease(token, now).is_some());
        let Some((key, record)) = removed else {
            return Ok(Settle::LeaseLost);
        };
        self.used.fetch_sub(1, Ordering::AcqRel);
        if let Record::Claimed(lease) = record {
            self.note(now, key, Change::Released { lease: lease.until });
        }
        Ok(Settle::Applied)
    }

    /// Takes a free slot for a new key, evicting to make one when full.
    fn reserve(&self, now: Instant) -> Result<Reservation<'_>, StoreError> {
        let mut used = self.used.load(Ordering::Acquire);
        while used < self.capacity {
            match self.used.compare_exchange_weak(
                used,
                used + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Reservation::new(&self.used)),
                Err(current) => used = current,
            }
        }
        if self.evict_one(&mut self.lock_queues(), now) {
            // The evicted record's slot passes to the caller.
            return Ok(Reservation::new(&self.used));
        }
        Err(StoreError::new(
            StoreErrorKind::Full,
            format!(
                "all {} keys of the memory store hold live claims; raise the capacity",
                self.capacity
            ),
        ))
    }

    /// Removes one record to free its slot, without giving the slot back to
    /// `used`: expired claims first, then the oldest completed key.
    fn evict_one(&self, queues: &mut Queues, now: Instant) -> bool {
        for pick in [Pick::ExpiredClaim, Pick::OldestCompleted] {
            while let Some(removed) = self.pop(queues, pick, now) {
                if removed {
                    return true;
                }
            }
        }
        false
    }

    /// Reclaims a few expired records from the front of each queue.
    fn sweep(&self, queues: &mut Queues, now: Instant) {
        for pick in [Pick::ExpiredClaim, Pick::ExpiredCompleted] {
            for _ in 0..SWEEP_PER_CALL {
                match self.pop(queues, pick, now) {
                    Some(true) => {
                        self.used.fetch_sub(1, Ordering::AcqRel);
                    }
                    Some(false) => {}
                    None => break,
                }
            }
        }
    }

    /// Pops the next queue item that `pick` allows and removes its record if
    /// the item is still current. `None` when there is no such item, else
    /// whether a record was removed.
    fn pop(&self, queues: &mut Queues, pick: Pick, now: Instant) -> Option<bool> {
        let (key, claimed, until) = match pick {
            Pick::ExpiredClaim => {
                queues.claims.first().filter(|(until, _)| *until <= now)?;
                let (until, key) = queues.claims.pop_first()?;
                (key, true, until)
            }
            Pick::ExpiredCompleted | Pick::OldestCompleted => {
                if pick == Pick::ExpiredCompleted {
                    queues
                        .completed
                        .front()
                        .filter(|(_, until)| *until <= now)?;
                }
                let (key, until) = queues.completed.pop_front()?;
                (key, false, until)
            }
        };
        let removed = self
            .records
            .remove_if(&key, |_, record| record.is(claimed, until));
        Some(removed.is_some())
    }

    /// Records a change in the eviction queues. Must be called with no map
    /// guard held: eviction locks the queues first and the map second.
    fn note(&self, now: Instant, key: Arc<str>, change: Change) {
        let mut queues = self.lock_queues();
        match change {
            Change::None => {}
            Change::Leased { replaced, until } => {
                if let Some(old) = replaced {
                    queues.claims.remove(&(old, Arc::clone(&key)));
                }
                queues.claims.insert((until, key));
            }
            Change::Completed { lease, until } => {
                queues.claims.remove(&(lease, Arc::clone(&key)));
                queues.completed.push_back((key, until));
            }
            Change::Released { lease } => {
                queues.claims.remove(&(lease, key));
            }
        }
        self.sweep(&mut queues, now);
    }

    fn lock_queues(&self) -> MutexGuard<'_, Queues> {
        // The queues are only hints, so a panic elsewhere cannot leave them unsafe to use.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Record {
    /// The claim decision for an existing record.
    fn claim(&mut self, now: Instant, until: Instant) -> (Claim, Change) {
        match self {
            Self::Completed { until: end } if *end > now => (Claim::Completed, Change::None),
            Self::Claimed(lease) if lease.until > now => (
                Claim::InFlight {
                    retry_after: lease.until - now,
                },
                Change::None,
            ),
            _ => {
                let replaced = match self {
                    Self::Claimed(lease) => Some(lease.until),
                    Self::Completed { .. } => None,
                };
                let token = LeaseToken::generate();
                *self = Self::Claimed(Box::new(Lease {
                    token: token.clone(),
                    until,
                }));
                (Claim::Claimed(token), Change::Leased { replaced, until })
            }
        }
    }

    /// Whether this is the claimed or completed record ending at `until`.
    fn is(&self, claimed: bool, until: Instant) -> bool {
        match self {
            Self::Claimed(lease) => claimed && lease.until == until,
            Self::Completed { until: end } => !claimed && *end == until,
        }
    }

    /// The end of the lease, if `token` holds it and it is live at `now`.
    fn live_lease(&self, token: &LeaseToken, now: Instant) -> Option<Instant> {
        match self {
            Self::Claimed(lease) if lease.token == *token && lease.until > now => Some(lease.until),
            _ => None,
        }
    }
}

/// A slot counted in `used` for a key about to be inserted; given back on
/// drop unless kept.
struct Reservation<'a> {
    used: &'a AtomicUsize,
    kept: bool,
}

impl<'a> Reservation<'a> {
    fn new(used: &'a AtomicUsize) -> Self {
        Self { used, kept: false }
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.used.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn deadline(now: Instant, what: &str, ttl: Duration) -> Result<Instant, StoreError> {
    ttl_millis(what, ttl)?;
    now.checked_add(ttl).ok_or_else(|| {
        StoreError::new(
            StoreErrorKind::InvalidInput,
            format!("{what} of {ttl:?} reaches past the clock's range"),
        )
    })
}

impl IdempotencyStore for MemoryStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(std::future::ready(self.claim_now(key, lease)))
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a LeaseToken,
        retention: Duration,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(std::future::ready(self.complete_now(key, token, retention)))
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(std::future::ready(self.release_now(key, token)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const SECOND: Duration = Duration::from_secs(1);

    fn claimed(claim: Result<Claim, StoreError>) -> LeaseToken {
        match claim {
            Ok(Claim::Claimed(token)) => token,
            other => panic!("expected Claimed, got {other:?}"),
        }
    }

    fn store(capacity: usize) -> MemoryStore {
        MemoryStore::new()
            .with_capacity(capacity)
            .expect("non-zero capacity")
    }

    /// Completes `key` with `retention`.
    async fn remember(store: &MemoryStore, key: &str, retention: Duration) {
        let token = claimed(store.claim(key, SECOND).await);
        let settled = store.complete(key, &token, retention).await;
        assert_eq!(settled.ok(), Some(Settle::Applied), "{key}");
    }

    #[tokio::test(start_paused = true)]
    async fn lease_ends_to_the_tick() {
        let store = MemoryStore::new();
        let first = claimed(store.claim("k", SECOND).await);

        advance(Duration::from_millis(999)).await;
        let busy = store.claim("k", SECOND).await.ok();
        assert_eq!(
            busy,
            Some(Claim::InFlight {
                retry_after: Duration::from_millis(1)
            })
        );

        advance(Duration::from_millis(1)).await;
        // Ended but not taken over: the token is already stale.
        assert_eq!(
            store.complete("k", &first, SECOND).await.ok(),
            Some(Settle::LeaseLost)
        );
        let second = claimed(store.claim("k", SECOND).await);
        assert_ne!(first, second);
        assert_eq!(
            store.release("k", &first).await.ok(),
            Some(Settle::LeaseLost)
        );
        assert_eq!(
            store.release("k", &second).await.ok(),
            Some(Settle::Applied)
        );
        assert!(store.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn retention_ends_to_the_tick() {
        let store = MemoryStore::new();
        remember(&store, "k", 10 * SECOND).await;

        advance(10 * SECOND - Duration::from_nanos(1)).await;
        assert_eq!(store.claim("k", SECOND).await.ok(), Some(Claim::Completed));
        advance(Duration::from_nanos(1)).await;
        claimed(store.claim("k", SECOND).await);
    }

    #[tokio::test(start_paused = true)]
    async fn full_store_evicts_oldest_completed_first() {
        let store = store(3);
        for key in ["a", "b", "c"] {
            remember(&store, key, 100 * SECOND).await;
            advance(SECOND).await;
        }
        claimed(store.claim("d", SECOND).await);
        assert_eq!(store.len(), 3);

        // "a" went first; "b" and "c" are still remembered.
        assert_eq!(store.claim("c", SECOND).await.ok(), Some(Claim::Completed));
        assert_eq!(store.claim("b", SECOND).await.ok(), Some(Claim::Completed));
        claimed(store.claim("a", SECOND).await);
        // Remembering "a" again took the slot of "b", the oldest left.
        assert_eq!(store.claim("c", SECOND).await.ok(), Some(Claim::Completed));
        claimed(store.claim("b", SECOND).await);
        assert_eq!(store.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn full_store_evicts_expired_claims_before_completed_keys() {
        let store = store(3);
        remember(&store, "done", 100 * SECOND).await;
        claimed(store.claim("abandoned", SECOND).await);
        remember(&store, "done too", 100 * SECOND).await;
        advance(2 * SECOND).await;

        claimed(store.claim("new", SECOND).await);
        assert_eq!(
            store.claim("done", SECOND).await.ok(),
            Some(Claim::Completed)
        );
        assert_eq!(
            store.claim("done too", SECOND).await.ok(),
            Some(Claim::Completed)
        );
        assert_eq!(store.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn live_claims_are_never_evicted() {
        let store = store(2);
        let a = claimed(store.claim("a", SECOND).await);
        claimed(store.claim("b", SECOND).await);

        let full = store.claim("c", SECOND).await.unwrap_err();
        assert_eq!(full.kind(), StoreErrorKind::Full);
        assert!(full.to_string().contains("raise the capacity"), "{full}");
        // Both claims are intact.
        assert!(matches!(
            store.claim("a", SECOND).await,
            Ok(Claim::InFlight { .. })
        ));
        assert!(matches!(
            store.claim("b", SECOND).await,
            Ok(Claim::InFlight { .. })
        ));

        assert_eq!(store.release("a", &a).await.ok(), Some(Settle::Applied));
        claimed(store.claim("c", SECOND).await);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_reclaimed_without_pressure() {
        let store = MemoryStore::new();
        for i in 0..10 {
            remember(&store, &format!("old {i}"), SECOND).await;
        }
        claimed(store.claim("abandoned", SECOND).await);
        advance(2 * SECOND).await;
        for i in 0..10 {
            remember(&store, &format!("new {i}"), 100 * SECOND).await;
        }
        assert_eq!(store.len(), 10);
    }

    #[tokio::test]
    async fn bad_arguments_are_refused() {
        assert!(MemoryStore::new().with_capacity(0).is_err());

        let store = MemoryStore::new();
        let zero = store.claim("k", Duration::ZERO).await.unwrap_err();
        assert_eq!(zero.kind(), StoreErrorKind::InvalidInput);
        let long_key = "k".repeat(super::super::MAX_KEY_LEN + 1);
        let long = store.claim(&long_key, SECOND).await.unwrap_err();
        assert_eq!(long.kind(), StoreErrorKind::InvalidInput);

        let token = claimed(store.claim("k", SECOND).await);
        let forever = store
            .complete("k", &token, Duration::MAX)
            .await
            .unwrap_err();
        assert_eq!(forever.kind(), StoreErrorKind::InvalidInput);
        // The refused call changed nothing.
        assert_eq!(
            store.complete("k", &token, SECOND).await.ok(),
            Some(Settle::Applied)
        );
    }

    /// The structural size of the store per completed key, with the same
    /// rounding as glibc's allocator (16-byte steps, 8 bytes of header).
    #[tokio::test]
    async fn bytes_per_remembered_key() {
        const KEYS: usize = 100_000;
        let store = MemoryStore::new();
        let mut key_bytes = 0;
        for i in 0..KEYS {
            let key = format!("clink:live:evt_{i:024}");
            let heap = std::mem::size_of::<[usize; 2]>() + key.len();
            key_bytes += (heap + 8).div_ceil(16) * 16;
            remember(&store, &key, 100 * SECOND).await;
        }
        let slot = std::mem::size_of::<(Arc<str>, Record)>() + 1;
        let queue =
            store.lock_queues().completed.capacity() * std::mem::size_of::<(Arc<str>, Instant)>();
        let total = store.records.capacity() * slot + key_bytes + queue;
        let per_key = total / KEYS;
        assert_eq!(
            slot, 33,
            "a completed record should stay two words and a tick"
        );
        assert!(per_key < 200, "{per_key} bytes per key");
    }
}
