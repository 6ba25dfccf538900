//! The example receiver against a sender without the key: bounded memory,
//! slow and idle clients cut off, accept failures survived, a bounded
//! shutdown, ids that cannot forge a line, and quiet logs.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::process::{admin_url, example_path, Process, PATIENCE};
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
/// told to stop (the example's `STOP_WITHIN`).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);

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

/// The process's peak resident memory so far (`VmHWM`), in KiB: a peak
/// between two looks is seen, however short.
fn peak_resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A head that never ends: the request line, then header lines of 1 KiB up
/// to about `bytes`, and no blank line.
fn endless_head(addr: &str, bytes: usize) -> Vec<u8> {
    let mut head = format!("POST /webhooks/clink HTTP/1.1\r\nhost: {addr}\r\n").into_bytes();
    let mut n = 0;
    while head.len() < bytes {
        head.extend_from_slice(format!("x-pad-{n}: {}\r\n", "a".repeat(1000)).as_bytes());
        n += 1;
    }
    head
}

/// Reads what the server answers on `stream` until it closes it (or resets
/// it); the answer so far.
async fn answer_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("the connection was still open after {PATIENCE:?}"));
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether the process listening on `port` has read everything sent to
/// it: no connection to that port on this machine has bytes waiting in
/// its receive queue (`/proc/net/tcp`, IPv4).
fn all_read(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).all(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields[1]
            .rsplit(':')
            .next()
            .and_then(|hex| u16::from_str_radix(hex, 16).ok());
        let waiting = fields[4]
            .rsplit(':')
            .next()
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .unwrap_or(0);
        local_port != Some(port) || waiting == 0
    })
}

/// `server`'s documented margin: what connections hold beyond the body
/// budget, in MiB.
const MARGIN_MIB: u64 = 24;

/// The example receiver, with what a memory test needs of it.
struct Measured {
    receiver: Process,
    url: String,
    addr: String,
    /// Its admin listener's URL.
    base: String,
    port: u16,
    /// Its resident memory, in KiB, once a delivery was handled and its
    /// metrics scraped: what the first requests allocate once (the metrics
    /// recorder's keys, the runtime's buffers) is in it.
    before: u64,
}

/// The example receiver started and measured (see [`Measured`]); the
/// handled line of its first delivery read.
async fn measured() -> Measured {
    let (receiver, url, addr) = receiver("");
    let base = admin_url(&receiver);
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let body = fresh_fixture(&EventType::OrderSucceeded);
    assert_eq!(deliver(&url, body).await, 200);
    assert!(receiver
        .next_stdout()
        .starts_with("handled order.succeeded "));
    let _ = get(&format!("{base}/metrics")).await;
    let before = resident_kib(receiver.id());
    Measured {
        receiver,
        url,
        addr,
        base,
        port,
        before,
    }
}

/// The head of a delivery to `addr` declaring a body of `length` bytes,
/// stamped now, with a signature nobody made.
fn forged_head(addr: &str, length: usize) -> String {
    format!(
        "POST /webhooks/clink HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {length}\r\n\
         x-clink-timestamp: {}\r\nx-clink-signature: {}\r\n\r\n",
        clink_webhooks::Timestamp::now().as_millis(),
        "0".repeat(64)
    )
}

/// 400 connections send unverified bodies of 1 MiB, stalled one byte short
/// with a signature nobody made, 400 more send 15 KiB of headers and stall
/// (half of them after the head, in a chunked body),
/// and 400 more 390 KB of headers that never end: the receiver's resident
/// memory peaks within its body budget (64 MiB) plus the server's
/// documented margin (24 MiB). Measured as the peak (`VmHWM`) once the
/// receiver has read all it was sent, so that a short one between two
/// looks counts. Without the header limit, hyper held each long head whole
/// until the header timeout (156 MiB); without the bound on its read
/// buffer, up to 400 KB of body per connection on top of the budget; with
/// a first hold of 64 KiB per body, up to 20 MiB of freed first holds left
/// resident between the blocks of open connections (96 to 117 MiB, about
/// one run in two).
#[tokio::test]
async fn held_headers_and_bodies_without_the_key_stay_within_the_budget_plus_the_margin() {
    const CONNECTIONS: usize = 400;
    const BODY: usize = 1024 * 1024 - 1;
    const STALLED_HEAD: usize = 15 * 1024;
    const LONG_HEAD: usize = 390 * 1000;
    const BUDGET_MIB: u64 = 64;
    let Measured {
        receiver,
        url,
        addr,
        base,
        port,
        before,
    } = measured().await;

    let chunk = vec![b'x'; 64 * 1024];
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = forged_head(&addr, BODY);
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

    // Heads that stall just under the limit, held until the header timeout
    // (or closed for a newer connection once a second idle); and complete
    // heads as long, with
    // the first byte of a chunked body after them: hyper keeps such a head
    // while its body is read, and reads the body into a buffer of its own.
    let stalled = endless_head(&addr, STALLED_HEAD);
    let mut with_body = endless_head(&addr, STALLED_HEAD - 1024);
    with_body.extend_from_slice(
        format!(
            "x-clink-timestamp: {}\r\nx-clink-signature: {}\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n",
            clink_webhooks::Timestamp::now().as_millis(),
            "0".repeat(64)
        )
        .as_bytes(),
    );
    let mut heads = Vec::new();
    for n in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = if n % 2 == 0 { &stalled } else { &with_body };
        stream.write_all(head).await.unwrap();
        heads.push(stream);
    }
    within(PATIENCE, "the bodies and the stalled heads read", || {
        std::future::ready(all_read(port))
    })
    .await;
    // And heads far over it, while all the rest is held: each one is
    // answered 431 and closed (without the limit, only the header timeout
    // closed them, unanswered).
    let long = endless_head(&addr, LONG_HEAD);
    let mut too_large = 0;
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        // The server may answer 431 and close before it has all of it.
        let _ = stream.write_all(&long).await;
        if answer_until_closed(&mut stream)
            .await
            .starts_with("HTTP/1.1 431")
        {
            too_large += 1;
        }
    }
    let peak_mib = peak_resident_kib(receiver.id()).saturating_sub(before) / 1024;
    eprintln!(
        "resident memory peaked {peak_mib} MiB above the baseline; {too_large} long heads answered 431"
    );
    assert!(
        peak_mib <= BUDGET_MIB + MARGIN_MIB,
        "memory peaked {peak_mib} MiB above the baseline holding {CONNECTIONS} unverified bodies, \
         {CONNECTIONS} stalled heads and {CONNECTIONS} endless ones"
    );
    assert!(too_large > 0, "no long head was answered 431");

    // The senders give up; a good delivery is handled.
    drop(held);
    drop(heads);
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

/// 200 connections without the key each declare a body of a megabyte and
/// send 48 KiB of it, then stall: together they hold about a seventh of
/// the body budget (what they sent), nothing is refused for the budget, a
/// good delivery is handled, and the receiver's resident memory grows by
/// what they sent and the server's margin, not by what they declared. When
/// a body was held at its declared length once it passed its first hold,
/// 64 of them filled the budget (64 MiB): the other 136 were refused
/// `503`, and so was every real delivery until the body timeout.
#[tokio::test]
async fn bodies_without_the_key_hold_what_they_sent_not_what_they_declared() {
    const CONNECTIONS: usize = 200;
    const DECLARED: usize = 1024 * 1024 - 1;
    const SENT: usize = 48 * 1024;
    let Measured {
        receiver,
        url,
        addr,
        base,
        port,
        before,
    } = measured().await;

    let sent = vec![b'x'; SENT];
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = forged_head(&addr, DECLARED);
        stream.write_all(head.as_bytes()).await.unwrap();
        // Refused and closed before all of it is sent: counted below.
        let _ = stream.write_all(&sent).await;
        held.push(stream);
    }
    within(PATIENCE, "the stalled bodies read", || {
        std::future::ready(all_read(port))
    })
    .await;

    let body = fresh_fixture(&EventType::OrderSucceeded);
    assert_eq!(
        deliver(&url, body).await,
        200,
        "a good delivery beside them"
    );
    assert!(receiver
        .next_stdout()
        .starts_with("handled order.succeeded "));
    let scrape = get(&format!("{base}/metrics")).await;
    assert_eq!(
        sample(
            &scrape,
            "clink_webhook_deliveries_total",
            r#"outcome="overloaded""#
        ),
        0.0,
        "stalled bodies refused for the budget"
    );
    let sent_mib = (CONNECTIONS * SENT).div_ceil(1024 * 1024) as u64;
    let peak_mib = peak_resident_kib(receiver.id()).saturating_sub(before) / 1024;
    eprintln!("resident memory peaked {peak_mib} MiB above the baseline");
    assert!(
        peak_mib <= sent_mib + MARGIN_MIB,
        "memory peaked {peak_mib} MiB above the baseline for {sent_mib} MiB of bodies sent"
    );
    drop(held);
}

/// A head over 16 KiB is answered `431` and its connection closed; one
/// under it is served.
#[tokio::test]
async fn a_head_over_16_kib_is_answered_431() {
    let (_receiver, _url, addr) = receiver("");
    let mut head = endless_head(&addr, 17 * 1024);
    head.extend_from_slice(b"\r\n");
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let _ = stream.write_all(&head).await;
    let answer = answer_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    // 15 KiB of headers is a request like any other: answered (404, as
    // every path but the webhook's is at this address), not refused.
    let mut request =
        format!("GET /health HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n").into_bytes();
    for n in 0..15 {
        request.extend_from_slice(format!("x-pad-{n}: {}\r\n", "a".repeat(1000)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let answer = answer_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:?}");
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

/// Idle connections held open past what the process may have open: with
/// the limit set before it starts, the server serves fewer connections
/// than asked, says so, and never runs out of files; a delivery behind the
/// storm is served as a full server serves one.
#[tokio::test]
async fn a_storm_held_open_past_the_file_limit_keeps_no_delivery_out() {
    let (receiver, url, addr) = receiver("ulimit -n 64;");
    let mut storm = Vec::new();
    for _ in 0..200 {
        if let Ok(stream) = TcpStream::connect(&addr).await {
            storm.push(stream);
        }
    }
    let body = fresh_fixture(&EventType::OrderSucceeded);
    assert_eq!(deliver(&url, body).await, 200);
    drop(storm);
    let finished = receiver.terminate();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(
        finished.stderr.contains("serving fewer connections"),
        "{finished:?}"
    );
    assert!(!finished.stderr.contains("accept failed"), "{finished:?}");
}

/// The file limit lowered under a running server, below what it serves:
/// `accept` fails for want of a file, and the server closes idle
/// connections for the clients waiting, as it does when every slot is
/// taken, rather than leave them to the header timeout; the failures are
/// told once, not every pause.
#[tokio::test]
async fn out_of_files_under_a_storm_an_idle_connection_is_closed_for_a_delivery() {
    let (receiver, url, addr) = receiver("");
    // A delivery answered first: the server is serving, and has read the
    // file limit it starts with (once, as it starts), before it is lowered.
    // Lowered before that, it is the limit the server starts with, and the
    // server serves within it (as the test before this one checks).
    let first = fresh_fixture(&EventType::OrderSucceeded);
    assert_eq!(deliver(&url, first).await, 200);
    let lowered = Command::new("prlimit")
        .arg(format!("--pid={}", receiver.id()))
        .arg("--nofile=64:64")
        .status()
        .expect("prlimit (util-linux) is installed");
    assert!(lowered.success());
    let started = Instant::now();
    let mut storm = Vec::new();
    for _ in 0..100 {
        if let Ok(stream) = TcpStream::connect(&addr).await {
            storm.push(stream);
        }
    }
    let body = fresh_fixture(&EventType::OrderSucceeded);
    assert_eq!(deliver(&url, body).await, 200);
    // The storm's connections close by themselves only at the header
    // timeout, counted from their accept: a delivery served before it was
    // served on a file freed for it.
    let took = started.elapsed();
    assert!(took < HEADER_READ_TIMEOUT, "served after {took:?}");
    drop(storm);
    let finished = receiver.terminate();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let told = finished
        .stderr
        .lines()
        .filter(|line| line.contains("accept failed"))
        .count();
    assert_eq!(told, 1, "{finished:?}");
}

/// A stdout nobody reads (a log driver that stalls): once the pipe is
/// full, a handler that wrote to it would block, and with it every handler
/// and the receiver's stop. The example's lines go through a queue of
/// their own: deliveries are answered, lines past the queue dropped and
/// counted, and SIGTERM stops it.
#[tokio::test]
async fn a_stdout_nobody_reads_holds_up_no_delivery_and_no_stop() {
    use std::os::unix::fs::OpenOptionsExt as _;

    let dir = std::env::temp_dir().join(format!(
        "clink-stdout-{}-{}",
        std::process::id(),
        clink_webhooks::Timestamp::now().as_millis()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("stdout");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Open for reading (without waiting for a writer), and never read.
    const O_NONBLOCK: i32 = 0o4000;
    let _unread = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let (receiver, url, _addr) = receiver(&format!("exec >'{}';", fifo.display()));
    // More lines than the pipe (64 KiB, some 1,500 lines) and the queue
    // (4,096) hold together.
    for n in 0..6_000 {
        let body = fresh_fixture(&EventType::OrderSucceeded);
        let status = tokio::time::timeout(PATIENCE, deliver(&url, body))
            .await
            .unwrap_or_else(|_| panic!("delivery {n} was not answered"));
        assert_eq!(status, 200, "delivery {n}");
    }
    let finished = tokio::task::spawn_blocking(move || receiver.terminate())
        .await
        .unwrap();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(
        finished.stderr.contains("lines for stdout were dropped"),
        "{finished:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
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
    let base = admin_url(&receiver);
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

/// The first line on `stream` holding `text`, skipping others; fails the
/// test if none has come by `deadline`.
fn line_containing(
    stream: &std::sync::mpsc::Receiver<String>, text: &str, deadline: Instant,
) -> String {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line holding {text:?} in time: {e}"),
        }
    }
}

/// The head of a delivery of `body` signed with [`KEY`], for a raw
/// connection: its signature headers and `framing` (the lines that say how
/// the body is framed).
fn signed_head(addr: &str, body: &str, framing: &str) -> String {
    let request = SignedRequest::new(KEY, body.to_owned()).build::<Full<Bytes>>();
    let mut head = format!("POST /webhooks/clink HTTP/1.1\r\nhost: {addr}\r\n");
    for (name, value) in request.headers() {
        if name.as_str().starts_with("x-clink-") {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
        }
    }
    head.push_str(framing);
    head.push_str("\r\n");
    head
}

/// A whole delivery of `body`, signed with [`KEY`], framed by its length,
/// with the header lines `more` besides: its bytes, for a raw connection.
fn signed_delivery(addr: &str, body: &str, more: &str) -> String {
    let framing = format!("content-length: {}\r\n{more}", body.len());
    format!("{}{body}", signed_head(addr, body, &framing))
}

/// A `Server` over the layer and an empty router, served in this test's
/// runtime on a loopback port of its own, with at most `max_connections`;
/// no timeout (an hour) frees a connection while the test runs. Its
/// address.
#[cfg(feature = "server")]
async fn served_without_timeouts(max_connections: usize) -> std::net::SocketAddr {
    use clink_webhooks::server::Server;
    use clink_webhooks::{ClinkLayer, EventRouter, Verifier};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ClinkLayer::new(Verifier::new(KEY).unwrap())
        .body_timeout(Duration::from_secs(3600))
        .unwrap()
        .route(EventRouter::new());
    let server = Server::new()
        .max_connections(max_connections)
        .and_then(|s| s.header_read_timeout(Duration::from_secs(3600)))
        .unwrap();
    tokio::spawn(server.serve(listener, service, std::future::pending()));
    addr
}

/// Delivers `body`, signed, to the server at `addr` on a connection of its
/// own; the status. Fails saying `waited` if no answer comes within
/// [`PATIENCE`].
#[cfg(feature = "server")]
async fn delivered_to(addr: std::net::SocketAddr, body: String, waited: &str) -> u16 {
    let request = SignedRequest::new(KEY, body)
        .uri(format!("http://{addr}/webhooks/clink"))
        .build();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .unwrap_or_else(|_| panic!("{waited}"))
        .unwrap()
        .status()
        .as_u16()
}

/// A request with both `Content-Length` and `Transfer-Encoding` is answered
/// `400` by the server and its connection closed: a proxy in front that
/// frames it by length would see another body (and another request after
/// it). Without the check, hyper framed it as chunked and served it. The
/// same delivery framed one way only is handled.
#[tokio::test]
async fn a_request_with_both_content_length_and_transfer_encoding_is_refused() {
    let (receiver, _url, addr) = receiver("");
    let body = fresh_fixture(&EventType::OrderSucceeded);
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    for framing in [
        format!(
            "content-length: {}\r\ntransfer-encoding: chunked\r\n",
            chunked.len()
        ),
        "transfer-encoding: chunked\r\ncontent-length: 5\r\n".to_owned(),
    ] {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = signed_head(&addr, &body, &framing);
        stream.write_all(head.as_bytes()).await.unwrap();
        let _ = stream.write_all(chunked.as_bytes()).await;
        let answer = answer_until_closed(&mut stream).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{framing:?}: {answer:?}"
        );
    }
    // Chunked alone: handled.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let head = signed_head(
        &addr,
        &body,
        "transfer-encoding: chunked\r\nconnection: close\r\n",
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(chunked.as_bytes()).await.unwrap();
    let answer = answer_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(receiver
        .next_stdout()
        .starts_with("handled order.succeeded "));
}

/// Event ids holding a line separator (U+2028), a right-to-left override
/// (U+202E) or a zero width space (U+200B) are refused `400
/// invalid_event_id` like control characters, and an event type holding
/// them (any type is accepted) is printed escaped: nothing the receiver
/// prints holds one raw. Without the rule, the ids were handled and
/// printed raw, showing something other than the id.
#[tokio::test]
async fn ids_with_invisible_characters_are_refused_and_nothing_raw_is_printed() {
    let (receiver, url, _addr) = receiver("");
    for c in ['\u{2028}', '\u{202e}', '\u{200b}'] {
        let body = format!(r#"{{"id":"evt_1{c}dlo","type":"order.succeeded","data":{{}}}}"#);
        assert_eq!(deliver(&url, body).await, 400, "{c:?}");
        let escaped = format!(
            r#"{{"id":"evt_2\u{:04x}","type":"order.succeeded","data":{{}}}}"#,
            u32::from(c)
        );
        assert_eq!(deliver(&url, escaped).await, 400, "{c:?} as a JSON escape");
    }
    let odd_type =
        "{\"id\":\"evt_odd_type\",\"type\":\"order.x\u{202e}\u{200b}\u{2028}y\",\"data\":{}}";
    assert_eq!(deliver(&url, odd_type.to_owned()).await, 200);
    assert_eq!(
        receiver.next_stdout(),
        r#"handled "order.x\u{202e}\u{200b}\u{2028}y" evt_odd_type"#
    );
    let finished = receiver.terminate();
    let all = format!("{}{}", finished.stdout, finished.stderr);
    for c in ['\u{2028}', '\u{202e}', '\u{200b}'] {
        assert!(!all.contains(c), "{c:?} printed raw: {all:?}");
    }
}

/// The summary of refusals is written by a timer at the end of its
/// interval (the example's default, 10 s), with no request after the
/// burst to prompt it. Before, a summary waited for the next refusal, which
/// may never come (one came 5.5 minutes late).
#[tokio::test]
async fn a_refusal_summary_appears_within_the_interval_with_no_further_traffic() {
    const INTERVAL: Duration = Duration::from_secs(10);
    let (receiver, url, _addr) = receiver("");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let first_sent = Instant::now();
    for _ in 0..100 {
        let request = http::Request::post(&url)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        assert_eq!(client.request(request).await.unwrap().status(), 400);
    }
    // The first refusal is written at once, the other 99 at the end of the
    // interval that began with it.
    let first = line_containing(&receiver.stderr, "refused=1 ", first_sent + PATIENCE);
    assert!(first.contains("missing_timestamp=1"), "{first}");
    // No request follows: a summary that waited for the next refusal
    // would never come. It is held to its interval with room for a busy
    // machine's timer and pipes, not to the second.
    let due = first_sent + INTERVAL + Duration::from_secs(20);
    let summary = line_containing(&receiver.stderr, "refused=99 ", due);
    assert!(summary.contains("missing_timestamp=99"), "{summary}");
    assert!(
        first_sent.elapsed() >= INTERVAL - Duration::from_secs(1),
        "the summary came before the interval ended"
    );
}

/// The multi-tenant example with its keys looked up as from a database
/// (`CLINK_TENANT_LOOKUP_MS`, see the example), each lookup taking
/// `lookup_ms`, or failing with `fails`: one account, `acct_a`, and
/// `accounts(n)` for each `n` below `more`, all with the secret
/// `whsec_tenant_a`. Its process and the base of its URLs
/// (`http://addr/webhooks/clink/`).
fn tenants_looked_up(
    lookup_ms: u64, fails: bool, more: usize, account: impl Fn(usize) -> String,
) -> (Process, String) {
    // The accounts past acct_a in a keys file: too many for a variable.
    let dir = std::env::temp_dir().join(format!(
        "clink-hostile-tenants-{}-{}",
        std::process::id(),
        KEYS_FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let keys_file = dir.join("keys");
    let keys: String = (0..more)
        .map(|n| format!("{}=whsec_tenant_a\n", account(n)))
        .collect();
    std::fs::write(&keys_file, keys).unwrap();
    let mut command = Command::new(example_path("multi_tenant"));
    command
        .env("PORT", "0")
        .env("CLINK_TENANT_KEYS", "acct_a=whsec_tenant_a")
        .env("CLINK_TENANT_KEYS_FILE", &keys_file)
        .env("CLINK_TENANT_LOOKUP_MS", lookup_ms.to_string())
        .env_remove("RUST_LOG");
    if fails {
        command.env("CLINK_TENANT_LOOKUP_FAILS", "1");
    }
    let process = Process::start(&mut command);
    let line = Process::line_starting(&process.stderr, "listening on ");
    // Read once at the start; a reload is not asked for.
    std::fs::remove_dir_all(&dir).unwrap();
    let base = line["listening on ".len()..]
        .strip_suffix("{account}")
        .unwrap()
        .to_owned();
    (process, base)
}

/// Tells apart the keys files of the tests running at once.
static KEYS_FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sends `count` deliveries at `concurrency` at once, the `n`th to the
/// account `account(n)` signed with `secret`; the statuses, by code.
async fn flood(
    base: &str, count: usize, concurrency: usize, secret: &'static str,
    account: impl Fn(usize) -> String + Send + Sync + 'static,
) -> std::collections::BTreeMap<u16, usize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let next = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let account = Arc::new(account);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, statuses, account) = (
            Arc::clone(&next),
            Arc::clone(&statuses),
            Arc::clone(&account),
        );
        let (client, base) = (client.clone(), base.to_owned());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return;
                }
                let body = clink_webhooks::testing::fixture_with_id(
                    &EventType::OrderSucceeded,
                    &format!("evt_flood_{n}"),
                );
                let request = SignedRequest::new(secret, body)
                    .uri(format!("{base}{}", account(n)))
                    .build::<Full<Bytes>>();
                let status = client
                    .request(request)
                    .await
                    .map_or(0, |response| response.status().as_u16());
                *statuses.lock().unwrap().entry(status).or_default() += 1;
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    statuses
}

/// The `key lookups: N` the example prints when it stops.
fn lookups_made(finished: &crate::support::process::Finished) -> u64 {
    finished
        .stderr
        .lines()
        .find_map(|line| line.strip_prefix("key lookups: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lookup count: {finished:?}"))
}

/// `CachedKeySource`'s default lookup rate and burst (the example's).
const LOOKUPS_PER_SECOND: u64 = 100;
const LOOKUP_BURST: u64 = 100;

/// 10,000 deliveries to made-up accounts, 64 at a time: each is answered
/// `404` by the key source's precheck (the configured account ids), with
/// no lookup; and an account that is configured, and not looked up yet, is
/// looked up and handled after them. Without the precheck, the made-up
/// names took every lookup the source's rate allowed, and the real
/// account's first delivery after them was answered `503`.
#[tokio::test]
async fn made_up_accounts_make_no_lookup_and_leave_the_lookups_to_real_ones() {
    let (tenants, base) = tenants_looked_up(5, false, 0, |_| unreachable!());
    let statuses = flood(&base, 10_000, 64, "whsec_anyone", |n| {
        format!("acct_x{n:05}")
    })
    .await;
    assert_eq!(statuses.get(&404), Some(&10_000), "{statuses:?}");
    let statuses = flood(&base, 1, 1, "whsec_tenant_a", |_| "acct_a".to_owned()).await;
    assert_eq!(statuses.get(&200), Some(&1), "{statuses:?}");
    let finished = tenants.terminate();
    assert_eq!(lookups_made(&finished), 1, "{finished:?}");
}

/// 10,000 deliveries to as many configured accounts, none looked up yet,
/// signed with a key none of them has, 64 at a time: the lookups made are
/// within the key source's rate (a burst, then so many a second), each
/// answered `401`, and the rest are answered `503` without one. Without
/// the caps, each made one (10,000 lookups).
#[tokio::test]
async fn uncached_accounts_make_no_more_lookups_than_the_cap_allows() {
    let account = |n: usize| format!("acct_x{n:05}");
    let (tenants, base) = tenants_looked_up(5, false, 10_000, account);
    let started = Instant::now();
    let statuses = flood(&base, 10_000, 64, "whsec_anyone", account).await;
    let took = started.elapsed();
    let finished = tenants.terminate();
    let lookups = lookups_made(&finished);
    let allowed = LOOKUP_BURST + LOOKUPS_PER_SECOND * (took.as_secs() + 1);
    eprintln!("{lookups} lookups in {took:?} (at most {allowed}); statuses {statuses:?}");
    assert!(lookups <= allowed, "{lookups} lookups in {took:?}");
    assert_eq!(
        statuses.get(&401).copied().unwrap_or(0) as u64,
        lookups,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.get(&503).copied().unwrap_or(0) as u64,
        10_000 - lookups,
        "{statuses:?}"
    );
}

/// 64 deliveries at once for one account nobody has looked up yet (each
/// lookup taking 500 ms): one lookup, shared, and every delivery handled.
/// Without the single flight, each made its own.
#[tokio::test]
async fn deliveries_for_one_uncached_account_make_one_lookup() {
    let (tenants, base) = tenants_looked_up(500, false, 0, |_| unreachable!());
    let statuses = flood(&base, 64, 64, "whsec_tenant_a", |_| "acct_a".to_owned()).await;
    assert_eq!(statuses.get(&200), Some(&64), "{statuses:?}");
    let finished = tenants.terminate();
    assert_eq!(lookups_made(&finished), 1, "{finished:?}");
}

/// 5,000 deliveries to as many configured accounts while every lookup
/// fails: a handful of log lines (the outage once, the refusals summed up),
/// none with a raw account name. Without the outage log, each failure
/// wrote an `ERROR` line naming the account (5,000 requests, 5,002 lines).
#[tokio::test]
async fn failing_lookups_write_a_handful_of_lines() {
    let account = |n: usize| format!("acct_y{n:05}");
    let (tenants, base) = tenants_looked_up(0, true, 5_000, account);
    let started = Instant::now();
    let statuses = flood(&base, 5_000, 64, "whsec_anyone", account).await;
    assert_eq!(statuses.get(&503), Some(&5_000), "{statuses:?}");
    let finished = tenants.terminate();
    let took = started.elapsed();
    let logged: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|line| line.contains("clink_webhooks::"))
        .collect();
    eprintln!("{took:?}:\n{}", logged.join("\n"));
    // Two logs (the key source's outage, the refusals), each a line when
    // it starts and a summary for every 10 s it goes on: on a machine slow
    // enough to take more than 10 s over the flood, a summary more each.
    let windows = usize::try_from(took.as_secs() / 10).unwrap_or(usize::MAX);
    let allowed = 6.max(2 * (2 + windows));
    assert!(
        (1..=allowed).contains(&logged.len()),
        "{} lines in {took:?} (at most {allowed}):\n{}",
        logged.len(),
        finished.stderr
    );
    assert!(
        logged
            .iter()
            .any(|line| line.contains("ERROR") && line.contains("key source unavailable")),
        "{}",
        finished.stderr
    );
    // An account name shows only inside an escaped (quoted) error text.
    for line in &logged {
        if line.contains("acct_y") {
            assert!(
                line.contains(r#"error=""#) || line.contains(r#"last_error=""#),
                "{line}"
            );
        }
    }
}

/// Runs the server control script named by `var` (exported by
/// `scripts/with-services`) and waits for it.
#[cfg(feature = "redis")]
async fn control(var: &str) {
    let script = std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run under scripts/with-services"));
    let status = tokio::process::Command::new(&script)
        .status()
        .await
        .unwrap_or_else(|err| panic!("cannot run {var} ({script}): {err}"));
    assert!(status.success(), "{var} ({script}) failed: {status}");
}

/// The example receiver on Redis, under a steady load of deliveries, while
/// Redis is killed for 10 s and started again: the outage is a handful of
/// log lines (when it starts, a summary, when it ends), not one or two per
/// delivery (2,122 lines in 10 s before), and deliveries are handled again
/// once Redis is back.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_redis_outage_under_load_writes_a_handful_of_lines() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    const OUTAGE: Duration = Duration::from_secs(10);
    /// Deliveries sent at once: one per worker, each waiting for its answer.
    const WORKERS: usize = 4;
    let _servers = crate::support::servers::exclusive().await;
    let redis = std::env::var("REDIS_URL").expect("REDIS_URL: run under scripts/with-services");
    let (receiver, url, _store) = crate::support::process::example_receiver_with_env(
        KEY,
        Some(("REDIS_URL", &redis)),
        &[("RUST_LOG", "warn")],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for worker in 0..WORKERS {
        let (stop, sent, url) = (Arc::clone(&stop), Arc::clone(&sent), url.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = clink_webhooks::testing::fixture_with_id(
                    &EventType::OrderSucceeded,
                    &format!("evt_outage_{worker}_{n}_{}", std::process::id()),
                );
                deliver(&url, body).await;
                sent.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    within(PATIENCE, "load under way", || {
        let sent = Arc::clone(&sent);
        async move { sent.load(Ordering::Relaxed) >= 100 }
    })
    .await;
    control("CLINK_TEST_REDIS_KILL").await;
    let killed = Instant::now();
    let at_kill = sent.load(Ordering::Relaxed);
    // The outage: the load goes on against a Redis that is gone.
    // At least OUTAGE long, and long enough for 40 deliveries to meet it
    // however slow the machine is.
    while killed.elapsed() < OUTAGE || sent.load(Ordering::Relaxed) - at_kill < 40 {
        let before = sent.load(Ordering::Relaxed);
        within(PATIENCE, "deliveries answered during the outage", || {
            let sent = Arc::clone(&sent);
            async move { sent.load(Ordering::Relaxed) > before }
        })
        .await;
    }
    let during = sent.load(Ordering::Relaxed) - at_kill;
    control("CLINK_TEST_REDIS_START").await;
    let body = fresh_fixture(&EventType::OrderSucceeded);
    within(PATIENCE, "a delivery handled once Redis is back", || {
        let (url, body) = (url.clone(), body.clone());
        async move { deliver(&url, body).await == 200 }
    })
    .await;
    let down = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.unwrap();
    }
    let finished = receiver.terminate();
    let logged: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|line| line.contains("clink_webhooks::"))
        .collect();
    eprintln!(
        "{during} deliveries during the outage; logged:\n{}",
        logged.join("\n")
    );
    assert!(during >= 40, "too little load to judge: {during}");
    // A delivery already handled when Redis went away cannot record its
    // version: one line for it, naming it; nor complete its claim, which
    // is tried again until Redis is back and then found gone (a Redis
    // restarted without the claim): one line for that too. Only the
    // deliveries in flight at that moment get there (the next claim fails
    // first), so at most one of each a worker.
    let (per_event, outage): (Vec<&str>, Vec<&str>) = logged.iter().partition(|line| {
        line.contains("clink_webhooks::ordering")
            || (line.contains("clink_webhooks::layer::claim")
                && line.contains("after a failed try"))
    });
    let (versions, completions): (Vec<&str>, Vec<&str>) = per_event
        .iter()
        .partition(|line| line.contains("clink_webhooks::ordering"));
    assert!(
        versions.len() <= WORKERS
            && completions.len() <= WORKERS
            && versions
                .iter()
                .all(|line| line.contains("its version could not be recorded")),
        "{} lines of single events:\n{}",
        per_event.len(),
        per_event.join("\n")
    );
    // The outage logs: start and end for each of the three (the
    // idempotency store, the freshness store's lookups and, when a handled
    // delivery tried to record its version during the outage, its
    // records) and a summary for every 10 s it was down (one, unless the
    // machine is slow enough to stretch the outage), plus one start/end
    // pair when a call still gets through at the moment of the kill.
    let windows = usize::try_from(down.as_secs() / 10).unwrap_or(usize::MAX);
    let allowed = 3 * (2 + windows.max(1)) + 2;
    assert!(
        outage.len() <= allowed,
        "{} lines in {down:?} down (at most {allowed}):\n{}",
        outage.len(),
        outage.join("\n")
    );
    assert!(
        logged
            .iter()
            .any(|line| line.contains("idempotency store unavailable")),
        "{}",
        finished.stderr
    );
    assert!(
        logged
            .iter()
            .any(|line| line.contains("idempotency store available again")),
        "{}",
        finished.stderr
    );
}

/// A client that pipelines requests and never reads the answers fills the
/// socket's buffers: hyper waits to write and reads nothing more, so no
/// header timeout runs. The write timeout closes it; before, it held its
/// connection (here the only one) for as long as it stayed, and a real
/// delivery waited behind it.
#[cfg(feature = "server")]
#[tokio::test]
async fn a_client_that_never_reads_its_answers_loses_its_connection() {
    use clink_webhooks::server::Server;
    use clink_webhooks::{ClinkLayer, EventRouter, Verifier};

    // Small buffers on both ends (an accepted socket takes its listener's),
    // so that a few hundred answers fill them.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ClinkLayer::new(Verifier::new(KEY).unwrap()).route(EventRouter::new());
    let server = Server::new()
        .max_connections(1)
        .and_then(|s| s.write_timeout(Duration::from_millis(500)))
        .unwrap();
    tokio::spawn(server.serve(listener, service, std::future::pending()));

    let greedy = tokio::net::TcpSocket::new_v4().unwrap();
    greedy.set_recv_buffer_size(4096).unwrap();
    let mut greedy = greedy.connect(addr).await.unwrap();
    let request =
        format!("POST /webhooks/clink HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
    let pipelined = request.repeat(20_000).into_bytes();
    // Written from a task of its own (the writes stall once the server
    // stops reading), and never read.
    let writer = tokio::spawn(async move {
        let _ = greedy.write_all(&pipelined).await;
        greedy
    });

    // A real delivery, on a second connection: served once the first is
    // closed. A bound far past the write timeout, to fail rather than hang
    // on a server without one.
    let body = r#"{"id":"evt_behind","type":"invoice.paid","data":{}}"#.to_owned();
    let status = delivered_to(
        addr,
        body,
        "a client that never reads held the only connection",
    );
    assert_eq!(status.await, 200);
    writer.abort();
}

/// Reads from `stream` until the end of one answer's head; the head.
async fn answer_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(0) | Err(_) => break,
                Ok(_) => head.push(byte[0]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("an answer within the patience");
    String::from_utf8_lossy(&head).into_owned()
}

/// Connections held open without a request keep no one out: with every
/// connection taken, a new client gets one closed for it, the one between
/// requests at once, the one still sending its first head once a second
/// has passed, while a connection in the middle of a request is left to
/// finish. Before, the new client waited in the backlog until an idle
/// connection's header timeout or the delivery's body timeout (here an
/// hour) ran out.
#[cfg(feature = "server")]
#[tokio::test]
async fn a_full_server_closes_an_idle_connection_for_a_new_client() {
    let addr = served_without_timeouts(3).await;

    // One connection idle after a request it made.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(format!("GET /webhooks/clink HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(answer_head(&mut idle).await.starts_with("HTTP/1.1 405"));
    // One sending a head it never ends.
    let mut trickling = TcpStream::connect(addr).await.unwrap();
    trickling
        .write_all(format!("POST /webhooks/clink HTTP/1.1\r\nhost: {addr}\r\n").as_bytes())
        .await
        .unwrap();
    // One in the middle of a delivery: its head and half its body sent.
    let body = r#"{"id":"evt_half","type":"invoice.paid","data":{}}"#;
    let (first, rest) = body.split_at(body.len() / 2);
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let head = signed_head(
        &addr.to_string(),
        body,
        &format!("content-length: {}\r\n", body.len()),
    );
    busy.write_all(format!("{head}{first}").as_bytes())
        .await
        .unwrap();

    // A new client, with every connection taken: served, on a connection
    // it closes once answered.
    let deliver_closing = |n: usize| async move {
        let body = fresh_fixture(&EventType::InvoicePaid);
        let delivery = signed_delivery(&addr.to_string(), &body, "connection: close\r\n");
        let mut new = TcpStream::connect(addr).await.unwrap();
        new.write_all(delivery.as_bytes()).await.unwrap();
        let answer = answer_until_closed(&mut new).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "new client {n}: {answer}"
        );
    };
    deliver_closing(0).await;
    // Its slot taken again by another client starting a head, accepted
    // before the next new client: connections still sending a first head
    // are closed oldest first, once idle a second (one between two
    // requests would go first, however briefly idle).
    let mut trickling_later = TcpStream::connect(addr).await.unwrap();
    trickling_later
        .write_all(format!("POST /webhooks/clink HTTP/1.1\r\nhost: {addr}\r\n").as_bytes())
        .await
        .unwrap();
    deliver_closing(1).await;
    // The idle connection was closed: what is left to read is the body of
    // its answer, then the end. And the one trickling its head, unanswered.
    let left = answer_until_closed(&mut idle).await;
    assert!(left.ends_with("POST requests\"}"), "{left}");
    assert_eq!(answer_until_closed(&mut trickling).await, "");
    // The delivery in progress was left to finish.
    busy.write_all(rest.as_bytes()).await.unwrap();
    assert!(answer_head(&mut busy).await.starts_with("HTTP/1.1 200"));
}

/// With every connection taken by a client in the middle of a body it
/// stopped sending, a new client is served: the connection waiting
/// longest on its body, a second or more, is closed for it, unanswered (no
/// handler ran: its body never came); of two waiting since the same
/// moment, the one opened first. Before, bodies held every slot until
/// the body timeout (an hour here), and the new client waited as long.
#[cfg(feature = "server")]
#[tokio::test]
async fn a_full_server_closes_a_stalled_body_for_a_new_client() {
    let addr = served_without_timeouts(2).await;

    // Two deliveries, each with its head and half its body sent.
    let mut stalled = Vec::new();
    for n in 0..2 {
        let body = format!(r#"{{"id":"evt_stalled_{n}","type":"invoice.paid","data":{{}}}}"#);
        let (first, rest) = body.split_at(body.len() / 2);
        let head = signed_head(
            &addr.to_string(),
            &body,
            &format!("content-length: {}\r\n", body.len()),
        );
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("{head}{first}").as_bytes())
            .await
            .unwrap();
        stalled.push((stream, rest.to_owned()));
    }

    let body = fresh_fixture(&EventType::InvoicePaid);
    let waited = "the new client waited behind the stalled bodies";
    assert_eq!(delivered_to(addr, body, waited).await, 200);

    // The first stalled body's connection was closed, unanswered (no
    // handler ran). The other one, if it was not closed too (on a machine
    // so slow that the first took over a second to close), is served once
    // its body comes.
    let (mut first, _) = stalled.remove(0);
    assert_eq!(answer_until_closed(&mut first).await, "");
    let (mut second, rest) = stalled.remove(0);
    let _ = second.write_all(rest.as_bytes()).await;
    let answer = answer_head(&mut second).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
}

/// Connections kept busy with requests answered at once keep no one out:
/// with every connection taken by a client sending one request after
/// another (refused ones: no key needed), none idle a second nor waiting
/// on a body, a new client is served: the connection between two requests
/// idle longest is closed for it. Before, the new client waited in the
/// backlog for as long as the requests went on.
#[cfg(feature = "server")]
#[tokio::test]
async fn a_full_server_closes_a_connection_between_requests_for_a_new_client() {
    let addr = served_without_timeouts(2).await;
    let request = format!("GET /webhooks/clink HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    let mut busy = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let first = tokio::time::timeout(PATIENCE, refused_answer(&mut stream)).await;
        assert_eq!(
            first,
            Ok(true),
            "the first request on a connection is answered"
        );
        let request = request.clone();
        // One request after another until the server closes the connection.
        busy.spawn(async move {
            while stream.write_all(request.as_bytes()).await.is_ok()
                && refused_answer(&mut stream).await
            {}
        });
    }

    let body = fresh_fixture(&EventType::InvoicePaid);
    let waited = "the new client waited behind connections busy with requests";
    assert_eq!(delivered_to(addr, body, waited).await, 200);
    // A busy connection was closed for it.
    tokio::time::timeout(PATIENCE, busy.join_next())
        .await
        .expect("a busy connection closed within the patience")
        .expect("a task")
        .expect("the task ran to its end");
    busy.abort_all();
}

/// Of two connections between requests, both last refused, the one whose
/// client has not begun its next request is closed for a new client, though
/// the other has been idle longer: closed, that one would drop its request
/// unanswered. Before, the one idle longest was closed.
#[cfg(feature = "server")]
#[tokio::test]
async fn a_full_server_closes_a_connection_whose_next_request_has_not_begun() {
    let addr = served_without_timeouts(2).await;
    let request = format!("GET /webhooks/clink HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    // The connection idle longest has begun its next request: sent in the
    // same write as the one answered, so the server has read it (in the
    // same read) once that one is answered.
    let (first, rest) = request.split_at(20);
    let mut begun = TcpStream::connect(addr).await.unwrap();
    begun
        .write_all(format!("{request}{first}").as_bytes())
        .await
        .unwrap();
    assert!(refused_answer(&mut begun).await);
    let mut quiet = TcpStream::connect(addr).await.unwrap();
    quiet.write_all(request.as_bytes()).await.unwrap();
    assert!(refused_answer(&mut quiet).await);

    let body = fresh_fixture(&EventType::InvoicePaid);
    let waited = "the new client waited behind connections between requests";
    assert_eq!(delivered_to(addr, body, waited).await, 200);
    assert_eq!(answer_until_closed(&mut quiet).await, "");
    // The request begun is answered.
    begun.write_all(rest.as_bytes()).await.unwrap();
    assert!(refused_answer(&mut begun).await);
}

/// A connection between requests whose last answer was not a refusal is
/// not closed for a new client at once, but once the new client has waited
/// a second (or it has been idle that long): clients busy being served are
/// closed one a second at most. Before, it was closed at once.
#[cfg(feature = "server")]
#[tokio::test]
async fn a_full_server_closes_a_connection_just_served_only_after_a_second() {
    let addr = served_without_timeouts(1).await;
    let body = fresh_fixture(&EventType::InvoicePaid);
    let delivery = signed_delivery(&addr.to_string(), &body, "");
    let mut served = TcpStream::connect(addr).await.unwrap();
    // Before the request: the server answers it later, and its second
    // counts from then, however late this test reads the answer.
    let sent = Instant::now();
    served.write_all(delivery.as_bytes()).await.unwrap();
    assert!(answer_head(&mut served).await.starts_with("HTTP/1.1 200"));

    let body = fresh_fixture(&EventType::InvoicePaid);
    let waited = "the new client waited behind a connection just served";
    assert_eq!(delivered_to(addr, body, waited).await, 200);
    let took = sent.elapsed();
    // A lower bound: a slow machine only makes it longer. (A tenth of the
    // second left for the timer's and the clocks' grain.)
    assert!(
        took >= Duration::from_millis(900),
        "the connection just served was closed after {took:?}"
    );
}

/// Connections kept busy with deliveries, one after another, keep no one
/// out for long: once a new client has waited a second, the connection
/// between two deliveries idle longest is closed for it, though none is
/// idle a second. (Here the same signed delivery again and again, each a
/// verified duplicate after the first.)
#[cfg(feature = "server")]
#[tokio::test]
async fn a_full_server_closes_a_connection_busy_with_deliveries_once_a_client_waited() {
    let addr = served_without_timeouts(1).await;
    let body = fresh_fixture(&EventType::InvoicePaid);
    let delivery = signed_delivery(&addr.to_string(), &body, "");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(delivery.as_bytes()).await.unwrap();
    let first = tokio::time::timeout(PATIENCE, whole_answer(&mut stream)).await;
    assert!(
        first
            .as_ref()
            .is_ok_and(|answer| answer.starts_with("HTTP/1.1 200")),
        "{first:?}"
    );
    // One delivery after another until the server closes the connection.
    let busy = tokio::spawn(async move {
        while stream.write_all(delivery.as_bytes()).await.is_ok()
            && whole_answer(&mut stream).await.starts_with("HTTP/1.1 200")
        {}
    });

    let body = fresh_fixture(&EventType::InvoicePaid);
    let waited = "the new client waited behind a connection busy with deliveries";
    assert_eq!(delivered_to(addr, body, waited).await, 200);
    tokio::time::timeout(PATIENCE, busy)
        .await
        .expect("the busy connection closed within the patience")
        .expect("the task ran to its end");
}

/// Reads one whole answer (its head and its `content-length` of body) from
/// `stream`; what came of it, shorter if the connection closed.
async fn whole_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                break;
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads the server's `405` answer to one `GET` on `stream`: whether it
/// came whole (else the connection was closed).
async fn refused_answer(stream: &mut TcpStream) -> bool {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"POST requests\"}") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A chunked body whose trailers run past 1 KiB has its connection closed
/// as they arrive: hyper would keep up to 16 KiB of them per connection,
/// beyond the memory the server's margin counts, until the body timeout (an
/// hour here). Short trailers pass, and the delivery is handled.
#[cfg(feature = "server")]
#[tokio::test]
async fn trailers_over_1_kib_close_their_connection() {
    let addr = served_without_timeouts(512).await;

    let body = r#"{"id":"evt_trailers","type":"invoice.paid","data":{}}"#;
    let chunked = |trailers: &str| {
        format!(
            "{}{:x}\r\n{body}\r\n0\r\n{trailers}",
            signed_head(&addr.to_string(), body, "transfer-encoding: chunked\r\n"),
            body.len()
        )
    };
    let mut long = TcpStream::connect(addr).await.unwrap();
    let trailers = format!("x-pad: {}", "a".repeat(2000));
    long.write_all(chunked(&trailers).as_bytes()).await.unwrap();
    let answer = answer_until_closed(&mut long).await;
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");

    let mut short = TcpStream::connect(addr).await.unwrap();
    short
        .write_all(chunked("x-pad: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(answer_head(&mut short).await.starts_with("HTTP/1.1 200"));
}

/// A store whose completions take [`SlowCompletion::DELAY`] to land (a
/// store far away, or busy), saying when one is asked for and when one
/// lands.
#[cfg(feature = "server")]
struct SlowCompletion {
    inner: clink_webhooks::store::MemoryStore,
    asked: tokio::sync::mpsc::UnboundedSender<()>,
    landed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(feature = "server")]
impl SlowCompletion {
    /// Long enough that a server returning without waiting for the
    /// completion has ended its runtime before it lands (that takes
    /// microseconds), short enough to land well inside the server's 2 s
    /// wait on a busy machine.
    const DELAY: Duration = Duration::from_millis(250);
}

#[cfg(feature = "server")]
impl clink_webhooks::store::IdempotencyStore for SlowCompletion {
    fn claim<'a>(
        &'a self, key: &'a str, lease: Duration,
    ) -> clink_webhooks::BoxFuture<
        'a,
        Result<clink_webhooks::store::Claim, clink_webhooks::store::StoreError>,
    > {
        self.inner.claim(key, lease)
    }

    fn complete<'a>(
        &'a self, key: &'a str, token: &'a clink_webhooks::store::LeaseToken, retention: Duration,
    ) -> clink_webhooks::BoxFuture<
        'a,
        Result<clink_webhooks::store::Settle, clink_webhooks::store::StoreError>,
    > {
        Box::pin(async move {
            let _ = self.asked.send(());
            tokio::time::sleep(Self::DELAY).await;
            let settled = self.inner.complete(key, token, retention).await;
            if settled.is_ok() {
                self.landed.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            settled
        })
    }

    fn release<'a>(
        &'a self, key: &'a str, token: &'a clink_webhooks::store::LeaseToken,
    ) -> clink_webhooks::BoxFuture<
        'a,
        Result<clink_webhooks::store::Settle, clink_webhooks::store::StoreError>,
    > {
        self.inner.release(key, token)
    }

    fn ping(&self) -> clink_webhooks::BoxFuture<'_, Result<(), clink_webhooks::store::StoreError>> {
        self.inner.ping()
    }
}

/// A delivery whose handler succeeded and whose completion was on its way
/// to the store when the server's shutdown deadline cut it off has its
/// claim completed before `Server::serve` returns, though the process ends
/// right after (its runtime dropped, as when `main` returns): Clink's retry
/// is then a duplicate. Before, `serve` returned as it closed the
/// connections, the completion handed to a task of its own was dropped
/// with the runtime, and once the lease ended the retry ran the handler
/// that had succeeded a second time.
#[cfg(feature = "server")]
#[tokio::test]
async fn a_completion_cut_off_at_shutdown_lands_before_the_server_returns() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use clink_webhooks::server::Server;
    use clink_webhooks::{events, ClinkLayer, EventRouter, Verifier};

    let (asked, mut asked_rx) = tokio::sync::mpsc::unbounded_channel();
    let landed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let store = SlowCompletion {
        inner: clink_webhooks::store::MemoryStore::new(),
        asked,
        landed: Arc::clone(&landed),
    };
    // The server in a process of its own, as far as its runtime goes: the
    // runtime ends as soon as `serve` returns.
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let router = EventRouter::new().on::<events::OrderSucceeded, _>(|_| async {
                Ok::<_, std::convert::Infallible>(())
            });
            let service = ClinkLayer::new(Verifier::new(KEY).unwrap())
                .store(store)
                .route(router);
            let server = Server::new().shutdown_timeout(Duration::ZERO).unwrap();
            server
                .serve(listener, service, async {
                    let _ = stopped.await;
                })
                .await;
        });
        drop(runtime);
    });
    let addr = addr_rx.recv_timeout(PATIENCE).unwrap();
    let delivery = tokio::spawn(async move {
        let request = SignedRequest::new(KEY, fresh_fixture(&EventType::OrderSucceeded))
            .uri(format!("http://{addr}/webhooks/clink"))
            .build();
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let _ = client.request(request).await;
    });
    // The handler succeeded and its completion is on its way: stop now.
    tokio::time::timeout(PATIENCE, asked_rx.recv())
        .await
        .expect("the completion was never asked for")
        .unwrap();
    assert!(!landed.load(Ordering::SeqCst));
    stop.send(()).unwrap();
    tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap();
    assert!(
        landed.load(Ordering::SeqCst),
        "the server returned before the claim of the delivery it cut off was completed"
    );
    let _ = delivery.await;
}

/// A connection still sending its first head, told to close for a new
/// client, is closed at once, unanswered: nothing of its request ran and
/// there is no answer to finish writing, so the new client does not wait
/// out a grace behind it (a server full of such connections let one client
/// in a second). Before, hyper read the head on, and the connection was
/// dropped only after the grace.
#[cfg(feature = "server")]
#[tokio::test]
async fn a_connection_still_sending_its_first_head_is_closed_at_once_for_a_new_client() {
    let (captured, _guard) = crate::support::capture::capture();
    let addr = served_without_timeouts(1).await;
    let mut trickling = TcpStream::connect(addr).await.unwrap();
    trickling.write_all(b"POST /webhooks/cl").await.unwrap();

    let body = fresh_fixture(&EventType::InvoicePaid);
    let delivery = signed_delivery(&addr.to_string(), &body, "connection: close\r\n");
    let mut new = TcpStream::connect(addr).await.unwrap();
    new.write_all(delivery.as_bytes()).await.unwrap();
    let answer = answer_until_closed(&mut new).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer_until_closed(&mut trickling).await, "");
    let closed_at_once = captured
        .events()
        .into_iter()
        .filter(|event| {
            event
                .message
                .contains("closing a connection still sending its first head")
        })
        .count();
    assert_eq!(closed_at_once, 1, "{:#?}", captured.events());
}

/// A body that never comes: a sender holding its delivery open.
struct NeverEnds;

impl http_body::Body for NeverEnds {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

/// Senders without the key whose bodies never end hold no place of the
/// inner service's: behind a concurrency limit of one, a signed delivery
/// sent while two such bodies stream is handled at once (the layer takes
/// the inner service's place once a delivery is verified and claimed),
/// not after the bodies' timeout. On Tokio's paused clock: at once is no
/// time at all.
#[tokio::test(start_paused = true)]
async fn unsigned_bodies_that_never_end_hold_no_place_of_the_inner_service() {
    use http_body_util::combinators::UnsyncBoxBody;
    use tower::{Layer, ServiceExt};
    const KEY: &str = "whsec_places";
    let router = clink_webhooks::EventRouter::new()
        .on::<clink_webhooks::events::OrderSucceeded, _>(|_event| async {
            Ok::<_, std::convert::Infallible>(())
        });
    let limited = tower::limit::ConcurrencyLimitLayer::new(1).layer(router);
    let service = clink_webhooks::ClinkLayer::new(clink_webhooks::Verifier::new(KEY).unwrap())
        .body_timeout(Duration::from_secs(300))
        .unwrap()
        .layer(limited);
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let signed = SignedRequest::new("whsec_not_the_key", "{}").build::<Full<Bytes>>();
        let (parts, _) = signed.into_parts();
        let request = http::Request::from_parts(parts, UnsyncBoxBody::new(NeverEnds));
        stalled.push(tokio::spawn(service.clone().oneshot(request)));
    }
    // Both are reading their bodies by now.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let started = tokio::time::Instant::now();
    let body = r#"{"id":"evt_place","type":"order.succeeded","data":{}}"#;
    let signed = SignedRequest::new(KEY, body).build::<Full<Bytes>>();
    let (parts, body) = signed.into_parts();
    let request = http::Request::from_parts(parts, UnsyncBoxBody::new(body));
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "the signed delivery waited for the stalled bodies"
    );
    for delivery in &stalled {
        assert!(!delivery.is_finished());
    }
    for delivery in stalled {
        delivery.abort();
    }
}
