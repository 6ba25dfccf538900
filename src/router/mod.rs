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
//!     .on_unhandled(|event| async move {
//!         tracing::info!(event_type = ?event.event_type().as_str(), "not handled here");
//!         Ok::<_, std::io::Error>(())
//!     });
//! ```
//!
//! # State
//!
//! Handlers that write to the app's database want its pool. Give the router
//! the app's state with [`with_state`](EventRouter::with_state), and every
//! handler receives a clone of it next to the event, as axum's `State`:
//!
//! ```
//! use clink_webhooks::{events, EventRouter};
//!
//! #[derive(Clone)]
//! struct AppState {
//!     shop: &'static str,
//! }
//!
//! let router = EventRouter::with_state(AppState { shop: "eu" })
//!     .before_each(|event, state: AppState| async move {
//!         // Every verified event, before its handler: an audit log, say.
//!         tracing::info!(shop = state.shop, id = ?event.id(), "clink event");
//!         Ok::<_, std::io::Error>(())
//!     })
//!     .on::<events::OrderSucceeded, _>(|event, state: AppState| async move {
//!         tracing::info!(shop = state.shop, order = ?event.data.order_id, "paid");
//!         Ok::<_, std::io::Error>(())
//!     });
//! ```
//!
//! # Which function runs
//!
//! | registered with | runs for | a failure |
//! |---|---|---|
//! | [`before_each`](EventRouter::before_each) | every event the router is given, before anything else | `500`, nothing else runs |
//! | [`on::<K, _>`](EventRouter::on) | events of type `K`, data decoded | `500` |
//! | [`on_every_type`](EventRouter::on_every_type) | every type this crate knows without its own `on` | `500` |
//! | [`on_unhandled`](EventRouter::on_unhandled) | types no typed handler takes, including names added later | `500` |
//! | [`on_undecodable`](EventRouter::on_undecodable) | typed events whose data does not decode | `500` |
//!
//! A failure with a [`Permanent`] error, one no retry can mend, is kept
//! as dead and answered `200` instead when the layer has a
//! [dead-letter inbox](crate::ClinkLayer::dead_letters)
//! ([`Outcome::FailedKeptDead`]), and kept dead at once by an
//! [inbox](crate::inbox)'s workers.
//!
//! Without `on_unhandled`, an event no handler takes is acknowledged
//! ([`Outcome::Unhandled`]); nothing is dropped silently: the
//! [layer](crate::ClinkLayer) counts and logs the outcome, as an
//! [inbox](crate::inbox)'s workers log it (the router itself logs it at
//! `debug` only, so code calling [`EventRouter::dispatch`] itself looks at
//! the outcome it returns).
//!
//! An event whose `data` does not decode into the registered type goes to the
//! [`on_undecodable`](EventRouter::on_undecodable) hook with the raw verified
//! bytes. Without a hook it is [`Outcome::Undecodable`], logged with the
//! event id, type and failing field and counted in
//! `clink_webhook_undecodable_events_total` (label `event_type`), so a
//! verified event is never dropped silently: behind the layer it is answered
//! `500`, or kept as dead in the layer's
//! [dead-letter inbox](crate::ClinkLayer::dead_letters) and acknowledged; an
//! inbox worker marks it dead at once (retries cannot help).
//!
//! [`dispatch`](EventRouter::dispatch) is the typed way in: it takes a
//! [`VerifiedEvent`] and returns what happened as a [`Dispatched`] (the
//! [`Outcome`], the [`Freshness`] the handler was given, the failure's
//! text). The [inbox workers](crate::inbox::Workers) call it, and so can
//! code that verified an event itself. As a tower service behind
//! [`ClinkLayer`](crate::ClinkLayer), the router takes the [`VerifiedEvent`]
//! the layer puts in the request extensions, dispatches it, and answers
//! with the outcome's status, the [`Outcome`] and the [`Freshness`] in the
//! response extensions (and the [`Dispatched`], for its failure's text, when
//! the event failed), which the layer reports as the delivery's outcome.
//!
//! A handler's error is logged at `error` level with the event's id and
//! type (through `tracing`: install a subscriber, such as
//! `tracing_subscriber::fmt::init()`, or nothing is printed).

mod handler;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_service::Service;

pub use handler::{
    EveryHandler, Handler, RawHandler, RawStateHandler, StateHandler, UndecodableHandler,
};

use crate::events::{
    for_each_kind, DecodeError, DecodesTyped, Event, EventKind, EventType, Freshness, KindVisitor,
    ObjectKey, Predecoded, RawEvent, Version,
};
use crate::guard::{boxed_in_place, cold, until, CatchUnwind, HandlerDeadline, TimedOut};
use crate::ordering;
use crate::outage::{OutageLog, DEFAULT_OUTAGE_LOG_INTERVAL};
use crate::outcome::handler_timed_out;
use crate::store::FreshnessStore;
use crate::BoxFuture;
use crate::{BoxError, Outcome, VerifiedEvent};

type Run = BoxFuture<'static, Result<(), BoxError>>;

/// A decoded event ready to run.
enum Prepared {
    /// Not tracked for freshness (the router has no ordering store): the
    /// handler's future, made at once.
    Untracked(Run),
    /// With what ordering needs to know about it, to learn its freshness
    /// before the handler runs.
    Tracked {
        object: Option<ObjectKey>,
        version: Option<Version>,
        run: Box<dyn FnOnce(Freshness) -> Run + Send>,
    },
}

/// Decodes an event for its typed handler: the event, the resource decoded
/// with its envelope (taken out of it by [`EventRouter::dispatch`]), the
/// router's state, and `true` when the router tracks freshness.
type Route<S> = Arc<
    dyn Fn(&RawEvent, Option<Predecoded>, S, bool) -> Result<Prepared, DecodeError> + Send + Sync,
>;
type RawRoute<S> = Arc<dyn Fn(RawEvent, S) -> Run + Send + Sync>;
type Undecodable = Arc<dyn Fn(RawEvent, DecodeError) -> Run + Send + Sync>;

/// The typed routes: one slot for each event type this crate knows, at its
/// place in [`EventType::ALL`], so that a delivery finds its handler
/// without hashing its type. A marker's `TYPE` is a const, so it names a
/// known type or `Unknown("")` (a `String` in a const is empty), and an
/// event with an empty type is refused before any router sees it: no other
/// type can have a route.
struct Typed<S>([Option<Route<S>>; EventType::ALL.len()]);

impl<S> Typed<S> {
    fn get(&self, event_type: &EventType) -> Option<&Route<S>> {
        self.0.get(event_type.known_index()?)?.as_ref()
    }

    fn insert(&mut self, event_type: &EventType, route: Route<S>) {
        if let Some(slot) = self.slot(event_type) {
            *slot = Some(route);
        }
    }

    /// As [`insert`](Self::insert), unless `event_type` has a route already.
    fn insert_if_empty(&mut self, event_type: &EventType, route: Route<S>) {
        if let Some(slot @ None) = self.slot(event_type) {
            *slot = Some(route);
        }
    }

    fn slot(&mut self, event_type: &EventType) -> Option<&mut Option<Route<S>>> {
        event_type
            .known_index()
            .and_then(|index| self.0.get_mut(index))
    }

    /// The names of the types with a route.
    fn names(&self) -> impl Iterator<Item = &str> {
        EventType::ALL
            .iter()
            .zip(&self.0)
            .filter(|(_, route)| route.is_some())
            .map(|(event_type, _)| event_type.as_str())
    }
}

impl<S> Clone for Typed<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S> Default for Typed<S> {
    fn default() -> Self {
        Self([const { None }; EventType::ALL.len()])
    }
}

struct Routes<S> {
    typed: Typed<S>,
    unhandled: Option<RawRoute<S>>,
    before_each: Option<RawRoute<S>>,
    undecodable: Option<Undecodable>,
    ordering: Option<Arc<dyn FreshnessStore>>,
    /// The freshness store's outage log, for its reads.
    ordering_outage: Arc<OutageLog>,
    /// The same for its records, whose failure refuses nothing.
    recording_outage: Arc<OutageLog>,
    skip_stale: bool,
}

impl<S> Clone for Routes<S> {
    fn clone(&self) -> Self {
        Self {
            typed: self.typed.clone(),
            unhandled: self.unhandled.clone(),
            before_each: self.before_each.clone(),
            undecodable: self.undecodable.clone(),
            ordering: self.ordering.clone(),
            ordering_outage: Arc::clone(&self.ordering_outage),
            recording_outage: Arc::clone(&self.recording_outage),
            skip_stale: self.skip_stale,
        }
    }
}

impl<S> Default for Routes<S> {
    fn default() -> Self {
        Self {
            typed: Typed::default(),
            unhandled: None,
            before_each: None,
            undecodable: None,
            ordering: None,
            ordering_outage: OutageLog::new(
                "freshness store",
                "deliveries are answered 503 and Clink retries them",
                DEFAULT_OUTAGE_LOG_INTERVAL,
            ),
            recording_outage: OutageLog::new(
                "freshness store (recording versions)",
                "events are handled, but their versions are not kept, so later stale events \
                 about their objects may look fresh",
                DEFAULT_OUTAGE_LOG_INTERVAL,
            ),
            skip_stale: false,
        }
    }
}

/// The state of a router made by [`EventRouter::with_state`]: handlers
/// receive a clone of the `T` inside.
#[derive(Debug, Clone)]
pub struct WithState<T>(T);

/// A tower [`Service`] that dispatches verified events to typed handlers.
///
/// `EventRouter` (that is, `EventRouter<()>`, made by [`new`](Self::new))
/// runs handlers that take the event; `EventRouter<WithState<T>>`, made by
/// [`with_state`](EventRouter::with_state), runs handlers that take the
/// event and a clone of the app's `T`. Cheap to clone: clones share the
/// handlers and the state.
pub struct EventRouter<S = ()> {
    routes: Arc<Routes<S>>,
    state: S,
}

impl<S: Clone> Clone for EventRouter<S> {
    fn clone(&self) -> Self {
        Self {
            routes: Arc::clone(&self.routes),
            state: self.state.clone(),
        }
    }
}

impl Default for EventRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> fmt::Debug for EventRouter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.routes.typed.names().collect();
        types.sort_unstable();
        f.debug_struct("EventRouter")
            .field("handlers", &types)
            .field("before_each", &self.routes.before_each.is_some())
            .field("on_unhandled", &self.routes.unhandled.is_some())
            .field("on_undecodable", &self.routes.undecodable.is_some())
            .field("ordering", &self.routes.ordering.is_some())
            .field("skip_stale", &self.routes.skip_stale)
            .finish_non_exhaustive()
    }
}

/// The future `make` makes (a handler's), boxed as the router runs it:
/// made straight into its box, with its error boxed as it comes out.
fn boxed<Fut, E>(make: impl FnOnce() -> Fut) -> Run
where
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    boxed_in_place(|| BoxingError { future: make() })
}

pin_project! {
    /// A handler's future, its error boxed.
    struct BoxingError<F> {
        #[pin]
        future: F,
    }
}

impl<F, E> Future for BoxingError<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().future.poll(cx).map_err(Into::into)
    }
}

/// A route for kind `K` that decodes the data and calls `call` with the
/// event and the router's state.
fn typed_route<K, S, F>(call: F) -> Route<S>
where
    K: EventKind,
    S: Send + 'static,
    F: Fn(Event<K::Data>, S) -> Run + Send + Sync + 'static,
{
    let call = Arc::new(call);
    Arc::new(move |raw: &RawEvent, predecoded, state: S, track: bool| {
        // The resource decoded as the envelope was read, when it was.
        let mut event = raw.decode_typed::<K::Data>(predecoded)?;
        if !track {
            // The event's freshness is already `Untracked`.
            return Ok(Prepared::Untracked(call(event, state)));
        }
        let call = Arc::clone(&call);
        Ok(Prepared::Tracked {
            object: event.object_key(),
            version: event.version(),
            run: Box::new(move |freshness| {
                event.set_freshness(freshness);
                call(event, state)
            }),
        })
    })
}

impl EventRouter {
    /// A router with no handlers and no state: every event is acknowledged
    /// with `200` ([`Outcome::Unhandled`]) until handlers are added.
    #[must_use]
    pub fn new() -> Self {
        Self {
            routes: Arc::default(),
            state: (),
        }
    }

    /// A router whose handlers receive a clone of `state` next to each
    /// event: `.on::<events::OrderSucceeded, _>(|event, state: AppState| ..)`.
    #[must_use]
    pub fn with_state<T: Clone + Send + Sync + 'static>(state: T) -> EventRouter<WithState<T>> {
        EventRouter {
            routes: Arc::default(),
            state: WithState(state),
        }
    }

    /// Runs `handler` for events of kind `K` (a marker from
    /// [`events`](crate::events)), with the data decoded into `K::Data`.
    /// A second handler for the same kind replaces the first.
    #[must_use]
    pub fn on<K: EventKind, H: Handler<K::Data>>(mut self, handler: H) -> Self {
        let route = typed_route::<K, (), _>(move |event, ()| boxed(|| handler(event)));
        self.routes_mut().typed.insert(&K::TYPE, route);
        self
    }

    /// Runs `handler` for every event no typed handler takes, including
    /// event types this crate does not know yet. Without it such events are
    /// acknowledged as [`Outcome::Unhandled`].
    #[must_use]
    pub fn on_unhandled<H: RawHandler>(mut self, handler: H) -> Self {
        self.routes_mut().unhandled = Some(Arc::new(move |raw, ()| boxed(|| handler(raw))));
        self
    }

    /// Runs `hook` for every event the router is given, before its handler
    /// (an audit log, say). An `Err` answers `500` and no handler runs, so
    /// Clink retries the delivery.
    #[must_use]
    pub fn before_each<H: RawHandler>(mut self, hook: H) -> Self {
        self.routes_mut().before_each = Some(Arc::new(move |raw, ()| boxed(|| hook(raw))));
        self
    }
}

impl<T: Clone + Send + Sync + 'static> EventRouter<WithState<T>> {
    /// The state handlers receive.
    #[must_use]
    pub fn state(&self) -> &T {
        &self.state.0
    }

    /// Runs `handler` for events of kind `K` with a clone of the router's
    /// state: `|event, state: AppState| async move { .. }`. A second handler
    /// for the same kind replaces the first.
    #[must_use]
    pub fn on<K: EventKind, H: StateHandler<K::Data, T>>(mut self, handler: H) -> Self {
        let route = typed_route::<K, WithState<T>, _>(move |event, state| {
            boxed(|| handler(event, state.0))
        });
        self.routes_mut().typed.insert(&K::TYPE, route);
        self
    }

    /// As [`EventRouter::on_unhandled`], with a clone of the router's state.
    #[must_use]
    pub fn on_unhandled<H: RawStateHandler<T>>(mut self, handler: H) -> Self {
        self.routes_mut().unhandled = Some(Arc::new(move |raw, state: WithState<T>| {
            boxed(|| handler(raw, state.0))
        }));
        self
    }

    /// As [`EventRouter::before_each`], with a clone of the router's state.
    #[must_use]
    pub fn before_each<H: RawStateHandler<T>>(mut self, hook: H) -> Self {
        self.routes_mut().before_each = Some(Arc::new(move |raw, state: WithState<T>| {
            boxed(|| hook(raw, state.0))
        }));
        self
    }
}

impl<S: Send + 'static> DecodesTyped for Routes<S> {
    fn decodes_typed(&self, event_type: &EventType) -> bool {
        self.typed.get(event_type).is_some()
    }
}

impl<S: Clone + Send + Sync + 'static> EventRouter<S> {
    fn routes_mut(&mut self) -> &mut Routes<S> {
        Arc::make_mut(&mut self.routes)
    }

    /// Which event types this router decodes into a typed handler's data,
    /// for a reader that decodes them as it reads the envelope.
    /// Whether this router records the versions of the events it handles
    /// (it has a [`FreshnessStore`]): a record that runs after a handler
    /// succeeded, which a delivery can be dropped during.
    pub(crate) fn records_versions(&self) -> bool {
        self.routes.ordering.is_some()
    }

    pub(crate) fn decodes_typed(&self) -> &dyn DecodesTyped {
        &*self.routes
    }

    /// Registers `handler` as the typed handler of every event type this
    /// crate knows, all 44, as if by one `on` per marker in
    /// [`events`](crate::events): each event's data is decoded into its
    /// kind's type, and its [`freshness`](Event::freshness) is tracked when
    /// the router has [`ordering`](Self::ordering). A handler that needs the
    /// app's state holds it in its own fields.
    ///
    /// It takes only the kinds without a handler: an `on` registered
    /// before it keeps its kind, and one registered after it replaces it
    /// for that kind; names this crate does not know still go to
    /// `on_unhandled`.
    #[must_use]
    pub fn on_every_type<H: EveryHandler>(mut self, handler: H) -> Self {
        struct Register<'a, S, H> {
            routes: &'a mut Routes<S>,
            handler: Arc<H>,
        }

        impl<S: Send + 'static, H: EveryHandler> KindVisitor for Register<'_, S, H> {
            fn visit<K: EventKind>(&mut self) {
                let handler = Arc::clone(&self.handler);
                let route =
                    typed_route::<K, S, _>(move |event, _state| boxed(|| handler.handle(event)));
                self.routes.typed.insert_if_empty(&K::TYPE, route);
            }
        }

        let mut register = Register {
            routes: self.routes_mut(),
            handler: Arc::new(handler),
        };
        for_each_kind(&mut register);
        self
    }

    /// Runs `hook` for events whose data does not decode into the type their
    /// handler takes. `Ok` acknowledges the delivery (`200`): keep the raw
    /// event somewhere first. `Err` answers `500` so Clink retries.
    #[must_use]
    pub fn on_undecodable<H: UndecodableHandler>(mut self, hook: H) -> Self {
        self.routes_mut().undecodable =
            Some(Arc::new(move |raw, error| boxed(|| hook(raw, error))));
        self
    }

    /// Tracks the newest handled version of every object in `store`, and
    /// tells each typed handler whether its event is fresh or stale through
    /// [`Event::freshness`]. See [`ordering`]. Every store in
    /// [`store`](crate::store) is a [`FreshnessStore`], and an `Arc` of one
    /// is too, so the layer's idempotency store can serve here as well.
    ///
    /// A version is recorded only after its handler succeeds (waiting at
    /// most 1 s for the store). If the store cannot be read, or does not
    /// answer within 5 s (whatever its own timeout), the delivery is
    /// answered `503` and retried.
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
    ///
    /// It applies to every typed route of this router. To skip only some
    /// kinds, leave it off and return early from those handlers when
    /// [`event.freshness().is_stale()`](crate::Event::freshness), or route
    /// those kinds through a router of their own.
    #[must_use]
    pub fn skip_stale(mut self) -> Self {
        self.routes_mut().skip_stale = true;
        self
    }

    /// Whether a typed handler is registered for `event_type`.
    #[must_use]
    pub fn handles(&self, event_type: &EventType) -> bool {
        self.routes.typed.get(event_type).is_some()
    }

    /// Runs the handlers for `event` and says what happened: the typed way
    /// in, for code that verified the event itself or kept it to handle
    /// later (the [inbox workers](crate::inbox::Workers) call it), with no
    /// HTTP request around it. The tower [`Service`] impl is this call
    /// behind a request and a response.
    ///
    /// A panic in a handler, a hook or the state's `clone` is
    /// [`Outcome::HandlerPanicked`]. The call sets no time limit on the
    /// handlers (the layer and the workers bound it); with a
    /// [`FreshnessStore`], reading an object's newest version is bounded by
    /// 5 s (a store that does not answer then is
    /// [`StoreUnavailable`](Outcome::StoreUnavailable), `503`), and
    /// recording a handled event's version by 1 s
    /// ([`store::DEFAULT_TIMEOUT`](crate::store::DEFAULT_TIMEOUT)), on
    /// Tokio's timer, so it runs inside a Tokio runtime with its time driver
    /// on (`enable_time`, or `enable_all`).
    ///
    /// ```
    /// use clink_webhooks::{events, sign, EventRouter, Outcome, RawEvent, Timestamp, Verifier, VerifiedEvent};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let router = EventRouter::new().on::<events::OrderSucceeded, _>(|event| async move {
    ///     if event.data.order_id.is_none() {
    ///         return Err("an order without an id".into());
    ///     }
    ///     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    /// });
    ///
    /// let verifier = Verifier::new("whsec_test")?;
    /// let body = br#"{"id":"evt_1","type":"order.succeeded","data":{}}"#;
    /// let ts = Timestamp::now().as_millis().to_string();
    /// let verified = verifier.verify(&ts, &sign("whsec_test", &ts, body), body)?;
    /// let event = VerifiedEvent::new(RawEvent::from_slice(body)?, &verified);
    ///
    /// let dispatched = router.dispatch(event).await;
    /// assert_eq!(dispatched.outcome(), &Outcome::HandlerFailed);
    /// assert_eq!(dispatched.failure(), Some("an order without an id"));
    /// # Ok(()) }
    /// ```
    pub async fn dispatch(&self, event: VerifiedEvent) -> Dispatched {
        self.dispatch_noting(event, None).await
    }

    /// [`dispatch`](Self::dispatch), setting `succeeded` once a handler
    /// (or an `on_unhandled` or `on_undecodable` hook) returned `Ok`, its
    /// freshness tracked or not, before its version is recorded: a caller that stops
    /// the dispatch at its deadline then knows the handler's work was done.
    pub(crate) async fn dispatch_noting(
        &self, event: VerifiedEvent, succeeded: Option<&AtomicBool>,
    ) -> Dispatched {
        // Lent to the steps, so that it is still here for the log of a panic;
        // the resource decoded with the envelope goes to the typed route.
        let mut raw = event.into_event();
        let predecoded = raw.take_predecoded();
        // A flag of its own when the caller gave none: a panic after the
        // handler succeeded (recording its version) must not undo it.
        let own = AtomicBool::new(false);
        let noted = succeeded.unwrap_or(&own);
        // The state's clone inside the guard too: an inbox worker calls
        // this with no guard of its own, and a panic that left the call
        // would end the worker.
        let steps = async {
            Self::run(
                &self.routes,
                &raw,
                predecoded,
                self.state.clone(),
                Some(noted),
            )
            .await
        };
        match CatchUnwind::new(steps).await {
            Ok(dispatched) => dispatched,
            // The handler's work is done: answered handled, so that its
            // claim completes and no retry runs it again.
            Err(panic) if noted.load(Ordering::Relaxed) => {
                cold();
                tracing::error!(
                    event_id = ?raw.id(),
                    event_type = ?raw.event_type().as_str(),
                    panic = ?panic,
                    "clink handler succeeded, but recording its version panicked; \
                     acknowledged, and later stale events may look fresh"
                );
                Dispatched::new(Outcome::Handled)
            }
            Err(panic) => {
                cold();
                tracing::error!(
                    event_id = ?raw.id(),
                    event_type = ?raw.event_type().as_str(),
                    panic = ?panic,
                    "clink handler panicked; the event will be retried"
                );
                Dispatched::new(Outcome::HandlerPanicked).failed(format!("panicked: {panic}"))
            }
        }
    }

    async fn run(
        routes: &Routes<S>, raw: &RawEvent, predecoded: Option<Predecoded>, state: S,
        succeeded: Option<&AtomicBool>,
    ) -> Dispatched {
        if let Some(hook) = &routes.before_each {
            if let Err(error) = hook(raw.clone(), state.clone()).await {
                cold();
                return handler_failed(raw, "before_each hook", &*error);
            }
        }
        let Some(route) = routes.typed.get(raw.event_type()) else {
            return match &routes.unhandled {
                Some(handler) => {
                    let result = noted(handler(raw.clone(), state).await, succeeded);
                    finish(raw, result, None).await
                }
                None => {
                    tracing::debug!(
                        event_id = ?raw.id(),
                        event_type = ?raw.event_type().as_str(),
                        "no handler for this event type; acknowledged"
                    );
                    Dispatched::new(Outcome::Unhandled)
                }
            };
        };
        let store = routes.ordering.as_deref();
        let (object, version, run) = match route(raw, predecoded, state, store.is_some()) {
            Ok(Prepared::Untracked(run)) => {
                let result = noted(run.await, succeeded);
                return finish(raw, result, None)
                    .await
                    .with_freshness(Freshness::Untracked);
            }
            Ok(Prepared::Tracked {
                object,
                version,
                run,
            }) => (object, version, run),
            Err(error) => {
                cold();
                return undecodable(routes, raw.clone(), error, succeeded).await;
            }
        };
        let object = match raw.account() {
            Some(account) => object.map(|object| object.within(account)),
            None => object,
        };
        let outage = &routes.ordering_outage;
        let (freshness, tracked) = match ordering::check(store, object, version, raw).await {
            Ok(checked) => {
                // Only a store that was asked says it is back.
                if checked.1.is_some() {
                    outage.succeeded();
                }
                checked
            }
            Err(error) => {
                cold();
                // An outage of the store, logged as one.
                tracing::debug!(
                    event_id = ?raw.id(),
                    %error,
                    "could not read the freshness store; answering 503"
                );
                outage.failed(&error);
                return Dispatched::new(Outcome::StoreUnavailable(error.kind()))
                    .failed(error.to_string());
            }
        };
        if routes.skip_stale && freshness.is_stale() {
            tracing::info!(
                event_id = ?raw.id(),
                event_type = ?raw.event_type().as_str(),
                "stale event acknowledged without running its handler"
            );
            return Dispatched::new(Outcome::SkippedStale).with_freshness(freshness);
        }
        let result = noted(run(freshness.clone()).await, succeeded);
        finish(
            raw,
            result,
            tracked.map(|tracked| (tracked, &routes.recording_outage)),
        )
        .await
        .with_freshness(freshness)
    }
}

/// What happened when an [`EventRouter`] ran an event: see
/// [`EventRouter::dispatch`].
///
/// It is `#[must_use]`: a dispatch whose answer is dropped loses a failed
/// event, so the compiler says so.
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// use clink_webhooks::{EventRouter, VerifiedEvent};
///
/// async fn run(router: EventRouter, event: VerifiedEvent) {
///     router.dispatch(event).await; // the outcome dropped: refused
/// }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "an event whose handler failed is lost unless its outcome is read: \
              acknowledge it only when `outcome().is_acknowledged()`"]
pub struct Dispatched {
    outcome: Outcome,
    freshness: Option<Freshness>,
    failure: Option<String>,
    permanent: bool,
}

impl Dispatched {
    fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            freshness: None,
            failure: None,
            permanent: false,
        }
    }

    fn with_freshness(mut self, freshness: Freshness) -> Self {
        self.freshness = Some(freshness);
        self
    }

    fn failed(mut self, failure: String) -> Self {
        self.failure = Some(failure);
        self
    }

    /// A poison event: its data did not decode, for `error`.
    pub(crate) fn undecodable(error: &DecodeError) -> Self {
        Self::new(Outcome::Undecodable).failed(error.to_string())
    }

    /// The outcome: [`Handled`](Outcome::Handled),
    /// [`Unhandled`](Outcome::Unhandled), [`SkippedStale`](Outcome::SkippedStale),
    /// [`HandlerFailed`](Outcome::HandlerFailed), ...; acknowledge the event
    /// when [`Outcome::is_acknowledged`] says so, and retry it otherwise,
    /// except an event no retry can mend: one whose data did not decode
    /// ([`Outcome::Undecodable`]) or whose handler failed
    /// [permanently](Self::is_permanent), which a queue of the app's own
    /// keeps aside (dead), as the crate's inbox does, rather than retry.
    #[must_use]
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// The event's [`Freshness`] as its typed handler was told it, for a
    /// typed event that reached its handler (or was skipped as stale).
    #[must_use]
    pub fn freshness(&self) -> Option<&Freshness> {
        self.freshness.as_ref()
    }

    /// Why the event failed, when it did: the handler's error (followed by
    /// the errors it came from, each after a colon), the panic, or the
    /// store that could not be read. It can hold text from the event
    /// (a handler's message may quote it); escape it where it is printed.
    #[must_use]
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Whether the handler failed with a [`Permanent`] error: one no
    /// retry can mend, which an inbox's workers keep dead at once.
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The outcome, owned.
    #[must_use]
    pub fn into_outcome(self) -> Outcome {
        self.outcome
    }

    /// The answer to a delivery that ran this way, in `headers` and
    /// `extensions` (the request's, emptied here if they are not yet, for
    /// their room): the outcome's response, carrying the [`Freshness`] of
    /// a typed event whose freshness is tracked (none for
    /// [`Untracked`](Freshness::Untracked), which says nothing: one
    /// allocation less for every event of a router without a freshness
    /// store) and, when the event failed, this whole `Dispatched`.
    pub(crate) fn into_response(
        self, headers: http::HeaderMap, extensions: http::Extensions,
    ) -> Response<Bytes> {
        let mut response = self.outcome.to_response_with(headers, extensions);
        if let Some(freshness) = self
            .freshness
            .as_ref()
            .filter(|freshness| **freshness != Freshness::Untracked)
        {
            response.extensions_mut().insert(freshness.clone());
        }
        // The rest of it is only news when something failed: one
        // allocation less for every event handled.
        if self.failure.is_some() {
            response.extensions_mut().insert(self);
        }
        response
    }
}

/// `error` and the errors it came from, each after a colon (`db error:
/// ERROR: ...`), as far as eight deep; a cause whose text the message
/// already ends with is not repeated.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    for _ in 0..8 {
        let Some(next) = cause else { break };
        let shown = next.to_string();
        if !shown.is_empty() && !text.ends_with(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        cause = next.source();
    }
    text
}

/// A handler's error that no retry can mend: the event is poison (a body
/// the destination will never take, a record that can never be written).
///
/// Returned by a handler (or found among the causes of its error, up to
/// eight deep, or inside a [`std::io::Error`]), it fails the event as any
/// error does, with [`Outcome::HandlerFailed`], and
/// [`Dispatched::is_permanent`] says so. The [inbox](crate::inbox)'s
/// workers then keep the event dead at once, for an operator to look at
/// and replay, rather than retrying it for `max_attempts` while it holds
/// back the later events of its object. Served by the layer without an
/// inbox's workers, the event is kept dead in the layer's
/// [dead-letter inbox](crate::ClinkLayer::dead_letters) and acknowledged
/// ([`Outcome::FailedKeptDead`]); without one (or when it cannot keep the
/// event) it is answered as any failed handler (`500`: Clink retries the
/// delivery).
///
/// A wrapper that does not give its inner error as its `source` hides the
/// mark: an `anyhow::Error` made from it and then boxed, say. Wrap the
/// outer error in `Permanent` instead (`Permanent::new(anyhow_error)`).
///
/// ```
/// use clink_webhooks::router::Permanent;
/// use clink_webhooks::{events, EventRouter};
///
/// let router = EventRouter::new().on::<events::OrderSucceeded, _>(|event| async move {
///     if event.data.order_id.as_deref().is_some_and(|id| id.len() > 64) {
///         // The order table's key holds 64 characters: no retry fits it.
///         return Err(Permanent::new("the order id is longer than the table takes"));
///     }
///     Ok(())
/// });
/// # drop(router);
/// ```
#[derive(Debug)]
pub struct Permanent(BoxError);

impl Permanent {
    /// `error`, marked as one no retry can mend.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self(error.into())
    }

    /// The error it marks.
    #[must_use]
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Permanent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The marked error's own causes: its text is this one's, and a
        // report of the chain would print it twice.
        self.0.source()
    }
}

/// Whether `error`, or one of its causes up to eight deep (or the error an
/// `io::Error` of them holds), is [`Permanent`].
fn is_permanent(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |error| error.source())
        .take(9)
        .any(|error| {
            error.is::<Permanent>()
                || error
                    .downcast_ref::<std::io::Error>()
                    .and_then(std::io::Error::get_ref)
                    .is_some_and(<dyn std::error::Error + Send + Sync>::is::<Permanent>)
        })
}

/// Logs a failed handler or hook with the event's id and type, escaped; the
/// failure's outcome.
#[cold]
fn handler_failed(
    raw: &RawEvent, what: &str, error: &(dyn std::error::Error + Send + Sync + 'static),
) -> Dispatched {
    let permanent = is_permanent(error);
    let text = with_causes(error);
    if permanent {
        tracing::error!(
            event_id = ?raw.id(),
            event_type = ?raw.event_type().as_str(),
            error = ?text,
            "clink {what} failed with a permanent error"
        );
    } else {
        tracing::error!(
            event_id = ?raw.id(),
            event_type = ?raw.event_type().as_str(),
            error = ?text,
            "clink {what} failed; the event will be retried"
        );
    }
    let mut dispatched = Dispatched::new(Outcome::HandlerFailed).failed(text);
    dispatched.permanent = permanent;
    dispatched
}

/// How long the version of a handled event may take to record: a
/// freshness store that hangs must not hold the answer to a handled event
/// past the handler's deadline (it would be answered as timed out, and its
/// handler run again).
const RECORD_TIMEOUT: std::time::Duration = crate::store::DEFAULT_TIMEOUT;

/// `result`, a handler's (or a hook's that stands for one), with
/// `succeeded` set when it is `Ok`: whatever happens after (its version
/// recorded, a service around the router failing), its work is done.
fn noted(result: Result<(), BoxError>, succeeded: Option<&AtomicBool>) -> Result<(), BoxError> {
    if let (Ok(()), Some(succeeded)) = (&result, succeeded) {
        succeeded.store(true, Ordering::Relaxed);
    }
    result
}

/// The outcome of a handler's result, recording its version once it
/// succeeded (for at most [`RECORD_TIMEOUT`]; one not recorded by then is
/// logged, as a failed record is).
async fn finish(
    raw: &RawEvent, result: Result<(), BoxError>,
    tracked: Option<(ordering::Tracked<'_>, &Arc<OutageLog>)>,
) -> Dispatched {
    match result {
        Ok(()) => {
            if let Some((tracked, outage)) = tracked {
                if tokio::time::timeout(RECORD_TIMEOUT, tracked.record(raw, outage))
                    .await
                    .is_err()
                {
                    cold();
                    let timeout_ms = u64::try_from(RECORD_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
                    tracing::error!(
                        event_id = ?raw.id(),
                        timeout_ms,
                        "handled, but its version was not recorded in time; later stale events may look fresh"
                    );
                    outage.failed(&format_args!("no answer within {timeout_ms} ms"));
                }
            }
            Dispatched::new(Outcome::Handled)
        }
        Err(error) => handler_failed(raw, "handler", &*error),
    }
}

async fn undecodable<S>(
    routes: &Routes<S>, raw: RawEvent, error: DecodeError, succeeded: Option<&AtomicBool>,
) -> Dispatched {
    tracing::error!(
        event_id = ?raw.id(),
        event_type = ?raw.event_type().as_str(),
        field = ?error.path(),
        error = ?error.to_string(),
        "clink event data did not decode into its handler's type"
    );
    #[cfg(feature = "metrics")]
    if let Some(name) = raw.event_type().known_name() {
        metrics::counter!("clink_webhook_undecodable_events_total", "event_type" => name)
            .increment(1);
    }
    let Some(hook) = &routes.undecodable else {
        return Dispatched::undecodable(&error);
    };
    let event = raw.clone();
    match noted(hook(raw, error).await, succeeded) {
        Ok(()) => Dispatched::new(Outcome::Handled),
        Err(error) => handler_failed(&event, "on_undecodable hook", &*error),
    }
}

impl<S, B> Service<Request<B>> for EventRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// [`dispatch`](EventRouter::dispatch) of the request's
    /// [`VerifiedEvent`] (one the layer made for the request: one made with
    /// [`VerifiedEvent::earlier`] is not taken, and the request is answered
    /// `500` as without one); the response carries the [`Outcome`], for typed
    /// events whose freshness is tracked (a router with a
    /// [`FreshnessStore`]) the [`Freshness`], and when the event failed the whole
    /// [`Dispatched`] (with its [`failure`](Dispatched::failure)) in its
    /// extensions. Behind a [`ClinkLayer`](crate::ClinkLayer) it ends at
    /// the layer's deadline (the request carries it): answered
    /// [`HandlerTimeout`](Outcome::HandlerTimeout), or
    /// [`Handled`](Outcome::Handled) when the handler had succeeded and its
    /// version was still recording.
    fn call(&mut self, request: Request<B>) -> Self::Future {
        let router = self.clone();
        // The request is the router's own: take the event rather than copy it.
        let mut request = request;
        // Only an event whose signature was checked for this request (as
        // the layer makes it), not one another middleware put there.
        let verified = request
            .extensions_mut()
            .remove::<VerifiedEvent>()
            .filter(VerifiedEvent::checked_now);
        let deadline = request.extensions_mut().remove::<HandlerDeadline>();
        // The response's headers and extensions go into the request's maps,
        // emptied now (nothing of the request is kept while the handler
        // runs): they have room for what goes in, so no map is allocated.
        let mut headers = std::mem::take(request.headers_mut());
        headers.clear();
        let mut extensions = std::mem::take(request.extensions_mut());
        extensions.clear();
        Box::pin(async move {
            let Some(verified) = verified else {
                tracing::error!(
                    "EventRouter got a request without a VerifiedEvent: put ClinkLayer in front of it"
                );
                return Ok(Outcome::HandlerFailed.to_response().map(Full::new));
            };
            let Some(HandlerDeadline {
                at,
                limit,
                succeeded: shared,
            }) = deadline
            else {
                let dispatched = router.dispatch(verified).await;
                return Ok(dispatched.into_response(headers, extensions).map(Full::new));
            };
            // Behind the layer: a handler that succeeded is answered handled
            // even when recording its version runs past the layer's
            // deadline. This ends at the same instant and is polled first,
            // so it answers, either way.
            // The layer's flag when it asked for one: it reads it if the
            // delivery is dropped before it settles.
            let own = AtomicBool::new(false);
            let succeeded = shared.as_deref().unwrap_or(&own);
            match until(at, router.dispatch_noting(verified, Some(succeeded))).await {
                Ok(dispatched) => Ok(dispatched.into_response(headers, extensions).map(Full::new)),
                Err(()) if succeeded.load(Ordering::Relaxed) => {
                    cold();
                    tracing::error!(
                        "clink handler succeeded, but its version was not recorded by its \
                         deadline; acknowledged, and later stale events may look fresh"
                    );
                    Ok(Outcome::Handled.to_response().map(Full::new))
                }
                Err(()) => {
                    cold();
                    let outcome = handler_timed_out(TimedOut(limit));
                    Ok(outcome.to_response().map(Full::new))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::data::Resource;
    use crate::store::MemoryStore;
    use crate::{events, sign, Timestamp, Verifier};

    /// Records `type id object stale?` for every event it handles.
    #[derive(Clone, Default)]
    struct Record(Arc<Mutex<Vec<String>>>);

    impl EveryHandler for Record {
        type Error = Infallible;

        fn handle<T: Resource + Send + 'static>(
            &self, event: Event<T>,
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
        for body in bodies {
            let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
            let dispatched = router.dispatch(verified(raw, body)).await;
            assert!(
                dispatched.outcome().is_acknowledged(),
                "{body}: {dispatched:?}"
            );
        }
    }

    /// The resource of a type with a typed handler is decoded with the
    /// envelope, and that handler's decode takes it (a clone does not carry
    /// it, and decodes from the body); a type without one is not decoded
    /// ahead.
    #[tokio::test]
    async fn a_typed_handler_takes_the_resource_decoded_with_the_envelope() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let router = EventRouter::new().on::<events::OrderSucceeded, _>({
            let seen = Arc::clone(&seen);
            move |event: Event<crate::data::Order>| {
                seen.lock().unwrap().push(event.data.order_id);
                std::future::ready(Ok::<_, Infallible>(()))
            }
        });
        let typed = router.decodes_typed();
        let body =
            r#"{"id":"evt_1","type":"order.succeeded","data":{"object":{"orderId":"ord_1"}}}"#;
        let raw = RawEvent::from_bytes_for(Bytes::from(body), typed).unwrap();
        assert!(raw.holds_predecoded::<crate::data::Order>());
        let kept = raw.clone();
        assert!(!kept.holds_predecoded::<crate::data::Order>());
        let taken = || crate::events::PREDECODED_TAKEN.with(std::cell::Cell::get);
        let before = taken();
        let dispatched = router.dispatch(verified(raw, body)).await;
        assert_eq!(dispatched.outcome(), &Outcome::Handled);
        assert_eq!(*seen.lock().unwrap(), [Some("ord_1".into())]);
        assert_eq!(taken(), before + 1);
        // Decoded again from the body when asked again.
        assert_eq!(
            kept.decode_typed::<crate::data::Order>(None)
                .unwrap()
                .data
                .order_id
                .as_deref(),
            Some("ord_1")
        );
        let refund = r#"{"id":"evt_2","type":"refund.succeeded","data":{"refundId":"re_1"}}"#;
        let raw = RawEvent::from_bytes_for(Bytes::from(refund), typed).unwrap();
        assert!(!raw.holds_predecoded::<crate::data::Refund>());
    }

    /// A handler's panic becomes an outcome, and its log line names the
    /// event it was running, lent to the steps and still at hand.
    #[test]
    fn a_panic_is_logged_with_the_event_it_ran() {
        let lines = crate::outage::tests::logged(|| async {
            let router = EventRouter::new().on::<events::OrderSucceeded, _>(
                |_event: Event<crate::data::Order>| async {
                    panic!("the handler gave up");
                    #[allow(unreachable_code)]
                    Ok::<_, Infallible>(())
                },
            );
            let body = r#"{"id":"evt_panics","type":"order.succeeded","data":{"orderId":"o"}}"#;
            let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
            let dispatched = router.dispatch(verified(raw, body)).await;
            assert_eq!(dispatched.outcome(), &Outcome::HandlerPanicked);
            assert_eq!(dispatched.failure(), Some("panicked: the handler gave up"));
        });
        let line = lines
            .iter()
            .find(|line| line.contains("clink handler panicked"))
            .unwrap_or_else(|| panic!("no panic line in {lines:?}"));
        assert!(line.contains(r#"event_id="evt_panics""#), "{line}");
        assert!(line.contains(r#"event_type="order.succeeded""#), "{line}");
    }

    /// `raw`, read from `body`, as the layer hands it on once `body` is
    /// verified.
    fn verified(raw: RawEvent, body: &str) -> VerifiedEvent {
        let verifier = Verifier::new("k").unwrap();
        let ts = Timestamp::now().as_millis().to_string();
        let verification = verifier
            .verify(&ts, &sign("k", &ts, body.as_bytes()), body.as_bytes())
            .unwrap();
        VerifiedEvent::new(raw, &verification)
    }

    /// A state whose clone panics once `armed` is set.
    struct Fragile {
        armed: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Clone for Fragile {
        fn clone(&self) -> Self {
            assert!(
                !self.armed.load(std::sync::atomic::Ordering::SeqCst),
                "the state would not clone"
            );
            Self {
                armed: Arc::clone(&self.armed),
            }
        }
    }

    #[tokio::test]
    async fn a_panic_in_the_states_clone_is_an_outcome_not_a_panic() {
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let router = EventRouter::with_state(Fragile {
            armed: Arc::clone(&armed),
        })
        .on::<events::OrderSucceeded, _>(
            |_event: Event<crate::data::Order>, _state: Fragile| async { Ok::<_, Infallible>(()) },
        );
        let body = r#"{"id":"evt_fragile","type":"order.succeeded","data":{"orderId":"o"}}"#;
        let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
        armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let dispatched = router.dispatch(verified(raw, body)).await;
        assert_eq!(dispatched.outcome(), &Outcome::HandlerPanicked);
        assert_eq!(
            dispatched.failure(),
            Some("panicked: the state would not clone")
        );
    }

    #[test]
    fn a_marker_of_an_unknown_type_registers_nothing() {
        struct Mine;
        impl events::EventKind for Mine {
            const TYPE: EventType = EventType::Unknown(String::new());
            type Data = crate::data::Order;
        }
        let router = EventRouter::new()
            .on::<Mine, _>(|_event| std::future::ready(Ok::<_, Infallible>(())))
            .on::<events::OrderCreated, _>(|_event| std::future::ready(Ok::<_, Infallible>(())));
        assert!(!router.handles(&Mine::TYPE));
        assert!(router.handles(&events::OrderCreated::TYPE));
        assert!(format!("{router:?}").contains(r#"handlers: ["order.created"]"#));
    }

    #[test]
    fn debug_lists_the_handled_types_and_the_hooks() {
        let router = EventRouter::new()
            .on::<events::RefundSucceeded, _>(|_event| std::future::ready(Ok::<_, Infallible>(())))
            .on::<events::OrderCreated, _>(|_event| std::future::ready(Ok::<_, Infallible>(())))
            .ordering(MemoryStore::new())
            .skip_stale();
        assert_eq!(
            format!("{router:?}"),
            r#"EventRouter { handlers: ["order.created", "refund.succeeded"], before_each: false, on_unhandled: false, on_undecodable: false, ordering: true, skip_stale: true, .. }"#
        );
        assert!(router.handles(&EventType::OrderCreated));
        assert!(!router.handles(&EventType::OrderSucceeded));
    }

    #[test]
    fn a_clone_grows_apart_from_its_original() {
        let ok = |_event: Event<_>| std::future::ready(Ok::<_, Infallible>(()));
        let original = EventRouter::new().on::<events::OrderCreated, _>(ok);
        let grown = original
            .clone()
            .on::<events::RefundSucceeded, _>(|_event| std::future::ready(Ok::<_, Infallible>(())))
            .before_each(|_raw| std::future::ready(Ok::<_, Infallible>(())))
            .on_unhandled(|_raw| std::future::ready(Ok::<_, Infallible>(())));
        assert!(
            grown.handles(&EventType::OrderCreated) && grown.handles(&EventType::RefundSucceeded)
        );
        assert!(original.handles(&EventType::OrderCreated));
        assert!(!original.handles(&EventType::RefundSucceeded));
        let debug = format!("{grown:?}");
        assert!(
            debug.contains("before_each: true, on_unhandled: true"),
            "{debug}"
        );
        assert!(format!("{original:?}").contains("before_each: false, on_unhandled: false"));
    }

    #[tokio::test]
    async fn dispatched_says_the_freshness_and_why_an_event_failed() {
        let router = EventRouter::new()
            .on::<events::OrderCreated, _>(|_event| std::future::ready(Err::<(), _>("no stock")));
        let body = r#"{"id":"e1","type":"order.created","data":{"orderId":"o1"}}"#;
        let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
        let dispatched = router.dispatch(verified(raw, body)).await;
        assert_eq!(dispatched.outcome(), &Outcome::HandlerFailed);
        assert_eq!(dispatched.failure(), Some("no stock"));
        assert_eq!(dispatched.freshness(), Some(&Freshness::Untracked));
        assert_eq!(dispatched.into_outcome(), Outcome::HandlerFailed);
    }

    #[tokio::test]
    async fn a_failure_says_what_the_handlers_error_came_from() {
        /// An error with a cause, shown or not in its own message.
        #[derive(Debug)]
        struct Wrapped(&'static str, std::io::Error);
        impl fmt::Display for Wrapped {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.1)
            }
        }
        let cause = || std::io::Error::other("violates foreign key constraint");
        let body = r#"{"id":"e1","type":"order.created","data":{"orderId":"o1"}}"#;
        for (message, expected) in [
            ("db error", "db error: violates foreign key constraint"),
            // A message that already ends with its cause's is not repeated.
            (
                "commit: violates foreign key constraint",
                "commit: violates foreign key constraint",
            ),
        ] {
            let router = EventRouter::new().on::<events::OrderCreated, _>(move |_event| {
                std::future::ready(Err::<(), _>(Wrapped(message, cause())))
            });
            let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
            let dispatched = router.dispatch(verified(raw, body)).await;
            assert_eq!(dispatched.failure(), Some(expected));
        }
    }

    #[test]
    fn on_every_type_registers_every_known_type() {
        let router = EventRouter::new().on_every_type(Record::default());
        assert!(EventType::ALL.iter().all(|t| router.handles(t)));
        assert!(!router.handles(&EventType::from("wallet.topped_up")));
    }

    #[tokio::test]
    async fn on_every_type_decodes_tracks_freshness_and_yields_to_later_on() {
        let record = Record::default();
        let specific = Arc::new(Mutex::new(0));
        let counter = Arc::clone(&specific);
        let router = EventRouter::new()
            .ordering(MemoryStore::new())
            .on_every_type(record.clone())
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

    /// An `on` registered before `on_every_type` keeps its kind: the
    /// generic handler takes only the kinds without one.
    #[tokio::test]
    async fn an_on_registered_before_on_every_type_keeps_its_handler() {
        let record = Record::default();
        let specific = Arc::new(Mutex::new(0));
        let counter = Arc::clone(&specific);
        let router = EventRouter::new()
            .on::<events::RefundSucceeded, _>(move |_event| {
                *counter.lock().unwrap() += 1;
                std::future::ready(Ok::<_, Infallible>(()))
            })
            .on_every_type(record.clone());
        deliver(
            router,
            &[
                r#"{"id":"e4","type":"refund.succeeded","data":{"refundId":"rf_1"}}"#,
                r#"{"id":"e3","type":"dispute.won","created":1000,"data":{"object":{"chargeBackId":"cb_1"}}}"#,
            ],
        )
        .await;
        assert_eq!(*specific.lock().unwrap(), 1, "the earlier on ran");
        assert_eq!(
            *record.0.lock().unwrap(),
            ["dispute.won e3 dispute:cb_1 false"]
        );
    }

    /// The answer for a dispatched event is its outcome's response, with
    /// the freshness a typed handler was told (when tracked) and, only when
    /// it failed, the whole `Dispatched`; an untyped event, or one whose
    /// freshness is untracked, carries no freshness.
    #[test]
    fn a_dispatched_event_answers_with_its_outcome_and_what_it_knows() {
        let untracked = Dispatched::new(Outcome::Handled).with_freshness(Freshness::Untracked);
        assert_eq!(untracked.freshness(), Some(&Freshness::Untracked));
        let response = untracked.into_response(http::HeaderMap::new(), http::Extensions::new());
        assert!(response.extensions().get::<Freshness>().is_none());

        let handled = Dispatched::new(Outcome::Handled).with_freshness(Freshness::Fresh);
        assert_eq!(handled.freshness(), Some(&Freshness::Fresh));
        let response = handled.into_response(http::HeaderMap::new(), http::Extensions::new());
        assert_eq!(response.status(), 200);
        assert_eq!(response.body(), Outcome::Handled.to_response().body());
        assert_eq!(Outcome::of(&response), Some(&Outcome::Handled));
        assert_eq!(
            response.extensions().get::<Freshness>(),
            Some(&Freshness::Fresh)
        );
        assert!(response.extensions().get::<Dispatched>().is_none());

        let failed = Dispatched::new(Outcome::HandlerFailed).failed("no".to_owned());
        assert_eq!(failed.freshness(), None);
        let response = failed
            .clone()
            .into_response(http::HeaderMap::new(), http::Extensions::new());
        assert_eq!(response.status(), 500);
        assert_eq!(Outcome::of(&response), Some(&Outcome::HandlerFailed));
        assert!(response.extensions().get::<Freshness>().is_none());
        assert_eq!(response.extensions().get::<Dispatched>(), Some(&failed));
    }
}
