//! What `clink-webhook` prints: errors as JSON with `--json`, `send --quiet`,
//! the progress bar's rounded rate, the hint after a 401, and values from a
//! receiver printed escaped. Self-contained: it starts its own receivers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The key the receivers use; it must never be printed.
const KEY: &str = "whsec_cli_output_key_9c2e";
/// Another key, for a sender whose key is not the receiver's.
const OTHER_KEY: &str = "whsec_cli_output_other_71ab";
/// A receiver's error code that tries to colour the terminal and fake a summary line.
const HOSTILE: &str = "\u{1b}[31mred\nsent 1: 2xx 1, 409 0, 4xx 0, 5xx 0";

fn clink_webhook() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clink-webhook"));
    command.env_remove("CLINK_WEBHOOK_SIGNING_KEY");
    command.env_remove("NO_COLOR");
    command
}

/// A finished run of the CLI.
#[derive(Debug)]
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Finished {
    /// stdout's lines, each parsed as JSON.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}: {self:?}"))
            })
            .collect()
    }

    /// The one JSON error on stderr, checked to be alone and to have a message.
    fn json_error(&self) -> Value {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one error object on stderr: {self:?}");
        let error: Value = serde_json::from_str(lines[0]).unwrap();
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
        error
    }
}

/// Runs the CLI to completion and checks it printed no secret.
fn run(command: &mut Command) -> Finished {
    let output = command.stdin(Stdio::null()).output().unwrap();
    let finished = Finished {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    };
    for secret in [KEY, OTHER_KEY] {
        assert!(
            !finished.stdout.contains(secret) && !finished.stderr.contains(secret),
            "a secret was printed: {finished:?}"
        );
    }
    finished
}

/// Runs `clink-webhook ARGS` with `KEY` in the environment.
fn cli(args: &[&str]) -> Finished {
    run(clink_webhook()
        .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
        .args(args))
}

/// A file holding `bytes`, removed when dropped.
struct BodyFile(PathBuf);

impl BodyFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!(
            "clink-webhook-output-test-{}-{name}",
            std::process::id()
        ));
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

/// `clink-webhook listen --port 0 --json` with `KEY`, killed when dropped.
struct Listener {
    child: Child,
    url: String,
}

impl Listener {
    fn start() -> Self {
        let mut child = clink_webhook()
            .args(["listen", "--port", "0", "--json", "--secret"])
            .arg("env:CLINK_TEST_OUTPUT_KEY")
            .env("CLINK_TEST_OUTPUT_KEY", KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let url = serde_json::from_str::<Value>(&first).unwrap()["listening"]
            .as_str()
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_owned();
        // Keep reading, so that a full pipe never stalls the listener.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Self { child, url }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A receiver that answers every request with `status` and a JSON body
/// `{"error": error}`. Its thread ends with the test process.
fn fixed_receiver(status: &'static str, error: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/webhooks/clink", listener.local_addr().unwrap());
    let body = serde_json::json!({ "error": error }).to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            // Read the request through its body before answering.
            let mut request = Vec::new();
            let mut buffer = [0; 4096];
            let complete = loop {
                let Ok(read) = stream.read(&mut buffer) else {
                    break false;
                };
                if read == 0 {
                    break false;
                }
                request.extend_from_slice(&buffer[..read]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|line| {
                            let (name, value) = line.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break true;
                    }
                }
            };
            if complete {
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        }
    });
    url
}

#[test]
fn clap_errors_are_json_with_json() {
    for args in [
        &["--json", "sign", "--bogus"][..],
        &["sign", "--bogus", "--json"][..],
        &["--json", "sign"][..],
        &[
            "--json",
            "send",
            "order.succeeded",
            "--to",
            "http://x/",
            "--repeat",
            "0",
        ][..],
        &["--json"][..],
    ] {
        let refused = cli(args);
        assert_eq!(refused.code, Some(2), "{args:?}: {refused:?}");
        assert_eq!(refused.stdout, "", "{args:?}: {refused:?}");
        let error = refused.json_error();
        assert_eq!(error["error"], "usage", "{args:?}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            !message.starts_with("error:") && !message.contains("Usage:"),
            "{message}"
        );
    }
    let unknown = cli(&["--json", "sign", "--bogus"]).json_error();
    assert_eq!(
        unknown["message"], "unexpected argument '--bogus' found",
        "{unknown}"
    );
    let missing = cli(&["sign", "--json"]).json_error();
    assert!(
        missing["message"]
            .as_str()
            .unwrap()
            .contains("--body-file <FILE>"),
        "{missing}"
    );

    // Without --json, clap's own text, as before.
    let text = cli(&["sign", "--bogus"]);
    assert_eq!(text.code, Some(2));
    assert!(
        text.stderr
            .starts_with("error: unexpected argument '--bogus' found"),
        "{text:?}"
    );

    // --help and --version still print normally, and exit 0.
    let help = cli(&["--json", "--help"]);
    assert_eq!(help.code, Some(0), "{help:?}");
    assert!(help.stdout.contains("Usage: clink-webhook"), "{help:?}");
    for code in [
        "usage",
        "unknown_event_type",
        "no_signing_key",
        "bad_url",
        "io",
        "invalid_signature",
        "non_2xx",
        "unreachable",
    ] {
        assert!(
            help.stdout.contains(&format!("\n  {code} ")),
            "{code} is documented: {help:?}"
        );
    }
    let version = cli(&["--version", "--json"]);
    assert_eq!(version.code, Some(0), "{version:?}");
    assert!(version.stdout.starts_with("clink-webhook "), "{version:?}");
}

/// A clap error never quotes a key, in text or with `--json`: not a value
/// of `--secret`, of the key variables (each comma-separated part) or of
/// the variable `--secret env:NAME` names, nor anything that starts as a
/// key does (`whsec_`), wherever the message repeats it.
#[test]
fn clap_errors_never_quote_a_key() {
    const PLAIN_NEW: &str = "plain_new_key_5521";
    const PLAIN_OLD: &str = "plain_old_key_7731";
    const API_KEY: &str = "plain_api_key_6610";
    let file = BodyFile::new("clap-keys", b"{}");
    let body = file.path();
    let both = format!("{PLAIN_NEW}, {PLAIN_OLD}");
    let cases: [(&[(&str, &str)], &[&str]); 9] = [
        // The key given after the one --secret takes.
        (
            &[],
            &["sign", "--secret", KEY, OTHER_KEY, "--body-file", body],
        ),
        (
            &[],
            &["sign", "--secret", KEY, "--body-file", body, OTHER_KEY],
        ),
        (
            &[("CLINK_WEBHOOK_SIGNING_KEY", KEY)],
            &["sign", "--body-file", body, KEY],
        ),
        // Keys without the prefix: known from where they are given.
        (
            &[("CLINK_WEBHOOK_SIGNING_KEY", &both)],
            &["sign", "--body-file", body, PLAIN_OLD],
        ),
        (
            &[],
            &[
                "sign",
                "--secret",
                PLAIN_NEW,
                "--body-file",
                body,
                PLAIN_NEW,
            ],
        ),
        (
            &[("CLINK_TEST_OUTPUT_KEY", &both)],
            &["sign", "--secret", "env:CLINK_TEST_OUTPUT_KEY", PLAIN_NEW],
        ),
        (&[("CLINK_SECRET_KEY", API_KEY)], &["api", API_KEY]),
        // An invalid value, an unknown subcommand, an unknown event type.
        (
            &[],
            &[
                "verify",
                "--body-file",
                body,
                "--timestamp",
                "1",
                "--signature",
                "s",
                "--tolerance-seconds",
                OTHER_KEY,
            ],
        ),
        (&[], &[OTHER_KEY]),
    ];
    for (env, args) in cases {
        for json in [false, true] {
            let mut command = clink_webhook();
            command.envs(env.iter().copied());
            if json {
                command.arg("--json");
            }
            let refused = run(command.args(args));
            assert_eq!(refused.code, Some(2), "{args:?}: {refused:?}");
            assert_eq!(refused.stdout, "", "{args:?}: {refused:?}");
            for secret in [PLAIN_NEW, PLAIN_OLD, API_KEY] {
                assert!(
                    !refused.stderr.contains(secret),
                    "{secret} printed: {refused:?}"
                );
            }
            let message = if json {
                refused.json_error()["message"].as_str().unwrap().to_owned()
            } else {
                assert!(refused.stderr.starts_with("error: "), "{refused:?}");
                refused.stderr.clone()
            };
            assert!(message.contains("[redacted]"), "{args:?}: {message}");
        }
    }
    let unknown = run(clink_webhook().args(["fixture", OTHER_KEY]));
    assert_eq!(unknown.code, Some(2), "{unknown:?}");

    // Text errors keep clap's usage and pointer to --help.
    let text = run(clink_webhook().args(["sign", "--secret", KEY, OTHER_KEY]));
    assert!(
        text.stderr
            .starts_with("error: unexpected argument '[redacted]' found")
            && text.stderr.contains("Usage: clink-webhook sign")
            && text.stderr.contains("For more information, try '--help'."),
        "{text:?}"
    );
    // Help and version print and exit 0; so does help with a key given.
    for args in [
        &["sign", "--secret", KEY, "--help"][..],
        &["--help"][..],
        &["--version"][..],
    ] {
        let shown = run(clink_webhook().args(args));
        assert_eq!(shown.code, Some(0), "{args:?}: {shown:?}");
        assert!(
            shown.stdout.starts_with("clink-webhook ") || shown.stdout.contains("Usage:"),
            "{shown:?}"
        );
    }
    // No command: the help on stderr, exit 2, as before.
    let bare = run(&mut clink_webhook());
    assert_eq!(bare.code, Some(2), "{bare:?}");
    assert!(bare.stderr.contains("Usage: clink-webhook"), "{bare:?}");
}

#[test]
fn an_unknown_event_type_is_a_json_error() {
    for args in [
        &["--json", "fixture", "order.paid"][..],
        &[
            "send",
            "--json",
            "order.paid",
            "--to",
            "http://127.0.0.1:9/",
        ][..],
    ] {
        let refused = cli(args);
        assert_eq!(refused.code, Some(2), "{refused:?}");
        assert_eq!(refused.stdout, "", "{refused:?}");
        let error = refused.json_error();
        assert_eq!(error["error"], "unknown_event_type", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("invalid value 'order.paid'"), "{message}");
        assert!(message.contains("'order.failed'"), "the nearest: {message}");
        assert!(message.contains("fixture --list"), "{message}");
    }
    // Another argument's invalid value is a usage error.
    let refused = cli(&[
        "--json",
        "send",
        "order.succeeded",
        "--to",
        "http://x/",
        "--timestamp-unit",
        "ns",
    ]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert_eq!(refused.json_error()["error"], "usage");
    // So is a `--type` given no value: no name to look up.
    for args in [
        &["--json", "inbox", "--sqlite", "f", "list", "--type"][..],
        &["--json", "inbox", "--sqlite", "f", "replay", "--type"][..],
    ] {
        let refused = cli(args);
        assert_eq!(refused.code, Some(2), "{refused:?}");
        let error = refused.json_error();
        assert_eq!(error["error"], "usage", "{error}");
        assert!(!error["message"]
            .as_str()
            .unwrap()
            .contains("fixture --list"));
    }
}

#[test]
fn a_missing_key_is_a_json_error() {
    let file = BodyFile::new("no-key", b"{}");
    let no_key = run(clink_webhook().args(["--json", "sign", "--body-file", file.path()]));
    assert_eq!(no_key.code, Some(2), "{no_key:?}");
    assert_eq!(no_key.stdout, "");
    let error = no_key.json_error();
    assert_eq!(error["error"], "no_signing_key", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("pass --secret SECRET"),
        "{error}"
    );

    let unset = run(clink_webhook().args([
        "sign",
        "--json",
        "--secret",
        "env:CLINK_TEST_OUTPUT_UNSET",
        "--body-file",
        file.path(),
    ]));
    assert_eq!(unset.code, Some(2));
    assert_eq!(unset.json_error()["error"], "no_signing_key");

    // In text, the message as before.
    let text = run(clink_webhook().args(["sign", "--body-file", file.path()]));
    assert_eq!(text.code, Some(2));
    assert!(
        text.stderr
            .starts_with("error: no signing key: pass --secret"),
        "{text:?}"
    );
}

#[test]
fn other_errors_are_json_with_their_codes() {
    let file = BodyFile::new("other", b"{}");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--json",
                "send",
                "order.succeeded",
                "--to",
                "https://user:s3cret@example.com/",
            ],
            "bad_url",
        ),
        (
            &["--json", "send", "order.succeeded", "--to", "example.com/x"],
            "bad_url",
        ),
        (
            &["--json", "sign", "--body-file", "/nonexistent/body.json"],
            "io",
        ),
        (&["--json", "listen", "--path", "hooks"], "usage"),
    ];
    for (args, code) in cases {
        let refused = cli(args);
        assert_eq!(refused.code, Some(2), "{args:?}: {refused:?}");
        let error = refused.json_error();
        assert_eq!(error["error"], code, "{args:?}: {error}");
        assert!(!refused.stderr.contains("s3cret"), "{refused:?}");
    }

    // A failed verification: the result on stdout as before, the error on stderr, exit 1.
    let invalid = cli(&[
        "verify",
        "--json",
        "--body-file",
        file.path(),
        "--timestamp",
        "1700000000000",
        "--signature",
        &"0".repeat(64),
        "--now-ms",
        "1700000000000",
    ]);
    assert_eq!(invalid.code, Some(1), "{invalid:?}");
    assert_eq!(invalid.json_lines()[0]["code"], "signature_mismatch");
    assert_eq!(invalid.json_error()["error"], "invalid_signature");

    // Nobody listening: the deliveries and summary on stdout, the error on stderr, exit 2.
    let (_held, port) = crate::support::loopback::refusing_port();
    let to = format!("http://127.0.0.1:{port}/webhooks/clink");
    let unreachable = cli(&["--json", "send", "order.succeeded", "--to", &to]);
    assert_eq!(unreachable.code, Some(2), "{unreachable:?}");
    assert_eq!(unreachable.json_lines().len(), 2, "{unreachable:?}");
    assert_eq!(unreachable.json_error()["error"], "unreachable");
}

#[test]
fn send_quiet_prints_only_the_summary() {
    let listener = Listener::start();
    let to = listener.url.as_str();
    let quiet = cli(&[
        "send",
        "order.succeeded",
        "--to",
        to,
        "--repeat",
        "60",
        "--unique",
        "--concurrency",
        "4",
        "--quiet",
    ]);
    assert_eq!(quiet.code, Some(0), "{quiet:?}");
    let lines: Vec<&str> = quiet.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{quiet:?}");
    assert!(
        lines[0].starts_with("sent 60: 2xx 60, 409 0, 4xx 0, 5xx 0; latency p50 "),
        "{quiet:?}"
    );
    assert_eq!(quiet.stderr, "", "no progress bar: {quiet:?}");

    let json = cli(&[
        "send",
        "order.succeeded",
        "--to",
        to,
        "--repeat",
        "5",
        "-q",
        "--json",
    ]);
    assert_eq!(json.code, Some(0), "{json:?}");
    let lines = json.json_lines();
    assert_eq!(lines.len(), 1, "{json:?}");
    let summary = &lines[0]["summary"];
    assert_eq!(summary["sent"], 5, "{json:?}");
    assert_eq!(summary["2xx"], 5, "{json:?}");
    assert_eq!(json.stderr, "", "{json:?}");

    // Without --quiet, one line per delivery and the summary.
    let loud = cli(&["send", "order.succeeded", "--to", to, "--repeat", "3"]);
    assert_eq!(loud.stdout.lines().count(), 4, "{loud:?}");
}

/// Runs `send` with `OTHER_KEY`, which the listener does not have.
fn send_with_the_other_key(args: &[&str]) -> Finished {
    run(clink_webhook()
        .env("CLINK_WEBHOOK_SIGNING_KEY", OTHER_KEY)
        .arg("send")
        .args(args))
}

#[test]
fn a_401_gets_one_hint() {
    let listener = Listener::start();
    let to = listener.url.as_str();

    let text = send_with_the_other_key(&["order.succeeded", "--to", to, "--repeat", "3"]);
    assert_eq!(text.code, Some(1), "{text:?}");
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{text:?}");
    assert!(
        lines[..3]
            .iter()
            .all(|line| line.contains("401 Unauthorized (signature_mismatch)")),
        "{text:?}"
    );
    assert!(
        lines[3].starts_with("sent 3: 2xx 0, 409 0, 4xx 3, 5xx 0"),
        "{text:?}"
    );
    let all = format!("{}{}", text.stdout, text.stderr);
    assert_eq!(all.matches("hint:").count(), 1, "once: {text:?}");
    assert_eq!(all.matches("signing key").count(), 1, "{text:?}");
    let hint = text
        .stderr
        .lines()
        .find(|line| line.starts_with("hint: "))
        .unwrap_or_else(|| panic!("the hint follows the summary, on stderr: {text:?}"));
    assert!(
        hint.contains("--secret") && hint.contains("CLINK_WEBHOOK_SIGNING_KEY"),
        "{hint}"
    );

    let json = send_with_the_other_key(&["--json", "order.succeeded", "--to", to, "--repeat", "3"]);
    assert_eq!(json.code, Some(1), "{json:?}");
    let lines = json.json_lines();
    assert_eq!(lines.len(), 4, "{json:?}");
    for delivery in &lines[..3] {
        assert_eq!(delivery["status"], 401, "{delivery}");
        assert_eq!(delivery["detail"], "signature_mismatch", "{delivery}");
        assert!(delivery.get("hint").is_none(), "{delivery}");
    }
    assert_eq!(lines[3]["summary"]["4xx"], 3, "{json:?}");
    let hint = lines[3]["hint"]
        .as_str()
        .unwrap_or_else(|| panic!("{json:?}"));
    assert!(hint.contains("--secret"), "{hint}");
    assert_eq!(json.stdout.matches("hint").count(), 1, "{json:?}");
    let error = json.json_error();
    assert_eq!(error["error"], "non_2xx", "{error}");
    assert!(error.get("hint").is_none(), "{error}");

    // --quiet --json: the summary alone, hint included.
    let quiet = send_with_the_other_key(&[
        "--json",
        "order.succeeded",
        "--to",
        to,
        "--repeat",
        "2",
        "--quiet",
    ]);
    let lines = quiet.json_lines();
    assert_eq!(lines.len(), 1, "{quiet:?}");
    assert!(lines[0]["hint"].is_string(), "{quiet:?}");

    // A 401 that --tamper asked for is success, and needs no hint.
    let tampered = cli(&["send", "order.succeeded", "--to", to, "--tamper"]);
    assert_eq!(tampered.code, Some(0), "{tampered:?}");
    assert!(
        !tampered.stdout.contains("hint") && !tampered.stderr.contains("hint"),
        "{tampered:?}"
    );
    // Nor a 2xx.
    let handled = cli(&["send", "order.failed", "--to", to]);
    assert_eq!(handled.code, Some(0), "{handled:?}");
    assert_eq!(handled.stderr, "", "{handled:?}");
}

/// `send --tamper` fails (exit 1, `tamper_accepted`) against a receiver
/// that takes the tampered delivery, or answers it anything but `401`.
#[test]
fn a_receiver_that_takes_a_tampered_body_fails_send_tamper() {
    for status in ["200 OK", "400 Bad Request"] {
        let to = fixed_receiver(status, "none");
        let sent = cli(&["send", "--json", "order.succeeded", "--to", &to, "--tamper"]);
        assert_eq!(sent.code, Some(1), "{status}: {sent:?}");
        let error = sent.json_error();
        assert_eq!(error["error"], "tamper_accepted", "{status}: {error}");
        // In text too, it says why it failed, not only the statuses.
        let text = cli(&["send", "order.succeeded", "--to", &to, "--tamper"]);
        assert_eq!(text.code, Some(1), "{status}: {text:?}");
        assert!(
            text.stderr
                .starts_with("error: 1 of 1 tampered deliveries got a status other than 401 ("),
            "{status}: {text:?}"
        );
    }
}

#[test]
fn a_receivers_values_are_printed_escaped() {
    let to = fixed_receiver("400 Bad Request", HOSTILE);
    let text = cli(&["send", "order.succeeded", "--to", &to]);
    assert_eq!(text.code, Some(1), "{text:?}");
    assert!(!text.stdout.contains('\u{1b}'), "{text:?}");
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "no faked line: {text:?}");
    assert!(
        lines[0].starts_with(&format!("1/1  400 Bad Request ({HOSTILE:?})  ")),
        "{text:?}"
    );
    assert!(
        lines[0].contains(r#"("\u{1b}[31mred\nsent 1: 2xx 1, 409 0, 4xx 0, 5xx 0")"#),
        "{text:?}"
    );
    assert!(
        lines[1].starts_with("sent 1: 2xx 0, 409 0, 4xx 1, 5xx 0"),
        "{text:?}"
    );

    // In JSON the value is a JSON string, escaped by JSON itself.
    let json = cli(&["--json", "send", "order.succeeded", "--to", &to]);
    assert_eq!(json.code, Some(1), "{json:?}");
    assert!(!json.stdout.contains('\u{1b}'), "{json:?}");
    let lines = json.json_lines();
    assert_eq!(lines.len(), 2, "{json:?}");
    assert_eq!(lines[0]["detail"], HOSTILE, "{json:?}");

    // Quotes too; a plain code is printed as it is.
    let quoted = fixed_receiver("422 Unprocessable Entity", r#"say "hi""#);
    let text = cli(&["send", "order.succeeded", "--to", &quoted]);
    assert!(
        text.stdout
            .starts_with(r#"1/1  422 Unprocessable Entity ("say \"hi\"")  "#),
        "{text:?}"
    );
    let plain = fixed_receiver("401 Unauthorized", "signature_mismatch");
    let text = cli(&["send", "order.succeeded", "--to", &plain]);
    assert!(
        text.stdout
            .starts_with("1/1  401 Unauthorized (signature_mismatch)  "),
        "{text:?}"
    );
    // The hint does not repeat what the receiver said.
    let hostile_401 = fixed_receiver("401 Unauthorized", HOSTILE);
    let text = cli(&["send", "order.succeeded", "--to", &hostile_401]);
    let hint = text.stderr.lines().find(|l| l.starts_with("hint: "));
    assert!(hint.is_some_and(|h| !h.contains("red")), "{text:?}");
    assert!(!text.stderr.contains('\u{1b}'), "{text:?}");
}

/// Whether `text` holds a character that does not show as itself, other
/// than the line breaks between lines.
fn has_invisible(text: &str) -> bool {
    text.chars()
        .any(|c| c != '\n' && clink_webhooks::events::is_invisible(c))
}

/// A body whose type is too long to be an event's is still told apart
/// from the type asked for, not sent as that type.
#[test]
fn a_body_files_type_too_long_for_an_event_is_told_apart_too() {
    let long = format!("x.{}", "y".repeat(200));
    let file = BodyFile::new(
        "long-type",
        format!(r#"{{"id":"evt_1","type":"{long}","data":{{}}}}"#).as_bytes(),
    );
    let text = cli(&[
        "send",
        "order.succeeded",
        "--body-file",
        file.path(),
        "--to",
        "http://127.0.0.1:9/webhooks/clink",
    ]);
    assert_eq!(text.code, Some(2), "{text:?}");
    assert!(
        text.stderr.starts_with(&format!(
            "error: the body's type is {long}, not order.succeeded"
        )),
        "{text:?}"
    );
}

#[test]
fn a_body_files_type_is_printed_escaped_in_errors() {
    // A type that colours the terminal, reverses the text after it and
    // breaks the line in some viewers, in JSON escapes.
    let file = BodyFile::new(
        "hostile-type",
        br#"{"id":"evt_1","type":"\u001b[31morder.created\u202e\u2028x","data":{}}"#,
    );
    let hostile = "\u{1b}[31morder.created\u{202e}\u{2028}x";
    let shown = clink_webhooks::events::printable(hostile);
    let args = [
        "send",
        "order.succeeded",
        "--body-file",
        file.path(),
        "--to",
        "http://127.0.0.1:9/webhooks/clink",
    ];

    let text = cli(&args);
    assert_eq!(text.code, Some(2), "{text:?}");
    assert!(!has_invisible(&text.stderr), "{text:?}");
    assert!(
        text.stderr.starts_with(&format!(
            "error: the body's type is {shown}, not order.succeeded"
        )),
        "{text:?}"
    );

    let json = cli(&[&["--json"], &args[..]].concat());
    assert_eq!(json.code, Some(2), "{json:?}");
    assert!(!has_invisible(&json.stderr), "{json:?}");
    let error = json.json_error();
    assert_eq!(error["error"], "usage", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("the body's type is {shown}, not order.succeeded")),
        "{error}"
    );
}

/// The rate on `send`'s progress bar, which shows on a terminal only: run
/// under `script` for one.
#[cfg(target_os = "linux")]
#[test]
fn the_progress_bar_rate_is_rounded() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` to give the CLI a terminal");
        return;
    }
    let listener = Listener::start();
    let command = format!(
        "'{}' send order.succeeded --to '{}' --repeat 2000 --concurrency 4 --unique",
        env!("CARGO_BIN_EXE_clink-webhook"),
        listener.url
    );
    let output = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{screen}");
    assert!(screen.contains("sent 2000: 2xx 2000"), "{screen}");
    let rates: Vec<&str> = screen
        .split(" sent, ")
        .skip(1)
        .filter_map(|after| after.split_once("/s (").map(|(rate, _)| rate))
        .collect();
    assert!(!rates.is_empty(), "a progress bar with a rate: {screen}");
    for rate in rates {
        let (whole, tenths) = rate.split_once('.').unwrap_or((rate, ""));
        let digits = whole.replace(',', "");
        let value: u64 = digits
            .parse()
            .unwrap_or_else(|_| panic!("rate {rate:?} in {screen}"));
        assert!(
            tenths.is_empty() || (value < 100 && tenths.len() == 1),
            "{rate:?} is not rounded"
        );
    }
}
