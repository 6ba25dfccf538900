//! [`InboxIntake`]: the service that verifies deliveries as the layer does
//! and keeps them in an [`Inbox`], answering as soon as they are written.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use super::config::Config;
use super::service::{decodes_nothing, delivery, layer_response, signature_headers, Verified};
use super::{Metrics, Readiness, ResponseBody, ResponseFuture};
use crate::store::{timed, Inbox, Inserted, NewEvent, StoreErrorKind};
use crate::{BoxError, Outcome, Timestamp, VerifiedEvent};

/// A tower service that takes Clink deliveries into an [`Inbox`]: made by
/// [`ClinkLayer::intake`](super::ClinkLayer::intake), it runs the layer's
/// steps up to a verified event (method, headers, keys, the bounded body
/// and its budget, the signature, the envelope, with the layer's
/// [`Metrics`] and logs) and then writes the event in one write instead of
/// handing it on:
///
/// | the write | answer | outcome |
/// |---|---|---|
/// | a new event | `200` | [`Queued`](Outcome::Queued) |
/// | an event the inbox already holds (same account and event id) | `200`, nothing written | [`Duplicate`](Outcome::Duplicate) |
/// | an id the inbox cannot keep | `400` | [`InvalidEventId`](Outcome::InvalidEventId) |
/// | a verified body that is no event envelope, or an id the inbox cannot keep, with the layer's [dead-letter inbox](crate::ClinkLayer::dead_letters) | `200`, kept as dead there | [`DeadLettered`](Outcome::DeadLettered) |
/// | the inbox down or not answering within the store timeout | `503`, nothing acknowledged | [`StoreUnavailable`](Outcome::StoreUnavailable) |
///
/// [Workers](crate::inbox::Workers) run the handlers later.
///
/// The inbox deduplicates on its own: an event is the same event when its
/// account and event id are (a unique key of the inbox's table), for as long
/// as the inbox keeps it, whatever its status. The layer's
/// [`IdempotencyStore`](crate::IdempotencyStore) is not used here: its key
/// (`{prefix}:{account}:{event id}`, with a lease and a retention) guards a
/// handler that runs while the delivery waits, which an intake never does.
///
/// ```
/// use std::sync::Arc;
/// use clink_webhooks::store::MemoryInbox;
/// use clink_webhooks::{ClinkLayer, Verifier};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let inbox = Arc::new(MemoryInbox::new());
/// let intake = ClinkLayer::new(Verifier::new("whsec_...")?).intake(Arc::clone(&inbox));
/// let app: axum::Router = axum::Router::new().route_service("/webhooks/clink", intake);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct InboxIntake {
    config: Arc<Config>,
    inbox: Arc<dyn Inbox>,
}

impl fmt::Debug for InboxIntake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxIntake").finish_non_exhaustive()
    }
}

impl InboxIntake {
    pub(super) fn new(config: Arc<Config>, inbox: Arc<dyn Inbox>) -> Self {
        Self { config, inbox }
    }

    /// A readiness check for a health route: whether a signing key is
    /// active and the inbox takes a write now. See [`Readiness`].
    #[must_use]
    pub fn readiness(&self) -> Readiness {
        Readiness::new(Arc::clone(&self.config), Some(Arc::clone(&self.inbox)))
    }

    /// The counters shared with the layer that made this service.
    #[must_use]
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.config.metrics)
    }
}

impl<B> Service<Request<B>> for InboxIntake
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// The same type as a [`ClinkService`](super::ClinkService) over an
    /// [`EventRouter`](crate::EventRouter) answers with, so that an app can
    /// serve either; the body is always one the layer wrote.
    type Response = Response<ResponseBody<Full<Bytes>>>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        delivery(
            Arc::clone(&self.config),
            request,
            Arc::clone(&self.inbox),
            decodes_nothing,
            |config, parts, verified, inbox| async move {
                keep(&config, &*inbox, &parts, verified).await
            },
        )
    }
}

/// Writes a verified delivery to the inbox.
async fn keep(
    config: &Config, inbox: &dyn Inbox, parts: &Parts, verified: VerifiedEvent,
) -> Verified<Full<Bytes>> {
    let mut new = NewEvent::from_verified(&verified, Timestamp::now());
    // Kept as received, so that the event can be forwarded for its
    // recipient to verify with its own key.
    if let Some(headers) = signature_headers(&parts.headers) {
        new = new.with_signature_headers(headers);
    }
    let inserted = timed(config.settings.store_timeout, async {
        inbox.insert(&new).await
    })
    .await;
    if inserted.is_ok() {
        config.outages.inbox.succeeded();
    }
    let outcome = match inserted {
        Ok(Inserted::New) => Outcome::Queued,
        Ok(Inserted::Duplicate) => Outcome::Duplicate,
        Err(error) if error.kind() == StoreErrorKind::InvalidInput => {
            tracing::warn!(%error, "clink delivery: the event cannot be kept in the inbox");
            // Kept dead in the layer's dead-letter inbox, if it has one,
            // under the SHA-256 of its body; refused `400` otherwise.
            let whole = super::service::WholeBody {
                body: verified.event().body().clone(),
                signed_at: verified.signed_at(),
                key_name: verified.key_name(),
                account: verified.account(),
                headers: signature_headers(&parts.headers),
            };
            Box::pin(super::service::dead_letter_invalid_id(config, whole)).await
        }
        Err(error) => {
            // An outage, logged as one: not a line per delivery.
            config.outages.inbox.failed(&error);
            Outcome::StoreUnavailable(error.kind())
        }
    };
    (layer_response(&outcome), outcome, verified, None)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower_service::Service as _;

    use super::*;
    use crate::store::{
        BoxFuture, InboxClaim, InboxEntry, InboxFilter, InboxStats, MemoryInbox, Replayed, Settle,
        StoreError,
    };
    use crate::{sign, ClinkLayer, Verifier};

    /// An inbox whose inserts fail with `kind`; the rest is a memory inbox's.
    struct Refusing(MemoryInbox, StoreErrorKind);

    impl Refusing {
        fn refused<'a, T: Send + 'a>(&self) -> BoxFuture<'a, Result<T, StoreError>> {
            let error = StoreError::new(self.1, "refused by the test's inbox");
            Box::pin(std::future::ready(Err(error)))
        }
    }

    impl Inbox for Refusing {
        fn insert<'a>(&'a self, _: &'a NewEvent) -> BoxFuture<'a, Result<Inserted, StoreError>> {
            self.refused()
        }
        fn insert_dead<'a>(
            &'a self, _: &'a NewEvent, _: &'a str,
        ) -> BoxFuture<'a, Result<Inserted, StoreError>> {
            self.refused()
        }
        fn claim(
            &self, lease: Duration, window: Duration,
        ) -> BoxFuture<'_, Result<Option<InboxClaim>, StoreError>> {
            self.0.claim(lease, window)
        }
        fn complete<'a>(
            &'a self, claim: &'a InboxClaim,
        ) -> BoxFuture<'a, Result<Settle, StoreError>> {
            self.0.complete(claim)
        }
        fn fail<'a>(
            &'a self, claim: &'a InboxClaim, error: &'a str, retry_at: Option<Timestamp>,
        ) -> BoxFuture<'a, Result<Settle, StoreError>> {
            self.0.fail(claim, error, retry_at)
        }
        fn release<'a>(
            &'a self, claim: &'a InboxClaim,
        ) -> BoxFuture<'a, Result<Settle, StoreError>> {
            self.0.release(claim)
        }
        fn list<'a>(
            &'a self, filter: &'a InboxFilter, limit: usize,
        ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
            self.0.list(filter, limit)
        }
        fn get(&self, seq: i64) -> BoxFuture<'_, Result<Option<InboxEntry>, StoreError>> {
            self.0.get(seq)
        }
        fn replay(&self, seq: i64, force: bool) -> BoxFuture<'_, Result<Replayed, StoreError>> {
            self.0.replay(seq, force)
        }
        fn replay_matching<'a>(
            &'a self, filter: &'a InboxFilter, force: bool,
        ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
            self.0.replay_matching(filter, force)
        }
        fn purge(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
            self.0.purge(before)
        }
        fn purge_dead(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
            self.0.purge_dead(before)
        }
        fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>> {
            self.0.stats()
        }
        fn check_writable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            self.0.check_writable()
        }
    }

    /// `body`, signed now with the tests' key.
    fn signed(body: &'static str) -> Request<Full<Bytes>> {
        let timestamp = Timestamp::now().as_millis().to_string();
        Request::post("/webhooks/clink")
            .header("x-clink-timestamp", &timestamp)
            .header(
                "x-clink-signature",
                sign("whsec_intake", &timestamp, body.as_bytes()),
            )
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    /// An event the inbox cannot keep is refused with `400` (a retry would
    /// fail the same way), or kept dead in the layer's dead letters and
    /// acknowledged when it has some; an inbox that cannot be written is an
    /// outage, `503`. Nothing is acknowledged but what was kept.
    #[tokio::test]
    async fn what_the_inbox_refuses_decides_the_answer() {
        let cases = [
            (StoreErrorKind::InvalidInput, 400, Outcome::InvalidEventId),
            (
                StoreErrorKind::Unavailable,
                503,
                Outcome::StoreUnavailable(StoreErrorKind::Unavailable),
            ),
            (
                StoreErrorKind::Timeout,
                503,
                Outcome::StoreUnavailable(StoreErrorKind::Timeout),
            ),
        ];
        for (kind, status, outcome) in cases {
            let layer = ClinkLayer::new(Verifier::new("whsec_intake").unwrap());
            let mut intake = layer.intake(Refusing(MemoryInbox::new(), kind));
            let body = r#"{"id":"evt_1","type":"order.succeeded","data":{}}"#;
            let response = intake.call(signed(body)).await.unwrap();
            assert_eq!(response.status(), status, "{kind:?}");
            assert_eq!(Outcome::of(&response), Some(&outcome), "{kind:?}");
            assert_eq!(layer.metrics().queued(), 0);
        }

        // With a dead-letter inbox, an event the inbox cannot keep is kept
        // dead there, under the SHA-256 of its body, and acknowledged.
        let dead = std::sync::Arc::new(MemoryInbox::new());
        let layer = ClinkLayer::new(Verifier::new("whsec_intake").unwrap())
            .dead_letters(std::sync::Arc::clone(&dead));
        let mut intake = layer.intake(Refusing(MemoryInbox::new(), StoreErrorKind::InvalidInput));
        let body = r#"{"id":"evt_1","type":"order.succeeded","data":{}}"#;
        let response = intake.call(signed(body)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(Outcome::of(&response), Some(&Outcome::DeadLettered));
        let kept = dead.get(1).await.unwrap().expect("kept dead");
        assert!(kept.event.event_id.starts_with("invalid-event-id:"));
        assert_eq!(&kept.event.body[..], body.as_bytes());
    }

    /// A dead-letter inbox that cannot keep an undecodable event leaves the
    /// delivery answered `500` (`Undecodable`), so that Clink retries it;
    /// only a kept copy acknowledges it.
    #[tokio::test]
    async fn an_undecodable_event_the_dead_letters_cannot_keep_is_not_acknowledged() {
        use tower_layer::Layer as _;

        let router = crate::EventRouter::new()
            .on::<crate::events::RefundFailed, _>(|_| async { Ok::<_, std::io::Error>(()) });
        for (inbox, status, outcome) in [
            (
                Refusing(MemoryInbox::new(), StoreErrorKind::Unavailable),
                500,
                Outcome::Undecodable,
            ),
            (
                Refusing(MemoryInbox::new(), StoreErrorKind::Timeout),
                500,
                Outcome::Undecodable,
            ),
        ] {
            let layer = ClinkLayer::new(Verifier::new("whsec_intake").unwrap()).dead_letters(inbox);
            let body = r#"{"id":"evt_2","type":"refund.failed","data":{"refundAmount":[1]}}"#;
            let mut service = layer.layer(router.clone());
            let response = service.call(signed(body)).await.unwrap();
            assert_eq!(response.status(), status);
            assert_eq!(Outcome::of(&response), Some(&outcome));
            let mut routed = layer.route(router.clone());
            let response = routed.call(signed(body)).await.unwrap();
            assert_eq!(response.status(), status);
            assert_eq!(Outcome::of(&response), Some(&outcome));
        }
    }
}
