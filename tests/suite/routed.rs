//! `ClinkLayer::route(router)` against `ClinkLayer::layer(router)`: the same
//! deliveries, through two services over routers built alike, answer alike
//! in everything a caller can see (status, headers, body, the outcome and
//! the other response extensions, the handler runs, the counters), for
//! every outcome a router can reach. Then the routed service over a real
//! loopback socket.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clink_webhooks::events::{self, Freshness};
use clink_webhooks::router::Dispatched;
use clink_webhooks::store::MemoryInbox;
use clink_webhooks::testing::SignedRequest;
use clink_webhooks::{
    ClinkLayer, EventRouter, EventType, MemoryStore, Outcome, VerifiedEvent, Verifier,
};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};

use crate::support::loopback;

const SECRET: &str = "whsec_routed";
/// A well-formed signature no key made.
const FORGED: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// A cookie every delivery carries.
const COOKIE: &str = "session=kept-private";

/// Handler runs, as `type id` lines, shared by one router's handlers.
type Runs = Arc<Mutex<Vec<String>>>;

/// A router whose order handler does what the order id says (`fail`,
/// `panic`, `slow`: never answers), whose hook fails the event `evt_hook`,
/// with a typed handler for `refund.failed` (whose data can be made
/// undecodable), ordering in memory and stale events skipped.
fn router(runs: &Runs) -> EventRouter {
    let (orders, refunds) = (Arc::clone(runs), Arc::clone(runs));
    EventRouter::new()
        .ordering(MemoryStore::new())
        .skip_stale()
        .before_each(|event| async move {
            if event.id() == "evt_hook" {
                return Err("the hook refused it".into());
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .on::<events::OrderCreated, _>(move |event| {
            let runs = Arc::clone(&orders);
            async move {
                runs.lock().unwrap().push(format!("order {}", event.id));
                match event.data.order_id.as_deref() {
                    Some("fail") => Err("the order was refused".to_owned()),
                    Some("panic") => panic!("a handler that panics"),
                    Some("slow") => std::future::pending().await,
                    _ => Ok(()),
                }
            }
        })
        .on::<events::RefundFailed, _>(move |event| {
            refunds.lock().unwrap().push(format!("refund {}", event.id));
            async { Ok::<_, Infallible>(()) }
        })
}

fn layer(dead_letters: bool) -> ClinkLayer {
    let layer = ClinkLayer::new(Verifier::new(SECRET).unwrap())
        .handler_timeout(Duration::from_millis(100))
        .unwrap();
    if dead_letters {
        layer.dead_letters(MemoryInbox::new())
    } else {
        layer
    }
}

fn order(id: &str, created: u64, order_id: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"order.created","created":{created},"data":{{"orderId":"{order_id}"}}}}"#
    )
}

/// The deliveries, in order, with the outcome each must end in (without
/// and with a dead-letter inbox).
fn deliveries() -> Vec<(Request<Full<Bytes>>, &'static str, Outcome, Outcome)> {
    let signed = |body: String| SignedRequest::new(SECRET, body).build::<Full<Bytes>>();
    let handled = || (Outcome::Handled, Outcome::Handled);
    let same = |outcome: Outcome| (outcome.clone(), outcome);
    let mut forged = signed(order("evt_forged", 1, "ord_1"));
    forged
        .headers_mut()
        .insert("x-clink-signature", http::HeaderValue::from_static(FORGED));
    let cases = [
        ("new", signed(order("evt_new", 2_000, "ord_1")), handled()),
        (
            "again",
            signed(order("evt_new", 2_000, "ord_1")),
            same(Outcome::Duplicate),
        ),
        (
            "stale",
            signed(order("evt_old", 1_000, "ord_1")),
            same(Outcome::SkippedStale),
        ),
        (
            "fails",
            signed(order("evt_fail", 3_000, "fail")),
            same(Outcome::HandlerFailed),
        ),
        (
            "panics",
            signed(order("evt_panic", 3_000, "panic")),
            same(Outcome::HandlerPanicked),
        ),
        (
            "slow",
            signed(order("evt_slow", 3_000, "slow")),
            same(Outcome::HandlerTimeout),
        ),
        (
            "hook",
            signed(order("evt_hook", 3_000, "ord_2")),
            same(Outcome::HandlerFailed),
        ),
        (
            "unhandled",
            signed(r#"{"id":"evt_unh","type":"customer.created","data":{}}"#.to_owned()),
            same(Outcome::Unhandled),
        ),
        (
            "undecodable",
            signed(
                r#"{"id":"evt_bad","type":"refund.failed","data":{"refundAmount":[1]}}"#.to_owned(),
            ),
            (Outcome::Undecodable, Outcome::DeadLettered),
        ),
        (
            "refund",
            signed(r#"{"id":"evt_refund","type":"refund.failed","data":{}}"#.to_owned()),
            handled(),
        ),
        (
            "forged",
            forged,
            same(Outcome::Verify(
                clink_webhooks::VerifyErrorKind::SignatureMismatch,
            )),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, mut request, (plain, dead))| {
            // A header of the sender's own, which no response may repeat
            // (the response's headers go into the request's map, emptied).
            request
                .headers_mut()
                .insert(http::header::COOKIE, http::HeaderValue::from_static(COOKIE));
            (request, name, plain, dead)
        })
        .collect()
}

/// Everything a caller sees of a response, as text.
async fn seen<B>(response: Response<B>) -> (String, Outcome)
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let outcome = parts
        .extensions
        .get::<Outcome>()
        .cloned()
        .expect("every response carries its outcome");
    // The layer's own headers and none of the request's.
    for (name, value) in &parts.headers {
        assert!(
            [
                http::header::CONTENT_TYPE,
                http::header::RETRY_AFTER,
                http::header::ALLOW
            ]
            .contains(name),
            "a response header that is not the layer's: {name}: {value:?}"
        );
        assert_ne!(value, COOKIE);
    }
    let mut text = format!("{} {:?}", parts.status, parts.headers);
    let _ = write!(
        text,
        " freshness={:?} dispatched={:?} event={:?}",
        parts.extensions.get::<Freshness>(),
        parts.extensions.get::<Dispatched>(),
        parts
            .extensions
            .get::<VerifiedEvent>()
            .map(|v| (v.event().id().to_owned(), v.key_name().to_owned())),
    );
    let body = body.collect().await.unwrap().to_bytes();
    let _ = write!(text, " body={}", String::from_utf8_lossy(&body));
    (text, outcome)
}

async fn answer<S, B>(service: &S, request: Request<Full<Bytes>>) -> (String, Outcome)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    seen(service.clone().oneshot(request).await.unwrap()).await
}

/// What a service around the router does with the router's answer: fails.
fn fails_after<R>(_: Result<R, Infallible>) -> Result<R, tower::BoxError> {
    Err("the service around the router failed".into())
}

/// A handler that succeeded is not run again when a service between the
/// layer and the router fails after it (a timeout while the handler's
/// version was recorded, a middleware's own error): the claim is completed
/// and the delivery acknowledged, and Clink's retry is a duplicate.
#[tokio::test]
async fn a_service_failing_after_its_handler_succeeded_runs_it_once() {
    let runs = Runs::default();
    let around = ServiceExt::<Request<Full<Bytes>>>::map_result(router(&runs), fails_after);
    let service = layer(false).layer(around);
    for expected in [Outcome::Handled, Outcome::Duplicate] {
        let request =
            SignedRequest::new(SECRET, order("evt_once", 2_000, "ord_1")).build::<Full<Bytes>>();
        let response = service.clone().oneshot(request).await.unwrap();
        let outcome = response.extensions().get::<Outcome>().cloned();
        assert_eq!(
            (response.status(), outcome),
            (http::StatusCode::OK, Some(expected))
        );
    }
    assert_eq!(*runs.lock().unwrap(), ["order evt_once"]);
}

/// The same for every kind of handler the router runs: a typed one whose
/// freshness is not tracked (a router with no ordering), the
/// `on_unhandled` hook for a type no route takes, and the `on_undecodable`
/// hook that took an event whose data did not decode. Before, only a typed
/// handler with its freshness tracked was seen to succeed, and each of
/// these ran again on Clink's retry.
#[tokio::test]
async fn a_service_failing_after_any_handler_succeeded_runs_it_once() {
    let runs = Runs::default();
    let (typed, unhandled, undecodable) = (Arc::clone(&runs), Arc::clone(&runs), Arc::clone(&runs));
    let untracked = EventRouter::new()
        .on::<events::OrderCreated, _>(move |event| {
            typed.lock().unwrap().push(format!("order {}", event.id));
            async { Ok::<_, Infallible>(()) }
        })
        .on_unhandled(move |event| {
            unhandled
                .lock()
                .unwrap()
                .push(format!("unhandled {}", event.id()));
            async { Ok::<_, Infallible>(()) }
        })
        .on_undecodable(move |event, _| {
            undecodable
                .lock()
                .unwrap()
                .push(format!("undecodable {}", event.id()));
            async { Ok::<_, Infallible>(()) }
        });
    let around = ServiceExt::<Request<Full<Bytes>>>::map_result(untracked, fails_after);
    let service = layer(false).layer(around);
    let bodies = [
        order("evt_untracked", 2_000, "ord_1"),
        r#"{"id":"evt_unhandled","type":"risk_rule.updated","data":{}}"#.to_owned(),
        r#"{"id":"evt_undecodable","type":"order.created","data":{"amountTotal":"lots"}}"#
            .to_owned(),
    ];
    for body in bodies {
        for expected in [Outcome::Handled, Outcome::Duplicate] {
            let request = SignedRequest::new(SECRET, body.clone()).build::<Full<Bytes>>();
            let response = service.clone().oneshot(request).await.unwrap();
            let outcome = response.extensions().get::<Outcome>().cloned();
            assert_eq!(
                (response.status(), outcome),
                (http::StatusCode::OK, Some(expected)),
                "{body}"
            );
        }
    }
    assert_eq!(
        *runs.lock().unwrap(),
        [
            "order evt_untracked",
            "unhandled evt_unhandled",
            "undecodable evt_undecodable"
        ]
    );
}

/// A service between the layer and the router that rewrites a handled
/// event's `200` into a status Clink could read as "stop delivering" or as
/// no answer (`410`, `429`, a redirect) is answered `200`, as the outcome
/// says: the event is done, and no status ever stops Clink's deliveries.
#[tokio::test]
async fn a_handled_events_answer_rewritten_to_stop_deliveries_is_answered_as_handled() {
    for rewritten in [
        http::StatusCode::GONE,
        http::StatusCode::TOO_MANY_REQUESTS,
        http::StatusCode::FOUND,
    ] {
        let router = EventRouter::new()
            .on::<events::OrderCreated, _>(|_event| async { Ok::<_, Infallible>(()) });
        let around = ServiceExt::<Request<Full<Bytes>>>::map_response(
            router,
            move |mut response: Response<_>| {
                *response.status_mut() = rewritten;
                response
            },
        );
        let service = layer(false).layer(around);
        let body = order(
            &format!("evt_rewritten_{}", rewritten.as_u16()),
            2_000,
            "ord_1",
        );
        let request = SignedRequest::new(SECRET, body).build::<Full<Bytes>>();
        let response = service.oneshot(request).await.unwrap();
        let outcome = response.extensions().get::<Outcome>().cloned();
        assert_eq!(
            (response.status(), outcome),
            (http::StatusCode::OK, Some(Outcome::Handled)),
            "{rewritten}"
        );
    }
}

#[tokio::test]
async fn a_routed_service_answers_as_the_layer_over_the_same_router() {
    for dead_letters in [false, true] {
        let (layered_runs, routed_runs) = (Runs::default(), Runs::default());
        let layered = layer(dead_letters);
        let layered_service = layered.layer(router(&layered_runs));
        let routed = layer(dead_letters);
        let routed_service = routed.route(router(&routed_runs));
        for (request, name, plain, dead) in deliveries() {
            let expected = if dead_letters { dead } else { plain };
            let (layered_seen, layered_outcome) = answer(&layered_service, request.clone()).await;
            let (routed_seen, routed_outcome) = answer(&routed_service, request).await;
            assert_eq!(
                routed_seen, layered_seen,
                "{name} (dead letters: {dead_letters})"
            );
            assert_eq!(layered_outcome, expected, "{name}");
            assert_eq!(routed_outcome, expected, "{name}");
        }
        assert_eq!(*routed_runs.lock().unwrap(), *layered_runs.lock().unwrap());
        assert_eq!(
            format!("{:?}", routed.metrics()),
            format!("{:?}", layered.metrics())
        );
        // The deliveries reached the handlers they should have, once each.
        assert_eq!(
            *routed_runs.lock().unwrap(),
            [
                "order evt_new",
                "order evt_fail",
                "order evt_panic",
                "order evt_slow",
                "refund evt_refund"
            ]
        );
    }
}

/// Served on a loopback socket, a routed service answers a signed
/// delivery, its duplicate and a forged one as the layer would.
#[tokio::test]
async fn a_routed_service_serves_over_http() {
    let runs = Runs::default();
    let layer = ClinkLayer::new(Verifier::new(loopback::SECRET).unwrap());
    let service = layer.route(router(&runs));
    assert!(service.router().handles(&EventType::from("order.created")));
    let addr = loopback::serve(service).await;

    let body = order("evt_http", 1, "ord_h");
    let first = loopback::deliver(addr, &body).await;
    let again = loopback::deliver(addr, &body).await;
    let mut forged = loopback::signed(addr, &body).build::<Full<Bytes>>();
    forged
        .headers_mut()
        .insert("x-clink-signature", http::HeaderValue::from_static(FORGED));
    let forged = loopback::send(forged).await;
    assert_eq!(
        [
            (first.status, first.json["outcome"].as_str()),
            (again.status, again.json["outcome"].as_str()),
            (forged.status, forged.json["error"].as_str()),
        ],
        [
            (200, Some("handled")),
            (200, Some("duplicate")),
            (401, Some("signature_mismatch"))
        ]
    );
    assert_eq!(*runs.lock().unwrap(), ["order evt_http"]);
    assert_eq!(
        (layer.metrics().handled(), layer.metrics().duplicates()),
        (1, 1)
    );
}

/// A store that answers each claim 4 s late (by Tokio's clock), and
/// otherwise as a memory store: a networked store slow to claim.
struct SlowClaims(MemoryStore);

impl clink_webhooks::store::IdempotencyStore for SlowClaims {
    fn claim<'a>(
        &'a self, key: &'a str, lease: Duration,
    ) -> clink_webhooks::BoxFuture<
        'a,
        Result<clink_webhooks::store::Claim, clink_webhooks::store::StoreError>,
    > {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            self.0.claim(key, lease).await
        })
    }

    fn complete<'a>(
        &'a self, key: &'a str, token: &'a clink_webhooks::store::LeaseToken, retention: Duration,
    ) -> clink_webhooks::BoxFuture<
        'a,
        Result<clink_webhooks::store::Settle, clink_webhooks::store::StoreError>,
    > {
        self.0.complete(key, token, retention)
    }

    fn release<'a>(
        &'a self, key: &'a str, token: &'a clink_webhooks::store::LeaseToken,
    ) -> clink_webhooks::BoxFuture<
        'a,
        Result<clink_webhooks::store::Settle, clink_webhooks::store::StoreError>,
    > {
        self.0.release(key, token)
    }
}

/// A memory inbox whose dead-letter inserts take 4 s (by Tokio's clock).
struct SlowDeadLetters(MemoryInbox);

impl clink_webhooks::store::Inbox for SlowDeadLetters {
    crate::support::inbox_delegate::delegate_inbox!(0: insert, claim, complete, fail, release, list, get, replay, replay_matching, purge, stats, check_writable);

    fn insert_dead<'a>(
        &'a self, event: &'a clink_webhooks::store::NewEvent, error: &'a str,
    ) -> clink_webhooks::BoxFuture<
        'a,
        Result<clink_webhooks::store::Inserted, clink_webhooks::store::StoreError>,
    > {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            self.0.insert_dead(event, error).await
        })
    }
}

/// A dead-letter inbox that keeps nothing: every insert fails.
struct RefusingDeadLetters(MemoryInbox);

impl clink_webhooks::store::Inbox for RefusingDeadLetters {
    crate::support::inbox_delegate::delegate_inbox!(0: insert, claim, complete, fail, release, list, get, replay, replay_matching, purge, stats, check_writable);

    fn insert_dead<'a>(
        &'a self, _: &'a clink_webhooks::store::NewEvent, _: &'a str,
    ) -> clink_webhooks::BoxFuture<
        'a,
        Result<clink_webhooks::store::Inserted, clink_webhooks::store::StoreError>,
    > {
        Box::pin(std::future::ready(Err(
            clink_webhooks::store::StoreError::new(
                clink_webhooks::store::StoreErrorKind::Unavailable,
                "the dead-letter inbox is down",
            ),
        )))
    }
}

/// The dead-letter insert of an undecodable event is bounded by the
/// handler's time, so that the completion after it still lands inside
/// the lease: with a lease of 12 s in front of a networked store (7 s of
/// handler's time), a claim answered after 4 s leaves 3 s, and an insert
/// that takes 4 s (under the store timeout of 5 s) is cut short there and
/// answered `500` for Clink to retry, its claim released; in time, the
/// event is dead-lettered.
#[tokio::test(start_paused = true)]
async fn a_dead_letter_insert_is_bounded_by_the_handlers_time() {
    let router = || {
        EventRouter::new().on::<events::OrderCreated, _>(|_event| async { Ok::<_, Infallible>(()) })
    };
    let body = r#"{"id":"evt_undecodable","type":"order.created","data":{"orderId":5}}"#;
    let request = || SignedRequest::new(SECRET, body).build::<Full<Bytes>>();
    let layer = |store: Arc<dyn clink_webhooks::store::IdempotencyStore>| {
        ClinkLayer::new(Verifier::new(SECRET).unwrap())
            .store(store)
            .lease(Duration::from_secs(12))
            .unwrap()
            .dead_letters(SlowDeadLetters(MemoryInbox::new()))
            .route(router())
    };
    let slow = layer(Arc::new(SlowClaims(MemoryStore::new())));
    let response = slow.clone().oneshot(request()).await.unwrap();
    assert_eq!(Outcome::of(&response), Some(&Outcome::Undecodable));
    assert_eq!(response.status(), 500);
    let in_time = layer(Arc::new(MemoryStore::new()) as Arc<_>);
    let response = in_time.oneshot(request()).await.unwrap();
    assert_eq!(Outcome::of(&response), Some(&Outcome::DeadLettered));
}

/// A dead letter is kept with the delivery's signature headers, byte for
/// byte, through `route` and through `layer` alike: forwarded later, its
/// recipient verifies it with its own key, as it does an event the intake
/// kept.
#[tokio::test]
async fn a_dead_letter_keeps_the_signature_headers_it_came_with() {
    use clink_webhooks::store::Inbox;

    let router = || {
        EventRouter::new().on::<events::OrderCreated, _>(|_event| async { Ok::<_, Infallible>(()) })
    };
    let body = r#"{"id":"evt_poison","type":"order.created","data":{"orderId":5}}"#;
    for routed in [true, false] {
        let inbox = Arc::new(MemoryInbox::new());
        let layer =
            ClinkLayer::new(Verifier::new(SECRET).unwrap()).dead_letters(Arc::clone(&inbox));
        let request = SignedRequest::new(SECRET, body).build::<Full<Bytes>>();
        let sent = (
            request.headers()["x-clink-timestamp"].clone(),
            request.headers()["x-clink-signature"].clone(),
        );
        let response = if routed {
            layer.route(router()).oneshot(request).await.unwrap()
        } else {
            layer.layer(router()).oneshot(request).await.unwrap()
        };
        assert_eq!(
            Outcome::of(&response),
            Some(&Outcome::DeadLettered),
            "routed: {routed}"
        );
        let entry = inbox.get(1).await.unwrap().expect("the dead letter");
        let headers = entry
            .event
            .signature_headers
            .unwrap_or_else(|| panic!("kept without its signature headers (routed: {routed})"));
        assert_eq!(headers.timestamp.as_bytes(), sent.0.as_bytes());
        assert_eq!(headers.signature.as_bytes(), sent.1.as_bytes());
        Verifier::new(SECRET)
            .unwrap()
            .verify(&headers.timestamp, &headers.signature, &entry.event.body)
            .expect("the dead letter verifies with the headers kept");
    }
}

/// A handler's `Permanent` error is found as the error itself, as a cause
/// of another error, and inside an `io::Error` (`Dispatched::is_permanent`,
/// which an inbox's workers read to keep the event dead at once); a plain
/// error is not. Served by a layer without a dead-letter inbox, either is a
/// failure (`500`), for Clink to retry. With one, through `route` and
/// `layer` alike, a permanent failure is kept there as dead with the
/// handler's error and acknowledged (`failed_kept_dead`): Clink's retry is
/// a duplicate, and the handler does not run again. A plain failure is
/// kept nowhere, and a permanent one the inbox cannot keep is a `500`.
#[tokio::test]
async fn a_permanent_error_is_found_however_it_is_wrapped() {
    use clink_webhooks::router::Permanent;
    use clink_webhooks::store::{Inbox, InboxStatus};

    /// An error whose cause is `Permanent`.
    #[derive(Debug)]
    struct Caused(Permanent);
    impl std::fmt::Display for Caused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("could not write the order")
        }
    }
    impl std::error::Error for Caused {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let router = |how: u8| {
        let runs = Arc::clone(&runs);
        EventRouter::new().on::<events::OrderCreated, _>(move |_event| {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let no = || Permanent::new("the table takes no such order");
                Err::<(), clink_webhooks::BoxError>(match how {
                    0 => Box::new(no()),
                    1 => Box::new(Caused(no())),
                    2 => Box::new(std::io::Error::other(no())),
                    _ => "the database is down".into(),
                })
            }
        })
    };
    let body = r#"{"id":"evt_permanent","type":"order.created","data":{"orderId":"ord_1"}}"#;
    let request = || SignedRequest::new(SECRET, body).build::<Full<Bytes>>();
    for how in 0..4u8 {
        let permanent = how < 3;
        let layer = ClinkLayer::new(Verifier::new(SECRET).unwrap());
        let response = layer.route(router(how)).oneshot(request()).await.unwrap();
        assert_eq!(Outcome::of(&response), Some(&Outcome::HandlerFailed));
        assert_eq!(response.status(), 500);
        let dispatched = response
            .extensions()
            .get::<Dispatched>()
            .expect("the router's account of the event");
        assert_eq!(dispatched.is_permanent(), permanent, "{how}");
        if how == 0 {
            // Its text once, not repeated as its own cause.
            assert_eq!(dispatched.failure(), Some("the table takes no such order"));
        }

        for routed in [true, false] {
            let inbox = Arc::new(MemoryInbox::new());
            let layer =
                ClinkLayer::new(Verifier::new(SECRET).unwrap()).dead_letters(Arc::clone(&inbox));
            let (routed_service, layered) = (layer.route(router(how)), layer.layer(router(how)));
            let send = async |request| {
                if routed {
                    routed_service.clone().oneshot(request).await.unwrap()
                } else {
                    layered.clone().oneshot(request).await.unwrap()
                }
            };
            let ran = runs.load(std::sync::atomic::Ordering::SeqCst);
            let response = send(request()).await;
            let case = format!("how {how}, routed {routed}");
            let retried = send(request()).await;
            let runs_now = runs.load(std::sync::atomic::Ordering::SeqCst) - ran;
            let kept = inbox.get(1).await.unwrap();
            if !permanent {
                assert_eq!(
                    Outcome::of(&response),
                    Some(&Outcome::HandlerFailed),
                    "{case}"
                );
                assert_eq!(response.status(), 500, "{case}");
                assert_eq!(runs_now, 2, "a plain failure runs again on retry ({case})");
                assert!(kept.is_none(), "nothing kept ({case})");
                continue;
            }
            assert_eq!(
                Outcome::of(&response),
                Some(&Outcome::FailedKeptDead),
                "{case}"
            );
            assert_eq!(response.status(), 200, "{case}");
            assert_eq!(Outcome::of(&retried), Some(&Outcome::Duplicate), "{case}");
            assert_eq!(runs_now, 1, "the handler ran once ({case})");
            let entry = kept.unwrap_or_else(|| panic!("kept as dead ({case})"));
            assert_eq!(entry.status, InboxStatus::Dead, "{case}");
            assert_eq!(&entry.event.body[..], body.as_bytes(), "{case}");
            assert!(entry.event.signature_headers.is_some(), "{case}");
            let error = entry.last_error.unwrap_or_default();
            assert!(error.contains("marked permanent"), "{case}: {error}");
            assert!(
                error.contains("the table takes no such order"),
                "{case}: {error}"
            );
        }
    }

    // A dead-letter inbox that cannot keep it: answered as without one.
    let layer = ClinkLayer::new(Verifier::new(SECRET).unwrap())
        .dead_letters(RefusingDeadLetters(MemoryInbox::new()));
    let response = layer.route(router(0)).oneshot(request()).await.unwrap();
    assert_eq!(Outcome::of(&response), Some(&Outcome::HandlerFailed));
    assert_eq!(response.status(), 500);
}

/// A verified event whose id cannot be kept (a line break in it, or too
/// long for the idempotency store) is kept as dead in the dead-letter
/// inbox, under the SHA-256 of its body, with its signature headers, and
/// answered `200`; sent again, it is kept once. Without a dead-letter inbox
/// it is refused `400`. Before, it was refused `400` either way, retried by
/// Clink for a day and kept nowhere.
#[tokio::test]
async fn a_verified_event_whose_id_cannot_be_kept_is_kept_as_dead() {
    use clink_webhooks::store::{Inbox, InboxStatus};

    let long_id = format!("evt_{}", "x".repeat(1100));
    for id in ["evt_1\nforged".to_owned(), long_id] {
        let body = serde_json::json!({"id": id, "type": "order.created", "data": {}}).to_string();
        let inbox = Arc::new(MemoryInbox::new());
        let router = EventRouter::new()
            .on::<events::OrderCreated, _>(|_event| async { Ok::<_, Infallible>(()) });
        let layer =
            ClinkLayer::new(Verifier::new(SECRET).unwrap()).dead_letters(Arc::clone(&inbox));
        let service = layer.route(router);
        for _ in 0..2 {
            let request = SignedRequest::new(SECRET, body.clone()).build::<Full<Bytes>>();
            let response = service.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200, "{}", &id[..12]);
            assert_eq!(Outcome::of(&response), Some(&Outcome::DeadLettered));
            assert_eq!(inbox.stats().await.unwrap().dead, 1, "kept once");
            let entry = inbox.get(1).await.unwrap().expect("the dead letter");
            assert_eq!(entry.status, InboxStatus::Dead);
            assert!(
                entry.event.event_id.starts_with("invalid-event-id:"),
                "{}",
                entry.event.event_id
            );
            assert_eq!(&entry.event.body[..], body.as_bytes());
            let headers = entry
                .event
                .signature_headers
                .expect("its signature headers");
            Verifier::new(SECRET)
                .unwrap()
                .verify(&headers.timestamp, &headers.signature, &entry.event.body)
                .expect("verifies with the headers kept");
        }
        let without = ClinkLayer::new(Verifier::new(SECRET).unwrap()).route(EventRouter::new());
        let response = without
            .oneshot(SignedRequest::new(SECRET, body.clone()).build::<Full<Bytes>>())
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        assert_eq!(Outcome::of(&response), Some(&Outcome::InvalidEventId));
    }
}

/// A verified body that is no event envelope (no id, here) is kept as dead
/// in the dead-letter inbox, under the SHA-256 of the body, with its
/// signature headers, and answered `200`: Clink's retries could not help.
/// Sent again, it is kept once. Without a dead-letter inbox it is refused
/// `400`, as before, for Clink to retry.
#[tokio::test]
async fn a_verified_body_that_is_no_envelope_is_kept_as_dead() {
    use clink_webhooks::events::EnvelopeError;
    use clink_webhooks::store::{Inbox, InboxStatus};

    let router = || {
        EventRouter::new().on::<events::OrderCreated, _>(|_event| async { Ok::<_, Infallible>(()) })
    };
    let body = r#"{"type":"order.created","data":{"orderId":"ord_1"}}"#;
    for routed in [true, false] {
        let inbox = Arc::new(MemoryInbox::new());
        let layer =
            ClinkLayer::new(Verifier::new(SECRET).unwrap()).dead_letters(Arc::clone(&inbox));
        let service = |layer: ClinkLayer| {
            let routed_service = layer.route(router());
            let layered = layer.layer(router());
            move |request: Request<Full<Bytes>>| {
                let (routed_service, layered) = (routed_service.clone(), layered.clone());
                async move {
                    if routed {
                        routed_service.oneshot(request).await.unwrap()
                    } else {
                        layered.oneshot(request).await.unwrap()
                    }
                }
            }
        };
        let send = service(layer);
        for _ in 0..2 {
            let request = SignedRequest::new(SECRET, body).build::<Full<Bytes>>();
            let response = send(request).await;
            assert_eq!(response.status(), 200, "routed: {routed}");
            assert_eq!(Outcome::of(&response), Some(&Outcome::DeadLettered));
            let stats = inbox.stats().await.unwrap();
            assert_eq!(stats.dead, 1, "kept once (routed: {routed})");
            let entry = inbox.get(1).await.unwrap().expect("the dead letter");
            assert_eq!(entry.status, InboxStatus::Dead);
            assert!(
                entry.event.event_id.starts_with("not-an-envelope:"),
                "{}",
                entry.event.event_id
            );
            assert_eq!(&entry.event.body[..], body.as_bytes());
            let error = entry.last_error.expect("why");
            assert!(error.contains("not a Clink event envelope"), "{error}");
            let headers = entry
                .event
                .signature_headers
                .expect("its signature headers");
            Verifier::new(SECRET)
                .unwrap()
                .verify(&headers.timestamp, &headers.signature, &entry.event.body)
                .expect("verifies with the headers kept");
        }

        // Without a dead-letter inbox: refused, for Clink to retry.
        let send = service(ClinkLayer::new(Verifier::new(SECRET).unwrap()));
        let response = send(SignedRequest::new(SECRET, body).build::<Full<Bytes>>()).await;
        assert_eq!(response.status(), 400);
        assert_eq!(
            Outcome::of(&response),
            Some(&Outcome::InvalidEnvelope(EnvelopeError::MissingId))
        );
    }
}
