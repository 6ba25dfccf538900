//! The layer against the receivers people write by hand, on the same signed
//! deliveries: in process, over loopback HTTP one request at a time, and
//! under load (1, 4, 16 and 64 keep-alive connections at once).
//!
//! ```text
//! cargo bench -p clink-webhooks-benches --bench receiver
//! ```
//!
//! - **hmac**: HMAC-SHA256 of the same body, keyed once and cloned per call:
//!   what any receiver must do at the least.
//! - **hand**: the receiver written by hand (see `support/receiver.rs`):
//!   headers, timestamp window, `hmac` + `subtle`, `serde_json::Value`, a
//!   `DashMap` insert, `serde_json::from_value` into an order struct.
//! - **careful**: the careful hand-written receiver: the same checks, the
//!   body read once with `serde_json::from_slice` into a derived struct of
//!   the envelope and the order.
//! - **layer**: `ClinkLayer` (one key, the default `MemoryStore`) in front of
//!   an `EventRouter` with a typed `order.succeeded` handler, called directly
//!   (`ClinkLayer::route`).
//! - **tower** (in process only): the same layer and router, the router as
//!   a tower service (`ClinkLayer::layer`).
//! - **bare** (HTTP only): a service that reads the body and answers 200.
//!
//! The `late` pass runs careful and layer in process on a multi-threaded
//! runtime, in a spawned task, with a body that is not ready at its first
//! poll (`Late`), as a server's are: what a delivery costs there beside
//! the HTTP it comes with.
//!
//! The `ballast` pass adds work of three kinds to the careful receiver
//! (`support/receiver.rs`, `Ballast`): 1,024 distinct small functions (much
//! distinct code), the same calls to one of them (the same instructions in
//! little code), and a busy wait of 2 µs (time, almost no code); it times
//! them and the layer in process and over HTTP in the same run, to tell
//! what costs more over HTTP than in process.
//!
//! Every delivery has a fresh event id and is signed before the clock
//! starts. Each pass interleaves the contestants in short batches, in
//! rotating order, and reports the median batch of each, so that load from
//! other processes falls on all of them alike. Nothing here asserts a time.
#![allow(clippy::print_stdout)]

#[path = "support/receiver.rs"]
mod receiver;

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use receiver::{
    bare_hmac, keyed, layered, layered_tower, median, micros, signed, Ballast, Bare, Chunks, Hand,
    Late, Signer, SIZES,
};
use tokio::runtime::Runtime;
use tower::{Service, ServiceExt};

/// Fresh event ids across every pass.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn next_ids(count: u64) -> std::ops::Range<u64> {
    let first = NEXT_ID.fetch_add(count, Ordering::Relaxed);
    first..first + count
}

/// Times `count` deliveries through `service` in process; signed first.
fn time_in_process<S, ResB>(rt: &Runtime, service: &S, count: u64, size: usize) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>, Error = Infallible> + Clone,
{
    time_deliveries(rt, service, count, size, false)
}

/// Times `count` deliveries through `service` in process, signed first;
/// with `cold`, the caches are made cold before each delivery (a sweep
/// over a buffer larger than them, not timed), as they are when a server's
/// deliveries come between the kernel's networking and other work.
fn time_deliveries<S, ResB>(
    rt: &Runtime, service: &S, count: u64, size: usize, cold: bool,
) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>, Error = Infallible> + Clone,
{
    let requests: Vec<_> = next_ids(count)
        .map(|n| signed("/webhooks/clink", n, size))
        .collect();
    let mut sweep = if cold {
        vec![0u8; 16 << 20]
    } else {
        Vec::new()
    };
    rt.block_on(async {
        let mut took = Duration::ZERO;
        let mut start = Instant::now();
        for (round, request) in requests.into_iter().enumerate() {
            if cold {
                for line in sweep.chunks_mut(64) {
                    line[0] = line[0].wrapping_add(round as u8);
                }
                black_box(&sweep);
                start = Instant::now();
            }
            let response = service.clone().oneshot(request).await.unwrap();
            debug_assert_eq!(response.status(), 200);
            drop(black_box(response));
            if cold {
                took += start.elapsed();
            }
        }
        if cold {
            took
        } else {
            start.elapsed()
        }
    })
}

/// How a profiling run delivers its requests.
#[derive(Clone, Copy)]
enum Profiled {
    /// All signed first, then delivered in one pass.
    Once,
    /// As `Once`, with the caches made cold before each delivery.
    Cold,
    /// In batches signed just before they are delivered, as the timed
    /// in-process pass delivers them, so that the requests are warm.
    Warm,
}

/// Times `count` deliveries through `service` for a profiling run.
fn time_profiled<S, ResB>(
    rt: &Runtime, service: &S, count: u64, size: usize, mode: Profiled,
) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>, Error = Infallible> + Clone,
{
    match mode {
        Profiled::Once => time_deliveries(rt, service, count, size, false),
        Profiled::Cold => time_deliveries(rt, service, count, size, true),
        Profiled::Warm => {
            let (_, _, batch) = in_process_schedule(true, size);
            (0..count.div_ceil(batch))
                .map(|_| time_deliveries(rt, service, batch, size, false))
                .sum()
        }
    }
}

/// Times `count` HMACs of the bodies the deliveries would carry.
fn time_hmac(count: u64, size: usize) -> Duration {
    let key = keyed();
    let timestamp = clink_webhooks::Timestamp::now().as_millis().to_string();
    let bodies: Vec<_> = next_ids(count).map(|n| receiver::body(n, size)).collect();
    let start = Instant::now();
    for body in &bodies {
        black_box(bare_hmac(&key, &timestamp, black_box(body)));
    }
    start.elapsed()
}

/// Serves `service` on a fresh loopback port.
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

/// Times `count` deliveries over one keep-alive connection, one at a time.
fn time_over_http(
    rt: &Runtime, client: &Client<HttpConnector, Full<Bytes>>, addr: SocketAddr, count: u64,
    size: usize,
) -> Duration {
    let uri = format!("http://{addr}/webhooks/clink");
    let requests: Vec<_> = next_ids(count).map(|n| signed(&uri, n, size)).collect();
    rt.block_on(async {
        let start = Instant::now();
        for request in requests {
            let response = client.request(request).await.unwrap();
            debug_assert_eq!(response.status(), 200);
            response.into_body().collect().await.unwrap();
        }
        start.elapsed()
    })
}

/// Runs batches of each contestant in rotating order for about `budget`
/// (at least `rounds` rounds) and returns the median time per delivery of
/// each.
fn interleave(
    budget: Duration, rounds: usize, batch: u64,
    contestants: &mut [&mut dyn FnMut(u64) -> Duration],
) -> Vec<Duration> {
    let mut samples = vec![Vec::new(); contestants.len()];
    let start = Instant::now();
    let mut round = 0;
    while round < rounds || start.elapsed() < budget {
        for k in 0..contestants.len() {
            let i = (k + round) % contestants.len();
            let took = (contestants[i])(batch);
            samples[i].push(took.as_secs_f64() / batch as f64);
        }
        round += 1;
    }
    samples
        .into_iter()
        .map(|s| Duration::from_secs_f64(median(s)))
        .collect()
}

/// A contestant of [`interleave`]: times a batch of this many deliveries.
type Timed<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// [`interleave`] over contestants made at run time.
fn interleave_all(
    budget: Duration, rounds: usize, batch: u64, mut contestants: Vec<Timed<'_>>,
) -> Vec<Duration> {
    let mut each: Vec<&mut dyn FnMut(u64) -> Duration> = contestants
        .iter_mut()
        .map(|timed| &mut **timed as &mut dyn FnMut(u64) -> Duration)
        .collect();
    interleave(budget, rounds, batch, &mut each)
}

/// How long the in-process passes interleave at `size`: a time budget,
/// the fewest rounds and the deliveries per batch (a token run when not
/// measuring).
fn in_process_schedule(measure: bool, size: usize) -> (Duration, usize, u64) {
    if measure {
        (
            Duration::from_secs(4),
            20,
            if size > 4096 { 20 } else { 200 },
        )
    } else {
        (Duration::ZERO, 1, 2)
    }
}

fn in_process(measure: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let layer = layered();
    let tower = layered_tower();
    let hand = Hand::new();
    let careful = Hand::careful();
    println!("\nIn process, per delivery (median batch); ratios of time (1.0 = as fast):");
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11} {:>14} {:>11} {:>12}",
        "size",
        "hmac",
        "hand",
        "careful",
        "tower",
        "layer",
        "layer/hand",
        "layer/careful",
        "layer/hmac",
        "tower/careful"
    );
    for (size, label) in SIZES {
        let (budget, rounds, batch) = in_process_schedule(measure, size);
        let medians = interleave(
            budget,
            rounds,
            batch,
            &mut [
                &mut |n| time_hmac(n, size),
                &mut |n| time_in_process(&rt, &hand, n, size),
                &mut |n| time_in_process(&rt, &careful, n, size),
                &mut |n| time_in_process(&rt, &tower, n, size),
                &mut |n| time_in_process(&rt, &layer, n, size),
            ],
        );
        let [hmac, hand_t, careful_t, tower_t, layer_t] = medians[..] else {
            unreachable!()
        };
        println!(
            "{label:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11.3} {:>14.3} {:>11.3} {:>12.3}",
            micros(hmac),
            micros(hand_t),
            micros(careful_t),
            micros(tower_t),
            micros(layer_t),
            layer_t.as_secs_f64() / hand_t.as_secs_f64(),
            layer_t.as_secs_f64() / careful_t.as_secs_f64(),
            layer_t.as_secs_f64() / hmac.as_secs_f64(),
            tower_t.as_secs_f64() / careful_t.as_secs_f64(),
        );
    }
}

/// Times `count` deliveries through `service` with [`Late`] bodies, in a
/// task spawned on `rt`, as a server's connection task runs them.
fn time_late<S, ResB>(rt: &Runtime, service: &S, count: u64, size: usize) -> Duration
where
    S: Service<Request<Late>, Response = Response<ResB>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    ResB: Send + 'static,
{
    let requests: Vec<_> = next_ids(count)
        .map(|n| signed("/webhooks/clink", n, size).map(Late::new))
        .collect();
    let service = service.clone();
    rt.block_on(async move {
        tokio::spawn(async move {
            let start = Instant::now();
            for request in requests {
                let response = service.clone().oneshot(request).await.unwrap();
                drop(black_box(response));
            }
            start.elapsed()
        })
        .await
        .unwrap()
    })
}

/// careful and layer on a multi-threaded runtime with bodies that are not
/// ready at their first poll.
fn late(measure: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let layer = layered();
    let careful = Hand::careful();
    println!("\nIn process, multi-threaded runtime, bodies not ready at their first poll;");
    println!("per delivery (median batch):");
    println!(
        "{:<6} {:>10} {:>10} {:>14}",
        "size", "careful", "layer", "layer/careful"
    );
    for (size, label) in SIZES {
        let (budget, rounds, batch) = in_process_schedule(measure, size);
        let medians = interleave(
            budget,
            rounds,
            batch,
            &mut [&mut |n| time_late(&rt, &careful, n, size), &mut |n| {
                time_late(&rt, &layer, n, size)
            }],
        );
        let [careful_t, layer_t] = medians[..] else {
            unreachable!()
        };
        println!(
            "{label:<6} {:>10} {:>10} {:>14.3}",
            micros(careful_t),
            micros(layer_t),
            layer_t.as_secs_f64() / careful_t.as_secs_f64(),
        );
    }
}

/// Where the layer's time goes at each size: its steps one by one through
/// the public API, next to the whole layer, interleaved.
fn breakdown(measure: bool) {
    use clink_webhooks::data::Order;
    use clink_webhooks::store::{Claim, IdempotencyStore, MemoryStore, DEFAULT_LEASE};
    use clink_webhooks::{RawEvent, Verifier};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let layer = layered();
    let verifier = Verifier::new(receiver::SECRET).unwrap();
    let store = MemoryStore::new();
    println!("\nWhere the layer's time goes, in process, per delivery (median batch):");
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "size", "hmac", "verify", "envelope", "decode", "store", "layer"
    );
    for (size, label) in SIZES {
        let (budget, rounds, batch) = if measure {
            (
                Duration::from_secs(3),
                20,
                if size > 4096 { 20 } else { 200 },
            )
        } else {
            (Duration::ZERO, 1, 2)
        };
        let bodies =
            |n: u64| -> Vec<Bytes> { next_ids(n).map(|n| receiver::body(n, size)).collect() };
        let timestamp = clink_webhooks::Timestamp::now().as_millis().to_string();
        let timed = |work: &mut dyn FnMut()| {
            let start = Instant::now();
            work();
            start.elapsed()
        };
        let medians = interleave(
            budget,
            rounds,
            batch,
            &mut [
                &mut |n| time_hmac(n, size),
                &mut |n| {
                    let signed: Vec<_> = bodies(n)
                        .into_iter()
                        .map(|body| {
                            (
                                clink_webhooks::sign(receiver::SECRET, &timestamp, &body),
                                body,
                            )
                        })
                        .collect();
                    timed(&mut || {
                        for (signature, body) in &signed {
                            black_box(verifier.verify(&timestamp, signature, body).is_ok());
                        }
                    })
                },
                &mut |n| {
                    let bodies = bodies(n);
                    timed(&mut || {
                        for body in &bodies {
                            black_box(RawEvent::from_bytes(body.clone()).is_ok());
                        }
                    })
                },
                &mut |n| {
                    let events: Vec<_> = bodies(n)
                        .into_iter()
                        .map(|body| RawEvent::from_bytes(body).unwrap())
                        .collect();
                    timed(&mut || {
                        for event in &events {
                            black_box(event.decode::<Order>().is_ok());
                        }
                    })
                },
                &mut |n| {
                    let keys: Vec<_> = next_ids(n).map(|n| format!("clink::evt_{n:024}")).collect();
                    timed(&mut || {
                        rt.block_on(async {
                            for key in &keys {
                                let Ok(Claim::Claimed(token)) =
                                    store.claim(key, DEFAULT_LEASE).await
                                else {
                                    unreachable!("fresh keys are claimed")
                                };
                                let retention = clink_webhooks::store::DEFAULT_RETENTION;
                                black_box(store.complete(key, &token, retention).await.is_ok());
                            }
                        });
                    })
                },
                &mut |n| time_in_process(&rt, &layer, n, size),
            ],
        );
        print!("{label:<6}");
        for median in medians {
            print!(" {:>10}", micros(median));
        }
        println!();
    }
}

fn over_http(rt: &Runtime, addrs: &Addrs, measure: bool) {
    let client = Client::builder(TokioExecutor::new()).build_http();
    println!("\nOver HTTP, one keep-alive connection, one request at a time; per delivery");
    println!("(median batch) and throughput relative to the bare service (1.0 = no cost):");
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>13} {:>11} {:>14}",
        "size",
        "bare",
        "hand",
        "careful",
        "layer",
        "hand/bare",
        "careful/bare",
        "layer/bare",
        "layer-careful"
    );
    for (size, label) in SIZES {
        let (budget, rounds, batch) = if measure {
            (Duration::from_secs(6), 10, 100)
        } else {
            (Duration::ZERO, 1, 2)
        };
        let medians = interleave(
            budget,
            rounds,
            batch,
            &mut [
                &mut |n| time_over_http(rt, &client, addrs.bare, n, size),
                &mut |n| time_over_http(rt, &client, addrs.hand, n, size),
                &mut |n| time_over_http(rt, &client, addrs.careful, n, size),
                &mut |n| time_over_http(rt, &client, addrs.layer, n, size),
            ],
        );
        let [bare, hand, careful, layer] = medians[..] else {
            unreachable!()
        };
        let gap_us = (layer.as_secs_f64() - careful.as_secs_f64()) * 1e6;
        println!(
            "{label:<6} {:>10} {:>10} {:>10} {:>10} {:>10.3} {:>13.3} {:>11.3} {:>11.1} µs",
            micros(bare),
            micros(hand),
            micros(careful),
            micros(layer),
            bare.as_secs_f64() / hand.as_secs_f64(),
            bare.as_secs_f64() / careful.as_secs_f64(),
            bare.as_secs_f64() / layer.as_secs_f64(),
            gap_us,
        );
    }
}

/// The careful receiver with each [`Ballast`] and the layer, at 1 KiB,
/// in process and over HTTP in the same run: what each costs beyond the
/// careful receiver in both, and how many times more over HTTP.
fn with_ballast(measure: bool) {
    const SIZE: usize = 1024;
    let contestants = [
        ("careful", Hand::careful()),
        ("+code", Hand::careful_with(Ballast::Code)),
        ("+loop", Hand::careful_with(Ballast::Loop)),
        (
            "+spin 2µs",
            Hand::careful_with(Ballast::Spin(Duration::from_micros(2))),
        ),
    ];
    let layer = layered();
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut addrs = rt.block_on(async {
        let mut addrs = Vec::new();
        for (_, hand) in &contestants {
            addrs.push(serve(hand.clone()).await);
        }
        addrs
    });
    addrs.push(rt.block_on(serve(layer.clone())));
    let client = Client::builder(TokioExecutor::new()).build_http();
    let (budget, rounds, batch, http_batch) = if measure {
        (Duration::from_secs(6), 10, 200, 100)
    } else {
        (Duration::ZERO, 1, 2, 2)
    };
    let mut hot: Vec<Timed<'_>> = contestants
        .iter()
        .map(|(_, hand)| Box::new(|n| time_in_process(&local, hand, n, SIZE)) as Timed<'_>)
        .collect();
    hot.push(Box::new(|n| time_in_process(&local, &layer, n, SIZE)));
    let hot = interleave_all(budget, rounds, batch, hot);
    let http: Vec<Timed<'_>> = addrs
        .iter()
        .map(|&addr| {
            let (rt, client) = (&rt, &client);
            Box::new(move |n| time_over_http(rt, client, addr, n, SIZE)) as Timed<'_>
        })
        .collect();
    let http = interleave_all(budget, rounds, http_batch, http);
    println!("\nWork added to the careful receiver, 1 KiB, in process and over HTTP (one");
    println!("connection, one request at a time); beyond the careful receiver, per delivery:");
    println!(
        "{:<10} {:>12} {:>12} {:>13} {:>11}",
        "receiver", "in process", "over HTTP", "in process +", "over HTTP +"
    );
    let names = contestants.iter().map(|(name, _)| *name).chain(["layer"]);
    for (k, name) in names.enumerate() {
        let extra = |t: &[Duration]| (t[k].as_secs_f64() - t[0].as_secs_f64()) * 1e6;
        println!(
            "{name:<10} {:>12} {:>12} {:>10.1} µs {:>8.1} µs",
            micros(hot[k]),
            micros(http[k]),
            extra(&hot),
            extra(&http),
        );
    }
}

struct Addrs {
    bare: SocketAddr,
    hand: SocketAddr,
    careful: SocketAddr,
    layer: SocketAddr,
}

/// What one load run saw.
#[derive(Default)]
struct Load {
    requests: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

/// `connections` keep-alive connections, each sending deliveries one after
/// another (signed as it goes) for `duration`.
async fn load(addr: SocketAddr, connections: usize, duration: Duration, size: usize) -> Load {
    // Signing a 64 KiB body costs as much as verifying it: the client signs
    // with a shared prefix (see `Signer`), so that the servers' work is
    // what the run measures.
    let signer = Arc::new(Signer::new(size));
    let check = signer.request("/", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let checked = layered().oneshot(check).await.unwrap();
    assert_eq!(checked.status(), 200, "the load's deliveries verify");
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let signer = Arc::clone(&signer);
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake::<_, Chunks>(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(connection);
                let uri = format!("http://{addr}/webhooks/clink");
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                    let request = signer.request(&uri, n);
                    let sent = Instant::now();
                    let response = sender.send_request(request).await.unwrap();
                    debug_assert_eq!(response.status(), 200);
                    response.into_body().collect().await.unwrap();
                    let took = sent.elapsed().as_micros();
                    latencies.push(u32::try_from(took).unwrap_or(u32::MAX));
                }
                latencies
            })
        })
        .collect();
    let mut all = Load::default();
    for task in tasks {
        all.latencies_us.extend(task.await.unwrap());
    }
    all.elapsed = start.elapsed();
    all.requests = all.latencies_us.len() as u64;
    all
}

/// The `per_mille`th value of `sorted`, in thousandths (500 for the median).
fn percentile(sorted: &[u32], per_mille: usize) -> u32 {
    let at = sorted.len().saturating_sub(1) * per_mille / 1000;
    sorted.get(at).copied().unwrap_or(0)
}

fn under_load(rt: &Runtime, addrs: &Addrs, measure: bool) {
    const CONNECTIONS: [usize; 4] = [1, 4, 16, 64];
    let (rounds, slice) = if measure {
        (4, Duration::from_millis(1500))
    } else {
        (1, Duration::from_millis(50))
    };
    println!(
        "\nUnder load: 1, 4, 16 and 64 keep-alive connections at once, {rounds} interleaved \
         runs of {:.1} s per service and size; throughput relative to the bare service:",
        slice.as_secs_f64()
    );
    println!(
        "{:<5} {:<6} {:<8} {:>10} {:>9} {:>9} {:>9}",
        "conns", "size", "server", "req/s", "p50", "p99", "ratio"
    );
    for (connections, (size, label)) in CONNECTIONS
        .into_iter()
        .flat_map(|c| SIZES.into_iter().map(move |s| (c, s)))
    {
        let targets = [
            ("bare", addrs.bare),
            ("hand", addrs.hand),
            ("careful", addrs.careful),
            ("layer", addrs.layer),
        ];
        let mut totals: Vec<Load> = targets.iter().map(|_| Load::default()).collect();
        for round in 0..rounds {
            for k in 0..targets.len() {
                let i = (k + round) % targets.len();
                let run = rt.block_on(load(targets[i].1, connections, slice, size));
                totals[i].requests += run.requests;
                totals[i].elapsed += run.elapsed;
                totals[i].latencies_us.extend(run.latencies_us);
            }
        }
        let rate = |l: &Load| l.requests as f64 / l.elapsed.as_secs_f64();
        let bare_rate = rate(&totals[0]);
        for ((name, _), total) in targets.iter().zip(&mut totals) {
            total.latencies_us.sort_unstable();
            println!(
                "{connections:<5} {label:<6} {name:<8} {:>10.0} {:>6} µs {:>6} µs {:>9.3}",
                rate(total),
                percentile(&total.latencies_us, 500),
                percentile(&total.latencies_us, 990),
                rate(total) / bare_rate,
            );
        }
    }
}

/// `--profile <hand|careful|layer> [count] [size]`: only `count` deliveries through one
/// receiver in process, for a profiler (`valgrind --tool=callgrind`).
///
/// `--profile-cold <hand|careful|layer> [count] [size]`: as `--profile`,
/// with the caches made cold before each delivery (see
/// [`time_deliveries`]).
///
/// `--profile-warm <hand|careful|layer> [count] [size]`: as `--profile`,
/// in batches signed just before they are delivered, as the timed
/// in-process pass runs them (`perf record`).
///
/// `--profile-http <bare|careful|layer> [count] [size]`: `count` deliveries
/// to one receiver over loopback HTTP, one keep-alive connection, one
/// request at a time, in one process (`perf record -g`).
fn profile(args: &[String]) -> bool {
    if let Some(at) = args.iter().position(|arg| arg == "--profile-http") {
        let count = args
            .get(at + 2)
            .and_then(|n| n.parse().ok())
            .unwrap_or(50_000);
        let size = args
            .get(at + 3)
            .and_then(|n| n.parse().ok())
            .unwrap_or(1024);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr = rt.block_on(async {
            match args.get(at + 1).map(String::as_str) {
                Some("bare") => serve(Bare).await,
                Some("careful") => serve(Hand::careful()).await,
                _ => serve(layered()).await,
            }
        });
        let client = Client::builder(TokioExecutor::new()).build_http();
        let took = time_over_http(&rt, &client, addr, count, size);
        println!(
            "{} per delivery",
            micros(took / u32::try_from(count).unwrap_or(1))
        );
        return true;
    }
    let Some((at, mode)) = args.iter().enumerate().find_map(|(at, arg)| {
        let mode = match arg.as_str() {
            "--profile" => Profiled::Once,
            "--profile-cold" => Profiled::Cold,
            "--profile-warm" => Profiled::Warm,
            _ => return None,
        };
        Some((at, mode))
    }) else {
        return false;
    };
    let count = args
        .get(at + 2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let size = args
        .get(at + 3)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1024);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let took = match args.get(at + 1).map(String::as_str) {
        Some("hand") => time_profiled(&rt, &Hand::new(), count, size, mode),
        Some("careful") => time_profiled(&rt, &Hand::careful(), count, size, mode),
        Some("tower") => time_profiled(&rt, &layered_tower(), count, size, mode),
        _ => time_profiled(&rt, &layered(), count, size, mode),
    };
    println!(
        "{} per delivery",
        micros(took / u32::try_from(count).unwrap_or(1))
    );
    true
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if profile(&args) {
        return;
    }
    let measure = receiver::measuring();
    // `cargo bench -p clink-webhooks-benches --bench receiver -- in_process` (or `late`,
    // `breakdown`, `http`, `load`, `ballast`) runs only the passes named.
    let named: Vec<&str> = ["in_process", "late", "breakdown", "http", "load", "ballast"]
        .into_iter()
        .filter(|pass| args.iter().any(|arg| arg == pass))
        .collect();
    let runs = |pass: &str| named.is_empty() || named.contains(&pass);
    if runs("in_process") {
        in_process(measure);
    }
    if runs("late") {
        late(measure);
    }
    if runs("breakdown") {
        breakdown(measure);
    }
    if runs("ballast") {
        with_ballast(measure);
    }
    if !runs("http") && !runs("load") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let addrs = rt.block_on(async {
        Addrs {
            bare: serve(Bare).await,
            hand: serve(Hand::new()).await,
            careful: serve(Hand::careful()).await,
            layer: serve(layered()).await,
        }
    });
    if runs("http") {
        over_http(&rt, &addrs, measure);
    }
    if runs("load") {
        under_load(&rt, &addrs, measure);
    }
}
