//! [`Outcome`]: the one list of what can happen to a delivery.
//!
//! The layer decides one `Outcome` per delivery and derives everything else
//! from it: the status and the JSON body it answers with, the `outcome`
//! field of its `tracing` events, the [`Metrics`](crate::layer::Metrics)
//! counter it bumps. It puts the `Outcome` in the response extensions, so
//! outer layers, tests and tools read what happened without parsing bodies:
//!
//! ```
//! use clink_webhooks::Outcome;
//! use clink_webhooks::signature::VerifyErrorKind;
//!
//! let outcome = Outcome::Verify(VerifyErrorKind::SignatureMismatch);
//! assert_eq!(outcome.status(), http::StatusCode::UNAUTHORIZED);
//! assert_eq!(outcome.as_str(), "signature_mismatch");
//! assert!(!outcome.is_verified());
//!
//! let response = outcome.to_response();
//! assert_eq!(response.extensions().get::<Outcome>(), Some(&outcome));
//! assert_eq!(
//!     std::str::from_utf8(response.body())?,
//!     r#"{"error":"signature_mismatch","message":"signature mismatch: no active signing key signed this body; check that the endpoint's current signing secret is configured and that the raw body reaches the verifier unchanged"}"#,
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! | outcome | status | verified | the handler ran |
//! |---|---|---|---|
//! | [`Handled`](Outcome::Handled) | the handler's `2xx` | yes | yes, and succeeded |
//! | [`Unhandled`](Outcome::Unhandled) | 200 | yes | no handler takes this type |
//! | [`Queued`](Outcome::Queued) | 200 | yes | later, by an inbox worker |
//! | [`SkippedStale`](Outcome::SkippedStale) | 200 | yes | no: a newer event was handled |
//! | [`Duplicate`](Outcome::Duplicate) | 200 | yes | no: already handled |
//! | [`MethodNotAllowed`](Outcome::MethodNotAllowed) | 405 | no | no |
//! | [`UnknownAccount`](Outcome::UnknownAccount) | 404 | no | no |
//! | [`KeysUnavailable`](Outcome::KeysUnavailable) | 503 + `Retry-After` | no | no |
//! | [`KeyLookupsLimited`](Outcome::KeyLookupsLimited) | 503 + `Retry-After` | no | no |
//! | [`Verify`](Outcome::Verify) | 400 (malformed), 401, or 503 + `Retry-After` when every key has expired | no | no |
//! | [`BodyTooLarge`](Outcome::BodyTooLarge) | 413 | no | no |
//! | [`BodyUnreadable`](Outcome::BodyUnreadable) | 400 | no | no |
//! | [`BodyTimeout`](Outcome::BodyTimeout) | 408 | no | no |
//! | [`Overloaded`](Outcome::Overloaded) | 503 + `Retry-After` | no | no |
//! | [`InvalidEnvelope`](Outcome::InvalidEnvelope) | 400 | yes | no |
//! | [`InvalidEventId`](Outcome::InvalidEventId) | 400 | yes | no |
//! | [`InFlight`](Outcome::InFlight) | 409 + `Retry-After` | yes | no: another delivery runs it |
//! | [`StoreUnavailable`](Outcome::StoreUnavailable) | 503 + `Retry-After` | yes | no |
//! | [`HandlerFailed`](Outcome::HandlerFailed) | 500 | yes | yes, and failed |
//! | [`HandlerRefused`](Outcome::HandlerRefused) | the handler's non-`2xx`; `500` in place of a `1xx`, `3xx`, `410` or `429` | yes | yes, and refused |
//! | [`HandlerPanicked`](Outcome::HandlerPanicked) | 500 | yes | yes, and panicked |
//! | [`HandlerTimeout`](Outcome::HandlerTimeout) | 500 | yes | yes, and was stopped |
//! | [`Undecodable`](Outcome::Undecodable) | 500 | yes | no: its data does not decode into the handler's type |
//! | [`DeadLettered`](Outcome::DeadLettered) | 200 | yes | no: its data does not decode, its body is no event envelope, or its id cannot be kept; kept as dead in the dead-letter inbox |
//! | [`FailedKeptDead`](Outcome::FailedKeptDead) | 200 | yes | yes, and failed for good ([`Permanent`](crate::router::Permanent)); kept as dead in the dead-letter inbox |
//!
//! A `2xx` outcome marks the event completed; any other releases its claim
//! so that Clink's retry runs the handler again. No status is ever a `3xx`,
//! `410` or `429`, which Clink could read as "stop retrying".
//!
//! One outcome is answered as another: a signature made with a key past its
//! expiry ([`VerifyErrorKind::ExpiredKey`], code `expired_key` in the logs
//! and metrics) gets the very response of a
//! [`SignatureMismatch`](VerifyErrorKind::SignatureMismatch), so that whoever
//! holds a retired secret does not learn that it was one.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::events::EnvelopeError;

/// Whether Clink could read `status` as "stop retrying" (a redirect, `410
/// Gone`, `429 Too Many Requests`), or it is no final answer at all (a
/// `1xx`): a handler's refusal with one is answered `500` instead.
pub(crate) fn stops_retries(status: StatusCode) -> bool {
    status.is_informational()
        || status.is_redirection()
        || status == StatusCode::GONE
        || status == StatusCode::TOO_MANY_REQUESTS
}
use crate::signature::{VerifyError, VerifyErrorKind};
use crate::store::StoreErrorKind;

/// What happened to one delivery. See the [module docs](self) for the table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler ran and succeeded (its `2xx` is passed through).
    Handled,
    /// Verified and acknowledged (`200`), but no handler takes this event type.
    Unhandled,
    /// Verified, written to the layer's [inbox](crate::inbox) and
    /// acknowledged (`200`); a worker runs its handler later.
    Queued,
    /// Verified and acknowledged (`200`) without running the handler, because
    /// a newer event about the same object was already handled and the router
    /// skips stale events.
    SkippedStale,
    /// Acknowledged (`200`) without running the handler: the event was
    /// already handled.
    Duplicate,
    /// The request was not a `POST` (`405`).
    MethodNotAllowed,
    /// The request names no account the layer's key source knows (`404`);
    /// nothing was read or stored.
    UnknownAccount,
    /// The key source could not say which keys the account has (`503`).
    KeysUnavailable,
    /// The key source did not look the account up, because as many lookups
    /// as it allows were already running or had run in the last second
    /// ([`KeySourceError::limited`](crate::accounts::KeySourceError::limited),
    /// `503`): a sender naming many accounts nobody has cached cannot make
    /// your backend answer for each.
    KeyLookupsLimited,
    /// The signature headers or signature did not check out (`400` when
    /// malformed, else `401`).
    Verify(VerifyErrorKind),
    /// The body is larger than the layer's limit (`413`).
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read from the connection (`400`).
    BodyUnreadable,
    /// The layer already holds as many unverified bodies (or bytes of
    /// them) as its [budget](crate::ClinkLayer::body_budget) allows, or
    /// this body, still arriving a second after it began waiting for its
    /// bytes, was ended to make room for another while the budget was full
    /// (`503`).
    Overloaded,
    /// The body did not arrive within the layer's body timeout (`408`).
    BodyTimeout,
    /// The verified body is not a Clink event envelope (`400`).
    InvalidEnvelope(EnvelopeError),
    /// The event id contains a character that does not print as itself
    /// ([`is_invisible`](crate::events::is_invisible): a control character
    /// such as a line break, a terminal escape or NUL; a format character
    /// such as a zero width space or a right-to-left override; a line or
    /// paragraph separator), or cannot be stored as an idempotency key: over
    /// [`MAX_KEY_LEN`](crate::store::MAX_KEY_LEN) bytes with its prefix (`400`).
    InvalidEventId,
    /// Another delivery of the same event is being handled (`409`).
    InFlight {
        /// When to try again.
        retry_after: Duration,
    },
    /// A store could not be asked (`503`); the handler did not run (a
    /// [`before_each`](crate::EventRouter::before_each) hook did, before the
    /// freshness store was read, and runs again on the retry).
    StoreUnavailable(StoreErrorKind),
    /// The handler returned an error, or the inner service failed (`500`).
    HandlerFailed,
    /// The handler answered a status other than `2xx`, passed through as is.
    HandlerRefused(StatusCode),
    /// The handler panicked (`500`).
    HandlerPanicked,
    /// The handler did not finish within the layer's handler timeout (`500`).
    HandlerTimeout,
    /// The event's data does not decode into the type its handler takes,
    /// and no hook or dead-letter inbox took it (`500`). Decoding is
    /// deterministic: retries fail the same way until the code changes.
    Undecodable,
    /// The event's data does not decode into the type its handler takes,
    /// the verified body is no event envelope (what is otherwise
    /// [`InvalidEnvelope`](Self::InvalidEnvelope)), or its id cannot be
    /// kept (otherwise [`InvalidEventId`](Self::InvalidEventId)); it was kept as dead in
    /// the layer's [dead-letter inbox](crate::ClinkLayer::dead_letters) and
    /// acknowledged (`200`), to be replayed after an upgrade that reads it.
    DeadLettered,
    /// The handler failed with an error no retry can mend (a
    /// [`Permanent`](crate::router::Permanent) one), and the event was kept
    /// as dead, with that error, in the layer's
    /// [dead-letter inbox](crate::ClinkLayer::dead_letters) and acknowledged
    /// (`200`), to be replayed once what it needs is mended. Without a
    /// dead-letter inbox (or when it could not keep the event), such a
    /// failure is [`HandlerFailed`](Self::HandlerFailed), and Clink retries.
    FailedKeptDead,
}

/// Seconds a `503` asks the sender to wait.
const STORE_RETRY_AFTER_SECS: u64 = 5;

/// The longest `Retry-After` sent, in seconds: a day.
const MAX_RETRY_AFTER_SECS: u64 = 86_400;

impl Outcome {
    /// The status the sender gets.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Handled
            | Self::Unhandled
            | Self::Queued
            | Self::SkippedStale
            | Self::Duplicate
            | Self::DeadLettered
            | Self::FailedKeptDead => StatusCode::OK,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnknownAccount => StatusCode::NOT_FOUND,
            Self::KeysUnavailable | Self::KeyLookupsLimited => StatusCode::SERVICE_UNAVAILABLE,
            Self::Verify(kind) if kind.is_malformed_request() => StatusCode::BAD_REQUEST,
            Self::Verify(kind) if kind.is_receiver_fault() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Verify(_) => StatusCode::UNAUTHORIZED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyUnreadable | Self::InvalidEnvelope(_) | Self::InvalidEventId => {
                StatusCode::BAD_REQUEST
            }
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::InFlight { .. } => StatusCode::CONFLICT,
            Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::HandlerRefused(status) if stops_retries(*status) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::HandlerRefused(status) => *status,
            Self::HandlerFailed
            | Self::HandlerPanicked
            | Self::HandlerTimeout
            | Self::Undecodable => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short stable code: the `error` field of a refusal's body, the
    /// `outcome` field of the layer's logs and of the CLI's output.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Unhandled => "unhandled",
            Self::Queued => "queued",
            Self::SkippedStale => "skipped_stale",
            Self::Duplicate => "duplicate",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UnknownAccount => "unknown_account",
            Self::KeysUnavailable => "keys_unavailable",
            Self::KeyLookupsLimited => "key_lookups_limited",
            Self::Verify(kind) => kind.code(),
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyUnreadable => "body_unreadable",
            Self::BodyTimeout => "body_timeout",
            Self::Overloaded => "overloaded",
            Self::InvalidEnvelope(e) => e.code(),
            Self::InvalidEventId => "invalid_event_id",
            Self::InFlight { .. } => "in_flight",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::HandlerFailed => "handler_failed",
            Self::HandlerRefused(_) => "handler_refused",
            Self::HandlerPanicked => "handler_panicked",
            Self::HandlerTimeout => "handler_timeout",
            Self::Undecodable => "undecodable",
            Self::DeadLettered => "dead_lettered",
            Self::FailedKeptDead => "failed_kept_dead",
        }
    }

    /// Whether the signature checked out: everything from the envelope on.
    #[must_use]
    pub fn is_verified(&self) -> bool {
        !matches!(
            self,
            Self::MethodNotAllowed
                | Self::UnknownAccount
                | Self::KeysUnavailable
                | Self::KeyLookupsLimited
                | Self::Verify(_)
                | Self::BodyTooLarge { .. }
                | Self::BodyUnreadable
                | Self::BodyTimeout
                | Self::Overloaded
        )
    }

    /// Whether the delivery was acknowledged (`2xx`): Clink will not send it again.
    #[must_use]
    pub fn is_acknowledged(&self) -> bool {
        self.status().is_success()
    }

    /// Whether the handler ran (and succeeded, failed, panicked or was stopped).
    #[must_use]
    pub fn handler_ran(&self) -> bool {
        matches!(
            self,
            Self::Handled
                | Self::HandlerFailed
                | Self::HandlerRefused(_)
                | Self::HandlerPanicked
                | Self::HandlerTimeout
                | Self::FailedKeptDead
        )
    }

    /// How long the sender should wait before retrying, sent as `Retry-After`.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::InFlight { retry_after } => Some(*retry_after),
            Self::StoreUnavailable(_)
            | Self::KeysUnavailable
            | Self::KeyLookupsLimited
            | Self::Overloaded => Some(Duration::from_secs(STORE_RETRY_AFTER_SECS)),
            Self::Verify(kind) if kind.is_receiver_fault() => {
                Some(Duration::from_secs(STORE_RETRY_AFTER_SECS))
            }
            _ => None,
        }
    }

    /// Whole seconds for `Retry-After`, rounded up, at least one and at
    /// most a day (a store of an app's own may answer any duration).
    fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after().map(|d| {
            d.as_secs()
                .saturating_add(u64::from(d.subsec_nanos() > 0))
                .clamp(1, MAX_RETRY_AFTER_SECS)
        })
    }

    /// The response the layer sends for this outcome: its status, a small
    /// JSON body (`{"ok":true,"outcome":..}` when acknowledged,
    /// `{"error":..,"message":..}` otherwise), `Retry-After` or `Allow` where
    /// they apply, and this outcome in the extensions. It never contains a
    /// secret or a value from the request. A signature by an expired key
    /// ([`VerifyErrorKind::ExpiredKey`]) is answered with the body of a
    /// [`SignatureMismatch`](VerifyErrorKind::SignatureMismatch); this
    /// outcome, in the extensions, still says `expired_key`.
    #[must_use]
    pub fn to_response(&self) -> Response<Bytes> {
        self.to_response_with(http::HeaderMap::new(), http::Extensions::new())
    }

    /// [`to_response`](Self::to_response) in `headers` and `extensions`,
    /// emptied first (nothing of a request's maps is ever answered), their
    /// headers and this outcome added: a service answering a request can
    /// hand the request's maps on for their room, and no map is allocated.
    pub(crate) fn to_response_with(
        &self, mut headers: http::HeaderMap, mut extensions: http::Extensions,
    ) -> Response<Bytes> {
        // Callers hand maps they emptied already; this keeps the promise
        // for any that did not, at the cost of a length check.
        if !headers.is_empty() {
            headers.clear();
        }
        if !extensions.is_empty() {
            extensions.clear();
        }
        let told = match self {
            Self::Verify(VerifyErrorKind::ExpiredKey) => {
                &Self::Verify(VerifyErrorKind::SignatureMismatch)
            }
            other => other,
        };
        let body = match told.acknowledgement() {
            Some(body) => Bytes::from_static(body.as_bytes()),
            None => {
                crate::guard::cold();
                Bytes::from(
                    serde_json::json!({ "error": told.as_str(), "message": told.to_string() })
                        .to_string(),
                )
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status();
        *response.headers_mut() = headers;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after_secs() {
            crate::guard::cold();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if *self == Self::MethodNotAllowed {
            crate::guard::cold();
            headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        *response.extensions_mut() = extensions;
        response.extensions_mut().insert(self.clone());
        response
    }

    /// The body of an acknowledged outcome, written once rather than per
    /// delivery: `{"ok":true,"outcome":..}`; `None` for exactly the outcomes
    /// that are not acknowledged (a test holds the two together).
    fn acknowledgement(&self) -> Option<&'static str> {
        match self {
            Self::Handled => Some(r#"{"ok":true,"outcome":"handled"}"#),
            Self::Unhandled => Some(r#"{"ok":true,"outcome":"unhandled"}"#),
            Self::Queued => Some(r#"{"ok":true,"outcome":"queued"}"#),
            Self::SkippedStale => Some(r#"{"ok":true,"outcome":"skipped_stale"}"#),
            Self::Duplicate => Some(r#"{"ok":true,"outcome":"duplicate"}"#),
            Self::DeadLettered => Some(r#"{"ok":true,"outcome":"dead_lettered"}"#),
            Self::FailedKeptDead => Some(r#"{"ok":true,"outcome":"failed_kept_dead"}"#),
            _ => None,
        }
    }

    /// The outcome a response carries in its extensions, if any.
    #[must_use]
    pub fn of<B>(response: &Response<B>) -> Option<&Outcome> {
        response.extensions().get::<Outcome>()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Handled => f.write_str("the event was handled"),
            Self::Unhandled => f.write_str("no handler takes this event type; acknowledged"),
            Self::Queued => f.write_str("the event was kept in the inbox; acknowledged"),
            Self::SkippedStale => f.write_str(
                "a newer event about the same object was already handled; acknowledged without running the handler",
            ),
            Self::Duplicate => f.write_str("the event was already handled; acknowledged"),
            Self::MethodNotAllowed => f.write_str("Clink deliveries are POST requests"),
            Self::UnknownAccount => f.write_str("no such account at this endpoint"),
            Self::KeysUnavailable => f.write_str(
                "the signing keys for this account could not be looked up; retry later",
            ),
            Self::KeyLookupsLimited => f.write_str(
                "the signing keys for this account were not looked up: too many lookups of \
                 uncached accounts right now; retry later",
            ),
            // The kind alone carries the message; offsets are logged, not sent.
            Self::Verify(kind) => fmt::Display::fmt(&VerifyError::new(*kind), f),
            Self::BodyTooLarge { limit } => {
                write!(f, "the body is larger than this endpoint's {limit}-byte limit")
            }
            Self::BodyUnreadable => f.write_str("the request body could not be read"),
            Self::BodyTimeout => f.write_str("the request body did not arrive in time"),
            Self::Overloaded => f.write_str(
                "this receiver is reading as many unverified deliveries as it allows; retry later",
            ),
            Self::InvalidEnvelope(e) => fmt::Display::fmt(e, f),
            Self::InvalidEventId => f.write_str(
                "the event id is too long or contains a control, format or separator character, so it cannot be deduplicated or printed",
            ),
            Self::InFlight { .. } => f.write_str(
                "this event is being handled by another delivery; retry after the Retry-After delay",
            ),
            Self::StoreUnavailable(_) => f.write_str(
                "a store the receiver needs is unavailable, so the event was not handled; retry later",
            ),
            Self::HandlerFailed => {
                f.write_str("the handler for this event failed; it will run again on retry")
            }
            Self::HandlerRefused(status) => write!(
                f,
                "the handler for this event answered {status}; it will run again on retry"
            ),
            Self::HandlerPanicked => {
                f.write_str("the handler for this event panicked; it will run again on retry")
            }
            Self::HandlerTimeout => f.write_str(
                "the handler for this event did not finish in time; it will run again on retry",
            ),
            Self::Undecodable => f.write_str(
                "the event's data does not decode into the type its handler takes; retries fail \
                 the same way until the receiver is upgraded",
            ),
            Self::DeadLettered => f.write_str(
                "the event's data does not decode into the type its handler takes, the body is \
                 no event envelope, or its id cannot be kept; it was kept as dead in the \
                 dead-letter inbox, to replay after an upgrade",
            ),
            Self::FailedKeptDead => f.write_str(
                "the handler for this event failed with an error no retry can mend; the event \
                 was kept as dead in the dead-letter inbox, to replay once that is mended",
            ),
        }
    }
}

impl std::error::Error for Outcome {}

/// Logs a handler stopped at its deadline; its outcome.
pub(crate) fn handler_timed_out(timed_out: crate::guard::TimedOut) -> Outcome {
    tracing::error!(
        timeout_ms = u64::try_from(timed_out.0.as_millis()).unwrap_or(u64::MAX),
        "clink handler timed out; releasing the event so a retry runs it"
    );
    Outcome::HandlerTimeout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_clink_could_read_as_stop_retrying_is_a_500() {
        for (handler, answered) in [
            (StatusCode::UNPROCESSABLE_ENTITY, 422),
            (StatusCode::NOT_FOUND, 404),
            (StatusCode::SERVICE_UNAVAILABLE, 503),
            (StatusCode::CONTINUE, 500),
            (StatusCode::MOVED_PERMANENTLY, 500),
            (StatusCode::NOT_MODIFIED, 500),
            (StatusCode::PERMANENT_REDIRECT, 500),
            (StatusCode::GONE, 500),
            (StatusCode::TOO_MANY_REQUESTS, 500),
        ] {
            let outcome = Outcome::HandlerRefused(handler);
            assert_eq!(outcome.status().as_u16(), answered, "{handler}");
            assert_eq!(outcome.to_response().status().as_u16(), answered);
            assert!(outcome.to_string().contains(handler.as_str()), "{outcome}");
        }
    }

    #[test]
    fn statuses_follow_the_table() {
        let cases = [
            (Outcome::Handled, 200, true),
            (Outcome::Unhandled, 200, true),
            (Outcome::Queued, 200, true),
            (Outcome::SkippedStale, 200, true),
            (Outcome::Duplicate, 200, true),
            (Outcome::MethodNotAllowed, 405, false),
            (Outcome::UnknownAccount, 404, false),
            (Outcome::KeysUnavailable, 503, false),
            (Outcome::KeyLookupsLimited, 503, false),
            (Outcome::Verify(VerifyErrorKind::ExpiredKey), 401, false),
            (
                Outcome::Verify(VerifyErrorKind::MissingSignature),
                400,
                false,
            ),
            (
                Outcome::Verify(VerifyErrorKind::UnsupportedSignType),
                400,
                false,
            ),
            (
                Outcome::Verify(VerifyErrorKind::SignatureMismatch),
                401,
                false,
            ),
            (Outcome::Verify(VerifyErrorKind::TooOld), 401, false),
            (Outcome::Verify(VerifyErrorKind::NoActiveKey), 503, false),
            (Outcome::BodyTooLarge { limit: 1 }, 413, false),
            (Outcome::BodyUnreadable, 400, false),
            (Outcome::BodyTimeout, 408, false),
            (Outcome::Overloaded, 503, false),
            (
                Outcome::InvalidEnvelope(EnvelopeError::MissingId),
                400,
                true,
            ),
            (Outcome::InvalidEventId, 400, true),
            (
                Outcome::InFlight {
                    retry_after: Duration::from_millis(1500),
                },
                409,
                true,
            ),
            (
                Outcome::StoreUnavailable(StoreErrorKind::Timeout),
                503,
                true,
            ),
            (Outcome::HandlerFailed, 500, true),
            (
                Outcome::HandlerRefused(StatusCode::UNPROCESSABLE_ENTITY),
                422,
                true,
            ),
            (Outcome::HandlerPanicked, 500, true),
            (Outcome::HandlerTimeout, 500, true),
            (Outcome::Undecodable, 500, true),
            (Outcome::DeadLettered, 200, true),
            (Outcome::FailedKeptDead, 200, true),
        ];
        let mut messages = std::collections::HashSet::new();
        let count = cases.len();
        for (outcome, status, verified) in cases {
            let ran = [
                Outcome::Handled,
                Outcome::HandlerFailed,
                Outcome::HandlerRefused(StatusCode::UNPROCESSABLE_ENTITY),
                Outcome::HandlerPanicked,
                Outcome::HandlerTimeout,
                Outcome::FailedKeptDead,
            ]
            .contains(&outcome);
            assert_eq!(outcome.handler_ran(), ran, "{outcome:?}");
            let message = outcome.to_string();
            assert!(!message.is_empty(), "{outcome:?}");
            messages.insert(message);
            let response = outcome.to_response();
            assert_eq!(response.status().as_u16(), status, "{outcome:?}");
            assert_eq!(outcome.is_verified(), verified, "{outcome:?}");
            assert_eq!(Outcome::of(&response), Some(&outcome));
            let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
            // Every acknowledged outcome has its body written once, and
            // the response holds those very bytes: nothing is formatted.
            assert_eq!(
                outcome.acknowledgement().is_some(),
                outcome.is_acknowledged(),
                "{outcome:?}"
            );
            if let Some(written) = outcome.acknowledgement() {
                let formatted = format!(r#"{{"ok":true,"outcome":"{}"}}"#, outcome.as_str());
                assert_eq!(written, formatted);
                assert_eq!(response.body().as_ptr(), written.as_ptr(), "{outcome:?}");
            }
            if outcome.is_acknowledged() {
                assert_eq!(body["ok"], true);
                assert_eq!(body["outcome"], outcome.as_str());
            } else if outcome == Outcome::Verify(VerifyErrorKind::ExpiredKey) {
                // Answered as a mismatch, to the byte.
                let mismatch = Outcome::Verify(VerifyErrorKind::SignatureMismatch).to_response();
                assert_eq!(response.body(), mismatch.body());
                assert_eq!(response.headers(), mismatch.headers());
            } else {
                assert_eq!(body["error"], outcome.as_str());
                assert!(body["message"].is_string());
            }
            assert!(!response.status().is_redirection());
            assert_ne!(status, 410);
            assert_ne!(status, 429);
        }
        // Each outcome says something of its own.
        assert_eq!(messages.len(), count, "{messages:#?}");
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one_second() {
        let in_flight = |ms| Outcome::InFlight {
            retry_after: Duration::from_millis(ms),
        };
        // However long a store of an app's own says: a day at most, and no
        // overflow.
        for long in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs(86_401),
        ] {
            let outcome = Outcome::InFlight { retry_after: long };
            assert_eq!(
                outcome.to_response().headers()[header::RETRY_AFTER],
                "86400",
                "{long:?}"
            );
        }
        assert_eq!(
            in_flight(1500).to_response().headers()[header::RETRY_AFTER],
            "2"
        );
        assert_eq!(
            in_flight(0).to_response().headers()[header::RETRY_AFTER],
            "1"
        );
        assert_eq!(
            in_flight(2000).to_response().headers()[header::RETRY_AFTER],
            "2",
            "whole seconds are not rounded up"
        );
        assert_eq!(
            in_flight(2001).to_response().headers()[header::RETRY_AFTER],
            "3"
        );
        for unavailable in [
            Outcome::StoreUnavailable(StoreErrorKind::Unavailable),
            Outcome::KeysUnavailable,
            Outcome::KeyLookupsLimited,
            Outcome::Overloaded,
        ] {
            assert_eq!(
                unavailable.to_response().headers()[header::RETRY_AFTER],
                "5"
            );
        }
        assert_eq!(
            Outcome::MethodNotAllowed.to_response().headers()[header::ALLOW],
            "POST"
        );
    }
}
