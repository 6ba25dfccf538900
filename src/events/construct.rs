//! [`Verifier::construct_event`]: a delivery's two header values and raw
//! body in, a verified [`AnyEvent`] out, refused for the same reasons as by
//! the [layer](crate::ClinkLayer), with an [`EventError`] (but for data that
//! does not decode, which the layer reads only for the types a handler
//! takes).

use std::fmt;
use std::time::SystemTime;

use http::StatusCode;

use super::{has_invisible, AnyEvent, DecodeError, EnvelopeError, RawEvent};
use crate::signature::{Verifier, VerifyError};

/// The longest event id [`Verifier::construct_event`] accepts, in bytes: the
/// longest the layer can store as an idempotency key with its default key
/// prefix and one verifier (`clink::{id}` in at most 1024 bytes, the stores'
/// `MAX_KEY_LEN`). The integration tests hold the two together.
const MAX_EVENT_ID_LEN: usize = 1024 - "clink::".len();

impl Verifier {
    /// Verifies a delivery against the system clock and returns its event,
    /// typed: the one call a receiver without tower needs (a queue consumer,
    /// a serverless function, another framework).
    ///
    /// `timestamp` and `signature` are the `X-Clink-Timestamp` and
    /// `X-Clink-Signature` header values; `body` is the raw request body,
    /// byte for byte as received. In order, as the
    /// [layer](crate::ClinkLayer) does:
    ///
    /// 1. the signature is checked exactly as by [`verify`](Self::verify);
    /// 2. the envelope is read as by [`RawEvent::from_slice`];
    /// 3. an id with a character that does not print as itself
    ///    ([`is_invisible`](super::is_invisible): a line break, a terminal
    ///    escape, NUL, a zero width space, a right-to-left override, a line
    ///    separator) or longer than 1017 bytes is refused, as the layer
    ///    refuses it rather than carry it into logs or a store;
    /// 4. the data is decoded into the variant of [`AnyEvent`] for its type
    ///    ([`AnyEvent::from_raw`]); a type this crate does not know is
    ///    [`AnyEvent::Unknown`], never an error.
    ///
    /// Every known type's data is decoded, where the layer decodes only
    /// the types a handler takes (and answers `200` for the others). A
    /// type your receiver does not handle whose data does not decode is
    /// [`EventError::Decode`], whose `500` would have Clink retry it for a
    /// day for nothing: answer `200` for it, as the layer does (its
    /// [`DecodeError::event_type`] says which type it is; the
    /// `verify_only` example shows how).
    ///
    /// It does not deduplicate: Clink retries a delivery until it gets a
    /// `2xx`, so keep the [`id`](AnyEvent::id)s you have handled (an
    /// [`IdempotencyStore`](crate::IdempotencyStore) does this with a lease).
    /// To know which signing key matched, call [`verify`](Self::verify),
    /// [`RawEvent::from_slice`] and [`AnyEvent::from_raw`] yourself.
    ///
    /// ```
    /// use clink_webhooks::events::AnyEvent;
    /// use clink_webhooks::{sign, Timestamp, Verifier};
    ///
    /// let verifier = Verifier::new("whsec_test_123")?;
    /// // What arrives: two header values and the raw body.
    /// let body = br#"{"id":"evt_1","type":"refund.succeeded","data":{"refundId":"re_1","orderId":"ord_1"}}"#;
    /// let timestamp = Timestamp::now().as_millis().to_string();
    /// let signature = sign("whsec_test_123", &timestamp, body);
    ///
    /// match verifier.construct_event(&timestamp, &signature, body)? {
    ///     AnyEvent::RefundSucceeded(event) => assert_eq!(event.data.refund_id.as_deref(), Some("re_1")),
    ///     other => panic!("unexpected {}", other.event_type()),
    /// }
    ///
    /// // A changed body is refused with the layer's status and code.
    /// let error = verifier
    ///     .construct_event(&timestamp, &signature, br#"{"id":"evt_1","type":"refund.failed"}"#)
    ///     .unwrap_err();
    /// assert_eq!(error.status(), http::StatusCode::UNAUTHORIZED);
    /// assert_eq!(error.code(), "signature_mismatch");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`EventError`], the first of the steps above that fails; its
    /// [`status`](EventError::status) is the one to answer with.
    pub fn construct_event(
        &self, timestamp: &str, signature: &str, body: &[u8],
    ) -> Result<AnyEvent, EventError> {
        self.construct_event_at(timestamp, signature, body, SystemTime::now())
    }

    /// [`construct_event`](Self::construct_event) with the clock reading
    /// given, for tests and replays.
    ///
    /// # Errors
    ///
    /// As [`construct_event`](Self::construct_event).
    pub fn construct_event_at(
        &self, timestamp: &str, signature: &str, body: &[u8], now: SystemTime,
    ) -> Result<AnyEvent, EventError> {
        self.verify_at(timestamp, signature, body, now)
            .map_err(EventError::Verify)?;
        let raw = RawEvent::from_slice(body).map_err(EventError::Envelope)?;
        if raw.id().len() > MAX_EVENT_ID_LEN || has_invisible(raw.id()) {
            return Err(EventError::InvalidEventId);
        }
        AnyEvent::from_raw(&raw).map_err(EventError::Decode)
    }
}

/// Why [`Verifier::construct_event`] refused a delivery.
///
/// [`status`](Self::status) is the HTTP status to answer with and
/// [`code`](Self::code) a short stable code: both the ones the
/// [layer](crate::ClinkLayer) answers the same delivery with (its
/// [`Outcome`](crate::Outcome)), so a receiver without tower behaves as one
/// with it. The message says what happened and what to check; it never holds
/// a signing secret, but may quote values from the body, so log it rather
/// than send it back (send the code).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventError {
    /// The signature headers or the signature did not check out (`400` when
    /// malformed, else `401`): nothing in the body may be trusted or used.
    Verify(VerifyError),
    /// The body is authentic but not a Clink event envelope (`400`).
    Envelope(EnvelopeError),
    /// The event id contains a character that does not print as itself
    /// ([`is_invisible`](super::is_invisible): a control, format or
    /// separator character), or is longer than the layer can store (`400`).
    InvalidEventId,
    /// The event's data did not decode into the type this crate has for it
    /// (`500`, so that Clink retries it, as the layer does for data a
    /// handler cannot read). For a type your receiver does not handle,
    /// answer `200` instead, as the layer does: see
    /// [`Verifier::construct_event`].
    Decode(DecodeError),
}

impl EventError {
    /// A short stable code, e.g. `signature_mismatch`: the code of the
    /// layer's [`Outcome`](crate::Outcome) for the same delivery. For
    /// [`Verify`](Self::Verify) it is the [`VerifyErrorKind::code`](crate::VerifyErrorKind::code),
    /// for [`Envelope`](Self::Envelope) the [`EnvelopeError::code`],
    /// `invalid_event_id`, and `undecodable` for [`Decode`](Self::Decode)
    /// (the layer's answer when data does not decode and no
    /// [`on_undecodable`](crate::EventRouter::on_undecodable) hook takes it).
    ///
    /// A signature made with a key past its expiry
    /// ([`VerifyErrorKind::ExpiredKey`](crate::VerifyErrorKind::ExpiredKey))
    /// is `signature_mismatch` here, as the layer answers it, so that
    /// whoever holds an old secret does not learn that it was one; the
    /// error itself (its `Display`, and the [`VerifyError`]'s kind, whose
    /// code is `expired_key`) tells the operator's logs.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Verify(error) if error.kind() == crate::VerifyErrorKind::ExpiredKey => {
                crate::VerifyErrorKind::SignatureMismatch.code()
            }
            Self::Verify(error) => error.kind().code(),
            Self::Envelope(error) => error.code(),
            Self::InvalidEventId => "invalid_event_id",
            Self::Decode(_) => "undecodable",
        }
    }

    /// The status to answer Clink with, as the layer does: `400` for a
    /// malformed request, envelope or id (a retry sends the same), `401` for
    /// a delivery that is not authentic, `503` when every key has expired
    /// (the receiver's configuration: retried once a current key is set),
    /// `500` for data that did not decode (retried, so that a fixed
    /// receiver handles it).
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Verify(error) if error.kind().is_malformed_request() => StatusCode::BAD_REQUEST,
            Self::Verify(error) if error.kind().is_receiver_fault() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Verify(_) => StatusCode::UNAUTHORIZED,
            Self::Envelope(_) | Self::InvalidEventId => StatusCode::BAD_REQUEST,
            Self::Decode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Already says what to check.
            Self::Verify(error) => fmt::Display::fmt(error, f),
            Self::Envelope(error) => write!(
                f,
                "{error}; the delivery is authentic, so the sender put this body together wrongly: answer 400"
            ),
            Self::InvalidEventId => write!(
                f,
                "the event id contains a control, format or separator character, or is longer than {MAX_EVENT_ID_LEN} bytes, so it can be neither logged nor deduplicated safely: answer 400"
            ),
            Self::Decode(error) => write!(
                f,
                "{error}; answer 500 so that Clink retries it, and check whether a newer clink-webhooks reads this data"
            ),
        }
    }
}

impl std::error::Error for EventError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Verify(error) => Some(error),
            Self::Envelope(error) => Some(error),
            Self::InvalidEventId => None,
            Self::Decode(error) => Some(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::signature::{sign, VerifyErrorKind};
    use crate::EventType;

    const SECRET: &str = "whsec_construct";
    const TS: &str = "1736942400000";

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_736_942_400_000)
    }

    /// `body` signed at [`TS`] and constructed at [`now`].
    fn construct(body: &[u8]) -> Result<AnyEvent, EventError> {
        let signature = sign(SECRET, TS, body);
        Verifier::new(SECRET)
            .unwrap()
            .construct_event_at(TS, &signature, body, now())
    }

    #[test]
    fn a_known_type_decodes_into_its_variant() {
        let body =
            br#"{"id":"evt_1","type":"order.succeeded","created":1736942400000,"livemode":true,
                       "data":{"object":{"orderId":"ord_1","amountTotal":19.99}}}"#;
        let event = construct(body).unwrap();
        assert_eq!(event.id(), "evt_1");
        assert_eq!(event.event_type(), &EventType::OrderSucceeded);
        assert_eq!(
            event.created().map(crate::Timestamp::as_millis),
            Some(1_736_942_400_000)
        );
        assert_eq!(event.livemode(), Some(true));
        assert_eq!(event.account(), None);
        assert_eq!(event.object_key().unwrap().to_string(), "order:ord_1");
        let AnyEvent::OrderSucceeded(order) = event else {
            panic!("not OrderSucceeded: {event:?}");
        };
        assert_eq!(order.data.amount_total, Some("19.99".parse().unwrap()));
    }

    #[test]
    fn an_unknown_type_is_unknown_with_its_envelope() {
        let body = br#"{"id":"evt_2","type":"wallet.topped_up","data":{"walletId":"w_1"}}"#;
        let event = construct(body).unwrap();
        assert_eq!(
            event.event_type(),
            &EventType::Unknown("wallet.topped_up".into())
        );
        assert_eq!(event.object_key().unwrap().to_string(), "wallet:w_1");
        let AnyEvent::Unknown(raw) = event else {
            panic!("not Unknown: {event:?}");
        };
        assert_eq!(raw.id(), "evt_2");
        assert_eq!(raw.body().as_ref(), body);
    }

    #[test]
    fn each_step_refuses_with_its_code_and_status() {
        let verifier = Verifier::new(SECRET).unwrap();
        let body = br#"{"id":"evt_1","type":"order.succeeded"}"#;
        let error = verifier
            .construct_event_at(TS, &sign("whsec_other", TS, body), body, now())
            .unwrap_err();
        assert_eq!(
            error,
            EventError::Verify(VerifyError::new(VerifyErrorKind::SignatureMismatch))
        );
        assert_eq!(
            (error.code(), error.status()),
            ("signature_mismatch", StatusCode::UNAUTHORIZED)
        );
        // A key past its expiry is answered as a mismatch: the holder of
        // an old secret does not learn that it was one. Its kind says it.
        let rotated = Verifier::new(SECRET)
            .unwrap()
            .add_key(crate::SigningKey::new("whsec_old").unwrap())
            .expire_older_keys_at(now() - Duration::from_secs(1));
        let error = rotated
            .construct_event_at(TS, &sign("whsec_old", TS, body), body, now())
            .unwrap_err();
        assert_eq!(
            error,
            EventError::Verify(VerifyError::new(VerifyErrorKind::ExpiredKey))
        );
        assert_eq!(
            (error.code(), error.status()),
            ("signature_mismatch", StatusCode::UNAUTHORIZED)
        );
        let error = verifier
            .construct_event_at("soon", &sign(SECRET, "soon", body), body, now())
            .unwrap_err();
        assert_eq!(
            (error.code(), error.status()),
            ("malformed_timestamp", StatusCode::BAD_REQUEST)
        );

        let error = construct(br#"{"type":"order.succeeded"}"#).unwrap_err();
        assert_eq!(error, EventError::Envelope(EnvelopeError::MissingId));
        assert_eq!(
            (error.code(), error.status()),
            ("missing_event_id", StatusCode::BAD_REQUEST)
        );

        let error = construct(br#"{"id":"evt_\u001b[31m","type":"order.succeeded"}"#).unwrap_err();
        assert_eq!(error, EventError::InvalidEventId);
        assert_eq!(
            (error.code(), error.status()),
            ("invalid_event_id", StatusCode::BAD_REQUEST)
        );

        let error = construct(br#"{"id":"evt_3","type":"order.succeeded","data":{"orderId":7}}"#)
            .unwrap_err();
        let EventError::Decode(decode) = &error else {
            panic!("not Decode: {error:?}");
        };
        assert_eq!(decode.path(), "orderId");
        assert_eq!(
            (error.code(), error.status()),
            ("undecodable", StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert!(std::error::Error::source(&error).is_some());
    }

    #[test]
    fn an_id_is_refused_past_the_longest_key_or_with_a_control_character() {
        let body = |id: &str| format!(r#"{{"id":"{id}","type":"order.created","data":{{}}}}"#);
        let longest = "e".repeat(MAX_EVENT_ID_LEN);
        // The longest id is the longest a store keeps (1024 bytes, the
        // stores' `MAX_KEY_LEN`) with the layer's default prefix and one
        // verifier; the integration tests check it against the constant.
        assert_eq!(format!("clink::{longest}").len(), 1024);
        assert_eq!(construct(body(&longest).as_bytes()).unwrap().id(), longest);
        assert_eq!(
            construct(body(&format!("{longest}e")).as_bytes()).unwrap_err(),
            EventError::InvalidEventId
        );
        for id in [
            r"evt\n1",
            r"evt\u00001",
            r"evt\u007f",
            r"evt\u0085",
            r"evt\u2028",
            r"evt\u202e1",
            r"evt\u200b",
            "evt\u{2029}",
            "evt\u{feff}",
        ] {
            assert_eq!(
                construct(body(id).as_bytes()).unwrap_err(),
                EventError::InvalidEventId,
                "{id}"
            );
        }
        // Printable text beyond ASCII is an id like any other.
        assert_eq!(construct(body("évt_1").as_bytes()).unwrap().id(), "évt_1");
    }

    #[test]
    fn messages_say_what_to_do_and_never_hold_the_secret() {
        let body = br#"{"id":"evt_1","type":"order.succeeded"}"#;
        let errors = [
            Verifier::new(SECRET)
                .unwrap()
                .construct_event_at(TS, &sign("whsec_other", TS, body), body, now())
                .unwrap_err(),
            construct(b"[]").unwrap_err(),
            construct(br#"{"id":"a\tb","type":"x"}"#).unwrap_err(),
            construct(br#"{"id":"e","type":"order.failed","data":{"orderId":[]}}"#).unwrap_err(),
        ];
        let messages: std::collections::HashSet<_> =
            errors.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), errors.len());
        for message in &messages {
            assert!(!message.contains(SECRET), "{message}");
            assert!(
                message.contains("check") || message.contains("answer"),
                "{message}"
            );
        }
    }
}
