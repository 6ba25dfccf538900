//! The shapes of the functions an [`EventRouter`](super::EventRouter) runs.

use std::future::Future;

use crate::data::Resource;
use crate::events::{DecodeError, Event, RawEvent};
use crate::BoxError;
use crate::BoxFuture;

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
/// data type: see [`EventRouter::on_every_type`](super::EventRouter::on_every_type).
///
/// A closure cannot be generic, so this is a trait, whose method returns a
/// boxed future:
///
/// ```
/// use clink_webhooks::data::Resource;
/// use clink_webhooks::BoxFuture;
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
        &self, event: Event<T>,
    ) -> BoxFuture<'static, Result<(), Self::Error>>;
}

/// An async function that handles one event type with the router's state:
/// `Fn(Event<T>, S) -> impl Future<Output = Result<(), E>>`, for routers made
/// with [`EventRouter::with_state`](super::EventRouter::with_state). The
/// state is cloned for every call, as axum's `State` is.
pub trait StateHandler<T, S>:
    Fn(Event<T>, S) -> <Self as StateHandler<T, S>>::Future + Send + Sync + 'static
{
    /// The future the handler returns.
    type Future: Future<Output = Result<(), Self::Error>> + Send + 'static;
    /// The handler's error.
    type Error: Into<BoxError>;
}

impl<T, S, F, Fut, E> StateHandler<T, S> for F
where
    F: Fn(Event<T>, S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    type Future = Fut;
    type Error = E;
}

/// An async function that sees events as they came, with raw data and the
/// router's state: `Fn(RawEvent, S) -> impl Future<Output = Result<(), E>>`.
pub trait RawStateHandler<S>:
    Fn(RawEvent, S) -> <Self as RawStateHandler<S>>::Future + Send + Sync + 'static
{
    /// The future the handler returns.
    type Future: Future<Output = Result<(), Self::Error>> + Send + 'static;
    /// The handler's error.
    type Error: Into<BoxError>;
}

impl<S, F, Fut, E> RawStateHandler<S> for F
where
    F: Fn(RawEvent, S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    type Future = Fut;
    type Error = E;
}
