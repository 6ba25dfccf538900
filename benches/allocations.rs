//! Heap allocations per delivery, counted by a global allocator that
//! counts: the hand-written receiver, the careful one, and the layer in
//! process (over its router called directly, and as a tower service), on
//! the same signed 1 KiB and 64 KiB deliveries as `benches/receiver.rs`;
//! and the layer over its router with each request given the client's
//! address first, as the crate's `Server` gives it (`served`).
//!
//! ```text
//! cargo bench -p clink-webhooks-benches --bench allocations
//! ```
//!
//! Its own binary, since counting slows every allocation a little and the
//! timing benches should not pay for it. Nothing here asserts a count.
#![allow(clippy::print_stdout)]

#[path = "support/receiver.rs"]
#[allow(
    dead_code,
    reason = "shared with benches/receiver.rs, which uses all of it"
)]
mod receiver;

use std::alloc::System;
use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use clink_webhooks::server::Peer;
use http::{Request, Response};
use http_body_util::Full;
use receiver::{bare_hmac, keyed, layered, layered_tower, signed, Hand, SIZES};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{Service, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations (and reallocations) and bytes per delivery through `service`,
/// over `count` fresh deliveries after a warm-up; with `peer`, each request
/// is given the client's address first, as the crate's `Server` gives it
/// (counted with the delivery).
fn per_delivery<S, ResB>(
    rt: &tokio::runtime::Runtime, service: &S, first_id: &mut u64, count: u64, size: usize,
    peer: bool,
) -> (f64, f64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>, Error = Infallible> + Clone,
{
    let mut run = |count: u64| {
        let requests: Vec<_> = (*first_id..*first_id + count)
            .map(|n| signed("/webhooks/clink", n, size))
            .collect();
        *first_id += count;
        let region = Region::new(GLOBAL);
        rt.block_on(async {
            for mut request in requests {
                if peer {
                    let address = std::net::SocketAddr::from(([192, 0, 2, 1], 40_000));
                    request.extensions_mut().insert(Peer(address));
                }
                let response = service.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), 200);
                drop(black_box(response));
            }
        });
        region.change()
    };
    run(100);
    let change = run(count);
    let allocations = (change.allocations + change.reallocations) as f64 / count as f64;
    (allocations, change.bytes_allocated as f64 / count as f64)
}

fn main() {
    let count = if receiver::measuring() { 10_000 } else { 10 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let layer = layered();
    let tower = layered_tower();
    let hand = Hand::new();
    let careful = Hand::careful();
    let key = keyed();
    let mut next_id = 0;
    println!("\nHeap allocations per delivery in process (allocations + reallocations; bytes):");
    // The columns of the rows below, each as wide as its figures.
    println!(
        "size     hmac     hand  careful    tower    layer   served   hand bytes careful bytes  tower bytes  layer bytes served bytes"
    );
    for (size, label) in SIZES {
        let body = receiver::body(0, size);
        let region = Region::new(GLOBAL);
        black_box(bare_hmac(&key, "1736942400000", &body));
        let hmac = region.change().allocations;
        let (hand_allocs, hand_bytes) = per_delivery(&rt, &hand, &mut next_id, count, size, false);
        let (careful_allocs, careful_bytes) =
            per_delivery(&rt, &careful, &mut next_id, count, size, false);
        let (tower_allocs, tower_bytes) =
            per_delivery(&rt, &tower, &mut next_id, count, size, false);
        let (layer_allocs, layer_bytes) =
            per_delivery(&rt, &layer, &mut next_id, count, size, false);
        let (served_allocs, served_bytes) =
            per_delivery(&rt, &layer, &mut next_id, count, size, true);
        println!(
            "{label:<6} {hmac:>6} {hand_allocs:>8.1} {careful_allocs:>8.1} {tower_allocs:>8.1} {layer_allocs:>8.1} {served_allocs:>8.1} {hand_bytes:>12.0} {careful_bytes:>13.0} {tower_bytes:>12.0} {layer_bytes:>12.0} {served_bytes:>12.0}"
        );
    }
}
