//! The example receiver against a sender without the key: bounded memory,
//! slow and idle clients cut off, accept failures survived, a bounded
//! shutdown, ids that cannot forge a line, and quiet logs.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::process::{example_path, Process, PATIENCE};
use bytes::Bytes;
use clink_webhooks::testing::{fresh_fixture, SignedRequest};
use clink_webhooks::EventType;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "whsec_hostile_test";

/// How long the example's server (`Server`'s defaults) lets a connection
/// take over its request headers, or stay idle between requests.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the example's server lets deliveries in progress finish once
/// told to stop (`Server`'s default).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The example receiver, started through `sh` so that `limits` (shell
/// `ulimit` options) apply to it; its process, URL and address.
fn receiver(limits: &str) -> (Process, String, String) {
    let script = format!("{limits} exec \"$0\"");
    let mut command = Command::new("sh");
    command
        .args(["-c", &script])
        .arg(example_path("axum_receiver"))
        .env("PORT", "0")
        .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG");
    let process = Process::start(&mut command);
    let line = Process::line_starting(&process.stderr, "listening on ");
    let url = line["listening on ".len()..].to_owned();
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    (process, url, addr)
}

async fn deliver(url: &str, body: String) -> u16 {
    let request = SignedRequest::new(KEY, body)
        .uri(url)
        .build::<Full<Bytes>>();
    Client::builder(TokioExecutor::new())
        .build_http()
        .request(request)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn get(url: &str) -> String {
    let request = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = Client::builder(TokioExecutor::new())
        .build_http()
        .request(request)
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// The value of the sample `name{labels...}` in a Prometheus scrape.
fn sample(scrape: &str, name: &str, label: &str) -> f64 {
    scrape
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Waits, within `limit`, until `done` holds; fails the test otherwise.
/// `limit` only bounds a hang: the tests pass [`PATIENCE`].
async fn within<F, Fut>(limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn held_bodies_without_the_key_stay_within_the_memory_budget() {
    const CONNECTIONS: usize = 200;
    const BODY: usize = 1024 * 1024 - 1;
    const BUDGET_MIB: u64 = 64;
    // Room for the runtime, hyper's buffers and the metrics recorder.
    const MARGIN_MIB: u64 = 48;
    let (receiver, url, addr) = receiver("");
    let base = url.strip_suffix("/webhooks/clink").unwrap().to_owned();
    let before = resident_kib(receiver.id());

    let chunk = vec![b'x'; 64 * 1024];
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /webhooks/clink HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {BODY}\r\n\
             x-clink-timestamp: {}\r\nx-clink-signature: {}\r\n\r\n",
            clink_webhooks::Timestamp::now().as_millis(),
            "0".repeat(64)
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // All but the last byte: the signature is never checked, the body held.
        let mut left = BODY - 1;
        while left > 0 {
            let n = left.min(chunk.len());
            if stream.write_all(&chunk[..n]).await.is_err() {
                break; // refused with 503 and closed: fine
            }
            left -= n;
        }
        held.push(stream);
    }
    // At most BUDGET_MIB bodies of 1 MiB fit: every other one must be
    // refused for the budget once the receiver has read what it was sent.
    let must_refuse = CONNECTIONS as f64 - BUDGET_MIB as f64;
    within(PATIENCE, "the bodies past the budget refused", || {
        let base = base.clone();
        async move {
            let scrape = get(&format!("{base}/metrics")).await;
            sample(
                &scrape,
                "clink_webhook_deliveries_total",
                r#"outcome="overloaded""#,
            ) >= must_refuse
        }
    })
    .await;
    let grown_mib = resident_kib(receiver.id()).saturating_sub(before) / 1024;
    eprintln!("resident memory grew {grown_mib} MiB");
    assert!(
        grown_mib <= BUDGET_MIB + MARGIN_MIB,
        "memory grew {grown_mib} MiB holding {CONNECTIONS} unverified bodies"
    );

    // The senders give up; a good delivery is handled.
    drop(held);
    let body = fresh_fixture(&EventType::OrderSucceeded);
    within(PATIENCE, "a good delivery handled", || {
        let (url, body) = (url.clone(), body.clone());
        async move { deliver(&url, body).await == 200 }
    })
    .await;
    assert!(receiver
        .next_stdout()
        .starts_with("handled order.succeeded "));
}

/// Reads until the server closes the connection; how long after `opened`
/// that was. Fails once `give_up` has passed since `opened`.
async fn time_until_closed(stream: &mut TcpStream, opened: Instant, give_up: Duration) -> Duration {
    let mut buf = [0u8; 1024];
    loop {
        let left = give_up.saturating_sub(opened.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return opened.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection was still open {give_up:?} after it was opened"),
        }
    }
}

/// Each connection is closed once the header read timeout has passed, not
/// before (counted from before the connection opened, so the server's clock
/// started later), and long before twice that: a bound generous enough for
/// a busy machine, where only the close itself is late, never the timer.
#[tokio::test]
async fn slow_and_idle_connections_are_closed_on_time() {
    let (_receiver, _url, addr) = receiver("");
    let opened = Instant::now();
    let give_up = 2 * HEADER_READ_TIMEOUT;
    // Headers that never end, one byte at a time.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /webhooks/clink HTTP/1.1\r\nx-a")
        .await
        .unwrap();
    // A keep-alive connection that goes quiet after one request.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(format!("GET /health HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (slow_closed, idle_closed) = tokio::join!(
        time_until_closed(&mut slow, opened, give_up),
        time_until_closed(&mut idle, opened, give_up)
    );
    for closed in [slow_closed, idle_closed] {
        assert!(closed >= HEADER_READ_TIMEOUT, "closed after {closed:?}");
        assert!(closed < give_up, "closed after {closed:?}");
    }
}

#[tokio::test]
async fn running_out_of_file_descriptors_does_not_stop_the_server() {
    let (receiver, url, addr) = receiver("ulimit -n 64;");
    // Far more connections than the receiver has descriptors for.
    let mut storm = Vec::new();
    for _ in 0..200 {
        if let Ok(stream) = TcpStream::connect(&addr).await {
            storm.push(stream);
        }
    }
    drop(storm);
    let body = fresh_fixture(&EventType::OrderSucceeded);
    within(PATIENCE, "serving again after the storm", || {
        let (url, body) = (url.clone(), body.clone());
        async move { deliver(&url, body).await == 200 }
    })
    .await;
    assert!(receiver
        .next_stdout()
        .starts_with("handled order.succeeded "));
    let finished = receiver.terminate();
    assert_eq!(finished.code, Some(0), "{finished:?}");
}

#[tokio::test]
async fn sigterm_with_slow_clients_exits_within_the_shutdown_timeout() {
    let (receiver, _url, addr) = receiver("");
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /webhooks/clink HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 1000\r\n\
             x-clink-timestamp: {}\r\nx-clink-signature: {}\r\n\r\nhalf",
            clink_webhooks::Timestamp::now().as_millis(),
            "0".repeat(64)
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    // Let the receiver take all five before it is told to stop.
    let base = format!("http://{addr}");
    within(PATIENCE, "five deliveries in flight", || {
        let base = base.clone();
        async move {
            let scrape = get(&format!("{base}/metrics")).await;
            sample(&scrape, "clink_webhook_deliveries_in_flight", "") >= 5.0
        }
    })
    .await;
    let started = Instant::now();
    let finished = tokio::task::spawn_blocking(move || receiver.terminate())
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    // The five bodies never end: the server waits out its shutdown timeout
    // for them, and no longer. Without it they would hold it until their
    // body timeout (30 s), well past the generous upper bound.
    assert!(took >= SHUTDOWN_TIMEOUT, "exit took {took:?}");
    assert!(took < 2 * SHUTDOWN_TIMEOUT, "exit took {took:?}");
    drop(slow);
}

#[tokio::test]
async fn an_event_id_cannot_forge_a_line_and_refusals_stay_quiet() {
    let (receiver, url, _addr) = receiver("");
    let forged =
        r#"{"id":"evt_1\nhandled order.succeeded evt_forged","type":"order.succeeded","data":{}}"#;
    assert_eq!(deliver(&url, forged.to_owned()).await, 400);
    // An unknown type with a line break and a terminal escape is handled,
    // and printed escaped on one line.
    let odd_type = r#"{"id":"evt_odd","type":"order.x\n\u001b[31mhandled","data":{}}"#;
    assert_eq!(deliver(&url, odd_type.to_owned()).await, 200);
    assert_eq!(
        receiver.next_stdout(),
        r#"handled "order.x\n\u{1b}[31mhandled" evt_odd"#
    );

    // A thousand unsigned requests: at most a summary line or two.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for _ in 0..1000 {
        let request = http::Request::post(&url)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        assert_eq!(client.request(request).await.unwrap().status(), 400);
    }
    let finished = receiver.terminate();
    assert!(!finished.stdout.contains("evt_forged"), "{finished:?}");
    let refusal_lines = finished
        .stderr
        .lines()
        .filter(|line| line.contains("refused"))
        .count();
    assert!(refusal_lines <= 2, "{}", finished.stderr);
    assert!(
        !finished.stderr.contains('\u{1b}'),
        "colour on a pipe: {}",
        finished.stderr
    );
}
