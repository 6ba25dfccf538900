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
//! Its responses carry an [`Outcome`] in their extensions
//! ([`Handled`](Outcome::Handled), [`Unhandled`](Outcome::Unhandled) when no
//! handler takes the type, [`SkippedStale`](Outcome::SkippedStale),
//! [`HandlerFailed`](Outcome::HandlerFailed), ...), which the layer reports
//! as the delivery's outcome, and for typed events the [`Freshness`] the
//! handler was given.

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

use crate::data::Resource;
use crate::events::{
    for_each_kind, DecodeError, Event, EventKind, EventType, Freshness, KindVisitor, ObjectKey,
    RawEvent, Version,
};
use crate::layer::VerifiedEvent;
use crate::ordering;
use crate::store::{BoxFuture, FreshnessStore};
use crate::{BoxError, Outcome};

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

/// A handler for events of every type this crate knows, generic over their
/// data type: see [`EventRouter::on_every`].
///
/// A closure cannot be generic, so this is a trait, whose method returns a
/// boxed future:
///
/// ```
/// use clink_webhooks::data::Resource;
/// use clink_webhooks::store::BoxFuture;
/// use clink_webhooks::router::EveryHandler;
/// use clink_webhooks::Event;
///
/// /// Logs every event with the object it is about and its freshness.
/// struct Audit;
///
/// impl EveryHandler for Audit {
///     type Error = std::convert::Infallible;
///
///     fn handle<T: Resource + Send + 'static>(
///         &self,
///         event: Event<T>,
///     ) -> BoxFuture<'static, Result<(), Self::Error>> {
///         let object = event.object_key().map(|key| key.to_string());
///         tracing::info!(id = %event.id, r#type = %event.event_type, ?object, freshness = ?event.freshness());
///         Box::pin(async { Ok(()) })
///     }
/// }
/// ```
pub trait EveryHandler: Send + Sync + 'static {
    /// The handler's error.
    type Error: Into<BoxError>;

    /// Handles one event, its data decoded into its kind's data type
    /// ([`serde_json::Value`] for families without a published schema).
    fn handle<T: Resource + Send + 'static>(
        &self,
        event: Event<T>,
    ) -> BoxFuture<'static, Result<(), Self::Error>>;
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

    /// Registers `handler` as the typed handler of every event type this
    /// crate knows, all 44, as if by one [`on`](Self::on) per marker in
    /// [`events`](crate::events): each event's data is decoded into its
    /// kind's type, and its [`freshness`](Event::freshness) is tracked when
    /// the router has [`ordering`](Self::ordering).
    ///
    /// An [`on`](Self::on) registered after it replaces it for that kind;
    /// names this crate does not know still go to [`on_any`](Self::on_any).
    #[must_use]
    pub fn on_every<H: EveryHandler>(self, handler: H) -> Self {
        struct Register<H> {
            router: EventRouter,
            handler: Arc<H>,
        }

        impl<H: EveryHandler> KindVisitor for Register<H> {
            fn visit<K: EventKind>(&mut self) {
                let handler = Arc::clone(&self.handler);
                let router = std::mem::take(&mut self.router);
                self.router = router.on::<K, _>(move |event| handler.handle(event));
            }
        }

        let mut register = Register {
            router: self,
            handler: Arc::new(handler),
        };
        for_each_kind(&mut register);
        register.router
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
    /// [`Event::freshness`]. See [`ordering`].
    ///
    /// A version is recorded only after its handler succeeds. If the store
    /// cannot be read, the delivery is answered `503` and retried.
    #[must_use]
    pub fn ordering(mut self, store: impl FreshnessStore) -> Self {
        self.routes_mut().ordering = Some(Arc::new(store));
        self
    }

    /// Acknowledges stale events (`200`) without running their handler, for
    /// handlers that only apply the newest state. Only events already handled
    /// count: see [what freshness can and cannot see](crate::ordering#what-freshness-can-and-cannot-see). Needs
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
        let Some(route) = routes.typed.get(raw.event_type()) else {
            return match &routes.fallback {
                Some(fallback) => Self::finish(&raw, fallback(raw.clone()).await, None).await,
                None => {
                    tracing::debug!(
                        event_id = ?raw.id(),
                        event_type = ?raw.event_type().as_str(),
                        "no handler for this event type; acknowledged"
                    );
                    respond(&Outcome::Unhandled)
                }
            };
        };
        let prepared = match route(&raw) {
            Ok(prepared) => prepared,
            Err(error) => return Self::undecodable(&routes, raw, error).await,
        };
        let store = routes.ordering.as_deref();
        let (freshness, tracked) =
            match ordering::check(store, prepared.object, prepared.version, &raw).await {
                Ok(checked) => checked,
                Err(error) => {
                    tracing::error!(
                        event_id = ?raw.id(),
                        %error,
                        "could not read the freshness store; answering 503"
                    );
                    return respond(&Outcome::StoreUnavailable(error.kind()));
                }
            };
        if routes.skip_stale && freshness.is_stale() {
            tracing::info!(
                event_id = ?raw.id(),
                event_type = ?raw.event_type().as_str(),
                "stale event acknowledged without running its handler"
            );
            let mut response = respond(&Outcome::SkippedStale);
            response.extensions_mut().insert(freshness);
            return response;
        }
        let result = (prepared.run)(freshness.clone()).await;
        let mut response = Self::finish(&raw, result, tracked).await;
        response.extensions_mut().insert(freshness);
        response
    }

    /// Answers for a handler's result, recording its version once it succeeded.
    async fn finish(
        raw: &RawEvent,
        result: Result<(), BoxError>,
        tracked: Option<ordering::Tracked<'_>>,
    ) -> Response<Full<Bytes>> {
        match result {
            Ok(()) => {
                if let Some(tracked) = tracked {
                    tracked.record(raw).await;
                }
                respond(&Outcome::Handled)
            }
            Err(error) => {
                tracing::error!(
                    event_id = ?raw.id(),
                    event_type = ?raw.event_type().as_str(),
                    error = %error,
                    "clink handler failed; the delivery will be retried"
                );
                respond(&Outcome::HandlerFailed)
            }
        }
    }

    async fn undecodable(
        routes: &Routes,
        raw: RawEvent,
        error: DecodeError,
    ) -> Response<Full<Bytes>> {
        tracing::error!(
            event_id = ?raw.id(),
            event_type = ?raw.event_type().as_str(),
            field = ?error.path(),
            error = %error,
            "clink event data did not decode into its handler's type"
        );
        let Some(hook) = &routes.undecodable else {
            return respond(&Outcome::HandlerFailed);
        };
        let event_id = raw.id().to_owned();
        match hook(raw, error).await {
            Ok(()) => respond(&Outcome::Handled),
            Err(error) => {
                tracing::error!(event_id = ?event_id, error = %error, "clink on_undecodable hook failed");
                respond(&Outcome::HandlerFailed)
            }
        }
    }
}

fn respond(outcome: &Outcome) -> Response<Full<Bytes>> {
    outcome.to_response().map(Full::new)
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
                return Ok(respond(&Outcome::HandlerFailed));
            };
            Ok(Self::dispatch(routes, verified.into_event()).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::store::MemoryStore;
    use crate::{events, sign, ClinkLayer, Timestamp, Verifier};

    /// Records `type id object stale?` for every event it handles.
    #[derive(Clone, Default)]
    struct Record(Arc<Mutex<Vec<String>>>);

    impl EveryHandler for Record {
        type Error = Infallible;

        fn handle<T: Resource + Send + 'static>(
            &self,
            event: Event<T>,
        ) -> BoxFuture<'static, Result<(), Infallible>> {
            let object = event
                .object_key()
                .map(|k| k.to_string())
                .unwrap_or_default();
            self.0.lock().unwrap().push(format!(
                "{} {} {object} {}",
                event.event_type,
                event.id,
                event.freshness().is_stale()
            ));
            Box::pin(std::future::ready(Ok(())))
        }
    }

    async fn deliver(router: EventRouter, bodies: &[&str]) {
        let service = ClinkLayer::new(Verifier::new("k").unwrap()).layer(router);
        for body in bodies {
            let ts = Timestamp::now().as_millis().to_string();
            let request = Request::post("/")
                .header("x-clink-timestamp", &ts)
                .header("x-clink-signature", sign("k", &ts, body.as_bytes()))
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200, "{body}");
        }
    }

    #[test]
    fn on_every_registers_every_known_type() {
        let router = EventRouter::new().on_every(Record::default());
        assert!(EventType::ALL.iter().all(|t| router.handles(t)));
        assert!(!router.handles(&EventType::from("wallet.topped_up")));
    }

    #[tokio::test]
    async fn on_every_decodes_tracks_freshness_and_yields_to_later_on() {
        let record = Record::default();
        let specific = Arc::new(Mutex::new(0));
        let counter = Arc::clone(&specific);
        let router = EventRouter::new()
            .ordering(MemoryStore::new())
            .on_every(record.clone())
            .on::<events::RefundSucceeded, _>(move |_event| {
                *counter.lock().unwrap() += 1;
                std::future::ready(Ok::<_, Infallible>(()))
            });
        deliver(
            router,
            &[
                r#"{"id":"e2","type":"risk_rule.updated","created":2000,"data":{"riskRuleId":"rr_1"}}"#,
                r#"{"id":"e1","type":"risk_rule.updated","created":1000,"data":{"riskRuleId":"rr_1"}}"#,
                r#"{"id":"e3","type":"dispute.won","created":1000,"data":{"object":{"chargeBackId":"cb_1"}}}"#,
                r#"{"id":"e4","type":"refund.succeeded","data":{"refundId":"rf_1"}}"#,
            ],
        )
        .await;
        assert_eq!(
            *record.0.lock().unwrap(),
            [
                "risk_rule.updated e2 risk_rule:rr_1 false",
                "risk_rule.updated e1 risk_rule:rr_1 true",
                "dispute.won e3 dispute:cb_1 false",
            ]
        );
        assert_eq!(*specific.lock().unwrap(), 1);
    }
}
