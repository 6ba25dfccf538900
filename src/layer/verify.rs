//! Steps 1 to 5: method, signature headers, body (bounded, hashed as it
//! streams), signature, envelope. Nothing here touches a store.

use std::pin::pin;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method};
use http_body::Body;
use http_body_util::BodyExt;
use tracing::Span;

use super::config::{Config, Keys};
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
) -> Result<VerifiedEvent, Outcome>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if parts.method != Method::POST {
        return Err(Outcome::MethodNotAllowed);
    }
    let log_verify = |error: crate::VerifyError| {
        tracing::warn!(%error, "clink delivery refused");
        Outcome::Verify(error.kind())
    };
    // The checks run in the verifier's one order: the timestamp's form, the
    // sign type and the signature's form, then the keys and the window.
    let headers = SignatureHeaders::from_headers(&parts.headers);
    let timestamp = headers.timestamp().map_err(log_verify)?;
    let signature = headers.signature().map_err(log_verify)?;
    let (verifier, account) = keys(config, parts).await?;
    let mut verification = verifier.begin(timestamp).map_err(log_verify)?;
    drop(verifier);

    let declared = declared_length(&parts.headers);
    if declared.is_some_and(|len| len > config.body_limit as u64) {
        return Err(Outcome::BodyTooLarge {
            limit: config.body_limit,
        });
    }
    let read = read_body(body, config.body_limit, declared, &mut verification);
    let bytes = tokio::time::timeout(config.body_timeout, read)
        .await
        .map_err(|_| Outcome::BodyTimeout)??;
    let verified = verification.finish_parsed(&signature).map_err(log_verify)?;
    let event = RawEvent::from_bytes(bytes).map_err(Outcome::InvalidEnvelope)?;
    Ok(VerifiedEvent::new(event, verified, account))
}

/// The verifier for this delivery, and its account when there are several.
async fn keys(
    config: &Config,
    parts: &http::request::Parts,
) -> Result<(Arc<Verifier>, Option<Arc<str>>), Outcome> {
    let (from, source) = match &config.keys {
        Keys::One(verifier) => return Ok((Arc::clone(verifier), None)),
        Keys::PerAccount { from, source } => (from, source),
    };
    let Some(account) = from.account(parts) else {
        return Err(Outcome::UnknownAccount);
    };
    match tokio::time::timeout(config.store_timeout, source.verifier(account)).await {
        Ok(Ok(Some(verifier))) => {
            Span::current().record("account", account);
            Ok((verifier, Some(Arc::from(account))))
        }
        Ok(Ok(None)) => Err(Outcome::UnknownAccount),
        Ok(Err(error)) => {
            tracing::error!(%error, account, "clink delivery: no keys for the account; answering 503");
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

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The most a declared `Content-Length` reserves up front.
const INITIAL_BUFFER_CAP: usize = 64 * 1024;

/// Reads the body up to `limit` bytes, feeding the HMAC as chunks arrive.
async fn read_body<B>(
    body: B,
    limit: usize,
    declared: Option<u64>,
    verification: &mut Verification,
) -> Result<Bytes, Outcome>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = pin!(body);
    // The common case is one chunk: keep it as is, copying only when a second arrives.
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total: usize = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            let error: BoxError = error.into();
            tracing::warn!(%error, "clink delivery: could not read the body");
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
        let chunk = data.copy_to_bytes(len);
        verification.update(&chunk);
        match (&mut first, &mut rest) {
            (None, _) => first = Some(chunk),
            (Some(head), None) => {
                // Trust the declared length only so far: the sender is not
                // authenticated yet, and the buffer grows as data arrives.
                let hint = declared
                    .and_then(|d| usize::try_from(d).ok())
                    .unwrap_or(0)
                    .min(INITIAL_BUFFER_CAP)
                    .clamp(total, limit);
                let mut buf = BytesMut::with_capacity(hint);
                buf.extend_from_slice(head);
                buf.extend_from_slice(&chunk);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&chunk),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(head), None) => head,
        (None, None) => Bytes::new(),
    })
}
