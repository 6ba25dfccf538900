//! The whole layer (verify, parse, claim in the memory store, dispatch,
//! complete) against a bare service that only reads the same body: in
//! process with `oneshot`, and over loopback HTTP with the same client.
//!
//! ```text
//! cargo bench -p clink-webhooks-benches --bench pipeline
//! ```
//!
//! Each delivery carries a fresh event id (signed before the clock starts),
//! so every one is a first delivery that runs the handler. A third in-process
//! case serves many merchant accounts through a key source (a `KeyMap` of
//! 1,000 accounts, the account read from the path): its ratio to the
//! single-verifier layer is the cost of looking the account's keys up.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clink_webhooks::accounts::{AccountFrom, KeyMap};
use clink_webhooks::{events, sign, ClinkLayer, EventRouter, Timestamp, Verifier};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tower::{Layer, Service, ServiceExt};

/// The account the key-source case delivers for, among 1,000.
const ACCOUNT_PATH: &str = "/webhooks/clink/acct_517";

const SECRET: &str = "whsec_bench";
const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (64 * 1024, "64KiB")];

/// A body of about `size` bytes with a unique id.
fn body(n: u64, size: usize) -> Bytes {
    let head = format!(
        r#"{{"id":"evt_bench_{n}","type":"order.succeeded","data":{{"orderId":"ord_{n}","note":""#
    );
    let tail = r#""}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(pad)))
}

fn signed(uri: &str, n: u64, size: usize) -> Request<Full<Bytes>> {
    let body = body(n, size);
    let ts = Timestamp::now().as_millis().to_string();
    Request::post(uri)
        .header("x-clink-timestamp", &ts)
        .header("x-clink-signature", sign(SECRET, &ts, &body))
        .body(Full::new(body))
        .unwrap()
}

fn router() -> EventRouter {
    EventRouter::new().on::<events::OrderSucceeded, _>(|_event| async { Ok::<_, Infallible>(()) })
}

fn layered() -> clink_webhooks::ClinkService<EventRouter> {
    ClinkLayer::new(Verifier::new(SECRET).unwrap()).layer(router())
}

/// The layer over a key source of 1,000 accounts, each with its own key;
/// [`ACCOUNT_PATH`]'s account signs with [`SECRET`].
fn layered_accounts() -> clink_webhooks::ClinkService<EventRouter> {
    let keys = KeyMap::new();
    for n in 0..1000 {
        let secret = if n == 517 {
            SECRET.to_owned()
        } else {
            format!("whsec_{n}")
        };
        keys.insert(format!("acct_{n}"), Verifier::new(secret).unwrap())
            .unwrap();
    }
    ClinkLayer::with_key_source(AccountFrom::LastPathSegment, keys).layer(router())
}

/// The baseline: read the whole body, answer 200.
#[derive(Clone)]
struct Bare;

impl<B> Service<Request<B>> for Bare
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self, _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Box::pin(async move {
            let bytes = request
                .into_body()
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            std::hint::black_box(bytes);
            Ok(Response::new(Full::new(Bytes::from_static(
                br#"{"ok":true}"#,
            ))))
        })
    }
}

async fn serve<S, ResB>(service: S) -> SocketAddr
where
    S: Service<Request<hyper::body::Incoming>, Response = Response<ResB>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<clink_webhooks::BoxError>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// Times `iters` deliveries, each signed before the clock starts.
fn time_in_process<S, ResB>(
    rt: &tokio::runtime::Runtime, service: &S, iters: u64, size: usize, first_id: &mut u64,
) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>, Error = Infallible> + Clone,
{
    time_in_process_at(rt, service, "/", iters, size, first_id)
}

fn time_in_process_at<S, ResB>(
    rt: &tokio::runtime::Runtime, service: &S, uri: &str, iters: u64, size: usize,
    first_id: &mut u64,
) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>, Error = Infallible> + Clone,
{
    let requests: Vec<_> = (0..iters)
        .map(|i| signed(uri, *first_id + i, size))
        .collect();
    *first_id += iters;
    rt.block_on(async {
        let start = Instant::now();
        for request in requests {
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200);
        }
        start.elapsed()
    })
}

fn time_over_http(
    rt: &tokio::runtime::Runtime, client: &Client<HttpConnector, Full<Bytes>>, addr: SocketAddr,
    iters: u64, size: usize, first_id: &mut u64,
) -> Duration {
    let uri = format!("http://{addr}/webhooks/clink");
    let requests: Vec<_> = (0..iters)
        .map(|i| signed(&uri, *first_id + i, size))
        .collect();
    *first_id += iters;
    rt.block_on(async {
        let start = Instant::now();
        for request in requests {
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            response.into_body().collect().await.unwrap();
        }
        start.elapsed()
    })
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let layered_service = layered();
    let accounts_service = layered_accounts();
    let (layered_addr, bare_addr) =
        rt.block_on(async { (serve(layered()).await, serve(Bare).await) });
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut next_id = 0u64;

    for (size, label) in SIZES {
        let mut group = c.benchmark_group(format!("pipeline/{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("in_process", "bare"), |b| {
            b.iter_custom(|iters| time_in_process(&rt, &Bare, iters, size, &mut next_id));
        });
        group.bench_function(BenchmarkId::new("in_process", "layer"), |b| {
            b.iter_custom(|iters| {
                time_in_process(&rt, &layered_service, iters, size, &mut next_id)
            });
        });
        group.bench_function(BenchmarkId::new("in_process", "layer_key_source"), |b| {
            b.iter_custom(|iters| {
                time_in_process_at(
                    &rt,
                    &accounts_service,
                    ACCOUNT_PATH,
                    iters,
                    size,
                    &mut next_id,
                )
            });
        });
        group.bench_function(BenchmarkId::new("http", "bare"), |b| {
            b.iter_custom(|iters| {
                time_over_http(&rt, &client, bare_addr, iters, size, &mut next_id)
            });
        });
        group.bench_function(BenchmarkId::new("http", "layer"), |b| {
            b.iter_custom(|iters| {
                time_over_http(&rt, &client, layered_addr, iters, size, &mut next_id)
            });
        });
        group.finish();
    }

    // The ratio pass: both sides alternated in one loop, so drift hits both alike.
    println!("\nper delivery, bare service and with the layer; throughput ratio layer/bare (1.0 = no cost):");
    println!(
        "{:<7} {:>10} {:>10} {:>7}   {:>10} {:>10} {:>7}",
        "size", "bare", "layer", "ratio", "bare HTTP", "layer HTTP", "ratio"
    );
    const ROUNDS: u32 = 10;
    const BATCH: u64 = 200;
    let mut key_source = Vec::new();
    for (size, label) in SIZES {
        let mut totals = [Duration::ZERO; 5];
        for _ in 0..ROUNDS {
            totals[0] += time_in_process(&rt, &Bare, BATCH, size, &mut next_id);
            totals[1] += time_in_process(&rt, &layered_service, BATCH, size, &mut next_id);
            totals[4] += time_in_process_at(
                &rt,
                &accounts_service,
                ACCOUNT_PATH,
                BATCH,
                size,
                &mut next_id,
            );
            totals[2] += time_over_http(&rt, &client, bare_addr, BATCH, size, &mut next_id);
            totals[3] += time_over_http(&rt, &client, layered_addr, BATCH, size, &mut next_id);
        }
        let per = |total: Duration| total / (ROUNDS * u32::try_from(BATCH).unwrap_or(1));
        let micros = |total: Duration| format!("{:.2} µs", per(total).as_secs_f64() * 1e6);
        println!(
            "{label:<7} {:>10} {:>10} {:>7.3}   {:>10} {:>10} {:>7.3}",
            micros(totals[0]),
            micros(totals[1]),
            totals[0].as_secs_f64() / totals[1].as_secs_f64(),
            micros(totals[2]),
            micros(totals[3]),
            totals[2].as_secs_f64() / totals[3].as_secs_f64(),
        );
        key_source.push((
            label,
            micros(totals[1]),
            micros(totals[4]),
            totals[4].as_secs_f64() / totals[1].as_secs_f64(),
        ));
    }
    println!("\nper delivery in process, one verifier and a key source of 1,000 accounts; time ratio (1.0 = no cost):");
    println!(
        "{:<7} {:>12} {:>12} {:>7}",
        "size", "one key", "key source", "ratio"
    );
    for (label, one, source, ratio) in key_source {
        println!("{label:<7} {one:>12} {source:>12} {ratio:>7.3}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).sample_size(30);
    targets = pipeline
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
