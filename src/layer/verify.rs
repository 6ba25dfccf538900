//! Steps 1 to 5: method, signature headers, body (bounded, hashed as it
//! streams), signature, envelope. Nothing here touches a store.

use std::pin::pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method};
use http_body::Body;
use http_body_util::BodyExt;
use tracing::Span;

use super::budget::Reading;
use super::config::{Config, Keys};
use super::within::within;
use crate::events::RawEvent;
use crate::signature::{SignatureHeaders, Verification, Verified, Verifier};
use crate::{BoxError, Outcome, Timestamp};

/// A verified Clink event, found in the request extensions of every request
/// the inner service receives from [`ClinkService`](super::ClinkService),
/// and in the extensions of the response to every verified delivery.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    event: RawEvent,
    verified: Verified,
}

impl VerifiedEvent {
    pub(crate) fn new(mut event: RawEvent, verified: Verified, account: Option<Arc<str>>) -> Self {
        event.set_account(account);
        Self { event, verified }
    }

    /// The merchant account the delivery was for, when the layer has a
    /// [key source](crate::accounts); `None` with a single verifier.
    #[must_use]
    pub fn account(&self) -> Option<&str> {
        self.event.account()
    }

    /// The event: envelope read, data still raw JSON.
    #[must_use]
    pub fn event(&self) -> &RawEvent {
        &self.event
    }

    /// The event, owned.
    #[must_use]
    pub fn into_event(self) -> RawEvent {
        self.event
    }

    /// Which signing key matched (see [`Verified::key_index`]).
    #[must_use]
    pub fn key_index(&self) -> usize {
        self.verified.key_index()
    }

    /// When Clink signed this delivery (`X-Clink-Timestamp`).
    #[must_use]
    pub fn signed_at(&self) -> Timestamp {
        self.verified.signed_at()
    }
}

/// Checks method, headers, body and signature, and reads the envelope.
pub(super) async fn verify<B>(
    config: &Config,
    parts: &http::request::Parts,
    body: B,
    span: Option<&Span>,
) -> Result<VerifiedEvent, Outcome>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if parts.method != Method::POST {
        return Err(Outcome::MethodNotAllowed);
    }
    let log_verify = |error: crate::VerifyError| {
        tracing::debug!(%error, "clink delivery refused");
        Outcome::Verify(error.kind())
    };
    let headers = SignatureHeaders::from_headers(&parts.headers).map_err(log_verify)?;
    let (verifier, account) = keys(config, parts, span).await?;
    let mut verification = verifier
        .begin_parsed(headers.timestamp, headers.signed_at, SystemTime::now())
        .map_err(log_verify)?;
    drop(verifier);
    let signature = headers.signature;

    let declared = declared_length(&parts.headers);
    if declared.is_some_and(|len| len > config.body_limit as u64) {
        return Err(Outcome::BodyTooLarge {
            limit: config.body_limit,
        });
    }
    let mut reading = config.budget.start().ok_or(Outcome::Overloaded)?;
    let read = read_body(
        body,
        config.body_limit,
        declared,
        &mut verification,
        &mut reading,
    );
    let bytes = within(config.body_timeout, read)
        .await
        .map_err(|_| Outcome::BodyTimeout)??;
    let verified = verification.finish_parsed(&signature).map_err(log_verify)?;
    // Verified: the body no longer counts against the budget.
    drop(reading);
    let event = RawEvent::from_bytes(bytes).map_err(Outcome::InvalidEnvelope)?;
    // An id is data, never text to print: one with a line break or a
    // terminal escape in it is refused rather than carried into logs.
    if has_control(event.id()) {
        return Err(Outcome::InvalidEventId);
    }
    Ok(VerifiedEvent::new(event, verified, account))
}

/// The verifier for this delivery, and its account when there are several.
async fn keys(
    config: &Config,
    parts: &http::request::Parts,
    span: Option<&Span>,
) -> Result<(Arc<Verifier>, Option<Arc<str>>), Outcome> {
    let (from, source) = match &config.keys {
        Keys::One(verifier) => return Ok((Arc::clone(verifier), None)),
        Keys::PerAccount { from, source } => (from, source),
    };
    let Some(account) = from.account(parts) else {
        return Err(Outcome::UnknownAccount);
    };
    match within(config.store_timeout, source.verifier(account)).await {
        Ok(Ok(Some(verifier))) => {
            if let Some(span) = span {
                span.record("account", account);
            }
            Ok((verifier, Some(Arc::from(account))))
        }
        Ok(Ok(None)) => Err(Outcome::UnknownAccount),
        Ok(Err(error)) => {
            tracing::error!(error = ?error.to_string(), account, "clink delivery: no keys for the account; answering 503");
            Err(Outcome::KeysUnavailable)
        }
        Err(_) => {
            tracing::error!(
                account,
                "clink delivery: the key source did not answer in time; answering 503"
            );
            Err(Outcome::KeysUnavailable)
        }
    }
}

/// Whether `text` holds a control character (`char::is_control`: U+0000 to
/// U+001F and U+007F to U+009F), looking at bytes while they are ASCII.
fn has_control(text: &str) -> bool {
    if text.is_ascii() {
        text.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        text.chars().any(char::is_control)
    }
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads the body up to `limit` bytes, feeding the HMAC as chunks arrive.
///
/// Every byte of buffer it allocates is first taken from the layer's
/// [budget](super::ClinkLayer::body_budget): a body with a declared
/// `Content-Length` gets one buffer of exactly that size (and a body that
/// arrives in one chunk is kept without a copy); a body of unknown length
/// grows its buffer by doubling, each growth taken from the budget first.
async fn read_body<B>(
    body: B,
    limit: usize,
    declared: Option<u64>,
    verification: &mut Verification,
    reading: &mut Reading<'_>,
) -> Result<Bytes, Outcome>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = pin!(body);
    let declared = declared.and_then(|d| usize::try_from(d).ok());
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut total: usize = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            let error: BoxError = error.into();
            tracing::debug!(%error, "clink delivery: could not read the body");
            Outcome::BodyUnreadable
        })?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let len = data.remaining();
        total = total.saturating_add(len);
        if total > limit {
            return Err(Outcome::BodyTooLarge { limit });
        }
        if first.is_none() && buf.is_none() && declared.is_none_or(|d| d == len) {
            // The whole body in one chunk (or the first of an unknown
            // length): kept as it is, no copy (`Bytes` hands itself over).
            if !reading.hold(len) {
                return Err(Outcome::Overloaded);
            }
            let chunk = data.copy_to_bytes(len);
            verification.update(&chunk);
            first = Some(chunk);
            continue;
        }
        let buffer = match &mut buf {
            Some(buffer) => buffer,
            None => {
                let head = first.take().unwrap_or_default();
                let capacity = declared.unwrap_or(2 * total).clamp(total, limit);
                if !reading.hold(capacity) {
                    return Err(Outcome::Overloaded);
                }
                let mut buffer = BytesMut::with_capacity(capacity);
                buffer.extend_from_slice(&head);
                buf.insert(buffer)
            }
        };
        if buffer.capacity() - buffer.len() < len {
            let capacity = (2 * buffer.capacity()).clamp(buffer.len() + len, limit);
            if !reading.hold(capacity) {
                return Err(Outcome::Overloaded);
            }
            buffer.reserve(capacity - buffer.len());
        }
        // Each piece is hashed and copied into the body's buffer straight
        // from the frame: one copy, whatever the frame's buffer type.
        while data.has_remaining() {
            let piece = data.chunk();
            verification.update(piece);
            buffer.extend_from_slice(piece);
            let taken = piece.len();
            data.advance(taken);
        }
    }
    Ok(match (buf, first) {
        (Some(buffer), _) => buffer.freeze(),
        (None, Some(chunk)) => chunk,
        (None, None) => Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::has_control;

    #[test]
    fn control_characters_are_found_as_char_is_control_finds_them() {
        for c in ['\0', '\n', '\u{1b}', '\u{7f}', '\u{80}', '\u{9f}'] {
            assert!(has_control(&format!("evt_{c}1")), "{c:?}");
        }
        for text in ["evt_1", "evt_é", "evt_\u{a0}", ""] {
            assert!(!has_control(text), "{text:?}");
        }
        for c in (0..=0x2ff).filter_map(char::from_u32) {
            assert_eq!(has_control(&c.to_string()), c.is_control(), "{c:?}");
        }
    }
}
