//! The README's first command: the example receiver, run as a real process.

use clink_webhooks::testing::SignedRequest;

use crate::support::loopback::client;
#[cfg(unix)]
use crate::support::process::delivery_in_progress;
use crate::support::process::{
    admin_url, example_path, example_receiver, example_receiver_with_store, Process, PATIENCE,
};

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

/// Example `name` on a free port, with `key` as `CLINK_WEBHOOK_SIGNING_KEY`
/// (`None`: not set) and none of this process's store variables.
fn example(name: &str, key: Option<&str>) -> Process {
    let mut command = std::process::Command::new(example_path(name));
    command
        .env("PORT", "0")
        .env_remove("CLINK_WEBHOOK_SIGNING_KEY")
        .env_remove("CLINK_INBOX")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL");
    if let Some(key) = key {
        command.env("CLINK_WEBHOOK_SIGNING_KEY", key);
    }
    Process::start(&mut command)
}

/// The first line on `process`'s stderr that says whether it started:
/// `error: ...` or `listening on ...`.
fn first_line_on_starting(process: &Process, name: &str) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = process
            .stderr
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("{name} said nothing within {PATIENCE:?}: {e}"));
        if line.starts_with("error: ") || line.starts_with("listening on ") {
            return line;
        }
    }
}

/// Without a signing key, no example that verifies deliveries starts: each
/// exits 1 before it listens (or verifies anything), and says which
/// variable to set and how to try it with a development key.
#[test]
fn the_example_receivers_refuse_to_start_without_a_signing_key() {
    for name in ["axum_receiver", "hyper_receiver", "verify_only"] {
        for (key, problem) in [(None, "is not set"), (Some(""), "is empty")] {
            let process = example(name, key);
            let said = first_line_on_starting(&process, name);
            assert!(
                said.starts_with(&format!("error: CLINK_WEBHOOK_SIGNING_KEY {problem}: ")),
                "{name} with the key {key:?}: {said}"
            );
            assert!(
                said.contains(&format!(
                    "CLINK_WEBHOOK_SIGNING_KEY=whsec_clink_webhooks_development_only \
                     cargo run --example {name}"
                )),
                "{said}"
            );
            let finished = process.finish();
            assert_eq!(finished.code, Some(1), "{name}: {finished:?}");
            assert_eq!(finished.stdout, "", "{name}: {finished:?}");
            assert!(
                !finished.stderr.contains("listening on"),
                "{name}: {finished:?}"
            );
        }
    }
}

/// A setting that is not the number (or address) it should be stops the
/// example before it listens: it exits 1 with one line naming the variable
/// and showing the value, escaped. Before, the receivers' inbox and handler
/// settings quietly became their defaults.
#[test]
fn the_examples_refuse_to_start_with_a_number_that_is_not_one() {
    let cases = [
        ("axum_receiver", "CLINK_INBOX_REORDER_MS", "1s", "1s"),
        ("axum_receiver", "CLINK_INBOX_LEASE_MS", "-30000", "-30000"),
        ("axum_receiver", "CLINK_INBOX_MAX_ATTEMPTS", "ten", "ten"),
        (
            "axum_receiver",
            "CLINK_EXAMPLE_HANDLER_DELAY_MS",
            "2000\u{202e}",
            r#""2000\u{202e}""#,
        ),
        ("axum_receiver", "PORT", "http", "http"),
        ("hyper_receiver", "PORT", "30\n01", r#""30\n01""#),
        ("multi_tenant", "PORT", "70000", "70000"),
        ("multi_tenant", "CLINK_TENANT_LOOKUP_MS", "20ms", "20ms"),
        // Checked when the lookup is off too.
        ("multi_tenant", "CLINK_TENANT_LOOKUP_FAILS", "yes", "yes"),
        ("axum_receiver", "CLINK_BIND", "localhost", "localhost"),
        (
            "axum_receiver",
            "CLINK_ADMIN_ADDR",
            "127.0.0.1",
            "127.0.0.1",
        ),
        ("hyper_receiver", "CLINK_ADMIN_ADDR", "[::1]", "[::1]"),
        ("multi_tenant", "CLINK_BIND", "0.0.0.0:3000", "0.0.0.0:3000"),
    ];
    for (name, var, value, shown) in cases {
        let mut command = std::process::Command::new(example_path(name));
        command
            .env("PORT", "0")
            .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
            .env("CLINK_TENANT_KEYS", "acct_a=whsec_a")
            .env_remove("CLINK_TENANT_KEYS_FILE")
            .env_remove("CLINK_TENANT_LOOKUP_MS")
            .env_remove("CLINK_INBOX")
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL")
            .env(var, value);
        let process = Process::start(&mut command);
        let said = first_line_on_starting(&process, name);
        assert!(
            said.starts_with(&format!("error: {var} must be "))
                && said.ends_with(&format!(", got {shown}")),
            "{name} with {var}={value:?}: {said}"
        );
        let finished = process.finish();
        assert_eq!(finished.code, Some(1), "{name} {var}: {finished:?}");
        assert!(
            !finished.stderr.contains("listening on"),
            "{name} {var}: {finished:?}"
        );
    }
}

/// A key with whitespace around it (a secret mounted from a file, ending
/// with a newline) is used without it: a delivery signed with the key
/// itself is handled by each example receiver, and verify_only verifies
/// its samples.
#[tokio::test]
async fn the_examples_use_the_signing_key_without_the_whitespace_around_it() {
    let padded = format!(" {KEY}\n");
    for name in ["axum_receiver", "hyper_receiver"] {
        let process = example(name, Some(&padded));
        let line = Process::line_starting(&process.stderr, "listening on ");
        let url = &line["listening on ".len()..];
        let body =
            format!(r#"{{"id":"evt_padded_{name}","type":"risk_rule.updated","data":{{}}}}"#);
        assert_eq!(post(&delivery(url, &body)).await, 200, "{name}");
        assert_eq!(
            process.next_stdout(),
            format!("handled risk_rule.updated evt_padded_{name}")
        );
    }
    let finished = example("verify_only", Some(&padded)).finish();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(
        finished.stdout.contains(r#"event id "evt_1""#),
        "{finished:?}"
    );
}

/// During a rotation `CLINK_WEBHOOK_SIGNING_KEY` holds the secrets newest
/// first, separated by commas, as the gateway reads it: each example
/// receiver accepts a delivery signed with the old secret and one signed
/// with the new, each secret without the whitespace around it, and
/// verify_only verifies its samples. A stray comma stops them before they
/// listen, naming no secret. Before, the list was one secret, and every
/// delivery got 401.
#[tokio::test]
async fn the_examples_accept_every_secret_of_a_rotation() {
    const NEW_KEY: &str = "whsec_example_rotated_in";
    let list = format!(" {NEW_KEY} ,{KEY}\r\n");
    for name in ["axum_receiver", "hyper_receiver"] {
        let process = example(name, Some(&list));
        let line = Process::line_starting(&process.stderr, "listening on ");
        let url = &line["listening on ".len()..];
        for (secret, id) in [(KEY, "old"), (NEW_KEY, "new")] {
            let body = format!(
                r#"{{"id":"evt_rotation_{id}_{name}","type":"risk_rule.updated","data":{{}}}}"#
            );
            let signed = SignedRequest::new(secret, body).uri(url);
            assert_eq!(post(&signed).await, 200, "{name}, the {id} secret");
            assert_eq!(
                process.next_stdout(),
                format!("handled risk_rule.updated evt_rotation_{id}_{name}")
            );
        }
        let forged = SignedRequest::new("whsec_example_never_given", "{}".to_owned()).uri(url);
        assert_eq!(post(&forged).await, 401, "{name}");
    }
    let finished = example("verify_only", Some(&list)).finish();
    assert_eq!(finished.code, Some(0), "{finished:?}");

    for name in ["axum_receiver", "hyper_receiver", "verify_only"] {
        let process = example(name, Some(&format!("{NEW_KEY},,{KEY}")));
        let said = first_line_on_starting(&process, name);
        assert_eq!(
            said,
            "error: CLINK_WEBHOOK_SIGNING_KEY: signing secret 2 of the 3 in the list is empty \
             (a stray comma?): give the secrets newest first, separated by single commas",
            "{name}"
        );
        let finished = process.finish();
        assert_eq!(finished.code, Some(1), "{name}: {finished:?}");
    }
}

/// With `CLINK_WEBHOOK_OLD_KEYS_EXPIRE`, the older secrets of a rotation's
/// list are accepted until that time only: once it has passed, a delivery
/// signed with the old secret is refused `401` while the new one's is
/// handled, and the receiver says on stderr that it has passed. A time to
/// come keeps the old secret working; without one, a list of several
/// secrets starts with a warning that they never expire; a value that is no
/// time stops the receiver before it listens. Before, a secret rotated out
/// stayed valid until someone took it out of the list and restarted.
#[tokio::test]
async fn the_example_receivers_stop_accepting_an_old_secret_when_the_rotation_ends() {
    const NEW_KEY: &str = "whsec_example_rotated_in";
    const VAR: &str = "CLINK_WEBHOOK_OLD_KEYS_EXPIRE";
    let list = format!("{NEW_KEY},{KEY}");
    let start = |name: &str, expires: Option<&str>| {
        let mut command = std::process::Command::new(example_path(name));
        command
            .env("PORT", "0")
            .env("CLINK_WEBHOOK_SIGNING_KEY", &list)
            .env_remove(VAR)
            .env_remove("CLINK_INBOX")
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL");
        if let Some(expires) = expires {
            command.env(VAR, expires);
        }
        Process::start(&mut command)
    };
    for name in ["axum_receiver", "hyper_receiver"] {
        for (expires, old_status, warning) in [
            (
                Some("2020-01-01T00:00:00Z"),
                401,
                Some(format!(
                    "warning: {VAR} has passed: only the newest signing secret is accepted"
                )),
            ),
            (Some("2999-01-01T00:00:00Z"), 200, None),
            (
                None,
                200,
                Some(format!(
                    "warning: the older signing secrets never expire: set {VAR} to the end of \
                     the rotation's grace (an RFC 3339 time, such as 2026-12-31T00:00:00Z)"
                )),
            ),
        ] {
            let process = start(name, expires);
            let mut said = Vec::new();
            let line = loop {
                let line = Process::line_starting(&process.stderr, "");
                if line.starts_with("listening on ") {
                    break line;
                }
                said.push(line);
            };
            let url = &line["listening on ".len()..];
            let warned: Vec<_> = said.iter().filter(|l| l.starts_with("warning: ")).collect();
            assert_eq!(
                warned.first().map(|l| l.as_str()),
                warning.as_deref(),
                "{name} with {expires:?}: {said:?}"
            );
            for (secret, id, status) in [(KEY, "old", old_status), (NEW_KEY, "new", 200)] {
                let expiry = expires.unwrap_or("none").replace(':', "");
                let body = format!(
                    r#"{{"id":"evt_expiry_{id}_{name}_{expiry}","type":"risk_rule.updated","data":{{}}}}"#
                );
                let signed = SignedRequest::new(secret, body).uri(url);
                assert_eq!(post(&signed).await, status, "{name}, {expires:?}, {id}");
                if status == 200 {
                    assert_eq!(
                        process.next_stdout(),
                        format!("handled risk_rule.updated evt_expiry_{id}_{name}_{expiry}")
                    );
                }
            }
        }
        let process = start(name, Some("tomorrow"));
        let said = first_line_on_starting(&process, name);
        assert_eq!(
            said,
            format!("error: {VAR} must be an RFC 3339 time (2026-12-31T00:00:00Z), got tomorrow"),
            "{name}"
        );
        let finished = process.finish();
        assert_eq!(finished.code, Some(1), "{name}: {finished:?}");
    }
}

/// An example receiver on a free port that verifies with [`KEY`] (for
/// `multi_tenant`, the key of the account `acct_held`), and the URL of its
/// webhook.
#[cfg(unix)]
fn receiver_at_work(name: &str) -> (Process, String) {
    let mut command = std::process::Command::new(example_path(name));
    command
        .env("PORT", "0")
        .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
        .env("CLINK_TENANT_KEYS", format!("acct_held={KEY}"))
        .env_remove("CLINK_TENANT_KEYS_FILE")
        .env_remove("CLINK_TENANT_LOOKUP_MS")
        .env_remove("CLINK_INBOX")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL");
    let process = Process::start(&mut command);
    let line = Process::line_starting(&process.stderr, "listening on ");
    let url = line["listening on ".len()..].replace("{account}", "acct_held");
    (process, url)
}

/// The receivers that stop gracefully on Ctrl-C and SIGTERM.
#[cfg(unix)]
const STOPPING_RECEIVERS: [&str; 3] = ["axum_receiver", "hyper_receiver", "multi_tenant"];

/// A second Ctrl-C during the graceful stop of an example receiver, a
/// delivery in progress, ends it at once with status 130; the first said
/// how. Before, the runtime's handlers had replaced the default one, and
/// nothing listened after the first signal: the second was ignored, and the
/// process waited out its deadline.
#[cfg(unix)]
#[test]
fn a_second_ctrl_c_stops_the_example_receivers_at_once() {
    for name in STOPPING_RECEIVERS {
        let (process, url) = receiver_at_work(name);
        let held = delivery_in_progress(&url, KEY);
        process.signal("INT");
        Process::line_starting(&process.stderr, "Ctrl-C again to stop at once");
        process.signal("INT");
        let finished = process.finish();
        assert_eq!(finished.code, Some(130), "{name}: {finished:?}");
        assert_eq!(finished.stdout, "", "{name}: {finished:?}");
        assert!(
            finished.stderr.ends_with("stopped at once\n"),
            "{name}: {finished:?}"
        );
        drop(held);
    }
}

/// One SIGTERM with a delivery in progress that never ends: each example
/// receiver waits for it until its 4 s deadline, inside the 10 s Docker
/// gives a container, and then exits 0. Before, hyper_receiver and
/// multi_tenant waited 10 s, and Docker killed them mid-stop.
#[cfg(unix)]
#[test]
fn one_sigterm_stops_the_example_receivers_within_their_4_s_deadline() {
    // The examples' `STOP_WITHIN`.
    const DEADLINE: std::time::Duration = std::time::Duration::from_secs(4);
    let waits: Vec<_> = STOPPING_RECEIVERS
        .into_iter()
        .map(|name| {
            let (process, url) = receiver_at_work(name);
            let held = delivery_in_progress(&url, KEY);
            let sent = std::time::Instant::now();
            process.signal("TERM");
            std::thread::spawn(move || {
                let finished = process.finish();
                let took = sent.elapsed();
                drop(held);
                (name, took, finished)
            })
        })
        .collect();
    for wait in waits {
        let (name, took, finished) = wait.join().unwrap();
        assert_eq!(finished.code, Some(0), "{name}: {finished:?}");
        assert!(
            finished.stderr.ends_with("stopped\n"),
            "{name}: {finished:?}"
        );
        // It waited for the delivery, up to the deadline and not long past
        // it (a generous bound, for a busy machine, well short of 10 s).
        assert!(took >= DEADLINE, "{name} exited {took:?} after SIGTERM");
        assert!(took < 2 * DEADLINE, "{name} exited {took:?} after SIGTERM");
    }
}

/// `GET url`: the status and the body.
async fn get(url: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let request = http::Request::get(url).body(Default::default()).unwrap();
    let response = client().request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The example's durable inbox purges done events past the retention, at
/// start and every hour, and keeps the dead ones and those within it.
/// Before, it never purged: the file grew with every delivery until the
/// disk was full and every delivery was answered 503.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn the_example_purges_done_events_past_the_retention() {
    use bytes::Bytes;
    use clink_webhooks::store::{Inbox as _, InboxFilter, NewEvent, SqliteInbox};
    use std::time::Duration;

    let dir = std::env::temp_dir().join(format!("clink-example-purge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inbox.db");
    let inbox = SqliteInbox::open(&path).unwrap();
    let now = clink_webhooks::Timestamp::now();
    for id in ["evt_old_done", "evt_new_done", "evt_old_dead"] {
        let event = NewEvent::new(
            None,
            id.to_owned(),
            "risk_rule.updated".to_owned(),
            None,
            None,
            now,
            now,
            Bytes::from_static(b"{}"),
        );
        if id.ends_with("dead") {
            inbox.insert_dead(&event, "dead").await.unwrap();
            continue;
        }
        inbox.insert(&event).await.unwrap();
        let claim = inbox
            .claim(Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
            .expect("the event just kept");
        let settled = inbox.complete(&claim).await.unwrap();
        assert!(matches!(settled, clink_webhooks::store::Settle::Applied));
    }
    // Handled, and arrived, 200 days ago, as the dead one arrived.
    let file = rusqlite::Connection::open(&path).unwrap();
    let old = now.as_millis() - 200 * 86_400_000;
    file.execute(
        "UPDATE clink_webhook_inbox SET received_at_ms = ?1, signed_at_ms = ?1, \
         claimed_at_ms = ?1, handled_at_ms = ?1, next_attempt_ms = ?1 \
         WHERE event_id IN ('evt_old_done', 'evt_old_dead')",
        [old],
    )
    .unwrap();
    drop(file);

    let mut command = std::process::Command::new(example_path("axum_receiver"));
    command
        .env("PORT", "0")
        .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
        .env("CLINK_INBOX", format!("sqlite:{}", path.display()))
        .env_remove("CLINK_INBOX_RETENTION_HOURS")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL");
    let process = Process::start(&mut command);
    Process::line_starting(&process.stderr, "listening on ");
    let ids = || async {
        let mut ids: Vec<String> = inbox
            .list(&InboxFilter::default(), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|entry| entry.event.event_id)
            .collect();
        ids.sort();
        ids
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while ids().await.contains(&"evt_old_done".to_owned()) {
        assert!(tokio::time::Instant::now() < deadline, "never purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ids().await, ["evt_new_done", "evt_old_dead"]);
    let finished = process.terminate();
    assert_eq!(finished.code, Some(0), "{finished:?}");

    // A retention shorter than Clink's retries is refused.
    command.env("CLINK_INBOX_RETENTION_HOURS", "24");
    let refused = Process::start(&mut command).finish();
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("CLINK_INBOX_RETENTION_HOURS must be from 48 to 8760"),
        "{refused:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The example receivers serve the webhook route alone on the webhook's
/// address, which anyone can reach; health, metrics and the console are on
/// the admin address. Before, anyone could read the metrics (account ids,
/// key fingerprints), open the console's login, and make each `GET
/// /health` write to the inbox.
#[tokio::test]
async fn health_metrics_and_the_console_are_on_the_admin_address_only() {
    let dir = std::env::temp_dir().join(format!("clink-example-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inbox = format!("sqlite:{}", dir.join("inbox.db").display());
    let axum = {
        let mut command = std::process::Command::new(example_path("axum_receiver"));
        command
            .env("PORT", "0")
            .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
            .env("CLINK_INBOX", &inbox)
            .env("CLINK_CONSOLE_TOKEN", "admin-test-token-0123456789")
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL");
        Process::start(&mut command)
    };
    let hyper = example("hyper_receiver", Some(KEY));
    for (name, process, admin_paths) in [
        (
            "axum_receiver",
            &axum,
            &["/health", "/metrics", "/console"][..],
        ),
        ("hyper_receiver", &hyper, &["/health", "/metrics"][..]),
    ] {
        let line = Process::line_starting(&process.stderr, "listening on ");
        let url = &line["listening on ".len()..];
        let public = url.strip_suffix("/webhooks/clink").unwrap();
        for path in ["/health", "/metrics", "/console", "/console/events"] {
            let (status, body) = get(&format!("{public}{path}")).await;
            assert_eq!(
                status, 404,
                "{name}: {path} on the webhook's address: {body}"
            );
        }
        let admin = admin_url(process);
        assert_ne!(admin, public, "{name}");
        let (status, body) = get(&format!("{admin}/health")).await;
        assert_eq!((status, body.as_str()), (200, "ok\n"), "{name}");
        let (status, body) = get(&format!("{admin}/metrics")).await;
        assert_eq!(status, 200, "{name}: {body}");
        if admin_paths.contains(&"/console") {
            // There, and asking for its token.
            let (status, body) = get(&format!("{admin}/console")).await;
            assert_eq!(status, 401, "{name}: {body}");
        }
        // The webhook's address still takes deliveries.
        let body = format!(r#"{{"id":"evt_admin_{name}","type":"risk_rule.updated","data":{{}}}}"#);
        assert_eq!(post(&delivery(url, &body)).await, 200, "{name}");
        assert_eq!(
            process.next_stdout(),
            format!("handled risk_rule.updated evt_admin_{name}")
        );
    }
    drop((axum, hyper));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `CLINK_BIND` sets the address the webhook is served on (loopback by
/// default), `CLINK_ADMIN_ADDR` the admin address; each example says where
/// it listens.
#[tokio::test]
async fn the_addresses_are_set_by_clink_bind_and_clink_admin_addr() {
    for name in ["axum_receiver", "hyper_receiver"] {
        let mut command = std::process::Command::new(example_path(name));
        command
            .env("PORT", "0")
            .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
            .env("CLINK_BIND", "0.0.0.0")
            .env("CLINK_ADMIN_ADDR", "127.0.0.1:0")
            .env_remove("CLINK_INBOX")
            .env_remove("REDIS_URL")
            .env_remove("DATABASE_URL");
        let process = Process::start(&mut command);
        let line = Process::line_starting(&process.stderr, "listening on ");
        let url = &line["listening on ".len()..];
        let port = url
            .strip_prefix("http://0.0.0.0:")
            .and_then(|rest| rest.strip_suffix("/webhooks/clink"))
            .unwrap_or_else(|| panic!("{name}: {line}"));
        let admin = admin_url(&process);
        assert!(admin.starts_with("http://127.0.0.1:"), "{name}: {admin}");
        let (status, _) = get(&format!("{admin}/health")).await;
        assert_eq!(status, 200, "{name}");
        let local = format!("http://127.0.0.1:{port}/webhooks/clink");
        let body = format!(r#"{{"id":"evt_bind_{name}","type":"risk_rule.updated","data":{{}}}}"#);
        assert_eq!(post(&delivery(&local, &body)).await, 200, "{name}");
        assert_eq!(
            process.next_stdout(),
            format!("handled risk_rule.updated evt_bind_{name}")
        );
    }
}

/// `verify_only` verifies its sample deliveries with the key it is given,
/// and prints what it verified.
#[test]
fn verify_only_verifies_with_the_key_it_is_given() {
    let finished = example("verify_only", Some(KEY)).finish();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{finished:?}");
    assert!(
        lines[0].starts_with(r#"order Some("ord_1") paid Some(19.99) "#),
        "{finished:?}"
    );
    assert_eq!(lines[1], r#"  event id "evt_1""#, "{finished:?}");
    assert!(
        finished.stderr.contains("refused: 401 signature_mismatch"),
        "{finished:?}"
    );
    // A type it does not handle, whose data does not read: acknowledged.
    assert!(
        finished
            .stderr
            .contains(r#""dispute.won" not handled here; acknowledged"#),
        "{finished:?}"
    );
}

/// `verify_only` logs its refusals without `eprintln!`, which panics
/// once stderr is closed: a refusal logged by code copied from it must not
/// fail. Its stderr here is a pipe whose reader is gone.
#[test]
fn verify_only_logs_a_refusal_to_a_closed_stderr_without_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = std::process::Command::new(example_path("verify_only"))
        .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(writer)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(r#"  event id "evt_1""#),
        "{output:?}"
    );
}

/// The bare hyper receiver handles a delivery, and stops gracefully on
/// SIGTERM (as docker, Kubernetes and systemd stop it), not only on Ctrl-C.
#[cfg(unix)]
#[tokio::test]
async fn the_hyper_receiver_handles_a_delivery_and_stops_gracefully_on_sigterm() {
    let process = example("hyper_receiver", Some(KEY));
    // Its store, in memory, said to be for one instance only.
    Process::line_starting(
        &process.stderr,
        "idempotency store: in memory (one instance only",
    );
    let line = Process::line_starting(&process.stderr, "listening on ");
    let url = &line["listening on ".len()..];
    let body = r#"{"id":"evt_hyper_1","type":"order.succeeded","data":{"orderId":"ord_1"}}"#;
    assert_eq!(post(&delivery(url, body)).await, 200);
    assert_eq!(
        process.next_stdout(),
        r#"handled order.succeeded evt_hyper_1 order=Some("ord_1")"#
    );

    let finished = process.terminate();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(finished.stdout, "", "{finished:?}");
    assert!(finished.stderr.ends_with("stopped\n"), "{finished:?}");
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

/// With `sslmode=require` and `CLINK_DATABASE_CA_FILE`, the example reaches
/// its PostgreSQL idempotency store over verified TLS (by the server's own
/// account) and handles an event; without the CA file it refuses the
/// private CA's certificate and does not start. `sslmode=verify-full` and
/// `verify-ca` are read as `require`, where the URL was refused.
#[cfg(feature = "postgres-tls")]
#[tokio::test]
async fn the_example_reaches_postgres_over_verified_tls() {
    let _servers = crate::support::servers::shared().await;
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL: run scripts/test");
    let ca = std::env::var("DATABASE_TLS_CA").expect("DATABASE_TLS_CA: run scripts/test");
    let run = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let application = format!("clink_example_tls_{run}");
    let joined = if url.contains('?') { '&' } else { '?' };
    let tls_url = format!("{url}{joined}sslmode=require&application_name={application}");

    let mut refused =
        std::process::Command::new(crate::support::process::example_path("axum_receiver"));
    refused
        .env("PORT", "0")
        .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
        .env_remove("REDIS_URL")
        .env_remove("CLINK_DATABASE_CA_FILE")
        .env("DATABASE_URL", &tls_url);
    let output = refused.output().unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr).to_ascii_lowercase();
    assert!(said.contains("certificate"), "{said}");

    let (process, receiver, store) = crate::support::process::example_receiver_with_env(
        KEY,
        Some(("DATABASE_URL", &tls_url)),
        &[("CLINK_DATABASE_CA_FILE", &ca)],
    );
    assert!(
        store.starts_with("idempotency store: PostgreSQL"),
        "{store}"
    );
    let id = format!("evt_tls_{run}");
    let body = format!(r#"{{"id":"{id}","type":"order.succeeded","data":{{"orderId":"ord_1"}}}}"#);
    assert_eq!(post(&delivery(&receiver, &body)).await, 200);
    assert_eq!(
        process.next_stdout(),
        format!("handled order.succeeded {id}")
    );
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let ssl: Vec<bool> = admin
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = $1",
            &[&application],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!ssl.is_empty() && ssl.iter().all(|ssl| *ssl), "{ssl:?}");
    drop(admin);
    let _ = connection.await;

    // libpq's verify-full and verify-ca, which the PostgreSQL client alone
    // refuses, are read as require (verified in full all the same).
    for mode in ["verify-full", "verify-ca"] {
        let url = format!("{url}{joined}sslmode={mode}");
        let (_process, _, store) = crate::support::process::example_receiver_with_env(
            KEY,
            Some(("DATABASE_URL", &url)),
            &[("CLINK_DATABASE_CA_FILE", &ca)],
        );
        assert!(
            store.starts_with("idempotency store: PostgreSQL"),
            "{mode}: {store}"
        );
    }
}

/// The postgres_transaction example, run to its end with `url` as
/// `DATABASE_URL` and `env` set.
#[cfg(feature = "postgres")]
fn postgres_transaction(url: &str, env: &[(&str, &str)]) -> crate::support::process::Finished {
    let mut command = std::process::Command::new(example_path("postgres_transaction"));
    command
        .env("DATABASE_URL", url)
        .env_remove("CLINK_DATABASE_CA_FILE")
        .envs(env.iter().copied());
    Process::start(&mut command).finish()
}

/// `DATABASE_URL` with `setting` added to its query.
#[cfg(feature = "postgres")]
fn database_url_with(setting: &str) -> String {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL: run scripts/test");
    let joined = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joined}{setting}")
}

/// postgres_transaction acknowledges a second event about an order
/// already paid, under an event id of its own, and writes nothing: every
/// delivery ends as the example says, three payments for three orders.
/// Before, the table's key refused the second event at every retry, and it
/// was never acknowledged.
#[cfg(feature = "postgres")]
#[test]
fn postgres_transaction_acknowledges_another_event_about_a_paid_order() {
    let _servers = crate::support::servers::shared_blocking();
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL: run scripts/test");
    let finished = postgres_transaction(&url, &[]);
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(
        finished.stdout.contains(
            "\nsame order:      200, the order's payment was already recorded: nothing written\n"
        ),
        "{finished:?}"
    );
    // Another amount for the same order is not the same payment: refused.
    assert!(
        finished
            .stdout
            .contains("\nother amount:    500, order \"ord_")
            && finished.stdout.contains(
                "is recorded as paid 4200 cents, and this event says 4300: not acknowledged\n"
            ),
        "{finished:?}"
    );
    assert!(
        finished.stdout.contains("\npayments written: 3 "),
        "{finished:?}"
    );
}

/// postgres_transaction reaches PostgreSQL over verified TLS when
/// `DATABASE_URL` says libpq's `sslmode=verify-full`, which the client
/// alone refuses to read: without the CA file it refuses the private CA's
/// certificate, with it it runs to its end, and says nothing of a plain
/// connection. Before, it refused the URL, and always connected plainly.
#[cfg(feature = "postgres-tls")]
#[test]
fn postgres_transaction_reaches_postgres_over_verified_tls() {
    let _servers = crate::support::servers::shared_blocking();
    let ca = std::env::var("DATABASE_TLS_CA").expect("DATABASE_TLS_CA: run scripts/test");
    let url = database_url_with("sslmode=verify-full");

    let refused = postgres_transaction(&url, &[]);
    assert_ne!(refused.code, Some(0), "{refused:?}");
    assert!(
        refused.stderr.to_ascii_lowercase().contains("certificate"),
        "{refused:?}"
    );

    let finished = postgres_transaction(&url, &[("CLINK_DATABASE_CA_FILE", &ca)]);
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(!finished.stderr.contains("warning"), "{finished:?}");
}

/// A plain connection to a database on another machine (named
/// `db.example` here, reached at 127.0.0.1 through `hostaddr`) is made
/// with a warning on stderr, once, before the receiver listens; one to
/// this machine without. Before, nothing said that the events crossed the
/// network in the clear.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn the_examples_warn_of_a_plain_connection_to_another_machine() {
    let _servers = crate::support::servers::shared().await;
    let local = std::env::var("DATABASE_URL").expect("DATABASE_URL: run scripts/test");
    assert!(local.contains("@127.0.0.1:"), "{local}");
    let remote = database_url_with("hostaddr=127.0.0.1").replacen("@127.0.0.1:", "@db.example:", 1);
    const WARNING: &str = "warning: the database in DATABASE_URL is on another machine and is \
                           reached without TLS";

    for (url, warned) in [(&remote, true), (&local, false)] {
        let finished = tokio::task::spawn_blocking({
            let url = url.clone();
            move || postgres_transaction(&url, &[])
        })
        .await
        .unwrap();
        assert_eq!(finished.code, Some(0), "{finished:?}");
        assert_eq!(
            finished.stderr.matches(WARNING).count(),
            usize::from(warned),
            "{url}: {finished:?}"
        );

        let mut command = std::process::Command::new(example_path("axum_receiver"));
        command
            .env("PORT", "0")
            .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
            .env("CLINK_INBOX", "postgres")
            .env("DATABASE_URL", url)
            .env_remove("CLINK_DATABASE_CA_FILE")
            .env_remove("REDIS_URL");
        let process = Process::start(&mut command);
        let mut before_listening = Vec::new();
        loop {
            let line = process.stderr.recv_timeout(PATIENCE).unwrap();
            if line.starts_with("listening on ") {
                break;
            }
            before_listening.push(line);
        }
        // The store and the inbox each connect; it is said once.
        let warnings = before_listening
            .iter()
            .filter(|line| line.starts_with(WARNING))
            .count();
        assert_eq!(warnings, usize::from(warned), "{url}: {before_listening:?}");
    }
}

/// A `redis://` URL to another machine is warned of before the example
/// receiver connects (`rediss://` and this machine are not).
#[cfg(feature = "redis")]
#[test]
fn the_example_warns_of_a_plain_redis_connection_to_another_machine() {
    const WARNING: &str = "warning: the Redis server in REDIS_URL is on another machine and is \
                           reached without TLS";
    // 192.0.2.1 is for documentation: nothing answers there, and the
    // warning comes before the connection is tried.
    for (url, warned) in [
        ("redis://:secret@192.0.2.1:6379/", true),
        ("rediss://:secret@192.0.2.1:6380/", false),
        ("redis://127.0.0.1:1/", false),
    ] {
        let mut command = std::process::Command::new(example_path("axum_receiver"));
        command
            .env("PORT", "0")
            .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
            .env("REDIS_URL", url)
            .env_remove("CLINK_INBOX")
            .env_remove("DATABASE_URL");
        let process = Process::start(&mut command);
        // Up to the first line that names neither the signing key nor the
        // metrics: the warning, or the store's failure to connect.
        let first = loop {
            let line = process.stderr.recv_timeout(PATIENCE).unwrap();
            if line.starts_with(WARNING)
                || line.starts_with("error")
                || line.starts_with("listening on ")
            {
                break line;
            }
        };
        assert_eq!(first.starts_with(WARNING), warned, "{url}: {first}");
        assert!(!first.contains("secret"), "{first}");
    }
}

#[test]
fn the_example_receiver_keeps_its_store_in_memory_by_default() {
    let (_process, _url, store) = example_receiver_with_store(KEY, None);
    assert!(store.starts_with("idempotency store: in memory"), "{store}");
}

/// SIGTERM while handlers run, with the example's handlers slowed down by
/// `CLINK_EXAMPLE_HANDLER_DELAY_MS`.
#[cfg(all(unix, feature = "redis"))]
mod shutdown {
    use std::time::Duration;

    use super::{client, delivery, post, Process, KEY};
    use crate::support::process::{example_receiver_with_env, PATIENCE};

    /// Sends SIGTERM to `process`; the instant it was sent.
    fn sigterm(process: &Process) -> std::time::Instant {
        let sent = std::time::Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &process.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed: {status:?}");
        sent
    }

    /// Delivers `body` to `url` like Clink: again after each answer other than
    /// `2xx` (or no answer), a second later, for at most `patience` (which
    /// only bounds a hang). The statuses seen, the last being the `2xx`.
    async fn deliver_until_acknowledged(url: &str, body: &str, patience: Duration) -> Vec<u16> {
        let deadline = std::time::Instant::now() + patience;
        let mut statuses = Vec::new();
        loop {
            let request = delivery(url, body).build();
            if let Ok(response) = client().request(request).await {
                let status = response.status().as_u16();
                statuses.push(status);
                if (200..300).contains(&status) {
                    return statuses;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{body} not acknowledged within {patience:?}: {statuses:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// SIGTERM to two example receivers sharing a Redis, each with a delivery
    /// whose handler is running: one handler (2 s) ends within the shutdown
    /// deadline, the other (60 s) does not. The first process exits within
    /// the deadline (4 s), the second once the deadline has passed and long
    /// before its handler could have finished; the first delivery is
    /// acknowledged and handled, the second gets no `2xx`; a receiver started
    /// again on the same store handles the second exactly once when Clink
    /// retries it, and knows the first as already handled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_while_handlers_run_exits_within_the_deadline_and_loses_nothing() {
        // The example's stop deadline (`STOP_WITHIN`).
        const DEADLINE: Duration = Duration::from_secs(4);
        let _server = crate::support::servers::durable_redis().await;
        let redis = crate::support::stores::server_url("REDIS_DURABLE_URL");
        let store = Some(("REDIS_URL", redis.as_str()));
        let run = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let order = |name: &str| {
            let id = format!("evt_shutdown_{name}_{run}");
            let body = format!(
                r#"{{"id":"{id}","type":"order.succeeded","data":{{"orderId":"ord_{name}"}}}}"#
            );
            (id, body)
        };
        let (quick_id, quick_body) = order("quick");
        let (slow_id, slow_body) = order("slow");

        let mut deliveries = Vec::new();
        let mut receivers = Vec::new();
        for (delay, id, body) in [
            ("2000", &quick_id, &quick_body),
            ("60000", &slow_id, &slow_body),
        ] {
            let env = [("CLINK_EXAMPLE_HANDLER_DELAY_MS", delay)];
            let (process, url, _) = example_receiver_with_env(KEY, store, &env);
            let request = delivery(&url, body).build();
            deliveries.push(tokio::spawn(async move {
                let response = client().request(request).await;
                response.map(|response| response.status().as_u16()).ok()
            }));
            let handling = Process::line_starting(&process.stderr, "handling ");
            assert_eq!(handling, format!("handling order.succeeded {id}"));
            receivers.push(process);
        }
        let sent = [sigterm(&receivers[0]), sigterm(&receivers[1])];
        let waits: Vec<_> = receivers
            .into_iter()
            .zip(sent)
            .map(|(process, sent)| {
                tokio::task::spawn_blocking(move || {
                    let finished = process.finish();
                    (sent.elapsed(), finished)
                })
            })
            .collect();
        let mut exits = Vec::new();
        for wait in waits {
            exits.push(wait.await.unwrap());
        }
        let statuses: Vec<Option<u16>> = {
            let mut statuses = Vec::new();
            for delivery in deliveries {
                statuses.push(delivery.await.unwrap());
            }
            statuses
        };

        // The quick handler finished, its delivery was acknowledged, and the
        // process exited once it had.
        let (took, quick) = &exits[0];
        assert_eq!(statuses[0], Some(200), "{quick:?}");
        assert_eq!(
            quick.stdout,
            format!("handled order.succeeded {quick_id}\n")
        );
        assert_eq!(quick.code, Some(0), "{quick:?}");
        assert!(*took < DEADLINE, "exited {took:?} after SIGTERM");
        // The slow one was cut off at the deadline: no 2xx, nothing printed,
        // and the process exited once the deadline had passed, long before
        // the handler's 60 s (a generous bound, for a busy machine).
        let (took, slow) = &exits[1];
        assert!(!matches!(statuses[1], Some(200..=299)), "{:?}", statuses[1]);
        assert_eq!(slow.stdout, "", "{slow:?}");
        assert_eq!(slow.code, Some(0), "{slow:?}");
        assert!(*took >= DEADLINE, "exited {took:?} after SIGTERM");
        assert!(*took < 2 * DEADLINE, "exited {took:?} after SIGTERM");

        // Clink retries both against a receiver on the same store: the
        // acknowledged one is a duplicate, the other is handled now, once (its
        // claim, if the stopping process could not release it, ends with its
        // 30 s lease).
        let (again, url, _) = example_receiver_with_env(KEY, store, &[]);
        let retried = deliver_until_acknowledged(&url, &quick_body, PATIENCE).await;
        assert_eq!(retried, [200]);
        let retried = deliver_until_acknowledged(&url, &slow_body, PATIENCE).await;
        eprintln!("the retry of the cut-off delivery got {retried:?}");
        assert_eq!(
            again.next_stdout(),
            format!("handled order.succeeded {slow_id}")
        );
        let marker =
            format!(r#"{{"id":"evt_marker_{run}","type":"risk_rule.updated","data":{{}}}}"#);
        assert_eq!(post(&delivery(&url, &marker)).await, 200);
        assert_eq!(
            again.next_stdout(),
            format!("handled risk_rule.updated evt_marker_{run}")
        );
    }
}

/// With `CLINK_SECRET_KEY`, the example asks Clink's API (a fake one on
/// loopback) for the current state of the object of a stale event and of an
/// event whose data does not decode, prints it, and acknowledges both.
#[cfg(feature = "api")]
mod current_state {
    use serde_json::json;

    use super::{delivery, post, KEY};
    use crate::support::fake_api::{Failure, FakeApi};
    use crate::support::process::example_receiver_with_env;

    const API_KEY: &str = "sk_test_example_5d1e";

    #[tokio::test]
    async fn the_example_prints_the_current_state_of_stale_and_undecodable_events() {
        let fake = FakeApi::start().await;
        fake.accept_key(API_KEY);
        fake.put_object(
            "order/ord_s",
            json!({"orderId": "ord_s", "status": "refunded"}),
        );
        fake.put_object(
            "refund/rfd_u",
            json!({"refundId": "rfd_u", "status": "success"}),
        );
        let base = fake.base_url();
        let (process, url, _) = example_receiver_with_env(
            KEY,
            None,
            &[("CLINK_SECRET_KEY", API_KEY), ("CLINK_API_BASE_URL", &base)],
        );

        // A stale event: its handler runs, then reads what is true now.
        let newer = r#"{"id":"evt_new","type":"order.succeeded","created":1736942500000,"data":{"orderId":"ord_s"}}"#;
        let older = r#"{"id":"evt_old","type":"order.created","created":1736942400000,"data":{"orderId":"ord_s"}}"#;
        assert_eq!(post(&delivery(&url, newer)).await, 200);
        assert_eq!(process.next_stdout(), "handled order.succeeded evt_new");
        assert_eq!(fake.requests().len(), 0, "a fresh event needs no read");
        assert_eq!(post(&delivery(&url, older)).await, 200);
        assert_eq!(process.next_stdout(), "handled order.created evt_old");
        assert_eq!(process.next_stdout(), "current order ord_s refunded");

        // Data that does not decode (a number for a status): read by the id
        // in the envelope, and acknowledged.
        let broken = r#"{"id":"evt_broken","type":"refund.succeeded","data":{"refundId":"rfd_u","status":7}}"#;
        assert_eq!(post(&delivery(&url, broken)).await, 200);
        assert_eq!(process.next_stdout(), "current refund rfd_u success");

        let paths: Vec<_> = fake.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["order/ord_s", "refund/rfd_u"]);
        for request in fake.requests() {
            assert_eq!(request.headers["x-api-key"], API_KEY);
        }

        // When Clink cannot say, the delivery is not acknowledged: Clink retries.
        let lost =
            r#"{"id":"evt_lost","type":"refund.failed","data":{"refundId":"rfd_gone","status":7}}"#;
        assert_eq!(post(&delivery(&url, lost)).await, 500);
    }

    /// With an inbox and the effects committed with each event's
    /// completion, a stale event's read of the current state comes before
    /// the commit: when Clink's API cannot answer, the event is not marked
    /// done with its read lost, but retried, and read again. Before, the
    /// commit came first, and the failed read was never made again.
    #[cfg(feature = "sqlite")]
    // The fake API answers the retry while this test's thread blocks on the
    // example's output.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_an_inbox_a_stale_events_failed_read_is_retried() {
        let fake = FakeApi::start().await;
        fake.accept_key(API_KEY);
        let base = fake.base_url();
        let dir = std::env::temp_dir().join(format!(
            "clink-example-stale-read-{}",
            &clink_webhooks::store::LeaseToken::generate().as_str()[..12]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let inbox = format!("sqlite:{}", dir.join("inbox.db").display());
        let (process, url, _) = example_receiver_with_env(
            KEY,
            None,
            &[
                ("CLINK_SECRET_KEY", API_KEY),
                ("CLINK_API_BASE_URL", &base),
                ("CLINK_INBOX", &inbox),
                ("CLINK_INBOX_REORDER_MS", "0"),
                ("CLINK_EXAMPLE_EFFECTS", "1"),
            ],
        );
        // The order is known to Clink, but its first read fails (the
        // failure is programmed before any request, so no read can race it).
        fake.put_object(
            "order/ord_r",
            json!({"orderId": "ord_r", "status": "refunded"}),
        );
        fake.fail_next("order/ord_r", Failure::Status(404), 1);
        let newer = r#"{"id":"evt_new","type":"order.succeeded","created":1736942500000,"data":{"orderId":"ord_r"}}"#;
        let older = r#"{"id":"evt_old","type":"order.created","created":1736942400000,"data":{"orderId":"ord_r"}}"#;
        assert_eq!(post(&delivery(&url, newer)).await, 200);
        assert_eq!(process.next_stdout(), "handled order.succeeded evt_new");
        assert_eq!(fake.requests().len(), 0, "a fresh event needs no read");
        // Kept, and answered 200; the first read fails, the retry reads the
        // order, then commits and prints.
        assert_eq!(post(&delivery(&url, older)).await, 200);
        assert_eq!(process.next_stdout(), "handled order.created evt_old");
        assert_eq!(process.next_stdout(), "current order ord_r refunded");
        assert_eq!(fake.count("GET", "order/ord_r"), 2, "{:?}", fake.requests());
        drop(process);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
