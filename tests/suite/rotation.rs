//! Key rotation as an operator watches it: the metrics, the verified event
//! and the inbox name the key that matched, the same name before and after
//! the rotation, so the old key can be retired once its count stops moving.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use clink_webhooks::store::{Inbox, InboxFilter, MemoryInbox};
use clink_webhooks::testing::SignedRequest;
use clink_webhooks::{
    ClinkLayer, EventRouter, Layer, Outcome, SigningKey, VerifiedEvent, Verifier,
};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::ServiceExt;

const NEW: &str = "whsec_rotation_new";
const OLD: &str = "whsec_rotation_old";

fn rotating() -> Verifier {
    let day = SystemTime::now() + Duration::from_secs(86_400);
    Verifier::from_key(&SigningKey::new(NEW).unwrap().named("current").unwrap()).add_key(
        SigningKey::new(OLD)
            .unwrap()
            .named("previous")
            .unwrap()
            .expires_at(day),
    )
}

fn body(id: &str) -> String {
    format!(r#"{{"id":"{id}","type":"order.succeeded","data":{{"orderId":"ord_{id}"}}}}"#)
}

/// The `clink_webhook_key_matches_total` samples of a scrape, by `key`.
fn key_matches(scrape: &str) -> Vec<(String, f64)> {
    let mut found: Vec<(String, f64)> = scrape
        .lines()
        .filter(|line| line.starts_with("clink_webhook_key_matches_total{"))
        .filter_map(|line| {
            let key = line.split("key=\"").nth(1)?.split('"').next()?.to_owned();
            let value = line.rsplit_once(' ')?.1.parse().ok()?;
            Some((key, value))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[test]
fn metrics_and_the_verified_event_name_the_key_that_matched() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let scrape = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A recorder of this thread's own: the runtime polls everything here.
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let service = ClinkLayer::new(rotating()).layer(EventRouter::new());
            let mut names = Vec::new();
            for (id, secret) in [
                ("evt_1", OLD),
                ("evt_2", NEW),
                ("evt_3", OLD),
                ("evt_4", NEW),
            ] {
                let request = SignedRequest::new(secret, body(id)).build::<Full<Bytes>>();
                let response = service.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), 200, "{id}");
                let verified = response.extensions().get::<VerifiedEvent>().unwrap();
                names.push(verified.key_name().to_owned());
            }
            assert_eq!(names, ["previous", "current", "previous", "current"]);
            // A forgery matches no key and is counted under none.
            let forged = SignedRequest::new("whsec_forged", body("evt_5")).build::<Full<Bytes>>();
            let response = service.clone().oneshot(forged).await.unwrap();
            assert_eq!(response.status(), 401);
        });
    });
    assert_eq!(
        key_matches(&scrape.render()),
        [("current".to_owned(), 2.0), ("previous".to_owned(), 2.0)]
    );
}

#[test]
fn an_unnamed_key_is_counted_under_its_fingerprint_never_its_secret() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let scrape = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let service = ClinkLayer::new(Verifier::new(NEW).unwrap()).layer(EventRouter::new());
            let request = SignedRequest::new(NEW, body("evt_1")).build::<Full<Bytes>>();
            assert_eq!(service.oneshot(request).await.unwrap().status(), 200);
        });
    });
    let text = scrape.render();
    let fingerprint = SigningKey::new(NEW).unwrap().name().to_owned();
    assert_eq!(key_matches(&text), [(fingerprint, 1.0)]);
    assert!(!text.contains(NEW), "{text}");
}

#[tokio::test]
async fn the_inbox_keeps_the_name_of_the_key_that_matched() {
    let inbox = Arc::new(MemoryInbox::new());
    let intake = ClinkLayer::new(rotating()).intake(Arc::clone(&inbox));
    for (id, secret) in [("evt_old", OLD), ("evt_new", NEW)] {
        let request = SignedRequest::new(secret, body(id)).build::<Full<Bytes>>();
        let response = intake.clone().oneshot(request).await.unwrap();
        assert_eq!(Outcome::of(&response), Some(&Outcome::Queued), "{id}");
        let verified = response.extensions().get::<VerifiedEvent>().unwrap();
        assert_eq!(verified.event().id(), id);
    }
    let kept: Vec<_> = inbox
        .list(&InboxFilter::default(), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| (entry.event.event_id, entry.event.signing_key))
        .collect();
    assert_eq!(
        kept,
        [
            ("evt_old".to_owned(), Some("previous".to_owned())),
            ("evt_new".to_owned(), Some("current".to_owned()))
        ]
    );
}

/// An inbox file made before the inbox kept the key gains the column when
/// opened, and its rows read with no key.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn an_older_sqlite_inbox_gains_the_key_column_and_keeps_its_rows() {
    use clink_webhooks::store::SqliteInbox;

    let dir = std::env::temp_dir().join(format!(
        "clink-rotation-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inbox.db");
    {
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE clink_webhook_inbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL,
                event_id TEXT NOT NULL, event_type TEXT NOT NULL, created_ms INTEGER,
                order_ms INTEGER NOT NULL, object_key TEXT, signed_at_ms INTEGER NOT NULL,
                received_at_ms INTEGER NOT NULL, body BLOB NOT NULL,
                status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_ms INTEGER NOT NULL, lease_until_ms INTEGER NOT NULL DEFAULT 0,
                token TEXT, last_error TEXT, UNIQUE (account, event_id));
             INSERT INTO clink_webhook_inbox (account, event_id, event_type, order_ms,
                 signed_at_ms, received_at_ms, body, next_attempt_ms)
             VALUES ('', 'evt_before', 'order.succeeded', 1, 1, 1, X'7B7D', 1);",
        )
        .unwrap();
    }
    let inbox = Arc::new(SqliteInbox::open(&path).unwrap());
    let intake = ClinkLayer::new(rotating()).intake(Arc::clone(&inbox));
    let request = SignedRequest::new(NEW, body("evt_after")).build::<Full<Bytes>>();
    assert_eq!(intake.oneshot(request).await.unwrap().status(), 200);
    let kept: Vec<_> = inbox
        .list(&InboxFilter::default(), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| (entry.event.event_id, entry.event.signing_key))
        .collect();
    assert_eq!(
        kept,
        [
            ("evt_before".to_owned(), None),
            ("evt_after".to_owned(), Some("current".to_owned()))
        ]
    );
    drop(inbox);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A delivery signed with a key past its expiry is refused `401` with the
/// very answer a forgery gets, while the operator sees `expired_key`: in the
/// outcome, the metrics and the refusal summary. Before, it looked exactly
/// like a forgery to both.
#[test]
fn a_signature_by_an_expired_key_is_reported_as_such_and_answered_as_a_forgery() {
    use crate::support::capture::capture;
    use http_body_util::BodyExt;

    let (captured, _guard) = capture();
    let recorder = PrometheusBuilder::new().build_recorder();
    let scrape = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let retired = Verifier::from_key(&SigningKey::new(NEW).unwrap().named("current").unwrap())
        .add_key(
            SigningKey::new(OLD)
                .unwrap()
                .named("previous")
                .unwrap()
                .expires_at(SystemTime::now() - Duration::from_secs(60)),
        );
    let (expired, forged) = metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let service = ClinkLayer::new(retired).layer(EventRouter::new());
            let mut answers = Vec::new();
            for secret in [OLD, "whsec_forged"] {
                let request = SignedRequest::new(secret, body("evt_old")).build::<Full<Bytes>>();
                let response = service.clone().oneshot(request).await.unwrap();
                let outcome = Outcome::of(&response).unwrap().clone();
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                answers.push((outcome, status, headers, body));
            }
            (answers.remove(0), answers.remove(0))
        })
    });
    assert_eq!(expired.0.as_str(), "expired_key");
    assert_eq!(forged.0.as_str(), "signature_mismatch");
    // The sender learns nothing more than from a forgery.
    assert_eq!(expired.1, 401);
    assert_eq!(
        (expired.1, &expired.2, &expired.3),
        (forged.1, &forged.2, &forged.3)
    );
    let text = scrape.render();
    assert!(
        text.lines()
            .any(|line| line.starts_with("clink_webhook_deliveries_total")
                && line.contains(r#"outcome="expired_key""#)
                && line.ends_with(" 1")),
        "{text}"
    );
    // No key matched: none is counted as used.
    assert!(key_matches(&text).is_empty(), "{text}");
    let logs = captured.text();
    assert!(
        logs.lines()
            .any(|line| line.contains("refused before verification")
                && line.contains("expired_key=1")),
        "{logs}"
    );
}
