//! Decoding answers that must be exact: amounts, `created`, object keys, the
//! envelope's keys, and the order in which the verifier reports what is wrong
//! with a request. Each test here was a wrong answer once.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::Full;
use tower::{Layer, ServiceExt};

use clink_webhooks::data::{
    CustomerVerify, Dispute, Invoice, Order, Refund, Resource, Session, Subscription,
};
use clink_webhooks::events::{self, EnvelopeError, Event, ObjectKey, RawEvent};
use clink_webhooks::signature::{
    sign, SigningKey, VerifyError, VerifyErrorKind, SIGNATURE_HEADER, SIGN_TYPE_HEADER,
    TIMESTAMP_HEADER,
};
use clink_webhooks::{ClinkLayer, EventRouter, EventType, Outcome, Timestamp, Verifier};
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
        // The envelope reads a `created` it cannot use as absent, and so
        // does a typed field: never a rounded time, never a refused event.
        assert_eq!(event.created(), None, "{created}");
        let order = event
            .decode::<Order>()
            .unwrap_or_else(|e| panic!("{created}: {e}"));
        assert_eq!(order.data.create_time, None, "{created}");
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
            // A customer's email keys it when it has no id; other families
            // never read it.
            r#"{"customerEmail":"a@example.com"}"#.to_owned(),
            r#"{"customerEmail":"a@example.com","id":"x"}"#.to_owned(),
            format!(r#"{{"customerEmail":"a@example.com","{own}":"own"}}"#),
            format!(r#"{{"{own}":"own","customerEmail":"a@example.com"}}"#),
            format!(r#"{{"{own}":"","customerEmail":"a@example.com"}}"#),
            format!(r#"{{"{own}":null,"customerEmail":"a@example.com"}}"#),
            r#"{"customerEmail":""}"#.to_owned(),
            r#"{"customerEmail":7,"id":"x"}"#.to_owned(),
            r#"{"object":{"customerEmail":"a@example.com"}}"#.to_owned(),
            r#"{"customerEmail":"a@example.com","deep":[[{"customerId":"c"}]]}"#.to_owned(),
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
    // A customer known only by its email is keyed by it, as a kind of its
    // own; an order's customer email keys nothing.
    let data = r#"{"object":{"customerEmail":"a@example.com"}}"#;
    let event = raw(&format!(
        r#"{{"id":"evt_1","type":"customer.verify","data":{data}}}"#
    ));
    let key = ObjectKey::new(
        "customer_email",
        "08168cd80dfd534ab0f10af10f1303fe00af2d43ab5c1432360d137f8197e17a",
    );
    assert_eq!(event.object_key(), Some(key.clone()));
    assert_eq!(
        event.decode::<CustomerVerify>().unwrap().object_key(),
        Some(key)
    );
    let event = raw(&format!(
        r#"{{"id":"evt_1","type":"order.succeeded","data":{data}}}"#
    ));
    assert_eq!(event.object_key(), None);
}

// ---------------------------------------------------------------------------
// One order of checks for every entry point of the verifier
// ---------------------------------------------------------------------------

const KEY: &str = "whsec_order";
const BODY: &[u8] = br#"{"id":"evt_order","type":"order.created","data":{}}"#;

/// A header as a test case gives it: absent, one value, two values, or bytes
/// that are not visible ASCII.
#[derive(Clone, Debug)]
enum H {
    Absent,
    One(String),
    Two(String, String),
    Binary,
}

impl H {
    fn value(&self) -> Option<&str> {
        match self {
            Self::One(v) => Some(v),
            _ => None,
        }
    }

    fn put(&self, map: &mut HeaderMap, name: &'static str) {
        match self {
            Self::Absent => {}
            Self::One(v) => {
                map.append(name, HeaderValue::from_str(v).unwrap());
            }
            Self::Two(a, b) => {
                map.append(name, HeaderValue::from_str(a).unwrap());
                map.append(name, HeaderValue::from_str(b).unwrap());
            }
            Self::Binary => {
                map.append(name, HeaderValue::from_bytes(b"12\xff34").unwrap());
            }
        }
    }
}

fn kind_of<T>(result: Result<T, VerifyError>) -> Option<VerifyErrorKind> {
    result.err().map(|e| e.kind())
}

/// The table: every combination of a timestamp, a sign type and a signature
/// in several forms, at a clock that finds the timestamp fresh or stale, with
/// the key active or expired.
fn order_cases(now_ms: u64) -> Vec<(H, H, H, SystemTime, bool)> {
    let fresh = now_ms.to_string();
    let good = sign(KEY, &fresh, BODY);
    let timestamps = [
        H::One(fresh.clone()),
        H::Absent,
        H::One("abc".into()),
        H::One(String::new()),
        H::One("1e12".into()),
        H::One("99999999999999999999".into()),
        H::Two(fresh.clone(), fresh.clone()),
        H::Binary,
    ];
    let sign_types = [
        H::Absent,
        H::One("SHA256".into()),
        H::One("md5".into()),
        H::Two("SHA256".into(), "SHA256".into()),
    ];
    let signatures = [
        H::One(good.clone()),
        H::One(good.to_uppercase()),
        H::One(sign("whsec_other", &fresh, BODY)),
        H::Absent,
        H::One("zz".into()),
        H::One(good[..63].to_owned()),
        H::Two(good.clone(), good),
        H::Binary,
    ];
    let now = at_ms(now_ms);
    let clocks = [
        now,
        now + Duration::from_secs(3600),
        now - Duration::from_secs(3600),
    ];
    let mut cases = Vec::new();
    for ts in &timestamps {
        for st in &sign_types {
            for sig in &signatures {
                for clock in clocks {
                    for expired in [false, true] {
                        cases.push((ts.clone(), st.clone(), sig.clone(), clock, expired));
                    }
                }
            }
        }
    }
    cases
}

fn verifier(expired: bool, at: SystemTime) -> Verifier {
    let key = SigningKey::new(KEY).unwrap();
    let key = if expired {
        key.expires_at(at - Duration::from_secs(7200))
    } else {
        key
    };
    Verifier::from_key(&key)
}

/// The first problem in the documented order, worked out from the case alone.
fn expected(
    ts: &H, st: &H, sig: &H, now: SystemTime, expired: bool, now_ms: u64,
) -> Option<VerifyErrorKind> {
    use VerifyErrorKind as K;
    let fresh = now_ms.to_string();
    match ts {
        H::Absent => return Some(K::MissingTimestamp),
        H::One(v) if *v == fresh => {}
        _ => return Some(K::MalformedTimestamp),
    }
    match st {
        H::Absent => {}
        H::One(v) if v.eq_ignore_ascii_case("sha256") => {}
        _ => return Some(K::UnsupportedSignType),
    }
    match sig {
        H::Absent => return Some(K::MissingSignature),
        H::One(v) if v.len() == 64 => {}
        _ => return Some(K::MalformedSignature),
    }
    if expired {
        return Some(K::NoActiveKey);
    }
    let signed = at_ms(now_ms);
    if now > signed + Duration::from_secs(300) {
        return Some(K::TooOld);
    }
    if now + Duration::from_secs(300) < signed {
        return Some(K::InFuture);
    }
    match sig.value() {
        Some(v) if v.eq_ignore_ascii_case(&sign(KEY, &fresh, BODY)) => None,
        _ => Some(K::SignatureMismatch),
    }
}

#[test]
fn every_verifier_entry_point_reports_problems_in_one_order() {
    // A clock reading in the past keeps the window checks off the real clock.
    let now_ms = 1_736_942_400_000;
    let mut checked = 0;
    for (ts, st, sig, now, expired) in order_cases(now_ms) {
        let verifier = verifier(expired, at_ms(now_ms));
        let case = format!(
            "ts {ts:?}, sign type {st:?}, signature {sig:?}, expired {expired}, now {now:?}"
        );
        let want = expected(&ts, &st, &sig, now, expired, now_ms);

        let mut map = HeaderMap::new();
        ts.put(&mut map, TIMESTAMP_HEADER);
        st.put(&mut map, SIGN_TYPE_HEADER);
        sig.put(&mut map, SIGNATURE_HEADER);
        let headers = kind_of(verifier.verify_headers_at(&map, BODY, now));
        assert_eq!(headers, want, "verify_headers_at: {case}");

        // The plain entry points take the values; only a header that has one
        // value and no sign type other than SHA256 can be given to them.
        let (Some(ts), Some(sig)) = (ts.value(), sig.value()) else {
            continue;
        };
        if matches!(st, H::One(ref v) if v != "SHA256") || matches!(st, H::Two(..)) {
            continue;
        }
        let plain = kind_of(verifier.verify_at(ts, sig, BODY, now));
        assert_eq!(plain, want, "verify_at: {case}");

        // The incremental form sees the signature only at `finish`, so it
        // agrees except where a well-formed timestamp is refused by the
        // window or the keys before a malformed signature is seen.
        let incremental = kind_of(verifier.begin_at(ts, now).and_then(|mut v| {
            v.update(BODY);
            v.finish(sig)
        }));
        let begin_first = matches!(
            incremental,
            Some(
                VerifyErrorKind::TooOld | VerifyErrorKind::InFuture | VerifyErrorKind::NoActiveKey
            )
        ) && want == Some(VerifyErrorKind::MalformedSignature);
        if !begin_first {
            assert_eq!(incremental, want, "begin_at + finish: {case}");
        }
        checked += 1;
    }
    assert!(checked > 100, "{checked}");

    // The case that used to differ between entry points.
    let verifier = verifier(false, at_ms(now_ms));
    let now = at_ms(now_ms);
    assert_eq!(
        kind_of(verifier.verify_at("abc", "zz", BODY, now)),
        Some(VerifyErrorKind::MalformedTimestamp)
    );
    assert_eq!(
        kind_of(verifier.begin_at("abc", now)),
        Some(VerifyErrorKind::MalformedTimestamp)
    );
    let mut map = HeaderMap::new();
    map.insert(TIMESTAMP_HEADER, HeaderValue::from_static("abc"));
    map.insert(SIGNATURE_HEADER, HeaderValue::from_static("zz"));
    assert_eq!(
        kind_of(verifier.verify_headers_at(&map, BODY, now)),
        Some(VerifyErrorKind::MalformedTimestamp)
    );
}

/// The layer answers each case of the table with the verifier's kind. It
/// reads the system clock, so the table is built around the current time.
#[tokio::test]
async fn the_layer_reports_problems_in_the_verifiers_order() {
    let now_ms = u64::try_from(Timestamp::now().as_millis()).unwrap();
    for (ts, st, sig, now, expired) in order_cases(now_ms) {
        // Only the real clock is available to the layer: keep the cases
        // whose clock is "now" and move staleness into the timestamp instead.
        if now != at_ms(now_ms) {
            continue;
        }
        let verifier = verifier(expired, at_ms(now_ms));
        let want = kind_of(verifier.verify_headers_at(
            &{
                let mut map = HeaderMap::new();
                ts.put(&mut map, TIMESTAMP_HEADER);
                st.put(&mut map, SIGN_TYPE_HEADER);
                sig.put(&mut map, SIGNATURE_HEADER);
                map
            },
            BODY,
            SystemTime::now(),
        ));
        let service = ClinkLayer::new(verifier).layer(EventRouter::new());
        let mut request = Request::post("/")
            .body(Full::new(Bytes::from_static(BODY)))
            .unwrap();
        ts.put(request.headers_mut(), TIMESTAMP_HEADER);
        st.put(request.headers_mut(), SIGN_TYPE_HEADER);
        sig.put(request.headers_mut(), SIGNATURE_HEADER);
        let response = service.oneshot(request).await.unwrap();
        let outcome = Outcome::of(&response).cloned();
        let got = match outcome {
            Some(Outcome::Verify(kind)) => Some(kind),
            Some(other) if other.is_verified() => None,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            got, want,
            "layer: ts {ts:?}, sign type {st:?}, signature {sig:?}, expired {expired}"
        );
    }
}

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

// ---------------------------------------------------------------------------
// Duplicate keys
// ---------------------------------------------------------------------------

/// Delivers `body`, signed, to a layer whose router counts the order events
/// it handles.
async fn deliver_counted(body: &str) -> (Outcome, usize) {
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handled);
    let router = EventRouter::new().on::<events::OrderCreated, _>(move |_event: Event<Order>| {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok::<_, Infallible>(()))
    });
    let service = ClinkLayer::new(Verifier::new(KEY).unwrap()).layer(router);
    let ts = Timestamp::now().as_millis().to_string();
    let request = Request::post("/")
        .header(TIMESTAMP_HEADER, &ts)
        .header(SIGNATURE_HEADER, sign(KEY, &ts, body.as_bytes()))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    let outcome = Outcome::of(&response).cloned().unwrap();
    assert_eq!(response.status(), outcome.status());
    (outcome, handled.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_duplicated_envelope_key_is_refused_with_400_and_never_handled() {
    for body in [
        // This one used to decode to an empty order and be acknowledged.
        r#"{"id":"evt_1","type":"order.created","data":{"object":{"orderId":"a"},"object":{"orderId":"b"}}}"#,
        r#"{"id":"evt_1","id":"evt_2","type":"order.created","data":{"orderId":"a"}}"#,
        r#"{"id":"evt_1","type":"order.created","type":"order.created","data":{"orderId":"a"}}"#,
        r#"{"id":"evt_1","type":"order.created","created":1,"created":2,"data":{"orderId":"a"}}"#,
        r#"{"id":"evt_1","type":"order.created","livemode":true,"livemode":true,"data":{"orderId":"a"}}"#,
        r#"{"id":"evt_1","type":"order.created","data":{"orderId":"a"},"data":{"orderId":"b"}}"#,
    ] {
        let (outcome, handled) = deliver_counted(body).await;
        assert_eq!(
            outcome,
            Outcome::InvalidEnvelope(EnvelopeError::DuplicateKey),
            "{body}"
        );
        assert_eq!(outcome.status(), 400);
        assert_eq!(outcome.as_str(), "duplicate_key");
        assert_eq!(handled, 0, "{body}");
    }
    let (outcome, handled) = deliver_counted(
        r#"{"id":"evt_1","type":"order.created","data":{"object":{"orderId":"a"}}}"#,
    )
    .await;
    assert_eq!((outcome, handled), (Outcome::Handled, 1));
}

// ---------------------------------------------------------------------------
// Found by fuzzing (fuzz/fuzz_targets/envelope.rs)
// ---------------------------------------------------------------------------

/// A number that overflows `u64` in data read as `Value` (or metadata) became
/// an `f64` one ulp off, which printed back as a different number: the event
/// did not read its own JSON back. Numbers now parse to the nearest `f64`.
#[test]
fn value_data_with_a_huge_integer_reads_its_own_json_back() {
    for number in [
        "17322222222222222222222222222222226942100000",
        "1732222222222222222222222222222222222226942100000",
        "17322222222222222222222",
        "0.30000000000000004441",
        "2.2250738585072011e-308",
    ] {
        let body = format!(
            r#"{{"id":"e","type":"order.succeeked","data":{{"n":{number},"metadata":{{"n":{number}}}}}}}"#
        );
        let event = raw(&body).decode::<Value>().unwrap();
        let json = serde_json::to_vec(&event).unwrap();
        let back = RawEvent::from_slice(&json)
            .unwrap()
            .decode::<Value>()
            .unwrap();
        assert_eq!(back, event, "{number}");

        let order_body = format!(
            r#"{{"id":"e","type":"order.created","data":{{"metadata":{{"n":{number}}}}}}}"#
        );
        let order = raw(&order_body).decode::<Order>().unwrap();
        let json = serde_json::to_vec(&order).unwrap();
        let back = RawEvent::from_slice(&json)
            .unwrap()
            .decode::<Order>()
            .unwrap();
        assert_eq!(back, order, "{number}");
    }
}

/// A number beyond `f64` in a field nobody reads does not make a body
/// unreadable: the envelope reader only scans it, so a repeated key is still
/// reported as such, typed data that ignores the field decodes, and only a
/// reader that wants the number (`Value`) refuses it.
#[test]
fn numbers_beyond_f64_only_fail_the_reader_that_wants_them() {
    let duplicated = r#"{"id":"e","type":"order.created","type":"order.created","data":{"n":19.0000000000000000000000001E4819115206}}"#;
    assert_eq!(
        RawEvent::from_slice(duplicated.as_bytes()).unwrap_err(),
        EnvelopeError::DuplicateKey
    );
    assert!(serde_json::from_str::<Value>(duplicated).is_err());

    let body = r#"{"id":"e","type":"order.created","data":{"orderId":"o","n":1e400}}"#;
    let event = raw(body);
    assert_eq!(event.data_json(), r#"{"orderId":"o","n":1e400}"#);
    let order = event.decode::<Order>().unwrap();
    assert_eq!(order.data.order_id.as_deref(), Some("o"));
    let err = event.decode::<Value>().unwrap_err();
    assert_eq!(err.path(), "n");
}
