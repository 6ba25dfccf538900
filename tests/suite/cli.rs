//! The `clink-webhook` binary end to end: the reference vectors through
//! `sign` and `verify`, `fixture`, `send` against the example receiver (the
//! README walkthrough, step by step) and against `listen`, exit codes, and
//! no secret in any output.

use std::path::PathBuf;
use std::process::Command;

#[cfg(unix)]
use crate::support::process::delivery_in_progress;
use crate::support::process::{example_receiver, Finished, Process};
use clink_webhooks::testing::fixture;
use clink_webhooks::{sign, EventType};
use serde_json::Value;

/// The key every receiver in these tests uses; it must never be printed.
const KEY: &str = "whsec_cli_test_secret_4f1d";

fn clink_webhook() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clink-webhook"));
    command.env_remove("CLINK_WEBHOOK_SIGNING_KEY");
    command
}

/// Runs the CLI to completion and checks it printed no secret.
fn run(command: &mut Command) -> Finished {
    let finished = Process::start(command).finish();
    for secret in [KEY, "test_webhook_signing_key", "whsec_test_123"] {
        assert!(
            !finished.stdout.contains(secret) && !finished.stderr.contains(secret),
            "a secret was printed: {finished:?}"
        );
    }
    finished
}

/// Runs `clink-webhook ARGS` with the test key in the environment.
fn cli(args: &[&str]) -> Finished {
    run(clink_webhook()
        .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
        .args(args))
}

/// A file holding `bytes`, removed when dropped.
struct BodyFile(PathBuf);

impl BodyFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let path =
            std::env::temp_dir().join(format!("clink-webhook-test-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for BodyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The three signing vectors of the wire-format reference: secret,
/// timestamp, body, signature.
const VECTORS: [(&str, &str, &[u8], &str); 3] = [
    (
        "test_webhook_signing_key",
        "1700000000000",
        br#"{"id":"evt_test"}"#,
        "e07064a60193e751786c3f5a37fe7a5dc816bba53a2cb7781d0246b035dddfda",
    ),
    (
        "whsec_test_123",
        "1736942400",
        br#"{"id":"evt_order_succeeded_test","object":"event","created":"2025-01-15T12:00:00.000Z","type":"order.succeeded","data":{"orderId":"ord_test_123","status":"success","amountTotal":19.99}}"#,
        "d61addcde690be84473aedd0abdefe1c3a5bfc070ddc3323253106b6384c75b0",
    ),
    (
        "whsec_test_123",
        "1736942400000",
        "{\"id\":\"evt_2\",\"object\":\"event\",\"type\":\"session.complete\",\"data\":{\"sessionId\":\"sess_test_123\",\"customer\":{\"email\":\"jos\u{e9}@example.com\"}}}\n".as_bytes(),
        "f7688e1969c9e3a8faeb9245a3b94cdd9c64ad3fca8f8ac328153267c48fbdb2",
    ),
];

/// `--now-ms` at which a vector's timestamp is current.
fn now_ms_for(timestamp: &str) -> String {
    if timestamp.len() < 13 {
        format!("{timestamp}000")
    } else {
        timestamp.to_owned()
    }
}

/// Runs `clink-webhook verify` on a delivery, checking at `now_ms`, with `extra` arguments.
fn verify(
    extra: &[&str], secret: &str, body: &BodyFile, (timestamp, signature): (&str, &str),
    now_ms: &str,
) -> Finished {
    run(clink_webhook()
        .args(["verify", "--secret", secret, "--body-file", body.path()])
        .args(["--timestamp", timestamp, "--signature", signature])
        .args(["--now-ms", now_ms])
        .args(extra))
}

#[test]
fn sign_prints_the_reference_signatures() {
    for (i, (secret, timestamp, body, signature)) in VECTORS.iter().enumerate() {
        let file = BodyFile::new(&format!("sign-{i}"), body);
        let signed = run(clink_webhook().args([
            "sign",
            "--secret",
            secret,
            "--body-file",
            file.path(),
            "--timestamp",
            timestamp,
        ]));
        assert_eq!(signed.code, Some(0), "{signed:?}");
        assert_eq!(
            signed.stdout,
            format!("X-Clink-Timestamp: {timestamp}\nX-Clink-Signature: {signature}\n")
        );
    }
    // `--secret env:NAME` takes any variable's name, in capitals or not,
    // one that begins as a key's prefix in capitals too.
    let (secret, timestamp, body, signature) = VECTORS[0];
    let file = BodyFile::new("sign-env", body);
    for name in ["WHSEC_PROD_KEY", "clink_key", "_K1"] {
        let signed = run(clink_webhook()
            .env(name, secret)
            .args(["sign", "--secret", &format!("env:{name}")])
            .args(["--body-file", file.path(), "--timestamp", timestamp]));
        assert_eq!(signed.code, Some(0), "{name}: {signed:?}");
        assert!(signed.stdout.contains(signature), "{name}: {signed:?}");
    }
    // The key from the environment, the timestamp now, JSON out.
    let file = BodyFile::new("sign-now", b"{}");
    let signed = cli(&["sign", "--json", "--body-file", file.path()]);
    let json: Value = serde_json::from_str(signed.stdout.trim()).unwrap();
    let timestamp = json["timestamp"].as_str().unwrap();
    assert_eq!(timestamp.len(), 13, "{json}");
    let checked = verify(
        &[],
        KEY,
        &file,
        (timestamp, json["signature"].as_str().unwrap()),
        timestamp,
    );
    assert_eq!(checked.code, Some(0), "{checked:?}");
}

#[test]
fn verify_accepts_the_reference_vectors_and_refuses_their_negatives() {
    for (i, (secret, timestamp, body, signature)) in VECTORS.iter().enumerate() {
        let file = BodyFile::new(&format!("verify-{i}"), body);
        let ok = verify(
            &[],
            secret,
            &file,
            (timestamp, signature),
            &now_ms_for(timestamp),
        );
        assert_eq!(ok.code, Some(0), "vector {}: {ok:?}", i + 1);
        assert!(ok.stdout.starts_with("valid: "), "{ok:?}");
        // Values pasted with the spaces or tabs around them that an HTTP
        // parser strips from a header's value, or cut from a dump whose
        // lines end in CRLF: checked as a receiver gets them.
        for (timestamp, signature) in [
            (format!(" {timestamp}\t"), format!("\t{signature} ")),
            (format!("{timestamp}\r"), format!("{signature}\r\n")),
        ] {
            let padded = verify(
                &[],
                secret,
                &file,
                (&timestamp, &signature),
                &now_ms_for(timestamp.trim()),
            );
            assert_eq!(padded.code, Some(0), "vector {}: {padded:?}", i + 1);
        }
    }

    // Vector 2's body signed as milliseconds does not verify as seconds.
    let (secret, _, body, _) = VECTORS[1];
    let file = BodyFile::new("verify-unit", body);
    let wrong_unit = "1e4fbb8a71c0d931bde57589f33cdeaa62b184bb9a4eda2035b00162aebf9821";
    let refused = verify(
        &[],
        secret,
        &file,
        ("1736942400", wrong_unit),
        "1736942400000",
    );
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused
            .stdout
            .starts_with("invalid (signature_mismatch): signature mismatch"),
        "{refused:?}"
    );

    // Vector 3's body without its trailing newline does not verify.
    let (secret, timestamp, body, signature) = VECTORS[2];
    let file = BodyFile::new("verify-newline", &body[..body.len() - 1]);
    let refused = verify(&[], secret, &file, (timestamp, signature), timestamp);
    assert_eq!(refused.code, Some(1), "{refused:?}");

    // Tolerance: accepted at the timestamp, refused 601 s later, as JSON.
    let (secret, timestamp, body, signature) = VECTORS[0];
    let file = BodyFile::new("verify-late", body);
    let late = verify(
        &["--json"],
        secret,
        &file,
        (timestamp, signature),
        "1700000601000",
    );
    assert_eq!(late.code, Some(1), "{late:?}");
    let json: Value = serde_json::from_str(late.stdout.trim()).unwrap();
    assert_eq!(json["valid"], false);
    assert_eq!(json["code"], "timestamp_too_old");
    assert!(
        json["message"].as_str().unwrap().contains("601.000 s old"),
        "{json}"
    );

    // A signature that is not 64 hex digits is malformed, as the library says.
    let malformed = verify(&[], secret, &file, (timestamp, "sha256=abc"), timestamp);
    assert_eq!(malformed.code, Some(1));
    assert!(
        malformed
            .stdout
            .starts_with("invalid (malformed_signature)"),
        "{malformed:?}"
    );
}

#[test]
fn fixture_prints_the_test_kit_body_of_every_type() {
    let listed = cli(&["fixture", "--list"]);
    let names: Vec<_> = listed.stdout.lines().collect();
    let expected: Vec<_> = EventType::ALL.iter().map(EventType::as_str).collect();
    assert_eq!(names, expected);
    for event_type in EventType::ALL {
        let printed = cli(&["fixture", event_type.as_str()]);
        assert_eq!(printed.code, Some(0));
        assert_eq!(printed.stdout, format!("{}\n", fixture(event_type)));
    }
    // With --json, JSON Lines: one object per type (it was one array).
    let listed = cli(&["fixture", "--list", "--json"]);
    let types: Vec<Value> = listed
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let expected_json: Vec<Value> = expected
        .iter()
        .map(|name| serde_json::json!({ "type": name }))
        .collect();
    assert_eq!(types, expected_json);
    let json = cli(&["fixture", "--json", "invoice.paid"]);
    assert_eq!(json.stdout.lines().count(), 1);
    let body: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(body["data"]["invoiceId"], "inv_test_123");
}

#[test]
fn an_unknown_event_type_is_a_usage_error_with_a_hint() {
    for args in [
        &["fixture", "order.paid"][..],
        &["send", "order.paid", "--to", "http://127.0.0.1:9/"][..],
    ] {
        let refused = cli(args);
        assert_eq!(refused.code, Some(2), "{refused:?}");
        assert!(
            refused.stderr.contains("invalid value 'order.paid'"),
            "{refused:?}"
        );
        assert!(refused.stderr.contains("'order.failed'"), "{refused:?}");
        assert!(
            refused.stderr.contains("order.succeeded, order.failed"),
            "{refused:?}"
        );
    }
}

/// `sign`, `verify` and `send` read a body of at most the layer's default
/// body limit (1 MiB), from a file or stdin: one byte more is refused with
/// exit 2 and a message naming the limit, before anything is signed or sent.
#[test]
fn a_body_over_the_limit_is_refused() {
    use std::io::Write;
    const LIMIT: usize = clink_webhooks::layer::DEFAULT_BODY_LIMIT;
    let refused = |finished: &Finished, what: &str| {
        assert_eq!(finished.code, Some(2), "{what}: {finished:?}");
        assert!(
            finished
                .stderr
                .contains("the body is larger than 1048576 bytes"),
            "{what}: {finished:?}"
        );
        assert!(finished.stdout.is_empty(), "{what}: {finished:?}");
    };
    let at = BodyFile::new("at-limit", &vec![b'x'; LIMIT]);
    let over = BodyFile::new("over-limit", &vec![b'x'; LIMIT + 1]);
    let signed = cli(&["sign", "--body-file", at.path()]);
    assert_eq!(signed.code, Some(0), "{signed:?}");
    for args in [
        &["sign", "--body-file", over.path()][..],
        &[
            "verify",
            "--body-file",
            over.path(),
            "--timestamp",
            "1700000000000",
            "--signature",
            "00",
        ][..],
        &[
            "send",
            "--body-file",
            over.path(),
            "--to",
            "http://127.0.0.1:9/",
        ][..],
    ] {
        refused(&cli(args), &format!("{args:?}"));
    }

    // From stdin: one byte over, written by a thread of its own (the
    // command stops reading once past the limit).
    let mut child = clink_webhook()
        .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
        .args(["sign", "--body-file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&vec![b'x'; LIMIT + 1]);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let finished = Finished {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    refused(&finished, "stdin");
    assert!(finished.stderr.contains("stdin: "), "{finished:?}");
}

#[test]
fn usage_and_io_errors_exit_2_with_a_clear_message() {
    let file = BodyFile::new("errors", b"{}");
    let text = BodyFile::new("errors-text", b"not json");
    let succeeded = BodyFile::new(
        "errors-succeeded",
        fixture(&EventType::OrderSucceeded).as_bytes(),
    );
    let cases: [(&[&str], &str); 10] = [
        (
            &[
                "send",
                "order.succeeded",
                "--to",
                "https://example.com/hooks",
            ],
            "TLS is not built in",
        ),
        (
            &["send", "order.succeeded", "--to", "example.com/hooks"],
            "expected an http:// URL with a host",
        ),
        (
            &["sign", "--body-file", "/nonexistent/body.json"],
            "cannot read /nonexistent/body.json",
        ),
        (
            &[
                "sign",
                "--secret",
                "env:CLINK_TEST_UNSET_VARIABLE",
                "--body-file",
                file.path(),
            ],
            "--secret env:CLINK_TEST_UNSET_VARIABLE: that environment variable is not set",
        ),
        // The secret itself after `env:`, by mistake: not repeated.
        (
            &[
                "sign",
                "--secret",
                "env:whsec_MfKQ9r8GKYqrTwjUPD8I",
                "--body-file",
                file.path(),
            ],
            "--secret env:NAME: NAME is not an environment variable's name",
        ),
        (
            &["sign", "--secret", "env:a+b/c=", "--body-file", file.path()],
            "--secret env:NAME: NAME is not an environment variable's name",
        ),
        // A secret of another shape that can be a variable's name: read,
        // not repeated.
        (
            &[
                "sign",
                "--secret",
                "env:Kq8dZ2mVx7Tn4Rw9",
                "--body-file",
                file.path(),
            ],
            "--secret env:NAME (a name with lower-case letters, not repeated",
        ),
        (
            &[
                "send",
                "--body-file",
                text.path(),
                "--to",
                "http://127.0.0.1:9/",
                "--unique",
            ],
            "--unique and --created need a body that is a JSON object",
        ),
        (
            &[
                "send",
                "order.created",
                "--body-file",
                succeeded.path(),
                "--to",
                "http://127.0.0.1:9/",
            ],
            "the body's type is order.succeeded, not order.created",
        ),
        (&["listen", "--path", "hooks"], "a path starts with /"),
    ];
    for (args, message) in cases {
        let refused = cli(args);
        assert_eq!(refused.code, Some(2), "{args:?}: {refused:?}");
        assert!(refused.stderr.contains(message), "{args:?}: {refused:?}");
        assert!(
            !refused.stderr.contains("MfKQ9r8GKYqrTwjUPD8I")
                && !refused.stderr.contains("a+b/c=")
                && !refused.stderr.contains("Kq8dZ2mVx7Tn4Rw9"),
            "{args:?}: {refused:?}"
        );
    }
    // A URL with credentials is refused without being repeated.
    let refused = cli(&[
        "send",
        "order.succeeded",
        "--to",
        "https://user:s3cret@example.com/",
    ]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        !refused.stderr.contains("s3cret") && !refused.stdout.contains("s3cret"),
        "{refused:?}"
    );
    let no_key = run(clink_webhook().args(["sign", "--body-file", file.path()]));
    assert_eq!(no_key.code, Some(2));
    assert!(
        no_key.stderr.contains("no signing key: pass --secret"),
        "{no_key:?}"
    );
}

#[test]
fn an_unreachable_receiver_is_an_io_error() {
    // A port held where nothing listens.
    let (_held, port) = crate::support::loopback::refusing_port();
    let url = format!("http://127.0.0.1:{port}/webhooks/clink");
    let sent = cli(&["send", "order.succeeded", "--to", &url]);
    assert_eq!(sent.code, Some(2), "{sent:?}");
    assert!(sent.stdout.contains("not delivered: "), "{sent:?}");
    assert!(sent.stdout.contains("not delivered 1"), "{sent:?}");
}

/// A receiver that answers `200` and then never sends the rest of its
/// answer's body: the status that came is the delivery's answer (exit 0),
/// not "no answer"; the body, which only adds detail, is given up on.
#[test]
fn a_status_that_came_stands_when_the_answer_s_body_stalls() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut connection, _) = listener.accept().unwrap();
        // The request's head and body come in one or two reads; one is
        // enough to answer.
        let mut request = [0u8; 64 * 1024];
        let _ = connection.read(&mut request).unwrap();
        connection
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{")
            .unwrap();
        connection.flush().unwrap();
        // Held open, the rest never sent, until the test is over.
        let _ = finished.recv();
    });
    let url = format!("http://127.0.0.1:{port}/webhooks/clink");
    let sent = cli(&["send", "order.succeeded", "--to", &url]);
    drop(done);
    server.join().unwrap();
    assert_eq!(sent.code, Some(0), "{sent:?}");
    assert_eq!(
        deliveries(&sent),
        ["1/1  200 OK  evt_order_succeeded_test"],
        "{sent:?}"
    );
}

/// The deliveries `send` printed (every line but the summary), each without
/// its latency: `n/total  status  event id`.
fn deliveries(finished: &Finished) -> Vec<&str> {
    let mut lines: Vec<&str> = finished.stdout.lines().collect();
    let summary = lines.pop().unwrap_or_default();
    assert!(summary.starts_with("sent "), "{finished:?}");
    lines
        .into_iter()
        .map(|line| line.rsplit_once("  ").map_or(line, |(head, _)| head))
        .collect()
}

/// Runs `clink-webhook send ARGS`, checking its exit code and the deliveries it printed.
fn send(args: &[&str], code: i32, expected: &[&str]) -> Finished {
    let sent = cli(&[&["send"], args].concat());
    assert_eq!(sent.code, Some(code), "{sent:?}");
    assert_eq!(deliveries(&sent), expected, "{sent:?}");
    sent
}

/// The README walkthrough, command by command, with what each terminal shows.
#[test]
fn the_readme_walkthrough_against_the_example_receiver() {
    let (receiver, to) = example_receiver(KEY);
    let to = to.as_str();

    // 1. order.succeeded is handled.
    let sent = send(
        &["order.succeeded", "--to", to],
        0,
        &["1/1  200 OK  evt_order_succeeded_test"],
    );
    assert!(sent
        .stdout
        .contains("sent 1: 2xx 1, 409 0, 4xx 0, 5xx 0; latency p50 "));
    assert_eq!(
        receiver.next_stdout(),
        "handled order.succeeded evt_order_succeeded_test"
    );

    // 2. Clink's retries of it are duplicates: 200, and the handler does not run.
    send(
        &["order.succeeded", "--to", to, "--repeat", "2"],
        0,
        &[
            "1/2  200 OK (duplicate)  evt_order_succeeded_test",
            "2/2  200 OK (duplicate)  evt_order_succeeded_test",
        ],
    );

    // 3. A tampered copy is refused (what --tamper expects: exit 0).
    let sent = send(
        &["order.succeeded", "--to", to, "--tamper"],
        0,
        &["1/1  401 Unauthorized (signature_mismatch)  evt_order_succeeded_test"],
    );
    assert!(
        sent.stdout.contains("sent 1: 2xx 0, 409 0, 4xx 1, 5xx 0"),
        "{sent:?}"
    );
    // The receiver's one line about it, as the README shows it.
    let refusal = loop {
        let line = receiver
            .stderr
            .recv_timeout(crate::support::process::PATIENCE)
            .expect("the receiver logs the refusal");
        if line.contains("deliveries refused before verification") {
            break line;
        }
    };
    assert!(
        refusal.contains(" WARN clink_webhooks::layer::refusals: clink deliveries refused before verification (summed up every 10 s while they go on; each at debug) refused=1 by_outcome=\"signature_mismatch=1\""),
        "{refusal}"
    );

    // 4. order.created, created before order.succeeded, arrives after it: stale.
    send(
        &["order.created", "--to", to],
        0,
        &["1/1  200 OK  evt_order_created_test"],
    );
    // Nothing was printed for the duplicates or the tampered copy.
    assert_eq!(
        receiver.next_stdout(),
        "handled order.created evt_order_created_test"
    );
    assert_eq!(
        Process::line_starting(&receiver.stderr, "note:"),
        "note: order.created evt_order_created_test is stale: \
         2025-01-15T12:00:00.000Z (evt_order_succeeded_test) was already handled"
    );
}

/// `clink-webhook listen` on a free port.
struct Listener {
    process: Process,
    url: String,
}

impl Listener {
    fn start(extra: &[&str]) -> Self {
        Self::start_with_key(KEY, extra)
    }

    /// `listen` verifying with `key` (`--secret env:NAME`).
    fn start_with_key(key: &str, extra: &[&str]) -> Self {
        let process = Process::start(
            clink_webhook()
                .args([
                    "listen",
                    "--port",
                    "0",
                    "--secret",
                    "env:CLINK_TEST_LISTEN_KEY",
                ])
                .args(extra)
                .env("CLINK_TEST_LISTEN_KEY", key),
        );
        let first = process.next_stdout();
        let url = match first.strip_prefix("listening on ") {
            Some(url) => url.to_owned(),
            None => serde_json::from_str::<Value>(&first).unwrap()["listening"]
                .as_str()
                .unwrap_or_else(|| panic!("no address in {first:?}"))
                .to_owned(),
        };
        Self { process, url }
    }
}

#[test]
fn listen_prints_each_delivery_send_sends() {
    let listener = Listener::start(&[]);
    let to = listener.url.as_str();
    assert!(
        to.starts_with("http://127.0.0.1:") && to.ends_with("/webhooks/clink"),
        "{to}"
    );

    send(
        &["order.succeeded", "--to", to, "--repeat", "2"],
        0,
        &[
            "1/2  200 OK  evt_order_succeeded_test",
            "2/2  200 OK (duplicate)  evt_order_succeeded_test",
        ],
    );
    assert_eq!(
        listener.process.next_stdout(),
        "200 handled  order.succeeded evt_order_succeeded_test  order:ord_test_123  fresh"
    );
    assert_eq!(
        listener.process.next_stdout(),
        "200 duplicate  order.succeeded evt_order_succeeded_test  order:ord_test_123"
    );

    assert_eq!(
        cli(&["send", "order.succeeded", "--to", to, "--tamper"]).code,
        Some(0)
    );
    // Nothing from an unverified body is printed.
    assert_eq!(
        listener.process.next_stdout(),
        "401 signature_mismatch  (unverified)"
    );
    // Signed with the key but no event: not marked unverified (the
    // signature checked out), and nothing of the body printed either.
    let not_an_event = BodyFile::new("listen-not-an-event", b"\x1b]0;not an event\x07");
    cli(&["send", "--body-file", not_an_event.path(), "--to", to]);
    assert_eq!(
        listener.process.next_stdout(),
        "400 invalid_json  (not an event)"
    );

    assert_eq!(cli(&["send", "order.created", "--to", to]).code, Some(0));
    assert_eq!(
        listener.process.next_stdout(),
        "200 handled  order.created evt_order_created_test  order:ord_test_123  \
         stale (newer: 2025-01-15T12:00:00.000Z (evt_order_succeeded_test))"
    );

    // A family without a schema: decoded as JSON, its object found by `<family>Id`.
    assert_eq!(
        cli(&["send", "risk_rule.updated", "--to", to]).code,
        Some(0)
    );
    assert_eq!(
        listener.process.next_stdout(),
        "200 handled  risk_rule.updated evt_risk_rule_updated_test  risk_rule:rr_test_123  fresh"
    );

    // Clock skew beyond the tolerance is refused before the body is read.
    let skewed = cli(&["send", "order.failed", "--to", to, "--skew", "-600"]);
    assert_eq!(skewed.code, Some(1));
    assert!(
        skewed
            .stdout
            .contains("401 Unauthorized (timestamp_too_old)"),
        "{skewed:?}"
    );
    assert_eq!(
        listener.process.next_stdout(),
        "401 timestamp_too_old  (unverified)"
    );

    // Seconds are accepted, and a body edited with --created is still signed as sent.
    let sent = cli(&[
        "send",
        "order.failed",
        "--to",
        to,
        "--timestamp-unit",
        "s",
        "--created",
        "2025-01-15T13:00:00Z",
    ]);
    assert_eq!(sent.code, Some(0), "{sent:?}");
    assert_eq!(
        listener.process.next_stdout(),
        "200 handled  order.failed evt_order_failed_test  order:ord_test_123  fresh"
    );

    // The other shapes of Clink's payloads are read alike: `created` in
    // milliseconds, `data` wrapped as `data.object` (its object found, its
    // time compared: older than the order.failed above).
    let sent = cli(&[
        "send",
        "order.next_action",
        "--to",
        to,
        "--created-ms",
        "--wrap-data",
    ]);
    assert_eq!(sent.code, Some(0), "{sent:?}");
    assert_eq!(
        listener.process.next_stdout(),
        "200 handled  order.next_action evt_order_next_action_test  order:ord_test_123  \
         stale (newer: 2025-01-15T13:00:00.000Z (evt_order_failed_test))"
    );

    // A typed event whose freshness is not tracked (no `created`) says so.
    let body = BodyFile::new(
        "listen-untracked",
        br#"{"id":"evt_untracked","type":"order.succeeded","data":{"orderId":"ord_u"}}"#,
    );
    let sent = cli(&[
        "send",
        "order.succeeded",
        "--to",
        to,
        "--body-file",
        body.path(),
    ]);
    assert_eq!(sent.code, Some(0), "{sent:?}");
    assert_eq!(
        listener.process.next_stdout(),
        "200 handled  order.succeeded evt_untracked  order:ord_u  untracked"
    );
    // No `created` to write in milliseconds: refused before anything is sent.
    let refused = cli(&[
        "send",
        "order.succeeded",
        "--to",
        to,
        "--body-file",
        body.path(),
        "--created-ms",
    ]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused
        .stderr
        .contains("--created-ms needs a body whose `created` is a time"));

    // Another path is not the endpoint.
    let elsewhere = to.replace("/webhooks/clink", "/other");
    assert_eq!(
        cli(&["send", "order.failed", "--to", &elsewhere]).code,
        Some(1)
    );
    assert_eq!(listener.process.next_stdout(), "404 not_found  POST /other");

    let stopped = listener.process.terminate();
    assert_eq!(stopped.code, Some(0), "{stopped:?}");
    assert!(stopped.stderr.ends_with("stopped\n"), "{stopped:?}");
}

#[test]
fn send_and_listen_speak_json_lines() {
    let listener = Listener::start(&["--json"]);
    let sent = cli(&[
        "send",
        "--json",
        "subscription.renewed",
        "--to",
        &listener.url,
    ]);
    // Not a known type: usage error before anything is sent.
    assert_eq!(sent.code, Some(2));

    let sent = cli(&[
        "send",
        "--json",
        "subscription.updated.renewed",
        "--to",
        &listener.url,
        "--repeat",
        "3",
        "--unique",
        "--concurrency",
        "3",
    ]);
    assert_eq!(sent.code, Some(0), "{sent:?}");
    let lines: Vec<Value> = sent
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{sent:?}");
    let mut ids: Vec<_> = lines[..3]
        .iter()
        .map(|l| {
            assert_eq!(l["status"], 200, "{l}");
            assert_eq!(l["detail"], Value::Null, "{l}");
            l["event_id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        3,
        "--unique gives every delivery its own id: {ids:?}"
    );
    let summary = &lines[3]["summary"];
    assert_eq!(summary["sent"], 3);
    assert_eq!(summary["2xx"], 3);
    assert!(summary["p99_ms"].as_f64().unwrap() >= summary["p50_ms"].as_f64().unwrap());

    let mut seen = Vec::new();
    for _ in 0..3 {
        let line: Value = serde_json::from_str(&listener.process.next_stdout()).unwrap();
        assert_eq!(line["status"], 200);
        assert_eq!(line["outcome"], "handled");
        assert_eq!(line["verified"], true);
        assert_eq!(line["event_type"], "subscription.updated.renewed");
        assert_eq!(line["object"], "subscription:sub_test_123");
        seen.push(line["event_id"].as_str().unwrap().to_owned());
    }
    seen.sort();
    assert_eq!(seen, ids);

    // Signed with the key, no event: verified, and nothing of it told.
    let not_an_event = BodyFile::new("listen-json-not-an-event", b"[1]");
    cli(&[
        "send",
        "--body-file",
        not_an_event.path(),
        "--to",
        &listener.url,
    ]);
    let line: Value = serde_json::from_str(&listener.process.next_stdout()).unwrap();
    assert_eq!(line["status"], 400, "{line}");
    assert_eq!(line["verified"], true, "{line}");
    assert_eq!(line["event_id"], Value::Null, "{line}");
    // Not signed with the key: not verified.
    cli(&["send", "order.created", "--to", &listener.url, "--tamper"]);
    let line: Value = serde_json::from_str(&listener.process.next_stdout()).unwrap();
    assert_eq!(line["status"], 401, "{line}");
    assert_eq!(line["verified"], false, "{line}");
}

/// A request for another path is printed as a 404 line, its path escaped:
/// in JSON too, where a right-to-left override is a `\u202e` escape, not
/// the raw character.
#[test]
fn listen_prints_a_404_path_escaped_in_json_and_text() {
    use std::io::{Read, Write};

    for json in [true, false] {
        let listener = Listener::start(if json { &["--json"] } else { &[] });
        let addr = listener
            .url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(crate::support::process::PATIENCE))
            .unwrap();
        stream
            .write_all(
                b"GET /\xe2\x80\xae HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 404"),
            "{}",
            String::from_utf8_lossy(&answer)
        );

        let line = listener.process.next_stdout();
        assert!(
            !line.chars().any(clink_webhooks::events::is_invisible),
            "{line:?}"
        );
        if json {
            assert!(line.contains(r#""path":"/\u202e""#), "{line}");
            let value: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(value["status"], 404, "{line}");
            assert_eq!(value["path"], "/\u{202e}", "{line}");
        } else {
            assert_eq!(line, r#"404 not_found  GET "/\u{202e}""#);
        }
    }
}

/// The signing key is read as `serve` reads it: several secrets, newest
/// first, separated by commas (during a rotation), each without the
/// whitespace around it (a secret file's newline, a CRLF `.env` file).
/// `verify` and `listen` accept a delivery signed with any of them; `sign`
/// and `send` sign with the newest; an empty one is refused without a
/// secret in the message. Before, a list was one secret, and a trailing
/// `\r\n` part of it: every delivery failed.
#[test]
fn a_key_list_is_read_as_the_gateway_reads_it() {
    const NEWEST: &str = "whsec_cli_newest_8e21";
    let body = b"{}";
    let file = BodyFile::new("key-list", body);
    let timestamp = "1700000000000";
    let list = format!(" {NEWEST} , {KEY}\r\n");
    let no_newest = |finished: &Finished| {
        assert!(
            !finished.stdout.contains(NEWEST) && !finished.stderr.contains(NEWEST),
            "a secret was printed: {finished:?}"
        );
    };
    let verify_with = |key: &str, signed_by: &str| {
        let finished = run(clink_webhook()
            .env("CLINK_WEBHOOK_SIGNING_KEY", key)
            .args(["verify", "--body-file", file.path()])
            .args(["--timestamp", timestamp, "--now-ms", timestamp])
            .args(["--signature", &sign(signed_by, timestamp, body)]));
        no_newest(&finished);
        finished
    };

    // The second secret of the list, and the first.
    for signed_by in [KEY, NEWEST] {
        let verified = verify_with(&list, signed_by);
        assert_eq!(verified.code, Some(0), "{verified:?}");
        assert!(verified.stdout.starts_with("valid: "), "{verified:?}");
    }
    // One secret with a CRLF after it, as a `.env` file written on Windows
    // gives it, and with a newline, as a secret file does.
    for padded in [format!("{KEY}\r\n"), format!("{KEY}\n")] {
        let verified = verify_with(&padded, KEY);
        assert_eq!(verified.code, Some(0), "{padded:?}: {verified:?}");
    }
    // A secret that is not in the list is still refused.
    let refused = verify_with(&list, "whsec_cli_not_in_the_list");
    assert_eq!(refused.code, Some(1), "{refused:?}");

    // `sign` signs with the newest secret, without its whitespace.
    let signed = run(clink_webhook()
        .env("CLINK_WEBHOOK_SIGNING_KEY", &list)
        .args(["sign", "--body-file", file.path(), "--timestamp", timestamp]));
    no_newest(&signed);
    assert_eq!(signed.code, Some(0), "{signed:?}");
    assert_eq!(
        signed.stdout,
        format!(
            "X-Clink-Timestamp: {timestamp}\nX-Clink-Signature: {}\n",
            sign(NEWEST, timestamp, body)
        )
    );

    // A stray comma is refused by every command, naming no secret.
    let path = file.path();
    for args in [
        &["sign", "--body-file", path][..],
        &[
            "verify",
            "--body-file",
            path,
            "--timestamp",
            timestamp,
            "--signature",
            "00",
        ],
        &["send", "order.succeeded", "--to", "http://127.0.0.1:9/"],
        &["listen", "--port", "0"],
    ] {
        let refused = run(clink_webhook()
            .env("CLINK_WEBHOOK_SIGNING_KEY", format!("{NEWEST},,{KEY}"))
            .args(args));
        no_newest(&refused);
        assert_eq!(refused.code, Some(2), "{args:?}: {refused:?}");
        assert!(
            refused.stderr.contains(
                "CLINK_WEBHOOK_SIGNING_KEY: signing secret 2 of the 3 in the list is empty \
                 (a stray comma?)"
            ),
            "{args:?}: {refused:?}"
        );
    }

    // `listen` accepts each secret of the list; `send` signs with the newest.
    let listener = Listener::start_with_key(&list, &[]);
    let sent = cli(&["send", "order.succeeded", "--to", &listener.url]);
    assert_eq!(sent.code, Some(0), "{sent:?}");
    assert_eq!(
        listener.process.next_stdout(),
        "200 handled  order.succeeded evt_order_succeeded_test  order:ord_test_123  fresh"
    );
    let receiver = Listener::start_with_key(NEWEST, &[]);
    let sent = run(clink_webhook()
        .env("CLINK_WEBHOOK_SIGNING_KEY", &list)
        .args(["send", "order.created", "--to", &receiver.url]));
    no_newest(&sent);
    assert_eq!(sent.code, Some(0), "{sent:?}");
    assert_eq!(
        receiver.process.next_stdout(),
        "200 handled  order.created evt_order_created_test  order:ord_test_123  fresh"
    );
}

/// A key of Clink's API typed where it does not belong is not echoed in the
/// error, whatever its environment's prefix: `sk_uat_` and `sk_live_` keys
/// (the sandbox's and production's other prefixes) as `sk_test_` and
/// `sk_prod_` ones are, though no variable holds it. Before, an `sk_uat_`
/// key was printed in the usage error.
#[test]
fn a_mistyped_api_key_is_redacted_from_the_usage_error_whatever_its_prefix() {
    let file = BodyFile::new("mistyped-key", b"{}");
    for key in [
        "sk_uat_mistyped_3b7e",
        "sk_live_mistyped_3b7e",
        "sk_test_mistyped_3b7e",
        "sk_prod_mistyped_3b7e",
    ] {
        for json in [false, true] {
            let mut command = clink_webhook();
            command.env_remove("CLINK_SECRET_KEY");
            if json {
                command.arg("--json");
            }
            let refused = run(command.args(["sign", "--body-file", file.path(), key]));
            assert_eq!(refused.code, Some(2), "{key}: {refused:?}");
            assert!(
                !refused.stderr.contains(key) && !refused.stdout.contains(key),
                "{key} printed: {refused:?}"
            );
            assert!(
                refused
                    .stderr
                    .contains("unexpected argument '[redacted]' found"),
                "{key}: {refused:?}"
            );
        }
    }
}

/// A second Ctrl-C while `listen` stops gracefully, a delivery in progress,
/// ends it at once: exit 130 and the error `interrupted`, in text and in
/// JSON; the first said how. Before, the second signal was ignored and
/// `listen` waited out its 10 s for the delivery.
#[cfg(unix)]
#[test]
fn a_second_ctrl_c_stops_listen_at_once() {
    for json in [false, true] {
        let listener = Listener::start(if json { &["--json"] } else { &[] });
        let held = delivery_in_progress(&listener.url, KEY);
        listener.process.signal("INT");
        let (stopping, again) = if json {
            (
                r#"{"note":"stopping"}"#,
                r#"{"note":"Ctrl-C again to stop at once"}"#,
            )
        } else {
            ("stopping", "Ctrl-C again to stop at once")
        };
        // Each note read in turn (a note printed otherwise is never found).
        Process::line_starting(&listener.process.stderr, stopping);
        Process::line_starting(&listener.process.stderr, again);
        listener.process.signal("INT");
        let finished = listener.process.finish();
        assert_eq!(finished.code, Some(130), "{finished:?}");
        let error = finished.stderr.lines().last().unwrap_or_default();
        if json {
            // Every line on stderr after the notes is a JSON object too.
            for line in finished.stderr.lines() {
                let _: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{e}: {line:?} in {finished:?}"));
            }
            let error: Value = serde_json::from_str(error).unwrap();
            assert_eq!(error["error"], "interrupted", "{finished:?}");
        } else {
            assert!(
                error.starts_with("error: stopped at once by a second Ctrl-C or SIGTERM"),
                "{finished:?}"
            );
        }
        drop(held);
    }
}

/// A second Ctrl-C stops `listen` at once though its stderr is a pipe
/// nobody reads any more, full: the error goes to stderr's queue like the
/// notes before it. Before, the error was written to stderr directly, and
/// `listen` hung in that write for as long as nobody read the pipe.
#[cfg(target_os = "linux")]
#[test]
fn a_second_ctrl_c_stops_listen_at_once_with_stderr_full() {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;

    let dir = std::env::temp_dir().join(format!(
        "clink-listen-stderr-{}-{}",
        std::process::id(),
        clink_webhooks::Timestamp::now().as_millis()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("stderr");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Both ends, without blocking: what fills the pipe, and a reader that
    // stays open however the test reads.
    const O_NONBLOCK: i32 = 0o4000;
    let mut filler = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let notes = std::fs::File::open(&fifo).unwrap();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "exec 2>'{}'; exec \"$0\" listen --port 0 --secret env:CLINK_TEST_LISTEN_KEY",
            fifo.display()
        ))
        .arg(env!("CARGO_BIN_EXE_clink-webhook"))
        .env("CLINK_TEST_LISTEN_KEY", KEY);
    let process = Process::start(&mut command);
    let first = process.next_stdout();
    let url = first.strip_prefix("listening on ").unwrap().to_owned();
    let held = delivery_in_progress(&url, KEY);
    process.signal("INT");
    // The notes read until the one that says a second signal stops it.
    let mut notes = BufReader::new(notes);
    let mut line = String::new();
    while !line.starts_with("Ctrl-C again to stop at once") {
        line.clear();
        assert_ne!(notes.read_line(&mut line).unwrap(), 0, "stderr ended");
    }
    drop(notes);
    // The pipe filled: a write of the process's to stderr now waits.
    for chunk in [&[b'.'; 4096][..], &b"."[..]] {
        loop {
            match filler.write(chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
    let pid = process.id();
    process.signal("INT");
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(process.finish());
    });
    // A bound on a hang only: the stop waits a second for stderr.
    let Ok(finished) = finished.recv_timeout(std::time::Duration::from_secs(120)) else {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("listen did not exit with its stderr full");
    };
    assert_eq!(finished.code, Some(130), "{finished:?}");
    drop((held, filler));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A key variable that is set, but not to UTF-8, is said to be so, not
/// "not set", whether `--secret env:NAME` names it or it is the default.
#[cfg(unix)]
#[test]
fn a_key_variable_not_in_utf8_is_said_to_be_so() {
    use std::os::unix::ffi::OsStrExt;

    let file = BodyFile::new("not-utf8-key.json", br#"{"id":"evt_1"}"#);
    let bad = std::ffi::OsStr::from_bytes(b"whsec_\xff");
    for (variable, secret) in [
        ("CLINK_TEST_NOT_UTF8", Some("env:CLINK_TEST_NOT_UTF8")),
        ("CLINK_WEBHOOK_SIGNING_KEY", None),
    ] {
        let mut command = clink_webhook();
        command
            .env(variable, bad)
            .args(["sign", "--body-file", file.path()]);
        if let Some(secret) = secret {
            command.args(["--secret", secret]);
        }
        let finished = run(&mut command);
        assert_eq!(finished.code, Some(2), "{finished:?}");
        assert!(
            finished.stderr.contains(&format!(
                "{variable}: that environment variable is not valid UTF-8"
            )),
            "{finished:?}"
        );
    }
}

/// `listen` on a free port, its stdout and stderr pipes left to the test.
#[cfg(unix)]
fn listen_with_pipes() -> std::process::Child {
    use std::process::Stdio;

    clink_webhook()
        .args([
            "listen",
            "--port",
            "0",
            "--secret",
            "env:CLINK_TEST_LISTEN_KEY",
        ])
        .env("CLINK_TEST_LISTEN_KEY", KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `listen` whose stderr is closed (piped into a reader that has exited)
/// still stops gracefully on SIGTERM, exit 0. Before, the line saying it
/// stops panicked on the closed pipe: exit 101, the graceful stop cut short.
#[cfg(unix)]
#[test]
fn listen_with_stderr_closed_stops_gracefully() {
    use std::io::{BufRead, BufReader};

    let mut child = listen_with_pipes();
    // The reader of stderr is gone before anything is written there.
    drop(child.stderr.take());
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with("listening on "), "{first:?}");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let exited = child.wait().unwrap();
    assert_eq!(exited.code(), Some(0), "{exited:?}");
}

/// Ctrl-C and SIGTERM sent together (a Ctrl-C to the process group, and a
/// supervisor passing a SIGTERM on) are one graceful stop, not a stop at
/// once: the delivery in progress is waited for. Before, the second one
/// stopped `listen` at once, with 130.
#[cfg(unix)]
#[test]
fn signals_sent_together_are_one_graceful_stop() {
    let listener = Listener::start(&[]);
    let held = delivery_in_progress(&listener.url, KEY);
    // Both from one shell's built-in `kill`, microseconds apart, however
    // busy the machine.
    let pid = listener.process.id();
    let sent = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {pid} && kill -TERM {pid}")])
        .status()
        .unwrap();
    assert!(sent.success(), "{sent:?}");
    Process::line_starting(&listener.process.stderr, "Ctrl-C again to stop at once");
    // The delivery in progress ends: the graceful stop has nothing left.
    drop(held);
    let finished = listener.process.finish();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(finished.stderr.contains("stopped"), "{finished:?}");
}

/// Kills the process when dropped (a test that failed half way).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `listen` whose stdout nobody reads (a pipe whose reader stopped) goes
/// on answering: 400 requests whose lines (each over 4 KiB, an escaped
/// path) fill the pipe, then the 1 MiB its queue holds, are all answered
/// `404`; the lines past the queue are dropped, said once on stderr, and
/// counted when it stops, and SIGTERM stops it gracefully (exit 0) though
/// stdout still takes nothing. Before, it wrote each line from the
/// delivery itself: once the pipe was full, the next delivery waited on
/// stdout for ever, and so did the stop.
#[cfg(unix)]
#[test]
fn listen_answers_and_stops_while_nobody_reads_its_stdout() {
    use std::io::{BufRead, Read, Write};

    let patience = crate::support::process::PATIENCE;
    let mut child = listen_with_pipes();
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let child = Killed(child);
    // The first line, and then nothing more is read from stdout.
    let mut stdout = std::io::BufReader::new(stdout);
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr = first
        .trim_end()
        .strip_prefix("listening on http://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(addr, _)| addr.to_owned())
        .unwrap_or_else(|| panic!("{first:?}"));
    let (said, notes) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if said.send(line).is_err() {
                return;
            }
        }
    });

    let path = format!("/{}", "x".repeat(4096));
    for n in 0..400 {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(patience)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("request {n} got no answer within {patience:?}: {e}"));
        assert!(answer.starts_with("HTTP/1.1 404"), "request {n}: {answer}");
    }
    let dropped_note = "stdout is not being read: lines are dropped while 1 MiB of them \
                        waits to be written";
    let next_note = || {
        notes
            .recv_timeout(patience)
            .unwrap_or_else(|e| panic!("no note on stderr within {patience:?}: {e}"))
    };
    assert_eq!(next_note(), dropped_note);

    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(next_note(), "stopping");
    let mut rest = Vec::new();
    loop {
        let note = next_note();
        if note == "stopped" {
            break;
        }
        rest.push(note);
    }
    let unprinted = rest
        .iter()
        .find_map(|note| {
            note.strip_suffix(" lines were not printed: stdout did not take them in time")
        })
        .unwrap_or_else(|| panic!("no count of the lines not printed in {rest:?}"));
    let unprinted: u64 = unprinted.parse().unwrap();
    // At least the lines past the queue, at most all but the first.
    assert!((100..=400).contains(&unprinted), "{unprinted}");
    let mut child = child;
    let deadline = std::time::Instant::now() + patience;
    let code = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status.code();
        }
        assert!(std::time::Instant::now() < deadline, "listen did not exit");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(code, Some(0));
    drop(stdout);
}
