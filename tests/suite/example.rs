//! The README's first command: the example receiver, run as a real process.

use clink_webhooks::testing::SignedRequest;

use crate::support::loopback::client;
use crate::support::process::{example_receiver, example_receiver_with_store, Process};

const KEY: &str = "whsec_example_test";

struct Receiver {
    process: Process,
    url: String,
}

fn start() -> Receiver {
    let (process, url) = example_receiver(KEY);
    Receiver { process, url }
}

/// A delivery of `body` to the receiver at `url`, signed with [`KEY`].
fn delivery(url: &str, body: &str) -> SignedRequest {
    SignedRequest::new(KEY, body.to_owned()).uri(url)
}

/// Sends `delivery`, signed now, and returns the status.
async fn post(delivery: &SignedRequest) -> u16 {
    client()
        .request(delivery.build())
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_example_receiver_accepts_signed_deliveries_and_refuses_tampered_ones() {
    let receiver = start();
    let body = r#"{"id":"evt_example_1","type":"order.succeeded","data":{"orderId":"ord_1"}}"#;
    let succeeded = delivery(&receiver.url, body);

    assert_eq!(post(&succeeded).await, 200);
    let line = receiver.process.next_stdout();
    assert_eq!(line, "handled order.succeeded evt_example_1");

    assert_eq!(post(&succeeded.clone().tamper()).await, 401);
    // A duplicate is acknowledged without a second handler run.
    assert_eq!(post(&succeeded).await, 200);

    // Events of families without a schema still print exactly one line each.
    let other = r#"{"id":"evt_example_2","type":"risk_rule.updated","data":{}}"#;
    assert_eq!(post(&delivery(&receiver.url, other)).await, 200);
    let line = receiver.process.next_stdout();
    assert_eq!(line, "handled risk_rule.updated evt_example_2");
}

#[cfg(unix)]
#[test]
fn the_example_receiver_stops_gracefully_on_sigterm() {
    let finished = start().process.terminate();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    // Nothing was handled, so nothing was printed.
    assert_eq!(finished.stdout, "");
}

#[tokio::test]
async fn the_example_receiver_notes_a_stale_event_and_still_handles_it() {
    let receiver = start();
    let newer = r#"{"id":"evt_new","type":"order.succeeded","created":1736942500000,"data":{"orderId":"ord_s"}}"#;
    let older = r#"{"id":"evt_old","type":"order.created","created":1736942400000,"data":{"orderId":"ord_s"}}"#;
    assert_eq!(post(&delivery(&receiver.url, newer)).await, 200);
    assert_eq!(post(&delivery(&receiver.url, older)).await, 200);
    assert_eq!(
        receiver.process.next_stdout(),
        "handled order.succeeded evt_new"
    );
    assert_eq!(
        receiver.process.next_stdout(),
        "handled order.created evt_old"
    );
    let note = Process::line_starting(&receiver.process.stderr, "note:");
    assert!(
        note.contains("evt_old is stale") && note.contains("evt_new"),
        "{note}"
    );
}

/// Two example receivers given the same store URL: an event delivered to
/// both runs its handler once, in the first; the second acknowledges it as a
/// duplicate. A marker event sent to the second afterwards is the next line
/// it prints, so it printed nothing for the shared event.
#[cfg(any(feature = "redis", feature = "postgres"))]
async fn receivers_sharing_a_store_handle_an_event_once(var: &str, store_name: &str) {
    let _servers = crate::support::servers::shared().await;
    let url = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run scripts/test, which starts the servers, or export it")
    });
    let mut receivers = Vec::new();
    for _ in 0..2 {
        let (process, url, store) = example_receiver_with_store(KEY, Some((var, &url)));
        let wanted = format!("idempotency store: {store_name}");
        assert!(store.starts_with(&wanted), "{store}");
        receivers.push(Receiver { process, url });
    }

    let run = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let id = format!("evt_shared_{run}");
    let body = format!(r#"{{"id":"{id}","type":"order.succeeded","data":{{"orderId":"ord_1"}}}}"#);
    for receiver in &receivers {
        assert_eq!(post(&delivery(&receiver.url, &body)).await, 200);
    }
    let first = receivers[0].process.next_stdout();
    assert_eq!(first, format!("handled order.succeeded {id}"));

    let marker = format!(r#"{{"id":"evt_marker_{run}","type":"risk_rule.updated","data":{{}}}}"#);
    assert_eq!(post(&delivery(&receivers[1].url, &marker)).await, 200);
    let next = receivers[1].process.next_stdout();
    assert_eq!(next, format!("handled risk_rule.updated evt_marker_{run}"));
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn example_receivers_sharing_redis_handle_an_event_once() {
    receivers_sharing_a_store_handle_an_event_once("REDIS_URL", "Redis").await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn example_receivers_sharing_postgres_handle_an_event_once() {
    receivers_sharing_a_store_handle_an_event_once("DATABASE_URL", "PostgreSQL").await;
}

#[test]
fn the_example_receiver_keeps_its_store_in_memory_by_default() {
    let (_process, _url, store) = example_receiver_with_store(KEY, None);
    assert!(store.starts_with("idempotency store: in memory"), "{store}");
}
