//! Deduplicating deliveries: the [`IdempotencyStore`] trait and its stores.
//!
//! Clink retries an event until it gets a 2xx, and two attempts of one event
//! can arrive at once, at different instances of the app. A store makes the
//! handler run to success exactly once per event id: the first delivery
//! *claims* the id with a lease, runs the handler, then either *completes*
//! the id (remembered for the retention window) or *releases* it so the next
//! retry runs the handler again.
//!
//! # State machine
//!
//! | state of the key | call | next state | answer, and what the layer does |
//! |---|---|---|---|
//! | absent | `claim` | claimed by a new token until the lease ends | [`Claim::Claimed`]: run the handler |
//! | claimed, lease live | `claim` | unchanged | [`Claim::InFlight`] with the lease's time left: 409 with `Retry-After`, handler not run |
//! | claimed, lease expired | `claim` | claimed by the new token (the old one is stale) | [`Claim::Claimed`]: the holder is presumed dead, run the handler |
//! | claimed, lease live | `complete(token)` | completed until the retention ends | [`Settle::Applied`]: 200 |
//! | claimed, lease live | `release(token)` after a handler error, timeout or panic | absent | [`Settle::Applied`]: the error status; Clink's retry runs the handler again |
//! | claimed by another token, lease expired, or absent | `complete`/`release` with a stale token | unchanged | [`Settle::LeaseLost`]: after `complete` still 200 (the handler did succeed), logged and counted |
//! | completed, retention live | `claim` | unchanged | [`Claim::Completed`]: 200, handler not run |
//! | completed, retention ended | `claim` | claimed by the new token | [`Claim::Claimed`] |
//! | any | `claim` fails ([`StoreError`]) | unchanged | 503, handler not run: fail closed, Clink retries |
//!
//! The token returned with [`Claim::Claimed`] is a fencing token: only its
//! holder can settle the claim, and only while the lease is live. Once a lease
//! has ended the token is stale even if nobody took the key over yet, so every
//! store answers the same way whether or not it still holds the expired
//! entry. Keep the handler's timeout below the lease so a slow handler never
//! runs beside its successor.
//!
//! # Keys
//!
//! Stores treat keys as opaque text: they do not parse, prefix or namespace
//! them. Namespacing is the caller's job; the layer builds
//! `{prefix}:{live|test|any}:{event_id}` so that several apps can share one
//! server and live and test events never collide. A key is any string of at
//! most [`MAX_KEY_LEN`] bytes without NUL characters (a limit every store
//! shares, set by what PostgreSQL can index and store as `text`).
//!
//! # Stores
//!
//! | store | feature | scope | round trips per delivery |
//! |---|---|---|---|
//! | [`MemoryStore`] | always | one process | none |
//! | `RedisStore` | `redis` | many instances sharing one Redis | 2 (claim, settle) |
//! | `PostgresStore` | `postgres` | many instances sharing one database; can join the caller's transaction | 2 (claim, settle) |
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use clink_webhooks::idempotency::{
//!     Claim, IdempotencyStore, MemoryStore, Settle, DEFAULT_LEASE, DEFAULT_RETENTION,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), clink_webhooks::idempotency::StoreError> {
//! let store = MemoryStore::new();
//! let key = "clink:live:evt_123";
//!
//! // The first delivery claims the event and runs the handler...
//! let Claim::Claimed(token) = store.claim(key, DEFAULT_LEASE).await? else {
//!     panic!("a fresh key is claimable");
//! };
//! // ...while a second one, arriving meanwhile, is told to come back later.
//! assert!(matches!(store.claim(key, DEFAULT_LEASE).await?, Claim::InFlight { .. }));
//!
//! // The handler succeeded: remember the event for the retention window.
//! assert_eq!(store.complete(key, &token, DEFAULT_RETENTION).await?, Settle::Applied);
//!
//! // A retry of the same event is acknowledged without running the handler.
//! assert_eq!(store.claim(key, DEFAULT_LEASE).await?, Claim::Completed);
//!
//! // The token is spent: it can neither complete nor release again.
//! assert_eq!(store.release(key, &token).await?, Settle::LeaseLost);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::postgres::PostgresStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;
pub use memory::MemoryStore;

/// A boxed, sendable future, as returned by [`IdempotencyStore`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long a claim holds before another delivery may take it over (30 s).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How long a completed event id is remembered (72 h, beyond Clink's ~24 h of retries).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(72 * 3600);

/// How long a networked store waits for one answer before giving up with
/// [`StoreErrorKind::Timeout`] (1 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest key a store accepts, in bytes (see [Keys](self#keys)).
pub const MAX_KEY_LEN: usize = 1024;

/// The longest lease or retention a store accepts (10 years).
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

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
    /// The lease had ended (and perhaps been taken over), or the key was
    /// gone, so nothing changed: the token was stale.
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
/// Object safe: hold it as `Arc<dyn IdempotencyStore>`. The
/// [module docs](self) give the state machine every implementation follows;
/// `tests/stores` is a conformance suite that checks it against a real server.
///
/// Keys are opaque to the store (see [Keys](self#keys)). Durations are
/// honoured to the millisecond by the networked stores and must lie between
/// 1 ms and [`MAX_TTL`].
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Tries to take the lease on `key` for `lease`.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store cannot answer, is full of live claims,
    /// or the key or lease is out of range. The caller must not run the
    /// handler: the delivery is refused with 503 so that Clink retries.
    fn claim<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;

    /// Marks `key` completed for `retention`, if `token` still holds a live
    /// lease on it; otherwise answers [`Settle::LeaseLost`] and changes nothing.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store cannot answer or an argument is out of
    /// range. The key then stays claimed until its lease ends.
    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a LeaseToken,
        retention: Duration,
    ) -> BoxFuture<'a, Result<Settle, StoreError>>;

    /// Gives up the lease on `key` so the next delivery runs the handler, if
    /// `token` still holds a live lease on it; otherwise answers
    /// [`Settle::LeaseLost`] and changes nothing.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store cannot answer or the key is out of
    /// range. The key then stays claimed until its lease ends.
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
    /// The store is full of live claims and cannot take another key.
    Full,
    /// A key or duration was out of range (see [`IdempotencyStore`]).
    InvalidInput,
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
            StoreErrorKind::Full => "idempotency store full",
            StoreErrorKind::InvalidInput => "invalid idempotency store argument",
        };
        write!(f, "{what}: {}", self.message)
    }
}

impl std::error::Error for StoreError {}

/// A store was configured with a value it cannot work with (a zero capacity
/// or timeout, a table name that is not a plain identifier, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid idempotency store configuration: {}",
            self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Checks that `key` is one every store accepts.
pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    check_text("key", key)
}

/// Checks that `text`, stored as `what`, is at most [`MAX_KEY_LEN`] bytes
/// without NUL characters, as every store accepts.
pub(crate) fn check_text(what: &str, text: &str) -> Result<(), StoreError> {
    if text.len() > MAX_KEY_LEN {
        return Err(StoreError::new(
            StoreErrorKind::InvalidInput,
            format!(
                "{what} is {} bytes long, the limit is {MAX_KEY_LEN}",
                text.len()
            ),
        ));
    }
    if text.contains('\0') {
        return Err(StoreError::new(
            StoreErrorKind::InvalidInput,
            format!("{what} contains a NUL character"),
        ));
    }
    Ok(())
}

/// Checks a lease or retention and returns it in whole milliseconds, rounded up.
pub(crate) fn ttl_millis(what: &str, ttl: Duration) -> Result<u64, StoreError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(StoreError::new(
            StoreErrorKind::InvalidInput,
            format!("{what} of {ttl:?} is out of range (1 ms to {MAX_TTL:?})"),
        ));
    }
    let millis = ttl.as_nanos().div_ceil(1_000_000);
    // MAX_TTL is far below u64::MAX milliseconds, so this never saturates.
    Ok(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// Checks a per-call timeout given to a networked store.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn check_timeout(timeout: Duration) -> Result<Duration, ConfigError> {
    if timeout.is_zero() {
        return Err(ConfigError::new(
            "the per-call timeout must be longer than zero",
        ));
    }
    Ok(timeout)
}

/// Checks a retention given to a networked store at configuration.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn check_retention(retention: Duration) -> Result<Duration, ConfigError> {
    match ttl_millis("retention", retention) {
        Ok(_) => Ok(retention),
        Err(err) => Err(ConfigError::new(err.message)),
    }
}

/// Runs one store call until `deadline`, reporting `timeout` when it passes.
#[cfg(feature = "postgres")]
pub(crate) async fn timed_until<T>(
    deadline: tokio::time::Instant,
    timeout: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!("no answer within {timeout:?}"),
            ))
        })
}

/// Runs one store call under the per-call timeout.
pub(crate) async fn timed<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!("no answer within {timeout:?}"),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(check_key("").is_ok());
        assert!(check_key("clink:live:evt_1 ü ✓").is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_LEN)).is_ok());

        let long = check_key(&"k".repeat(MAX_KEY_LEN + 1)).unwrap_err();
        assert_eq!(long.kind(), StoreErrorKind::InvalidInput);
        assert!(long.to_string().contains("1025 bytes"), "{long}");

        let nul = check_key("a\0b").unwrap_err();
        assert_eq!(nul.kind(), StoreErrorKind::InvalidInput);
    }

    #[test]
    fn ttls_round_up_to_whole_milliseconds() {
        assert_eq!(ttl_millis("lease", Duration::from_nanos(1)).ok(), Some(1));
        assert_eq!(
            ttl_millis("lease", Duration::from_micros(1500)).ok(),
            Some(2)
        );
        assert_eq!(ttl_millis("lease", DEFAULT_LEASE).ok(), Some(30_000));
        assert!(ttl_millis("lease", MAX_TTL).is_ok());

        for bad in [Duration::ZERO, MAX_TTL + Duration::from_millis(1)] {
            let err = ttl_millis("retention", bad).unwrap_err();
            assert_eq!(err.kind(), StoreErrorKind::InvalidInput);
            assert!(err.to_string().contains("retention"), "{err}");
        }
    }
}
