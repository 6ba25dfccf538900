//! When the freshness store fails, over real HTTP: a store that cannot be
//! read is a `503 store_unavailable` (the handler does not run, and Clink's
//! retry handles the event once the store is back); a record that fails
//! after the handler succeeded is logged, and the event stays handled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use clink_webhooks::events::{Freshness, ObjectKey, Version};

use clink_webhooks::store::FreshnessStore;
use clink_webhooks::store::{MemoryStore, StoreError, StoreErrorKind};
use clink_webhooks::BoxFuture;
use clink_webhooks::{events, ClinkLayer, EventRouter, Verifier};
use tower::Layer;
use tracing::Level;

use crate::support::capture::capture;
use crate::support::loopback::{deliver, serve, SECRET};

/// Freshness records in memory, whose reads or records can be made to fail
/// as if the store's server were down.
#[derive(Default)]
struct Switchable {
    inner: MemoryStore,
    reads_fail: AtomicBool,
    reads_hang: AtomicBool,
    records_fail: AtomicBool,
}

fn unavailable<T: Send + 'static>() -> BoxFuture<'static, Result<T, StoreError>> {
    Box::pin(std::future::ready(Err(StoreError::new(
        StoreErrorKind::Unavailable,
        "connection refused",
    ))))
}

impl FreshnessStore for Switchable {
    fn newest<'a>(
        &'a self, object: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Option<Version>, StoreError>> {
        if self.reads_fail.load(Ordering::SeqCst) {
            return unavailable();
        }
        if self.reads_hang.load(Ordering::SeqCst) {
            return Box::pin(std::future::pending());
        }
        self.inner.newest(object)
    }

    fn record<'a>(
        &'a self, object: &'a ObjectKey, version: &'a Version,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        if self.records_fail.load(Ordering::SeqCst) {
            return unavailable();
        }
        self.inner.record(object, version)
    }
}

/// A receiver whose order handler notes `id freshness` of every run.
async fn receiver(store: impl FreshnessStore) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let runs = Arc::new(Mutex::new(Vec::new()));
    let runs_in = Arc::clone(&runs);
    let router = EventRouter::new()
        .ordering(store)
        .on::<events::OrderSucceeded, _>(move |event| {
            let freshness = match event.freshness() {
                Freshness::Fresh => "fresh",
                Freshness::Stale { .. } => "stale",
                _ => "untracked",
            };
            runs_in
                .lock()
                .unwrap()
                .push(format!("{} {freshness}", event.id));
            async { Ok::<_, std::io::Error>(()) }
        });
    let service = ClinkLayer::new(Verifier::new(SECRET).unwrap()).layer(router);
    (serve(service).await, runs)
}

/// `order.succeeded` event `id` about one order, created at second `at`.
fn order(id: &str, at: u32) -> String {
    format!(
        r#"{{"id":"{id}","type":"order.succeeded","created":"2025-01-15T12:00:{at:02}.000Z","data":{{"orderId":"ord_outage"}}}}"#
    )
}

/// Also: an event the store is not asked about (no `created`) while the
/// store is down is handled untracked and ends no outage in the log; the
/// read that succeeds once the store is back does. Before, the untracked
/// event logged the store "available again" while it was still down.
#[tokio::test]
async fn a_freshness_store_that_cannot_be_read_is_a_503_and_the_retry_handles_the_event() {
    let (captured, _guard) = capture();
    let back = |captured: &crate::support::capture::Captured| {
        captured
            .events()
            .into_iter()
            .filter(|event| event.message.contains("available again"))
            .count()
    };
    let store = Arc::new(Switchable::default());
    store.reads_fail.store(true, Ordering::SeqCst);
    let (addr, runs) = receiver(Arc::clone(&store)).await;
    let body = order("evt_unread", 1);

    let reply = deliver(addr, &body).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (503, "store_unavailable")
    );
    assert!(reply.headers.contains_key("retry-after"));
    assert!(runs.lock().unwrap().is_empty(), "the handler ran");
    let untracked =
        r#"{"id":"evt_untracked","type":"order.succeeded","data":{"orderId":"ord_outage"}}"#;
    let reply = deliver(addr, untracked).await;
    assert_eq!(
        (reply.status, reply.json["outcome"].as_str()),
        (200, Some("handled"))
    );
    assert_eq!(back(&captured), 0, "{:#?}", captured.events());
    runs.lock().unwrap().clear();

    // The store is back: the retry is handled (the claim was released, so
    // it is neither a 409 nor a duplicate).
    store.reads_fail.store(false, Ordering::SeqCst);
    let reply = deliver(addr, &body).await;
    assert_eq!(
        (reply.status, reply.json["outcome"].as_str()),
        (200, Some("handled"))
    );
    assert_eq!(*runs.lock().unwrap(), ["evt_unread fresh"]);
    assert_eq!(back(&captured), 1, "{:#?}", captured.events());
}

/// A freshness store that never answers a read (one of the app's own that
/// hangs) is an outage too: `dispatch`, which bounds no handler, answers
/// `StoreUnavailable` within its 5 s read bound (on Tokio's paused clock),
/// and the handler does not run. Before, the dispatch waited for ever.
#[tokio::test(start_paused = true)]
async fn a_freshness_store_that_never_answers_a_read_is_unavailable() {
    use clink_webhooks::{sign, Outcome, RawEvent, Timestamp, VerifiedEvent};

    let store = Arc::new(Switchable::default());
    store.reads_hang.store(true, Ordering::SeqCst);
    let ran = Arc::new(AtomicBool::new(false));
    let ran_in = Arc::clone(&ran);
    let router = EventRouter::new()
        .ordering(Arc::clone(&store))
        .on::<events::OrderSucceeded, _>(move |_| {
            ran_in.store(true, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(()) }
        });
    let body = order("evt_hung", 1);
    let ts = Timestamp::now().as_millis().to_string();
    let verified = Verifier::new(SECRET)
        .unwrap()
        .verify(&ts, &sign(SECRET, &ts, body.as_bytes()), body.as_bytes())
        .unwrap();
    let event = VerifiedEvent::new(RawEvent::from_slice(body.as_bytes()).unwrap(), &verified);
    let started = tokio::time::Instant::now();
    let dispatched =
        tokio::time::timeout(std::time::Duration::from_secs(60), router.dispatch(event))
            .await
            .expect("the dispatch waited for the store for ever");
    assert_eq!(
        dispatched.outcome(),
        &Outcome::StoreUnavailable(StoreErrorKind::Timeout)
    );
    assert_eq!(started.elapsed(), std::time::Duration::from_secs(5));
    assert!(!ran.load(Ordering::SeqCst), "the handler ran");
}

/// The same with a real store whose server cannot be reached: a
/// `PostgresStore` on a port where nothing listens.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_postgres_freshness_store_that_is_down_is_a_503() {
    let (_held, port) = crate::support::loopback::refusing_port();
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(port).user("postgres");
    let pool = crate::support::stores::pg_pool_for(config);
    let store = clink_webhooks::store::PostgresStore::new(pool);
    let (addr, runs) = receiver(store).await;
    let reply = deliver(addr, &order("evt_pg_down", 1)).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (503, "store_unavailable")
    );
    assert!(runs.lock().unwrap().is_empty(), "the handler ran");
}

#[tokio::test]
async fn a_failed_freshness_record_is_logged_and_the_event_stays_handled() {
    let (captured, _guard) = capture();
    let store = Arc::new(Switchable::default());
    store.records_fail.store(true, Ordering::SeqCst);
    let (addr, runs) = receiver(Arc::clone(&store)).await;

    let newer = order("evt_newer", 2);
    let reply = deliver(addr, &newer).await;
    assert_eq!(
        (reply.status, reply.json["outcome"].as_str()),
        (200, Some("handled"))
    );
    let logged: Vec<_> = captured
        .events()
        .into_iter()
        .filter(|event| {
            event.level == Level::ERROR
                && event.target.starts_with("clink_webhooks")
                && event.message.contains("could not be recorded")
        })
        .collect();
    assert_eq!(logged.len(), 1, "{:#?}", captured.events());
    assert_eq!(logged[0].fields["event_id"], "\"evt_newer\"");
    // And counted as an outage of the store's records: one line when it
    // starts, whatever follows (a second record failing here).
    let other = r#"{"id":"evt_other","type":"order.succeeded","created":"2025-01-15T12:00:03.000Z","data":{"orderId":"ord_outage_2"}}"#;
    assert_eq!(deliver(addr, other).await.status, 200);
    let outages = |captured: &crate::support::capture::Captured| {
        captured
            .events()
            .into_iter()
            .filter(|event| {
                event.level == Level::ERROR
                    && event
                        .message
                        .contains("freshness store (recording versions) unavailable")
            })
            .count()
    };
    assert_eq!(outages(&captured), 1, "{:#?}", captured.events());

    // Not lost, not run again: the event is marked handled.
    assert_eq!(deliver(addr, &newer).await.json["outcome"], "duplicate");
    // What the log warns of: its version was not kept, so an older event
    // about the same order still looks fresh.
    store.records_fail.store(false, Ordering::SeqCst);
    assert_eq!(deliver(addr, &order("evt_older", 1)).await.status, 200);
    assert_eq!(
        *runs.lock().unwrap(),
        ["evt_newer fresh", "evt_other fresh", "evt_older fresh"]
    );
}
