//! The durable inbox against direct handling and against a raw queue.
//!
//! ```text
//! scripts/with-services cargo bench -p clink-webhooks-benches --bench inbox --all-features
//! ```
//!
//! 1. **Acknowledgement latency** over HTTP on loopback, one request at a
//!    time, with a handler that takes 50 ms: direct handling answers after
//!    the handler; the inbox (PostgreSQL) answers after one write while
//!    workers run the handler. p50 and p99 of each.
//! 2. **Worker throughput** on the same PostgreSQL: events kept with
//!    `PostgresInbox::insert` and handled by 8 workers (no-op handler, no
//!    reorder window), against a raw queue doing the least such a queue can:
//!    `INSERT` per event, then 8 tasks each looping on one `DELETE .. WHERE
//!    id = (SELECT .. FOR UPDATE SKIP LOCKED LIMIT 1)`. Reported as events
//!    per second and their ratio (inbox / raw).
//!
//! Both passes measure against their baseline in the same run.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clink_webhooks::inbox::Workers;
use clink_webhooks::store::{Inbox, NewEvent, PostgresInbox};
use clink_webhooks::testing::SignedRequest;
use clink_webhooks::{events, ClinkLayer, EventRouter, Layer, Timestamp, Verifier};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;

const KEY: &str = "whsec_bench_inbox";
const HANDLER: Duration = Duration::from_millis(50);

fn pool() -> deadpool_postgres::Pool {
    let url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run with scripts/with-services");
    let config: tokio_postgres::Config = url.parse().expect("DATABASE_URL parses");
    deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
        config,
        tokio_postgres::NoTls,
    ))
    .max_size(16)
    .runtime(deadpool_postgres::Runtime::Tokio1)
    .build()
    .expect("a pool")
}

fn unique() -> String {
    clink_webhooks::store::LeaseToken::generate().as_str()[..12].to_owned()
}

async fn inbox() -> PostgresInbox {
    let inbox = PostgresInbox::new(pool())
        .with_table(&format!("bench_inbox_{}", unique()))
        .unwrap()
        .with_timeout(Duration::from_secs(10))
        .unwrap();
    inbox.migrate().await.unwrap();
    inbox
}

fn slow_router(handled: &Arc<AtomicUsize>) -> EventRouter {
    let handled = Arc::clone(handled);
    EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
        let handled = Arc::clone(&handled);
        async move {
            tokio::time::sleep(HANDLER).await;
            handled.fetch_add(1, Ordering::Relaxed);
            Ok::<_, Infallible>(())
        }
    })
}

async fn serve<S>(service: S) -> SocketAddr
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<clink_webhooks::layer::ResponseBody<Full<Bytes>>>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
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

fn body(n: usize, run: &str) -> String {
    format!(r#"{{"id":"evt_{run}_{n}","type":"order.succeeded","data":{{"orderId":"ord_{n}"}}}}"#)
}

/// The `percent`th percentile of `sorted` (nearest rank).
fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    let index = (sorted.len() * percent).div_ceil(100).saturating_sub(1);
    sorted[index.min(sorted.len() - 1)]
}

async fn ack_latency(addr: SocketAddr, deliveries: usize) -> Vec<Duration> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let run = unique();
    let mut latencies = Vec::with_capacity(deliveries);
    for n in 0..deliveries {
        let request = SignedRequest::new(KEY, body(n, &run))
            .uri(format!("http://{addr}/webhooks/clink"))
            .build::<Full<Bytes>>();
        let started = Instant::now();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies
}

fn new_event(n: usize, run: &str) -> NewEvent {
    NewEvent::new(
        None,
        format!("evt_{run}_{n}"),
        "order.succeeded".to_owned(),
        Some(Timestamp::now()),
        None,
        Timestamp::now(),
        Timestamp::now(),
        Bytes::from(body(n, run)),
    )
}

async fn inbox_throughput(events: usize) -> f64 {
    let inbox = inbox().await;
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handled);
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
        counter.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok::<_, Infallible>(()))
    });
    let run = unique();
    let started = Instant::now();
    for n in 0..events {
        inbox.insert(&new_event(n, &run)).await.unwrap();
    }
    let workers = Workers::new(inbox.clone(), router)
        .concurrency(8)
        .and_then(|w| w.reorder_window(Duration::ZERO))
        .unwrap()
        .spawn();
    while handled.load(Ordering::Relaxed) < events {
        inbox.wait(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    workers.shutdown(Duration::from_secs(5)).await;
    events as f64 / elapsed.as_secs_f64()
}

async fn raw_throughput(events: usize) -> f64 {
    let pool = pool();
    let table = format!("bench_raw_{}", unique());
    pool.get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, event_id text NOT NULL, body bytea NOT NULL)"
        ))
        .await
        .unwrap();
    let run = unique();
    let started = Instant::now();
    {
        let client = pool.get().await.unwrap();
        for n in 0..events {
            let body = body(n, &run).into_bytes();
            client
                .execute(
                    &format!("INSERT INTO {table} (event_id, body) VALUES ($1, $2)"),
                    &[&format!("evt_{run}_{n}"), &body],
                )
                .await
                .unwrap();
        }
    }
    let taken = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (pool, table, taken) = (pool.clone(), table.clone(), Arc::clone(&taken));
        tasks.spawn(async move {
            let client = pool.get().await.unwrap();
            let sql = format!(
                "DELETE FROM {table} WHERE id = (SELECT id FROM {table} ORDER BY id \
                 FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING body"
            );
            loop {
                let rows = client.query(&sql, &[]).await.unwrap();
                if rows.is_empty() {
                    break;
                }
                taken.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    assert_eq!(taken.load(Ordering::Relaxed), events);
    events as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // 1. Acknowledgement latency.
        let handled = Arc::new(AtomicUsize::new(0));
        let direct = ClinkLayer::new(Verifier::new(KEY).unwrap()).layer(slow_router(&handled));
        let inbox = inbox().await;
        let queued = ClinkLayer::new(Verifier::new(KEY).unwrap()).intake(inbox.clone());
        let workers = Workers::new(inbox, slow_router(&handled))
            .concurrency(16)
            .and_then(|w| w.reorder_window(Duration::ZERO))
            .unwrap()
            .spawn();
        let (direct_addr, inbox_addr) = (serve(direct).await, serve(queued).await);
        const DELIVERIES: usize = 200;
        let mut direct_all = Vec::new();
        let mut inbox_all = Vec::new();
        // Interleaved rounds, so drift hits both alike.
        for _ in 0..4 {
            direct_all.extend(ack_latency(direct_addr, DELIVERIES / 4).await);
            inbox_all.extend(ack_latency(inbox_addr, DELIVERIES / 4).await);
        }
        direct_all.sort();
        inbox_all.sort();
        workers.shutdown(Duration::from_secs(10)).await;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("\nacknowledgement latency over HTTP, handler {HANDLER:?}, {DELIVERIES} deliveries each:");
        println!("{:<22} {:>9} {:>9}", "", "p50", "p99");
        for (name, all) in [("direct", &direct_all), ("inbox (PostgreSQL)", &inbox_all)] {
            println!(
                "{name:<22} {:>7.2} ms {:>7.2} ms",
                ms(percentile(all, 50)),
                ms(percentile(all, 99))
            );
        }

        // 2. Worker throughput against a raw SKIP LOCKED queue.
        const EVENTS: usize = 2000;
        let mut inbox_rates = Vec::new();
        let mut raw_rates = Vec::new();
        for _ in 0..3 {
            raw_rates.push(raw_throughput(EVENTS).await);
            inbox_rates.push(inbox_throughput(EVENTS).await);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (inbox_rate, raw_rate) = (mean(&inbox_rates), mean(&raw_rates));
        println!("\nkeep and handle {EVENTS} events, 8 workers, same PostgreSQL (mean of 3 interleaved runs):");
        println!("raw INSERT + SKIP LOCKED DELETE  {raw_rate:>9.0} events/s");
        println!("PostgresInbox + Workers          {inbox_rate:>9.0} events/s");
        println!("ratio inbox / raw                {:>9.3}", inbox_rate / raw_rate);
    });
}
