//! Decoding answers that must be exact: amounts, `created`, object keys, the
//! envelope's keys, and the order in which the verifier reports what is wrong
//! with a request. Each test here was a wrong answer once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clink_webhooks::data::{
    CustomerVerify, Dispute, Invoice, Order, Refund, Resource, Session, Subscription,
};
use clink_webhooks::events::{Event, ObjectKey, RawEvent};
use clink_webhooks::{EventType, Timestamp};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn raw(body: &str) -> RawEvent {
    RawEvent::from_slice(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn order_amount(amount: &str) -> Result<Option<Decimal>, String> {
    let body =
        format!(r#"{{"id":"e","type":"order.succeeded","data":{{"amountTotal":{amount}}}}}"#);
    raw(&body)
        .decode::<Order>()
        .map(|event| event.data.amount_total)
        .map_err(|e| e.to_string())
}

#[test]
fn amounts_with_an_exponent_are_exact_or_refused() {
    for text in [
        "1.00000000000000000000000000001e0",
        "\"1.00000000000000000000000000001e0\"",
        "1.00000000000000000000000000001",
        "0.12345678901234567890123456789",
        "\"0.12345678901234567890123456789\"",
        "1e-29",
        "1e29",
    ] {
        assert!(order_amount(text).is_err(), "{text} was accepted");
    }
    for (text, expected) in [
        // Exactly 1.2345678901234567890123456789: 28 places, 29 digits.
        (
            "0.12345678901234567890123456789e1",
            "1.2345678901234567890123456789",
        ),
        (
            "\"0.12345678901234567890123456789e1\"",
            "1.2345678901234567890123456789",
        ),
        ("10e-29", "0.0000000000000000000000000001"),
        ("\"10e-29\"", "0.0000000000000000000000000001"),
        ("0e29", "0"),
        ("1.999e3", "1999"),
    ] {
        let amount = order_amount(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(amount.unwrap().to_string(), expected, "{text}");
    }
}

#[test]
fn created_is_never_rounded_through_f64() {
    for created in [
        "1736942400000.0000001",
        "7277777777777777.0",
        "1736942400000.0",
        "1.7369424e12",
    ] {
        let body = format!(
            r#"{{"id":"e","type":"order.created","created":{created},"data":{{"createTime":{created}}}}}"#
        );
        let event = raw(&body);
        // The envelope reads a `created` it cannot use as absent ...
        assert_eq!(event.created(), None, "{created}");
        // ... and a typed field refuses it.
        assert!(event.decode::<Order>().is_err(), "{created}");
    }
    let event = raw(r#"{"id":"e","type":"order.created","created":7277777777777777}"#);
    assert_eq!(
        event.created(),
        Some(Timestamp::from_millis(7_277_777_777_777_777))
    );
}

#[test]
fn a_typed_event_reads_its_own_json_back_at_any_time() {
    for millis in [
        -62_167_219_200_001,
        -62_167_219_200_000,
        0,
        253_402_300_799_999,
        253_402_300_800_000,
        i64::MIN,
        i64::MAX,
    ] {
        let created = Timestamp::from_millis(millis);
        let mut data = Order::default();
        data.order_id = Some("ord_1".into());
        data.create_time = Some(created);
        let event = Event::new("evt_1", EventType::OrderCreated, data).with_created(created);
        let json = serde_json::to_vec(&event).unwrap();
        let back = RawEvent::from_slice(&json).unwrap();
        assert_eq!(back.created(), Some(created), "{millis}");
        let typed = back.decode::<Order>().unwrap();
        assert_eq!(typed, event, "{millis}");
    }
}

/// The key of `raw` decoded into its family's own data type (or `Value`).
fn typed_key(raw: &RawEvent) -> Option<ObjectKey> {
    fn key<T: DeserializeOwned + Resource>(raw: &RawEvent) -> Option<ObjectKey> {
        // Data that does not fit the type has no typed key to compare.
        raw.decode::<T>().ok().map(|e| e.object_key())?
    }
    match raw.event_type().family() {
        "order" => key::<Order>(raw),
        "session" => key::<Session>(raw),
        "refund" => key::<Refund>(raw),
        "subscription" => key::<Subscription>(raw),
        "invoice" => key::<Invoice>(raw),
        "dispute" => key::<Dispute>(raw),
        "customer" => key::<CustomerVerify>(raw),
        _ => key::<Value>(raw),
    }
}

#[test]
fn raw_and_typed_object_keys_agree_for_every_family() {
    let mut types: Vec<EventType> = EventType::ALL.to_vec();
    types.push(EventType::from("wallet_card.topped_up"));
    types.push(EventType::from("nodot"));
    for t in &types {
        let own = match t.family() {
            "dispute" => "chargeBackId".to_owned(),
            "customer" => "customerId".to_owned(),
            family => {
                let mut field = String::new();
                let mut upper = false;
                for c in family.chars() {
                    match c {
                        '_' => upper = true,
                        c if upper => {
                            field.push(c.to_ascii_uppercase());
                            upper = false;
                        }
                        c => field.push(c),
                    }
                }
                field + "Id"
            }
        };
        let shapes = [
            r#"{"id":"x"}"#.to_owned(),
            format!(r#"{{"{own}":"own"}}"#),
            format!(r#"{{"{own}":"own","id":"x"}}"#),
            format!(r#"{{"id":"x","{own}":null}}"#),
            format!(r#"{{"{own}":"","id":"x"}}"#),
            r#"{"object":{"id":"x"}}"#.to_owned(),
            format!(r#"{{"object":{{"{own}":"own","id":"x"}}}}"#),
            "{}".to_owned(),
            "[]".to_owned(),
            "null".to_owned(),
        ];
        for data in shapes {
            let body = format!(r#"{{"id":"evt_1","type":"{t}","data":{data}}}"#);
            let raw = raw(&body);
            let raw_key = raw.object_key();
            let value_key = raw.decode::<Value>().unwrap().object_key();
            assert_eq!(raw_key, value_key, "{body}");
            if raw.decode::<Value>().unwrap().data.is_object() {
                assert_eq!(raw_key, typed_key(&raw), "{body}");
            }
        }
    }
    // The case that used to give `refund:x` raw and `None` typed.
    let event = raw(r#"{"id":"evt_1","type":"refund.created","data":{"id":"x"}}"#);
    assert_eq!(event.object_key(), None);
    assert_eq!(event.decode::<Refund>().unwrap().object_key(), None);
    // Families without a data type still fall back to `id`.
    let event = raw(r#"{"id":"evt_1","type":"agent_order.failed","data":{"id":"x"}}"#);
    assert_eq!(event.object_key(), Some(ObjectKey::new("agent_order", "x")));
}

#[allow(dead_code)]
fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
