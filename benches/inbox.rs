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
//!    `PostgresInbox::insert` (one after another), then handled by 8
//!    workers (no-op handler, no reorder window), each phase timed alone,
//!    against two raw queues doing the least such a queue can: an `INSERT`
//!    per event, then 8 tasks each looping on one `DELETE .. WHERE id =
//!    (SELECT .. FOR UPDATE SKIP LOCKED LIMIT 1)`, or on an `UPDATE` to
//!    `running` of the row so picked and an `UPDATE` to `done` (a queue that
//!    keeps its rows). Reported as events per second of each phase and of
//!    the whole, and their ratios (inbox / raw).
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

/// Events per second of each phase of one run: keeping them (one write
/// each, in a row), then handling them all (8 workers).
#[derive(Clone, Copy)]
struct Rates {
    enqueue: f64,
    drain: f64,
    whole: f64,
}

impl Rates {
    fn of(events: usize, enqueue: Duration, drain: Duration) -> Self {
        let rate = |d: Duration| events as f64 / d.as_secs_f64();
        Self {
            enqueue: rate(enqueue),
            drain: rate(drain),
            whole: rate(enqueue + drain),
        }
    }
}

async fn inbox_throughput(events: usize) -> Rates {
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
    let enqueued = started.elapsed();
    let draining = Instant::now();
    let workers = Workers::new(inbox.clone(), router)
        .concurrency(8)
        .and_then(|w| w.reorder_window(Duration::ZERO))
        .unwrap()
        .spawn();
    while handled.load(Ordering::Relaxed) < events {
        inbox.wait(Duration::from_millis(5)).await;
    }
    let drained = draining.elapsed();
    workers.shutdown(Duration::from_secs(5)).await;
    Rates::of(events, enqueued, drained)
}

/// How the raw queue takes an event off.
#[derive(Clone, Copy)]
enum Take {
    /// One `DELETE .. RETURNING` of the row `SKIP LOCKED` picks.
    Delete,
    /// An `UPDATE` to `running` of the row `SKIP LOCKED` picks, then an
    /// `UPDATE` to `done`: a claim and a mark-done, as a queue that keeps
    /// its rows does.
    ClaimThenDone,
}

async fn raw_throughput(events: usize, take: Take) -> Rates {
    let pool = pool();
    let table = format!("bench_raw_{}", unique());
    pool.get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, event_id text NOT NULL, body bytea NOT NULL,
                                   status text NOT NULL DEFAULT 'pending');
             CREATE INDEX ON {table} (id) WHERE status = 'pending'"
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
    let enqueued = started.elapsed();
    let draining = Instant::now();
    let taken = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (pool, table, taken) = (pool.clone(), table.clone(), Arc::clone(&taken));
        tasks.spawn(async move {
            let client = pool.get().await.unwrap();
            let pick = format!(
                "SELECT id FROM {table} WHERE status = 'pending' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1"
            );
            let (take_sql, done_sql) = match take {
                Take::Delete => (
                    format!("DELETE FROM {table} WHERE id = ({pick}) RETURNING id, body"),
                    None,
                ),
                Take::ClaimThenDone => (
                    format!(
                        "UPDATE {table} SET status = 'running' WHERE id = ({pick}) RETURNING id, body"
                    ),
                    Some(format!("UPDATE {table} SET status = 'done' WHERE id = $1")),
                ),
            };
            loop {
                let rows = client.query(&take_sql, &[]).await.unwrap();
                let Some(row) = rows.first() else {
                    break;
                };
                if let Some(done) = &done_sql {
                    let id: i64 = row.get(0);
                    client.execute(done, &[&id]).await.unwrap();
                }
                taken.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    assert_eq!(taken.load(Ordering::Relaxed), events);
    Rates::of(events, enqueued, draining.elapsed())
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

        // 2. Worker throughput against raw SKIP LOCKED queues, each phase
        // timed alone: keeping the events, then handling them.
        const EVENTS: usize = 2000;
        let (mut inbox_rates, mut delete_rates, mut claim_rates) = (vec![], vec![], vec![]);
        for _ in 0..3 {
            delete_rates.push(raw_throughput(EVENTS, Take::Delete).await);
            claim_rates.push(raw_throughput(EVENTS, Take::ClaimThenDone).await);
            inbox_rates.push(inbox_throughput(EVENTS).await);
        }
        let mean = |v: &[Rates], f: fn(&Rates) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
        println!(
            "\nkeep, then handle, {EVENTS} events, 8 workers, same PostgreSQL (events/s, mean of 3 interleaved runs):"
        );
        println!("{:<38} {:>9} {:>9} {:>9}", "", "enqueue", "drain", "whole");
        let row = |name: &str, v: &[Rates]| {
            println!(
                "{name:<38} {:>9.0} {:>9.0} {:>9.0}",
                mean(v, |r| r.enqueue),
                mean(v, |r| r.drain),
                mean(v, |r| r.whole)
            );
        };
        row("raw INSERT; SKIP LOCKED DELETE", &delete_rates);
        row("raw INSERT; SKIP LOCKED claim + done", &claim_rates);
        row("PostgresInbox + Workers", &inbox_rates);
        for (name, raw) in [("DELETE", &delete_rates), ("claim + done", &claim_rates)] {
            println!(
                "{:<38} {:>9.3} {:>9.3} {:>9.3}",
                format!("ratio inbox / raw ({name})"),
                mean(&inbox_rates, |r| r.enqueue) / mean(raw, |r| r.enqueue),
                mean(&inbox_rates, |r| r.drain) / mean(raw, |r| r.drain),
                mean(&inbox_rates, |r| r.whole) / mean(raw, |r| r.whole)
            );
        }
    });
}
