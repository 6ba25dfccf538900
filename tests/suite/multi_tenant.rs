//! The multi-tenant example as a real process: many accounts on one
//! endpoint, keys per account, keys changed while it runs.

use std::process::Command;

use crate::support::process::{example_path, Process};
use bytes::Bytes;
use clink_webhooks::testing::{fixture_with_id, SignedRequest};
use clink_webhooks::EventType;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

struct Tenants {
    process: Process,
    /// `http://127.0.0.1:PORT/webhooks/clink/`
    base: String,
}

fn start(keys: &str, keys_file: &std::path::Path) -> Tenants {
    start_with(keys, keys_file, &[])
}

/// [`start`], with `env` set too.
fn start_with(keys: &str, keys_file: &std::path::Path, env: &[(&str, &str)]) -> Tenants {
    let mut command = Command::new(example_path("multi_tenant"));
    command
        .env("PORT", "0")
        .env("CLINK_TENANT_KEYS", keys)
        .env("CLINK_TENANT_KEYS_FILE", keys_file)
        .env_remove("CLINK_TENANT_LOOKUP_MS")
        .env_remove("CLINK_TENANT_LOOKUP_FAILS");
    for (var, value) in env {
        command.env(var, value);
    }
    let process = Process::start(&mut command);
    let line = Process::line_starting(&process.stderr, "listening on ");
    let url = &line["listening on ".len()..];
    let base = url
        .strip_suffix("{account}")
        .unwrap_or_else(|| panic!("unexpected address line: {line}"))
        .to_owned();
    Tenants { process, base }
}

async fn deliver(base: &str, account: &str, secret: &str, body: &str) -> u16 {
    let request = SignedRequest::new(secret, body.to_owned())
        .uri(format!("{base}{account}"))
        .build::<Full<Bytes>>();
    Client::builder(TokioExecutor::new())
        .build_http()
        .request(request)
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// An account listed twice while its secret is rotated, the new one
/// first: with `CLINK_TENANT_OLD_KEYS_EXPIRE` past, the old secret is
/// refused and the new one accepted; without it, both are, and a warning
/// at start names the account whose old secret never expires. Before, a
/// secret rotated out stayed valid until someone took it out, unsaid.
#[tokio::test]
async fn an_accounts_old_secret_is_accepted_until_the_rotation_ends() {
    let dir = std::env::temp_dir().join(format!("clink-tenants-expire-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys_file = dir.join("keys");
    std::fs::write(&keys_file, "").unwrap();
    const VAR: &str = "CLINK_TENANT_OLD_KEYS_EXPIRE";
    for (expires, old_status, warned) in [
        (Some("2020-01-01T00:00:00Z"), 401, false),
        (Some("2999-01-01T00:00:00Z"), 200, false),
        (None, 200, true),
    ] {
        let mut command = Command::new(example_path("multi_tenant"));
        command
            .env("PORT", "0")
            .env(
                "CLINK_TENANT_KEYS",
                "acct_a=whsec_a_new,acct_b=whsec_b,acct_a=whsec_a_old",
            )
            .env("CLINK_TENANT_KEYS_FILE", &keys_file)
            .env_remove(VAR)
            .env_remove("CLINK_TENANT_LOOKUP_MS")
            .env_remove("CLINK_TENANT_LOOKUP_FAILS");
        if let Some(expires) = expires {
            command.env(VAR, expires);
        }
        let process = Process::start(&mut command);
        let mut said = Vec::new();
        let line = loop {
            let line = Process::line_starting(&process.stderr, "");
            if line.starts_with("listening on ") {
                break line;
            }
            said.push(line);
        };
        let base = line["listening on ".len()..]
            .strip_suffix("{account}")
            .unwrap()
            .to_owned();
        let warning = said.iter().find(|line| line.starts_with("warning: "));
        assert_eq!(
            warning.map(|w| w.starts_with("warning: the older secrets of acct_a never expire")),
            warned.then_some(true),
            "{expires:?}: {said:?}"
        );
        let tag = expires.unwrap_or("none").replace(':', "");
        for (secret, id, status) in [
            ("whsec_a_old", "old", old_status),
            ("whsec_a_new", "new", 200),
        ] {
            let event = fixture_with_id(&EventType::OrderSucceeded, &format!("evt_{id}_{tag}"));
            assert_eq!(
                deliver(&base, "acct_a", secret, &event).await,
                status,
                "{expires:?}: {id}"
            );
        }
        let finished = process.terminate();
        assert_eq!(finished.code, Some(0), "{finished:?}");
    }

    // A rotation done while it runs brings the new secret in the keys
    // file, the old one still in the environment: the file's comes first,
    // so the old one is the one that expires.
    std::fs::write(&keys_file, "acct_a=whsec_a_newer\n").unwrap();
    let tenants = start_with(
        "acct_a=whsec_a_new",
        &keys_file,
        &[(VAR, "2020-01-01T00:00:00Z")],
    );
    for (secret, id, status) in [("whsec_a_new", "old", 401), ("whsec_a_newer", "new", 200)] {
        let event = fixture_with_id(&EventType::OrderSucceeded, &format!("evt_{id}_file"));
        assert_eq!(
            deliver(&tenants.base, "acct_a", secret, &event).await,
            status,
            "{secret}"
        );
    }
    let finished = tenants.process.terminate();
    assert_eq!(finished.code, Some(0), "{finished:?}");

    // A rotation brought in the environment, the file still holding the
    // old secret: the environment lists that secret among its older ones,
    // so its own newest is the current one, and the old one expires.
    // Before, the file's came first and the new secret expired.
    std::fs::write(&keys_file, "acct_a=whsec_a_new\n").unwrap();
    let tenants = start_with(
        "acct_a=whsec_a_newest,acct_a=whsec_a_new",
        &keys_file,
        &[(VAR, "2020-01-01T00:00:00Z")],
    );
    for (secret, id, status) in [("whsec_a_new", "old", 401), ("whsec_a_newest", "new", 200)] {
        let event = fixture_with_id(&EventType::OrderSucceeded, &format!("evt_{id}_env"));
        assert_eq!(
            deliver(&tenants.base, "acct_a", secret, &event).await,
            status,
            "{secret}"
        );
    }
    let finished = tenants.process.terminate();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn accounts_are_verified_and_deduplicated_apart_and_keys_change_at_run_time() {
    let dir = std::env::temp_dir().join(format!("clink-tenants-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys_file = dir.join("keys");
    std::fs::write(&keys_file, "").unwrap();
    // acct_a is mid-rotation: both of its secrets are accepted.
    let tenants = start(
        "acct_a=whsec_a_old,acct_b=whsec_b,acct_a=whsec_a_new",
        &keys_file,
    );
    let base = tenants.base.as_str();
    let order = fixture_with_id(&EventType::OrderSucceeded, "evt_shared_1");

    // The same event id under two accounts is two events, each handled once.
    assert_eq!(deliver(base, "acct_a", "whsec_a_old", &order).await, 200);
    assert_eq!(
        tenants.process.next_stdout(),
        "handled acct_a order.succeeded evt_shared_1"
    );
    assert_eq!(deliver(base, "acct_b", "whsec_b", &order).await, 200);
    assert_eq!(
        tenants.process.next_stdout(),
        "handled acct_b order.succeeded evt_shared_1"
    );

    // A duplicate within an account is acknowledged and not handled again,
    // whichever of its keys signed it.
    assert_eq!(deliver(base, "acct_a", "whsec_a_new", &order).await, 200);

    // Another account's key does not open this one; an unknown account is 404.
    let refund = fixture_with_id(&EventType::RefundCreated, "evt_refund_1");
    assert_eq!(deliver(base, "acct_b", "whsec_a_old", &refund).await, 401);
    assert_eq!(deliver(base, "acct_z", "whsec_a_old", &refund).await, 404);
    assert_eq!(deliver(base, "acct%0Ax", "whsec_a_old", &refund).await, 404);

    // Nothing was printed for the duplicate or the refusals: the next line
    // is this delivery's.
    assert_eq!(deliver(base, "acct_a", "whsec_a_new", &refund).await, 200);
    assert_eq!(
        tenants.process.next_stdout(),
        "handled acct_a refund.created evt_refund_1"
    );

    // A key added while it runs is accepted after the reload, no restart.
    assert_eq!(deliver(base, "acct_c", "whsec_c", &refund).await, 404);
    std::fs::write(&keys_file, "acct_c=whsec_c\n").unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &tenants.process.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let reloaded = Process::line_starting(&tenants.process.stderr, "reloaded keys: ");
    assert!(reloaded.contains("acct_c"), "{reloaded}");
    assert_eq!(deliver(base, "acct_c", "whsec_c", &refund).await, 200);
    assert_eq!(
        tenants.process.next_stdout(),
        "handled acct_c refund.created evt_refund_1"
    );

    // Removed from the file, it is refused again.
    std::fs::write(&keys_file, "").unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &tenants.process.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let reloaded = Process::line_starting(&tenants.process.stderr, "reloaded keys: ");
    assert!(!reloaded.contains("acct_c"), "{reloaded}");
    assert_eq!(deliver(base, "acct_c", "whsec_c", &order).await, 404);

    let finished = tenants.process.terminate();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(
        !finished.stdout.contains("whsec") && !finished.stderr.contains("whsec"),
        "a secret was printed: {finished:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A directory of its own for a test's keys file.
fn keys_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("clink-tenants-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sends SIGHUP to the example, and returns the line it answers with:
/// `reloaded keys: ...` or `keys not reloaded: ...`.
fn reload(tenants: &Tenants) -> String {
    let status = Command::new("kill")
        .args(["-HUP", &tenants.process.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + crate::support::process::PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = tenants
            .process
            .stderr
            .recv_timeout(left)
            .expect("the example says whether it reloaded");
        if line.starts_with("reloaded keys: ") || line.starts_with("keys not reloaded: ") {
            return line;
        }
    }
}

/// A keys file with a mistake in it changes nothing: not the accounts
/// before the mistake, nor the removals after it.
#[tokio::test]
async fn a_reload_with_a_mistake_changes_no_key() {
    let dir = keys_dir("mistake");
    let keys_file = dir.join("keys");
    std::fs::write(&keys_file, "acct_b=whsec_b_old\nacct_d=whsec_d\n").unwrap();
    let tenants = start("acct_a=whsec_a", &keys_file);
    let base = tenants.base.as_str();

    // acct_b rotated, acct_d removed, and acct_c, after acct_b, without a secret.
    std::fs::write(&keys_file, "acct_b=whsec_b_new\nacct_c=\n").unwrap();
    let said = reload(&tenants);
    assert!(said.starts_with("keys not reloaded: "), "{said}");

    let order = |id: &str| fixture_with_id(&EventType::OrderSucceeded, id);
    assert_eq!(
        deliver(base, "acct_b", "whsec_b_old", &order("evt_m1")).await,
        200
    );
    assert_eq!(
        tenants.process.next_stdout(),
        "handled acct_b order.succeeded evt_m1"
    );
    assert_eq!(
        deliver(base, "acct_b", "whsec_b_new", &order("evt_m2")).await,
        401
    );
    assert_eq!(
        deliver(base, "acct_d", "whsec_d", &order("evt_m3")).await,
        200
    );
    assert_eq!(
        tenants.process.next_stdout(),
        "handled acct_d order.succeeded evt_m3"
    );
    assert_eq!(
        deliver(base, "acct_c", "whsec_c", &order("evt_m4")).await,
        404
    );
    // It says which account the mistake is in.
    assert!(said.contains("acct_c"), "{said}");

    // The file fixed, all of it applies.
    std::fs::write(&keys_file, "acct_b=whsec_b_new\nacct_c=whsec_c\n").unwrap();
    let said = reload(&tenants);
    assert_eq!(said, "reloaded keys: acct_a, acct_b, acct_c");
    assert_eq!(
        deliver(base, "acct_b", "whsec_b_old", &order("evt_m5")).await,
        401
    );
    assert_eq!(
        deliver(base, "acct_b", "whsec_b_new", &order("evt_m5")).await,
        200
    );
    assert_eq!(
        tenants.process.next_stdout(),
        "handled acct_b order.succeeded evt_m5"
    );
    assert_eq!(
        deliver(base, "acct_d", "whsec_d", &order("evt_m6")).await,
        404
    );

    let finished = tenants.process.terminate();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(
        !finished.stdout.contains("whsec") && !finished.stderr.contains("whsec"),
        "a secret was printed: {finished:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With keys looked up through a cache (`CLINK_TENANT_LOOKUP_MS`), a
/// reload takes effect at once: a rotated account's new secret is accepted
/// and its old one refused, an added account is let through the source's
/// precheck and looked up, a removed account is unknown; and an account
/// the reloads did not change is answered from the cache throughout, never
/// looked up again.
#[tokio::test]
async fn a_reload_takes_effect_at_once_through_the_lookup_cache() {
    let dir = keys_dir("cache");
    let keys_file = dir.join("keys");
    std::fs::write(&keys_file, "acct_b=whsec_b_old\n").unwrap();
    let tenants = start_with(
        "acct_a=whsec_a",
        &keys_file,
        &[("CLINK_TENANT_LOOKUP_MS", "1")],
    );
    let base = tenants.base.as_str();
    let order = |id: &str| fixture_with_id(&EventType::OrderSucceeded, id);

    // Looked up, and cached.
    for (account, secret) in [("acct_a", "whsec_a"), ("acct_b", "whsec_b_old")] {
        assert_eq!(deliver(base, account, secret, &order("evt_c1")).await, 200);
        assert_eq!(
            tenants.process.next_stdout(),
            format!("handled {account} order.succeeded evt_c1")
        );
    }

    std::fs::write(&keys_file, "acct_b=whsec_b_new\nacct_c=whsec_c\n").unwrap();
    assert_eq!(reload(&tenants), "reloaded keys: acct_a, acct_b, acct_c");
    assert_eq!(
        deliver(base, "acct_b", "whsec_b_old", &order("evt_c2")).await,
        401
    );
    assert_eq!(
        deliver(base, "acct_b", "whsec_b_new", &order("evt_c2")).await,
        200
    );
    assert_eq!(
        tenants.process.next_stdout(),
        "handled acct_b order.succeeded evt_c2"
    );
    assert_eq!(
        deliver(base, "acct_c", "whsec_c", &order("evt_c2")).await,
        200
    );
    assert_eq!(
        tenants.process.next_stdout(),
        "handled acct_c order.succeeded evt_c2"
    );
    assert_eq!(
        deliver(base, "acct_a", "whsec_a", &order("evt_c2")).await,
        200
    );
    assert_eq!(
        tenants.process.next_stdout(),
        "handled acct_a order.succeeded evt_c2"
    );

    std::fs::write(&keys_file, "").unwrap();
    assert_eq!(reload(&tenants), "reloaded keys: acct_a");
    for (account, secret) in [("acct_b", "whsec_b_new"), ("acct_c", "whsec_c")] {
        assert_eq!(deliver(base, account, secret, &order("evt_c3")).await, 404);
    }
    assert_eq!(
        deliver(base, "acct_a", "whsec_a", &order("evt_c3")).await,
        200
    );
    assert_eq!(
        tenants.process.next_stdout(),
        "handled acct_a order.succeeded evt_c3"
    );

    let finished = tenants.process.terminate();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    // acct_a once, acct_b before and after its rotation, acct_c once: the
    // reloads left acct_a's cached keys alone. (The cache keeps an answer
    // 5 minutes, far longer than this test runs.)
    assert!(
        finished.stderr.contains("key lookups: 4\n"),
        "{}",
        finished.stderr
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
