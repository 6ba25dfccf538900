//! [`IdempotencyStore`]: claim, complete, release, with a fencing token.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use super::MAX_TTL;
use super::{BoxFuture, StoreError};

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
#[must_use = "a settle that found its lease lost changed nothing: the work under it must not be kept as done"]
pub enum Settle {
    /// The caller still held the lease and the change was made.
    Applied,
    /// The lease had ended (and perhaps been taken over; an inbox's
    /// claim is lost only once another took the event over), or the key
    /// was gone, so nothing changed: the token was stale.
    LeaseLost,
}

impl Settle {
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    /// `Applied` when the settle changed what it meant to, `LeaseLost` otherwise.
    pub(crate) fn applied_if(applied: bool) -> Self {
        if applied {
            Self::Applied
        } else {
            Self::LeaseLost
        }
    }
}

/// The fencing token of one claim: only its holder can settle it.
#[derive(Clone)]
pub struct LeaseToken(Repr);

#[derive(Clone)]
enum Repr {
    /// 32 lowercase hex digits, the form this crate's stores give: kept
    /// inline, so a claim allocates nothing for its token.
    Hex([u8; 32]),
    /// Any other text, as read back from a store.
    Text(String),
}

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
        Self::from_halves(halves[0], halves[1])
    }

    /// The token whose text is `high` then `low`, each as 16 lowercase hex
    /// digits.
    pub(crate) fn from_halves(high: u64, low: u64) -> Self {
        /// Each byte's two lowercase hex digits: a token is 16 lookups.
        const PAIRS: [[u8; 2]; 256] = {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut pairs = [[0; 2]; 256];
            let mut byte = 0;
            while byte < 256 {
                pairs[byte] = [HEX[byte >> 4], HEX[byte & 0xf]];
                byte += 1;
            }
            pairs
        };
        let mut text = [0; 32];
        let bytes = high.to_be_bytes().into_iter().chain(low.to_be_bytes());
        for (digits, byte) in text.chunks_exact_mut(2).zip(bytes) {
            digits.copy_from_slice(&PAIRS[usize::from(byte)]);
        }
        Self(Repr::Hex(text))
    }

    /// A token from its text, as read back from a store.
    #[must_use]
    pub fn from_string(token: String) -> Self {
        Self(Repr::Text(token))
    }

    /// The token's text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Only ever hex digits, so always UTF-8.
            Repr::Hex(digits) => std::str::from_utf8(digits).unwrap_or_default(),
            Repr::Text(text) => text,
        }
    }
}

impl PartialEq for LeaseToken {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Hex(this), Repr::Hex(other)) => this == other,
            _ => self.as_str() == other.as_str(),
        }
    }
}

impl Eq for LeaseToken {}

impl std::hash::Hash for LeaseToken {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseToken({})", self.as_str())
    }
}

/// Remembers which event ids are being handled and which are done.
///
/// A store makes the handler run to success exactly once per event id: the
/// first delivery *claims* the id with a lease, runs the handler, then either
/// *completes* the id (remembered for the retention window) or *releases* it
/// so the next retry runs the handler again.
///
/// Object safe: hold it as `Arc<dyn IdempotencyStore>`; an `Arc` of a store
/// is a store too. `tests/suite/stores` is a conformance suite that checks every
/// implementation against the state machine below, on real servers.
///
/// Keys are opaque to the store (see [Keys](super#keys)). Durations are
/// honoured to the millisecond by the networked stores and must lie between
/// 1 ms and [`MAX_TTL`].
///
/// # State machine
///
/// | state of the key | call | next state | answer, and what the layer does |
/// |---|---|---|---|
/// | absent | `claim` | claimed by a new token until the lease ends | [`Claim::Claimed`]: run the handler |
/// | claimed, lease live | `claim` | unchanged | [`Claim::InFlight`] with the lease's time left: 409 with `Retry-After`, handler not run |
/// | claimed, lease expired | `claim` | claimed by the new token (the old one is stale) | [`Claim::Claimed`]: the holder is presumed dead, run the handler |
/// | claimed, lease live | `complete(token)` | completed until the retention ends | [`Settle::Applied`]: 200 |
/// | claimed, lease live | `release(token)` after a handler error, timeout or panic | absent | [`Settle::Applied`]: the error status; Clink's retry runs the handler again |
/// | claimed by another token, lease expired, or absent | `complete`/`release` with a stale token | unchanged | [`Settle::LeaseLost`]: after `complete` still 200 (the handler did succeed), logged and counted |
/// | completed, retention live | `claim` | unchanged | [`Claim::Completed`]: 200, handler not run |
/// | completed, retention ended | `claim` | claimed by the new token | [`Claim::Claimed`] |
/// | any | `claim` fails ([`StoreError`]) | unchanged | 503, handler not run: fail closed, Clink retries |
/// | any | `claim` refuses the key ([`StoreErrorKind::InvalidInput`](super::StoreErrorKind::InvalidInput): too long with its account and prefix) | unchanged | 400 (`invalid_event_id`), handler not run: no retry can store it (with the layer's [`dead_letters`](crate::ClinkLayer::dead_letters), kept dead there and 200) |
///
/// A call that panics (in the method or in the future it returns) is taken
/// for one that failed with [`StoreErrorKind::Protocol`](super::StoreErrorKind::Protocol),
/// and the delivery is answered as for any such failure, never left
/// without an answer.
///
/// The token returned with [`Claim::Claimed`] is a fencing token: only its
/// holder can settle the claim, and only while the lease is live. Once a lease
/// has ended the token is stale even if nobody took the key over yet, so every
/// store answers the same way whether or not it still holds the expired
/// entry. Keep the handler's timeout below the lease so a slow handler never
/// runs beside its successor.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Tries to take the lease on `key` for `lease`.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store cannot answer, is full of live claims,
    /// or the key or lease is out of range. The caller must not run the
    /// handler: the delivery is refused with 503 so that Clink retries (400
    /// for a key out of range, [`StoreErrorKind::InvalidInput`](super::StoreErrorKind::InvalidInput),
    /// which no retry changes, or kept dead in the layer's
    /// [`dead_letters`](crate::ClinkLayer::dead_letters) and 200: use that
    /// kind for nothing else).
    fn claim<'a>(
        &'a self, key: &'a str, lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;

    /// Marks `key` completed for `retention`, if `token` still holds a live
    /// lease on it; otherwise answers [`Settle::LeaseLost`] and changes nothing.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store cannot answer or an argument is out of
    /// range. The key then stays claimed until its lease ends.
    fn complete<'a>(
        &'a self, key: &'a str, token: &'a LeaseToken, retention: Duration,
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
        &'a self, key: &'a str, token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<Settle, StoreError>>;

    /// Whether the store answers now: one round trip for the networked
    /// stores, for readiness checks (see
    /// [`ClinkLayer::readiness`](crate::ClinkLayer::readiness)). The default
    /// answers `Ok` at once, right for in-process stores;
    /// [`MemoryStore`](crate::store::MemoryStore) answers
    /// [`StoreErrorKind::Full`](crate::store::StoreErrorKind::Full) while
    /// every key it can hold is a live claim.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store cannot be reached.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

impl<T: IdempotencyStore + ?Sized> IdempotencyStore for Arc<T> {
    fn claim<'a>(
        &'a self, key: &'a str, lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        (**self).claim(key, lease)
    }

    fn complete<'a>(
        &'a self, key: &'a str, token: &'a LeaseToken, retention: Duration,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        (**self).complete(key, token, retention)
    }

    fn release<'a>(
        &'a self, key: &'a str, token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        (**self).release(key, token)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        (**self).ping()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// A token is its text, however it is held: one made here and the same
    /// text read back from a store are equal, hash alike and show alike.
    #[test]
    fn a_token_is_its_text_however_it_is_held() {
        let made = LeaseToken::from_halves(0x0123_4567_89ab_cdef, 42);
        assert_eq!(made.as_str(), "0123456789abcdef000000000000002a");
        let every_digit = LeaseToken::from_halves(0xfedc_ba98_7654_3210, u64::MAX);
        assert_eq!(every_digit.as_str(), "fedcba9876543210ffffffffffffffff");
        let read = LeaseToken::from_string(made.as_str().to_owned());
        assert_eq!(made, read);
        assert_eq!(format!("{made:?}"), format!("{read:?}"));
        let set: HashSet<_> = [made.clone(), read].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert_ne!(made, LeaseToken::from_halves(0x0123_4567_89ab_cdef, 43));
        assert_ne!(made, LeaseToken::from_string("other".to_owned()));

        let a = LeaseToken::generate();
        let b = LeaseToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
}
