//! Steps 6 and 8: claim the event id before the handler runs, and settle
//! the claim after it (complete on success, release otherwise), even when
//! the delivery is dropped half-way.

use std::sync::Arc;
use std::time::Duration;

use super::config::Config;
use super::VerifiedEvent;
use crate::store::{timed, Claim, IdempotencyStore, LeaseToken, Settle, StoreErrorKind};
use crate::Outcome;

/// The idempotency key of an event: `{prefix}:{account}:{id}`, the account
/// empty with a single verifier. Only what cannot differ between two
/// deliveries of one event goes in: the account whose key verified it and
/// the event id, never a field of the body such as `livemode`. An account
/// id holds no `:`, so two keys never collide.
fn key_of(config: &Config, verified: &VerifiedEvent) -> String {
    let account = verified.account().unwrap_or("");
    format!("{}:{account}:{}", config.key_prefix, verified.event().id())
}

/// Claims the event; anything but a fresh claim is the delivery's outcome.
pub(super) async fn claim(
    config: &Config,
    verified: &VerifiedEvent,
) -> Result<ClaimGuard, Outcome> {
    let key = key_of(config, verified);
    match timed(config.store_timeout, config.store.claim(&key, config.lease)).await {
        Ok(Claim::Claimed(token)) => Ok(ClaimGuard {
            store: Arc::clone(&config.store),
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
    key: String,
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
        let result = timed(
            self.timeout,
            self.store.complete(&self.key, token, config.retention),
        )
        .await;
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
        if !release_logged(&*self.store, &self.key, token, self.timeout).await {
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
    match timed(timeout, store.release(key, token)).await {
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
        let key = std::mem::take(&mut self.key);
        let (timeout, completes_with) = (self.timeout, self.completes_with);
        runtime.spawn(async move {
            match completes_with {
                Some(retention) => {
                    if let Err(error) =
                        timed(timeout, store.complete(&key, &token, retention)).await
                    {
                        tracing::error!(%error, "clink event handled, but could not be marked completed");
                    }
                }
                None => {
                    release_logged(&*store, &key, &token, timeout).await;
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
            key: "k".to_owned(),
            token: Some(token),
            timeout: super::super::DEFAULT_STORE_TIMEOUT,
            completes_with,
        });
        claim_state(&*store).await
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
