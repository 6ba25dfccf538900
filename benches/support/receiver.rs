//! Shared by `benches/receiver.rs` and `benches/allocations.rs`: the signed
//! bodies, the receiver people write by hand, the layer set up the way an
//! app sets it up, and a bare service that only reads the body.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clink_webhooks::{events, sign, ClinkLayer, EventRouter, Timestamp, Verifier};
use dashmap::DashMap;
use hmac::{Hmac, KeyInit, Mac};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The body sizes compared: a real Clink event is about 1 KiB.
pub(crate) const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (64 * 1024, "64KiB")];

/// An `order.succeeded` delivery of about `size` bytes with the event id
/// `evt_{n}`, shaped like Clink's: envelope fields, then the order, padded
/// with a field neither receiver reads.
pub(crate) fn body(n: u64, size: usize) -> Bytes {
    let head = format!(
        r#"{{"id":"evt_{n:024}","object":"event","type":"order.succeeded","created":1736942400000,"livemode":true,"data":{{"orderId":"ord_{n}","type":"onetime","status":"success","sessionId":"cs_8f2a","customerId":"cus_4411","customerEmail":"buyer@example.com","createTime":1736942399000,"paymentTime":1736942400000,"amountSubtotal":19.99,"amountTotal":19.99,"paymentCurrency":"USD","riskLevel":"low","note":""#
    );
    let tail = r#""}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(pad)))
}

/// A signed delivery of `body(n, size)` to `uri`, signed now.
pub(crate) fn signed(uri: &str, n: u64, size: usize) -> Request<Full<Bytes>> {
    let body = body(n, size);
    let ts = Timestamp::now().as_millis().to_string();
    Request::post(uri)
        .header("content-type", "application/json")
        .header("x-clink-timestamp", &ts)
        .header("x-clink-signature", sign(SECRET, &ts, &body))
        .body(Full::new(body))
        .expect("a valid request")
}

/// The layer as an app sets it up: one key, the default in-memory store,
/// a router with a typed `order.succeeded` handler.
pub(crate) fn layered() -> clink_webhooks::ClinkService<EventRouter> {
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(|event| async move {
        black_box(&event.data);
        Ok::<_, Infallible>(())
    });
    ClinkLayer::new(Verifier::new(SECRET).expect("a secret")).layer(router)
}

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The limit: HMAC-SHA256 over `timestamp.body` from a keyed state cloned per call.
pub(crate) fn keyed() -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(SECRET.as_bytes()).expect("any key")
}

#[inline]
pub(crate) fn bare_hmac(keyed: &HmacSha256, timestamp: &str, body: &[u8]) -> impl Sized {
    let mut mac = keyed.clone();
    mac.update(black_box(timestamp).as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes()
}

/// The order as a hand-written receiver declares it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code, reason = "read through black_box")]
pub(crate) struct HandOrder {
    order_id: Option<String>,
    status: Option<String>,
    customer_id: Option<String>,
    customer_email: Option<String>,
    amount_total: Option<f64>,
    payment_currency: Option<String>,
    payment_time: Option<i64>,
}

/// The receiver people write by hand: read the two headers, check the
/// timestamp window, collect the body, HMAC it and compare in constant time
/// with `subtle`, parse it into a `serde_json::Value`, remember the event id
/// in a `DashMap`, and decode an order's data with `serde_json::from_value`.
/// No lease, no retry safety (an id is remembered before its handler ran),
/// no body limit, no bounded memory, no typed events, no metrics.
#[derive(Clone)]
pub(crate) struct Hand {
    inner: Arc<HandInner>,
}

pub(crate) struct HandInner {
    key: HmacSha256,
    seen: DashMap<String, ()>,
}

impl Hand {
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(HandInner {
                key: keyed(),
                seen: DashMap::new(),
            }),
        }
    }
}

fn reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

impl HandInner {
    async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: http_body::Body + Send,
        B::Data: Send,
    {
        let refused = |status| reply(status, r#"{"error":"refused"}"#);
        if request.method() != Method::POST {
            return refused(StatusCode::METHOD_NOT_ALLOWED);
        }
        let (timestamp, signature) = {
            let header = |name| {
                request
                    .headers()
                    .get(name)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned)
            };
            let (Some(timestamp), Some(signature)) =
                (header("x-clink-timestamp"), header("x-clink-signature"))
            else {
                return refused(StatusCode::BAD_REQUEST);
            };
            (timestamp, signature)
        };
        let Ok(signed_ms) = timestamp.parse::<u64>() else {
            return refused(StatusCode::BAD_REQUEST);
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if now_ms.abs_diff(signed_ms) > 300_000 {
            return refused(StatusCode::UNAUTHORIZED);
        }
        let Ok(expected) = hex::decode(&signature) else {
            return refused(StatusCode::BAD_REQUEST);
        };
        let Ok(body) = request.into_body().collect().await else {
            return refused(StatusCode::BAD_REQUEST);
        };
        let body = body.to_bytes();
        let mut mac = self.key.clone();
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(&body);
        let tag = mac.finalize().into_bytes();
        if !bool::from(tag.as_slice().ct_eq(&expected)) {
            return refused(StatusCode::UNAUTHORIZED);
        }
        let Ok(mut event) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return refused(StatusCode::BAD_REQUEST);
        };
        let Some(id) = event["id"].as_str() else {
            return refused(StatusCode::BAD_REQUEST);
        };
        if self.seen.insert(id.to_owned(), ()).is_some() {
            return reply(StatusCode::OK, r#"{"ok":true,"duplicate":true}"#);
        }
        if event["type"] == "order.succeeded" {
            match serde_json::from_value::<HandOrder>(event["data"].take()) {
                Ok(order) => {
                    black_box(&order);
                }
                Err(_) => return refused(StatusCode::BAD_REQUEST),
            }
        }
        reply(StatusCode::OK, r#"{"ok":true}"#)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<B> Service<Request<B>> for Hand
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { Ok(inner.handle(request).await) })
    }
}

/// The baseline over HTTP: read the whole body, answer 200.
#[derive(Clone)]
pub(crate) struct Bare;

impl<B> Service<Request<B>> for Bare
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Box::pin(async move {
            let bytes = request
                .into_body()
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            black_box(bytes);
            Ok(reply(StatusCode::OK, r#"{"ok":true}"#))
        })
    }
}

/// Whether the bench was started to measure (`cargo bench`), rather than
/// to check that it runs (`cargo test --benches`).
pub(crate) fn measuring() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// The median of `xs`.
pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
        n => xs[n / 2],
    }
}

pub(crate) fn micros(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}
