//! [`SignedRequest`]: a delivery signed as Clink signs it.

use std::fmt;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Uri};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::signature::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::{Event, Timestamp};

/// The path requests go to unless [`SignedRequest::uri`] says otherwise.
pub const DEFAULT_PATH: &str = "/webhooks/clink";

/// The unit of `X-Clink-Timestamp`.
///
/// Clink's own tools send milliseconds; some senders send seconds. The
/// verifier accepts both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimestampUnit {
    /// Epoch seconds, e.g. `1736942400`.
    Seconds,
    /// Epoch milliseconds, e.g. `1736942400000` (the default). A
    /// receiver tells the units apart by size, as Clink's own tools do (a
    /// value under 10^12 is seconds), so a time in milliseconds before
    /// 2001-09-09 reads as seconds far in the future: sign an old delivery
    /// with [`skew_secs`](SignedRequest::skew_secs) from now instead.
    #[default]
    Millis,
}

/// Builds a `POST` that carries a body signed as Clink signs deliveries:
/// `X-Clink-Timestamp` and `X-Clink-Signature` over the exact body bytes,
/// with `Content-Type: application/json`.
///
/// Every option has a default that makes a delivery the layer accepts:
/// signed now, in milliseconds, with no clock skew, untampered, to
/// [`DEFAULT_PATH`]. Change one to make the delivery a test case:
///
/// ```
/// use clink_webhooks::testing::{SignedRequest, TimestampUnit};
/// use clink_webhooks::{Timestamp, Verifier};
///
/// let delivery = SignedRequest::new("whsec_test", r#"{"id":"evt_1","type":"order.succeeded"}"#)
///     .timestamp(Timestamp::from_millis(1_736_942_400_000))
///     .unit(TimestampUnit::Seconds);
/// let request = delivery.build::<http_body_util::Full<bytes::Bytes>>();
/// assert_eq!(request.headers()["x-clink-timestamp"], "1736942400");
///
/// // The signature is the one the library's verifier accepts.
/// let signature = request.headers()["x-clink-signature"].to_str()?;
/// let now = Timestamp::from_millis(1_736_942_400_000).to_system_time();
/// Verifier::new("whsec_test")?.verify_at("1736942400", signature, delivery.body(), now)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The request is built anew by every [`build`](Self::build), so one
/// `SignedRequest` sent twice is a retry of the same event, signed again
/// at each send (whether Clink's retries carry a new timestamp is not in
/// its docs; a retry hours later could not pass the timestamp check
/// otherwise).
#[derive(Clone)]
pub struct SignedRequest {
    secret: Zeroizing<Vec<u8>>,
    body: Bytes,
    timestamp: Option<Timestamp>,
    unit: TimestampUnit,
    skew_ms: i64,
    tamper: bool,
    uri: Uri,
    headers: HeaderMap,
}

impl fmt::Debug for SignedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedRequest")
            .field("secret", &"[redacted]")
            .field("body_len", &self.body.len())
            .field("timestamp", &self.timestamp)
            .field("unit", &self.unit)
            .field("skew_ms", &self.skew_ms)
            .field("tamper", &self.tamper)
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl SignedRequest {
    /// A delivery of `body`, byte for byte, signed under `secret`.
    pub fn new(secret: impl AsRef<[u8]>, body: impl Into<Bytes>) -> Self {
        Self {
            secret: Zeroizing::new(secret.as_ref().to_vec()),
            body: body.into(),
            timestamp: None,
            unit: TimestampUnit::default(),
            skew_ms: 0,
            tamper: false,
            uri: Uri::from_static(DEFAULT_PATH),
            headers: HeaderMap::new(),
        }
    }

    /// A delivery of `event` serialized as JSON (`created` as RFC 3339),
    /// signed under `secret`.
    ///
    /// The body is this crate's serialization of `event`, which its typed
    /// events read back alike, not the body Clink sends: its times are RFC
    /// 3339 texts where Clink sends epoch milliseconds (`createTime`,
    /// `paymentTime`, ...), a dispute's data is not wrapped as
    /// `data.object`, a field without a value is `null`, and there is no
    /// `"object": "event"`. To test code that reads a body's JSON itself (a
    /// struct of its own, an `on_unhandled` handler, an audit of raw
    /// bodies), sign a [`fixture`](super::fixture) instead, shaped by
    /// [`Shape`](super::Shape) for the other shapes Clink's integrations
    /// report.
    ///
    /// # Errors
    ///
    /// When `T`'s `Serialize` implementation fails.
    pub fn event<T: Serialize>(
        secret: impl AsRef<[u8]>, event: &Event<T>,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(secret, serde_json::to_vec(event)?))
    }

    /// Signs under `secret` instead, e.g. the old key during a rotation or a
    /// key the endpoint does not have.
    #[must_use]
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Zeroizing::new(secret.as_ref().to_vec());
        self
    }

    /// Signs at `timestamp` rather than at the time of each [`build`](Self::build).
    #[must_use]
    pub fn timestamp(mut self, timestamp: Timestamp) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Signs at the time of each [`build`](Self::build) (the default).
    #[must_use]
    pub fn now(mut self) -> Self {
        self.timestamp = None;
        self
    }

    /// Writes `X-Clink-Timestamp` in `unit` (default milliseconds).
    #[must_use]
    pub fn unit(mut self, unit: TimestampUnit) -> Self {
        self.unit = unit;
        self
    }

    /// Moves the timestamp by `seconds`, as a sender whose clock is that far
    /// off would: positive is ahead of the receiver, negative behind. A
    /// receiver with the default 300 s tolerance refuses a skew beyond ±300;
    /// test near the edge with a margin, as time passes between
    /// [`build`](Self::build) and verification (`-300` is refused already),
    /// and in [seconds](TimestampUnit::Seconds) the timestamp is cut to the
    /// second below (up to 999 ms older).
    #[must_use]
    pub fn skew_secs(mut self, seconds: i64) -> Self {
        self.skew_ms = seconds.saturating_mul(1000);
        self
    }

    /// Changes one byte of the body after signing, as an attacker or a
    /// rewriting proxy would: the last ASCII letter or digit has its lowest
    /// bit flipped (so JSON usually stays JSON and only the signature
    /// catches it). An empty body becomes a single space.
    #[must_use]
    pub fn tamper(mut self) -> Self {
        self.tamper = true;
        self
    }

    /// Sends to `uri` (default [`DEFAULT_PATH`]): a `&str`, a `String` or a
    /// parsed [`Uri`]. Clients such as hyper's need an absolute URI, e.g.
    /// `http://127.0.0.1:3000/webhooks/clink`.
    ///
    /// # Panics
    ///
    /// When `uri` is not a valid URI: a mistake in the test itself.
    #[must_use]
    pub fn uri<U>(mut self, uri: U) -> Self
    where
        U: TryInto<Uri>,
        U::Error: std::fmt::Display,
    {
        self.uri = uri
            .try_into()
            .unwrap_or_else(|error| panic!("SignedRequest::uri: not a valid URI: {error}"));
        self
    }

    /// Adds a header, e.g. `X-Clink-SignType`. A header named like one this
    /// builder sets replaces it.
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The body as signed (before any [`tamper`](Self::tamper)).
    #[must_use]
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The `X-Clink-Timestamp` value the next [`build`](Self::build) would
    /// send: with a [fixed timestamp](Self::timestamp), exactly; otherwise
    /// as of now (the build reads the clock again).
    #[must_use]
    pub fn timestamp_header(&self) -> String {
        let at = self.timestamp.unwrap_or_else(Timestamp::now);
        let millis = at.as_millis().saturating_add(self.skew_ms);
        match self.unit {
            TimestampUnit::Millis => millis,
            TimestampUnit::Seconds => millis.div_euclid(1000),
        }
        .to_string()
    }

    /// The request: signed now (or at the [`timestamp`](Self::timestamp)
    /// given), with any body type that can be made from [`Bytes`], such as
    /// `http_body_util::Full<Bytes>` or `axum::body::Body`.
    #[must_use]
    pub fn build<B: From<Bytes>>(&self) -> Request<B> {
        let timestamp = self.timestamp_header();
        let signature = sign(&*self.secret, &timestamp, &self.body);
        let body = if self.tamper {
            tampered(&self.body)
        } else {
            self.body.clone()
        };
        let mut request = Request::new(B::from(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // Digits and lowercase hex are always valid header values.
        for (name, value) in [(TIMESTAMP_HEADER, timestamp), (SIGNATURE_HEADER, signature)] {
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.insert(name, value);
            }
        }
        for name in self.headers.keys() {
            headers.remove(name);
        }
        headers.extend(self.headers.clone());
        request
    }
}

/// `body` with the lowest bit of its last ASCII letter or digit flipped.
fn tampered(body: &Bytes) -> Bytes {
    let mut bytes = body.to_vec();
    match bytes.iter().rposition(u8::is_ascii_alphanumeric) {
        Some(i) => bytes[i] ^= 1,
        None => match bytes.last_mut() {
            Some(last) => *last ^= 1,
            None => bytes.push(b' '),
        },
    }
    Bytes::from(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::VerifyErrorKind;
    use crate::Verifier;
    use http_body_util::Full;

    const AT: i64 = 1_736_942_400_000;

    fn headers(request: &Request<Full<Bytes>>) -> (String, String) {
        let get = |name| request.headers()[name].to_str().unwrap().to_owned();
        (get(TIMESTAMP_HEADER), get(SIGNATURE_HEADER))
    }

    #[test]
    fn reference_vector_one() {
        let request = SignedRequest::new("test_webhook_signing_key", r#"{"id":"evt_test"}"#)
            .timestamp(Timestamp::from_millis(1_700_000_000_000))
            .build::<Full<Bytes>>();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), DEFAULT_PATH);
        assert_eq!(request.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            headers(&request),
            (
                "1700000000000".to_owned(),
                "e07064a60193e751786c3f5a37fe7a5dc816bba53a2cb7781d0246b035dddfda".to_owned()
            )
        );
    }

    /// Vectors 2 (a timestamp in seconds) and 3 (UTF-8 and a trailing
    /// newline, in milliseconds) of the wire format's signing vectors: the
    /// body is sent and signed byte for byte.
    #[tokio::test]
    async fn reference_vectors_two_and_three() {
        use http_body_util::BodyExt;

        let order = r#"{"id":"evt_order_succeeded_test","object":"event","created":"2025-01-15T12:00:00.000Z","type":"order.succeeded","data":{"orderId":"ord_test_123","status":"success","amountTotal":19.99}}"#;
        let session = "{\"id\":\"evt_2\",\"object\":\"event\",\"type\":\"session.complete\",\"data\":{\"sessionId\":\"sess_test_123\",\"customer\":{\"email\":\"jos\u{e9}@example.com\"}}}\n";
        assert_eq!((order.len(), session.len()), (185, 136));
        for (body, unit, timestamp, signature) in [
            (
                order,
                TimestampUnit::Seconds,
                "1736942400",
                "d61addcde690be84473aedd0abdefe1c3a5bfc070ddc3323253106b6384c75b0",
            ),
            (
                session,
                TimestampUnit::Millis,
                "1736942400000",
                "f7688e1969c9e3a8faeb9245a3b94cdd9c64ad3fca8f8ac328153267c48fbdb2",
            ),
        ] {
            let request = SignedRequest::new("whsec_test_123", body)
                .timestamp(Timestamp::from_millis(AT))
                .unit(unit)
                .build::<Full<Bytes>>();
            assert_eq!(
                headers(&request),
                (timestamp.to_owned(), signature.to_owned())
            );
            let sent = request.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(sent, body.as_bytes());
        }
    }

    #[test]
    fn units_and_skew_move_the_timestamp() {
        let base = SignedRequest::new("k", "{}").timestamp(Timestamp::from_millis(AT + 999));
        assert_eq!(base.timestamp_header(), "1736942400999");
        let base = base.unit(TimestampUnit::Seconds);
        assert_eq!(base.timestamp_header(), "1736942400");
        assert_eq!(
            base.clone().skew_secs(-301).timestamp_header(),
            "1736942099"
        );
        assert_eq!(base.skew_secs(60).timestamp_header(), "1736942460");
    }

    #[tokio::test]
    async fn a_tampered_body_differs_by_one_byte_and_fails_verification() {
        let body = r#"{"id":"evt_1","type":"order.succeeded","data":{"riskLevel":"low"}}"#;
        let delivery = SignedRequest::new("k", body).timestamp(Timestamp::from_millis(AT));
        let request = delivery.clone().tamper().build::<Full<Bytes>>();
        let (ts, sig) = headers(&request);
        let sent = http_body_util::BodyExt::collect(request.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(
            &sent[..],
            br#"{"id":"evt_1","type":"order.succeeded","data":{"riskLevel":"lov"}}"#
        );
        let verifier = Verifier::new("k").unwrap();
        let now = Timestamp::from_millis(AT).to_system_time();
        assert!(verifier.verify_at(&ts, &sig, delivery.body(), now).is_ok());
        assert_eq!(
            verifier
                .verify_at(&ts, &sig, &sent, now)
                .unwrap_err()
                .kind(),
            VerifyErrorKind::SignatureMismatch
        );
        assert_eq!(&tampered(&Bytes::new())[..], b" ");
        assert_eq!(&tampered(&Bytes::from_static(b"{}"))[..], b"{|");
    }

    #[test]
    fn extra_headers_are_added_or_replace_and_debug_hides_the_secret() {
        let delivery = SignedRequest::new("whsec_hidden", "{}")
            .header(
                HeaderName::from_static("x-clink-signtype"),
                HeaderValue::from_static("SHA256"),
            )
            .header(CONTENT_TYPE, HeaderValue::from_static("text/plain"))
            .uri(Uri::from_static("http://127.0.0.1:1/hook"));
        let request = delivery.build::<Full<Bytes>>();
        assert_eq!(request.headers()["x-clink-signtype"], "SHA256");
        assert_eq!(request.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(request.uri(), "http://127.0.0.1:1/hook");
        assert!(!format!("{delivery:?}").contains("hidden"));
    }
}
