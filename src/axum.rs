//! axum extractors for verified Clink events (feature `axum`).
//!
//! Put [`ClinkLayer`](crate::ClinkLayer) on the route, then take the event in
//! the handler as [`ClinkEvent<K>`] for one event type `K` from
//! [`events`](crate::events) (data decoded into its type) or
//! [`RawClinkEvent`] (any type; envelope read, data raw):
//!
//! ```
//! use axum::{routing::post, Router};
//! use clink_webhooks::axum::{ClinkEvent, HandlerError};
//! use clink_webhooks::{events, ClinkLayer, Verifier};
//!
//! // `event` is an `Event<data::Order>`.
//! async fn order_webhook(
//!     ClinkEvent(event): ClinkEvent<events::OrderSucceeded>,
//! ) -> Result<(), HandlerError> {
//!     let order_id = event.data.order_id.ok_or("an order event without an order id")?;
//!     tracing::info!(order_id = ?order_id, "order paid");
//!     Ok(())
//! }
//!
//! let app: Router = Router::new().route(
//!     "/webhooks/clink",
//!     post(order_webhook).layer(ClinkLayer::new(Verifier::new("whsec_test").unwrap())),
//! );
//! ```
//!
//! # Warning: an error must answer an error status
//!
//! The layer marks an event completed when the handler answers `2xx`, and
//! Clink does not send it again. In axum, a handler returning
//! `Result<_, String>` (or any error type whose response is `2xx`)
//! answers `200` on `Err`: the event is acknowledged, and lost. Return
//! [`HandlerError`], which answers `500` and converts from any error with
//! `?`, so that a failed handler releases the event and Clink's retry runs
//! it again. An [`EventRouter`](crate::EventRouter) cannot make this mistake:
//! its handlers' `Err` always answers `500`.
//!
//! A whole [`EventRouter`](crate::EventRouter) mounts with `route_service`:
//!
//! ```
//! use axum::Router;
//! use clink_webhooks::{ClinkLayer, EventRouter, Verifier};
//!
//! let service = ClinkLayer::new(Verifier::new("whsec_test").unwrap()).route(EventRouter::new());
//! let app: Router = Router::new().route_service("/webhooks/clink", service);
//! ```

use std::fmt;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;

use crate::events::{DecodeError, Event, EventKind, EventType, RawEvent};
use crate::router::Dispatched;
use crate::Outcome;
use crate::VerifiedEvent;

/// Extracts the verified event of type `K` (a marker from
/// [`events`](crate::events)) with its data decoded into `K::Data`:
/// `ClinkEvent<events::OrderSucceeded>` gives an `Event<data::Order>`.
///
/// It only takes events of that exact type; any other event is acknowledged
/// with `200` without running the handler, and logged, as an event type
/// nobody handles ([`Outcome::Unhandled`]). Use [`RawClinkEvent`] or an
/// [`EventRouter`](crate::EventRouter) on an endpoint that receives several types.
pub struct ClinkEvent<K: EventKind>(pub Event<K::Data>);

impl<K: EventKind> fmt::Debug for ClinkEvent<K>
where
    K::Data: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClinkEvent").field(&self.0).finish()
    }
}

impl<K: EventKind> Clone for ClinkEvent<K>
where
    K::Data: Clone,
{
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// Extracts the verified event with its data left as raw JSON.
#[derive(Debug, Clone)]
pub struct RawClinkEvent(pub RawEvent);

/// Why [`ClinkEvent`] or [`RawClinkEvent`] could not be extracted.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClinkEventRejection {
    /// No [`ClinkLayer`](crate::ClinkLayer) ran before the handler: a
    /// configuration mistake, answered `500`.
    MissingLayer,
    /// The event's data does not fit the requested type: a poison event,
    /// answered [`Outcome::Undecodable`] (`500`) with the decode error as
    /// its [`failure`](crate::router::Dispatched::failure), so a layer with
    /// [`dead_letters`](crate::ClinkLayer::dead_letters) keeps it dead,
    /// and one without has it retried once the handler is fixed.
    Undecodable(DecodeError),
    /// The event is of another type than the requested one (a
    /// `refund.created` event for `ClinkEvent<events::OrderSucceeded>`):
    /// acknowledged with `200` without running the handler, like an event
    /// type nobody handles.
    OtherType(EventType),
}

impl ClinkEventRejection {
    /// The status this rejection answers with. The layer around it may
    /// answer otherwise: an [`Undecodable`](Self::Undecodable) event it
    /// keeps in its [`dead_letters`](crate::ClinkLayer::dead_letters) is
    /// answered `200`.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::OtherType(_) => StatusCode::OK,
            Self::MissingLayer | Self::Undecodable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short text saying what happened, for a log or a response of your
    /// own. The rejection's own response (its [`IntoResponse`]) is not this
    /// text: it is the JSON of the layer's [`Outcome`] for it
    /// (`{"ok":true,"outcome":"unhandled"}` for another type, the
    /// `undecodable` and `handler_failed` errors otherwise), which the
    /// layer reads.
    #[must_use]
    pub fn body_text(&self) -> String {
        match self {
            Self::MissingLayer => "the webhook route is not behind ClinkLayer".to_owned(),
            Self::Undecodable(_) => {
                "the event's data did not decode into the handler's type".to_owned()
            }
            Self::OtherType(_) => "no handler for this event type here".to_owned(),
        }
    }
}

impl fmt::Display for ClinkEventRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingLayer => {
                f.write_str("no verified Clink event in the request: put ClinkLayer on this route")
            }
            Self::Undecodable(error) => fmt::Display::fmt(error, f),
            // The type comes from the body: escaped wherever it is printed.
            Self::OtherType(event_type) => write!(
                f,
                "a {} event reached a handler for another event type; acknowledged without handling",
                crate::events::printable(event_type.as_str())
            ),
        }
    }
}

impl std::error::Error for ClinkEventRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::MissingLayer | Self::OtherType(_) => None,
            Self::Undecodable(error) => Some(error),
        }
    }
}

impl IntoResponse for ClinkEventRejection {
    fn into_response(self) -> Response {
        let outcome = match &self {
            Self::OtherType(_) => {
                tracing::warn!(error = ?self.to_string(), "clink event not handled");
                Outcome::Unhandled
            }
            Self::Undecodable(error) => {
                tracing::error!(error = ?self.to_string(), "clink event extraction failed");
                // The layer reads why from the response: what it keeps dead
                // says what did not decode.
                return Dispatched::undecodable(error)
                    .into_response(http::HeaderMap::new(), http::Extensions::new())
                    .map(axum::body::Body::from);
            }
            Self::MissingLayer => {
                tracing::error!(error = ?self.to_string(), "clink event extraction failed");
                Outcome::HandlerFailed
            }
        };
        outcome.into_response()
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        self.to_response().map(axum::body::Body::from)
    }
}

/// The event the layer verified for this request: one that another
/// middleware put there, said to have been verified earlier
/// ([`VerifiedEvent::earlier`]), is not taken for it.
fn verified(parts: &Parts) -> Result<&VerifiedEvent, ClinkEventRejection> {
    parts
        .extensions
        .get::<VerifiedEvent>()
        .filter(|verified| verified.checked_now())
        .ok_or(ClinkEventRejection::MissingLayer)
}

impl<K, S> FromRequestParts<S> for ClinkEvent<K>
where
    K: EventKind,
    S: Send + Sync,
{
    type Rejection = ClinkEventRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let event = verified(parts)?.event();
        if *event.event_type() != K::TYPE {
            return Err(ClinkEventRejection::OtherType(event.event_type().clone()));
        }
        event
            .decode()
            .map(ClinkEvent)
            .map_err(ClinkEventRejection::Undecodable)
    }
}

impl<S> FromRequestParts<S> for RawClinkEvent
where
    S: Send + Sync,
{
    type Rejection = ClinkEventRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(RawClinkEvent(verified(parts)?.event().clone()))
    }
}

/// The error type for axum handlers behind [`ClinkLayer`](crate::ClinkLayer):
/// converts from any error with `?` and answers `500`
/// ([`Outcome::HandlerFailed`]), so the layer releases the event and Clink's
/// retry runs the handler again. The error is logged, never sent.
///
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself,
/// so that `From` covers every error type.
pub struct HandlerError(crate::BoxError);

impl HandlerError {
    /// The error the handler returned.
    #[must_use]
    pub fn into_inner(self) -> crate::BoxError {
        self.0
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HandlerError").field(&self.0).finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<E: Into<crate::BoxError>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for HandlerError {
    fn into_response(self) -> Response {
        tracing::error!(error = ?self.0.to_string(), "clink handler failed; the delivery will be retried");
        Outcome::HandlerFailed.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event type from a body is printed escaped in the rejection's
    /// text, whoever logs it: a terminal escape or a right-to-left
    /// override in it neither colours nor reorders a log. Before, the
    /// type was written as sent.
    #[test]
    fn another_type_is_printed_escaped() {
        let rejection = ClinkEventRejection::OtherType(EventType::from("order.\u{1b}[2J\u{202e}x"));
        let text = rejection.to_string();
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}'),
            "{text:?}"
        );
        assert!(text.contains("order."), "{text:?}");
    }
}
