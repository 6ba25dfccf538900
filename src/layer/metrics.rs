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
//! | `clink_webhook_deliveries_total` | counter | `outcome`, `event_type` | one per delivery; `outcome` is [`Outcome::as_str`], `event_type` the verified event's type when this crate knows it, `unknown` for a verified type it does not know, `none` when no event type was read: before the signature checked out (a sender's claims are never labels), or a verified body that is no event envelope or whose id is refused |
//! | `clink_webhook_delivery_duration_seconds` | histogram | `outcome` | from the request to the response, the handler included |
//! | `clink_webhook_deliveries_in_flight` | gauge | | deliveries being read, verified or handled now |
//! | `clink_webhook_deliveries_abandoned_total` | counter | | verified deliveries dropped after their claim, before they answered (the sender hung up, a timeout outside the layer): counted here, not in `clink_webhook_deliveries_total`; each claim released for Clink's retry, or completed when the handler had succeeded |
//! | `clink_webhook_memory_store_evicted_early_total` | counter | | handled events a full [`MemoryStore`](crate::store::MemoryStore) forgot before their retention ended ([`MemoryStore::evicted_early`](crate::store::MemoryStore::evicted_early)): a retry of any of them runs its handler again; above zero, the store's capacity is too small |
//! | `clink_webhook_key_matches_total` | counter | `key` | verified deliveries (those whose body is an event envelope with an id the layer takes) by the [name](crate::SigningKey::named) of the key that matched (its fingerprint when unnamed): when the old key of a rotation stops counting, it can be retired. One series per key name, so with many accounts name keys by role (`current`, `previous`) |

use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket bounds, in seconds, for `clink_webhook_delivery_duration_seconds`
/// as a histogram: from a refusal (well under a millisecond) to a handler
/// near Clink's timeout. Exporters render an unconfigured histogram as a
/// summary, whose quantiles cannot be added up across instances; give them
/// these buckets (Prometheus: `PrometheusBuilder::set_buckets_for_metric`).
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[cfg(feature = "metrics")]
use crate::EventType;
use crate::Outcome;

/// Counters of what the layer did, shared by every clone of a layer and its
/// services. Each delivery that answers bumps exactly one of the outcome
/// counters, chosen from its [`Outcome`]; [`lease_lost`](Self::lease_lost)
/// and [`settle_errors`](Self::settle_errors) count events after the
/// outcome; a delivery dropped after its claim, before it answered, bumps
/// [`abandoned`](Self::abandoned) instead.
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
    undecodable: AtomicU64,
    store_errors: AtomicU64,
    settle_errors: AtomicU64,
    lease_lost: AtomicU64,
    abandoned: AtomicU64,
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
    /// bodies was spent ([`Outcome::Overloaded`]), or the key source's limits
    /// on lookups were reached ([`Outcome::KeyLookupsLimited`]).
    overloaded,
    /// Deliveries refused before the store was asked (method, headers,
    /// an unknown account, signature, body, envelope, event id).
    rejected,
    /// Handler errors, non-`2xx` answers, panics and timeouts (and failures
    /// kept dead, [`Outcome::FailedKeptDead`]).
    handler_failures,
    /// Verified events whose data does not decode into their handler's
    /// type ([`Outcome::Undecodable`]), and those kept dead for it, for a
    /// body that is no envelope or an id that cannot be kept
    /// ([`Outcome::DeadLettered`]).
    undecodable,
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
    /// Verified deliveries dropped after their claim, before they answered
    /// (the sender hung up, a timeout outside the layer, a server shutting
    /// down): their claim was released for Clink's retry, or completed
    /// when the handler had succeeded. Each is logged at `warn`.
    abandoned,
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
            Outcome::Overloaded | Outcome::KeyLookupsLimited => &self.overloaded,
            Outcome::StoreUnavailable(_) | Outcome::KeysUnavailable => &self.store_errors,
            Outcome::Undecodable | Outcome::DeadLettered => &self.undecodable,
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

    /// Counts a delivery dropped after its claim, before it answered.
    pub(crate) fn abandoned_delivery(&self) {
        bump(&self.abandoned);
        #[cfg(feature = "metrics")]
        metrics::counter!("clink_webhook_deliveries_abandoned_total").increment(1);
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Every outcome code, as [`Outcome::as_str`] gives them; [`outcome_slot`]
/// says where each outcome's is.
#[cfg(feature = "metrics")]
const OUTCOME_CODES: [&str; 38] = [
    "handled",
    "unhandled",
    "queued",
    "skipped_stale",
    "duplicate",
    "method_not_allowed",
    "unknown_account",
    "keys_unavailable",
    "missing_timestamp",
    "missing_signature",
    "malformed_timestamp",
    "malformed_signature",
    "unsupported_sign_type",
    "timestamp_too_old",
    "timestamp_in_future",
    "signature_mismatch",
    "no_active_key",
    "body_too_large",
    "body_unreadable",
    "body_timeout",
    "overloaded",
    "invalid_json",
    "missing_event_id",
    "missing_event_type",
    "invalid_event_id",
    "in_flight",
    "store_unavailable",
    "handler_failed",
    "handler_refused",
    "handler_panicked",
    "handler_timeout",
    "duplicate_key",
    "undecodable",
    "dead_lettered",
    "key_lookups_limited",
    "expired_key",
    "invalid_event_type",
    "failed_kept_dead",
];

/// Where `outcome`'s code is in [`OUTCOME_CODES`].
#[cfg(feature = "metrics")]
fn outcome_slot(outcome: &Outcome) -> usize {
    use crate::events::EnvelopeError;
    use crate::signature::VerifyErrorKind as Kind;
    match outcome {
        Outcome::Handled => 0,
        Outcome::Unhandled => 1,
        Outcome::Queued => 2,
        Outcome::SkippedStale => 3,
        Outcome::Duplicate => 4,
        Outcome::MethodNotAllowed => 5,
        Outcome::UnknownAccount => 6,
        Outcome::KeysUnavailable => 7,
        Outcome::Verify(kind) => match kind {
            Kind::MissingTimestamp => 8,
            Kind::MissingSignature => 9,
            Kind::MalformedTimestamp => 10,
            Kind::MalformedSignature => 11,
            Kind::UnsupportedSignType => 12,
            Kind::TooOld => 13,
            Kind::InFuture => 14,
            Kind::SignatureMismatch => 15,
            Kind::NoActiveKey => 16,
            Kind::ExpiredKey => 35,
        },
        Outcome::BodyTooLarge { .. } => 17,
        Outcome::BodyUnreadable => 18,
        Outcome::BodyTimeout => 19,
        Outcome::Overloaded => 20,
        Outcome::InvalidEnvelope(error) => match error {
            EnvelopeError::NotJson => 21,
            EnvelopeError::MissingId => 22,
            EnvelopeError::MissingType => 23,
            EnvelopeError::DuplicateKey => 31,
            EnvelopeError::InvalidType => 36,
        },
        Outcome::InvalidEventId => 24,
        Outcome::InFlight { .. } => 25,
        Outcome::StoreUnavailable(_) => 26,
        Outcome::HandlerFailed => 27,
        Outcome::HandlerRefused(_) => 28,
        Outcome::HandlerPanicked => 29,
        Outcome::HandlerTimeout => 30,
        Outcome::Undecodable => 32,
        Outcome::DeadLettered => 33,
        Outcome::KeyLookupsLimited => 34,
        Outcome::FailedKeptDead => 37,
    }
}

/// The `event_type` labels: every known name, then `unknown` and `none`.
#[cfg(feature = "metrics")]
const EVENT_LABELS: usize = 46;

#[cfg(feature = "metrics")]
fn event_label(slot: usize) -> &'static str {
    match slot {
        44 => "unknown",
        45 => "none",
        known => EventType::ALL
            .get(known)
            .and_then(EventType::known_name)
            .unwrap_or("unknown"),
    }
}

/// The metric keys of every outcome and event type, made once: with them a
/// delivery records its metrics without building (and hashing) a key, and
/// without allocating.
#[cfg(feature = "metrics")]
struct Keys {
    /// `clink_webhook_deliveries_total` by outcome, then event type.
    deliveries: Vec<metrics::Key>,
    /// `clink_webhook_delivery_duration_seconds` by outcome.
    durations: Vec<metrics::Key>,
}

#[cfg(feature = "metrics")]
static KEYS: std::sync::LazyLock<Keys> = std::sync::LazyLock::new(|| {
    use metrics::{Key, Label};
    // Made once per process, and kept for its whole life, as the keys' labels must be.
    let labels: &'static [[Label; 2]] = Vec::leak(
        OUTCOME_CODES
            .iter()
            .flat_map(|outcome| {
                (0..EVENT_LABELS).map(|slot| {
                    [
                        Label::from_static_parts("outcome", outcome),
                        Label::from_static_parts("event_type", event_label(slot)),
                    ]
                })
            })
            .collect(),
    );
    let outcomes: &'static [[Label; 1]] = Vec::leak(
        OUTCOME_CODES
            .iter()
            .map(|outcome| [Label::from_static_parts("outcome", outcome)])
            .collect(),
    );
    Keys {
        deliveries: labels
            .iter()
            .map(|pair| Key::from_static_parts("clink_webhook_deliveries_total", pair))
            .collect(),
        durations: outcomes
            .iter()
            .map(|one| Key::from_static_parts("clink_webhook_delivery_duration_seconds", one))
            .collect(),
    }
});

#[cfg(feature = "metrics")]
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Records one finished delivery through the `metrics` facade.
#[cfg(feature = "metrics")]
pub(super) fn emit(outcome: &Outcome, event_type: Option<&EventType>, seconds: f64) {
    let event = match event_type {
        Some(event_type) => event_type.known_index().unwrap_or(EVENT_LABELS - 2),
        None => EVENT_LABELS - 1,
    };
    let slot = outcome_slot(outcome);
    let keys = &*KEYS;
    metrics::with_recorder(|recorder| {
        if let Some(key) = keys.deliveries.get(slot * EVENT_LABELS + event) {
            recorder.register_counter(key, &METADATA).increment(1);
        }
        if let Some(key) = keys.durations.get(slot) {
            recorder.register_histogram(key, &METADATA).record(seconds);
        }
    });
}

/// Counts a verified delivery under the name of the key that matched
/// (borrowed, or shared when it is not kept). The metric key of the last name
/// counted on each thread is kept, so that deliveries verified by the same
/// key (most of them: one key, or two while rotating) build no key and
/// allocate nothing.
#[cfg(feature = "metrics")]
pub(super) fn emit_key_match(key_name: &crate::signature::KeyName) {
    use std::cell::RefCell;

    use crate::signature::KeyName;

    thread_local! {
        static LAST: RefCell<Option<(KeyName, metrics::Key)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        // The cache holds its name, so a name's address is never reused
        // while it is cached; an equal name elsewhere builds the key again.
        if !last.as_ref().is_some_and(|(name, _)| name.same(key_name)) {
            let labels = vec![metrics::Label::new("key", key_name.label())];
            let key = metrics::Key::from_parts("clink_webhook_key_matches_total", labels);
            *last = Some((key_name.clone(), key));
        }
        if let Some((_, key)) = last.as_ref() {
            metrics::with_recorder(|recorder| {
                recorder.register_counter(key, &METADATA).increment(1);
            });
        }
    });
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

#[cfg(test)]
mod counts {
    use std::time::Duration;

    use http::StatusCode;

    use super::*;
    use crate::events::EnvelopeError;
    use crate::signature::VerifyErrorKind;
    use crate::store::StoreErrorKind;

    /// Each outcome bumps its one counter, and no other.
    #[test]
    fn every_outcome_is_counted_under_its_counter() {
        let cases = [
            (Outcome::Handled, "handled"),
            (Outcome::Unhandled, "unhandled"),
            (Outcome::SkippedStale, "unhandled"),
            (Outcome::Queued, "queued"),
            (Outcome::Duplicate, "duplicates"),
            (
                Outcome::InFlight {
                    retry_after: Duration::from_secs(1),
                },
                "in_flight",
            ),
            (Outcome::Overloaded, "overloaded"),
            (Outcome::KeyLookupsLimited, "overloaded"),
            (
                Outcome::StoreUnavailable(StoreErrorKind::Timeout),
                "store_errors",
            ),
            (Outcome::KeysUnavailable, "store_errors"),
            (Outcome::Undecodable, "undecodable"),
            (Outcome::DeadLettered, "undecodable"),
            (Outcome::HandlerFailed, "handler_failures"),
            (
                Outcome::HandlerRefused(StatusCode::UNPROCESSABLE_ENTITY),
                "handler_failures",
            ),
            (Outcome::HandlerPanicked, "handler_failures"),
            (Outcome::HandlerTimeout, "handler_failures"),
            (Outcome::FailedKeptDead, "handler_failures"),
            (Outcome::MethodNotAllowed, "rejected"),
            (Outcome::UnknownAccount, "rejected"),
            (
                Outcome::Verify(VerifyErrorKind::SignatureMismatch),
                "rejected",
            ),
            (Outcome::BodyUnreadable, "rejected"),
            (Outcome::BodyTimeout, "rejected"),
            (
                Outcome::InvalidEnvelope(EnvelopeError::MissingId),
                "rejected",
            ),
            (Outcome::InvalidEventId, "rejected"),
        ];
        for (outcome, counter) in cases {
            let metrics = Metrics::default();
            metrics.record(&outcome);
            let counts = [
                ("handled", metrics.handled()),
                ("unhandled", metrics.unhandled()),
                ("queued", metrics.queued()),
                ("duplicates", metrics.duplicates()),
                ("in_flight", metrics.in_flight()),
                ("overloaded", metrics.overloaded()),
                ("rejected", metrics.rejected()),
                ("handler_failures", metrics.handler_failures()),
                ("undecodable", metrics.undecodable()),
                ("store_errors", metrics.store_errors()),
                ("settle_errors", metrics.settle_errors()),
                ("lease_lost", metrics.lease_lost()),
                ("abandoned", metrics.abandoned()),
            ];
            let bumped: Vec<_> = counts.iter().filter(|(_, n)| *n != 0).collect();
            assert_eq!(bumped, [&(counter, 1)], "{outcome:?}");
        }
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;
    use crate::events::EnvelopeError;
    use crate::signature::VerifyErrorKind;
    use crate::store::StoreErrorKind;

    #[test]
    fn every_outcome_has_its_own_code_in_the_table() {
        let mut outcomes = vec![
            Outcome::Handled,
            Outcome::Unhandled,
            Outcome::Queued,
            Outcome::SkippedStale,
            Outcome::Duplicate,
            Outcome::MethodNotAllowed,
            Outcome::UnknownAccount,
            Outcome::KeysUnavailable,
            Outcome::KeyLookupsLimited,
            Outcome::BodyTooLarge { limit: 1 },
            Outcome::BodyUnreadable,
            Outcome::BodyTimeout,
            Outcome::Overloaded,
            Outcome::InvalidEventId,
            Outcome::InFlight {
                retry_after: std::time::Duration::from_secs(1),
            },
            Outcome::StoreUnavailable(StoreErrorKind::Timeout),
            Outcome::HandlerFailed,
            Outcome::HandlerRefused(http::StatusCode::IM_A_TEAPOT),
            Outcome::HandlerPanicked,
            Outcome::HandlerTimeout,
            Outcome::Undecodable,
            Outcome::DeadLettered,
            Outcome::FailedKeptDead,
        ];
        outcomes.extend(VerifyErrorKind::ALL.map(Outcome::Verify));
        outcomes.extend(
            [
                EnvelopeError::NotJson,
                EnvelopeError::MissingId,
                EnvelopeError::MissingType,
                EnvelopeError::DuplicateKey,
                EnvelopeError::InvalidType,
            ]
            .map(Outcome::InvalidEnvelope),
        );
        assert_eq!(outcomes.len(), OUTCOME_CODES.len());
        for outcome in &outcomes {
            assert_eq!(OUTCOME_CODES[outcome_slot(outcome)], outcome.as_str());
        }
        for (slot, event_type) in EventType::ALL.iter().enumerate() {
            assert_eq!(event_type.known_index(), Some(slot));
            assert_eq!(event_label(slot), event_type.as_str());
        }
        assert_eq!(EventType::ALL.len(), EVENT_LABELS - 2);
    }

    /// Every counter increment, gauge change and histogram value, by key
    /// as the Prometheus text names it (`name{label="value",...}`).
    #[derive(Default)]
    struct Recorded(std::sync::Mutex<Vec<(String, f64)>>);

    struct Handle(std::sync::Arc<Recorded>, String);

    impl metrics::CounterFn for Handle {
        fn increment(&self, value: u64) {
            #[allow(clippy::cast_precision_loss)]
            self.0
                 .0
                .lock()
                .unwrap()
                .push((self.1.clone(), value as f64));
        }
        fn absolute(&self, _: u64) {}
    }

    impl metrics::GaugeFn for Handle {
        fn increment(&self, value: f64) {
            self.0 .0.lock().unwrap().push((self.1.clone(), value));
        }
        fn decrement(&self, value: f64) {
            self.0 .0.lock().unwrap().push((self.1.clone(), -value));
        }
        fn set(&self, _: f64) {}
    }

    impl metrics::HistogramFn for Handle {
        fn record(&self, value: f64) {
            self.0 .0.lock().unwrap().push((self.1.clone(), value));
        }
    }

    struct Recorder(std::sync::Arc<Recorded>);

    impl Recorder {
        fn handle(&self, key: &metrics::Key) -> std::sync::Arc<Handle> {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={:?}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            std::sync::Arc::new(Handle(std::sync::Arc::clone(&self.0), name))
        }
    }

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
            metrics::Counter::from_arc(self.handle(key))
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::from_arc(self.handle(key))
        }
        fn register_histogram(
            &self, key: &metrics::Key, _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::from_arc(self.handle(key))
        }
    }

    fn recorded(run: impl FnOnce()) -> Vec<(String, f64)> {
        let recorded = std::sync::Arc::new(Recorded::default());
        let recorder = Recorder(std::sync::Arc::clone(&recorded));
        metrics::with_local_recorder(&recorder, run);
        let lines = recorded.0.lock().unwrap().clone();
        lines
    }

    #[test]
    fn a_delivery_is_counted_by_outcome_and_event_type_and_timed_by_outcome() {
        let lines = recorded(|| {
            emit(&Outcome::Handled, Some(&EventType::OrderSucceeded), 0.25);
            emit(
                &Outcome::Duplicate,
                Some(&EventType::from("wallet.topped_up")),
                0.5,
            );
            emit(
                &Outcome::Verify(VerifyErrorKind::SignatureMismatch),
                None,
                0.125,
            );
            emit(
                &Outcome::Verify(VerifyErrorKind::ExpiredKey),
                Some(&EventType::ALL[43]),
                1.0,
            );
        });
        let total = "clink_webhook_deliveries_total";
        let seconds = "clink_webhook_delivery_duration_seconds";
        let last = EventType::ALL[43].as_str();
        let expected = [
            (
                format!(r#"{total}{{outcome="handled",event_type="order.succeeded"}}"#),
                1.0,
            ),
            (format!(r#"{seconds}{{outcome="handled"}}"#), 0.25),
            (
                format!(r#"{total}{{outcome="duplicate",event_type="unknown"}}"#),
                1.0,
            ),
            (format!(r#"{seconds}{{outcome="duplicate"}}"#), 0.5),
            (
                format!(r#"{total}{{outcome="signature_mismatch",event_type="none"}}"#),
                1.0,
            ),
            (
                format!(r#"{seconds}{{outcome="signature_mismatch"}}"#),
                0.125,
            ),
            (
                format!(r#"{total}{{outcome="expired_key",event_type="{last}"}}"#),
                1.0,
            ),
            (format!(r#"{seconds}{{outcome="expired_key"}}"#), 1.0),
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn matches_of_alternating_keys_are_each_counted_under_their_own_name() {
        use crate::signature::KeyName;
        let (current, previous) = (KeyName::new("current"), KeyName::new("previous"));
        // The same name, shared at another address, counts under that name too.
        let again = KeyName::Shared(std::sync::Arc::new("current".into()));
        assert!(!again.same(&current));
        let lines = recorded(|| {
            for key in [&current, &current, &previous, &current, &again, &previous] {
                emit_key_match(key);
            }
        });
        let line = |name: &str| {
            (
                format!(r#"clink_webhook_key_matches_total{{key="{name}"}}"#),
                1.0,
            )
        };
        let expected = [
            "current", "current", "previous", "current", "current", "previous",
        ]
        .map(line);
        assert_eq!(lines, expected);
    }

    #[test]
    fn matches_are_counted_by_key_and_deliveries_in_flight_until_dropped() {
        let lines = recorded(|| {
            emit_key_match(&crate::signature::KeyName::new("current"));
            let in_flight = InFlight::start();
            drop(in_flight);
        });
        let gauge = "clink_webhook_deliveries_in_flight{}";
        let expected = [
            (
                r#"clink_webhook_key_matches_total{key="current"}"#.to_owned(),
                1.0,
            ),
            (gauge.to_owned(), 1.0),
            (gauge.to_owned(), -1.0),
        ];
        assert_eq!(lines, expected);
    }
}
