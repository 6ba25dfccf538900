//! What the layer did, counted: [`Metrics`] in process, and (feature
//! `metrics`, on by default) the [`metrics`](https://docs.rs/metrics) facade,
//! so any exporter (Prometheus, StatsD, OpenTelemetry) can publish them.
//!
//! # Metric names
//!
//! Recorded through the facade; without a recorder installed they cost
//! next to nothing.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `clink_webhook_deliveries_total` | counter | `outcome`, `event_type` | one per delivery; `outcome` is [`Outcome::as_str`], `event_type` the verified event's type when this crate knows it, `unknown` for a verified type it does not know, `none` before the signature checked out (a sender's claims are never labels) |
//! | `clink_webhook_delivery_duration_seconds` | histogram | `outcome` | from the request to the response, the handler included |
//! | `clink_webhook_deliveries_in_flight` | gauge | | deliveries being read, verified or handled now |
//! | `clink_webhook_key_matches_total` | counter | `key_index` | verified deliveries by the index of the key that matched: when index 1 (an old key) stops counting, it can be retired |

use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "metrics")]
use crate::EventType;
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
    queued: AtomicU64,
    duplicates: AtomicU64,
    in_flight: AtomicU64,
    overloaded: AtomicU64,
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
    /// Deliveries written to the inbox and acknowledged ([`Outcome::Queued`]).
    queued,
    /// Deliveries answered `200` because the event was already handled
    /// ([`Outcome::Duplicate`]).
    duplicates,
    /// Deliveries answered `409` because another delivery held the event
    /// ([`Outcome::InFlight`]).
    in_flight,
    /// Deliveries answered `503` because the layer's budget for unverified
    /// bodies was spent ([`Outcome::Overloaded`]).
    overloaded,
    /// Deliveries refused before the store was asked (method, headers,
    /// signature, body, envelope, event id).
    rejected,
    /// Handler errors, non-`2xx` answers, panics and timeouts.
    handler_failures,
    /// Deliveries answered `503` because a store or the key source could
    /// not be asked ([`Outcome::StoreUnavailable`], [`Outcome::KeysUnavailable`]).
    store_errors,
    /// Settles (complete or release) that failed after the outcome was
    /// decided; the lease frees the claim. A completion the store could not
    /// take is tried again in the background until the lease ends, and
    /// counted here only if it never gets through.
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
            Outcome::Queued => &self.queued,
            Outcome::Duplicate => &self.duplicates,
            Outcome::InFlight { .. } => &self.in_flight,
            Outcome::Overloaded => &self.overloaded,
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

/// Records one finished delivery through the `metrics` facade.
#[cfg(feature = "metrics")]
pub(super) fn emit(outcome: &Outcome, event_type: Option<&EventType>, seconds: f64) {
    let event_type = match event_type {
        Some(event_type) => event_type.known_name().unwrap_or("unknown"),
        None => "none",
    };
    let outcome = outcome.as_str();
    metrics::counter!(
        "clink_webhook_deliveries_total",
        "outcome" => outcome,
        "event_type" => event_type
    )
    .increment(1);
    metrics::histogram!("clink_webhook_delivery_duration_seconds", "outcome" => outcome)
        .record(seconds);
}

/// Counts a verified delivery under the index of the key that matched.
#[cfg(feature = "metrics")]
pub(super) fn emit_key_match(key_index: usize) {
    const LABELS: [&str; 4] = ["0", "1", "2", "3"];
    let label = LABELS.get(key_index).copied().unwrap_or("4+");
    metrics::counter!("clink_webhook_key_matches_total", "key_index" => label).increment(1);
}

/// Counts a delivery in flight from its creation to its drop, so that a
/// delivery dropped half-way (the sender hung up) is not counted forever.
pub(super) struct InFlight(());

impl InFlight {
    pub(super) fn start() -> Self {
        #[cfg(feature = "metrics")]
        metrics::gauge!("clink_webhook_deliveries_in_flight").increment(1.0);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        metrics::gauge!("clink_webhook_deliveries_in_flight").decrement(1.0);
    }
}
