//! [`MemoryStore`]: a bounded, in-process store for a single instance.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hashbrown::HashTable;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use super::{
    check_key, check_retention, ttl_millis, BoxFuture, Claim, IdempotencyStore, LeaseToken, Settle,
    StoreError, StoreErrorKind,
};
use crate::ConfigError;

mod freshness;
mod memory_inbox;

pub use freshness::DEFAULT_FRESHNESS_CAPACITY;
pub use memory_inbox::MemoryInbox;

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
/// the number of events received per retention window (the default million
/// keys hold the layer's default retention of 72 hours up to about 3.9
/// events a second). A store
/// that does evict one early says so at `warn`, at most once a minute,
/// with how many it forgot, counts them ([`evicted_early`](Self::evicted_early),
/// and with the feature `metrics` the counter
/// `clink_webhook_memory_store_evicted_early_total`, to alert on), and the
/// capacity is one for every account of a layer with a key source: one
/// account's deliveries (anyone who holds its signing secret can sign
/// them) push out the oldest completed keys of every account. With many
/// accounts, use a shared store, or size the capacity for them all.
///
/// Every call is O(log n) in the claims in flight and amortised O(1)
/// otherwise: no call scans the store. (A key claimed again after its
/// retention ended leaves a stale entry in the completion order; once the
/// stale entries outnumber the live ones, the claim that finds so compacts
/// the order, in time proportional to it, which the stale entries that
/// made it due pay for.)
///
/// # Memory
///
/// About 35 bytes per remembered key, whatever the key's length: so about
/// 33 MiB at the default capacity of one million keys. Measured as the growth
/// of the process's resident memory while one million completed keys are
/// stored (`cargo bench --bench stores`, see `BENCHMARKS.md`; the
/// measurement in `tests/suite/memory.rs`, run by `scripts/test`, fails
/// above 40 bytes plus 15%). A completed
/// key is 24 bytes in a ring in completion order (its 16-byte digest and the
/// end of its retention) and a 4-byte position in a hash index (5 bytes a
/// slot with its control byte, at 7/16 to 7/8 load). A unit test keeps this
/// structural estimate below 64 bytes. A key claimed again after its
/// retention ended leaves its old 24-byte entry in the ring until that entry
/// reaches the front or the ring is compacted: the ring never holds more
/// stale entries than live ones (plus a few), so at worst it doubles.
///
/// # Keys are kept as digests
///
/// The store keeps the first 128 bits of each key's SHA-256, not the key. Two
/// keys would be confused only if their digests were equal: for the keys held
/// at once, at most the capacity `n`, that chance is below n²/2¹²⁹, about
/// 1.5 × 10⁻²⁷ for a full store of one million keys, and finding such a pair
/// on purpose means finding a collision of SHA-256 truncated to 128 bits
/// (about 2⁶⁴ hashes), while the layer only ever stores ids of deliveries
/// whose signature checked out. The digests cannot be turned back into keys.
pub struct MemoryStore {
    state: Mutex<State>,
    capacity: usize,
    /// Reads the clock as nanoseconds since the store was made.
    epoch: Instant,
    /// The first half of every token this store hands out.
    nonce: u64,
    freshness: freshness::Records,
}

/// The first 128 bits of a key's SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct KeyDigest([u64; 2]);

/// A key a [`MemoryStore`] accepts, as it keeps it (see [`MemoryStore::key`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MemoryKey(KeyDigest);

impl KeyDigest {
    fn of(key: &str) -> Self {
        let hash = Sha256::digest(key.as_bytes());
        let (words, _) = hash.as_slice().as_chunks::<8>();
        let word = |i: usize| words.get(i).map_or(0, |w| u64::from_le_bytes(*w));
        Self([word(0), word(1)])
    }

    /// The bits the hash tables use: already uniformly spread.
    fn bucket(self) -> u64 {
        self.0[0]
    }
}

impl Hash for KeyDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.bucket());
    }
}

/// Hands a [`KeyDigest`]'s own bits to the map, rather than hashing them again.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Everything the store holds, behind one lock (the critical sections are a
/// few hash lookups; the key's digest is computed before taking it).
#[derive(Default)]
struct State {
    /// Completed keys in the order they completed, which is the eviction
    /// order. An entry whose key was claimed again since is stale: the index
    /// no longer points at it, and it is dropped when it reaches the front
    /// or when `done` is compacted.
    done: VecDeque<Done>,
    /// How many entries of `done` are stale.
    stale: usize,
    /// The sequence number of `done[0]`; each entry's number is its position
    /// plus this, wrapping.
    head: u32,
    /// The completed keys: the sequence number of each one's entry in `done`.
    index: HashTable<u32>,
    /// Claims, live or with an ended lease not yet reclaimed.
    claims: HashMap<KeyDigest, Lease, BuildHasherDefault<PassThrough>>,
    /// The claims by the end of their lease: exactly one item per claim.
    lease_ends: BTreeSet<(u64, KeyDigest)>,
    /// The number of the next token handed out.
    next_token: u64,
    /// Completed keys evicted before their retention ended, not yet told
    /// (see [`MemoryStore::tell_early_evictions`]).
    untold_evictions: u64,
    /// Completed keys evicted before their retention ended, in all.
    evicted_early: u64,
    /// When that was last told, in the store's nanoseconds (`None`: never).
    told_at: Option<u64>,
}

/// A completed key: 24 bytes.
struct Done {
    key: KeyDigest,
    /// The end of its retention, in the store's nanoseconds.
    until: u64,
}

struct Lease {
    /// The second half of the holder's token.
    token: u64,
    /// The end of the lease, in the store's nanoseconds.
    until: u64,
}

/// The most entries `done` holds, so that sequence numbers in `u32` never
/// meet: past it the oldest entry goes, as if the store were full.
const MAX_DONE: usize = 1 << 31;

/// How many stale entries `done` may hold beyond as many as its live ones
/// before it is compacted, so that a nearly empty store does not compact
/// on every claim.
const STALE_SLACK: usize = 16;

/// Which record [`State::pop`] may take.
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
        static STORES: AtomicU64 = AtomicU64::new(0);
        // RandomState is seeded from the OS per process.
        let mut nonce = RandomState::new().build_hasher();
        nonce.write_u64(STORES.fetch_add(1, Ordering::Relaxed));
        Self {
            state: Mutex::default(),
            capacity: Self::DEFAULT_CAPACITY,
            epoch: Instant::now(),
            nonce: nonce.finish(),
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

    /// Keeps freshness records for at most `capacity` objects. Each record
    /// holds the object's key and the id of the newest event about it, so
    /// its size follows theirs: a few hundred bytes with ids the size of
    /// Clink's, and about 1.5 KiB with the longest the envelope takes (an
    /// object id of 256 bytes, an event id of 1 KiB). Size `capacity` to
    /// the memory you give it: a sender with the key can fill it with the
    /// longest. When full,
    /// expired records are dropped first (by a sweep that runs at most once
    /// a second, and only once a record can have expired); if it is still
    /// full, a new object's version is refused with
    /// [`StoreErrorKind::Full`] rather than forgetting what the store
    /// knows. The record is made after the handler ran, so the delivery is
    /// still answered as handled: the refusal is logged, with the event's
    /// id, and later events about that object are not found stale.
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

    /// How many handled events the store forgot before their retention
    /// ended since it was made, because it was full: a retry of any of
    /// them runs its handler again. Anything above zero means the
    /// [capacity](Self::with_capacity) is too small for the traffic.
    #[must_use]
    pub fn evicted_early(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .evicted_early
    }

    /// How many keys the store holds now, counting expired ones not yet reclaimed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store holds no key.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `at` as nanoseconds since the store was made.
    fn nanos_at(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Token number `n`: this store's nonce, then `n`, in hex.
    fn token(&self, n: u64) -> LeaseToken {
        LeaseToken::from_halves(self.nonce, n)
    }

    fn holds(&self, lease: &Lease, token: &LeaseToken, now: u64) -> bool {
        lease.until > now && *token == self.token(lease.token)
    }

    /// `key` checked and reduced to its digest, for the calls below: a
    /// caller that settles what it claimed computes it once.
    pub(crate) fn key(key: &str) -> Result<MemoryKey, StoreError> {
        check_key(key)?;
        Ok(MemoryKey(KeyDigest::of(key)))
    }

    pub(crate) fn claim_now(&self, key: &MemoryKey, lease: Duration) -> Result<Claim, StoreError> {
        self.claim_at(key, lease, Instant::now())
    }

    /// As [`claim_now`](Self::claim_now), as of `at`, a reading of the clock
    /// the caller made just before (and counts its own lease from).
    pub(crate) fn claim_at(
        &self, key: &MemoryKey, lease: Duration, at: Instant,
    ) -> Result<Claim, StoreError> {
        let key = key.0;
        let now = self.nanos_at(at);
        let until = deadline(now, "lease", lease)?;
        let mut state = self.lock();
        #[cfg(feature = "metrics")]
        let before = state.evicted_early;
        let claim = state.claim(key, now, until, self.capacity);
        state.sweep(now);
        if state.untold_evictions > 0 {
            // Counted for the metrics once the lock is let go.
            #[cfg(feature = "metrics")]
            let evicted = state.evicted_early - before;
            self.tell_early_evictions(state, now);
            #[cfg(feature = "metrics")]
            if evicted > 0 {
                metrics::counter!("clink_webhook_memory_store_evicted_early_total")
                    .increment(evicted);
            }
        }
        let claim = claim?;
        Ok(match claim {
            Ok(token) => Claim::Claimed(self.token(token)),
            Err(answer) => answer,
        })
    }

    /// Says, at most once a minute, that the store was full and forgot
    /// handled events before their retention ended: a retry of one runs
    /// its handler again. Silent, it would shorten the retention below
    /// Clink's retries with nothing to show for it.
    #[cold]
    fn tell_early_evictions(&self, mut state: MutexGuard<'_, State>, now: u64) {
        const EVERY: u64 = 60_000_000_000;
        if state
            .told_at
            .is_some_and(|at| now.saturating_sub(at) < EVERY)
        {
            return;
        }
        let forgotten = std::mem::take(&mut state.untold_evictions);
        state.told_at = Some(now);
        drop(state);
        tracing::warn!(
            forgotten,
            capacity = self.capacity,
            "clink memory store full: it forgot handled events before their retention ended, \
             and a retry of one runs its handler again; raise its capacity \
             (MemoryStore::with_capacity), or use a shared store"
        );
    }

    pub(crate) fn complete_now(
        &self, key: &MemoryKey, token: &LeaseToken, retention: Duration,
    ) -> Result<Settle, StoreError> {
        self.complete_at(key, token, retention, Instant::now())
    }

    /// As [`complete_now`](Self::complete_now), as of `at`, a reading of the
    /// clock the caller made just before.
    pub(crate) fn complete_at(
        &self, key: &MemoryKey, token: &LeaseToken, retention: Duration, at: Instant,
    ) -> Result<Settle, StoreError> {
        let key = key.0;
        let now = self.nanos_at(at);
        let until = deadline(now, "retention", retention)?;
        let mut state = self.lock();
        match state.claims.get(&key) {
            Some(lease) if self.holds(lease, token, now) => {}
            _ => return Ok(Settle::LeaseLost),
        }
        state.unclaim(key);
        state.push_done(key, until);
        state.sweep(now);
        Ok(Settle::Applied)
    }

    pub(crate) fn release_now(
        &self, key: &MemoryKey, token: &LeaseToken,
    ) -> Result<Settle, StoreError> {
        self.release_at(key, token, Instant::now())
    }

    /// As [`release_now`](Self::release_now), as of `at`, a reading of the
    /// clock the caller made just before.
    pub(crate) fn release_at(
        &self, key: &MemoryKey, token: &LeaseToken, at: Instant,
    ) -> Result<Settle, StoreError> {
        let key = key.0;
        let now = self.nanos_at(at);
        let mut state = self.lock();
        match state.claims.get(&key) {
            Some(lease) if self.holds(lease, token, now) => {}
            _ => return Ok(Settle::LeaseLost),
        }
        state.unclaim(key);
        state.sweep(now);
        Ok(Settle::Applied)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing in a critical section panics (no indexing, no unchecked
        // arithmetic), so a poisoned lock still guards consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn len(&self) -> usize {
        self.index.len() + self.claims.len()
    }

    /// The completed entry numbered `seq`.
    fn done_at(done: &VecDeque<Done>, head: u32, seq: u32) -> Option<&Done> {
        done.get(usize::try_from(seq.wrapping_sub(head)).ok()?)
    }

    /// The end of `key`'s retention, if it is completed.
    fn completed_until(&self, key: KeyDigest) -> Option<u64> {
        let (done, head) = (&self.done, self.head);
        let seq = self.index.find(key.bucket(), |&seq| {
            Self::done_at(done, head, seq).is_some_and(|entry| entry.key == key)
        })?;
        Self::done_at(done, head, *seq).map(|entry| entry.until)
    }

    /// Forgets that `key` is completed; its entry in `done` goes stale.
    fn forget_done(&mut self, key: KeyDigest) {
        let (done, head) = (&self.done, self.head);
        if let Ok(entry) = self.index.find_entry(key.bucket(), |&seq| {
            Self::done_at(done, head, seq).is_some_and(|entry| entry.key == key)
        }) {
            entry.remove();
            self.stale += 1;
            if self.stale > self.index.len().max(STALE_SLACK) {
                self.compact();
            }
        }
    }

    /// Drops every stale entry of `done`, renumbering the live ones (which
    /// keep their order) in the index. O(`done.len()`), run once the stale
    /// entries outnumber the live ones: amortised O(1) per stale entry.
    fn compact(&mut self) {
        let (done, index) = (&mut self.done, &mut self.index);
        let mut seq = self.head;
        let mut next = self.head;
        done.retain(|entry| {
            // Live entries renumbered so far have numbers below `seq`, so
            // the lookup finds this entry's own number or nothing.
            let live = index.find_mut(entry.key.bucket(), |&at| at == seq);
            seq = seq.wrapping_add(1);
            live.map(|at| {
                *at = next;
                next = next.wrapping_add(1);
            })
            .is_some()
        });
        self.stale = 0;
    }

    /// Remembers `key` as completed until `until`.
    fn push_done(&mut self, key: KeyDigest, until: u64) {
        if self.done.len() >= MAX_DONE {
            self.pop(Pick::OldestCompleted, 0);
        }
        let seq = self
            .head
            .wrapping_add(u32::try_from(self.done.len()).unwrap_or(u32::MAX));
        self.done.push_back(Done { key, until });
        let (done, head) = (&self.done, self.head);
        self.index.insert_unique(key.bucket(), seq, |&seq| {
            Self::done_at(done, head, seq).map_or(0, |entry| entry.key.bucket())
        });
    }

    /// Removes `key`'s claim.
    fn unclaim(&mut self, key: KeyDigest) {
        if let Some(lease) = self.claims.remove(&key) {
            self.lease_ends.remove(&(lease.until, key));
        }
    }

    /// Claims `key` for a new token until `until`, replacing an ended
    /// lease or retention; the token's number, or the answer when the key is
    /// held or completed.
    fn claim(
        &mut self, key: KeyDigest, now: u64, until: u64, capacity: usize,
    ) -> Result<Result<u64, Claim>, StoreError> {
        if let Some(end) = self.completed_until(key) {
            if end > now {
                return Ok(Err(Claim::Completed));
            }
            // Its retention ended: the key is claimed again, in its place.
            self.forget_done(key);
        } else if let Some(lease) = self.claims.get(&key) {
            if lease.until > now {
                return Ok(Err(Claim::InFlight {
                    retry_after: Duration::from_nanos(lease.until - now),
                }));
            }
            // Its lease ended: the holder is presumed dead.
            self.unclaim(key);
        } else if self.len() >= capacity && !self.evict_one(now) {
            return Err(full_of_claims(capacity));
        }
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        self.claims.insert(key, Lease { token, until });
        self.lease_ends.insert((until, key));
        Ok(Ok(token))
    }

    /// Removes one record to make room: expired claims first, then the
    /// oldest completed key.
    fn evict_one(&mut self, now: u64) -> bool {
        for pick in [Pick::ExpiredClaim, Pick::OldestCompleted] {
            while let Some(removed) = self.pop(pick, now) {
                if removed {
                    return true;
                }
            }
        }
        false
    }

    /// Reclaims a few expired records from the front of each order.
    fn sweep(&mut self, now: u64) {
        for pick in [Pick::ExpiredClaim, Pick::ExpiredCompleted] {
            for _ in 0..SWEEP_PER_CALL {
                if self.pop(pick, now).is_none() {
                    break;
                }
            }
        }
    }

    /// Takes the next item `pick` allows from the front of its order.
    /// `None` when there is none, else whether a record went with it (a
    /// stale entry of `done` takes none).
    fn pop(&mut self, pick: Pick, now: u64) -> Option<bool> {
        if pick == Pick::ExpiredClaim {
            let &(until, key) = self.lease_ends.first().filter(|(until, _)| *until <= now)?;
            self.lease_ends.remove(&(until, key));
            self.claims.remove(&key);
            return Some(true);
        }
        if pick == Pick::ExpiredCompleted {
            self.done.front().filter(|entry| entry.until <= now)?;
        }
        let entry = self.done.pop_front()?;
        let seq = self.head;
        self.head = self.head.wrapping_add(1);
        let current = self.index.find_entry(entry.key.bucket(), |&at| at == seq);
        let removed = current
            .map(hashbrown::hash_table::OccupiedEntry::remove)
            .is_ok();
        if !removed {
            self.stale = self.stale.saturating_sub(1);
        } else if entry.until > now {
            self.untold_evictions += 1;
            self.evicted_early += 1;
        }
        Some(removed)
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

/// `now` plus `ttl`, in the store's nanoseconds.
fn deadline(now: u64, what: &str, ttl: Duration) -> Result<u64, StoreError> {
    ttl_millis(what, ttl)?;
    u64::try_from(ttl.as_nanos())
        .ok()
        .and_then(|ttl| now.checked_add(ttl))
        .ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::InvalidInput,
                format!("{what} of {ttl:?} reaches past the clock's range"),
            )
        })
}

/// A store of `capacity` keys that all hold live claims.
fn full_of_claims(capacity: usize) -> StoreError {
    StoreError::new(
        StoreErrorKind::Full,
        format!("all {capacity} keys of the memory store hold live claims; raise the capacity"),
    )
}

impl IdempotencyStore for MemoryStore {
    /// [`StoreErrorKind::Full`] while every key the store can hold is a
    /// live claim, which a new delivery's claim would find too (it is
    /// answered `503`); `Ok` otherwise.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let now = self.nanos_at(Instant::now());
        let state = self.lock();
        // A store full of claims holds no completed key; one whose
        // earliest lease has ended has room for a new claim.
        let full = state.claims.len() >= self.capacity
            && state
                .lease_ends
                .first()
                .is_some_and(|(until, _)| *until > now);
        drop(state);
        Box::pin(std::future::ready(if full {
            Err(full_of_claims(self.capacity))
        } else {
            Ok(())
        }))
    }

    fn claim<'a>(
        &'a self, key: &'a str, lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        let claim = Self::key(key).and_then(|key| self.claim_now(&key, lease));
        Box::pin(std::future::ready(claim))
    }

    fn complete<'a>(
        &'a self, key: &'a str, token: &'a LeaseToken, retention: Duration,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        let settle = Self::key(key).and_then(|key| self.complete_now(&key, token, retention));
        Box::pin(std::future::ready(settle))
    }

    fn release<'a>(
        &'a self, key: &'a str, token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        let settle = Self::key(key).and_then(|key| self.release_now(&key, token));
        Box::pin(std::future::ready(settle))
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

    /// The layer reads the clock once before a claim and counts its own
    /// lease from that reading; the store counts the lease from it too.
    #[tokio::test(start_paused = true)]
    async fn a_claim_as_of_an_earlier_reading_leases_from_that_reading() {
        let store = MemoryStore::new();
        let key = MemoryStore::key("k").expect("a valid key");
        let read = Instant::now();
        advance(Duration::from_millis(400)).await;
        let claim = store.claim_at(&key, SECOND, read).ok();
        assert!(matches!(claim, Some(Claim::Claimed(_))), "{claim:?}");
        assert_eq!(
            store.claim("k", SECOND).await.ok(),
            Some(Claim::InFlight {
                retry_after: Duration::from_millis(600)
            })
        );
        advance(Duration::from_millis(600)).await;
        claimed(store.claim("k", SECOND).await);
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
        assert_eq!(store.evicted_early(), 0);
        claimed(store.claim("d", SECOND).await);
        assert_eq!(store.len(), 3);
        // "a" was forgotten 97 s before its retention ended: counted.
        assert_eq!(store.evicted_early(), 1);

        // "a" went first; "b" and "c" are still remembered.
        assert_eq!(store.claim("c", SECOND).await.ok(), Some(Claim::Completed));
        assert_eq!(store.claim("b", SECOND).await.ok(), Some(Claim::Completed));
        claimed(store.claim("a", SECOND).await);
        // Remembering "a" again took the slot of "b", the oldest left.
        assert_eq!(store.claim("c", SECOND).await.ok(), Some(Claim::Completed));
        claimed(store.claim("b", SECOND).await);
        assert_eq!(store.len(), 3);
    }

    /// An early eviction is counted through the `metrics` facade, where
    /// an alert can see it (the log says so once a minute at most).
    #[cfg(feature = "metrics")]
    #[test]
    fn an_early_eviction_is_counted_for_the_metrics() {
        use std::sync::atomic::AtomicU64;
        use std::sync::Arc;

        struct Count(AtomicU64);
        impl metrics::CounterFn for Count {
            fn increment(&self, value: u64) {
                self.0.fetch_add(value, Ordering::Relaxed);
            }
            fn absolute(&self, value: u64) {
                self.0.store(value, Ordering::Relaxed);
            }
        }
        struct Recorder(Arc<Count>);
        impl metrics::Recorder for Recorder {
            fn describe_counter(
                &self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString,
            ) {
            }
            fn describe_gauge(
                &self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString,
            ) {
            }
            fn describe_histogram(
                &self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString,
            ) {
            }
            fn register_counter(
                &self, key: &metrics::Key, _: &metrics::Metadata<'_>,
            ) -> metrics::Counter {
                assert_eq!(key.name(), "clink_webhook_memory_store_evicted_early_total");
                metrics::Counter::from_arc(Arc::clone(&self.0))
            }
            fn register_gauge(
                &self, _: &metrics::Key, _: &metrics::Metadata<'_>,
            ) -> metrics::Gauge {
                metrics::Gauge::noop()
            }
            fn register_histogram(
                &self, _: &metrics::Key, _: &metrics::Metadata<'_>,
            ) -> metrics::Histogram {
                metrics::Histogram::noop()
            }
        }

        let count = Arc::new(Count(AtomicU64::new(0)));
        let recorder = Recorder(Arc::clone(&count));
        let store = MemoryStore::new().with_capacity(2).unwrap();
        metrics::with_local_recorder(&recorder, || {
            for key in ["a", "b", "c", "d"] {
                let key = MemoryStore::key(key).unwrap();
                let Ok(Claim::Claimed(token)) = store.claim_now(&key, SECOND) else {
                    panic!("not claimed");
                };
                let completed = store.complete_now(&key, &token, 100 * SECOND);
                assert_eq!(completed.ok(), Some(Settle::Applied));
            }
        });
        // "c" forgot "a", and "d" forgot "b", each well inside its retention.
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert_eq!(store.evicted_early(), 2);
    }

    /// A store full of live claims is not ready: a new delivery's claim
    /// would be refused. Once a lease has ended, or with a completed key
    /// to evict, it is.
    #[tokio::test(start_paused = true)]
    async fn a_store_full_of_live_claims_is_not_ready() {
        let store_of = store;
        let store = store_of(2);
        assert!(store.ping().await.is_ok());
        claimed(store.claim("a", SECOND).await);
        assert!(store.ping().await.is_ok());
        claimed(store.claim("b", 2 * SECOND).await);
        let full = store.ping().await.unwrap_err();
        assert_eq!(full.kind(), StoreErrorKind::Full, "{full}");
        assert_eq!(
            store.claim("c", SECOND).await.unwrap_err().kind(),
            StoreErrorKind::Full
        );
        advance(SECOND).await;
        assert!(store.ping().await.is_ok(), "a's lease has ended");

        let other = store_of(2);
        remember(&other, "done", 100 * SECOND).await;
        claimed(other.claim("live", 100 * SECOND).await);
        assert!(other.ping().await.is_ok(), "a completed key can go");
    }

    #[tokio::test(start_paused = true)]
    async fn full_store_evicts_expired_claims_before_completed_keys() {
        let store = store(3);
        remember(&store, "done", 100 * SECOND).await;
        claimed(store.claim("abandoned", SECOND).await);
        remember(&store, "done too", 100 * SECOND).await;
        advance(2 * SECOND).await;

        claimed(store.claim("new", SECOND).await);
        // A claim whose lease ended went: no handled event forgotten.
        assert_eq!(store.evicted_early(), 0);
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

    #[tokio::test(start_paused = true)]
    async fn a_key_completed_again_leaves_its_old_place_in_the_eviction_order() {
        let store = store(2);
        remember(&store, "a", SECOND).await;
        remember(&store, "b", 100 * SECOND).await;
        advance(2 * SECOND).await;
        // "a" expired and is remembered again: it is now the newest.
        remember(&store, "a", 100 * SECOND).await;
        claimed(store.claim("c", SECOND).await);
        assert_eq!(store.claim("a", SECOND).await.ok(), Some(Claim::Completed));
        claimed(store.claim("b", SECOND).await);
    }

    /// A key claimed again after its retention ended is one key again: its
    /// old completion is forgotten, and the new completion is the one that
    /// holds. `len`, `is_empty`, `capacity` and `Debug` say so.
    #[tokio::test(start_paused = true)]
    async fn a_key_claimed_after_its_retention_is_one_key_again() {
        let store = store(10);
        assert!(store.is_empty());
        // Completed first and kept longer, it stays at the front of the
        // completion order, so no sweep reaches `k`'s old entry behind it.
        remember(&store, "kept", 100 * SECOND).await;
        remember(&store, "k", SECOND).await;
        advance(2 * SECOND).await;
        let token = claimed(store.claim("k", SECOND).await);
        assert_eq!(store.len(), 2);
        assert!(!store.is_empty());
        let settled = store.complete("k", &token, 60 * SECOND).await;
        assert_eq!(settled.ok(), Some(Settle::Applied));
        assert_eq!(store.len(), 2);
        assert!(matches!(
            store.claim("k", SECOND).await,
            Ok(Claim::Completed)
        ));
        assert_eq!(store.capacity(), 10);
        let text = format!("{store:?}");
        assert!(
            text.contains("len: 2") && text.contains("capacity: 10"),
            "{text}"
        );
    }

    /// A key claimed again after its retention ended, over and over, behind
    /// a key kept far longer (so no sweep reaches its old entries), leaves
    /// the completion order bounded, and every key where it was.
    #[tokio::test(start_paused = true)]
    async fn stale_completions_behind_a_long_retention_stay_bounded() {
        const CAPACITY: usize = 2;
        let store = store(CAPACITY);
        remember(&store, "kept", 3600 * SECOND).await;
        let mut longest = 0;
        for _ in 0..100_000 {
            remember(&store, "k", Duration::from_millis(1)).await;
            advance(Duration::from_millis(2)).await;
            longest = longest.max(store.lock().done.len());
        }
        assert!(
            longest <= 2 * CAPACITY + STALE_SLACK + 1,
            "the completion order reached {longest} entries"
        );
        assert_eq!(store.len(), 2);
        assert_eq!(
            store.claim("kept", SECOND).await.ok(),
            Some(Claim::Completed)
        );
        remember(&store, "k", 100 * SECOND).await;
        assert_eq!(store.claim("k", SECOND).await.ok(), Some(Claim::Completed));
        // The oldest completed key is still the first to go: "kept", not "k".
        claimed(store.claim("new", SECOND).await);
        assert_eq!(store.claim("k", SECOND).await.ok(), Some(Claim::Completed));
    }

    #[tokio::test]
    async fn tokens_are_unique_and_only_their_own_settle() {
        let store = MemoryStore::new();
        let other = MemoryStore::new();
        let a = claimed(store.claim("a", SECOND).await);
        let b = claimed(store.claim("b", SECOND).await);
        let elsewhere = claimed(other.claim("a", SECOND).await);
        assert_ne!(a, b);
        assert_ne!(a, elsewhere);
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(
            store.complete("a", &b, SECOND).await.ok(),
            Some(Settle::LeaseLost)
        );
        assert_eq!(
            store.complete("a", &elsewhere, SECOND).await.ok(),
            Some(Settle::LeaseLost)
        );
        assert_eq!(store.release("a", &a).await.ok(), Some(Settle::Applied));
    }

    /// The structural size of the store per completed key, with the same
    /// rounding as the growth of its tables.
    #[tokio::test]
    async fn bytes_per_remembered_key() {
        const KEYS: usize = 100_000;
        let store = MemoryStore::new();
        for i in 0..KEYS {
            remember(&store, &format!("clink:live:evt_{i:024}"), 100 * SECOND).await;
        }
        let state = store.lock();
        assert_eq!(
            std::mem::size_of::<Done>(),
            24,
            "a completed key stays 24 bytes"
        );
        let ring = state.done.capacity() * std::mem::size_of::<Done>();
        let index = state.index.capacity() * 8 / 7 * (std::mem::size_of::<u32>() + 1);
        let per_key = (ring + index) / KEYS;
        assert!(per_key < 64, "{per_key} bytes per key");
        assert!(state.claims.is_empty() && state.lease_ends.is_empty());
    }
}
