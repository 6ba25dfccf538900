//! [`RoutedService`]: the layer's steps with an [`EventRouter`] called
//! directly, not as a tower service behind a request and a response.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;

use super::config::Config;
use super::service::{delivery, handle, layer_response, Received, Verified};
use super::{Metrics, ResponseBody, ResponseFuture};
use crate::guard::{cold, within, CatchUnwind};
use crate::outcome::handler_timed_out;
use crate::{BoxError, EventRouter, Outcome, VerifiedEvent};

/// A tower service that verifies, deduplicates and hands each delivery to an
/// [`EventRouter`]: made by [`ClinkLayer::route`](super::ClinkLayer::route).
///
/// It answers as [`ClinkService`](super::ClinkService) over the same router
/// does (`ClinkLayer::layer(router)`), with the same steps, statuses,
/// outcomes, metrics and logs, the same response extensions (the
/// [`Outcome`], the [`VerifiedEvent`], the [`Freshness`](crate::events::Freshness)
/// of a typed event whose freshness is tracked and, when it failed, the
/// [`Dispatched`](crate::router::Dispatched)),
/// and the same response type as an [`InboxIntake`](super::InboxIntake).
/// What it leaves out is the HTTP request built for the router and the
/// response read back from it: the router's
/// [`dispatch`](EventRouter::dispatch) is awaited in place, which spares a
/// delivery two of its allocations in process (the router's boxed future
/// and the event in the request's extensions). Like the router as a
/// service, it puts the response's headers in the request's header map,
/// emptied, and its extensions in the request's extension map when an
/// app's router made one, so that no map is allocated for them (see
/// `BENCHMARKS.md`). And since it knows the router, the data of an
/// event its typed handler takes is decoded as the envelope is read, in
/// one pass over the body, instead of read again by the handler's decode
/// (whatever that pass cannot vouch for alone, the body read again as
/// before, so the answer is the same; a duplicate delivery then pays for a
/// decode it does not use). `ClinkLayer::layer` does the same when its
/// inner service is an `EventRouter` without state; over a router with
/// state only a `RoutedService` knows the router's types. Use it
/// whenever the inner service is an `EventRouter`; keep
/// [`ClinkLayer::layer`](tower_layer::Layer::layer) for any other service.
///
/// ```
/// use clink_webhooks::{events, sign, ClinkLayer, EventRouter, Outcome, Timestamp, Verifier};
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let router = EventRouter::new().on::<events::OrderSucceeded, _>(|event| async move {
///     tracing::info!(order = ?event.data.order_id, "paid");
///     Ok::<_, std::convert::Infallible>(())
/// });
/// let service = ClinkLayer::new(Verifier::new("whsec_test")?).route(router);
///
/// let body = r#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"ord_1"}}"#;
/// let timestamp = Timestamp::now().as_millis().to_string();
/// let request = http::Request::post("/webhooks/clink")
///     .header("x-clink-timestamp", &timestamp)
///     .header("x-clink-signature", sign("whsec_test", &timestamp, body.as_bytes()))
///     .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
/// let response = service.clone().oneshot(request.clone()).await?;
/// assert_eq!(Outcome::of(&response), Some(&Outcome::Handled));
/// let response = service.oneshot(request).await?;
/// assert_eq!(Outcome::of(&response), Some(&Outcome::Duplicate));
///
/// // In an axum app:
/// # let service = ClinkLayer::new(Verifier::new("whsec_test")?).route(EventRouter::new());
/// let app: axum::Router = axum::Router::new().route_service("/webhooks/clink", service);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RoutedService<T = ()> {
    router: EventRouter<T>,
    config: Arc<Config>,
}

impl<T> fmt::Debug for RoutedService<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutedService")
            .field("router", &self.router)
            .finish_non_exhaustive()
    }
}

impl<T> RoutedService<T> {
    pub(super) fn new(router: EventRouter<T>, config: Arc<Config>) -> Self {
        Self { router, config }
    }

    /// The router.
    pub fn router(&self) -> &EventRouter<T> {
        &self.router
    }

    /// The router, consuming this service.
    pub fn into_router(self) -> EventRouter<T> {
        self.router
    }

    /// The counters shared with the layer that made this service.
    #[must_use]
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.config.metrics)
    }
}

impl<T, B> Service<Request<B>> for RoutedService<T>
where
    T: Clone + Send + Sync + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<Full<Bytes>>>;
    type Error = Infallible;
    type Future = ResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        delivery(
            Arc::clone(&self.config),
            request,
            self.router.clone(),
            |router| Some(router.decodes_typed()),
            move |config, parts, verified, router| {
                // Emptied now, not when the answer is made: nothing of the
                // request's headers is kept while the handler runs (but
                // the two signature headers, for a dead-letter inbox). The
                // maps keep their room for the response's.
                let received = Received::for_dead_letters(&config, &parts.headers);
                let (mut headers, mut extensions) = (parts.headers, parts.extensions);
                headers.clear();
                extensions.clear();
                route(config, router, headers, extensions, verified, received)
            },
        )
    }
}

/// Steps 6 to 8 with the router's dispatch as step 7; `headers` and
/// `extensions`, the request's maps emptied, take the response's.
fn route<T>(
    config: Arc<Config>, router: EventRouter<T>, headers: http::HeaderMap,
    extensions: http::Extensions, verified: VerifiedEvent, received: Received,
) -> impl Future<Output = Verified<Full<Bytes>>>
where
    T: Clone + Send + Sync + 'static,
{
    handle(
        config,
        verified,
        received,
        async move |verified, deadline, succeeded| {
            // The router turns a panic in its steps into an outcome; this
            // guard also covers what it does around them (the log of that
            // panic, say), as the layer's guard does around the router as a
            // service.
            // `succeeded` is set once a handler succeeded: stopped at the
            // deadline after that (recording its version, say), the event was
            // handled all the same, and a delivery dropped then completes its
            // claim.
            let dispatched = within(
                deadline,
                CatchUnwind::new(router.dispatch_noting(verified, Some(succeeded))),
            )
            .await;
            let outcome = match dispatched {
                Ok(Ok(dispatched)) => {
                    let outcome = dispatched.outcome().clone();
                    // The request's header map has room for the response's
                    // headers, and its extension map (when an app's router made
                    // one) for the response's extensions: no map to allocate.
                    let response = dispatched.into_response(headers, extensions);
                    return (response.map(ResponseBody::layer), outcome);
                }
                Ok(Err(panic)) => {
                    cold();
                    tracing::error!(panic = ?panic, "clink handler panicked");
                    Outcome::HandlerPanicked
                }
                Err(_) if succeeded.load(Ordering::Relaxed) => {
                    cold();
                    tracing::error!(
                    "clink handler succeeded, but its version was not recorded by its deadline; \
                     acknowledged, and later stale events may look fresh"
                );
                    Outcome::Handled
                }
                Err(timed_out) => {
                    cold();
                    handler_timed_out(timed_out)
                }
            };
            (layer_response(&outcome), outcome)
        },
    )
}
