//! Steps 6 and 8: claim the event id before the handler runs, and settle
//! the claim after it (complete on success, release otherwise), even when
//! the delivery is dropped half-way.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use super::config::Config;
use super::within::within;
use super::VerifiedEvent;
use crate::store::{
    Claim, IdempotencyStore, LeaseToken, MemoryKey, MemoryStore, Settle, StoreError, StoreErrorKind,
};
use crate::Outcome;

/// The longest key kept inline; a longer one (a long prefix or event id)
/// goes to the heap.
const INLINE_KEY: usize = 96;

/// An idempotency key, written into a buffer of its own rather than
/// formatted into a new `String` per delivery.
pub(super) enum StoreKey {
    Inline { bytes: [u8; INLINE_KEY], len: u8 },
    Heap(String),
}

impl StoreKey {
    /// The key made of `parts`, one after the other.
    fn concat(parts: &[&str]) -> Self {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        match u8::try_from(len) {
            Ok(short) if len <= INLINE_KEY => {
                let mut bytes = [0; INLINE_KEY];
                let mut at = 0;
                for part in parts {
                    bytes[at..at + part.len()].copy_from_slice(part.as_bytes());
                    at += part.len();
                }
                Self::Inline { bytes, len: short }
            }
            _ => Self::Heap(parts.concat()),
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            // Whole `str`s, one after the other: UTF-8.
            Self::Inline { bytes, len } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Self::Heap(key) => key,
        }
    }
}

/// The idempotency key of an event: `{prefix}:{account}:{id}`, the account
/// empty with a single verifier. Only what cannot differ between two
/// deliveries of one event goes in: the account whose key verified it and
/// the event id, never a field of the body such as `livemode`. An account
/// id holds no `:`, so two keys never collide.
fn key_of(config: &Config, verified: &VerifiedEvent) -> StoreKey {
    let account = verified.account().unwrap_or("");
    StoreKey::concat(&[&config.key_prefix, ":", account, ":", verified.event().id()])
}

/// Runs one store call under the per-call timeout, arming no timer for a
/// call that answers at once (an in-process store always does).
pub(super) async fn timed<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    within(timeout, call).await.unwrap_or_else(|_| {
        Err(StoreError::new(
            StoreErrorKind::Timeout,
            format!("no answer within {timeout:?}"),
        ))
    })
}

/// Claims the event; anything but a fresh claim is the delivery's outcome.
pub(super) async fn claim(
    config: &Config,
    verified: &VerifiedEvent,
) -> Result<ClaimGuard, Outcome> {
    let key = key_of(config, verified);
    let mut memory_key = None;
    let claimed = match &config.memory {
        Some(memory) => MemoryStore::key(key.as_str()).and_then(|checked| {
            memory_key = Some(checked);
            memory.claim_now(&checked, config.lease)
        }),
        None => {
            let call = config.store.claim(key.as_str(), config.lease);
            timed(config.store_timeout, call).await
        }
    };
    match claimed {
        Ok(Claim::Claimed(token)) => Ok(ClaimGuard {
            store: Arc::clone(&config.store),
            memory: config.memory.clone().zip(memory_key),
            key,
            token: Some(token),
            timeout: config.store_timeout,
            completes_with: None,
        }),
        Ok(Claim::Completed) => Err(Outcome::Duplicate),
        Ok(Claim::InFlight { retry_after }) => Err(Outcome::InFlight { retry_after }),
        Err(error) if error.kind() == StoreErrorKind::InvalidInput => {
            tracing::warn!(%error, "clink delivery: the event id cannot be stored; answering 400");
            Err(Outcome::InvalidEventId)
        }
        Err(error) => {
            tracing::error!(%error, "clink delivery: could not claim the event; answering 503");
            Err(Outcome::StoreUnavailable(error.kind()))
        }
    }
}

/// Holds a claim until it is settled. If the delivery is dropped first (the
/// sender hung up, the server is shutting down), the settle it was about to
/// make (release, or complete once the handler succeeded) runs in the
/// background, so the next retry does not wait out the lease and a handled
/// event is not handled again.
pub(super) struct ClaimGuard {
    store: Arc<dyn IdempotencyStore>,
    /// `store` when it is a memory store, called directly, and the key as
    /// it keeps it.
    memory: Option<(Arc<MemoryStore>, MemoryKey)>,
    key: StoreKey,
    token: Option<LeaseToken>,
    timeout: Duration,
    /// What a drop does with an unsettled claim: `None` releases it,
    /// `Some(retention)` completes it (the handler succeeded).
    completes_with: Option<Duration>,
}

impl ClaimGuard {
    /// Settles the claim as `outcome` says: completed when acknowledged,
    /// released otherwise.
    pub(super) async fn settle(mut self, config: &Config, outcome: &Outcome) {
        if outcome.is_acknowledged() {
            self.complete(config).await;
        } else {
            self.release(config).await;
        }
    }

    async fn complete(&mut self, config: &Config) {
        self.completes_with = Some(config.retention);
        let Some(token) = &self.token else {
            return;
        };
        let result = match &self.memory {
            Some((memory, key)) => memory.complete_now(key, token, config.retention),
            None => {
                let call = self
                    .store
                    .complete(self.key.as_str(), token, config.retention);
                timed(self.timeout, call).await
            }
        };
        // Only now is the claim settled; a drop before this point completes it.
        self.token = None;
        match result {
            Ok(Settle::Applied) => {}
            Ok(Settle::LeaseLost) => {
                config.metrics.lease_was_lost();
                tracing::warn!(
                    "clink event handled, but its lease had expired before it was marked \
                     completed; another delivery may run (or be running) the handler again"
                );
            }
            Err(error) => {
                config.metrics.settle_failed();
                tracing::error!(
                    %error,
                    "clink event handled, but could not be marked completed; \
                     a retry after the lease expires may run the handler again"
                );
            }
        }
    }

    async fn release(&mut self, config: &Config) {
        let Some(token) = &self.token else {
            return;
        };
        let released = match &self.memory {
            Some((memory, key)) => logged(memory.release_now(key, token)),
            None => release_logged(&*self.store, self.key.as_str(), token, self.timeout).await,
        };
        if !released {
            config.metrics.settle_failed();
        }
        self.token = None;
    }
}

/// Releases a claim, logging a failure; whether it was released.
async fn release_logged(
    store: &dyn IdempotencyStore,
    key: &str,
    token: &LeaseToken,
    timeout: Duration,
) -> bool {
    logged(timed(timeout, store.release(key, token)).await)
}

/// Logs a release that failed; whether it was released.
fn logged(released: Result<Settle, StoreError>) -> bool {
    match released {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%error, "clink claim could not be released; it frees itself when the lease expires");
            false
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = Arc::clone(&self.store);
        let key = std::mem::replace(&mut self.key, StoreKey::Heap(String::new()));
        let (timeout, completes_with) = (self.timeout, self.completes_with);
        runtime.spawn(async move {
            match completes_with {
                Some(retention) => {
                    if let Err(error) =
                        timed(timeout, store.complete(key.as_str(), &token, retention)).await
                    {
                        tracing::error!(%error, "clink event handled, but could not be marked completed");
                    }
                }
                None => {
                    release_logged(&*store, key.as_str(), &token, timeout).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, DEFAULT_LEASE, DEFAULT_RETENTION};

    async fn claim_state(store: &dyn IdempotencyStore) -> Claim {
        // The guard settles on a spawned task: yield to it, within a bound.
        for _ in 0..1000 {
            match store.claim("k", DEFAULT_LEASE).await.unwrap() {
                Claim::InFlight { .. } => tokio::task::yield_now().await,
                settled => return settled,
            }
        }
        panic!("the dropped guard never settled its claim");
    }

    async fn dropped_guard(completes_with: Option<Duration>) -> Claim {
        let store: Arc<dyn IdempotencyStore> = Arc::new(MemoryStore::new());
        let Claim::Claimed(token) = store.claim("k", DEFAULT_LEASE).await.unwrap() else {
            panic!("a fresh key is claimed");
        };
        drop(ClaimGuard {
            store: Arc::clone(&store),
            memory: None,
            key: StoreKey::concat(&["k"]),
            token: Some(token),
            timeout: super::super::DEFAULT_STORE_TIMEOUT,
            completes_with,
        });
        claim_state(&*store).await
    }

    #[test]
    fn keys_are_their_parts_one_after_the_other() {
        assert_eq!(
            StoreKey::concat(&["clink", ":", "", ":", "evt_1"]).as_str(),
            "clink::evt_1"
        );
        let long = "é".repeat(60);
        let key = StoreKey::concat(&["p:", &long]);
        assert!(matches!(key, StoreKey::Heap(_)));
        assert_eq!(key.as_str(), format!("p:{long}"));
        let exact = "k".repeat(INLINE_KEY);
        assert!(matches!(
            StoreKey::concat(&[&exact]),
            StoreKey::Inline { .. }
        ));
        assert_eq!(StoreKey::concat(&[&exact]).as_str(), exact);
    }

    #[tokio::test]
    async fn a_dropped_delivery_releases_its_claim() {
        assert!(matches!(dropped_guard(None).await, Claim::Claimed(_)));
    }

    #[tokio::test]
    async fn a_delivery_dropped_after_its_handler_succeeded_still_completes() {
        let retention = Some(DEFAULT_RETENTION);
        assert_eq!(dropped_guard(retention).await, Claim::Completed);
    }
}
