//! [`EventRouter`]: hands each verified event to the async handler for its type.
//!
//! Registration is typed: [`on`](EventRouter::on) takes a marker from
//! [`events`](crate::events), and the handler receives an [`Event`] whose
//! data is that event's type, checked by the compiler. A handler returns
//! `Result<(), E>`; an error answers `500`, so Clink retries the delivery.
//!
//! ```
//! use clink_webhooks::{events, EventRouter};
//!
//! let router = EventRouter::new()
//!     .on::<events::OrderSucceeded, _>(|event| async move {
//!         let order_id = event.data.order_id.unwrap_or_default();
//!         // fulfil the order...
//!         Ok::<_, std::io::Error>(())
//!     })
//!     .on_any(|event| async move {
//!         tracing::info!(event_type = %event.event_type(), "not handled here");
//!         Ok::<_, std::io::Error>(())
//!     });
//! ```
//!
//! An event whose `data` does not decode into the registered type goes to the
//! [`on_undecodable`](EventRouter::on_undecodable) hook with the raw verified
//! bytes. Without a hook it is answered `500` and logged with the event id,
//! type and failing field, so a verified event is never dropped silently.
//!
//! The router needs [`ClinkLayer`](crate::ClinkLayer) in front of it: it
//! reads the [`VerifiedEvent`] the layer puts in the request extensions.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower_service::Service;

use crate::event::{DecodeError, Event, EventKind, EventType, ObjectKey, RawEvent};
use crate::idempotency::BoxFuture;
use crate::layer::{Rejection, RejectionKind, VerifiedEvent};
use crate::ordering::{Freshness, FreshnessStore, Version};
use crate::BoxError;

/// An async function that handles one event type: `Fn(Event<T>) -> impl
/// Future<Output = Result<(), E>>`, where `E` converts into [`BoxError`].
///
/// Implemented for every such closure or `async fn`; there is no need to
/// implement it yourself.
pub trait Handler<T>: Fn(Event<T>) -> <Self as Handler<T>>::Future + Send + Sync + 'static {
    /// The future the handler returns.
    type Future: Future<Output = Result<(), Self::Error>> + Send + 'static;
    /// The handler's error.
    type Error: Into<BoxError>;
}

impl<T, F, Fut, E> Handler<T> for F
where
    F: Fn(Event<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    type Future = Fut;
    type Error = E;
}

/// An async function that sees events as they came, with raw data:
/// `Fn(RawEvent) -> impl Future<Output = Result<(), E>>`.
pub trait RawHandler: Fn(RawEvent) -> <Self as RawHandler>::Future + Send + Sync + 'static {
    /// The future the handler returns.
    type Future: Future<Output = Result<(), Self::Error>> + Send + 'static;
    /// The handler's error.
    type Error: Into<BoxError>;
}

impl<F, Fut, E> RawHandler for F
where
    F: Fn(RawEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    type Future = Fut;
    type Error = E;
}

/// An async function called with an event whose data did not decode:
/// `Fn(RawEvent, DecodeError) -> impl Future<Output = Result<(), E>>`.
pub trait UndecodableHandler:
    Fn(RawEvent, DecodeError) -> <Self as UndecodableHandler>::Future + Send + Sync + 'static
{
    /// The future the hook returns.
    type Future: Future<Output = Result<(), Self::Error>> + Send + 'static;
    /// The hook's error.
    type Error: Into<BoxError>;
}

impl<F, Fut, E> UndecodableHandler for F
where
    F: Fn(RawEvent, DecodeError) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    type Future = Fut;
    type Error = E;
}

type Run = BoxFuture<'static, Result<(), BoxError>>;

/// A decoded event ready to run, with what ordering needs to know about it.
struct Prepared {
    object: Option<ObjectKey>,
    version: Option<Version>,
    run: Box<dyn FnOnce(Freshness) -> Run + Send>,
}

type Route = Arc<dyn Fn(&RawEvent) -> Result<Prepared, DecodeError> + Send + Sync>;
type Fallback = Arc<dyn Fn(RawEvent) -> Run + Send + Sync>;
type Undecodable = Arc<dyn Fn(RawEvent, DecodeError) -> Run + Send + Sync>;

#[derive(Clone, Default)]
struct Routes {
    typed: HashMap<EventType, Route>,
    fallback: Option<Fallback>,
    undecodable: Option<Undecodable>,
    ordering: Option<Arc<dyn FreshnessStore>>,
    skip_stale: bool,
}

/// A tower [`Service`] that dispatches verified events to typed handlers.
///
/// Cheap to clone: clones share the handlers.
#[derive(Clone, Default)]
pub struct EventRouter {
    routes: Arc<Routes>,
}

impl fmt::Debug for EventRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.routes.typed.keys().map(EventType::as_str).collect();
        types.sort_unstable();
        f.debug_struct("EventRouter")
            .field("handlers", &types)
            .field("fallback", &self.routes.fallback.is_some())
            .field("on_undecodable", &self.routes.undecodable.is_some())
            .field("ordering", &self.routes.ordering.is_some())
            .field("skip_stale", &self.routes.skip_stale)
            .finish()
    }
}

fn boxed<Fut, E>(future: Fut) -> Run
where
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    Box::pin(async move { future.await.map_err(Into::into) })
}

impl EventRouter {
    /// A router with no handlers: every event is acknowledged with `200`.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn routes_mut(&mut self) -> &mut Routes {
        Arc::make_mut(&mut self.routes)
    }

    /// Runs `handler` for events of kind `K` (a marker from
    /// [`events`](crate::events)), with the data decoded into `K::Data`.
    /// A second handler for the same kind replaces the first.
    #[must_use]
    pub fn on<K: EventKind, H: Handler<K::Data>>(mut self, handler: H) -> Self {
        let handler = Arc::new(handler);
        let route: Route = Arc::new(move |raw: &RawEvent| {
            let mut event = raw.decode::<K::Data>()?;
            let handler = Arc::clone(&handler);
            Ok(Prepared {
                object: event.object_key(),
                version: event.version(),
                run: Box::new(move |freshness| {
                    event.set_freshness(freshness);
                    boxed(handler(event))
                }),
            })
        });
        self.routes_mut().typed.insert(K::TYPE, route);
        self
    }

    /// Runs `handler` for every event no [`on`](Self::on) handler takes,
    /// including event types this crate does not know yet.
    #[must_use]
    pub fn on_any<H: RawHandler>(mut self, handler: H) -> Self {
        self.routes_mut().fallback = Some(Arc::new(move |raw| boxed(handler(raw))));
        self
    }

    /// Runs `hook` for events whose data does not decode into the type their
    /// handler takes. `Ok` acknowledges the delivery (`200`): keep the raw
    /// event somewhere first. `Err` answers `500` so Clink retries.
    #[must_use]
    pub fn on_undecodable<H: UndecodableHandler>(mut self, hook: H) -> Self {
        self.routes_mut().undecodable = Some(Arc::new(move |raw, error| boxed(hook(raw, error))));
        self
    }

    /// Tracks the newest handled version of every object in `store`, and
    /// tells each typed handler whether its event is fresh or stale through
    /// [`Event::freshness`]. See [`ordering`](crate::ordering).
    ///
    /// A version is recorded only after its handler succeeds. If the store
    /// cannot be read, the delivery is answered `503` and retried.
    #[must_use]
    pub fn ordering(mut self, store: impl FreshnessStore) -> Self {
        self.routes_mut().ordering = Some(Arc::new(store));
        self
    }

    /// As [`ordering`](Self::ordering), with a store already shared as
    /// `Arc<dyn FreshnessStore>`.
    #[must_use]
    pub fn shared_ordering(mut self, store: Arc<dyn FreshnessStore>) -> Self {
        self.routes_mut().ordering = Some(store);
        self
    }

    /// Acknowledges stale events (`200`) without running their handler, for
    /// handlers that only apply the newest state. Needs
    /// [`ordering`](Self::ordering); events where every one matters (refunds,
    /// disputes) want a handler that sees them all instead.
    #[must_use]
    pub fn skip_stale(mut self) -> Self {
        self.routes_mut().skip_stale = true;
        self
    }

    /// Whether a typed handler is registered for `event_type`.
    #[must_use]
    pub fn handles(&self, event_type: &EventType) -> bool {
        self.routes.typed.contains_key(event_type)
    }

    async fn dispatch(routes: Arc<Routes>, raw: RawEvent) -> Response<Full<Bytes>> {
        let mut record = None;
        let run = match routes.typed.get(raw.event_type()) {
            Some(route) => match route(&raw) {
                Ok(prepared) => {
                    let tracked = match (&routes.ordering, prepared.object, prepared.version) {
                        (Some(store), Some(object), Some(version)) => {
                            Some((store, object, version))
                        }
                        _ => None,
                    };
                    let freshness = match &tracked {
                        Some((store, object, version)) => match store.newest(object).await {
                            Ok(newest) => Freshness::of(version, newest),
                            Err(error) => {
                                tracing::error!(
                                    event_id = raw.id(),
                                    %error,
                                    "could not read the freshness store; answering 503"
                                );
                                return failed(RejectionKind::StoreUnavailable(error.kind()));
                            }
                        },
                        None => Freshness::Untracked,
                    };
                    if routes.skip_stale && freshness.is_stale() {
                        tracing::info!(
                            event_id = raw.id(),
                            event_type = raw.event_type().as_str(),
                            "stale event acknowledged without running its handler"
                        );
                        return ok();
                    }
                    record = tracked;
                    (prepared.run)(freshness)
                }
                Err(error) => return Self::undecodable(&routes, raw, error).await,
            },
            None => match &routes.fallback {
                Some(fallback) => fallback(raw.clone()),
                None => {
                    tracing::debug!(
                        event_id = raw.id(),
                        event_type = raw.event_type().as_str(),
                        "no handler for this event type; acknowledged"
                    );
                    return ok();
                }
            },
        };
        match run.await {
            Ok(()) => {
                if let Some((store, object, version)) = record {
                    if let Err(error) = store.record(&object, &version).await {
                        tracing::error!(
                            event_id = raw.id(),
                            %object,
                            %error,
                            "handled, but its version could not be recorded; later stale events may look fresh"
                        );
                    }
                }
                ok()
            }
            Err(error) => {
                tracing::error!(
                    event_id = raw.id(),
                    event_type = raw.event_type().as_str(),
                    error = %error,
                    "clink handler failed; the delivery will be retried"
                );
                failed(RejectionKind::HandlerFailed)
            }
        }
    }

    async fn undecodable(
        routes: &Routes,
        raw: RawEvent,
        error: DecodeError,
    ) -> Response<Full<Bytes>> {
        tracing::error!(
            event_id = raw.id(),
            event_type = raw.event_type().as_str(),
            field = error.path(),
            error = %error,
            "clink event data did not decode into its handler's type"
        );
        let Some(hook) = &routes.undecodable else {
            return failed(RejectionKind::HandlerFailed);
        };
        let event_id = raw.id().to_owned();
        match hook(raw, error).await {
            Ok(()) => ok(),
            Err(error) => {
                tracing::error!(event_id, error = %error, "clink on_undecodable hook failed");
                failed(RejectionKind::HandlerFailed)
            }
        }
    }
}

fn ok() -> Response<Full<Bytes>> {
    crate::layer::ok_response().map(Full::new)
}

fn failed(kind: RejectionKind) -> Response<Full<Bytes>> {
    Rejection::new(kind).to_response().map(Full::new)
}

impl<B> Service<Request<B>> for EventRouter {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let routes = Arc::clone(&self.routes);
        let verified = request.extensions().get::<VerifiedEvent>().cloned();
        Box::pin(async move {
            let Some(verified) = verified else {
                tracing::error!(
                    "EventRouter got a request without a VerifiedEvent: put ClinkLayer in front of it"
                );
                return Ok(failed(RejectionKind::HandlerFailed));
            };
            Ok(Self::dispatch(routes, verified.into_event()).await)
        })
    }
}
