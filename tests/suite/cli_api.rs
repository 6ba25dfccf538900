//! `clink-webhook api` and `clink-webhook endpoints` end to end: the binary
//! run as a process against the fake Clink API, configured only by
//! `CLINK_SECRET_KEY`, `CLINK_ENV` and `CLINK_API_BASE_URL`. Object reads of
//! the five kinds, the order list and its filters, the endpoint commands
//! with secrets masked unless `--show-secret`, exit codes (1 when Clink says
//! no, 2 for configuration, usage and failures on the way), configuration
//! refused before any request, and no key in any output (checked on every
//! run, also by [`Process::finish`]).

use std::net::TcpListener;
use std::process::Command;

use clink_webhooks::EventType;
use serde_json::{json, Value};

use crate::support::fake_api::{AuthFailure, Failure, FakeApi};
use crate::support::process::{Finished, Process};

/// The key the fake accepts; it must never be printed.
const KEY: &str = "sk_test_cli_api_7d1f0e9c";
/// The events `--events core` stands for, in order.
const CORE: [&str; 6] = [
    "session.complete",
    "order.succeeded",
    "order.failed",
    "refund.succeeded",
    "subscription.created",
    "invoice.paid",
];

/// `clink-webhook` with none of the API's variables of this process's
/// environment, calling `base_url` with `keys` (`None`: no key at all).
fn clink_webhook(base_url: &str, keys: Option<&str>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clink-webhook"));
    for var in [
        "CLINK_SECRET_KEY",
        "CLINK_API_KEY",
        "CLINK_ENV",
        "CLINK_API_BASE_URL",
        "CLINK_BASE_URL",
        "CLINK_API_PLAIN_HTTP",
        "CLINK_WEBHOOK_SIGNING_KEY",
        "NO_COLOR",
    ] {
        command.env_remove(var);
    }
    command.env("CLINK_API_BASE_URL", base_url);
    if let Some(keys) = keys {
        command.env("CLINK_SECRET_KEY", keys);
    }
    command
}

/// Runs `command` to completion off the runtime (the fake API answers on
/// it meanwhile), and checks that no key it was given was printed.
async fn run(mut command: Command) -> Finished {
    let keys: Vec<String> = command
        .get_envs()
        .filter(|(var, _)| *var == "CLINK_SECRET_KEY")
        .filter_map(|(_, value)| value)
        .flat_map(|value| {
            let value = value.to_string_lossy().into_owned();
            value
                .split(',')
                .map(|key| key.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|key| !key.is_empty())
        .collect();
    let finished = tokio::task::spawn_blocking(move || Process::start(&mut command).finish())
        .await
        .unwrap();
    for key in keys {
        assert!(
            !finished.stdout.contains(&key) && !finished.stderr.contains(&key),
            "the key {key:?} was printed: {finished:?}"
        );
    }
    finished
}

/// Runs `clink-webhook ARGS` against `api` with [`KEY`].
async fn cli(api: &FakeApi, args: &[&str]) -> Finished {
    let mut command = clink_webhook(&api.base_url(), Some(KEY));
    command.args(args);
    run(command).await
}

/// A fake that accepts [`KEY`].
async fn fake() -> FakeApi {
    let api = FakeApi::start().await;
    api.accept_key(KEY);
    api
}

/// The one JSON line on stdout.
fn json_out(finished: &Finished) -> Value {
    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {finished:?}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {finished:?}"))
}

/// The one JSON error on stderr, checked to have a message.
fn json_error(finished: &Finished) -> Value {
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line: {finished:?}");
    let error: Value =
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {finished:?}"));
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{error}"
    );
    error
}

/// The one text error on stderr, without its `error: `.
fn text_error(finished: &Finished) -> &str {
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line: {finished:?}");
    lines[0]
        .strip_prefix("error: ")
        .unwrap_or_else(|| panic!("an error line: {finished:?}"))
}

#[tokio::test]
async fn api_get_prints_the_data_of_each_kind() {
    let api = fake().await;
    let objects = [
        (
            "order",
            "order/ord_1",
            "ord_1",
            json!({"orderId": "ord_1", "status": "success", "amountTotal": 19.99,
                   "paymentCurrency": "USD", "priceDataList": [{"name": "Pro", "unitAmount": 19.99}],
                   "futureField": {"kept": true}}),
        ),
        (
            "refund",
            "refund/rfd_1",
            "rfd_1",
            json!({"refundId": "rfd_1", "orderId": "ord_1", "status": "success"}),
        ),
        (
            "subscription",
            "subscription/sub_1",
            "sub_1",
            json!({"subscriptionId": "sub_1", "status": "active", "quantity": 2}),
        ),
        (
            "invoice",
            "subscription/invoice/inv_1",
            "inv_1",
            json!({"invoiceId": "inv_1", "status": "paid", "items": []}),
        ),
        (
            "session",
            "checkout/session/sess_1",
            "sess_1",
            json!({"sessionId": "sess_1", "status": "completed", "paymentStatus": "paid"}),
        ),
        // An id that must be percent-encoded in the path.
        (
            "order",
            "order/ord 2/x",
            "ord 2/x",
            json!({"orderId": "ord 2/x", "status": "pending"}),
        ),
    ];
    for (_, path, _, data) in &objects {
        api.put_object(path, data.clone());
    }
    for (kind, _, id, data) in &objects {
        // Text: the data, indented.
        let text = cli(&api, &["api", "get", kind, id]).await;
        assert_eq!(text.code, Some(0), "{text:?}");
        assert!(text.stdout.lines().count() > 2, "indented: {text:?}");
        let printed: Value = serde_json::from_str(&text.stdout).unwrap();
        assert_eq!(&printed, data, "{kind} {id}");
        assert!(text.stderr.is_empty(), "{text:?}");
        // --json: the same data on one line.
        let json = cli(&api, &["--json", "api", "get", kind, id]).await;
        assert_eq!(json.code, Some(0), "{json:?}");
        assert_eq!(&json_out(&json), data, "{kind} {id}");
    }
    assert_eq!(api.count("GET", "order/ord_1"), 2);
    assert_eq!(api.count("GET", "refund/rfd_1"), 2);
    assert_eq!(api.count("GET", "subscription/sub_1"), 2);
    assert_eq!(api.count("GET", "subscription/invoice/inv_1"), 2);
    assert_eq!(api.count("GET", "checkout/session/sess_1"), 2);
    assert_eq!(api.count("GET", "order/ord%202%2Fx"), 2);
    let requests = api.requests();
    assert_eq!(requests.len(), 12);
    assert!(requests.iter().all(|r| r.headers["x-api-key"] == KEY));
}

#[tokio::test]
async fn api_get_prints_hostile_values_escaped() {
    let api = fake().await;
    let data = json!({
        "orderId": "ord_1\u{202e}dlo",
        "merchantReferenceId": "\u{1b}[2J\u{1b}[31mred\u{2028}line\u{7f}",
    });
    api.put_object("order/ord_h", data.clone());
    for args in [
        &["api", "get", "order", "ord_h"][..],
        &["--json", "api", "get", "order", "ord_h"],
    ] {
        let finished = cli(&api, args).await;
        assert_eq!(finished.code, Some(0), "{finished:?}");
        for raw in ['\u{1b}', '\u{202e}', '\u{2028}', '\u{7f}'] {
            assert!(!finished.stdout.contains(raw), "{raw:?}: {finished:?}");
        }
        assert!(finished.stdout.contains(r"ord_1\u202edlo"), "{finished:?}");
        // Escaped, the value is still the same JSON.
        let printed: Value = serde_json::from_str(&finished.stdout).unwrap();
        assert_eq!(printed, data);
    }
}

#[tokio::test]
async fn api_get_of_a_missing_object_exits_1() {
    let api = fake().await;
    let text = cli(&api, &["api", "get", "refund", "rfd_missing"]).await;
    assert_eq!(text.code, Some(1), "{text:?}");
    assert!(text.stdout.is_empty(), "{text:?}");
    let message = text_error(&text);
    assert!(
        message.contains("GET /refund/rfd_missing") && message.contains("not found"),
        "{message}"
    );
    let json = cli(&api, &["--json", "api", "get", "invoice", "inv_missing"]).await;
    assert_eq!(json.code, Some(1), "{json:?}");
    assert_eq!(json_error(&json)["error"], "not_found");
    assert_eq!(api.count("GET", "refund/rfd_missing"), 1);
    assert_eq!(api.count("GET", "subscription/invoice/inv_missing"), 1);
}

#[tokio::test]
async fn a_refused_key_exits_1_and_is_never_printed() {
    let api = FakeApi::start().await;
    api.accept_key("sk_test_the_right_one_55aa");
    api.put_object("order/ord_1", json!({"orderId": "ord_1"}));
    // Both shapes of refusal: HTTP 401 with text, and HTTP 200 with code 401.
    for failure in [AuthFailure::HttpText, AuthFailure::Envelope] {
        api.set_auth_failure(failure);
        let before = api.requests().len();
        let text = cli(&api, &["api", "get", "order", "ord_1"]).await;
        assert_eq!(text.code, Some(1), "{failure:?}: {text:?}");
        assert!(text.stdout.is_empty(), "{text:?}");
        let message = text_error(&text);
        assert!(
            message.contains("unauthorized") && message.contains("CLINK_SECRET_KEY"),
            "{message}"
        );
        let json = cli(&api, &["--json", "endpoints", "list"]).await;
        assert_eq!(json.code, Some(1), "{failure:?}: {json:?}");
        assert_eq!(json_error(&json)["error"], "unauthorized");
        // The key was sent (and refused), not left out.
        let requests = api.requests();
        assert!(requests.len() > before);
        assert!(requests[before..]
            .iter()
            .all(|r| r.headers["x-api-key"] == KEY));
    }

    // A refusal whose message echoes the key: the key is not printed.
    api.accept_key(KEY);
    api.fail_next(
        "order/ord_1",
        Failure::Envelope {
            code: 400,
            msg: format!("bad request for apiKey={KEY}"),
        },
        1,
    );
    let echoed = cli(&api, &["--json", "api", "get", "order", "ord_1"]).await;
    assert_eq!(echoed.code, Some(1), "{echoed:?}");
    let error = json_error(&echoed);
    assert_eq!(error["error"], "envelope_error");
    assert!(
        error["message"].as_str().unwrap().contains("[redacted]"),
        "{error}"
    );

    // Data that holds the key: printed without it.
    api.put_object(
        "order/ord_echo",
        json!({"orderId": "ord_echo", "note": format!("key {KEY} here")}),
    );
    let data = cli(&api, &["api", "get", "order", "ord_echo"]).await;
    assert_eq!(data.code, Some(0), "{data:?}");
    assert!(data.stdout.contains("key [redacted] here"), "{data:?}");
}

#[tokio::test]
async fn several_keys_are_tried_newest_first() {
    let api = fake().await;
    api.put_object("order/ord_1", json!({"orderId": "ord_1"}));
    let mut command = clink_webhook(
        &api.base_url(),
        Some(&format!("sk_test_newest_not_yet_live_0b1c, {KEY}")),
    );
    command.args(["--json", "api", "get", "order", "ord_1"]);
    let finished = run(command).await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(json_out(&finished)["orderId"], "ord_1");
    let keys: Vec<_> = api
        .requests()
        .iter()
        .map(|r| r.headers["x-api-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["sk_test_newest_not_yet_live_0b1c", KEY]);
    // The refused newest key is said on stderr, by name, never the key.
    let warned: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(warned.len(), 1, "{finished:?}");
    assert!(
        warned[0].contains("WARN") && warned[0].contains("Clink refused the API key"),
        "{finished:?}"
    );
}

/// A key set to bytes that are not UTF-8 is said to be so (`api_config`,
/// exit 2), not reported missing, and nothing of it is printed. Before,
/// it was read as unset (`no_api_key`: "set CLINK_SECRET_KEY", which it
/// was).
#[cfg(unix)]
#[tokio::test]
async fn a_key_that_is_not_utf8_is_said_to_be_so() {
    use std::os::unix::ffi::OsStrExt;

    let api = fake().await;
    let key = std::ffi::OsStr::from_bytes(b"sk_test_\xff\xfe_latin1_\xe9t\xe9");
    let mut json = clink_webhook(&api.base_url(), None);
    json.env("CLINK_SECRET_KEY", key)
        .args(["--json", "api", "orders"]);
    let json = run(json).await;
    assert_eq!(json.code, Some(2), "{json:?}");
    let error = json_error(&json);
    assert_eq!(error["error"], "api_config", "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("CLINK_SECRET_KEY is set, but not to valid UTF-8"),
        "{message}"
    );
    assert!(!json.stderr.contains("latin1"), "{json:?}");
    assert!(api.requests().is_empty(), "nothing sent");
}

#[tokio::test]
async fn bad_configuration_exits_2_before_any_request() {
    let api = fake().await;
    let cases: [(Option<&str>, &[(&str, &str)], &str, &str); 6] = [
        (None, &[], "no_api_key", "CLINK_SECRET_KEY"),
        (Some(" "), &[], "no_api_key", "CLINK_SECRET_KEY"),
        (
            Some("pk_test_publishable_1a2b"),
            &[],
            "api_config",
            "publishable",
        ),
        (
            Some("whsec_signing_secret_3c4d"),
            &[],
            "api_config",
            "signing secret",
        ),
        (
            Some(KEY),
            &[("CLINK_ENV", "staging")],
            "api_config",
            "unknown Clink environment",
        ),
        // A production key with the default environment, the sandbox.
        (
            Some("sk_prod_live_money_5e6f"),
            &[],
            "api_config",
            "other environment",
        ),
    ];
    for (key, env, code, says) in cases {
        for args in [
            &["api", "get", "order", "ord_1"][..],
            &["api", "orders"],
            &["endpoints", "list"],
            &[
                "endpoints",
                "ensure",
                "https://shop.example/hooks",
                "--events",
                "core",
            ],
            &["endpoints", "delete", "whk_1"],
        ] {
            let mut text = clink_webhook(&api.base_url(), key);
            text.envs(env.iter().copied()).args(args);
            let text = run(text).await;
            assert_eq!(text.code, Some(2), "{key:?} {env:?} {args:?}: {text:?}");
            assert!(text.stdout.is_empty(), "{text:?}");
            let message = text_error(&text);
            assert!(message.contains(says), "{key:?} {env:?}: {message}");

            let mut json = clink_webhook(&api.base_url(), key);
            json.envs(env.iter().copied()).arg("--json").args(args);
            let json = run(json).await;
            assert_eq!(json.code, Some(2), "{json:?}");
            assert_eq!(json_error(&json)["error"], code, "{key:?} {env:?} {args:?}");
        }
    }
    // A base URL that is not one.
    let mut command = clink_webhook("ftp://127.0.0.1/api/", Some(KEY));
    command.args(["--json", "api", "get", "order", "ord_1"]);
    let finished = run(command).await;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert_eq!(json_error(&finished)["error"], "api_config");

    assert!(api.requests().is_empty(), "{:?}", api.requests());
}

/// A base URL that would send the key unencrypted beyond this machine, or
/// another tool's variable for it set alone, stops the call before
/// anything is sent (exit 2), and says why.
#[tokio::test]
async fn a_base_url_that_would_expose_the_key_or_is_misnamed_is_refused() {
    for (vars, removed, said) in [
        (
            &[("CLINK_API_BASE_URL", "http://10.255.255.1/api/")][..],
            None,
            "unencrypted",
        ),
        (
            &[("CLINK_BASE_URL", "http://127.0.0.1:9/api/")],
            Some("CLINK_API_BASE_URL"),
            "CLINK_API_BASE_URL",
        ),
        (
            &[("CLINK_API_PLAIN_HTTP", "maybe")],
            None,
            "CLINK_API_PLAIN_HTTP",
        ),
        (
            &[("CLINK_API_BASE_URL", "https://u:hunter2@api.example/api/")],
            None,
            "user or password",
        ),
    ] {
        let mut command = clink_webhook("http://127.0.0.1:9/api/", Some(KEY));
        command.envs(vars.iter().copied());
        if let Some(removed) = removed {
            command.env_remove(removed);
        }
        command.args(["api", "get", "order", "ord_1"]);
        let finished = run(command).await;
        assert_eq!(finished.code, Some(2), "{vars:?}: {finished:?}");
        let error = text_error(&finished);
        assert!(error.contains(said), "{vars:?}: {error}");
        assert!(!error.contains("hunter2"), "{vars:?}: {error}");
    }
}

#[tokio::test]
async fn failures_on_the_way_exit_2() {
    // A closed port: the connection is refused.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{closed}/api/");
    for args in [
        &["api", "get", "order", "ord_1"][..],
        &["endpoints", "disable", "whk_1"],
    ] {
        let mut command = clink_webhook(&base, Some(KEY));
        command.args(args);
        let text = run(command).await;
        assert_eq!(text.code, Some(2), "{text:?}");
        assert!(text_error(&text).contains("connection failed"), "{text:?}");
        let mut command = clink_webhook(&base, Some(KEY));
        command.arg("--json").args(args);
        let json = run(command).await;
        assert_eq!(json.code, Some(2), "{json:?}");
        assert_eq!(json_error(&json)["error"], "transport");
    }

    // A server error on every attempt of a read.
    let api = fake().await;
    api.put_object("order/ord_1", json!({"orderId": "ord_1"}));
    api.fail_next("order/ord_1", Failure::Status(503), 100);
    let finished = cli(&api, &["--json", "api", "get", "order", "ord_1"]).await;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert_eq!(json_error(&finished)["error"], "server_error");
    assert!(api.count("GET", "order/ord_1") > 1, "reads are retried");
    // ... while one server error is retried away.
    let api = fake().await;
    api.put_object("order/ord_1", json!({"orderId": "ord_1"}));
    api.fail_next("order/ord_1", Failure::Status(503), 1);
    let finished = cli(&api, &["--json", "api", "get", "order", "ord_1"]).await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(api.count("GET", "order/ord_1"), 2);
}

#[tokio::test]
async fn api_orders_sends_the_filters_and_prints_rows() {
    let api = fake().await;
    let orders = [
        json!({"orderId": "ord_a1", "customerId": "cus_1", "subscriptionId": "sub_1",
               "status": "success", "amountTotal": 19.99, "paymentCurrency": "USD"}),
        json!({"orderId": "ord_a2", "customerId": "cus_1",
               "status": "refunded", "amountTotal": 5, "originalCurrency": "EUR"}),
        json!({"orderId": "ord_b1", "customerId": "cus_2",
               "status": "failed", "amountTotal": 7.5, "paymentCurrency": "JPY"}),
    ];
    for order in &orders {
        api.put_object(
            &format!("order/{}", order["orderId"].as_str().unwrap()),
            order.clone(),
        );
    }

    let text = cli(
        &api,
        &[
            "api",
            "orders",
            "--customer-id",
            "cus_1",
            "--page",
            "1",
            "--page-size",
            "10",
        ],
    )
    .await;
    assert_eq!(text.code, Some(0), "{text:?}");
    let query = api.requests().last().unwrap().query.clone().unwrap();
    assert_eq!(query, "customerId=cus_1&pageNum=1&pageSize=10");
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header, two rows, a count: {text:?}");
    let words = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(words(lines[0]), ["ORDER", "STATUS", "AMOUNT", "CURRENCY"]);
    assert_eq!(words(lines[1]), ["ord_a1", "success", "19.99", "USD"]);
    assert_eq!(words(lines[2]), ["ord_a2", "refunded", "5", "EUR"]);
    assert_eq!(lines[3], "2 of 2 orders, page 1");
    assert!(!text.stdout.contains("ord_b1"), "{text:?}");

    let json = cli(
        &api,
        &["--json", "api", "orders", "--subscription-id", "sub_1"],
    )
    .await;
    assert_eq!(json.code, Some(0), "{json:?}");
    let query = api.requests().last().unwrap().query.clone().unwrap();
    assert_eq!(query, "subscriptionId=sub_1");
    let page = json_out(&json);
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["rows"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["rows"][0]["orderId"], "ord_a1");
    assert_eq!(page["rows"][0]["status"], "success");

    // No filter: every order; the second page of two a page.
    let json = cli(
        &api,
        &["--json", "api", "orders", "--page", "2", "--page-size", "2"],
    )
    .await;
    assert_eq!(
        api.requests().last().unwrap().query.as_deref(),
        Some("pageNum=2&pageSize=2")
    );
    let page = json_out(&json);
    assert_eq!(
        (page["total"].clone(), page["rows"][0]["orderId"].clone()),
        (json!(3), json!("ord_b1"))
    );
    let empty = cli(&api, &["api", "orders", "--customer-id", "cus_none"]).await;
    assert_eq!(empty.code, Some(0), "{empty:?}");
    assert_eq!(empty.stdout, "no orders on page 1 (0 in all)\n");

    // Values from the API are printed escaped.
    api.put_object(
        "order/ord_\u{1b}[2J",
        json!({"orderId": "ord_\u{1b}[2J", "customerId": "cus_h",
               "status": "odd\u{202e}sutats", "paymentCurrency": "US\nD"}),
    );
    let hostile = cli(&api, &["api", "orders", "--customer-id", "cus_h"]).await;
    assert_eq!(hostile.code, Some(0), "{hostile:?}");
    for raw in ['\u{1b}', '\u{202e}'] {
        assert!(!hostile.stdout.contains(raw), "{hostile:?}");
    }
    assert!(
        hostile.stdout.contains(r#""ord_\u{1b}[2J""#)
            && hostile.stdout.contains(r#""odd\u{202e}sutats""#)
            && hostile.stdout.contains(r#""US\nD""#),
        "{hostile:?}"
    );
    assert_eq!(hostile.stdout.lines().count(), 3, "{hostile:?}");

    // A page size past Clink's limit is a usage error, sent nowhere.
    let before = api.requests().len();
    let big = cli(&api, &["--json", "api", "orders", "--page-size", "51"]).await;
    assert_eq!(big.code, Some(2), "{big:?}");
    assert_eq!(json_error(&big)["error"], "usage");
    assert_eq!(api.requests().len(), before);
}

/// The body of the last request to `PUT webhook/endpoints/ensure`.
fn last_ensure(api: &FakeApi) -> Value {
    let request = api
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.method == "PUT" && r.path == "webhook/endpoints/ensure")
        .expect("an ensure request");
    serde_json::from_slice(&request.body).unwrap()
}

#[tokio::test]
async fn endpoints_from_ensure_to_delete_with_secrets_masked() {
    let api = fake().await;
    let url = "https://shop.example/hooks/clink";

    // ensure creates it; the secret Clink returned, shown only once, is
    // printed in full.
    let created = cli(
        &api,
        &[
            "endpoints",
            "ensure",
            url,
            "--events",
            "core",
            "--description",
            "Shop",
        ],
    )
    .await;
    assert_eq!(created.code, Some(0), "{created:?}");
    let body = last_ensure(&api);
    assert_eq!(body["url"], url);
    assert_eq!(body["events"], json!(CORE));
    assert_eq!(body["description"], "Shop");
    assert_eq!(body["enabled"], true);
    // It asks for the secret, which Clink shows only on creation, and
    // rotates nothing for it.
    assert_eq!(body["returnSigningSecret"], true);
    assert_eq!(body["rotateSecretIfUnavailable"], false);
    assert_eq!(body["rotateSecret"], false);
    let lines: Vec<&str> = created.stdout.lines().collect();
    assert_eq!(lines[0], "created", "{created:?}");
    assert!(lines[1].starts_with("whk_1  enabled"), "{created:?}");
    let id = "whk_1";
    let first = api.endpoint_secret(id).unwrap();
    assert!(
        created
            .stdout
            .contains(&format!("  secret       {first}\n")),
        "{created:?}"
    );
    assert!(created.stdout.contains(url) && created.stdout.contains("Shop"));

    // Again with every event: updated; Clink cannot show the old secret.
    let updated = cli(
        &api,
        &["--json", "endpoints", "ensure", url, "--events", "all"],
    )
    .await;
    assert_eq!(updated.code, Some(0), "{updated:?}");
    let all: Vec<&str> = EventType::ALL.iter().map(EventType::as_str).collect();
    assert_eq!(all.len(), 44);
    assert_eq!(last_ensure(&api)["events"], json!(all));
    let ensured = json_out(&updated);
    assert_eq!(ensured["source"], "updated", "{ensured}");
    assert_eq!(ensured["endpoint"]["id"], id);
    assert_eq!(ensured["endpoint"]["signingSecret"], Value::Null);
    assert_eq!(ensured["signingSecretAvailable"], false);
    assert_eq!(ensured["nextAction"], "rotate-secret");
    // The same URL typed otherwise is sent as Clink's own CLI writes it:
    // the same endpoint, updated, not a second one.
    for spelling in [
        "HTTPS://Shop.Example:443/hooks/clink",
        " https://SHOP.example/hooks/clink",
    ] {
        let again = cli(
            &api,
            &["--json", "endpoints", "ensure", spelling, "--events", "all"],
        )
        .await;
        assert_eq!(again.code, Some(0), "{again:?}");
        assert_eq!(last_ensure(&api)["url"], url, "{spelling}");
        assert_eq!(json_out(&again)["source"], "updated", "{spelling}");
        assert_eq!(json_out(&again)["endpoint"]["id"], id, "{spelling}");
    }
    let text = cli(
        &api,
        &[
            "endpoints",
            "ensure",
            url,
            "--events",
            "order.succeeded,core, order.succeeded",
        ],
    )
    .await;
    assert_eq!(text.code, Some(0), "{text:?}");
    let mut events = vec!["order.succeeded"];
    events.extend(CORE.iter().filter(|e| **e != "order.succeeded"));
    assert_eq!(last_ensure(&api)["events"], json!(events));
    assert!(
        text.stdout.contains("no signing secret returned"),
        "{text:?}"
    );
    assert!(text.stdout.contains("next: rotate-secret"), "{text:?}");

    // --return-secret --no-rotate-secret-if-unavailable: no rotation, no secret.
    let kept = cli(
        &api,
        &[
            "--json",
            "endpoints",
            "ensure",
            url,
            "--events",
            "core",
            "--return-secret",
            "--no-rotate-secret-if-unavailable",
            "--show-secret",
        ],
    )
    .await;
    assert_eq!(kept.code, Some(0), "{kept:?}");
    let body = last_ensure(&api);
    assert_eq!(
        (
            body["returnSigningSecret"].clone(),
            body["rotateSecretIfUnavailable"].clone()
        ),
        (json!(true), json!(false))
    );
    assert_eq!(json_out(&kept)["signingSecretAvailable"], false);
    assert_eq!(api.endpoint_secret(id).unwrap(), first, "not rotated");

    // --return-secret: rotated to return one, shown with --show-secret.
    let shown = cli(
        &api,
        &[
            "--json",
            "endpoints",
            "ensure",
            url,
            "--events",
            "core",
            "--return-secret",
            "--show-secret",
        ],
    )
    .await;
    assert_eq!(shown.code, Some(0), "{shown:?}");
    let body = last_ensure(&api);
    assert_eq!(
        (
            body["returnSigningSecret"].clone(),
            body["rotateSecretIfUnavailable"].clone()
        ),
        (json!(true), json!(true))
    );
    let second = api.endpoint_secret(id).unwrap();
    assert_ne!(second, first);
    let ensured = json_out(&shown);
    assert_eq!(ensured["source"], "rotated", "{ensured}");
    assert_eq!(ensured["signingSecretAvailable"], true);
    assert_eq!(ensured["endpoint"]["signingSecret"], second.as_str());

    // --rotate-secret without --show-secret: refused before anything is
    // sent, since the new secret would be printed masked and lost.
    let ensures = api.count("PUT", "webhook/endpoints/ensure");
    let refused = cli(
        &api,
        &[
            "--json",
            "endpoints",
            "ensure",
            url,
            "--events",
            "core",
            "--rotate-secret",
        ],
    )
    .await;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("--show-secret"), "{refused:?}");
    assert_eq!(api.count("PUT", "webhook/endpoints/ensure"), ensures);
    assert_eq!(api.endpoint_secret(id).unwrap(), second);
    let rotated = cli(
        &api,
        &[
            "--json",
            "endpoints",
            "--show-secret",
            "ensure",
            url,
            "--events",
            "core",
            "--rotate-secret",
        ],
    )
    .await;
    assert_eq!(rotated.code, Some(0), "{rotated:?}");
    assert_eq!(last_ensure(&api)["rotateSecret"], true);
    // A rotation asks for its secret back, or Clink may withhold it.
    assert_eq!(last_ensure(&api)["returnSigningSecret"], true);
    let third = api.endpoint_secret(id).unwrap();
    assert_ne!(third, second);
    assert_eq!(
        json_out(&rotated)["endpoint"]["signingSecret"],
        third.as_str()
    );

    // list: text, JSON, filters.
    let other = api.add_endpoint("https://other.example/hook", &["invoice.paid"]);
    let list = cli(&api, &["endpoints", "list"]).await;
    assert_eq!(list.code, Some(0), "{list:?}");
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{list:?}");
    assert!(
        lines[0].starts_with("whk_1  enabled   https://shop.example/hooks/clink  6 events  Shop"),
        "{list:?}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{other}  enabled   https://other.example/hook  1 event"
        )),
        "{list:?}"
    );
    assert_eq!(lines[2], "2 of 2 endpoints, page 1");
    let list = cli(&api, &["--json", "endpoints", "list", "--url", url]).await;
    let query = api.requests().last().unwrap().query.clone().unwrap();
    assert_eq!(
        query,
        "pageNum=1&pageSize=20&url=https%3A%2F%2Fshop.example%2Fhooks%2Fclink"
    );
    let page = json_out(&list);
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["rows"][0]["id"], id);
    assert_eq!(page["rows"][0]["signingSecret"], Value::Null);

    // disable and enable, seen by the fake.
    let disabled = cli(&api, &["--json", "endpoints", "disable", id]).await;
    assert_eq!(disabled.code, Some(0), "{disabled:?}");
    assert_eq!(json_out(&disabled)["enabled"], false);
    assert_eq!(api.count("POST", "webhook/endpoints/whk_1/disable"), 1);
    let list = cli(
        &api,
        &[
            "--json",
            "endpoints",
            "list",
            "--enabled",
            "false",
            "--page-size",
            "5",
        ],
    )
    .await;
    let query = api.requests().last().unwrap().query.clone().unwrap();
    assert_eq!(query, "pageNum=1&pageSize=5&enabled=false");
    let page = json_out(&list);
    assert_eq!(
        (page["total"].clone(), page["rows"][0]["id"].clone()),
        (json!(1), json!(id))
    );
    let get = cli(&api, &["endpoints", "get", id]).await;
    assert!(get.stdout.starts_with("whk_1  disabled\n"), "{get:?}");
    let enabled = cli(&api, &["endpoints", "enable", id]).await;
    assert_eq!(enabled.code, Some(0), "{enabled:?}");
    assert!(
        enabled.stdout.starts_with("enabled\nwhk_1  enabled\n"),
        "{enabled:?}"
    );
    assert_eq!(api.count("POST", "webhook/endpoints/whk_1/enable"), 1);
    let get = cli(&api, &["--json", "endpoints", "get", id]).await;
    let endpoint = json_out(&get);
    assert_eq!(endpoint["enabled"], true);
    assert_eq!(endpoint["url"], url);
    assert_eq!(endpoint["events"], json!(CORE));
    assert_eq!(endpoint["signingSecret"], Value::Null);

    // rotate-secret: refused without --show-secret, then shown.
    let refused = cli(&api, &["endpoints", "rotate-secret", id]).await;
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("--show-secret"), "{refused:?}");
    assert_eq!(
        api.count("POST", "webhook/endpoints/whk_1/rotate-secret"),
        0
    );
    let fourth = api.endpoint_secret(id).unwrap();
    assert_eq!(fourth, third);
    let shown = cli(&api, &["endpoints", "rotate-secret", id, "--show-secret"]).await;
    let fifth = api.endpoint_secret(id).unwrap();
    assert_ne!(fifth, fourth);
    assert!(
        shown.stdout.contains(&format!("secret       {fifth}\n")),
        "{shown:?}"
    );
    let shown = cli(
        &api,
        &["--json", "endpoints", "--show-secret", "rotate-secret", id],
    )
    .await;
    let sixth = api.endpoint_secret(id).unwrap();
    assert_eq!(json_out(&shown)["signingSecret"], sixth.as_str());
    assert_eq!(
        api.count("POST", "webhook/endpoints/whk_1/rotate-secret"),
        2
    );

    // delete; then it is not found.
    let deleted = cli(&api, &["endpoints", "delete", id]).await;
    assert_eq!(deleted.code, Some(0), "{deleted:?}");
    assert_eq!(deleted.stdout, "deleted whk_1\n");
    assert_eq!(api.endpoint_secret(id), None);
    let deleted = cli(&api, &["--json", "endpoints", "delete", &other]).await;
    assert_eq!(json_out(&deleted), json!({ "deleted": other }));
    let gone = cli(&api, &["--json", "endpoints", "get", id]).await;
    assert_eq!(gone.code, Some(1), "{gone:?}");
    assert_eq!(json_error(&gone)["error"], "not_found");
    let gone = cli(&api, &["endpoints", "delete", id]).await;
    assert_eq!(gone.code, Some(1), "{gone:?}");
    assert!(text_error(&gone).contains("not found"), "{gone:?}");
    assert_eq!(api.count("DELETE", "webhook/endpoints/whk_1"), 2);
}

/// An endpoint `ensure` created whose answer holds no secret fails, in
/// text and in JSON: Clink signs its deliveries with a secret nobody has
/// and never shows it again, so the error says how to rotate it. Without
/// any flag, `ensure` asks for the secret (and the fake, as Clink may,
/// shows a new endpoint's secret only when asked).
#[tokio::test]
async fn an_endpoint_created_without_its_secret_fails() {
    let api = fake().await;
    for (json_flag, url) in [
        (false, "https://shop.example/hooks/a"),
        (true, "https://shop.example/hooks/b"),
    ] {
        api.patch_next(
            "webhook/endpoints/ensure",
            json!({ "endpoint": { "signingSecret": null }, "signingSecretAvailable": false }),
            1,
        );
        let mut args = vec!["endpoints", "ensure", url, "--events", "core"];
        if json_flag {
            args.insert(0, "--json");
        }
        let ensured = cli(&api, &args).await;
        assert_eq!(ensured.code, Some(2), "{ensured:?}");
        assert!(
            ensured
                .stderr
                .contains("created the endpoint but its answer holds no signing secret")
                && ensured.stderr.contains("rotate-secret whk_"),
            "{ensured:?}"
        );
    }
    // Unpatched, the same command gets the secret and prints it in full.
    let url = "https://shop.example/hooks/c";
    let created = cli(&api, &["endpoints", "ensure", url, "--events", "core"]).await;
    assert_eq!(created.code, Some(0), "{created:?}");
    let id = created
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let secret = api.endpoint_secret(id).unwrap();
    assert!(
        created
            .stdout
            .contains(&format!("  secret       {secret}\n")),
        "{created:?}"
    );
}

/// A rotation answered without its new secret fails (the old secret no
/// longer verifies and nobody has the new one), saying how to get one;
/// `--show-secret` on an ensure asks for the secret without rotating.
#[tokio::test]
async fn a_rotation_answered_without_its_secret_fails() {
    let api = fake().await;
    let url = "https://shop.example/hooks/clink";
    let id = api.add_endpoint(url, &["order.succeeded"]);
    let rotate = format!("webhook/endpoints/{id}/rotate-secret");

    api.patch_next(&rotate, json!({ "signingSecret": null }), 2);
    let before = api.endpoint_secret(&id).unwrap();
    let rotated = cli(&api, &["endpoints", "--show-secret", "rotate-secret", &id]).await;
    assert_ne!(api.endpoint_secret(&id).unwrap(), before, "it rotated");
    assert_eq!(rotated.code, Some(2), "{rotated:?}");
    let error = text_error(&rotated);
    assert!(error.contains("holds no new secret"), "{rotated:?}");
    assert!(
        error.contains(&format!("rotate-secret {id} --show-secret")),
        "{rotated:?}"
    );
    let rotated = cli(
        &api,
        &["--json", "endpoints", "--show-secret", "rotate-secret", &id],
    )
    .await;
    assert_eq!(rotated.code, Some(2), "{rotated:?}");
    assert_eq!(json_error(&rotated)["error"], "decode", "{rotated:?}");
    // An empty secret, or one of spaces, is none either.
    for blank in ["", "  "] {
        api.patch_next(&rotate, json!({ "signingSecret": blank }), 1);
        let rotated = cli(
            &api,
            &["--json", "endpoints", "--show-secret", "rotate-secret", &id],
        )
        .await;
        assert_eq!(rotated.code, Some(2), "{blank:?}: {rotated:?}");
        assert_eq!(json_error(&rotated)["error"], "decode", "{rotated:?}");
    }

    for json_flag in [false, true] {
        api.patch_next(
            "webhook/endpoints/ensure",
            json!({ "endpoint": { "signingSecret": null }, "signingSecretAvailable": false }),
            1,
        );
        let mut args = vec![
            "endpoints",
            "--show-secret",
            "ensure",
            url,
            "--events",
            "core",
            "--rotate-secret",
        ];
        if json_flag {
            args.insert(0, "--json");
        }
        let ensured = cli(&api, &args).await;
        assert_eq!(ensured.code, Some(2), "{ensured:?}");
        assert!(
            ensured.stderr.contains("holds no new secret")
                && ensured.stderr.contains("--rotate-secret --show-secret"),
            "{ensured:?}"
        );
    }

    // --show-secret alone asks for the secret, and does not rotate for it.
    let kept = api.endpoint_secret(&id).unwrap();
    let shown = cli(
        &api,
        &[
            "endpoints",
            "--show-secret",
            "ensure",
            url,
            "--events",
            "core",
        ],
    )
    .await;
    assert_eq!(shown.code, Some(0), "{shown:?}");
    let body = last_ensure(&api);
    assert_eq!(
        (
            body["returnSigningSecret"].clone(),
            body["rotateSecretIfUnavailable"].clone(),
            body["rotateSecret"].clone()
        ),
        (json!(true), json!(false), json!(false))
    );
    assert_eq!(api.endpoint_secret(&id).unwrap(), kept, "not rotated");
}

#[tokio::test]
async fn endpoint_arguments_are_checked_before_any_request() {
    let api = fake().await;
    let cases: [(&[&str], &str); 9] = [
        (
            &[
                "endpoints",
                "ensure",
                "http://shop.example/h",
                "--events",
                "core",
            ],
            "bad_url",
        ),
        (
            &["endpoints", "ensure", "not a url", "--events", "core"],
            "bad_url",
        ),
        (
            &[
                "endpoints",
                "ensure",
                "https://shop.example/h",
                "--events",
                "core,order.paid",
            ],
            "unknown_event_type",
        ),
        (
            &[
                "endpoints",
                "ensure",
                "https://shop.example/h",
                "--events",
                ",",
            ],
            "usage",
        ),
        (&["endpoints", "ensure", "https://shop.example/h"], "usage"),
        (
            &[
                "endpoints",
                "ensure",
                "https://shop.example/h",
                "--events",
                "core",
                "--no-rotate-secret-if-unavailable",
            ],
            "usage",
        ),
        (&["endpoints", "list", "--enabled", "yes"], "usage"),
        (&["api"], "usage"),
        (&["endpoints", "--show-secret"], "usage"),
    ];
    for (args, code) in cases {
        let finished = cli(&api, &[&["--json"][..], args].concat()).await;
        assert_eq!(finished.code, Some(2), "{args:?}: {finished:?}");
        assert_eq!(json_error(&finished)["error"], code, "{args:?}");
    }
    let bare = cli(&api, &["--json", "api"]).await;
    assert_eq!(
        json_error(&bare)["message"],
        "api needs a subcommand: see `clink-webhook api --help`"
    );
    let text = cli(
        &api,
        &[
            "endpoints",
            "ensure",
            "https://shop.example/h",
            "--events",
            "order.paid",
        ],
    )
    .await;
    assert_eq!(text.code, Some(2), "{text:?}");
    assert!(
        text_error(&text).contains("order.paid is not an event type"),
        "{text:?}"
    );
    assert!(api.requests().is_empty(), "{:?}", api.requests());
}

#[tokio::test]
async fn ensure_that_creates_an_endpoint_prints_its_secret_in_full() {
    let api = fake().await;
    // Without secret flags, in text: the new endpoint's secret, in full.
    let url = "https://shop.example/hooks/new";
    let text = cli(&api, &["endpoints", "ensure", url, "--events", "core"]).await;
    assert_eq!(text.code, Some(0), "{text:?}");
    let id = api.endpoint_id(url).unwrap();
    let secret = api.endpoint_secret(&id).unwrap();
    assert!(
        text.stdout.contains(&format!("  secret       {secret}\n")),
        "{text:?}"
    );
    assert!(text.stdout.contains("only once"), "{text:?}");

    // Asked for the secret without a rotation, in JSON: the same.
    let url = "https://shop.example/hooks/other";
    let json = cli(
        &api,
        &[
            "--json",
            "endpoints",
            "ensure",
            url,
            "--events",
            "core",
            "--return-secret",
            "--no-rotate-secret-if-unavailable",
        ],
    )
    .await;
    assert_eq!(json.code, Some(0), "{json:?}");
    let ensured = json_out(&json);
    assert_eq!(ensured["source"], "created", "{ensured}");
    let id = api.endpoint_id(url).unwrap();
    let secret = api.endpoint_secret(&id).unwrap();
    assert_eq!(ensured["endpoint"]["signingSecret"], secret.as_str());

    // The endpoint exists now: no secret, nothing in full.
    let again = cli(&api, &["endpoints", "ensure", url, "--events", "core"]).await;
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(!again.stdout.contains(&secret), "{again:?}");
    assert!(!again.stdout.contains("only once"), "{again:?}");
    assert!(
        again.stdout.contains("no signing secret returned"),
        "{again:?}"
    );
    // Nor does a read print one.
    let get = cli(&api, &["endpoints", "get", &id]).await;
    assert!(!get.stdout.contains(&secret), "{get:?}");
}

#[tokio::test]
async fn a_rotation_whose_answer_is_lost_says_the_secret_may_have_been_rotated() {
    let api = fake().await;
    let id = api.add_endpoint("https://shop.example/hooks/a", &["order.succeeded"]);
    let ensured_url = "https://shop.example/hooks/b";
    let ensured_id = api.add_endpoint(ensured_url, &["order.succeeded"]);
    let rotate = format!("webhook/endpoints/{id}/rotate-secret");
    let (old, ensured_old) = (
        api.endpoint_secret(&id).unwrap(),
        api.endpoint_secret(&ensured_id).unwrap(),
    );

    // Clink rotates, but its answers come only after the CLI's request
    // timeout (10 s); both commands run side by side.
    let held = [
        api.hold_next(&rotate),
        api.hold_next("webhook/endpoints/ensure"),
    ];
    let rotate_args = ["endpoints", "rotate-secret", &id, "--show-secret"];
    let ensure_args = [
        "--json",
        "endpoints",
        "ensure",
        ensured_url,
        "--events",
        "core",
        "--rotate-secret",
        "--show-secret",
    ];
    let (rotated, ensured) = tokio::join!(cli(&api, &rotate_args), cli(&api, &ensure_args));
    drop(held);
    assert_ne!(api.endpoint_secret(&id).unwrap(), old, "Clink rotated");
    assert_ne!(api.endpoint_secret(&ensured_id).unwrap(), ensured_old);
    assert_eq!(rotated.code, Some(2), "{rotated:?}");
    let message = text_error(&rotated);
    assert!(message.contains("timed out"), "{rotated:?}");
    assert!(message.contains("MAY have been rotated"), "{rotated:?}");
    assert!(
        message.contains(&format!("endpoints rotate-secret {id} --show-secret")),
        "{rotated:?}"
    );
    assert_eq!(ensured.code, Some(2), "{ensured:?}");
    let error = json_error(&ensured);
    assert_eq!(error["error"], "timeout");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("MAY have created the endpoint or rotated its signing secret"),
        "{message}"
    );
    assert!(
        message.contains("--rotate-secret --show-secret"),
        "{message}"
    );

    // An answer that cannot be read, after Clink rotated; a server error.
    api.patch_next(&rotate, json!("not an endpoint"), 1);
    let unreadable = cli(&api, &["endpoints", "rotate-secret", &id, "--show-secret"]).await;
    assert_eq!(unreadable.code, Some(2), "{unreadable:?}");
    assert!(
        text_error(&unreadable).contains("unexpected answer"),
        "{unreadable:?}"
    );
    assert!(
        text_error(&unreadable).contains("MAY have been rotated"),
        "{unreadable:?}"
    );
    api.fail_next(&rotate, Failure::Status(502), 1);
    let failed = cli(
        &api,
        &["--json", "endpoints", "rotate-secret", &id, "--show-secret"],
    )
    .await;
    let error = json_error(&failed);
    assert_eq!(error["error"], "server_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("MAY have been rotated"),
        "{error}"
    );

    // No connection could be made: nothing was rotated, and the error
    // says so, not that it may have been.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut command = clink_webhook(&format!("http://{closed}/api/"), Some(KEY));
    command.args(["endpoints", "rotate-secret", &id, "--show-secret"]);
    let unreached = run(command).await;
    assert_eq!(unreached.code, Some(2), "{unreached:?}");
    let message = text_error(&unreached);
    assert!(message.contains("connection failed"), "{unreached:?}");
    assert!(message.contains("never reached Clink"), "{unreached:?}");
    assert!(!unreached.stderr.contains("MAY"), "{unreached:?}");

    // Clink saying no rotated nothing: the error says no more.
    api.fail_next(
        &rotate,
        Failure::Envelope {
            code: 400,
            msg: "endpoint disabled".to_owned(),
        },
        1,
    );
    let refused = cli(&api, &["endpoints", "rotate-secret", &id, "--show-secret"]).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(!refused.stderr.contains("MAY"), "{refused:?}");
    let missing = cli(
        &api,
        &["endpoints", "rotate-secret", "whk_none", "--show-secret"],
    )
    .await;
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(!missing.stderr.contains("MAY"), "{missing:?}");
}

#[tokio::test]
async fn a_secret_that_comes_with_an_error_is_printed_and_the_command_fails() {
    let api = fake().await;
    let id = api.add_endpoint("https://shop.example/hooks/a", &["order.succeeded"]);
    let rotate = format!("webhook/endpoints/{id}/rotate-secret");

    // Clink rotates, but its answer says no, with the new secret in it.
    api.patch_answer_next(&rotate, json!({"code": 0, "msg": "done"}), 1);
    let text = cli(&api, &["endpoints", "rotate-secret", &id, "--show-secret"]).await;
    let new = api.endpoint_secret(&id).unwrap();
    assert_eq!(text.code, Some(1), "{text:?}");
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{text:?}");
    assert!(lines[0].contains("was an error"), "{text:?}");
    assert_eq!(lines[1], id);
    assert_eq!(lines[2], format!("  secret       {new}"));
    let message = text_error(&text);
    assert!(
        message.contains("refused (HTTP 200, code 0): done"),
        "{text:?}"
    );
    assert!(
        message.contains("carried a signing secret, printed in full on stdout"),
        "{text:?}"
    );
    assert!(
        message.contains(&format!("endpoints rotate-secret {id} --show-secret")),
        "{text:?}"
    );
    assert!(
        !message.contains("MAY") && !message.contains(&new),
        "{text:?}"
    );

    // With --json: the field a rotation's success has it in.
    api.patch_answer_next(&rotate, json!({"code": 0, "msg": "done"}), 1);
    let json = cli(
        &api,
        &["--json", "endpoints", "rotate-secret", &id, "--show-secret"],
    )
    .await;
    let new = api.endpoint_secret(&id).unwrap();
    assert_eq!(json.code, Some(1), "{json:?}");
    assert_eq!(
        json_out(&json),
        json!({"id": id, "signingSecret": new.as_str()})
    );
    let error = json_error(&json);
    assert_eq!(error["error"], "envelope_error");
    assert!(
        !error["message"].as_str().unwrap().contains(&new),
        "{error}"
    );

    // An ensure that creates, without --show-secret: the new endpoint's
    // secret in full, as its success prints it.
    let url = "https://shop.example/hooks/new";
    api.patch_answer_next("webhook/endpoints/ensure", json!({"code": 0}), 1);
    let ensured = cli(&api, &["endpoints", "ensure", url, "--events", "core"]).await;
    let created = api.endpoint_secret(&api.endpoint_id(url).unwrap()).unwrap();
    assert_eq!(ensured.code, Some(1), "{ensured:?}");
    assert!(
        ensured
            .stdout
            .contains(&format!("  url          {url}\n  secret       {created}\n")),
        "{ensured:?}"
    );
    assert!(
        text_error(&ensured)
            .contains("if Clink created the endpoint or rotated its signing secret"),
        "{ensured:?}"
    );

    // A server error that carries one: printed, and the exit code of a
    // failure on the way.
    let given = "whsec_given_with_a_server_error_0c4f";
    api.fail_next(
        "webhook/endpoints/ensure",
        Failure::Json {
            status: 500,
            body: json!({"code": 500, "msg": "busy",
                         "data": {"endpoint": {"signingSecret": given}}})
            .to_string(),
        },
        1,
    );
    let failed = cli(
        &api,
        &[
            "--json",
            "endpoints",
            "ensure",
            url,
            "--events",
            "core",
            "--rotate-secret",
            "--show-secret",
        ],
    )
    .await;
    assert_eq!(failed.code, Some(2), "{failed:?}");
    assert_eq!(
        json_out(&failed),
        json!({"endpoint": {"url": url, "signingSecret": given}})
    );
    let error = json_error(&failed);
    assert_eq!(error["error"], "server_error");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("--rotate-secret --show-secret"),
        "{message}"
    );
    assert!(
        !message.contains("MAY") && !message.contains(given),
        "{message}"
    );
}
