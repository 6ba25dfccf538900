//! Tests written to kill mutants that survived the rest of the suite: each
//! asserts something a mutation of the code it names would break (see
//! `scripts/mutants`). Everything here runs in process, without a server.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clink_webhooks::accounts::{AccountFrom, KeySource, KeySourceError};
use clink_webhooks::data::{Currency, Order};
use clink_webhooks::router::Dispatched;
use clink_webhooks::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use clink_webhooks::{
    sign, BoxFuture, ClinkLayer, EventRouter, Outcome, SigningKey, Timestamp, Verified,
    VerifiedEvent, Verifier, VerifyError, VerifyErrorKind,
};
use http::{header, Request, Response};
use http_body_util::Full;
use tower::{Layer, ServiceExt};

const TS: &str = "1700000000000";
const BODY: &[u8] = br#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"ord_1"}}"#;
const MS: Duration = Duration::from_millis(1);

fn signed_at() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)
}

/// Verifies `body` incrementally, fed in `pieces` chunks of about equal size.
fn incremental(
    verifier: &Verifier, signature: &str, body: &[u8], pieces: usize, now: SystemTime,
) -> Result<Verified, VerifyError> {
    let mut verification = verifier.begin_at(TS, now)?;
    for chunk in body.chunks(body.len().div_ceil(pieces).max(1)) {
        verification.update(chunk);
    }
    verification.finish(signature)
}

fn kind<T>(result: Result<T, VerifyError>) -> VerifyErrorKind {
    match result {
        Ok(_) => panic!("expected a refusal"),
        Err(error) => error.kind(),
    }
}

// ---------------------------------------------------------------------------
// src/signature/verifier.rs
// ---------------------------------------------------------------------------

/// The incremental path (the one the layer uses) must leave an expired key
/// out while another key is still active, from its expiry on, whichever
/// place the expired key has.
#[test]
fn an_expired_key_is_refused_incrementally_while_another_is_active() {
    let expiry = signed_at() + Duration::from_secs(60);
    let old = sign("whsec_old", TS, BODY);
    let new = sign("whsec_new", TS, BODY);
    let expiring = || SigningKey::new("whsec_old").unwrap().expires_at(expiry);
    // The expired key second, then first.
    let second = Verifier::new("whsec_new").unwrap().add_key(expiring());
    let first = Verifier::from_key(&expiring()).add_key(SigningKey::new("whsec_new").unwrap());
    for (verifier, old_index, new_index) in [(&second, 1, 0), (&first, 0, 1)] {
        for pieces in [1, 3] {
            let before = incremental(verifier, &old, BODY, pieces, expiry - MS);
            assert_eq!(before.unwrap().key_index(), old_index);
            for now in [expiry, expiry + MS, expiry + Duration::from_secs(120)] {
                assert_eq!(
                    kind(incremental(verifier, &old, BODY, pieces, now)),
                    VerifyErrorKind::SignatureMismatch,
                    "old key at {now:?}"
                );
                let fresh = incremental(verifier, &new, BODY, pieces, now);
                assert_eq!(fresh.unwrap().key_index(), new_index);
            }
        }
    }
}

/// The same through the layer, which verifies incrementally against the
/// system clock: a key that expired long ago gets a 401 (`expired_key`,
/// since the layer holds the body) while another key is active.
#[tokio::test]
async fn the_layer_refuses_a_delivery_signed_with_an_expired_key() {
    let long_ago = UNIX_EPOCH + Duration::from_secs(1);
    let verifier = Verifier::new("whsec_new")
        .unwrap()
        .add_key(SigningKey::new("whsec_old").unwrap().expires_at(long_ago));
    let service = ClinkLayer::new(verifier).layer(EventRouter::new());
    let body = Bytes::from_static(BODY);
    let refused = service
        .clone()
        .oneshot(delivery("whsec_old", body.clone(), None))
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        Outcome::of(&refused),
        Some(&Outcome::Verify(VerifyErrorKind::ExpiredKey))
    );
    let accepted = service
        .oneshot(delivery("whsec_new", body, None))
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
}

/// Flips `bit` of each byte at `positions` in the hex signature `signature`.
fn flipped(signature: &str, positions: &[usize], bit: u8) -> String {
    let mut tag = hex_decode(signature);
    for &at in positions {
        tag[at] ^= 1 << bit;
    }
    tag.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A tag that differs from the right one in several places whose
/// differences cancel out under XOR (the same bit in the same byte of two
/// 8-byte words, or three words `a`, `b`, `a ^ b`) is still a mismatch: the
/// comparison must OR the differences together, not XOR them.
#[test]
fn a_tag_whose_differences_would_cancel_out_is_refused() {
    let verifier = Verifier::new("whsec_a").unwrap();
    let good = sign("whsec_a", TS, BODY);
    assert!(verifier.verify_at(TS, &good, BODY, signed_at()).is_ok());
    let mut cases: Vec<String> = Vec::new();
    for offset in 0..8 {
        for bit in 0..8 {
            // Every pair of words, and all four words at once.
            for (w1, w2) in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)] {
                cases.push(flipped(&good, &[w1 * 8 + offset, w2 * 8 + offset], bit));
            }
            cases.push(flipped(
                &good,
                &[offset, 8 + offset, 16 + offset, 24 + offset],
                bit,
            ));
        }
    }
    // Three words: one bit in word 0, another in word 1, both in word 2.
    let mut tag = hex_decode(&good);
    tag[3] ^= 0x10;
    tag[8 + 5] ^= 0x02;
    tag[16 + 3] ^= 0x10;
    tag[16 + 5] ^= 0x02;
    cases.push(tag.iter().map(|b| format!("{b:02x}")).collect());

    for bad in &cases {
        assert_ne!(bad, &good);
        assert_eq!(
            kind(verifier.verify_at(TS, bad, BODY, signed_at())),
            VerifyErrorKind::SignatureMismatch,
            "{bad}"
        );
        assert_eq!(
            kind(incremental(&verifier, bad, BODY, 2, signed_at())),
            VerifyErrorKind::SignatureMismatch,
            "{bad}"
        );
    }
}

/// Three and four keys (past the two kept inline), verified incrementally
/// and in one shot: each active key is found at its own index, each expired
/// one is refused, for every mix of expired and active keys.
#[test]
fn three_and_four_keys_verify_incrementally_with_any_mix_of_expiries() {
    let now = signed_at();
    for count in [3usize, 4] {
        for expired_mask in 0u32..(1 << count) {
            let key = |i: usize| {
                let key = SigningKey::new(format!("whsec_key_{i}")).unwrap();
                if expired_mask & (1 << i) != 0 {
                    key.expires_at(now - MS)
                } else {
                    key.expires_at(now + Duration::from_secs(3600))
                }
            };
            let mut verifier = Verifier::from_key(&key(0));
            for i in 1..count {
                verifier = verifier.add_key(key(i));
            }
            assert_eq!(verifier.key_count(), count);
            let all_expired = expired_mask.count_ones() as usize == count;
            for i in 0..count {
                let signature = sign(format!("whsec_key_{i}"), TS, BODY);
                let expired = expired_mask & (1 << i) != 0;
                for pieces in [1, 2, 5] {
                    let got = incremental(&verifier, &signature, BODY, pieces, now);
                    let one_shot = verifier.verify_at(TS, &signature, BODY, now);
                    let case = format!("{count} keys, expired {expired_mask:b}, key {i}");
                    if all_expired {
                        assert_eq!(kind(got), VerifyErrorKind::NoActiveKey, "{case}");
                        assert_eq!(kind(one_shot), VerifyErrorKind::NoActiveKey, "{case}");
                    } else if expired {
                        // Incrementally no body is kept to tell an expired key
                        // from a forgery; in one shot it is.
                        assert_eq!(kind(got), VerifyErrorKind::SignatureMismatch, "{case}");
                        assert_eq!(kind(one_shot), VerifyErrorKind::ExpiredKey, "{case}");
                    } else {
                        assert_eq!(got.unwrap().key_index(), i, "{case}");
                        assert_eq!(one_shot.unwrap().key_index(), i, "{case}");
                    }
                }
                // A body with one byte changed matches no key.
                if !all_expired {
                    let mut tampered = BODY.to_vec();
                    tampered[10] ^= 1;
                    assert_eq!(
                        kind(incremental(&verifier, &signature, &tampered, 2, now)),
                        VerifyErrorKind::SignatureMismatch
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// src/layer/verify.rs
// ---------------------------------------------------------------------------

/// A delivery of `body` signed now with `secret`, with `Content-Length`
/// set to `declared`, or to the body's length when `None`.
fn delivery(secret: &str, body: Bytes, declared: Option<usize>) -> Request<Full<Bytes>> {
    let ts = Timestamp::now().as_millis().to_string();
    let signature = sign(secret, &ts, &body);
    Request::post("/webhooks/clink")
        .header(TIMESTAMP_HEADER, &ts)
        .header(SIGNATURE_HEADER, signature)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, declared.unwrap_or(body.len()))
        .body(Full::new(body))
        .unwrap()
}

/// An event `id` padded with spaces to exactly `len` bytes.
fn event_of_len(id: &str, len: usize) -> Bytes {
    let mut body = format!(r#"{{"id":"{id}","type":"order.succeeded","data":{{}}}}"#);
    assert!(body.len() <= len);
    body.extend(std::iter::repeat_n(' ', len - body.len()));
    Bytes::from(body)
}

/// A `Content-Length` exactly at the body limit is read and accepted; one
/// byte more is refused with 413 on the declared length alone, before the
/// body is read (the body sent is within the limit).
#[tokio::test]
async fn a_content_length_at_the_limit_is_accepted_and_one_more_is_refused() {
    let limit = 512;
    let service = ClinkLayer::new(Verifier::new("whsec_a").unwrap())
        .body_limit(limit)
        .unwrap()
        .layer(EventRouter::new());

    let exact = event_of_len("evt_exact", limit);
    let response = service
        .clone()
        .oneshot(delivery("whsec_a", exact, None))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let over = event_of_len("evt_over", limit + 1);
    let response = service
        .clone()
        .oneshot(delivery("whsec_a", over, None))
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // Declared one over the limit, with a body (validly signed) that is not.
    let short = event_of_len("evt_short", limit);
    let response = service
        .clone()
        .oneshot(delivery("whsec_a", short.clone(), Some(limit + 1)))
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        Outcome::of(&response),
        Some(&Outcome::BodyTooLarge { limit })
    );
    // The same body, declared honestly, goes through.
    let response = service
        .oneshot(delivery("whsec_a", short, None))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// `VerifiedEvent::key_name`, as the inner service and the response see
/// it, names the key that matched.
#[tokio::test]
async fn the_verified_event_says_which_key_matched() {
    let named = |i: usize| {
        SigningKey::new(format!("whsec_k{i}"))
            .unwrap()
            .named(&format!("k{i}"))
            .unwrap()
    };
    let verifier = Verifier::from_key(&named(0))
        .add_key(named(1))
        .add_key(named(2));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let seen = Arc::clone(&seen);
            async move {
                let verified = request.extensions().get::<VerifiedEvent>().unwrap();
                seen.lock().unwrap().push((
                    verified.event().id().to_owned(),
                    verified.key_name().to_owned(),
                ));
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        })
    };
    let service = ClinkLayer::new(verifier).layer(inner);
    for (i, order) in [2, 0, 1].into_iter().enumerate() {
        let body = event_of_len(&format!("evt_{i}"), 64);
        let response = service
            .clone()
            .oneshot(delivery(&format!("whsec_k{order}"), body, None))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let verified = response.extensions().get::<VerifiedEvent>().unwrap();
        assert_eq!(verified.key_name(), format!("k{order}"));
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("evt_0".to_owned(), "k2".to_owned()),
            ("evt_1".to_owned(), "k0".to_owned()),
            ("evt_2".to_owned(), "k1".to_owned())
        ]
    );
}

/// A key source that answers every lookup with `answer`.
struct Answering(fn() -> KeySourceError);

impl KeySource for Answering {
    fn verifier<'a>(
        &'a self, _account: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Verifier>>, KeySourceError>> {
        let error = (self.0)();
        Box::pin(async move { Err(error) })
    }
}

/// A key source that will not look keys up now (its own limit) is a
/// `503` the metrics count as such; one that fails is the key source being
/// down. Both are retried by Clink, but only the second is an outage.
#[tokio::test]
async fn a_key_source_at_its_limit_is_told_from_one_that_is_down() {
    let cases: [(fn() -> KeySourceError, Outcome); 2] = [
        (KeySourceError::limited, Outcome::KeyLookupsLimited),
        (
            || KeySourceError::new("connection refused"),
            Outcome::KeysUnavailable,
        ),
    ];
    for (error, expected) in cases {
        let service = ClinkLayer::with_key_source(AccountFrom::LastPathSegment, Answering(error))
            .layer(EventRouter::new());
        let mut request = delivery("whsec_a", event_of_len("evt_1", 64), None);
        *request.uri_mut() = "/webhooks/clink/acct_1".parse().unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        assert_eq!(Outcome::of(&response), Some(&expected));
    }
}

/// Behind the layer, the router's response carries its `Dispatched` (for
/// the failure's text) only when the event failed; a handled event's
/// response has the outcome and the verified event, and nothing the
/// request carried.
#[tokio::test]
async fn the_routers_response_says_why_an_event_failed_and_only_then() {
    let router =
        EventRouter::new().on::<clink_webhooks::events::OrderSucceeded, _>(|event| async move {
            if event.id == "evt_fails" {
                Err(std::io::Error::other("the ledger said no"))
            } else {
                Ok(())
            }
        });
    let service = ClinkLayer::new(Verifier::new("whsec_a").unwrap()).layer(router);
    let body = |id: &str| Bytes::from(String::from_utf8_lossy(BODY).replace("evt_1", id));

    // What the request carried in its extensions stays out of the response.
    #[derive(Clone)]
    struct FromTheRequest;
    let mut request = delivery("whsec_a", body("evt_ok"), None);
    request.extensions_mut().insert(FromTheRequest);
    let handled = service.clone().oneshot(request).await.unwrap();
    assert_eq!(Outcome::of(&handled), Some(&Outcome::Handled));
    assert!(handled.extensions().get::<Dispatched>().is_none());
    assert!(handled.extensions().get::<FromTheRequest>().is_none());
    assert_eq!(
        handled
            .extensions()
            .get::<VerifiedEvent>()
            .unwrap()
            .event()
            .id(),
        "evt_ok"
    );

    let failed = service
        .oneshot(delivery("whsec_a", body("evt_fails"), None))
        .await
        .unwrap();
    assert_eq!(Outcome::of(&failed), Some(&Outcome::HandlerFailed));
    let dispatched = failed.extensions().get::<Dispatched>().unwrap();
    assert_eq!(dispatched.outcome(), &Outcome::HandlerFailed);
    assert!(dispatched.failure().unwrap().contains("the ledger said no"));
}

// ---------------------------------------------------------------------------
// src/data/common.rs
// ---------------------------------------------------------------------------

/// An exponent marker with no digits after it (or something else than
/// digits) is not a number, in a quoted amount as in any other.
#[test]
fn quoted_amounts_with_an_empty_or_bad_exponent_are_refused() {
    for bad in [
        "1e", "1e+", "1e-", "1E", "0ex", "1ex", "1e+x", "1e1x", "1e++1", "1e-+1", "e1", "1ee1",
        "1e1e1", ".e1", "1e 1",
    ] {
        let json = format!(r#"{{"amountTotal":"{bad}"}}"#);
        assert!(
            serde_json::from_str::<Order>(&json).is_err(),
            "{bad} was accepted"
        );
    }
    // Next to them, well-formed exponents are read exactly.
    for (good, expected) in [("1e0", "1"), ("1e+1", "10"), ("15e-1", "1.5"), ("0e7", "0")] {
        let json = format!(r#"{{"amountTotal":"{good}"}}"#);
        let order: Order = serde_json::from_str(&json).unwrap();
        assert_eq!(order.amount_total.unwrap().to_string(), expected, "{good}");
    }
}

/// A currency compares with `str` and `&str` by its code, exactly.
#[test]
#[allow(clippy::op_ref)]
fn currencies_compare_with_strings_by_their_code() {
    let listed = Currency::USD;
    let unlisted = Currency::from("CHF");
    let owned = Currency::new(String::from("USD"));
    // `PartialEq<&str>`.
    assert!(listed == "USD");
    assert!(owned == "USD");
    assert!(unlisted == "CHF");
    assert!(listed != "EUR");
    assert!(listed != "usd");
    assert!(listed != "USD ");
    assert!(unlisted != "USD");
    // `PartialEq<str>`.
    assert!(listed == *"USD");
    assert!(unlisted == *"CHF");
    assert!(listed != *"EUR");
    assert!(unlisted != *"chf");
    // `==` itself false (not only `!=` true).
    assert!(!PartialEq::<str>::eq(&listed, "CHF"));
    assert!(!PartialEq::<&str>::eq(&unlisted, &"USD"));
}

/// A string enum or a currency given something else than a string says
/// what it expected.
#[test]
fn a_string_field_given_a_number_says_it_expected_a_string() {
    use clink_webhooks::data::Interval;
    for error in [
        serde_json::from_str::<Interval>("7").unwrap_err(),
        serde_json::from_str::<Currency>("840").unwrap_err(),
    ] {
        assert!(error.to_string().contains("expected a string"), "{error}");
    }
}

/// A currency reads as its code through `AsRef<str>` and `Display`.
#[test]
fn a_currency_shows_its_code() {
    for (currency, code) in [
        (Currency::USD, "USD"),
        (Currency::from("CHF"), "CHF"),
        (Currency::new("xts"), "xts"),
    ] {
        assert_eq!(AsRef::<str>::as_ref(&currency), code);
        assert_eq!(currency.to_string(), code);
        assert_eq!(format!("[{currency}]"), format!("[{code}]"));
    }
}

/// `Metadata`'s accessors read, replace and hand over its entries.
#[test]
fn metadata_entries_are_read_replaced_and_handed_over() {
    use clink_webhooks::data::Metadata;
    use serde_json::Value;

    let mut metadata = Metadata::new();
    assert!(metadata.is_empty());
    assert_eq!(metadata.insert("tier", "gold"), None);
    assert!(!metadata.is_empty());
    assert_eq!(metadata.insert("tier", "silver"), Some(Value::from("gold")));
    assert_eq!(metadata.insert("n", 2), None);
    assert_eq!(metadata.get("n"), Some(&Value::from(2)));
    assert_eq!(metadata.get("missing"), None);
    assert_eq!(metadata.get_str("tier"), Some("silver"));
    assert_eq!(metadata.get_str("n"), None, "not a string");
    assert_eq!(metadata.unparsed(), None);
    assert_eq!(metadata.entries().len(), 2);
    assert_eq!(metadata.entries()["tier"], "silver");

    let collected: Metadata = [("tier", Value::from("silver")), ("n", Value::from(2))]
        .into_iter()
        .collect();
    assert_eq!(collected, metadata);
    let entries = metadata.into_entries();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries["n"], 2);

    let odd: Metadata = serde_json::from_str(r#""arn=74537""#).unwrap();
    assert!(odd.is_empty());
    assert_eq!(odd.unparsed(), Some("arn=74537"));
    assert!(odd.entries().is_empty());

    let error = serde_json::from_str::<Metadata>("[1]").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("an object, or a string holding a JSON-encoded object"),
        "{error}"
    );
}

/// An amount with 30 significant digits is refused for having more than a
/// decimal holds (29), not only for its size.
#[test]
fn an_amount_with_thirty_significant_digits_is_refused_as_such() {
    for text in [
        "123456789012345678901234567891",
        "0.123456789012345678901234567891",
        "\"1234567890.12345678901234567891\"",
    ] {
        let json = format!(r#"{{"amountTotal":{text}}}"#);
        let error = serde_json::from_str::<Order>(&json).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("more significant digits than a decimal holds"),
            "{text}: {error}"
        );
    }
}

/// The `Debug` output of a verifier and of a verification says what they
/// are and their settings (and, elsewhere tested, never a secret).
#[test]
fn verifiers_and_verifications_debug_their_settings() {
    let verifier = Verifier::new("whsec_a")
        .unwrap()
        .max_age(Duration::from_secs(42));
    let shown = format!("{verifier:?}");
    for part in ["Verifier", "max_age", "42s", "max_future_skew", "300s"] {
        assert!(shown.contains(part), "{part} in {shown}");
    }
    let verification = verifier.begin_at(TS, signed_at()).unwrap();
    let shown = format!("{verification:?}");
    for part in ["Verification", "signed_at"] {
        assert!(shown.contains(part), "{part} in {shown}");
    }
}
