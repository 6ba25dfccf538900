//! `Verifier::construct_event`, the one call without tower: every known type
//! decodes into its own `AnyEvent` variant, and every delivery it refuses
//! gets the status and code the layer answers the same bytes with.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use clink_webhooks::events::AnyEvent;
use clink_webhooks::router::EveryHandler;
use clink_webhooks::store::MAX_KEY_LEN;
use clink_webhooks::testing::fixture;
use clink_webhooks::BoxFuture;
use clink_webhooks::{
    layer, sign, ClinkLayer, Decimal, Event, EventError, EventRouter, EventType, Outcome, RawEvent,
    Timestamp, Verifier,
};
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt};

const SECRET: &str = "whsec_construct_suite";

fn verifier() -> Verifier {
    Verifier::new(SECRET).unwrap()
}

/// A typed handler for every known type, so that the layer decodes every
/// event's data as `construct_event` does.
struct Accept;

impl EveryHandler for Accept {
    type Error = std::io::Error;

    fn handle<T: clink_webhooks::data::Resource + Send + 'static>(
        &self, _event: Event<T>,
    ) -> BoxFuture<'static, Result<(), std::io::Error>> {
        Box::pin(async { Ok(()) })
    }
}

/// The layer's status and outcome for a delivery of these header values and
/// body, on a fresh layer (so nothing is a duplicate).
async fn layer_answer(timestamp: &str, signature: &str, body: &[u8]) -> (StatusCode, Outcome) {
    let service = ClinkLayer::new(verifier()).layer(EventRouter::new().on_every_type(Accept));
    let request = Request::post("/webhooks/clink")
        .header("x-clink-timestamp", timestamp)
        .header("x-clink-signature", signature)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    let outcome = Outcome::of(&response).cloned().expect("an outcome");
    (response.status(), outcome)
}

fn now_ms() -> String {
    Timestamp::now().as_millis().to_string()
}

/// `construct_event` and the layer given the same delivery agree: an event
/// where the layer handles it, else the same status and code.
async fn agree(what: &str, timestamp: &str, signature: &str, body: &[u8]) -> Option<EventError> {
    let constructed = verifier().construct_event(timestamp, signature, body);
    let (status, outcome) = layer_answer(timestamp, signature, body).await;
    match constructed {
        Ok(event) => {
            assert_eq!(outcome, Outcome::Handled, "{what}: {event:?}");
            assert_eq!(status, StatusCode::OK, "{what}");
            None
        }
        Err(error) => {
            assert_eq!(error.code(), outcome.as_str(), "{what}: {error}");
            assert_eq!(error.status(), status, "{what}: {error}");
            assert_eq!(error.status(), outcome.status(), "{what}: {error}");
            Some(error)
        }
    }
}

#[test]
fn every_known_type_decodes_into_its_own_variant() {
    let now = SystemTime::now();
    let timestamp = now_ms();
    for event_type in EventType::ALL {
        let body = fixture(event_type);
        let signature = sign(SECRET, &timestamp, body.as_bytes());
        let event = verifier()
            .construct_event_at(&timestamp, &signature, body.as_bytes(), now)
            .unwrap_or_else(|error| panic!("{event_type}: {error}"));
        // The variant is named as the type is: `OrderSucceeded(Event { .. })`.
        let debug = format!("{event:?}");
        assert!(
            debug.starts_with(&format!("{event_type:?}(Event {{")),
            "{event_type}: {debug:.80}"
        );
        let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
        assert_eq!(event.event_type(), event_type);
        assert_eq!(event.id(), raw.id());
        assert_eq!(event.created(), raw.created());
        assert_eq!(event.livemode(), Some(false));
        assert_eq!(event.account(), None);
        assert!(event.object_key().is_some(), "{event_type}");
        assert_eq!(event.object_key(), raw.object_key(), "{event_type}");
    }
}

#[test]
fn variants_hold_the_typed_data() {
    let timestamp = now_ms();
    let construct = |event_type: &EventType| {
        let body = fixture(event_type);
        let signature = sign(SECRET, &timestamp, body.as_bytes());
        verifier()
            .construct_event(&timestamp, &signature, body.as_bytes())
            .unwrap()
    };
    match construct(&EventType::OrderSucceeded) {
        AnyEvent::OrderSucceeded(event) => {
            assert!(event.data.order_id.is_some());
            let total: Option<Decimal> = event.data.amount_total;
            assert!(total.is_some_and(|total| total > Decimal::ZERO));
        }
        other => panic!("{other:?}"),
    }
    match construct(&EventType::DisputeWon) {
        AnyEvent::DisputeWon(event) => assert!(event.data.charge_back_id.is_some()),
        other => panic!("{other:?}"),
    }
    match construct(&EventType::RiskRuleUpdated) {
        AnyEvent::RiskRuleUpdated(event) => assert!(event.data.is_object()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unknown_type_is_unknown_and_keeps_the_body() {
    let timestamp = now_ms();
    let body =
        br#"{"id":"evt_new","type":"wallet.topped_up","data":{"walletId":"w_1","amount":"1.50"}}"#;
    let signature = sign(SECRET, &timestamp, body);
    let event = verifier()
        .construct_event(&timestamp, &signature, body)
        .unwrap();
    assert_eq!(
        event.event_type(),
        &EventType::Unknown("wallet.topped_up".to_owned())
    );
    assert_eq!(event.object_key().unwrap().to_string(), "wallet:w_1");
    let AnyEvent::Unknown(raw) = event else {
        panic!("not Unknown");
    };
    assert_eq!(raw.body().as_ref(), body);
    assert_eq!(raw.data_json(), r#"{"walletId":"w_1","amount":"1.50"}"#);
}

#[tokio::test]
async fn every_refusal_has_the_layers_status_and_code() {
    let ts = now_ms();
    let body = br#"{"id":"evt_c","type":"order.succeeded","data":{"orderId":"ord_1"}}"#;
    let signed = |ts: &str, body: &[u8]| sign(SECRET, ts, body);
    let old = (Timestamp::now().as_millis() - 600_000).to_string();
    let ahead = (Timestamp::now().as_millis() + 600_000).to_string();
    let long_id = |len: usize| {
        format!(
            r#"{{"id":"{}","type":"order.created","data":{{"orderId":"ord_1"}}}}"#,
            "e".repeat(len)
        )
    };
    // The longest id the layer can store with its default prefix, one
    // verifier and so an empty account: `{prefix}::{id}`.
    let longest = MAX_KEY_LEN - layer::DEFAULT_KEY_PREFIX.len() - 2;
    let long_type = format!(
        r#"{{"id":"evt_t","type":"x.{}","data":{{}}}}"#,
        "y".repeat(clink_webhooks::events::MAX_EVENT_TYPE_LEN)
    );
    let cases: Vec<(&str, String, String, Vec<u8>, Option<&str>)> = vec![
        (
            "a type longer than any Clink type",
            ts.clone(),
            signed(&ts, long_type.as_bytes()),
            long_type.clone().into_bytes(),
            Some("invalid_event_type"),
        ),
        (
            "handled",
            ts.clone(),
            signed(&ts, body),
            body.to_vec(),
            None,
        ),
        (
            "another key",
            ts.clone(),
            sign("whsec_other", &ts, body),
            body.to_vec(),
            Some("signature_mismatch"),
        ),
        (
            "a tampered body",
            ts.clone(),
            signed(&ts, body),
            body.iter()
                .map(|&b| if b == b'1' { b'2' } else { b })
                .collect(),
            Some("signature_mismatch"),
        ),
        (
            "a signature that is not hex",
            ts.clone(),
            "zz".repeat(32),
            body.to_vec(),
            Some("malformed_signature"),
        ),
        (
            "a timestamp that is not digits",
            "soon".to_owned(),
            signed("soon", body),
            body.to_vec(),
            Some("malformed_timestamp"),
        ),
        (
            "an empty timestamp",
            String::new(),
            signed("", body),
            body.to_vec(),
            Some("malformed_timestamp"),
        ),
        (
            "an empty signature",
            ts.clone(),
            String::new(),
            body.to_vec(),
            Some("malformed_signature"),
        ),
        (
            "ten minutes old",
            old.clone(),
            signed(&old, body),
            body.to_vec(),
            Some("timestamp_too_old"),
        ),
        (
            "ten minutes ahead",
            ahead.clone(),
            signed(&ahead, body),
            body.to_vec(),
            Some("timestamp_in_future"),
        ),
        (
            "not JSON",
            ts.clone(),
            signed(&ts, b"order paid"),
            b"order paid".to_vec(),
            Some("invalid_json"),
        ),
        (
            "no id",
            ts.clone(),
            signed(&ts, br#"{"type":"order.succeeded"}"#),
            br#"{"type":"order.succeeded"}"#.to_vec(),
            Some("missing_event_id"),
        ),
        (
            "no type",
            ts.clone(),
            signed(&ts, br#"{"id":"evt_c"}"#),
            br#"{"id":"evt_c"}"#.to_vec(),
            Some("missing_event_type"),
        ),
        (
            "a repeated id",
            ts.clone(),
            signed(&ts, br#"{"id":"a","id":"b","type":"order.succeeded"}"#),
            br#"{"id":"a","id":"b","type":"order.succeeded"}"#.to_vec(),
            Some("duplicate_key"),
        ),
        (
            "a terminal escape in the id",
            ts.clone(),
            signed(&ts, br#"{"id":"evt_\u001b[2J","type":"order.succeeded"}"#),
            br#"{"id":"evt_\u001b[2J","type":"order.succeeded"}"#.to_vec(),
            Some("invalid_event_id"),
        ),
        (
            "a line break in the id",
            ts.clone(),
            signed(
                &ts,
                br#"{"id":"evt_1\nforged log line","type":"order.succeeded"}"#,
            ),
            br#"{"id":"evt_1\nforged log line","type":"order.succeeded"}"#.to_vec(),
            Some("invalid_event_id"),
        ),
        (
            "the longest id the layer stores",
            ts.clone(),
            signed(&ts, long_id(longest).as_bytes()),
            long_id(longest).into_bytes(),
            None,
        ),
        (
            "one byte longer",
            ts.clone(),
            signed(&ts, long_id(longest + 1).as_bytes()),
            long_id(longest + 1).into_bytes(),
            Some("invalid_event_id"),
        ),
        (
            "data that does not fit its type",
            ts.clone(),
            signed(
                &ts,
                br#"{"id":"evt_d","type":"order.succeeded","data":{"orderId":["x"]}}"#,
            ),
            br#"{"id":"evt_d","type":"order.succeeded","data":{"orderId":["x"]}}"#.to_vec(),
            Some("undecodable"),
        ),
    ];
    for (what, timestamp, signature, body, code) in cases {
        let error = agree(what, &timestamp, &signature, &body).await;
        assert_eq!(error.as_ref().map(EventError::code), code, "{what}");
    }
}

#[tokio::test]
async fn the_error_kinds_match_the_layers_outcomes() {
    let ts = now_ms();
    let body = br#"{"id":"evt_k","type":"order.succeeded"}"#;
    let verify = agree("verify", &ts, &sign("whsec_other", &ts, body), body)
        .await
        .unwrap();
    let EventError::Verify(error) = &verify else {
        panic!("{verify:?}");
    };
    assert_eq!(verify.code(), Outcome::Verify(error.kind()).as_str());

    let envelope = agree("envelope", &ts, &sign(SECRET, &ts, b"[]"), b"[]")
        .await
        .unwrap();
    let EventError::Envelope(error) = &envelope else {
        panic!("{envelope:?}");
    };
    assert_eq!(envelope.code(), Outcome::InvalidEnvelope(*error).as_str());

    let id = br#"{"id":"\u0000","type":"order.succeeded"}"#;
    let invalid_id = agree("id", &ts, &sign(SECRET, &ts, id), id).await.unwrap();
    assert_eq!(invalid_id, EventError::InvalidEventId);
    assert_eq!(invalid_id.code(), Outcome::InvalidEventId.as_str());

    let data = br#"{"id":"evt_k","type":"refund.failed","data":{"refundAmount":[1]}}"#;
    let decode = agree("decode", &ts, &sign(SECRET, &ts, data), data)
        .await
        .unwrap();
    let EventError::Decode(error) = &decode else {
        panic!("{decode:?}");
    };
    assert_eq!(error.path(), "refundAmount");
    assert_eq!(decode.code(), Outcome::Undecodable.as_str());
    assert_eq!(decode.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[test]
fn messages_never_hold_the_key_and_name_their_cause() {
    let ts = now_ms();
    let body = br#"{"id":"evt_1","type":"order.succeeded"}"#;
    let error = verifier()
        .construct_event(&ts, &sign("whsec_other", &ts, body), body)
        .unwrap_err();
    let message = error.to_string();
    assert!(
        !message.contains(SECRET) && !message.contains("whsec_other"),
        "{message}"
    );
    assert!(message.contains("signature mismatch"), "{message}");
    let source = std::error::Error::source(&error).expect("the verify error");
    assert_eq!(source.to_string(), message);
    // Stale by the clock given, fresh by another.
    let stale = SystemTime::now() + Duration::from_secs(3600);
    let error = verifier()
        .construct_event_at(&ts, &sign(SECRET, &ts, body), body, stale)
        .unwrap_err();
    assert_eq!(error.code(), "timestamp_too_old");
    assert!(error.to_string().contains("clock"), "{error}");
}
