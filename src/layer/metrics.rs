//! [`Metrics`]: counters of what the layer did, one per kind of [`Outcome`].

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Outcome;

/// Counters of what the layer did, shared by every clone of a layer and its
/// services. Each delivery bumps exactly one of the outcome counters, chosen
/// from its [`Outcome`]; [`lease_lost`](Self::lease_lost) and
/// [`settle_errors`](Self::settle_errors) count events after the outcome.
///
/// ```
/// use clink_webhooks::{ClinkLayer, Verifier};
///
/// let layer = ClinkLayer::new(Verifier::new("whsec_test")?);
/// let metrics = layer.metrics();
/// assert_eq!(metrics.handled(), 0);
/// # Ok::<(), clink_webhooks::ConfigError>(())
/// ```
#[derive(Debug, Default)]
pub struct Metrics {
    handled: AtomicU64,
    unhandled: AtomicU64,
    duplicates: AtomicU64,
    in_flight: AtomicU64,
    rejected: AtomicU64,
    handler_failures: AtomicU64,
    store_errors: AtomicU64,
    settle_errors: AtomicU64,
    lease_lost: AtomicU64,
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),+ $(,)?) => {
        impl Metrics {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(&self) -> u64 {
                    self.$name.load(Ordering::Relaxed)
                }
            )+
        }
    };
}

counters! {
    /// Deliveries whose handler ran and succeeded ([`Outcome::Handled`]).
    handled,
    /// Verified deliveries acknowledged without a handler run: no handler
    /// for the type, or a stale event skipped ([`Outcome::Unhandled`],
    /// [`Outcome::SkippedStale`]).
    unhandled,
    /// Deliveries answered `200` because the event was already handled
    /// ([`Outcome::Duplicate`]).
    duplicates,
    /// Deliveries answered `409` because another delivery held the event
    /// ([`Outcome::InFlight`]).
    in_flight,
    /// Deliveries refused before the store was asked (method, headers,
    /// signature, body, envelope, event id).
    rejected,
    /// Handler errors, non-`2xx` answers, panics and timeouts.
    handler_failures,
    /// Deliveries answered `503` because a store or the key source could
    /// not be asked ([`Outcome::StoreUnavailable`], [`Outcome::KeysUnavailable`]).
    store_errors,
    /// Settles (complete or release) that failed after the outcome was
    /// decided; the lease frees the claim.
    settle_errors,
    /// Handled events whose lease had been lost by the time they were marked
    /// completed (the response was still `2xx`).
    lease_lost,
}

impl Metrics {
    /// Counts one delivery's outcome.
    pub(crate) fn record(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Handled => &self.handled,
            Outcome::Unhandled | Outcome::SkippedStale => &self.unhandled,
            Outcome::Duplicate => &self.duplicates,
            Outcome::InFlight { .. } => &self.in_flight,
            Outcome::StoreUnavailable(_) | Outcome::KeysUnavailable => &self.store_errors,
            _ if outcome.handler_ran() => &self.handler_failures,
            _ => &self.rejected,
        };
        bump(counter);
    }

    pub(crate) fn lease_was_lost(&self) {
        bump(&self.lease_lost);
    }

    pub(crate) fn settle_failed(&self) {
        bump(&self.settle_errors);
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
