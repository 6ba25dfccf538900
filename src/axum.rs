//! axum extractors for verified Clink events (feature `axum`).
//!
//! Put [`ClinkLayer`](crate::ClinkLayer) on the route, then take the event in
//! the handler as [`ClinkEvent<T>`] (data decoded into `T`) or
//! [`RawClinkEvent`] (envelope read, data raw):
//!
//! ```
//! use axum::{routing::post, Router};
//! use clink_webhooks::axum::ClinkEvent;
//! use clink_webhooks::event::Order;
//! use clink_webhooks::{ClinkLayer, Verifier};
//!
//! async fn order_webhook(ClinkEvent(event): ClinkEvent<Order>) -> &'static str {
//!     tracing::info!(order_id = ?event.data.order_id, "order event");
//!     "ok"
//! }
//!
//! let app: Router = Router::new().route(
//!     "/webhooks/clink",
//!     post(order_webhook).layer(ClinkLayer::new(Verifier::new("whsec_test").unwrap())),
//! );
//! ```
//!
//! A whole [`EventRouter`](crate::EventRouter) mounts with `route_service`:
//!
//! ```
//! use axum::Router;
//! use clink_webhooks::{ClinkLayer, EventRouter, Verifier};
//! use tower::Layer;
//!
//! let service = ClinkLayer::new(Verifier::new("whsec_test").unwrap()).layer(EventRouter::new());
//! let app: Router = Router::new().route_service("/webhooks/clink", service);
//! ```

use std::fmt;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;
use serde::de::DeserializeOwned;

use crate::event::{DecodeError, Event, EventType, RawEvent, Resource};
use crate::layer::{Rejection, RejectionKind, VerifiedEvent};

/// Extracts the verified event with its data decoded into `T`.
///
/// A family type such as [`Order`](crate::event::Order) only takes events of
/// its family (`order.*`); any other event is acknowledged with `200`
/// without running the handler, and logged, as an event type nobody handles.
/// Use [`RawClinkEvent`] or an [`EventRouter`](crate::EventRouter) on an
/// endpoint that receives several families.
#[derive(Debug, Clone)]
pub struct ClinkEvent<T>(pub Event<T>);

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
    /// The event's data does not fit the requested type: answered `500`, so
    /// the delivery is retried once the handler is fixed.
    Undecodable(DecodeError),
    /// The event belongs to another family than the requested type
    /// (a `refund.*` event for `ClinkEvent<Order>`): acknowledged with `200`
    /// without running the handler, like an event type nobody handles.
    OtherFamily(EventType),
}

impl ClinkEventRejection {
    /// The status this rejection answers with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::OtherFamily(_) => StatusCode::OK,
            Self::MissingLayer | Self::Undecodable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The text of the response body.
    #[must_use]
    pub fn body_text(&self) -> String {
        match self {
            Self::MissingLayer => "the webhook route is not behind ClinkLayer".to_owned(),
            Self::Undecodable(_) => {
                "the event's data did not decode into the handler's type".to_owned()
            }
            Self::OtherFamily(_) => "no handler for this event type here".to_owned(),
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
            Self::OtherFamily(event_type) => write!(
                f,
                "a {event_type} event reached a handler for another family; acknowledged without handling"
            ),
        }
    }
}

impl std::error::Error for ClinkEventRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::MissingLayer | Self::OtherFamily(_) => None,
            Self::Undecodable(error) => Some(error),
        }
    }
}

impl IntoResponse for ClinkEventRejection {
    fn into_response(self) -> Response {
        if let Self::OtherFamily(_) = self {
            tracing::warn!(error = %self, "clink event not handled");
            return crate::layer::ok_response().map(axum::body::Body::from);
        }
        tracing::error!(error = %self, "clink event extraction failed");
        let mut response = Rejection::new(RejectionKind::HandlerFailed)
            .to_response()
            .map(axum::body::Body::from);
        *response.status_mut() = self.status();
        response
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        self.to_response().map(axum::body::Body::from)
    }
}

fn verified(parts: &Parts) -> Result<&VerifiedEvent, ClinkEventRejection> {
    parts
        .extensions
        .get::<VerifiedEvent>()
        .ok_or(ClinkEventRejection::MissingLayer)
}

impl<T, S> FromRequestParts<S> for ClinkEvent<T>
where
    T: DeserializeOwned + Resource + Send,
    S: Send + Sync,
{
    type Rejection = ClinkEventRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let event = verified(parts)?.event();
        if let Some(family) = T::FAMILY {
            if event.event_type().family() != family {
                return Err(ClinkEventRejection::OtherFamily(event.event_type().clone()));
            }
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
