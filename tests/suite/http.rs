//! The layer and router over real HTTP on loopback: every row of the status table.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use clink_webhooks::data::{Order, Session};
use clink_webhooks::layer::{DEFAULT_BODY_TIMEOUT, DEFAULT_STORE_TIMEOUT};
use clink_webhooks::signature::{SIGNATURE_HEADER, SIGN_TYPE_HEADER, TIMESTAMP_HEADER};
use clink_webhooks::store::{
    Claim, IdempotencyStore, LeaseToken, Settle, StoreError, StoreErrorKind,
};
use clink_webhooks::testing::fixture;
use clink_webhooks::BoxFuture;
use clink_webhooks::{events, ClinkLayer, EventRouter, EventType, Outcome, SigningKey, Verifier};
use http::{HeaderName, HeaderValue};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, Notify};
use tower::Layer;

use crate::support::loopback::*;
use crate::support::process::PATIENCE;

fn verifier() -> Verifier {
    Verifier::new(SECRET).unwrap()
}

/// A router that records `type id` of every typed and fallback run.
fn recording_router(seen: Arc<Mutex<Vec<String>>>) -> EventRouter {
    let typed = Arc::clone(&seen);
    let session = Arc::clone(&seen);
    EventRouter::new()
        .on::<events::OrderSucceeded, _>(move |event| {
            let seen = Arc::clone(&typed);
            async move {
                let order: Order = event.data;
                seen.lock().unwrap().push(format!(
                    "order {} {} {}",
                    event.id,
                    order.order_id.unwrap_or_default(),
                    event
                        .created
                        .map(clink_webhooks::Timestamp::as_millis)
                        .unwrap_or_default()
                ));
                Ok::<_, std::io::Error>(())
            }
        })
        .on::<events::SessionComplete, _>(move |event| {
            let seen = Arc::clone(&session);
            async move {
                let data: Session = event.data;
                seen.lock()
                    .unwrap()
                    .push(format!("session {} {data:?}", event.id));
                Ok::<_, std::io::Error>(())
            }
        })
        .on_unhandled(move |event| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock()
                    .unwrap()
                    .push(format!("any {} {}", event.event_type(), event.id()));
                Ok::<_, std::io::Error>(())
            }
        })
}

async fn recording_server() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let service = ClinkLayer::new(verifier()).layer(recording_router(Arc::clone(&seen)));
    (serve(service).await, seen)
}

#[tokio::test]
async fn a_signed_delivery_reaches_its_typed_handler_once() {
    let (addr, seen) = recording_server().await;
    let body = event("evt_1", "order.succeeded", r#"{"orderId":"ord_1"}"#);

    let first = deliver(addr, &body).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json["ok"], true);

    // The same event again: acknowledged, handler not run.
    let again = deliver(addr, &body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["outcome"], "duplicate");
    assert_eq!(*seen.lock().unwrap(), ["order evt_1 ord_1 1736942400000"]);
}

#[tokio::test]
async fn data_object_wrapping_and_integer_created_reach_the_same_handler() {
    let (addr, seen) = recording_server().await;
    let wrapped = r#"{"id":"evt_w","type":"order.succeeded","created":1736942400000,"data":{"object":{"orderId":"ord_w"}}}"#;
    assert_eq!(deliver(addr, wrapped).await.status, 200);
    assert_eq!(*seen.lock().unwrap(), ["order evt_w ord_w 1736942400000"]);
}

#[tokio::test]
async fn other_types_go_to_the_fallback_and_unhandled_types_are_acknowledged() {
    let (addr, seen) = recording_server().await;
    let refund = event("evt_r", "refund.succeeded", r#"{"refundId":"re_1"}"#);
    let future = event("evt_f", "wallet.topped_up", "{}");
    assert_eq!(deliver(addr, &refund).await.status, 200);
    assert_eq!(deliver(addr, &future).await.status, 200);
    assert_eq!(
        *seen.lock().unwrap(),
        ["any refund.succeeded evt_r", "any wallet.topped_up evt_f"]
    );

    // With no fallback at all, an unhandled type is still a 200.
    let bare = serve(ClinkLayer::new(verifier()).layer(EventRouter::new())).await;
    assert_eq!(deliver(bare, &refund).await.status, 200);
}

#[tokio::test]
async fn refusals_follow_the_status_table() {
    let (addr, seen) = recording_server().await;
    let body = event("evt_x", "order.succeeded", r#"{"orderId":"o"}"#);
    let delivery = signed(addr, &body);

    // Not POST.
    let get = http::Request::get(format!("http://{addr}/webhooks/clink"))
        .body(Default::default())
        .unwrap();
    let reply = send(get).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (405, "method_not_allowed")
    );
    assert_eq!(reply.headers["allow"], "POST");

    // Missing and malformed headers.
    let mut missing = delivery.build();
    missing.headers_mut().remove(TIMESTAMP_HEADER);
    let reply = send(missing).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (400, "missing_timestamp")
    );
    let mut missing = delivery.build();
    missing.headers_mut().remove(SIGNATURE_HEADER);
    assert_eq!(send(missing).await.status, 400);
    let malformed_timestamp = delivery.clone().header(
        HeaderName::from_static(TIMESTAMP_HEADER),
        HeaderValue::from_static("12x"),
    );
    let reply = send(malformed_timestamp.build()).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (400, "malformed_timestamp")
    );
    let mut short = delivery.build();
    let good_sig = short.headers()[SIGNATURE_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    short.headers_mut().insert(
        SIGNATURE_HEADER,
        HeaderValue::from_str(&good_sig[..63]).unwrap(),
    );
    let reply = send(short).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (400, "malformed_signature")
    );
    let md5 = delivery.clone().header(
        HeaderName::from_static(SIGN_TYPE_HEADER),
        HeaderValue::from_static("MD5"),
    );
    let reply = send(md5.build()).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (400, "unsupported_sign_type")
    );

    // Not authentic.
    let reply = send(delivery.clone().secret("whsec_other").build()).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (401, "signature_mismatch")
    );
    let reply = send(delivery.clone().tamper().build()).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (401, "signature_mismatch")
    );
    let reply = send(delivery.clone().skew_secs(-301).build()).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (401, "timestamp_too_old")
    );
    let reply = send(delivery.clone().skew_secs(301).build()).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (401, "timestamp_in_future")
    );

    // Verified, but not an event envelope.
    for not_event in [
        r#"{"type":"order.succeeded"}"#,
        r#"{"id":"evt"}"#,
        "[1,2]",
        "hello",
    ] {
        let reply = deliver(addr, not_event).await;
        assert_eq!(reply.status, 400, "{not_event}");
        assert!(reply.json["message"].is_string());
    }

    // Nothing refused reached a handler, and no message carries the secret.
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_verifier_whose_keys_all_expired_answers_503_to_be_retried() {
    let expired = SigningKey::new(SECRET)
        .unwrap()
        .expires_at(SystemTime::now() - Duration::from_secs(1));
    let addr = serve(ClinkLayer::new(Verifier::from_key(&expired)).layer(EventRouter::new())).await;
    let reply = deliver(addr, &fixture(&EventType::OrderSucceeded)).await;
    // The receiver's keys, not the delivery, are at fault: retried once a
    // current key is configured.
    assert_eq!((reply.status, reply.error_code()), (503, "no_active_key"));
    assert!(reply.headers.contains_key("retry-after"));
}

/// Such a layer is not ready: a load balancer stops sending it deliveries
/// it would answer `503`, and the reason says the keys, not the store. Its
/// live keys replaced with a current one, it is ready again.
#[tokio::test]
async fn a_layer_whose_keys_all_expired_is_not_ready_until_one_is_current() {
    use clink_webhooks::LiveVerifier;

    let expired = SigningKey::new(SECRET)
        .unwrap()
        .expires_at(SystemTime::now() - Duration::from_secs(1));
    let not_ready = ClinkLayer::new(Verifier::from_key(&expired))
        .readiness()
        .check()
        .await
        .unwrap_err();
    assert!(not_ready.no_active_key());
    assert!(not_ready.store_error().is_none());
    assert!(
        not_ready.to_string().contains("no_active_key"),
        "{not_ready}"
    );

    let live = LiveVerifier::new(Verifier::from_key(&expired));
    let readiness = ClinkLayer::live(live.clone()).readiness();
    assert!(readiness.check().await.unwrap_err().no_active_key());
    live.replace(Verifier::new(SECRET).unwrap());
    assert!(readiness.check().await.is_ok());
}

#[tokio::test]
async fn an_old_key_is_accepted_during_rotation() {
    let layer = ClinkLayer::new(
        Verifier::new("whsec_new").unwrap().add_key(
            SigningKey::new(SECRET)
                .unwrap()
                .expires_at(SystemTime::now() + Duration::from_secs(3600)),
        ),
    );
    let addr = serve(layer.layer(EventRouter::new())).await;
    // Signed with the old key, SECRET.
    assert_eq!(
        deliver(addr, &fixture(&EventType::OrderCreated))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_content_length_over_the_limit_is_refused_before_the_body_is_read() {
    let addr = serve(ClinkLayer::new(verifier()).layer(EventRouter::new())).await;
    // The headers of a signed delivery, announcing a body far over the limit.
    let head = http1_head(
        &signed(addr, "").build::<Full<Bytes>>(),
        &format!("content-length: {}", 10 * 1024 * 1024),
    );
    // Only the headers and a few bytes are sent; the answer must come anyway.
    assert_eq!(raw_exchange(addr, &head, &[b"{\"id\":"]).await, 413);
}

#[tokio::test]
async fn a_chunked_body_is_cut_off_when_it_crosses_the_limit() {
    let limit = 4096;
    let addr = serve(
        ClinkLayer::new(verifier())
            .body_limit(limit)
            .unwrap()
            .layer(EventRouter::new()),
    )
    .await;
    // The headers of a delivery signed over another (empty) body.
    let head = http1_head(
        &signed(addr, "").build::<Full<Bytes>>(),
        "transfer-encoding: chunked",
    );
    let chunk = format!("400\r\n{}\r\n", "a".repeat(1024));
    let chunks: Vec<&[u8]> = (0..5).map(|_| chunk.as_bytes()).collect();
    // Five 1 KiB chunks cross 4 KiB; the final chunk is never sent.
    assert_eq!(raw_exchange(addr, &head, &chunks).await, 413);

    // A body exactly at the limit still goes through verification (401 here: bad signature).
    let exact = format!("1000\r\n{}\r\n0\r\n\r\n", "a".repeat(limit));
    assert_eq!(raw_exchange(addr, &head, &[exact.as_bytes()]).await, 401);
}

#[tokio::test]
async fn a_failing_handler_answers_500_and_runs_again_on_retry() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&attempts);
    let router = EventRouter::new().on::<events::OrderFailed, _>(move |_event| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Err("the database is down".into())
            } else {
                Ok::<_, clink_webhooks::BoxError>(())
            }
        }
    });
    let addr = serve(ClinkLayer::new(verifier()).layer(router)).await;
    let body = event("evt_fail", "order.failed", "{}");
    let reply = deliver(addr, &body).await;
    assert_eq!((reply.status, reply.error_code()), (500, "handler_failed"));
    assert!(
        !reply.json.to_string().contains("database"),
        "internal errors stay in the logs"
    );
    assert_eq!(deliver(addr, &body).await.status, 200);
    assert_eq!(deliver(addr, &body).await.json["outcome"], "duplicate");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_retry_runs_it_again() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&attempts);
    let router = EventRouter::new().on::<events::OrderCreated, _>(move |_event| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            assert!(n > 0, "first attempt panics");
            Ok::<_, std::io::Error>(())
        }
    });
    let addr = serve(ClinkLayer::new(verifier()).layer(router)).await;
    let body = event("evt_panic", "order.created", "{}");
    let reply = deliver(addr, &body).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (500, "handler_panicked")
    );
    assert_eq!(deliver(addr, &body).await.status, 200);
    // The server kept serving other events too.
    assert_eq!(
        deliver(addr, &event("evt_other", "order.created", "{}"))
            .await
            .status,
        200
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn undecodable_data_answers_500_without_a_hook_and_reaches_the_hook_with_one() {
    let body = event(
        "evt_bad",
        "order.succeeded",
        r#"{"orderId":{"nested":true}}"#,
    );
    let (addr, seen) = recording_server().await;
    let reply = deliver(addr, &body).await;
    assert_eq!(reply.status, 500);
    assert!(seen.lock().unwrap().is_empty());

    let kept = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&kept);
    let router = EventRouter::new()
        .on::<events::OrderSucceeded, _>(|_event| async { Ok::<_, std::io::Error>(()) })
        .on_undecodable(move |raw, error| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock()
                    .unwrap()
                    .push((raw.body().clone(), error.path().to_owned()));
                Ok::<_, std::io::Error>(())
            }
        });
    let addr = serve(ClinkLayer::new(verifier()).layer(router)).await;
    assert_eq!(deliver(addr, &body).await.status, 200);
    let kept = kept.lock().unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        kept[0].0,
        body.as_bytes(),
        "the hook gets the verified bytes"
    );
    assert_eq!(kept[0].1, "orderId");
}

#[tokio::test]
async fn a_duplicate_arriving_while_the_first_is_handled_gets_409_with_retry_after() {
    let entered = Arc::new(Notify::new());
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let entered_in = Arc::clone(&entered);
    let router = EventRouter::new().on::<events::InvoicePaid, _>(move |_event| {
        let entered = Arc::clone(&entered_in);
        let gate = release_rx.lock().unwrap().take();
        async move {
            entered.notify_one();
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            Ok::<_, std::io::Error>(())
        }
    });
    let addr = serve(ClinkLayer::new(verifier()).layer(router)).await;
    let body = event("evt_slow", "invoice.paid", "{}");

    let first = tokio::spawn({
        let body = body.clone();
        async move { deliver(addr, &body).await }
    });
    entered.notified().await;
    let second = deliver(addr, &body).await;
    assert_eq!((second.status, second.error_code()), (409, "in_flight"));
    let retry_after: u64 = second.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after));

    release_tx.send(()).unwrap();
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(deliver(addr, &body).await.json["outcome"], "duplicate");
}

/// A store whose backend is down: every call fails.
struct DownStore;

impl IdempotencyStore for DownStore {
    fn claim<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async {
            Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "connection refused",
            ))
        })
    }
    fn complete<'a>(
        &'a self, _: &'a str, _: &'a LeaseToken, _: Duration,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(async {
            Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "connection refused",
            ))
        })
    }
    fn release<'a>(
        &'a self, _: &'a str, _: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(async {
            Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "connection refused",
            ))
        })
    }
}

#[tokio::test]
async fn an_unreachable_store_answers_503_and_does_not_run_the_handler() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = ClinkLayer::new(verifier()).store(DownStore);
    let addr = serve(layer.layer(recording_router(Arc::clone(&seen)))).await;
    let reply = deliver(addr, &fixture(&EventType::OrderSucceeded)).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (503, "store_unavailable")
    );
    assert!(reply.headers.contains_key("retry-after"));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_handler_slower_than_its_timeout_is_stopped_and_released() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&attempts);
    let router = EventRouter::new().on::<events::RefundCreated, _>(move |_event| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, std::io::Error>(())
        }
    });
    let layer = ClinkLayer::new(verifier())
        .handler_timeout(Duration::from_millis(100))
        .unwrap();
    let addr = serve(layer.layer(router)).await;
    let body = event("evt_timeout", "refund.created", "{}");
    let reply = deliver(addr, &body).await;
    assert_eq!((reply.status, reply.error_code()), (500, "handler_timeout"));
    assert_eq!(deliver(addr, &body).await.status, 200);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_dedup_key_never_reads_the_body_beyond_the_event_id() {
    // One event id, signed by the same key, with `livemode` in four forms:
    // one event, one handler run. The key comes from the account and the
    // id only, which cannot differ between deliveries of one event.
    let (addr, seen) = recording_server().await;
    for livemode in [
        r#","livemode":true"#,
        "",
        r#","livemode":false"#,
        r#","livemode":"true""#,
    ] {
        let body = format!(r#"{{"id":"evt_same","type":"order.created"{livemode},"data":{{}}}}"#);
        assert_eq!(deliver(addr, &body).await.status, 200, "{body}");
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_event_id_no_store_can_hold_is_a_400_not_an_endless_503() {
    let (addr, seen) = recording_server().await;
    let long = event(&"e".repeat(1100), "order.created", "{}");
    let reply = deliver(addr, &long).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (400, "invalid_event_id")
    );
    let nul = r#"{"id":"evt_\u0000","type":"order.created","data":{}}"#;
    assert_eq!(deliver(addr, nul).await.status, 400);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_store_that_never_answers_is_a_503_within_the_store_timeout() {
    let store_timeout = Duration::from_millis(200);
    let layer = ClinkLayer::new(verifier())
        .store(crate::support::stores::HungStore)
        .store_timeout(store_timeout)
        .unwrap();
    let addr = serve(layer.layer(EventRouter::new())).await;
    let started = Instant::now();
    let reply = deliver(addr, &fixture(&EventType::OrderCreated)).await;
    let elapsed = started.elapsed();
    assert_eq!(
        (reply.status, reply.error_code()),
        (503, "store_unavailable")
    );
    assert!(reply.headers.contains_key("retry-after"));
    // Not before the timeout, and before the default (25 times as long)
    // could have answered, however busy the machine.
    assert!(elapsed >= store_timeout, "answered after {elapsed:?}");
    assert!(
        elapsed < DEFAULT_STORE_TIMEOUT,
        "answered after {elapsed:?}"
    );
}

/// A signed delivery of `body` announced in full (`content-length`), as
/// the head of a raw request.
fn raw_head(addr: std::net::SocketAddr, body: &str) -> String {
    http1_head(
        &signed(addr, body).build::<Full<Bytes>>(),
        &format!("content-length: {}", body.len()),
    )
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_a_408_after_the_body_timeout() {
    let body_timeout = Duration::from_millis(300);
    let layer = ClinkLayer::new(verifier())
        .body_timeout(body_timeout)
        .unwrap();
    let (addr, seen) = {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let service = layer.layer(recording_router(Arc::clone(&seen)));
        (serve(service).await, seen)
    };
    let body = event("evt_stalled", "order.succeeded", r#"{"orderId":"ord_1"}"#);
    // The first half of the body, then nothing: the connection stays open.
    let half = &body.as_bytes()[..body.len() / 2];
    let reply = raw_request(addr, &raw_head(addr, &body), &[half], ThenClient::Waits).await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (408, "body_timeout")
    );
    // Not before the timeout, and before half the default (50 times as
    // long) could have passed, however busy the machine.
    assert!(
        reply.elapsed >= body_timeout,
        "answered after {:?}",
        reply.elapsed
    );
    assert!(
        reply.elapsed < DEFAULT_BODY_TIMEOUT / 2,
        "answered after {:?}",
        reply.elapsed
    );
    assert!(seen.lock().unwrap().is_empty());

    // The whole body in time is handled.
    assert_eq!(deliver(addr, &body).await.status, 200);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_body_cut_short_by_the_sender_is_a_400_body_unreadable() {
    // The default body timeout (30 s) is not what answers here.
    let (addr, seen) = recording_server().await;
    let body = event("evt_cut", "order.succeeded", r#"{"orderId":"ord_1"}"#);
    let half = &body.as_bytes()[..body.len() / 2];
    let reply = raw_request(
        addr,
        &raw_head(addr, &body),
        &[half],
        ThenClient::StopsSending,
    )
    .await;
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (400, "body_unreadable")
    );
    assert!(
        reply.elapsed < DEFAULT_BODY_TIMEOUT / 2,
        "answered after {:?}",
        reply.elapsed
    );
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_connection_reset_mid_body_ends_as_body_unreadable() {
    let (outcomes_tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let layer = ClinkLayer::new(verifier());
    let metrics = layer.metrics();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = tower::util::MapResponseLayer::new(move |response: http::Response<_>| {
        let _ = outcomes_tx.send(Outcome::of(&response).cloned());
        response
    });
    // Says when the request has reached the layer, which then reads its body.
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let arrival = tower::util::MapRequestLayer::new(move |request: http::Request<_>| {
        let _ = arrived_tx.send(());
        request
    });
    let service = arrival.layer(record.layer(layer.layer(recording_router(Arc::clone(&seen)))));
    let addr = serve(service).await;
    let body = event("evt_reset", "order.succeeded", r#"{"orderId":"ord_1"}"#);

    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(raw_head(addr, &body).as_bytes())
        .await
        .unwrap();
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    // Once the request has reached the layer, reset the connection.
    tokio::time::timeout(PATIENCE, arrived.recv())
        .await
        .expect("the request reached the layer")
        .expect("the arrival");
    stream.set_zero_linger().unwrap();
    drop(stream);

    // The reset, not the body timeout, ended the delivery: the outcome says
    // so, and it came before that timeout could have answered.
    let outcome = tokio::time::timeout(PATIENCE, outcomes.recv())
        .await
        .expect("the delivery ended")
        .expect("an outcome");
    assert_eq!(outcome, Some(Outcome::BodyUnreadable));
    assert!(
        started.elapsed() < DEFAULT_BODY_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(metrics.rejected(), 1);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_inner_service_error_is_a_500_and_the_retry_runs_it_again() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let inner = tower::service_fn(
        move |_request: http::Request<clink_webhooks::layer::VerifiedBody>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err::<http::Response<Full<Bytes>>, _>(std::io::Error::other("down"))
                } else {
                    Ok(http::Response::new(Full::default()))
                }
            }
        },
    );
    let service = tower::util::MapErrLayer::new(|e: std::io::Error| -> Infallible {
        panic!("errors never reach the server: {e}")
    })
    .layer(ClinkLayer::new(verifier()).layer(inner));
    let addr = serve(service).await;
    let body = event("evt_err", "order.created", "{}");
    let reply = deliver(addr, &body).await;
    assert_eq!((reply.status, reply.error_code()), (500, "handler_failed"));
    assert_eq!(deliver(addr, &body).await.status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
