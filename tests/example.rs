//! The README's first command: the example receiver, run as a real process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use clink_webhooks::{sign, Timestamp};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const KEY: &str = "whsec_example_test";

/// The example binary `cargo test` built next to this test's own binary.
fn example_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(|deps| deps.parent()).unwrap();
    target.join("examples").join(name)
}

struct Receiver {
    child: Child,
    url: String,
    /// What it printed on stderr before listening.
    banner: Vec<String>,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts the example with its store in memory, whatever the environment holds.
fn start() -> Receiver {
    start_with_store(None)
}

/// Starts the example with only the store variable given (`REDIS_URL` or
/// `DATABASE_URL`), or none.
fn start_with_store(store: Option<(&str, &str)>) -> Receiver {
    let path = example_path("axum_receiver");
    assert!(
        path.exists(),
        "{} was not built; run `cargo test`, which builds examples",
        path.display()
    );
    let mut command = Command::new(path);
    command
        .env("PORT", "0")
        .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((var, url)) = store {
        command.env(var, url);
    }
    let mut child = command.spawn().unwrap();
    let stderr = lines(child.stderr.take().unwrap());
    let stdout = lines(child.stdout.take().unwrap());
    let mut banner = Vec::new();
    let url = loop {
        let line = stderr
            .recv_timeout(Duration::from_secs(30))
            .expect("the receiver announced its address");
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_owned();
        }
        banner.push(line);
    };
    Receiver {
        child,
        url,
        banner,
        stdout,
        stderr,
    }
}

async fn post(url: &str, body: &str, signature: &str, ts: &str) -> u16 {
    let request = http::Request::post(url)
        .header("x-clink-timestamp", ts)
        .header("x-clink-signature", signature)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    Client::builder(TokioExecutor::new())
        .build_http()
        .request(request)
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_example_receiver_accepts_signed_deliveries_and_refuses_tampered_ones() {
    let receiver = start();
    let body = r#"{"id":"evt_example_1","type":"order.succeeded","data":{"orderId":"ord_1"}}"#;
    let ts = Timestamp::now().as_millis().to_string();
    let signature = sign(KEY, &ts, body.as_bytes());

    assert_eq!(post(&receiver.url, body, &signature, &ts).await, 200);
    let line = receiver
        .stdout
        .recv_timeout(Duration::from_secs(10))
        .unwrap();
    assert_eq!(line, "handled order.succeeded evt_example_1");

    let tampered = body.replace("ord_1", "ord_2");
    assert_eq!(post(&receiver.url, &tampered, &signature, &ts).await, 401);
    // A duplicate is acknowledged without a second handler run.
    assert_eq!(post(&receiver.url, body, &signature, &ts).await, 200);

    // Events of families without a schema still print exactly one line each.
    let other = r#"{"id":"evt_example_2","type":"risk_rule.updated","data":{}}"#;
    let other_sig = sign(KEY, &ts, other.as_bytes());
    assert_eq!(post(&receiver.url, other, &other_sig, &ts).await, 200);
    let line = receiver
        .stdout
        .recv_timeout(Duration::from_secs(10))
        .unwrap();
    assert_eq!(line, "handled risk_rule.updated evt_example_2");
}

#[cfg(unix)]
#[test]
fn the_example_receiver_stops_gracefully_on_sigterm() {
    let mut receiver = start();
    let pid = receiver.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (tx, rx) = mpsc::channel();
    let mut child = std::mem::replace(&mut receiver.child, Command::new("true").spawn().unwrap());
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("exited after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // Nothing was handled, so nothing was printed.
    assert!(receiver.stdout.try_recv().is_err());
}

#[tokio::test]
async fn the_example_receiver_notes_a_stale_event_and_still_handles_it() {
    let receiver = start();
    let ts = Timestamp::now().as_millis().to_string();
    let newer = r#"{"id":"evt_new","type":"order.succeeded","created":1736942500000,"data":{"orderId":"ord_s"}}"#;
    let older = r#"{"id":"evt_old","type":"order.created","created":1736942400000,"data":{"orderId":"ord_s"}}"#;
    assert_eq!(
        post(&receiver.url, newer, &sign(KEY, &ts, newer.as_bytes()), &ts).await,
        200
    );
    assert_eq!(
        post(&receiver.url, older, &sign(KEY, &ts, older.as_bytes()), &ts).await,
        200
    );
    assert_eq!(
        receiver
            .stdout
            .recv_timeout(Duration::from_secs(10))
            .unwrap(),
        "handled order.succeeded evt_new"
    );
    assert_eq!(
        receiver
            .stdout
            .recv_timeout(Duration::from_secs(10))
            .unwrap(),
        "handled order.created evt_old"
    );
    let note = loop {
        let line = receiver
            .stderr
            .recv_timeout(Duration::from_secs(10))
            .unwrap();
        if line.starts_with("note:") {
            break line;
        }
    };
    assert!(
        note.contains("evt_old is stale") && note.contains("evt_new"),
        "{note}"
    );
}

/// Two example receivers given the same store URL: an event delivered to
/// both runs its handler once, in the first; the second acknowledges it as a
/// duplicate. A marker event sent to the second afterwards is the next line
/// it prints, so it printed nothing for the shared event.
async fn receivers_sharing_a_store_handle_an_event_once(var: &str, store_name: &str) {
    let url = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run scripts/test, which starts the servers, or export it")
    });
    let receivers = [
        start_with_store(Some((var, &url))),
        start_with_store(Some((var, &url))),
    ];
    for receiver in &receivers {
        let wanted = format!("idempotency store: {store_name}");
        assert!(
            receiver.banner.iter().any(|line| line.starts_with(&wanted)),
            "{:?}",
            receiver.banner
        );
    }

    let run = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let id = format!("evt_shared_{run}");
    let body = format!(r#"{{"id":"{id}","type":"order.succeeded","data":{{"orderId":"ord_1"}}}}"#);
    let ts = Timestamp::now().as_millis().to_string();
    let signature = sign(KEY, &ts, body.as_bytes());
    for receiver in &receivers {
        assert_eq!(post(&receiver.url, &body, &signature, &ts).await, 200);
    }
    let first = receivers[0]
        .stdout
        .recv_timeout(Duration::from_secs(10))
        .unwrap();
    assert_eq!(first, format!("handled order.succeeded {id}"));

    let marker = format!(r#"{{"id":"evt_marker_{run}","type":"risk_rule.updated","data":{{}}}}"#);
    let marker_sig = sign(KEY, &ts, marker.as_bytes());
    assert_eq!(
        post(&receivers[1].url, &marker, &marker_sig, &ts).await,
        200
    );
    let next = receivers[1]
        .stdout
        .recv_timeout(Duration::from_secs(10))
        .unwrap();
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

#[tokio::test]
async fn the_example_receiver_says_its_store_is_in_memory_by_default() {
    let receiver = start();
    assert!(
        receiver
            .banner
            .iter()
            .any(|line| line.starts_with("idempotency store: in memory")),
        "{:?}",
        receiver.banner
    );
}
