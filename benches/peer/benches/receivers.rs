//! Three receivers of the same `order.succeeded` deliveries, in process:
//! the one people write by hand (see `../../support/receiver.rs`), the same
//! one verifying with svix's `Webhook::verify` (svix's headers and
//! signature scheme), and `ClinkLayer` with a typed router.
//!
//! ```text
//! cd benches/peer && cargo bench --bench receivers
//! ```
//!
//! Each delivery has a fresh event id and is signed before the clock starts;
//! batches of each receiver take turns in rotating order, and the table
//! gives the median batch of each. Nothing here asserts a time.
#![allow(clippy::print_stdout)]

#[path = "../../support/receiver.rs"]
#[allow(dead_code, reason = "shared with the crate's own receiver bench")]
mod receiver;

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use receiver::{layered, median, micros, signed, Hand, HandOrder, SIZES};
use svix::webhooks::Webhook;
use tower::{Service, ServiceExt};

/// The hand-written receiver with svix doing the verification.
#[derive(Clone)]
struct Svix {
    inner: Arc<(Webhook, DashMap<String, ()>)>,
}

fn reply(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(br#"{"ok":true}"#)));
    *response.status_mut() = status;
    response
}

impl Service<Request<Full<Bytes>>> for Svix {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let (webhook, seen) = &*inner;
            let (parts, body) = request.into_parts();
            let Ok(body) = body.collect().await.map(|b| b.to_bytes());
            if webhook.verify(&body, &parts.headers).is_err() {
                return Ok(reply(StatusCode::UNAUTHORIZED));
            }
            let Ok(mut event) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return Ok(reply(StatusCode::BAD_REQUEST));
            };
            let Some(id) = event["id"].as_str() else {
                return Ok(reply(StatusCode::BAD_REQUEST));
            };
            if seen.insert(id.to_owned(), ()).is_some() {
                return Ok(reply(StatusCode::OK));
            }
            if event["type"] == "order.succeeded" {
                match serde_json::from_value::<HandOrder>(event["data"].take()) {
                    Ok(order) => {
                        black_box(&order);
                    }
                    Err(_) => return Ok(reply(StatusCode::BAD_REQUEST)),
                }
            }
            Ok(reply(StatusCode::OK))
        })
    }
}

/// A delivery signed the svix way: `svix-id`, `svix-timestamp`, `svix-signature`.
fn svix_signed(webhook: &Webhook, n: u64, size: usize) -> Request<Full<Bytes>> {
    let body = receiver::body(n, size);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let timestamp = i64::try_from(now).expect("seconds fit an i64");
    let id = format!("msg_{n}");
    let signature = webhook.sign(&id, timestamp, &body).expect("UTF-8 body");
    let mut headers = HeaderMap::new();
    headers.insert("svix-id", HeaderValue::from_str(&id).expect("ASCII"));
    headers.insert("svix-timestamp", HeaderValue::from(timestamp));
    headers.insert(
        "svix-signature",
        HeaderValue::from_str(&signature).expect("v1,<base64>"),
    );
    let mut request = Request::post("/webhooks")
        .body(Full::new(body))
        .expect("request");
    *request.headers_mut() = headers;
    request
}

fn time<S>(
    rt: &tokio::runtime::Runtime,
    service: &S,
    requests: Vec<Request<Full<Bytes>>>,
) -> Duration
where
    S: Service<Request<Full<Bytes>>, Error = Infallible> + Clone,
{
    rt.block_on(async {
        let start = Instant::now();
        for request in requests {
            black_box(service.clone().oneshot(request).await.unwrap());
        }
        start.elapsed()
    })
}

fn main() {
    let measure = std::env::args().any(|arg| arg == "--bench");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let webhook = Webhook::new(receiver::SECRET).expect("whsec_<base64> secret");
    let svix = Svix {
        inner: Arc::new((Webhook::new(receiver::SECRET).unwrap(), DashMap::new())),
    };
    let hand = Hand::new();
    let layer = layered();
    let mut next = 0u64;
    let mut ids = |count: u64| {
        let first = next;
        next += count;
        first..first + count
    };
    println!("\nIn process, per delivery (median batch); time relative to the layer:");
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "size", "layer", "hand", "svix", "hand/layer", "svix/layer"
    );
    for (size, label) in SIZES {
        let (budget, batch) = if measure {
            (Duration::from_secs(4), if size > 4096 { 20 } else { 200 })
        } else {
            (Duration::ZERO, 2)
        };
        let mut samples = [Vec::new(), Vec::new(), Vec::new()];
        let start = Instant::now();
        let mut round = 0;
        while round < 3 || start.elapsed() < budget {
            for k in 0..3 {
                let i = (k + round) % 3;
                let requests: Vec<_> = match i {
                    0 | 1 => ids(batch).map(|n| signed("/webhooks", n, size)).collect(),
                    _ => ids(batch).map(|n| svix_signed(&webhook, n, size)).collect(),
                };
                let took = match i {
                    0 => time(&rt, &layer, requests),
                    1 => time(&rt, &hand, requests),
                    _ => time(&rt, &svix, requests),
                };
                samples[i].push(took.as_secs_f64() / batch as f64);
            }
            round += 1;
        }
        let [layer_t, hand_t, svix_t] = samples.map(median);
        println!(
            "{label:<6} {:>10} {:>10} {:>10} {:>10.3} {:>10.3}",
            micros(Duration::from_secs_f64(layer_t)),
            micros(Duration::from_secs_f64(hand_t)),
            micros(Duration::from_secs_f64(svix_t)),
            hand_t / layer_t,
            svix_t / layer_t,
        );
    }
}
