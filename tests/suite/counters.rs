//! Every [`Metrics`] counter, moved by the outcome its docs name and by
//! nothing else: each step below delivers over real HTTP and checks that
//! exactly the counters it expects moved, by exactly what it expects.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clink_webhooks::accounts::{AccountFrom, KeySource, KeySourceError};
use clink_webhooks::events::{ObjectKey, Version};
use clink_webhooks::layer::Metrics;
use clink_webhooks::store::FreshnessStore;
use clink_webhooks::store::{
    Claim, IdempotencyStore, LeaseToken, MemoryInbox, MemoryStore, Settle, StoreError,
    StoreErrorKind,
};
use clink_webhooks::BoxFuture;
use clink_webhooks::{events, ClinkLayer, EventRouter, Verifier};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tower::Layer;

use crate::support::loopback::{deliver, event, http1_head, send, serve, signed, SECRET};
use crate::support::process::PATIENCE;

const NAMES: [&str; 12] = [
    "handled",
    "unhandled",
    "queued",
    "duplicates",
    "in_flight",
    "overloaded",
    "rejected",
    "handler_failures",
    "store_errors",
    "settle_errors",
    "lease_lost",
    "abandoned",
];

fn counts(metrics: &Metrics) -> [u64; 12] {
    [
        metrics.handled(),
        metrics.unhandled(),
        metrics.queued(),
        metrics.duplicates(),
        metrics.in_flight(),
        metrics.overloaded(),
        metrics.rejected(),
        metrics.handler_failures(),
        metrics.store_errors(),
        metrics.settle_errors(),
        metrics.lease_lost(),
        metrics.abandoned(),
    ]
}

/// Watches one layer's counters between steps.
struct Watch {
    metrics: Arc<Metrics>,
    last: [u64; 12],
}

impl Watch {
    fn new(layer: &ClinkLayer) -> Self {
        let metrics = layer.metrics();
        let last = counts(&metrics);
        Self { metrics, last }
    }

    /// Checks that since the last check exactly the counters in `moved`
    /// changed, each by its amount, after `step` (what was done, for the
    /// message).
    #[track_caller]
    fn moved(&mut self, step: &str, moved: &[(&str, u64)]) {
        let now = counts(&self.metrics);
        for (i, name) in NAMES.iter().enumerate() {
            let expected = moved
                .iter()
                .find(|(counter, _)| counter == name)
                .map_or(0, |(_, by)| *by);
            assert_eq!(
                now[i] - self.last[i],
                expected,
                "{step}: counter {name} (all counters: {:?})",
                NAMES.iter().zip(now).collect::<Vec<_>>()
            );
        }
        self.last = now;
    }
}

fn verifier() -> Verifier {
    Verifier::new(SECRET).unwrap()
}

fn order(id: &str, created: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"order.succeeded","created":"{created}","data":{{"orderId":"ord_c"}}}}"#
    )
}

#[tokio::test]
async fn handled_duplicates_unhandled_and_rejected_count_their_outcomes() {
    let layer = ClinkLayer::new(verifier());
    let mut watch = Watch::new(&layer);
    let router = EventRouter::new()
        .ordering(MemoryStore::new())
        .skip_stale()
        .on::<events::OrderSucceeded, _>(|_event| async { Ok::<_, std::io::Error>(()) });
    let addr = serve(layer.layer(router)).await;

    let newer = order("evt_newer", "2025-01-15T12:00:01.000Z");
    assert_eq!(deliver(addr, &newer).await.status, 200);
    watch.moved("a handled event", &[("handled", 1)]);
    assert_eq!(deliver(addr, &newer).await.json["outcome"], "duplicate");
    watch.moved("a duplicate", &[("duplicates", 1)]);
    let older = order("evt_older", "2025-01-15T12:00:00.000Z");
    assert_eq!(deliver(addr, &older).await.json["outcome"], "skipped_stale");
    watch.moved("a stale event skipped", &[("unhandled", 1)]);
    let nobody = event("evt_nobody", "refund.succeeded", "{}");
    assert_eq!(deliver(addr, &nobody).await.json["outcome"], "unhandled");
    watch.moved("a type nobody handles", &[("unhandled", 1)]);

    // Refused before the store is asked: method, headers, signature, body
    // size, envelope, event id.
    let get = http::Request::get(format!("http://{addr}/webhooks/clink"))
        .body(Default::default())
        .unwrap();
    assert_eq!(send(get).await.status, 405);
    let mut unsigned = signed(addr, &newer).build();
    unsigned
        .headers_mut()
        .remove(clink_webhooks::signature::SIGNATURE_HEADER);
    assert_eq!(send(unsigned).await.status, 400);
    assert_eq!(
        send(signed(addr, &newer).tamper().build()).await.status,
        401
    );
    let head = http1_head(
        &signed(addr, "").build::<http_body_util::Full<bytes::Bytes>>(),
        "content-length: 2000000",
    );
    assert_eq!(
        crate::support::loopback::raw_exchange(addr, &head, &[]).await,
        413
    );
    assert_eq!(deliver(addr, r#"{"id":"evt_no_type"}"#).await.status, 400);
    let long_id = event(&"e".repeat(1100), "order.succeeded", "{}");
    assert_eq!(deliver(addr, &long_id).await.status, 400);
    watch.moved("six refusals", &[("rejected", 6)]);
}

#[tokio::test]
async fn queued_counts_deliveries_kept_in_the_inbox() {
    let layer = ClinkLayer::new(verifier());
    let mut watch = Watch::new(&layer);
    let addr = serve(layer.intake(MemoryInbox::new())).await;
    let body = order("evt_queued", "2025-01-15T12:00:00.000Z");
    assert_eq!(deliver(addr, &body).await.json["outcome"], "queued");
    watch.moved("a delivery kept in the inbox", &[("queued", 1)]);
    assert_eq!(deliver(addr, &body).await.json["outcome"], "duplicate");
    watch.moved("its duplicate", &[("duplicates", 1)]);
}

#[tokio::test]
async fn in_flight_counts_a_duplicate_met_while_the_first_runs() {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (entered_in, release_in) = (Arc::clone(&entered), Arc::clone(&release));
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
        let (entered, release) = (Arc::clone(&entered_in), Arc::clone(&release_in));
        async move {
            entered.notify_one();
            release.notified().await;
            Ok::<_, std::io::Error>(())
        }
    });
    let layer = ClinkLayer::new(verifier());
    let mut watch = Watch::new(&layer);
    let addr = serve(layer.layer(router)).await;
    let body = order("evt_in_flight", "2025-01-15T12:00:00.000Z");
    let first = tokio::spawn({
        let body = body.clone();
        async move { deliver(addr, &body).await }
    });
    entered.notified().await;
    assert_eq!(deliver(addr, &body).await.status, 409);
    watch.moved("a duplicate while the first runs", &[("in_flight", 1)]);
    release.notify_one();
    assert_eq!(first.await.unwrap().status, 200);
    watch.moved("the first, finished", &[("handled", 1)]);
}

/// A verified delivery dropped while its handler runs (the sender hung
/// up, a timeout outside the layer) counts as abandoned, and nothing else:
/// its claim is released, so the retry runs the handler.
#[tokio::test]
async fn abandoned_counts_a_delivery_dropped_before_it_answered() {
    use tower::{Service, ServiceExt};
    let entered = Arc::new(Notify::new());
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (entered_in, runs_in) = (Arc::clone(&entered), Arc::clone(&runs));
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
        let (entered, runs) = (Arc::clone(&entered_in), Arc::clone(&runs_in));
        async move {
            // The first run waits for ever: its delivery is dropped.
            if runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                entered.notify_one();
                std::future::pending::<()>().await;
            }
            Ok::<_, std::io::Error>(())
        }
    });
    let layer = ClinkLayer::new(verifier());
    let mut watch = Watch::new(&layer);
    let mut service = layer.layer(router);
    let body = order("evt_abandoned", "2025-01-15T12:00:00.000Z");
    let request = || {
        clink_webhooks::testing::SignedRequest::new(SECRET, body.clone())
            .build::<http_body_util::Full<bytes::Bytes>>()
    };
    let delivery = Service::<http::Request<http_body_util::Full<bytes::Bytes>>>::call(
        ServiceExt::<http::Request<http_body_util::Full<bytes::Bytes>>>::ready(&mut service)
            .await
            .unwrap(),
        request(),
    );
    tokio::select! {
        _ = delivery => panic!("the first delivery answered"),
        () = entered.notified() => {}
    }
    watch.moved(
        "a delivery dropped while its handler ran",
        &[("abandoned", 1)],
    );
    let retry = service.oneshot(request()).await.unwrap();
    assert_eq!(retry.status(), 200);
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    watch.moved("its retry, handled", &[("handled", 1)]);
}

#[tokio::test]
async fn overloaded_counts_deliveries_past_the_body_budget() {
    // One body at a time.
    let layer = ClinkLayer::new(verifier())
        .body_budget(clink_webhooks::layer::DEFAULT_BODY_LIMIT, 1)
        .unwrap();
    let mut watch;
    let addr = serve(layer.layer(EventRouter::new())).await;
    let body = order("evt_budget", "2025-01-15T12:00:00.000Z");

    // A body that starts and stops arriving holds the one slot.
    let head = http1_head(
        &signed(addr, &body).build::<http_body_util::Full<bytes::Bytes>>(),
        &format!("content-length: {}", body.len()),
    );
    let hold = async || {
        let mut held = tokio::net::TcpStream::connect(addr).await.unwrap();
        held.write_all(head.as_bytes()).await.unwrap();
        held.write_all(&body.as_bytes()[..10]).await.unwrap();
        held
    };
    let mut held = hold().await;

    // Until the server has read the held body's first bytes and taken the
    // slot, a delivery goes through: each of those has an id of its own,
    // and the counters are looked at from the one refused. (A delivery
    // that came a second or more after the held body took the slot, on a
    // machine that slow, ends the held body to make room: it is answered,
    // and the test holds another.)
    let started = std::time::Instant::now();
    let mut probe = 0;
    let reply = loop {
        watch = Watch::new(&layer);
        let reply = deliver(
            addr,
            &order(&format!("evt_probe_{probe}"), "2025-01-15T12:00:00.000Z"),
        )
        .await;
        if reply.status != 200 {
            break reply;
        }
        let mut answer = [0; 1];
        if let Ok(read) = tokio::time::timeout(Duration::ZERO, held.peek(&mut answer)).await {
            assert!(!matches!(read, Ok(0)), "the held body closed unanswered");
            held = hold().await;
        }
        probe += 1;
        assert!(
            started.elapsed() < PATIENCE,
            "the held body never took the slot"
        );
    };
    assert_eq!((reply.status, reply.error_code()), (503, "overloaded"));
    watch.moved("a delivery past the budget", &[("overloaded", 1)]);

    // The held body, cut short, is refused; then the slot is free again.
    held.shutdown().await.unwrap();
    drop(held);
    let started = std::time::Instant::now();
    while watch.metrics.rejected() == 0 && started.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watch.moved("the held body cut short", &[("rejected", 1)]);
    assert_eq!(deliver(addr, &body).await.status, 200);
    watch.moved("the delivery again", &[("unhandled", 1)]);
}

/// Bodies that stall keep no real delivery out for long: with the budget
/// full of bodies sent in part (by a sender without the key, say), a
/// delivery is refused `503` while they have been read less than a
/// second; from then on, the one read longest is ended (its sender
/// answered `503`) to make room, and the delivery is handled.
/// Before, every delivery was refused until the body timeout (an hour
/// here).
#[tokio::test]
async fn bodies_that_stall_are_ended_to_make_room_for_a_delivery() {
    const STALLED: usize = 4;
    let layer = ClinkLayer::new(verifier())
        .body_limit(16 * 1024)
        .and_then(|layer| layer.body_budget(STALLED * 16 * 1024, 64))
        .and_then(|layer| layer.body_timeout(Duration::from_secs(3600)))
        .unwrap();
    let addr = serve(layer.layer(EventRouter::new())).await;

    // Each declares 16 KiB and sends 9 KiB of it: each holds 16 KiB, the
    // four the whole budget.
    let body = order("evt_stalled", "2025-01-15T12:00:00.000Z");
    let head = http1_head(
        &signed(addr, &body).build::<http_body_util::Full<bytes::Bytes>>(),
        "content-length: 16384",
    );
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&[b' '; 9 * 1024]).await.unwrap();
        stalled.push(stream);
    }

    // Refused once the stalled bodies fill the budget; handled once one of
    // them was ended for it (answered `503`). (On a machine slow enough
    // that the stalled bodies were a second old when the budget filled,
    // no delivery is refused at all.)
    let started = std::time::Instant::now();
    let mut answer = [0; 12];
    for probe in 0.. {
        let reply = deliver(
            addr,
            &order(&format!("evt_probe_{probe}"), "2025-01-15T12:00:00.000Z"),
        )
        .await;
        match reply.status {
            503 => assert_eq!(reply.error_code(), "overloaded"),
            200 => {
                let mut ended = None;
                for stream in &stalled {
                    let peeked =
                        tokio::time::timeout(Duration::ZERO, stream.peek(&mut answer)).await;
                    // The answer's status line whole.
                    if let Ok(Ok(n)) = peeked {
                        if n == answer.len() {
                            ended = Some(String::from_utf8_lossy(&answer).into_owned());
                        }
                    }
                }
                if let Some(ended) = ended {
                    assert!(ended.starts_with("HTTP/1.1 503"), "{ended}");
                    break;
                }
            }
            other => panic!("answered {other}"),
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no stalled body was ended for a delivery"
        );
        // Paced: the refusals are not what is waited for.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn handler_failures_count_errors_refusals_panics_and_timeouts() {
    let router = EventRouter::new()
        .on::<events::OrderFailed, _>(|_event| async {
            Err::<(), _>(std::io::Error::other("the database is down"))
        })
        .on::<events::OrderCreated, _>(|_event| async {
            panic!("a bug");
            #[allow(unreachable_code)]
            Ok::<_, std::io::Error>(())
        })
        .on::<events::RefundCreated, _>(|_event| async {
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        });
    let layer = ClinkLayer::new(verifier())
        .handler_timeout(Duration::from_millis(100))
        .unwrap();
    let mut watch = Watch::new(&layer);
    let addr = serve(layer.layer(router)).await;

    let reply = deliver(addr, &event("evt_err", "order.failed", "{}")).await;
    assert_eq!(reply.error_code(), "handler_failed");
    watch.moved("a handler error", &[("handler_failures", 1)]);
    let reply = deliver(addr, &event("evt_panic", "order.created", "{}")).await;
    assert_eq!(reply.error_code(), "handler_panicked");
    watch.moved("a panic", &[("handler_failures", 1)]);
    let reply = deliver(addr, &event("evt_slow", "refund.created", "{}")).await;
    assert_eq!(reply.error_code(), "handler_timeout");
    watch.moved("a timeout", &[("handler_failures", 1)]);

    // An inner service answering a non-2xx status of its own.
    let refusing = tower::service_fn(|_request: http::Request<_>| async {
        let mut response = http::Response::new(http_body_util::Full::<bytes::Bytes>::default());
        *response.status_mut() = http::StatusCode::UNPROCESSABLE_ENTITY;
        Ok::<_, std::convert::Infallible>(response)
    });
    let layer = ClinkLayer::new(verifier());
    let mut watch = Watch::new(&layer);
    let addr = serve(layer.layer(refusing)).await;
    let reply = deliver(addr, &event("evt_422", "order.created", "{}")).await;
    assert_eq!(reply.status, 422);
    watch.moved("a handler's 422", &[("handler_failures", 1)]);
}

/// An idempotency store over memory whose calls fail as set.
#[derive(Default)]
struct Failing {
    inner: MemoryStore,
    claim: Option<StoreErrorKind>,
    complete: Option<StoreErrorKind>,
    release: Option<StoreErrorKind>,
}

fn failed<T: Send + 'static>(kind: StoreErrorKind) -> BoxFuture<'static, Result<T, StoreError>> {
    Box::pin(std::future::ready(Err(StoreError::new(
        kind,
        "the test's store fails this call",
    ))))
}

impl IdempotencyStore for Failing {
    fn claim<'a>(
        &'a self, key: &'a str, lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        match self.claim {
            Some(kind) => failed(kind),
            None => self.inner.claim(key, lease),
        }
    }

    fn complete<'a>(
        &'a self, key: &'a str, token: &'a LeaseToken, retention: Duration,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        match self.complete {
            Some(kind) => failed(kind),
            None => self.inner.complete(key, token, retention),
        }
    }

    fn release<'a>(
        &'a self, key: &'a str, token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        match self.release {
            Some(kind) => failed(kind),
            None => self.inner.release(key, token),
        }
    }
}

/// A store of the app's own that panics: in its claim's future, or in the
/// call that makes its completion's.
struct Panicking {
    inner: MemoryStore,
    claim: bool,
    complete: bool,
}

impl IdempotencyStore for Panicking {
    fn claim<'a>(
        &'a self, key: &'a str, lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        if self.claim {
            return Box::pin(async { panic!("the test's store panics in a claim") });
        }
        self.inner.claim(key, lease)
    }

    fn complete<'a>(
        &'a self, key: &'a str, token: &'a LeaseToken, retention: Duration,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        assert!(!self.complete, "the test's store panics in a completion");
        self.inner.complete(key, token, retention)
    }

    fn release<'a>(
        &'a self, key: &'a str, token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        self.inner.release(key, token)
    }
}

/// A store of the app's own that panics is a store that failed: a claim
/// that panics is answered `503` (Clink retries) and counted, a completion
/// that panics after the handler succeeded still answers `200`, counted as
/// a settle error. Before, the panic ended the delivery's task, and the
/// sender's connection closed unanswered.
#[tokio::test]
async fn a_store_that_panics_is_a_store_that_failed() {
    let router = EventRouter::new()
        .on::<events::OrderSucceeded, _>(|_event| async { Ok::<_, std::io::Error>(()) });
    for (claim, complete) in [(true, false), (false, true)] {
        let store = Panicking {
            inner: MemoryStore::new(),
            claim,
            complete,
        };
        let layer = ClinkLayer::new(verifier()).store(store);
        let mut watch = Watch::new(&layer);
        let addr = serve(layer.layer(router.clone())).await;
        let body = order("evt_panics", "2025-01-15T12:00:00.000Z");
        let answer = deliver(addr, &body).await;
        if claim {
            assert_eq!(answer.status, 503);
            assert_eq!(answer.error_code(), "store_unavailable");
            watch.moved("a claim that panicked", &[("store_errors", 1)]);
        } else {
            assert_eq!(answer.status, 200);
            watch.moved(
                "a completion that panicked",
                &[("handled", 1), ("settle_errors", 1)],
            );
        }
    }
}

/// A key source of the app's own that panics: in its lookup's future, or
/// in the call that makes it.
struct KeysPanic {
    how: Panics,
}

/// Where the test's key source panics.
#[derive(Debug, Clone, Copy)]
enum Panics {
    /// In the lookup's future.
    InLookup,
    /// In the call that makes it.
    InCall,
    /// As its future, which never answers, is dropped at the timeout.
    OnDrop,
}

/// A future that never answers, and panics as it is dropped.
struct PanicsOnDrop;

impl std::future::Future for PanicsOnDrop {
    type Output = Result<Option<Arc<Verifier>>, KeySourceError>;

    fn poll(
        self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Pending
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("the test's key source panics as its lookup is dropped");
    }
}

impl KeySource for KeysPanic {
    fn verifier<'a>(
        &'a self, _account: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Verifier>>, KeySourceError>> {
        match self.how {
            Panics::InLookup => {
                Box::pin(async { panic!("the test's key source panics in its lookup") })
            }
            Panics::InCall => panic!("the test's key source panics in its call"),
            Panics::OnDrop => Box::pin(PanicsOnDrop),
        }
    }
}

/// A key source that panics is a key source that failed: the delivery is
/// answered `503` (Clink retries it) and counted. Before, the panic ended
/// the delivery's task, and the sender's connection closed unanswered.
#[tokio::test]
async fn a_key_source_that_panics_is_a_key_source_that_failed() {
    let body = order("evt_keys_panic", "2025-01-15T12:00:00.000Z");
    for how in [Panics::InLookup, Panics::InCall, Panics::OnDrop] {
        let layer = ClinkLayer::with_key_source(AccountFrom::LastPathSegment, KeysPanic { how })
            .store_timeout(Duration::from_millis(50))
            .unwrap();
        let mut watch = Watch::new(&layer);
        let addr = serve(layer.layer(EventRouter::new())).await;
        let request = signed(addr, &body)
            .uri(crate::support::loopback::endpoint(
                addr,
                "/webhooks/clink/acct_1",
            ))
            .build();
        let answer = send(request).await;
        assert_eq!(answer.status, 503, "panicking {how:?}");
        assert_eq!(answer.error_code(), "keys_unavailable");
        watch.moved("a key source that panicked", &[("store_errors", 1)]);
    }
}

/// A key source whose lookups fail.
struct KeysDown;

impl KeySource for KeysDown {
    fn verifier<'a>(
        &'a self, _account: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Verifier>>, KeySourceError>> {
        Box::pin(std::future::ready(Err(KeySourceError::new(
            "the accounts database is down",
        ))))
    }
}

/// A freshness store that cannot be read.
struct FreshnessDown;

impl FreshnessStore for FreshnessDown {
    fn newest<'a>(
        &'a self, _: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Option<Version>, StoreError>> {
        failed(StoreErrorKind::Unavailable)
    }

    fn record<'a>(
        &'a self, _: &'a ObjectKey, _: &'a Version,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        failed(StoreErrorKind::Unavailable)
    }
}

#[tokio::test]
async fn store_errors_count_every_store_or_key_source_that_cannot_answer() {
    let body = order("evt_store", "2025-01-15T12:00:00.000Z");

    let down = Failing {
        claim: Some(StoreErrorKind::Unavailable),
        ..Failing::default()
    };
    let layer = ClinkLayer::new(verifier()).store(down);
    let mut watch = Watch::new(&layer);
    let addr = serve(layer.layer(EventRouter::new())).await;
    assert_eq!(deliver(addr, &body).await.error_code(), "store_unavailable");
    watch.moved("a claim the store could not answer", &[("store_errors", 1)]);

    let layer = ClinkLayer::with_key_source(AccountFrom::LastPathSegment, KeysDown);
    let mut watch = Watch::new(&layer);
    let addr = serve(layer.layer(EventRouter::new())).await;
    let request = signed(addr, &body)
        .uri(crate::support::loopback::endpoint(
            addr,
            "/webhooks/clink/acct_1",
        ))
        .build();
    assert_eq!(send(request).await.error_code(), "keys_unavailable");
    watch.moved("a key source that cannot answer", &[("store_errors", 1)]);

    let router = EventRouter::new()
        .ordering(FreshnessDown)
        .on::<events::OrderSucceeded, _>(|_event| async { Ok::<_, std::io::Error>(()) });
    let layer = ClinkLayer::new(verifier());
    let mut watch = Watch::new(&layer);
    let addr = serve(layer.layer(router)).await;
    assert_eq!(deliver(addr, &body).await.error_code(), "store_unavailable");
    watch.moved(
        "a freshness store that cannot be read",
        &[("store_errors", 1)],
    );
}

#[tokio::test]
async fn settle_errors_count_completions_and_releases_that_fail() {
    let fails = Arc::new(Mutex::new(true));
    let fails_in = Arc::clone(&fails);
    let router = EventRouter::new()
        .on::<events::OrderSucceeded, _>(|_event| async { Ok::<_, std::io::Error>(()) })
        .on::<events::OrderFailed, _>(move |_event| {
            let fail = *fails_in.lock().unwrap();
            async move {
                if fail {
                    Err(std::io::Error::other("fails"))
                } else {
                    Ok(())
                }
            }
        });
    // The store refuses to settle (a protocol error is not tried again).
    let store = Failing {
        complete: Some(StoreErrorKind::Protocol),
        release: Some(StoreErrorKind::Protocol),
        ..Failing::default()
    };
    let layer = ClinkLayer::new(verifier()).store(store);
    let mut watch = Watch::new(&layer);
    let addr = serve(layer.layer(router)).await;

    let body = order("evt_settle", "2025-01-15T12:00:00.000Z");
    assert_eq!(deliver(addr, &body).await.status, 200);
    watch.moved(
        "a handled event whose completion failed",
        &[("handled", 1), ("settle_errors", 1)],
    );
    let failing = event("evt_release", "order.failed", "{}");
    assert_eq!(deliver(addr, &failing).await.status, 500);
    watch.moved(
        "a failed handler whose release failed",
        &[("handler_failures", 1), ("settle_errors", 1)],
    );
}

/// A lease that ends before the handler's completion reaches Redis (its
/// key gone, as Redis drops it at the lease's end; here deleted while the
/// handler runs, so that nothing depends on timing): the store answers
/// `LeaseLost`, the delivery is still acknowledged, the loss is counted,
/// and the next delivery runs the handler again.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lost_counts_a_completion_that_came_after_the_lease() {
    let _servers = crate::support::servers::shared().await;
    let url = crate::support::stores::server_url("REDIS_URL");
    let patience = Some(Duration::from_secs(5));
    let client = redis::Client::open(url.as_str()).expect("REDIS_URL parses");
    let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(patience);
    let manager = redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .expect("a connection to REDIS_URL");
    let store = clink_webhooks::store::RedisStore::new(manager)
        .with_timeout(Duration::from_secs(5))
        .unwrap();
    // Long enough that the handler's DEL runs inside it on a busy machine:
    // the key is taken away by the test, not by the clock.
    let lease = Duration::from_secs(30);
    let prefix = format!("lease-lost-{}", std::process::id());
    let layer = ClinkLayer::new(verifier())
        .store(store)
        .key_prefix(prefix.clone())
        .and_then(|layer| layer.lease(lease))
        .unwrap();
    let mut watch = Watch::new(&layer);
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let runs_in = Arc::clone(&runs);
    let id = format!("evt_lease_lost_{}", std::process::id());
    // The claim's key (`{prefix}:{account}:{id}`, no account here), and a
    // connection to delete it with, made before the delivery.
    let key: Arc<str> = Arc::from(format!("{prefix}::{id}"));
    let raw = crate::support::stores::redis_connection(
        &redis::Client::open(url.as_str()).expect("REDIS_URL parses"),
    )
    .await
    .expect("a connection to REDIS_URL");
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
        let first = runs_in.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        let (key, mut raw) = (Arc::clone(&key), raw.clone());
        async move {
            if first {
                // The lease ends: its key is gone before the completion.
                let deleted: i64 = redis::cmd("DEL")
                    .arg(&*key)
                    .query_async(&mut raw)
                    .await
                    .expect("DEL");
                assert_eq!(deleted, 1, "the claim's key {key}");
            }
            Ok::<_, std::io::Error>(())
        }
    });
    let addr = serve(layer.layer(router)).await;
    let body = order(&id, "2025-01-15T12:00:00.000Z");
    let reply = deliver(addr, &body).await;
    assert_eq!(
        (reply.status, reply.json["outcome"].as_str()),
        (200, Some("handled"))
    );
    watch.moved(
        "a completion after the lease ended",
        &[("handled", 1), ("lease_lost", 1)],
    );
    // Not marked completed: the next delivery runs the handler again.
    assert_eq!(deliver(addr, &body).await.json["outcome"], "handled");
    watch.moved("the next delivery", &[("handled", 1)]);
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
}
