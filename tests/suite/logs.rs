//! What the layer logs, captured with a `tracing` subscriber: one
//! `clink_delivery` span per delivery with its fields, and no signing key
//! in any log line or response, whatever the delivery's outcome.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use clink_webhooks::store::{Claim, IdempotencyStore, LeaseToken, Settle, StoreError};
use clink_webhooks::store::{MemoryStore, StoreErrorKind};
use clink_webhooks::BoxFuture;
use clink_webhooks::{events, ClinkLayer, EventRouter, SigningKey, Verifier};
use http_body_util::Full;
use tower::Layer;

use crate::support::capture::capture;
use crate::support::loopback::{
    deliver, event, http1_head, raw_request, send, serve, signed, ThenClient, SECRET,
};
use crate::support::secrets::assert_no_key;

fn order(id: &str) -> String {
    event(id, "order.succeeded", r#"{"orderId":"ord_log"}"#)
}

#[tokio::test]
async fn every_delivery_has_one_clink_delivery_span_with_its_outcome() {
    let (captured, _guard) = capture();
    let router = EventRouter::new()
        .on::<events::OrderSucceeded, _>(|_event| async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok::<_, std::io::Error>(())
        })
        .on::<events::OrderFailed, _>(|_event| async {
            Err::<(), _>(std::io::Error::other("fails"))
        });
    let addr = serve(ClinkLayer::new(Verifier::new(SECRET).unwrap()).layer(router)).await;

    let started = Instant::now();
    assert_eq!(deliver(addr, &order("evt_span")).await.status, 200);
    let first_took = started.elapsed();
    assert_eq!(deliver(addr, &order("evt_span")).await.status, 200);
    let tampered = signed(addr, &order("evt_span")).tamper().build();
    assert_eq!(send(tampered).await.status, 401);
    let failing = event("evt_span_fail", "order.failed", "{}");
    assert_eq!(deliver(addr, &failing).await.status, 500);

    let spans = captured.spans("clink_delivery");
    assert_eq!(spans.len(), 4, "one span per delivery: {spans:#?}");
    let field = |n: usize, name: &str| spans[n].fields.get(name).cloned();
    let expected = [
        (Some("evt_span"), Some("order.succeeded"), "handled", "200"),
        (
            Some("evt_span"),
            Some("order.succeeded"),
            "duplicate",
            "200",
        ),
        // Before the signature checks out, nothing the sender claims is logged.
        (None, None, "signature_mismatch", "401"),
        (
            Some("evt_span_fail"),
            Some("order.failed"),
            "handler_failed",
            "500",
        ),
    ];
    for (n, (event_id, event_type, outcome, status)) in expected.into_iter().enumerate() {
        assert_eq!(field(n, "event_id").as_deref(), event_id, "span {n}");
        assert_eq!(field(n, "event_type").as_deref(), event_type, "span {n}");
        assert_eq!(field(n, "outcome").as_deref(), Some(outcome), "span {n}");
        assert_eq!(field(n, "status").as_deref(), Some(status), "span {n}");
        let duration: u64 = field(n, "duration_ms")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("span {n} has no duration_ms: {:?}", spans[n]));
        if n == 0 {
            // The handler took 150 ms; the span says so, and no more than
            // the client waited.
            assert!(duration >= 150, "duration_ms {duration}");
            assert!(
                u128::from(duration) <= first_took.as_millis(),
                "duration_ms {duration}"
            );
        }
    }
    // The layer's own lines about a delivery sit inside its span.
    assert!(
        captured
            .text()
            .lines()
            .any(|line| line.contains("clink_delivery{") && line.contains("clink delivery")),
        "{}",
        captured.text()
    );
}

/// A store whose calls fail, with a message naming nothing secret.
struct Down;

impl IdempotencyStore for Down {
    fn claim<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(std::future::ready(Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "connection refused",
        ))))
    }

    fn complete<'a>(
        &'a self, _: &'a str, _: &'a LeaseToken, _: Duration,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(std::future::ready(Ok(Settle::Applied)))
    }

    fn release<'a>(
        &'a self, _: &'a str, _: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(std::future::ready(Ok(Settle::Applied)))
    }
}

/// Every outcome the layer has, logged at every level (`TRACE` included)
/// while a second, older key is also configured: no log line, no response
/// and no `Debug` output holds either key in any form.
#[tokio::test]
async fn no_log_line_or_response_holds_a_signing_key() {
    const OLD_KEY: &str = "whsec_old_key_still_in_rotation";
    let (captured, _guard) = capture();
    let rotation = SigningKey::new(OLD_KEY)
        .unwrap()
        .expires_at(SystemTime::now() + Duration::from_secs(3600));
    let verifier = || Verifier::new(SECRET).unwrap().add_key(rotation.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let runs_in = Arc::clone(&runs);
    let router = EventRouter::new()
        .ordering(MemoryStore::new())
        .on::<events::OrderSucceeded, _>(|_event| async { Ok::<_, std::io::Error>(()) })
        .on::<events::OrderFailed, _>(|_event| async {
            Err::<(), _>(std::io::Error::other("the database is down"))
        })
        .on::<events::OrderCreated, _>(move |_event| {
            let n = runs_in.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(n > 0, "the first run panics");
                Ok::<_, std::io::Error>(())
            }
        })
        .on::<events::RefundCreated, _>(|_event| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::io::Error>(())
        });
    let layer = ClinkLayer::new(verifier())
        .handler_timeout(Duration::from_millis(100))
        .and_then(|layer| layer.body_timeout(Duration::from_millis(200)))
        .and_then(|layer| layer.body_limit(4096))
        .unwrap()
        .refusal_log_interval(Duration::from_millis(1));
    let debug = format!("{layer:?} {:?} {rotation:?}", verifier());
    let addr = serve(layer.layer(router)).await;
    let mut bodies = Vec::new();
    let mut note = |status: u16, body: String| bodies.push(format!("{status} {body}"));

    for body in [
        order("evt_key_handled"),
        order("evt_key_handled"),
        event("evt_key_unhandled", "refund.succeeded", "{}"),
        event("evt_key_fail", "order.failed", "{}"),
        event("evt_key_panic", "order.created", "{}"),
        event("evt_key_slow", "refund.created", "{}"),
        r#"{"id":"evt_key_no_type"}"#.to_owned(),
        event(&"e".repeat(1100), "order.succeeded", "{}"),
    ] {
        let reply = deliver(addr, &body).await;
        note(reply.status, reply.json.to_string());
    }
    let old = order("evt_key_old");
    for request in [
        signed(addr, &old).secret(OLD_KEY).build(),
        signed(addr, &old).tamper().build(),
        signed(addr, &old).secret("whsec_someone_else").build(),
        signed(addr, &old).skew_secs(-600).build(),
        signed(addr, &old).skew_secs(600).build(),
        http::Request::get(format!("http://{addr}/webhooks/clink"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    ] {
        let reply = send(request).await;
        note(reply.status, reply.json.to_string());
    }
    let head = |framing: &str| http1_head(&signed(addr, &old).build::<Full<Bytes>>(), framing);
    let announced = format!("content-length: {}", old.len());
    for (head, parts, then) in [
        (head("content-length: 10000"), vec![], ThenClient::Waits),
        (
            head(&announced),
            vec![&old.as_bytes()[..5]],
            ThenClient::Waits,
        ),
        (
            head(&announced),
            vec![&old.as_bytes()[..5]],
            ThenClient::StopsSending,
        ),
    ] {
        let reply = raw_request(addr, &head, &parts, then).await;
        note(reply.status, reply.body);
    }
    let down = serve(
        ClinkLayer::new(verifier())
            .store(Down)
            .layer(EventRouter::new()),
    )
    .await;
    let reply = deliver(down, &old).await;
    note(reply.status, reply.json.to_string());

    let statuses: std::collections::BTreeSet<u16> = bodies
        .iter()
        .map(|line| line[..3].parse().unwrap())
        .collect();
    assert_eq!(
        statuses.into_iter().collect::<Vec<_>>(),
        [200, 400, 401, 405, 408, 413, 500, 503],
        "{bodies:#?}"
    );
    let text = captured.text();
    assert!(text.lines().count() > 20, "little was logged:\n{text}");
    let keys = [SECRET, OLD_KEY];
    assert_no_key("the logs", &text, &keys);
    assert_no_key("the responses", &bodies.join("\n"), &keys);
    assert_no_key("the layer's Debug output", &debug, &keys);
}

/// A store other than the memory store with a store timeout longer than
/// half the lease is warned of once for each service made: a completion
/// sent as a handler's time ends could land after its lease. Neither the
/// memory store (which settles at once) nor a lease of twice the store
/// timeout is.
#[test]
fn a_store_timeout_longer_than_half_the_lease_is_warned_of() {
    let (captured, _guard) = capture();
    let warnings = || {
        captured
            .events()
            .into_iter()
            .filter(|event| {
                event.level == tracing::Level::WARN
                    && event.message.contains("longer than half the lease")
            })
            .collect::<Vec<_>>()
    };
    let layer = || ClinkLayer::new(Verifier::new(SECRET).unwrap());
    let networked = || -> Arc<dyn IdempotencyStore> { Arc::new(MemoryStore::new()) };
    let lease = |layer: ClinkLayer, secs| layer.lease(Duration::from_secs(secs)).unwrap();

    let _memory = lease(layer(), 4).route(EventRouter::new());
    let _long_lease = lease(layer().store(networked()), 10).route(EventRouter::new());
    assert!(warnings().is_empty(), "{:#?}", warnings());

    let short = lease(layer().store(networked()), 4);
    let _routed = short.route(EventRouter::new());
    let _tower = short.layer(EventRouter::new());
    let seen = warnings();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(
        seen[0].fields.get("lease_ms").map(String::as_str),
        Some("4000")
    );
    assert_eq!(
        seen[0].fields.get("store_timeout_ms").map(String::as_str),
        Some("5000")
    );
}

/// A handler timeout longer than the lease leaves a handler is warned of
/// as a service is made, with what it is cut to: the default lease of
/// 30 s leaves 25 s in front of a store other than the memory store.
#[test]
fn a_handler_timeout_cut_by_the_lease_is_warned_of() {
    let (captured, _guard) = capture();
    let cut = || {
        captured
            .events()
            .into_iter()
            .filter(|event| event.message.contains("handler timeout is cut"))
            .collect::<Vec<_>>()
    };
    let networked: Arc<dyn IdempotencyStore> = Arc::new(MemoryStore::new());
    let layer = ClinkLayer::new(Verifier::new(SECRET).unwrap()).store(networked);
    let _fits = layer
        .clone()
        .handler_timeout(Duration::from_secs(25))
        .unwrap()
        .route(EventRouter::new());
    assert!(cut().is_empty(), "{:#?}", cut());
    let _cut = layer
        .handler_timeout(Duration::from_secs(27))
        .unwrap()
        .route(EventRouter::new());
    let seen = cut();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].level, tracing::Level::WARN);
    assert_eq!(
        seen[0].fields.get("given_ms").map(String::as_str),
        Some("25000")
    );
}
