//! The whole `ClinkLayer` + `EventRouter` in process, on a current-thread
//! runtime built once. The harness signs its inputs (or breaks the signature
//! on purpose) and delivers the same body several times: every status is
//! one the `Outcome` table allows and matches the outcome, verification
//! fails exactly when the harness broke it, and a handler never succeeds
//! twice for one event id, nor runs again once it has.
//!
//! Input: the body, optionally followed by `0xFF` and one control byte per
//! delivery (none: two clean deliveries). A body never holds `0xFF` as
//! UTF-8, so every seed body is used whole.
//!
//! The layer's refusals are each checked against their rule: a signature by
//! a key past its expiry is `expired_key` (401, answered as a mismatch),
//! and an event id holding a control, format or separator character is
//! `invalid_event_id` (400).

#![no_main]

#[path = "common.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use clink_webhooks::data::Resource;
use clink_webhooks::events::{has_invisible, Event, RawEvent};
use clink_webhooks::router::EveryHandler;
use clink_webhooks::signature::VerifyErrorKind;
use clink_webhooks::signature::{SIGNATURE_HEADER, SIGN_TYPE_HEADER, TIMESTAMP_HEADER};
use clink_webhooks::BoxFuture;
use clink_webhooks::{
    ClinkLayer, EventRouter, EventType, Layer, MemoryStore, Outcome, SigningKey, Timestamp,
    Verifier,
};
use common::reference_signature;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use tower_service::Service;

const SECRET: &str = "whsec_fuzz_layer";
/// A key the layer's verifier holds, expired long ago.
const EXPIRED: &str = "whsec_fuzz_layer_retired";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

/// Per event id: how many times the handler ran, and how many succeeded.
#[derive(Clone, Default)]
struct Runs {
    by_id: Arc<Mutex<HashMap<String, (u32, u32)>>>,
    fail_next: Arc<AtomicBool>,
}

impl EveryHandler for Runs {
    type Error = std::io::Error;

    fn handle<T: Resource + Send + 'static>(
        &self,
        event: Event<T>,
    ) -> BoxFuture<'static, Result<(), std::io::Error>> {
        let fail = self.fail_next.load(Ordering::SeqCst);
        let mut by_id = self.by_id.lock().unwrap();
        let entry = by_id.entry(event.id.clone()).or_default();
        assert_eq!(
            entry.1, 0,
            "handler ran again after succeeding for {}",
            event.id
        );
        entry.0 += 1;
        if !fail {
            entry.1 += 1;
        }
        Box::pin(std::future::ready(if fail {
            Err(std::io::Error::other("fuzz: asked to fail"))
        } else {
            Ok(())
        }))
    }
}

/// Every status the outcome table allows: never a 3xx, 410 or 429.
fn allowed(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 400 | 401 | 404 | 405 | 408 | 409 | 413 | 500 | 503
    )
}

fuzz_target!(|data: &[u8]| {
    let (body, controls) = match data.iter().position(|&b| b == 0xFF) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[0u8, 0][..]),
    };
    let controls = &controls[..controls.len().min(8)];
    runtime().block_on(run(Bytes::copy_from_slice(body), controls));
});

async fn run(body: Bytes, controls: &[u8]) {
    let runs = Runs::default();
    let store = Arc::new(MemoryStore::new());
    let router = EventRouter::new()
        .ordering(Arc::clone(&store))
        .on_every_type(runs.clone());
    let retired = SigningKey::new(EXPIRED)
        .unwrap()
        .expires_at(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1));
    let mut service = ClinkLayer::new(Verifier::new(SECRET).unwrap().add_key(retired))
        .store(store)
        .layer(router);

    let envelope = RawEvent::from_slice(&body);
    for &control in controls {
        let post = control & 0b1000 == 0;
        let sign_type = control & 0b1_0000 != 0;
        let by_expired_key = control & 0b10_0000 != 0;
        runs.fail_next.store(control & 0b100 != 0, Ordering::SeqCst);
        let now = Timestamp::now().as_millis();
        let (timestamp, signature, broken) = match control & 0b11 {
            0 => {
                let ts = now.to_string();
                let sig = reference_signature(SECRET.as_bytes(), &ts, &body);
                (ts, sig, None)
            }
            1 => {
                let ts = now.to_string();
                let sig = reference_signature(b"whsec_other", &ts, &body);
                (ts, sig, Some(401))
            }
            2 => {
                let ts = (now - 3_600_000).to_string();
                let sig = reference_signature(SECRET.as_bytes(), &ts, &body);
                (ts, sig, Some(401))
            }
            _ => {
                let ts = now.to_string();
                (ts, "not hex".to_owned(), Some(400))
            }
        };
        let (timestamp, signature, broken) = if by_expired_key {
            let ts = now.to_string();
            let sig = reference_signature(EXPIRED.as_bytes(), &ts, &body);
            (ts, sig, Some(401))
        } else {
            (timestamp, signature, broken)
        };
        let mut request = Request::builder()
            .method(if post { Method::POST } else { Method::GET })
            .uri("/webhooks/clink")
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, &signature);
        if sign_type {
            request = request.header(SIGN_TYPE_HEADER, "MD5");
        }
        let request = request.body(Full::new(body.clone())).unwrap();

        let before = runs.by_id.lock().unwrap().clone();
        let response = service.call(request).await.unwrap();
        let after = runs.by_id.lock().unwrap().clone();
        let outcome = Outcome::of(&response)
            .expect("every response carries its outcome")
            .clone();
        let status = response.status();
        assert_eq!(status, outcome.status(), "{outcome:?}");
        assert!(allowed(status), "status {status} for {outcome:?}");

        // The handler ran at most once for this delivery, and only when the
        // outcome says a handler ran (`HandlerFailed` is also the answer for
        // data that does not decode, where it never started).
        let total = |runs: &HashMap<String, (u32, u32)>| runs.values().map(|r| r.0).sum::<u32>();
        let ran = total(&after) - total(&before);
        assert!(ran <= 1, "{ran} runs for one delivery");
        if ran == 1 {
            assert!(outcome.handler_ran(), "{outcome:?}");
        }
        if outcome == Outcome::Handled {
            assert_eq!(ran, 1);
        }
        for (id, (_, ok)) in &after {
            assert!(*ok <= 1, "{id} handled {ok} times");
        }

        // Verification fails exactly when the harness broke it.
        if !post {
            assert_eq!(outcome, Outcome::MethodNotAllowed);
            continue;
        }
        if let (Some(code), false) = (broken, sign_type) {
            assert!(matches!(outcome, Outcome::Verify(_)), "{outcome:?}");
            assert_eq!(status.as_u16(), code, "{outcome:?}");
            // Signed with the retired key: told apart for the operator, and
            // answered to the sender exactly as a forgery is.
            assert_eq!(
                outcome == Outcome::Verify(VerifyErrorKind::ExpiredKey),
                by_expired_key,
                "{outcome:?}"
            );
            if by_expired_key {
                let forgery = Outcome::Verify(VerifyErrorKind::SignatureMismatch).to_response();
                assert_eq!(outcome.to_response().body(), forgery.body());
            }
            continue;
        }
        if sign_type {
            assert_eq!(outcome.as_str(), "unsupported_sign_type");
            continue;
        }
        assert!(outcome.is_verified(), "{outcome:?}");
        match &envelope {
            Err(error) => assert_eq!(outcome, Outcome::InvalidEnvelope(*error)),
            Ok(raw) => {
                assert!(
                    !matches!(outcome, Outcome::InvalidEnvelope(_)),
                    "{outcome:?}"
                );
                // An id that does not print as itself is refused, and only
                // such an id or one too long to store.
                if has_invisible(raw.id()) {
                    assert_eq!(outcome, Outcome::InvalidEventId, "{:?}", raw.id());
                } else if outcome == Outcome::InvalidEventId {
                    assert!(raw.id().len() > 1000, "{:?}", raw.id());
                }
                let known = EventType::ALL.contains(raw.event_type());
                if !known && outcome != Outcome::InvalidEventId {
                    assert!(
                        matches!(outcome, Outcome::Unhandled | Outcome::Duplicate),
                        "{outcome:?}"
                    );
                }
                // Once handled, a delivery of the same event is a duplicate.
                if before.get(raw.id()).is_some_and(|r| r.1 == 1) {
                    assert_eq!(outcome, Outcome::Duplicate);
                }
            }
        }
    }
}
