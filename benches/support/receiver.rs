//! Shared by `benches/receiver.rs` and `benches/allocations.rs`: the signed
//! bodies, the receiver people write by hand, the layer set up the way an
//! app sets it up, and a bare service that only reads the body.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Signs deliveries cheaply, for a client that must not spend more than
/// the servers it loads: the same `order.succeeded` body as [`body`] with
/// its fields in another order, the event id last, so that everything
/// before the id is hashed once (one timestamp for the whole run, well
/// inside the tolerance) and shared, not copied, by every request.
pub(crate) struct Signer {
    timestamp: String,
    head: Bytes,
    after_head: HmacSha256,
}

impl Signer {
    pub(crate) fn new(size: usize) -> Self {
        let start = r#"{"object":"event","type":"order.succeeded","created":1736942400000,"livemode":true,"data":{"orderId":"ord_1","type":"onetime","status":"success","sessionId":"cs_8f2a","customerId":"cus_4411","customerEmail":"buyer@example.com","createTime":1736942399000,"paymentTime":1736942400000,"amountSubtotal":19.99,"amountTotal":19.99,"paymentCurrency":"USD","riskLevel":"low","note":""#;
        let end = r#""},"id":""#;
        let tail_len = "evt_".len() + 24 + r#""}"#.len();
        let pad = size.saturating_sub(start.len() + end.len() + tail_len);
        let head = Bytes::from(format!("{start}{}{end}", "x".repeat(pad)));
        let timestamp = Timestamp::now().as_millis().to_string();
        let mut after_head = keyed();
        after_head.update(timestamp.as_bytes());
        after_head.update(b".");
        after_head.update(&head);
        Self {
            timestamp,
            head,
            after_head,
        }
    }

    /// The delivery of event `evt_{n}` to `uri`: the shared head, then its own tail.
    pub(crate) fn request(&self, uri: &str, n: u64) -> Request<Chunks> {
        let tail = Bytes::from(format!(r#"evt_{n:024}"}}"#));
        let mut mac = self.after_head.clone();
        mac.update(&tail);
        let signature = hex::encode(mac.finalize().into_bytes());
        Request::post(uri)
            .header("content-type", "application/json")
            .header("x-clink-timestamp", &self.timestamp)
            .header("x-clink-signature", signature)
            .body(Chunks([Some(self.head.clone()), Some(tail)]))
            .expect("a valid request")
    }
}

/// A body sent as two chunks, with its exact length.
pub(crate) struct Chunks([Option<Bytes>; 2]);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>, _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let next = self.0.iter_mut().find_map(Option::take);
        Poll::Ready(next.map(|chunk| Ok(http_body::Frame::data(chunk))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let len = self
            .0
            .iter()
            .flatten()
            .map(|chunk| chunk.len() as u64)
            .sum();
        http_body::SizeHint::with_exact(len)
    }

    fn is_end_stream(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

/// A body that is not ready at its first poll and asks to be polled again,
/// as a body from hyper is: the connection's task polls the service before
/// it has passed the bytes it read into the body's channel, then wakes it.
pub(crate) struct Late {
    body: Full<Bytes>,
    waited: bool,
}

impl Late {
    pub(crate) fn new(body: Full<Bytes>) -> Self {
        Self {
            body,
            waited: false,
        }
    }
}

impl http_body::Body for Late {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>, cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }

    fn is_end_stream(&self) -> bool {
        self.waited && self.body.is_end_stream()
    }
}

/// A router with a typed `order.succeeded` handler.
fn order_router() -> EventRouter {
    EventRouter::new().on::<events::OrderSucceeded, _>(|event| async move {
        black_box(&event.data);
        Ok::<_, Infallible>(())
    })
}

/// The layer as an app sets it up: one key, the default in-memory store,
/// the router called directly (`ClinkLayer::route`).
pub(crate) fn layered() -> clink_webhooks::RoutedService {
    ClinkLayer::new(Verifier::new(SECRET).expect("a secret")).route(order_router())
}

/// The layer over the same router as a tower service (`ClinkLayer::layer`):
/// a request built for the router, its response read back.
pub(crate) fn layered_tower() -> clink_webhooks::ClinkService<EventRouter> {
    ClinkLayer::new(Verifier::new(SECRET).expect("a secret")).layer(order_router())
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
    careful: bool,
    ballast: Ballast,
}

impl Hand {
    pub(crate) fn new() -> Self {
        Self::with(false)
    }

    /// The careful hand-written receiver: the same checks, but the body is
    /// read once, with `serde_json::from_slice`, straight into a derived
    /// struct of the envelope and the order ([`CarefulEvent`]), with no
    /// `serde_json::Value` in between.
    pub(crate) fn careful() -> Self {
        Self::with(true)
    }

    /// The careful receiver doing `ballast` as well, after the signature
    /// and before the decode.
    pub(crate) fn careful_with(ballast: Ballast) -> Self {
        Self::with_ballast(true, ballast)
    }

    fn with(careful: bool) -> Self {
        Self::with_ballast(careful, Ballast::Nothing)
    }

    fn with_ballast(careful: bool, ballast: Ballast) -> Self {
        Self {
            inner: Arc::new(HandInner {
                key: keyed(),
                seen: DashMap::new(),
                careful,
                ballast,
            }),
        }
    }
}

/// The event as the careful receiver declares it: its envelope and an
/// order's data, in one derived struct.
#[derive(Debug, Deserialize)]
pub(crate) struct CarefulEvent {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    data: HandOrder,
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
        if self.careful {
            self.ballast.run(body.len());
            let Ok(event) = serde_json::from_slice::<CarefulEvent>(&body) else {
                return refused(StatusCode::BAD_REQUEST);
            };
            if self.seen.insert(event.id.clone(), ()).is_some() {
                return reply(StatusCode::OK, r#"{"ok":true,"duplicate":true}"#);
            }
            if event.event_type == "order.succeeded" {
                black_box(&event.data);
            }
            return reply(StatusCode::OK, r#"{"ok":true}"#);
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

/// Work added to the careful receiver, to tell what costs more over HTTP
/// than in process: the amount of distinct code a delivery runs, or the
/// time it spends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ballast {
    /// None: the careful receiver itself.
    Nothing,
    /// 1,024 distinct functions of about one cache line each (some 80 KB of
    /// code with their calls), each run once.
    Code,
    /// The same number of calls, all to one of those functions: about the
    /// same instructions in a few lines of code.
    Loop,
    /// A busy wait of this long: time on the path, almost no code.
    Spin(Duration),
}

impl Ballast {
    fn run(self, seed: usize) {
        let seed = black_box(seed as u64);
        match self {
            Self::Nothing => {}
            Self::Code => {
                black_box(ballast::code(seed));
            }
            Self::Loop => {
                black_box(ballast::looped(seed));
            }
            Self::Spin(took) => {
                let start = Instant::now();
                while start.elapsed() < took {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

/// The code of [`Ballast::Code`] and [`Ballast::Loop`]: one function per
/// leaf of a binary tree of types ten levels deep, so that the compiler
/// makes 1,024 functions that differ only in their constants.
mod ballast {
    use std::hint::black_box;

    pub(super) trait Tag {
        const V: u64;
    }
    pub(super) struct Root;
    impl Tag for Root {
        const V: u64 = 1;
    }
    pub(super) struct Left<T>(T);
    impl<T: Tag> Tag for Left<T> {
        const V: u64 = T::V.wrapping_mul(2);
    }
    pub(super) struct Right<T>(T);
    impl<T: Tag> Tag for Right<T> {
        const V: u64 = T::V.wrapping_mul(2) + 1;
    }

    #[inline(never)]
    fn leaf<T: Tag>(x: u64) -> u64 {
        let a = x.wrapping_mul(T::V.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let b = a.rotate_left((T::V % 61) as u32 + 1) ^ T::V.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let c = b.wrapping_add(T::V.wrapping_mul(0xA076_1D64_78BD_642F));
        c ^ (c >> ((T::V % 29) + 3)) ^ T::V.wrapping_mul(0xE703_7ED1_A0B4_28DB)
    }

    macro_rules! level {
        ($name:ident, $next:ident) => {
            #[inline(always)]
            fn $name<T: Tag>(x: u64) -> u64 {
                let x = $next::<Left<T>>(x);
                $next::<Right<T>>(x)
            }
        };
    }

    #[inline(always)]
    fn l0<T: Tag>(x: u64) -> u64 {
        leaf::<T>(x)
    }
    level!(l1, l0);
    level!(l2, l1);
    level!(l3, l2);
    level!(l4, l3);
    level!(l5, l4);
    level!(l6, l5);
    level!(l7, l6);
    level!(l8, l7);
    level!(l9, l8);
    level!(l10, l9);

    /// Every one of the 1,024 functions, once.
    #[inline(never)]
    pub(super) fn code(x: u64) -> u64 {
        l10::<Root>(x)
    }

    /// One of them, 1,024 times.
    #[inline(never)]
    pub(super) fn looped(mut x: u64) -> u64 {
        for _ in 0..1024 {
            x = leaf::<Left<Right<Left<Root>>>>(black_box(x));
        }
        x
    }
}
