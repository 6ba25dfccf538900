//! `RawEvent::from_slice` and every typed decode never panic; the resource
//! decoded on the way, as a router's layer reads a body, agrees with the
//! envelope read, then decoded; when the
//! envelope is accepted, `serde_json::Value` reads the same `id` and `type`,
//! the raw and typed object keys agree, and a decoded event reads its own
//! JSON back.

#![no_main]

use clink_webhooks::data::{
    CustomerVerify, Dispute, Invoice, Order, Refund, Resource, Session, Subscription,
};
use clink_webhooks::events::{EnvelopeError, Event, RawEvent};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // Read with the resource decoded on the way (as a router's layer and
    // the inbox's workers read it), it agrees with reading, then decoding.
    clink_webhooks::events::fuzzing::check_decoding_on_the_way(data);

    let raw = match RawEvent::from_slice(data) {
        Ok(raw) => raw,
        Err(error) => {
            check_refusal(data, error);
            return;
        }
    };

    // Differential: an independent reader of the whole body agrees. `Value`
    // refuses a few bodies the envelope reader skips through without
    // decoding (a lone surrogate escape such as "\ud800" in a value it does
    // not read, nesting deeper than 128); those have nothing to compare.
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let object = value.as_object().expect("accepted, so it is an object");
    assert_eq!(object.get("id").and_then(Value::as_str), Some(raw.id()));
    assert_eq!(
        object.get("type").and_then(Value::as_str),
        Some(raw.event_type().as_str())
    );
    assert_eq!(
        object.get("livemode").and_then(Value::as_bool),
        raw.livemode()
    );
    // The resource is valid JSON on its own.
    let resource: Value = serde_json::from_str(raw.data_json()).expect("data is JSON");
    let expected = match object.get("data") {
        None => Value::Null,
        Some(Value::Object(wrapper)) => match wrapper.get("object") {
            Some(inner @ Value::Object(_)) => inner.clone(),
            _ => Value::Object(wrapper.clone()),
        },
        Some(other) => other.clone(),
    };
    assert_eq!(resource, expected);

    // Every typed decode: no panic, one object key, and a round trip.
    let family = raw.event_type().family().to_owned();
    check::<Order>(&raw, family == "order");
    check::<Session>(&raw, family == "session");
    check::<Refund>(&raw, family == "refund");
    check::<Subscription>(&raw, family == "subscription");
    check::<Invoice>(&raw, family == "invoice");
    check::<Dispute>(&raw, family == "dispute");
    check::<CustomerVerify>(&raw, family == "customer");
    check::<Value>(&raw, true);
});

/// A refused body is refused for a reason an independent reader confirms.
fn check_refusal(data: &[u8], error: EnvelopeError) {
    let value = serde_json::from_slice::<Value>(data);
    match error {
        EnvelopeError::NotJson => {
            // Either not JSON at all, or JSON that is not an object.
            assert!(!matches!(value, Ok(Value::Object(_))), "{error}");
        }
        EnvelopeError::MissingId => {
            // With duplicate keys refused first, the object has one `id`.
            let id = value.as_ref().ok().and_then(|v| v.get("id"));
            assert!(!matches!(id, Some(Value::String(s)) if !s.is_empty()));
        }
        EnvelopeError::MissingType => {
            let t = value.as_ref().ok().and_then(|v| v.get("type"));
            assert!(!matches!(t, Some(Value::String(s)) if !s.is_empty()));
        }
        EnvelopeError::InvalidType => {
            // No Clink type: too long.
            let t = value.as_ref().ok().and_then(|v| v.get("type"));
            if let Some(Value::String(t)) = t {
                assert!(
                    t.len() > clink_webhooks::events::MAX_EVENT_TYPE_LEN,
                    "{t:?}"
                );
            }
        }
        // `Value` keeps the last copy of a key, so it cannot confirm this one;
        // it also refuses numbers beyond `f64` that the envelope reader only
        // scans. The body is JSON all the same.
        _ => assert!(serde_json::from_slice::<&serde_json::value::RawValue>(data).is_ok()),
    }
}

fn check<T>(raw: &RawEvent, own_family: bool)
where
    T: DeserializeOwned + Serialize + Resource + PartialEq + std::fmt::Debug,
{
    let Ok(event) = raw.decode::<T>() else {
        return;
    };
    if own_family {
        assert_eq!(event.object_key(), raw.object_key(), "{}", raw.data_json());
    }
    // The event reads its own JSON back to the same event, unless its data
    // is itself a wrapper (`{"object":{..}}` inside `data.object`), which
    // reads back unwrapped once more: the wire format cannot tell them apart.
    let data = serde_json::to_value(&event.data).expect("serializes");
    if data.get("object").is_some_and(Value::is_object) {
        return;
    }
    let json = serde_json::to_vec(&event).expect("serializes");
    let back = RawEvent::from_slice(&json).expect("its own JSON is an envelope");
    let again: Event<T> = back.decode().expect("its own JSON decodes");
    assert_eq!(again, event, "{}", String::from_utf8_lossy(&json));
}
