//! Persistence: every store the crate keeps state in, behind three traits.
//!
//! - [`IdempotencyStore`] makes a handler run to success exactly once per
//!   event id (claim with a lease, then complete or release; the state
//!   machine is in its docs).
//! - [`FreshnessStore`] keeps the newest handled [`Version`] of each object,
//!   so handlers can tell a stale event from a fresh one (see
//!   [`ordering`](crate::ordering)).
//! - [`Inbox`] keeps verified deliveries durably for
//!   [workers](crate::inbox::Workers) to handle later: [`MemoryInbox`] (for
//!   tests), `SqliteInbox` (feature `sqlite`, one instance) and
//!   `PostgresInbox` (feature `postgres`, any number).
//!
//! Each idempotency backend implements the first two, side by side, so one
//! value serves both the layer and the router:
//!
//! | store | feature | scope | round trips per delivery (claim + settle; freshness read + record) |
//! |---|---|---|---|
//! | [`MemoryStore`] | always | one process | none |
//! | `RedisStore` | `redis` (TLS: `redis-tls`; Redis Cluster: `redis-cluster`) | many instances sharing one Redis or one Redis Cluster | 2; 2 |
//! | `PostgresStore` | `postgres` | many instances sharing one database; can join the caller's transaction | 2; 2 |
//!
//! `Arc<S>` is a store whenever `S` is, so a store can be shared between the
//! layer and the router by cloning an `Arc`.
//!
//! What every store shares lives here: [`StoreError`], the [key
//! rules](#keys), the defaults, and the bound on every call. The files:
//! `idempotency.rs`, `freshness.rs` and `inbox_trait.rs` hold the traits
//! and their types; `memory/`, `redis/`, `postgres/` and `sqlite_inbox.rs`
//! the backends. Configuration
//! mistakes (a zero capacity or timeout, a table name that is not an
//! identifier) are [`ConfigError`]s, found when the store
//! is built.
//!
//! # Keys
//!
//! Stores treat keys as opaque text: they do not parse, prefix or namespace
//! them. Namespacing is the caller's job; the layer builds
//! `{prefix}:{account}:{event_id}` so that several apps and merchant
//! accounts can share one server. A key, an object's family
//! and id, and an event id are any string of at most [`MAX_KEY_LEN`] bytes
//! without NUL characters (a limit every store shares, set by what
//! PostgreSQL can index and store as `text`).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use clink_webhooks::store::{
//!     Claim, IdempotencyStore, MemoryStore, Settle, DEFAULT_LEASE, DEFAULT_RETENTION,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), clink_webhooks::store::StoreError> {
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
use std::time::Duration;

#[cfg(doc)]
use crate::events::Version;
use crate::guard::TimedOut;
use crate::ConfigError;

mod freshness;
mod idempotency;
pub(crate) mod inbox_history;
pub(crate) mod inbox_page;
pub(crate) mod inbox_trait;
mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
mod sqlite_inbox;

pub(crate) use freshness::check_record;
pub use freshness::{FreshnessStore, DEFAULT_FRESHNESS_RETENTION};
pub use idempotency::{Claim, IdempotencyStore, LeaseToken, Settle};
pub use inbox_history::{InboxAttemptOutcome, InboxAttemptRecord};
pub use inbox_page::{InboxActivity, InboxSummary, PageStart, SUMMARY_ERROR_CHARS};
pub use inbox_trait::{
    Inbox, InboxClaim, InboxEntry, InboxFilter, InboxStats, InboxStatus, Inserted, NewEvent,
    ReplayPin, Replayed, SignatureHeaders, PURGE_STEP,
};
pub(crate) use memory::MemoryKey;
pub use memory::{MemoryInbox, MemoryStore, DEFAULT_FRESHNESS_CAPACITY};
#[cfg(feature = "postgres")]
pub use postgres::{
    postgres_config, postgres_on_this_machine, PostgresConnector, PostgresInbox, PostgresStore,
};
#[cfg(feature = "postgres-tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres-tls")))]
pub use postgres::{postgres_tls, MakeRustlsConnect};
#[cfg(feature = "redis")]
pub use redis::RedisStore;
#[cfg(feature = "sqlite")]
pub use sqlite_inbox::SqliteInbox;

pub(crate) use crate::BoxFuture;

/// How long a claim holds before another delivery may take it over (30 s).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How long a completed event id is remembered (72 h, beyond Clink's ~24 h of retries).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(72 * 3600);

/// How long a networked store waits for one answer before giving up with
/// [`StoreErrorKind::Timeout`] (1 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest key a store accepts, in bytes (see [Keys](self#keys)).
pub const MAX_KEY_LEN: usize = 1024;

/// What the id of a dead letter kept for a verified event whose own id
/// cannot be kept starts with (then `:` and the SHA-256 of its body).
pub(crate) const INVALID_ID_LABEL: &str = "invalid-event-id";

/// The longest lease or retention a store accepts (10 years).
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

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
    /// The store is full of live entries and cannot take another key or object.
    Full,
    /// A key, object id or duration was out of range (see [Keys](self#keys)).
    InvalidInput,
    /// A claim's lease ended before the work under it was settled: another
    /// worker or delivery may hold the event now (an inbox's claim: one
    /// does).
    LeaseLost,
}

/// The store could not answer; the delivery is refused with 503 so Clink
/// retries (a claim refused as [`InvalidInput`](StoreErrorKind::InvalidInput),
/// a key no store can take, with 400, retrying cannot help: or kept dead in
/// the layer's [`dead_letters`](crate::ClinkLayer::dead_letters) and 200).
///
/// Messages never contain connection strings or passwords.
#[derive(Debug, Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    /// Whether the connection that answered is of no further use (it
    /// reaches a standby, or a server going away) and is not to be reused.
    #[cfg(feature = "postgres")]
    spent_connection: bool,
}

impl StoreError {
    /// A new error of `kind`; `message` must not contain secrets.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            #[cfg(feature = "postgres")]
            spent_connection: false,
        }
    }

    /// This error, saying the connection that answered is not to be reused.
    #[cfg(feature = "postgres")]
    pub(crate) fn with_spent_connection(mut self) -> Self {
        self.spent_connection = true;
        self
    }

    /// Whether the connection that answered is of no further use: a
    /// PostgreSQL connection that answered as a standby does (`25006`: one
    /// still open to a primary since demoted) or as a server going away
    /// (`57P01` to `57P03`). The stores close such a connection of their
    /// own; after `PostgresStore::claim_in` or `complete_in` fail so on a
    /// connection of yours, drop it (`deadpool_postgres::Object::take`)
    /// rather than hand it back to its pool. Always `false` without the
    /// `postgres` feature.
    #[must_use]
    pub fn spent_connection(&self) -> bool {
        #[cfg(feature = "postgres")]
        return self.spent_connection;
        #[cfg(not(feature = "postgres"))]
        false
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
            StoreErrorKind::Unavailable => "store unavailable",
            StoreErrorKind::Timeout => "store timed out",
            StoreErrorKind::Protocol => "store answered unexpectedly",
            StoreErrorKind::Full => "store full",
            StoreErrorKind::InvalidInput => "invalid store argument",
            StoreErrorKind::LeaseLost => "lease lost",
        };
        write!(f, "{what}: {}", self.message)
    }
}

impl std::error::Error for StoreError {}

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

/// `text` with each NUL as U+FFFD: PostgreSQL's `text` refuses a NUL, and
/// SQLite's text functions stop at one.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn without_nul(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
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

/// The longest per-call timeout a networked store takes: an hour (a
/// call's deadline is an instant, and PostgreSQL's `lock_timeout` holds
/// at most 24.8 days).
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(3_600);

/// Checks a per-call timeout given to a networked store: longer than zero,
/// at most [`MAX_CALL_TIMEOUT`].
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn check_timeout(timeout: Duration) -> Result<Duration, ConfigError> {
    if timeout.is_zero() || timeout > MAX_CALL_TIMEOUT {
        return Err(ConfigError::new(
            "the per-call timeout must be longer than zero and at most an hour",
        ));
    }
    Ok(timeout)
}

/// Checks a retention given to a networked store at configuration.
pub(crate) fn check_retention(retention: Duration) -> Result<Duration, ConfigError> {
    match ttl_millis("retention", retention) {
        Ok(_) => Ok(retention),
        Err(err) => Err(ConfigError::new(err.message)),
    }
}

/// Runs one store call under the per-call timeout, arming no timer for a
/// call that answers at once (an in-process store always does). A store
/// of the app's own that panics while it answers is a failed call, not the
/// end of the delivery's task (build its call inside `call`, an `async`
/// block, for a panic in the call itself to be caught too).
pub(crate) async fn timed<T>(
    timeout: Duration, call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match crate::guard::within(timeout, crate::guard::CatchUnwind::new(call)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(panic)) => {
            crate::guard::cold();
            Err(StoreError::new(
                StoreErrorKind::Protocol,
                format!("the store panicked: {panic}"),
            ))
        }
        Err(TimedOut(after)) => Err(StoreError::new(
            StoreErrorKind::Timeout,
            format!("no answer within {after:?}"),
        )),
    }
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
