//! Deduplicating deliveries: the [`IdempotencyStore`] trait and its stores.
//!
//! (State machine table and store docs: see the store modules.)

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

mod memory;

pub use memory::MemoryStore;

/// A boxed, sendable future, as returned by [`IdempotencyStore`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long a claim holds before another delivery may take it over (30 s).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How long a completed event id is remembered (72 h, beyond Clink's ~24 h of retries).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(72 * 3600);

/// The outcome of [`IdempotencyStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller holds the lease and must run the handler, then
    /// [`complete`](IdempotencyStore::complete) or
    /// [`release`](IdempotencyStore::release) with the token.
    Claimed(LeaseToken),
    /// Another delivery holds a live lease; try again after `retry_after`.
    InFlight {
        /// Time left on the other holder's lease.
        retry_after: Duration,
    },
    /// The event was already handled successfully.
    Completed,
}

/// What a settle call ([`complete`](IdempotencyStore::complete) or
/// [`release`](IdempotencyStore::release)) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// The caller still held the lease and the change was made.
    Applied,
    /// The lease had expired and been taken over (or the key was gone), so
    /// nothing changed: the token was stale.
    LeaseLost,
}

/// The fencing token of one claim: only its holder can settle it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A fresh token, unique across processes with overwhelming probability.
    #[must_use]
    pub fn generate() -> Self {
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::time::SystemTime;

        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // RandomState is seeded from the OS per process; two hashers give 128 bits.
        let mut halves = [0u64; 2];
        for (i, half) in halves.iter_mut().enumerate() {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u64(count);
            hasher.write_u128(nanos);
            hasher.write_usize(i);
            hasher.write_u32(std::process::id());
            *half = hasher.finish();
        }
        Self(format!("{:016x}{:016x}", halves[0], halves[1]))
    }

    /// A token from its text, as read back from a store.
    #[must_use]
    pub fn from_string(token: String) -> Self {
        Self(token)
    }

    /// The token's text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseToken({})", self.0)
    }
}

/// Remembers which event ids are being handled and which are done.
///
/// Object safe: hold it as `Arc<dyn IdempotencyStore>`.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Tries to take the lease on `key` for `lease`.
    fn claim<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;

    /// Marks `key` completed for `retention`, if `token` still holds the lease.
    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a LeaseToken,
        retention: Duration,
    ) -> BoxFuture<'a, Result<Settle, StoreError>>;

    /// Gives up the lease on `key` so the next delivery runs the handler, if
    /// `token` still holds it.
    fn release<'a>(
        &'a self,
        key: &'a str,
        token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<Settle, StoreError>>;
}

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store could not be reached or refused the connection.
    Unavailable,
    /// The store did not answer within the per-call timeout.
    Timeout,
    /// The store answered something unexpected.
    Protocol,
}

/// The store could not answer; the delivery is refused with 503 so Clink retries.
///
/// Messages never contain connection strings or passwords.
#[derive(Debug, Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    /// A new error of `kind`; `message` must not contain secrets.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What kind of failure this is.
    #[must_use]
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            StoreErrorKind::Unavailable => "idempotency store unavailable",
            StoreErrorKind::Timeout => "idempotency store timed out",
            StoreErrorKind::Protocol => "idempotency store answered unexpectedly",
        };
        write!(f, "{what}: {}", self.message)
    }
}

impl std::error::Error for StoreError {}
