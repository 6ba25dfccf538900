//! axum integration over loopback: `.layer` on a route, `route_service`, and the extractors.

use std::sync::{Arc, Mutex};

use axum::routing::post;
use axum::Router;
use clink_webhooks::axum::{ClinkEvent, RawClinkEvent};
use clink_webhooks::testing::SignedRequest;
use clink_webhooks::{events, ClinkLayer, EventRouter, Verifier};
use http_body_util::BodyExt;
use tower::Layer;

use crate::support::loopback::{client, endpoint};

const SECRET: &str = "whsec_axum";

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn post_event(
    addr: std::net::SocketAddr, path: &str, body: &str, secret: &str,
) -> (u16, String) {
    let request = SignedRequest::new(secret, body.to_owned())
        .uri(endpoint(addr, path))
        .build();
    let response = client().request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn typed_and_raw_extractors_behind_a_route_layer() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let typed_seen = Arc::clone(&seen);
    let raw_seen = Arc::clone(&seen);
    let layer = ClinkLayer::new(Verifier::new(SECRET).unwrap());
    let app = Router::new()
        .route(
            "/typed",
            post(
                move |ClinkEvent(event): ClinkEvent<events::OrderSucceeded>| async move {
                    typed_seen
                        .lock()
                        .unwrap()
                        .push(format!("typed {}", event.data.order_id.unwrap_or_default()));
                    "ok"
                },
            )
            .layer(layer.clone()),
        )
        .route(
            "/raw",
            post(move |RawClinkEvent(event): RawClinkEvent| async move {
                raw_seen
                    .lock()
                    .unwrap()
                    .push(format!("raw {}", event.event_type()));
                "ok"
            })
            .layer(layer),
        )
        .route(
            "/unlayered",
            post(|ClinkEvent(_event): ClinkEvent<events::OrderSucceeded>| async { "unreachable" }),
        );
    let addr = serve(app).await;

    let order = r#"{"id":"evt_a1","type":"order.succeeded","data":{"orderId":"ord_9"}}"#;
    assert_eq!(post_event(addr, "/typed", order, SECRET).await.0, 200);
    let refund = r#"{"id":"evt_a2","type":"refund.created","data":{}}"#;
    assert_eq!(post_event(addr, "/raw", refund, SECRET).await.0, 200);
    assert_eq!(
        post_event(addr, "/typed", order, "whsec_forged").await.0,
        401
    );

    // Another family never reaches an order handler, though its data would
    // decode into `Order` (every field is optional): acknowledged, not run.
    let refund_with_order =
        r#"{"id":"evt_a4","type":"refund.succeeded","data":{"refundId":"rf_1","orderId":"ord_1"}}"#;
    let (status, body) = post_event(addr, "/typed", refund_with_order, SECRET).await;
    assert_eq!(status, 200, "{body}");

    // Data that does not fit the extractor's type: 500, so the delivery is retried.
    let bad = r#"{"id":"evt_a3","type":"order.succeeded","data":{"orderId":5}}"#;
    assert_eq!(post_event(addr, "/typed", bad, SECRET).await.0, 500);
    // An extractor without the layer is a configuration error, not a pass.
    let (status, body) = post_event(addr, "/unlayered", order, SECRET).await;
    assert_eq!(status, 500);
    assert!(body.contains("handler_failed"));

    assert_eq!(*seen.lock().unwrap(), ["typed ord_9", "raw refund.created"]);
}

/// Posts to `/forged` of `app`: answered `500`, and no handler ran (`ran`
/// counts their runs).
async fn refuses_the_forged_event(app: Router, ran: &Mutex<i32>) {
    let addr = serve(app).await;
    let (status, _) = post_event(addr, "/forged", "{}", "whsec_anyone").await;
    assert_eq!(status, 500);
    assert_eq!(
        *ran.lock().unwrap(),
        0,
        "the handler ran on an unverified event"
    );
}

/// A middleware of the app's own that puts an event in the request, said
/// to have been verified earlier: what no extractor or router may take.
async fn put_a_forged_event(
    mut request: axum::extract::Request, next: axum::middleware::Next,
) -> axum::response::Response {
    let raw = clink_webhooks::RawEvent::from_slice(
        br#"{"id":"evt_forged","type":"order.succeeded","data":{}}"#,
    )
    .unwrap();
    let forged =
        clink_webhooks::VerifiedEvent::earlier(raw, clink_webhooks::Timestamp::now(), "current");
    request.extensions_mut().insert(forged);
    next.run(request).await
}

/// A route without the layer, behind a middleware of the app's own that
/// puts an event said to have been verified earlier into the request: the
/// extractor does not take it (`500`, as for a route without the layer),
/// and the handler does not run.
#[tokio::test]
async fn an_event_put_in_the_request_by_another_middleware_is_not_taken() {
    let ran = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&ran);
    let app = Router::new()
        .route(
            "/forged",
            post(
                move |ClinkEvent(_event): ClinkEvent<events::OrderSucceeded>| async move {
                    *counted.lock().unwrap() += 1;
                    "ok"
                },
            ),
        )
        .layer(axum::middleware::from_fn(put_a_forged_event));
    refuses_the_forged_event(app, &ran).await;
}

/// The same for an `EventRouter` served as a service without the layer in
/// front of it: an event another middleware put in the request is not
/// dispatched (it would run handlers on a body nobody verified, with no
/// claim), and the request is answered `500`, as one without an event is.
#[tokio::test]
async fn an_event_router_takes_no_event_another_middleware_put_in_the_request() {
    let ran = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&ran);
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
        let counted = Arc::clone(&counted);
        async move {
            *counted.lock().unwrap() += 1;
            Ok::<_, std::io::Error>(())
        }
    });
    let app = Router::new()
        .route_service("/forged", router)
        .layer(axum::middleware::from_fn(put_a_forged_event));
    refuses_the_forged_event(app, &ran).await;
}

#[tokio::test]
async fn an_event_router_mounted_with_route_service() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |event| {
        let sink = Arc::clone(&sink);
        async move {
            sink.lock().unwrap().push(event.id);
            Ok::<_, std::io::Error>(())
        }
    });
    let service = ClinkLayer::new(Verifier::new(SECRET).unwrap()).layer(router);
    let addr = serve(Router::new().route_service("/webhooks/clink", service)).await;
    let order = r#"{"id":"evt_rs","type":"order.succeeded","data":{}}"#;
    assert_eq!(
        post_event(addr, "/webhooks/clink", order, SECRET).await.0,
        200
    );
    let (status, body) = post_event(addr, "/webhooks/clink", order, SECRET).await;
    assert_eq!(status, 200);
    assert!(body.contains("duplicate"));
    assert_eq!(*seen.lock().unwrap(), ["evt_rs"]);
}

#[tokio::test]
async fn a_layer_on_the_whole_router() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let app = Router::new()
        .route(
            "/webhooks/clink",
            post(move |RawClinkEvent(event): RawClinkEvent| async move {
                sink.lock().unwrap().push(event.id().to_owned());
                "ok"
            }),
        )
        .layer(ClinkLayer::new(Verifier::new(SECRET).unwrap()));
    let addr = serve(app).await;
    let body = r#"{"id":"evt_router_layer","type":"invoice.paid","data":{}}"#;
    assert_eq!(
        post_event(addr, "/webhooks/clink", body, SECRET).await.0,
        200
    );
    assert_eq!(
        post_event(addr, "/webhooks/clink", body, "whsec_forged")
            .await
            .0,
        401
    );
    assert_eq!(*seen.lock().unwrap(), ["evt_router_layer"]);
}

/// A handler behind the layer that answers with a status Clink could read
/// as "stop retrying" (a redirect, `410`, `429`) has its event answered
/// `500`, so that Clink retries it, and the event runs again.
#[tokio::test]
async fn a_handler_answering_gone_too_many_or_a_redirect_is_answered_500() {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    let runs = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&runs);
    let app = Router::new()
        .route(
            "/webhooks/clink",
            post(move |RawClinkEvent(event): RawClinkEvent| async move {
                sink.lock().unwrap().push(event.id().to_owned());
                match event.id() {
                    "evt_gone" => StatusCode::GONE.into_response(),
                    "evt_slow_down" => StatusCode::TOO_MANY_REQUESTS.into_response(),
                    "evt_moved" => {
                        axum::response::Redirect::permanent("/elsewhere").into_response()
                    }
                    _ => StatusCode::UNPROCESSABLE_ENTITY.into_response(),
                }
            }),
        )
        .layer(ClinkLayer::new(Verifier::new(SECRET).unwrap()));
    let addr = serve(app).await;
    for (id, status) in [
        ("evt_gone", 500),
        ("evt_slow_down", 500),
        ("evt_moved", 500),
        ("evt_refused", 422),
    ] {
        let body = format!(r#"{{"id":"{id}","type":"invoice.paid","data":{{}}}}"#);
        for _ in 0..2 {
            let (answered, text) = post_event(addr, "/webhooks/clink", &body, SECRET).await;
            assert_eq!(answered, status, "{id}: {text}");
        }
    }
    // Each refused event was released, so the second delivery ran it again.
    assert_eq!(runs.lock().unwrap().len(), 8);
}

/// A poison event through the typed extractor is kept dead by a layer with a
/// dead-letter inbox, with the decode error, as through a router: answered
/// `200` and never lost after Clink's retries end.
#[tokio::test]
async fn an_undecodable_event_through_the_extractor_is_kept_dead() {
    use clink_webhooks::store::{Inbox, InboxStatus, MemoryInbox};

    let inbox = Arc::new(MemoryInbox::new());
    let ran = Arc::new(Mutex::new(0));
    let runs = Arc::clone(&ran);
    let layer = ClinkLayer::new(Verifier::new(SECRET).unwrap()).dead_letters(Arc::clone(&inbox));
    let app = Router::new().route(
        "/refunds",
        post(
            move |ClinkEvent(_event): ClinkEvent<events::RefundFailed>| async move {
                *runs.lock().unwrap() += 1;
                "ok"
            },
        )
        .layer(layer),
    );
    let addr = serve(app).await;

    let bad = r#"{"id":"evt_x1","type":"refund.failed","data":{"refundAmount":[1]}}"#;
    let (status, body) = post_event(addr, "/refunds", bad, SECRET).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("dead_lettered"), "{body}");
    assert_eq!(*ran.lock().unwrap(), 0);

    let stats = inbox.stats().await.unwrap();
    assert_eq!(stats.dead, 1);
    let entry = inbox.get(1).await.unwrap().expect("the dead event");
    assert_eq!(entry.status, InboxStatus::Dead);
    assert_eq!(entry.event.event_id, "evt_x1");
    let error = entry.last_error.expect("the decode error");
    assert!(error.contains("refundAmount"), "{error}");

    // Again: a duplicate of an event kept dead, not a second dead event.
    let (status, _) = post_event(addr, "/refunds", bad, SECRET).await;
    assert_eq!(status, 200);
    assert_eq!(inbox.stats().await.unwrap().dead, 1);
}
