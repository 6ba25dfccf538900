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
use super::service::{delivery, layer_response, Verified};
use super::{Metrics, Readiness, ResponseBody, ResponseFuture};
use crate::store::{timed, Inbox, Inserted, NewEvent, SignatureHeaders, StoreErrorKind};
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

    /// A readiness check for a health route: whether the inbox answers now.
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
        let inbox = Arc::clone(&self.inbox);
        delivery(
            Arc::clone(&self.config),
            request,
            move |config, parts, verified| async move { keep(&config, &*inbox, &parts, verified).await },
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
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if let (Some(timestamp), Some(signature)) =
        (header("x-clink-timestamp"), header("x-clink-signature"))
    {
        new = new.with_signature_headers(SignatureHeaders::new(timestamp, signature));
    }
    let inserted = timed(config.settings.store_timeout, inbox.insert(&new)).await;
    if inserted.is_ok() {
        config.outages.inbox.succeeded();
    }
    let outcome = match inserted {
        Ok(Inserted::New) => Outcome::Queued,
        Ok(Inserted::Duplicate) => Outcome::Duplicate,
        Err(error) if error.kind() == StoreErrorKind::InvalidInput => {
            tracing::warn!(%error, "clink delivery: the event cannot be kept; answering 400");
            Outcome::InvalidEventId
        }
        Err(error) => {
            // An outage, logged as one: not a line per delivery.
            config.outages.inbox.failed(&error);
            Outcome::StoreUnavailable(error.kind())
        }
    };
    (layer_response(&outcome), outcome, verified)
}
