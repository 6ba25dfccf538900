//! Why the layer answered a delivery itself, and the response it sends.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::event::EnvelopeError;
use crate::idempotency::StoreErrorKind;
use crate::signature::VerifyErrorKind;

/// The reason a delivery did not reach, or did not succeed in, the inner service.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// The request was not a `POST` (405).
    MethodNotAllowed,
    /// The signature headers or signature did not check out (400 or 401).
    Verify(VerifyErrorKind),
    /// The body is larger than the layer's limit (413).
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read from the connection (400).
    BodyUnreadable,
    /// The body did not arrive within the layer's body timeout (408).
    BodyTimeout,
    /// The verified body is not a Clink event envelope (400).
    InvalidEnvelope(EnvelopeError),
    /// The event id cannot be stored as an idempotency key: over
    /// [`MAX_KEY_LEN`](crate::idempotency::MAX_KEY_LEN) bytes with its
    /// prefix, or containing NUL (400).
    UnstorableEventId,
    /// Another delivery of the same event is being handled (409).
    InFlight {
        /// When to try again.
        retry_after: Duration,
    },
    /// The idempotency store could not be asked (503).
    StoreUnavailable(StoreErrorKind),
    /// The handler returned an error or a non-success status (500).
    HandlerFailed,
    /// The handler panicked (500).
    HandlerPanicked,
    /// The handler did not finish within the layer's handler timeout (500).
    HandlerTimeout,
}

/// A response the layer produced itself, with its typed reason.
///
/// It is put into the response extensions, so outer layers and tests can
/// read why a delivery was refused:
///
/// ```
/// use clink_webhooks::layer::{Rejection, RejectionKind};
/// use clink_webhooks::signature::VerifyErrorKind;
///
/// let rejection = Rejection::new(RejectionKind::Verify(VerifyErrorKind::SignatureMismatch));
/// assert_eq!(rejection.status(), http::StatusCode::UNAUTHORIZED);
/// assert_eq!(rejection.code(), "signature_mismatch");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    kind: RejectionKind,
}

impl Rejection {
    /// A rejection of `kind`.
    #[must_use]
    pub fn new(kind: RejectionKind) -> Self {
        Self { kind }
    }

    /// Why.
    #[must_use]
    pub fn kind(&self) -> &RejectionKind {
        &self.kind
    }

    /// The status the sender gets.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match &self.kind {
            RejectionKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RejectionKind::Verify(kind) if kind.is_malformed_request() => StatusCode::BAD_REQUEST,
            RejectionKind::Verify(_) => StatusCode::UNAUTHORIZED,
            RejectionKind::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RejectionKind::BodyUnreadable
            | RejectionKind::InvalidEnvelope(_)
            | RejectionKind::UnstorableEventId => StatusCode::BAD_REQUEST,
            RejectionKind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            RejectionKind::InFlight { .. } => StatusCode::CONFLICT,
            RejectionKind::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RejectionKind::HandlerFailed
            | RejectionKind::HandlerPanicked
            | RejectionKind::HandlerTimeout => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short stable code, the `error` field of the response body.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match &self.kind {
            RejectionKind::MethodNotAllowed => "method_not_allowed",
            RejectionKind::Verify(kind) => kind.code(),
            RejectionKind::BodyTooLarge { .. } => "body_too_large",
            RejectionKind::BodyUnreadable => "body_unreadable",
            RejectionKind::BodyTimeout => "body_timeout",
            RejectionKind::InvalidEnvelope(e) => e.code(),
            RejectionKind::UnstorableEventId => "invalid_event_id",
            RejectionKind::InFlight { .. } => "in_flight",
            RejectionKind::StoreUnavailable(_) => "store_unavailable",
            RejectionKind::HandlerFailed => "handler_failed",
            RejectionKind::HandlerPanicked => "handler_panicked",
            RejectionKind::HandlerTimeout => "handler_timeout",
        }
    }

    /// Seconds for `Retry-After`, where the sender should come back.
    fn retry_after_secs(&self) -> Option<u64> {
        match &self.kind {
            RejectionKind::InFlight { retry_after } => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
                    .map(|s| s.max(1))
            }
            RejectionKind::StoreUnavailable(_) => Some(STORE_RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// The response: the status, `{"error": code, "message": ...}` and this
    /// rejection in the extensions.
    #[must_use]
    pub fn to_response(&self) -> Response<Bytes> {
        json_response(self.status(), self.code(), &self.to_string(), |builder| {
            let builder = match self.retry_after_secs() {
                Some(secs) => builder.header(header::RETRY_AFTER, secs),
                None => builder,
            };
            match self.kind {
                RejectionKind::MethodNotAllowed => builder.header(header::ALLOW, "POST"),
                _ => builder,
            }
        })
        .map(|mut response| {
            response.extensions_mut().insert(self.clone());
            response
        })
        .unwrap_or_else(|| fallback_response(self.status()))
    }
}

const STORE_RETRY_AFTER_SECS: u64 = 5;

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            RejectionKind::MethodNotAllowed => f.write_str("Clink deliveries are POST requests"),
            RejectionKind::Verify(kind) => {
                // The kind alone carries the message; offsets are logged, not sent.
                fmt::Display::fmt(&crate::signature::VerifyError::new(*kind), f)
            }
            RejectionKind::BodyTooLarge { limit } => {
                write!(f, "the body is larger than this endpoint's {limit}-byte limit")
            }
            RejectionKind::BodyUnreadable => f.write_str("the request body could not be read"),
            RejectionKind::BodyTimeout => f.write_str("the request body did not arrive in time"),
            RejectionKind::InvalidEnvelope(e) => fmt::Display::fmt(e, f),
            RejectionKind::UnstorableEventId => f.write_str(
                "the event id is too long or contains NUL, so it cannot be deduplicated",
            ),
            RejectionKind::InFlight { .. } => f.write_str(
                "this event is being handled by another delivery; retry after the Retry-After delay",
            ),
            RejectionKind::StoreUnavailable(_) => f.write_str(
                "the idempotency store is unavailable, so the event was not handled; retry later",
            ),
            RejectionKind::HandlerFailed => {
                f.write_str("the handler for this event failed; it will run again on retry")
            }
            RejectionKind::HandlerPanicked => {
                f.write_str("the handler for this event panicked; it will run again on retry")
            }
            RejectionKind::HandlerTimeout => f.write_str(
                "the handler for this event did not finish in time; it will run again on retry",
            ),
        }
    }
}

impl std::error::Error for Rejection {}

/// Marks a `200` the layer sent for an event that was already handled, without
/// calling the inner service. Found in the response extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate;

pub(crate) fn duplicate_response() -> Response<Bytes> {
    json_status_response(StatusCode::OK, r#"{"ok":true,"duplicate":true}"#).map_or_else(
        || fallback_response(StatusCode::OK),
        |mut response| {
            response.extensions_mut().insert(Duplicate);
            response
        },
    )
}

/// The `200` the router sends for a handled (or deliberately ignored) event.
pub(crate) fn ok_response() -> Response<Bytes> {
    json_status_response(StatusCode::OK, r#"{"ok":true}"#)
        .unwrap_or_else(|| fallback_response(StatusCode::OK))
}

fn json_status_response(status: StatusCode, body: &'static str) -> Option<Response<Bytes>> {
    Response::builder()
        .status(status)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .body(Bytes::from_static(body.as_bytes()))
        .ok()
}

fn json_response(
    status: StatusCode,
    code: &str,
    message: &str,
    extra: impl FnOnce(http::response::Builder) -> http::response::Builder,
) -> Option<Response<Bytes>> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    extra(Response::builder().status(status).header(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    ))
    .body(Bytes::from(body))
    .ok()
}

fn fallback_response(status: StatusCode) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_table() {
        let cases = [
            (RejectionKind::MethodNotAllowed, 405),
            (
                RejectionKind::Verify(VerifyErrorKind::MissingSignature),
                400,
            ),
            (
                RejectionKind::Verify(VerifyErrorKind::UnsupportedSignType),
                400,
            ),
            (
                RejectionKind::Verify(VerifyErrorKind::SignatureMismatch),
                401,
            ),
            (RejectionKind::Verify(VerifyErrorKind::TooOld), 401),
            (RejectionKind::Verify(VerifyErrorKind::NoActiveKey), 401),
            (RejectionKind::BodyTooLarge { limit: 1 }, 413),
            (
                RejectionKind::InvalidEnvelope(EnvelopeError::MissingId),
                400,
            ),
            (
                RejectionKind::InFlight {
                    retry_after: Duration::from_millis(1500),
                },
                409,
            ),
            (
                RejectionKind::StoreUnavailable(StoreErrorKind::Timeout),
                503,
            ),
            (RejectionKind::HandlerPanicked, 500),
        ];
        for (kind, status) in cases {
            let response = Rejection::new(kind.clone()).to_response();
            assert_eq!(response.status().as_u16(), status, "{kind:?}");
            assert_eq!(
                response.extensions().get::<Rejection>().unwrap().kind(),
                &kind
            );
            let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
            assert!(body["error"].is_string() && body["message"].is_string());
        }
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one_second() {
        let r = Rejection::new(RejectionKind::InFlight {
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(r.to_response().headers()[header::RETRY_AFTER], "2");
        let r = Rejection::new(RejectionKind::InFlight {
            retry_after: Duration::ZERO,
        });
        assert_eq!(r.to_response().headers()[header::RETRY_AFTER], "1");
        let r = Rejection::new(RejectionKind::StoreUnavailable(StoreErrorKind::Unavailable));
        assert!(r.to_response().headers().contains_key(header::RETRY_AFTER));
    }
}
