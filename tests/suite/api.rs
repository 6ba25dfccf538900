//! The API client against a fake Clink API on loopback: the headers, the
//! key rules and rotation, every error kind, retries within the deadline,
//! single flight, the rate budget, endpoint management, and a signing
//! secret rotated through a live layer.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clink_webhooks::accounts::KeyMap;
use clink_webhooks::api::{
    ApiErrorKind, ApiKey, Client, CurrentObject, EndpointQuery, EndpointUpdate, EnsureEndpoint,
    Environment, LiveKeys, NewEndpoint, ObjectKind, OrderQuery, RotationError, WebhookSecret,
    DEFAULT_GRACE,
};
use clink_webhooks::data::{Order, OrderStatus, Refund};
use clink_webhooks::events::ObjectKey;
use clink_webhooks::testing::SignedRequest;
use clink_webhooks::{ClinkLayer, EventRouter, Layer, LiveVerifier, Verifier};
use serde_json::json;

use crate::support::capture::capture;
use crate::support::fake_api::{AuthFailure, Failure, FakeApi};
use crate::support::loopback::{endpoint, send, serve};
use crate::support::secrets::assert_no_key;

const NEW: &str = "sk_test_new_4f9a2c";
const OLD: &str = "sk_test_old_81b3d7";

/// A client of `fake` with `keys`, newest first, named `new` and `old`.
fn client_for(fake: &FakeApi, keys: &[&str]) -> clink_webhooks::api::ClientBuilder {
    let mut builder = Client::builder().base_url(fake.base_url());
    for (key, name) in keys.iter().zip(["new", "old", "older"]) {
        builder = builder.key(ApiKey::new(key).unwrap().named(name).unwrap());
    }
    builder
}

fn order(id: &str, status: &str) -> serde_json::Value {
    json!({"orderId": id, "status": status, "amountTotal": 19.99, "paymentCurrency": "USD",
           "customerId": "cus_1", "createTime": 1_754_819_711_382_i64})
}

/// Polls every future once before any is polled again, so that all of them
/// have started (and joined any call in flight) before one can finish.
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut done: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, out) in futures.iter_mut().zip(done.iter_mut()) {
            if let Some(future) = slot {
                if let Poll::Ready(value) = future.as_mut().poll(cx) {
                    *out = Some(value);
                    *slot = None;
                }
            }
        }
        if futures.iter().all(Option::is_none) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    done.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn every_call_sends_the_key_and_a_millisecond_timestamp() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.put_object("order/ord 1/x", order("ord 1/x", "success"));
    let client = client_for(&fake, &[NEW]).build().unwrap();

    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let got: Order = client.get("ord 1/x").await.unwrap();
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert_eq!(got.order_id.as_deref(), Some("ord 1/x"));
    assert_eq!(got.status, Some(OrderStatus::Success));

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "GET");
    // The id is one path segment, percent-encoded.
    assert_eq!(request.path, "order/ord%201%2Fx");
    assert_eq!(request.headers["x-api-key"], NEW);
    let stamp: u128 = request.headers["x-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&stamp),
        "{before} <= {stamp} <= {after}"
    );
    assert!(
        request.headers.get("content-type").is_none(),
        "no body, no content type"
    );
}

#[test]
fn environments_choose_the_base_url_and_the_override_wins() {
    let sandbox = Client::builder()
        .key(ApiKey::new(NEW).unwrap())
        .build()
        .unwrap();
    assert_eq!(sandbox.environment(), Environment::Sandbox);
    assert_eq!(sandbox.base_url(), "https://uat-api.clinkbill.com/api/");
    let production = Client::builder()
        .environment(Environment::Production)
        .key(ApiKey::new("sk_prod_x1").unwrap())
        .build()
        .unwrap();
    assert_eq!(production.base_url(), "https://api.clinkbill.com/api/");
    let proxied = Client::builder()
        .environment(Environment::Production)
        .base_url("http://127.0.0.1:9/clink/api")
        .key(ApiKey::new("sk_prod_x1").unwrap())
        .build()
        .unwrap();
    assert_eq!(proxied.base_url(), "http://127.0.0.1:9/clink/api/");
}

#[tokio::test]
async fn refused_keys_stop_the_client_before_anything_is_sent() {
    let fake = FakeApi::start().await;
    let cases: [(&str, Environment, &str); 6] = [
        ("pk_test_pub_9c1", Environment::Sandbox, "publishable"),
        ("pk_prod_pub_9c1", Environment::Production, "publishable"),
        ("whsec_sig_9c1", Environment::Sandbox, "signing secret"),
        (
            "sk_prod_live_9c1",
            Environment::Sandbox,
            "other environment",
        ),
        (
            "sk_test_t_9c1",
            Environment::Production,
            "other environment",
        ),
        ("sk_uat_u_9c1", Environment::Production, "other environment"),
    ];
    for (key, environment, says) in cases {
        let error = match ApiKey::new(key) {
            Err(error) => error,
            Ok(key) => Client::builder()
                .environment(environment)
                .base_url(fake.base_url())
                .key(key)
                .build()
                .unwrap_err(),
        };
        let text = format!("{error} {error:?}");
        assert!(text.contains(says), "{key}: {text}");
        assert_no_key("a key error", &text, &[key]);
    }
    let none = Client::builder()
        .base_url(fake.base_url())
        .build()
        .unwrap_err();
    assert!(none.to_string().contains("CLINK_SECRET_KEY"), "{none}");
    assert!(
        fake.requests().is_empty(),
        "nothing is sent with a refused key"
    );
}

/// The newest key refused in `style`, the older one accepted: the call goes
/// through with the older key, a warning names both, and the next call
/// starts with the key that works.
async fn rotates_to_the_next_key(style: AuthFailure) {
    let (logs, _guard) = capture();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let scrape = recorder.handle();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let fake = FakeApi::start().await;
    fake.set_auth_failure(style);
    fake.accept_key(OLD);
    fake.put_object(
        "refund/rfd_1",
        json!({"refundId": "rfd_1", "status": "success"}),
    );
    let client = client_for(&fake, &[NEW, OLD]).build().unwrap();

    let refund: Refund = client.get("rfd_1").await.unwrap();
    assert_eq!(refund.refund_id.as_deref(), Some("rfd_1"));
    let keys: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| r.headers["x-api-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        [NEW, OLD],
        "{style:?}: the newest first, then the next"
    );
    let warning = logs
        .events()
        .into_iter()
        .find(|e| e.level == tracing::Level::WARN)
        .unwrap_or_else(|| panic!("{style:?}: no warning:\n{}", logs.text()));
    assert_eq!(warning.fields["refused"], "new");
    assert_eq!(warning.fields["works"], "old");

    // The working key goes first for a while: one request, not two.
    let _: Refund = client.get("rfd_1").await.unwrap();
    assert_eq!(fake.requests().len(), 3);
    assert_eq!(fake.requests()[2].headers["x-api-key"], OLD);
    assert_no_key("the logs", &logs.text(), &[NEW, OLD]);

    // The metric says which key works, by name.
    let scrape = scrape.render();
    let sample = |key: &str, result: &str| {
        let series = format!(r#"clink_api_requests_total{{key="{key}",result="{result}"}} "#);
        scrape
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series}in:\n{scrape}"))
            .to_owned()
    };
    assert_eq!(sample("new", "unauthorized"), "1");
    assert_eq!(sample("old", "ok"), "2");
    assert_no_key("the metrics", &scrape, &[NEW, OLD]);
}

#[tokio::test]
async fn a_401_with_a_text_body_moves_to_the_next_key() {
    rotates_to_the_next_key(AuthFailure::HttpText).await;
}

#[tokio::test]
async fn an_envelope_code_401_moves_to_the_next_key() {
    rotates_to_the_next_key(AuthFailure::Envelope).await;
}

/// A revoked (`403`) or expired (`422`) key, as Clink's proposed contract
/// words them, in the envelope or as the HTTP status, is a refused key:
/// the next key is tried. A `403` that says nothing of the key is not.
#[tokio::test]
async fn a_revoked_or_expired_key_moves_to_the_next_key() {
    let envelope = |code: i64, msg: &str| Failure::Envelope {
        code,
        msg: msg.to_owned(),
    };
    let http = |status: u16, msg: &str| Failure::Json {
        status,
        body: json!({"code": status, "msg": msg, "data": null}).to_string(),
    };
    for (failure, moves) in [
        (envelope(403, "API key has been revoked"), true),
        (envelope(422, "Secret key is expired"), true),
        (http(403, "API key has been revoked"), true),
        (http(422, "Secret key is expired"), true),
        (envelope(403, "the account may not refund"), false),
        (http(422, "amount must be positive"), false),
    ] {
        let fake = FakeApi::start().await;
        fake.accept_key(NEW);
        fake.accept_key(OLD);
        fake.put_object("order/ord_1", order("ord_1", "success"));
        fake.fail_next("order/ord_1", failure.clone(), 1);
        let client = client_for(&fake, &[NEW, OLD]).build().unwrap();
        let answer = client.get::<Order>("ord_1").await;
        let keys: Vec<_> = fake
            .requests()
            .iter()
            .map(|r| r.headers["x-api-key"].to_str().unwrap().to_owned())
            .collect();
        if moves {
            assert!(answer.is_ok(), "{failure:?}: {answer:?}");
            assert_eq!(keys, [NEW, OLD], "{failure:?}");
        } else {
            let error = answer.unwrap_err();
            assert_ne!(error.kind(), ApiErrorKind::Unauthorized, "{failure:?}");
            assert_eq!(keys, [NEW], "{failure:?}");
        }
    }
}

#[tokio::test]
async fn with_three_keys_a_refused_older_key_goes_back_to_the_newest() {
    const OLDER: &str = "sk_test_older_0c5e11";
    let fake = FakeApi::start().await;
    fake.accept_key(OLD);
    fake.put_object("order/ord_1", order("ord_1", "success"));
    let client = client_for(&fake, &[NEW, OLD, OLDER]).build().unwrap();
    let sent = |fake: &FakeApi| -> Vec<String> {
        fake.requests()
            .iter()
            .map(|r| r.headers["x-api-key"].to_str().unwrap().to_owned())
            .collect()
    };
    let _: Order = client.get("ord_1").await.unwrap();
    assert_eq!(sent(&fake), [NEW, OLD]);
    // Clink now takes the newest and no longer the older one in use: the
    // client goes back to the newest, not on to the oldest.
    fake.revoke_key(OLD);
    fake.accept_key(NEW);
    let _: Order = client.get("ord_1").await.unwrap();
    assert_eq!(sent(&fake), [NEW, OLD, OLD, NEW]);
    let _: Order = client.get("ord_1").await.unwrap();
    assert_eq!(sent(&fake)[4], NEW, "the newest is used from then on");
}

#[tokio::test]
async fn an_expired_newest_key_is_skipped_and_never_sent() {
    let fake = FakeApi::start().await;
    fake.accept_key(OLD);
    fake.put_object("order/ord_1", order("ord_1", "success"));
    let expired = ApiKey::new(NEW).unwrap().expires_at(SystemTime::now());
    let client = Client::builder()
        .base_url(fake.base_url())
        .key(expired)
        .key(ApiKey::new(OLD).unwrap())
        .build()
        .unwrap();
    let _: Order = client.get("ord_1").await.unwrap();
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].headers["x-api-key"], OLD);
}

/// A refusal of the key that carries a new signing secret (Clink may have
/// created all the same) is not sent again with the next key: one
/// endpoint, and the error holds the secret Clink made.
#[tokio::test]
async fn a_refusal_that_carries_a_new_secret_is_not_sent_again_with_the_next_key() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.accept_key(OLD);
    let client = client_for(&fake, &[NEW, OLD]).build().unwrap();
    let url = "https://shop.example.com/hooks";
    fake.patch_answer_next(
        "webhook/endpoints",
        json!({"code": 401, "msg": "Unauthorized"}),
        1,
    );
    let error = client
        .create_endpoint(&NewEndpoint::new(url, ["invoice.paid"]))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Unauthorized, "{error}");
    assert_eq!(fake.requests().len(), 1, "sent once, with the newest key");
    let id = fake.endpoint_id(url).expect("the endpoint Clink made");
    assert_eq!(
        error.new_secret().map(|s| s.expose().to_owned()),
        fake.endpoint_secret(&id)
    );
}

/// A write answered 5xx has an unknown outcome, whatever its envelope's
/// code says: it is not sent again with the next key (a second endpoint
/// made, with a second secret). A read answered so moves to the next key.
#[tokio::test]
async fn a_write_answered_5xx_is_not_sent_again_with_the_next_key() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.accept_key(OLD);
    fake.put_object("order/ord_1", order("ord_1", "success"));
    let client = client_for(&fake, &[NEW, OLD]).build().unwrap();
    let refused = || Failure::Json {
        status: 500,
        body: r#"{"code":401,"msg":"invalid apiKey"}"#.to_owned(),
    };
    fake.fail_next("webhook/endpoints", refused(), 1);
    let error = client
        .create_endpoint(&NewEndpoint::new(
            "https://shop.example.com/hooks",
            ["invoice.paid"],
        ))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Unauthorized, "{error}");
    assert!(error.to_string().contains("not sent again"), "{error}");
    assert_eq!(fake.requests().len(), 1, "sent once");

    fake.fail_next("order/", refused(), 1);
    let _: Order = client.get("ord_1").await.unwrap();
    let requests = fake.requests();
    assert_eq!(requests.len(), 3, "the read, once more with the next key");
}

/// A page Clink would answer in another size (orders over 50, endpoints
/// over 100, none) or page 0 is refused before anything is sent: paging
/// by the size asked for would skip what Clink's cap left out.
#[tokio::test]
async fn a_page_clink_would_change_is_refused_before_anything_is_sent() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let client = client_for(&fake, &[NEW]).build().unwrap();
    for query in [
        OrderQuery::new().page_size(51),
        OrderQuery::new().page_size(0),
        OrderQuery::new().page(0),
    ] {
        let error = client.orders(&query).await.unwrap_err();
        assert_eq!(
            error.kind(),
            ApiErrorKind::Unsupported,
            "{query:?}: {error}"
        );
    }
    for query in [
        EndpointQuery::new().page_size(101),
        EndpointQuery::new().page_size(0),
        EndpointQuery::new().page(0),
    ] {
        let error = client.list_endpoints(&query).await.unwrap_err();
        assert_eq!(
            error.kind(),
            ApiErrorKind::Unsupported,
            "{query:?}: {error}"
        );
    }
    assert!(fake.requests().is_empty());
    // The bounds themselves are asked for.
    client
        .orders(&OrderQuery::new().page_size(50).page(1))
        .await
        .unwrap();
    client
        .list_endpoints(&EndpointQuery::new().page_size(100))
        .await
        .unwrap();
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn every_key_refused_is_unauthorized_after_one_try_each() {
    for style in [AuthFailure::HttpText, AuthFailure::Envelope] {
        let fake = FakeApi::start().await;
        fake.set_auth_failure(style);
        let client = client_for(&fake, &[NEW, OLD]).build().unwrap();
        let error = client.get::<Order>("ord_1").await.unwrap_err();
        assert_eq!(
            error.kind(),
            ApiErrorKind::Unauthorized,
            "{style:?}: {error}"
        );
        assert!(error.kind().is_refusal());
        assert_eq!(
            fake.requests().len(),
            2,
            "{style:?}: not retried beyond the keys"
        );
        let text = format!("{error} {error:?}");
        assert_no_key("an error", &text, &[NEW, OLD]);
        // With one key, the error says there was no other to try.
        let client = client_for(&fake, &[NEW]).build().unwrap();
        let error = client.get::<Order>("ord_1").await.unwrap_err();
        assert_eq!(error.kind(), ApiErrorKind::Unauthorized, "{error}");
        assert!(
            error.message().contains("no other active key to try"),
            "{style:?}: {error}"
        );
        assert_eq!(fake.requests().len(), 3, "{style:?}: one request more");
    }
    // An expired key is never sent.
    let fake = FakeApi::start().await;
    fake.accept_key(OLD);
    let expired = ApiKey::new(OLD).unwrap().expires_at(SystemTime::now());
    let client = Client::builder()
        .base_url(fake.base_url())
        .key(expired)
        .build()
        .unwrap();
    let error = client.get::<Order>("ord_1").await.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Unauthorized);
    assert!(error.to_string().contains("expired"), "{error}");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn a_key_echoed_by_the_server_is_scrubbed_from_errors_and_logs() {
    let (logs, _guard) = capture();
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let msg = format!("invalid apiKey={NEW}\u{1b}[31m\nforged line");
    fake.fail_next("order/", Failure::Envelope { code: 401, msg }, 1);
    let client = client_for(&fake, &[NEW]).build().unwrap();
    let error = client.get::<Order>("ord_1").await.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Unauthorized);
    assert_eq!(error.code(), Some(401));
    let text = format!("{error}\n{error:?}\n{client:?}\n{}", logs.text());
    assert_no_key("errors, Debug and logs", &text, &[NEW]);
    assert!(
        error.message().contains("[redacted]"),
        "{}",
        error.message()
    );
    assert!(!error.to_string().contains(['\n', '\u{1b}']), "{error}");
}

/// A success with no `data` at all (an empty body, `{}`) says nothing of
/// the object, and is not taken for Clink's "not found" (`"data": null`),
/// which is a refusal that nothing retries.
#[tokio::test]
async fn a_success_without_data_is_not_taken_for_not_found() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let client = client_for(&fake, &[NEW]).build().unwrap();
    fake.put_object("order/ord_1", order("ord_1", "success"));
    let answer = |body: &str| Failure::Json {
        status: 200,
        body: body.to_owned(),
    };
    for body in ["", "  ", "{}", r#"{"code":200,"msg":"ok"}"#] {
        fake.fail_next("order/", answer(body), 2);
        let typed = client.get::<Order>("ord_1").await.unwrap_err();
        let json = client
            .get_json(ObjectKind::Order, "ord_1")
            .await
            .unwrap_err();
        for error in [typed, json] {
            assert_eq!(error.kind(), ApiErrorKind::Decode, "{body:?}: {error}");
            assert!(!error.kind().is_refusal(), "{body:?}: {error}");
        }
    }
    fake.fail_next("order/", answer(r#"{"code":200,"data":null}"#), 2);
    let typed = client.get::<Order>("ord_1").await.unwrap_err();
    let json = client
        .get_json(ObjectKind::Order, "ord_1")
        .await
        .unwrap_err();
    for error in [typed, json] {
        assert_eq!(error.kind(), ApiErrorKind::NotFound, "{error}");
    }
    let order = client.get::<Order>("ord_1").await.unwrap();
    assert_eq!(order.order_id.as_deref(), Some("ord_1"));
}

#[tokio::test]
async fn not_found_and_envelope_errors_are_told_apart() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let client = client_for(&fake, &[NEW]).build().unwrap();
    let error = client.get::<Order>("ord_missing").await.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::NotFound);
    assert_eq!(error.status().map(|s| s.as_u16()), Some(404));
    assert_eq!(fake.requests().len(), 1, "a 404 is not retried");

    fake.fail_next(
        "order/",
        Failure::Envelope {
            code: 80_100_263,
            msg: "business says no".to_owned(),
        },
        1,
    );
    let error = client.get::<Order>("ord_1").await.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Envelope);
    assert_eq!(error.code(), Some(80_100_263));
    assert!(error.to_string().contains("business says no"), "{error}");
    assert_eq!(fake.requests().len(), 2, "an envelope error is not retried");

    let error = client
        .current(&ObjectKey::new("dispute", "cb_1"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Unsupported);
    assert_eq!(
        fake.requests().len(),
        2,
        "nothing sent for a family with no read"
    );

    // An envelope's code says more than a status that says only "client
    // error" or "server error": HTTP 400 or 500 with code 404 is not found,
    // asked once; HTTP 400 with code 503 is a server error, retried.
    let client = client_for(&fake, &[NEW]).attempts(2).build().unwrap();
    for (status, code, kind, requests) in [
        (400, 404, ApiErrorKind::NotFound, 1),
        (500, 404, ApiErrorKind::NotFound, 1),
        (400, 503, ApiErrorKind::Server, 2),
        (500, 80_100_263, ApiErrorKind::Server, 2),
    ] {
        let before = fake.requests().len();
        fake.fail_next(
            "order/",
            Failure::Json {
                status,
                body: format!(r#"{{"code":{code},"msg":"said so"}}"#),
            },
            requests,
        );
        let error = client.get::<Order>("ord_1").await.unwrap_err();
        assert_eq!(error.kind(), kind, "{status} {code}: {error}");
        assert_eq!(error.code(), Some(code));
        assert_eq!(
            fake.requests().len() - before,
            requests,
            "{status} {code}: {error}"
        );
    }

    // A 2xx answer that is a JSON array is no envelope, whatever it holds:
    // a delete answered so (by a proxy, say) is not reported done.
    for body in ["[]", "[200]", " [null]"] {
        fake.fail_next(
            "webhook/endpoints/",
            Failure::Json {
                status: 200,
                body: body.to_owned(),
            },
            1,
        );
        let error = client.delete_endpoint("whk_1").await.unwrap_err();
        assert_eq!(error.kind(), ApiErrorKind::Decode, "{body}: {error}");
    }
}

#[tokio::test]
async fn a_429_waits_its_retry_after_and_a_long_one_is_given_back() {
    // Told by the status, or in an envelope (HTTP 200, `code` 429).
    for told in [
        Failure::RateLimited {
            retry_after_secs: 1,
        },
        Failure::RateLimitedEnvelope {
            retry_after_secs: 1,
        },
    ] {
        let fake = FakeApi::start().await;
        fake.accept_key(NEW);
        fake.put_object("order/ord_1", order("ord_1", "success"));
        let client = client_for(&fake, &[NEW]).build().unwrap();
        fake.fail_next("order/", told.clone(), 1);
        let _: Order = client.get("ord_1").await.unwrap();
        let requests = fake.requests();
        assert_eq!(requests.len(), 2, "{told:?}");
        assert!(
            requests[1].at - requests[0].at >= Duration::from_millis(990),
            "{told:?}: the retry waited Retry-After: {:?}",
            requests[1].at - requests[0].at
        );
    }
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.put_object("order/ord_1", order("ord_1", "success"));

    // A wait past the deadline is not waited: the error says how long.
    let client = client_for(&fake, &[NEW])
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    fake.fail_next(
        "order/",
        Failure::RateLimited {
            retry_after_secs: 120,
        },
        1,
    );
    let error = client.get::<Order>("ord_1").await.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::RateLimited);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_then_given_up_within_the_deadline() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.put_object("order/ord_1", order("ord_1", "success"));

    // Two failures, then an answer: a read gets there.
    let client = client_for(&fake, &[NEW]).build().unwrap();
    fake.fail_next("order/", Failure::Status(503), 2);
    let _: Order = client.get("ord_1").await.unwrap();
    assert_eq!(fake.count("GET", "order/ord_1"), 3);

    // Failing for good: the attempts run out.
    fake.fail_next("order/", Failure::Status(500), 1000);
    let client = client_for(&fake, &[NEW]).attempts(3).build().unwrap();
    let error = client.get::<Order>("ord_1").await.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Server);
    assert_eq!(error.status().map(|s| s.as_u16()), Some(500));
    assert_eq!(fake.count("GET", "order/ord_1"), 6);

    // With attempts to spare, the deadline ends it.
    let deadline = Duration::from_millis(1500);
    let client = client_for(&fake, &[NEW])
        .attempts(1000)
        .deadline(deadline)
        .build()
        .unwrap();
    let started = Instant::now();
    let error = client.get::<Order>("ord_1").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(error.kind(), ApiErrorKind::Server);
    assert!(
        took < deadline + Duration::from_secs(2),
        "gave up after {took:?}"
    );
    let tries = fake.count("GET", "order/ord_1") - 6;
    assert!(
        (1..100).contains(&tries),
        "{tries} attempts in {took:?}: backoff between them"
    );

    // A write is never retried.
    fake.fail_next("webhook/endpoints", Failure::Status(503), 1);
    let error = client
        .create_endpoint(&NewEndpoint::new(
            "https://example.com/hooks",
            ["order.succeeded"],
        ))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Server);
    assert_eq!(fake.count("POST", "webhook/endpoints"), 1);
}

#[tokio::test]
async fn a_read_whose_retries_run_out_of_time_says_what_clink_answered() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.put_object("order/ord_1", order("ord_1", "success"));
    fake.fail_next("order/", Failure::Status(500), 1000);
    // One request a second: the second try goes at about 1 s, its backoff
    // (at most 480 ms) still fits the deadline, and the third try's room in
    // the budget, 1 s after the second, does not. The deadline sits between
    // the two, a quarter of a second from either.
    let client = client_for(&fake, &[NEW])
        .attempts(1000)
        .rate_limit(1, 1)
        .deadline(Duration::from_millis(1750))
        .build()
        .unwrap();
    let error = client.get::<Order>("ord_1").await.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Server, "{error}");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(500));
    let tries = fake.count("GET", "order/ord_1");
    assert!((1..=2).contains(&tries), "{tries}");
}

#[tokio::test]
async fn a_hung_server_is_timed_out() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.fail_next("order/", Failure::Hang, 1);
    let client = client_for(&fake, &[NEW])
        .request_timeout(Duration::from_millis(300))
        .attempts(1)
        .build()
        .unwrap();
    let error = client.get::<Order>("ord_1").await.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Timeout, "{error}");
    assert!(error.to_string().contains("300 ms"), "{error}");

    // A refused connection is a transport error.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = Client::builder()
        .base_url(format!("http://{closed}/api/"))
        .key(ApiKey::new(NEW).unwrap())
        .attempts(1)
        .build()
        .unwrap();
    let error = client.get::<Order>("ord_1").await.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Transport, "{error}");
}

/// An error tells a request that never reached Clink (no connection could
/// be made: a write then changed nothing there) from one that may have (a
/// connection closed once the request was written, no answer in time, an
/// answer).
#[tokio::test]
async fn an_error_says_whether_its_request_may_have_reached_clink() {
    let client_at = |addr: std::net::SocketAddr| {
        Client::builder()
            .base_url(format!("http://{addr}/api/"))
            .key(ApiKey::new(NEW).unwrap())
            .attempts(1)
            .request_timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    // Refused: nothing listens.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let error = client_at(closed)
        .rotate_endpoint_secret("whk_1")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Transport, "{error}");
    assert!(error.never_reached_clink(), "{error}");

    // Accepted, the request read, the connection closed with no answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request's head never came");
            head.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&head).into_owned()
    });
    let error = client_at(addr)
        .rotate_endpoint_secret("whk_1")
        .await
        .unwrap_err();
    let head = server.await.unwrap();
    assert!(
        head.starts_with("POST /api/webhook/endpoints/whk_1/rotate-secret"),
        "{head}"
    );
    assert_eq!(error.kind(), ApiErrorKind::Transport, "{error}");
    assert!(!error.never_reached_clink(), "{error}");

    // An answer: Clink said no.
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let error = client_for(&fake, &[NEW])
        .build()
        .unwrap()
        .rotate_endpoint_secret("whk_missing")
        .await
        .unwrap_err();
    assert!(!error.never_reached_clink(), "{error}");
}

#[tokio::test]
async fn sixty_four_concurrent_reads_of_one_object_make_one_call() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.put_object("order/ord_1", order("ord_1", "success"));
    let client = client_for(&fake, &[NEW]).build().unwrap();
    let orders = join_all((0..64).map(|_| client.get::<Order>("ord_1"))).await;
    for got in &orders {
        assert_eq!(got.as_ref().unwrap().order_id.as_deref(), Some("ord_1"));
    }
    assert_eq!(fake.count("GET", "order/ord_1"), 1, "one call for 64 reads");

    // A read after that one finished asks Clink again: nothing is cached.
    fake.put_object("order/ord_1", order("ord_1", "refunded"));
    let again: Order = client.get("ord_1").await.unwrap();
    assert_eq!(again.status, Some(OrderStatus::Refunded));
    assert_eq!(fake.count("GET", "order/ord_1"), 2);

    // A failure is shared too, and not kept.
    fake.fail_next("order/", Failure::Status(400), 1);
    let failed = join_all((0..8).map(|_| client.get::<Order>("ord_1"))).await;
    assert!(failed
        .iter()
        .all(|r| r.as_ref().unwrap_err().kind() == ApiErrorKind::Envelope));
    assert_eq!(fake.count("GET", "order/ord_1"), 3);
    assert!(client.get::<Order>("ord_1").await.is_ok());
}

/// A read that joined one made first by another caller waits at most the
/// deadline and a request's timeout, even when that caller keeps its
/// future without polling it (parked in a `select!` loop): it fails as a
/// timeout instead of waiting for ever, and once the first caller lets go a
/// read goes through.
#[tokio::test]
async fn a_read_joining_one_nobody_drives_fails_in_time() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.put_object("order/ord_1", order("ord_1", "success"));
    // Times short enough to wait for, long enough for the last read to go
    // through on a busy machine.
    let client = client_for(&fake, &[NEW])
        .deadline(Duration::from_secs(3))
        .request_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let mut first = Box::pin(client.get::<Order>("ord_1"));
    let polled = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(first.as_mut(), cx))
    })
    .await;
    assert!(polled.is_pending(), "the first read is under way");
    let joined = tokio::time::timeout(Duration::from_secs(60), client.get::<Order>("ord_1"))
        .await
        .expect("the joined read waited on a call nobody drives");
    let error = joined.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Timeout, "{error}");
    assert!(error.to_string().contains("another caller"), "{error}");
    drop(first);
    let order: Order = client.get("ord_1").await.unwrap();
    assert_eq!(order.order_id.as_deref(), Some("ord_1"));
}

#[tokio::test]
async fn the_rate_budget_holds_under_a_burst_of_a_thousand_stale_events() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    for i in 0..1000 {
        fake.put_object(
            &format!("order/ord_{i}"),
            order(&format!("ord_{i}"), "success"),
        );
    }
    let (rate, burst) = (250_u32, 10_u32);
    let client = client_for(&fake, &[NEW])
        .rate_limit(rate, burst)
        .deadline(Duration::from_secs(120))
        .build()
        .unwrap();
    // What 1,000 handlers of stale events do at once: read their object.
    let keys: Vec<_> = (0..1000)
        .map(|i| ObjectKey::new("order", format!("ord_{i}")))
        .collect();
    let started = Instant::now();
    let current = join_all(keys.iter().map(|key| client.current(key))).await;
    let took = started.elapsed();
    assert!(current.iter().all(Result::is_ok));

    let mut at: Vec<Instant> = fake.requests().iter().map(|r| r.at).collect();
    assert_eq!(at.len(), 1000);
    at.sort();
    // Never more than the burst plus the rate allows, at any moment.
    for (n, time) in at.iter().enumerate() {
        let allowed =
            f64::from(rate).mul_add((*time - started).as_secs_f64(), f64::from(burst) + 1.0);
        #[allow(clippy::cast_precision_loss)]
        let sent = (n + 1) as f64;
        assert!(
            sent <= allowed,
            "request {} at {:?}: {sent} > {allowed}",
            n + 1,
            *time - started
        );
    }
    let least = Duration::from_secs_f64(f64::from(1000 - burst) / f64::from(rate));
    assert!(
        took >= least.mul_f64(0.95),
        "1,000 reads in {took:?}, under {least:?}"
    );
}

#[tokio::test]
async fn current_reads_each_family_and_the_order_list_filters_and_pages() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.put_object("order/ord_1", order("ord_1", "refunded"));
    fake.put_object(
        "refund/rfd_1",
        json!({"refundId": "rfd_1", "status": "refunding"}),
    );
    fake.put_object(
        "subscription/sub_1",
        json!({"subscriptionId": "sub_1", "status": "past_due"}),
    );
    fake.put_object(
        "subscription/invoice/inv_1",
        json!({"invoiceId": "inv_1", "status": "void"}),
    );
    fake.put_object(
        "checkout/session/sess_1",
        json!({"sessionId": "sess_1", "status": "expired"}),
    );
    let client = client_for(&fake, &[NEW]).build().unwrap();
    for (family, id, status) in [
        ("order", "ord_1", "refunded"),
        ("refund", "rfd_1", "refunding"),
        ("subscription", "sub_1", "past_due"),
        ("invoice", "inv_1", "void"),
        ("session", "sess_1", "expired"),
    ] {
        // A key within an account reads as its family.
        let key = ObjectKey::new(family, id).within("acct_1");
        let current = client.current(&key).await.unwrap();
        assert_eq!(current.kind().family(), family);
        assert_eq!(current.id(), Some(id));
        assert_eq!(current.status(), Some(status), "{family}");
        let kind = ObjectKind::for_family(family).unwrap();
        let raw = client.get_json(kind, id).await.unwrap();
        assert_eq!(raw["status"], status);
    }
    assert!(matches!(
        client
            .current(&ObjectKey::new("order", "ord_1"))
            .await
            .unwrap(),
        CurrentObject::Order(_)
    ));

    for i in 2..=5 {
        let mut data = order(&format!("ord_{i}"), "success");
        data["customerId"] = json!(if i % 2 == 0 { "cus_even" } else { "cus_odd" });
        fake.put_object(&format!("order/ord_{i}"), data);
    }
    let page = client
        .orders(
            &OrderQuery::new()
                .customer_id("cus_even")
                .page(1)
                .page_size(1),
        )
        .await
        .unwrap();
    assert_eq!(page.total, 2);
    assert_eq!(page.rows.len(), 1);
    assert_eq!(page.rows[0].order_id.as_deref(), Some("ord_2"));
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.path, "order");
    assert_eq!(
        last.query.as_deref(),
        Some("customerId=cus_even&pageNum=1&pageSize=1")
    );
}

/// A list answer without its `rows` (an empty body from a proxy, a list
/// in another shape) is an error that says so, never an empty page: "no
/// endpoint for this URL" could have one made twice.
#[tokio::test]
async fn a_list_answer_without_rows_is_an_error_not_an_empty_page() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.add_endpoint(
        "https://shop.example.com/webhooks/clink",
        &["order.succeeded"],
    );
    fake.put_object("order/ord_1", order("ord_1", "success"));
    let client = client_for(&fake, &[NEW]).build().unwrap();
    assert_eq!(
        client
            .list_endpoints(&EndpointQuery::new())
            .await
            .unwrap()
            .rows
            .len(),
        1
    );
    for patch in [json!({"rows": null}), json!({"rows": null, "total": null})] {
        fake.patch_answer_next("webhook/endpoints", patch.clone(), 1);
        let error = client
            .list_endpoints(&EndpointQuery::new())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ApiErrorKind::Decode, "{patch}: {error}");
        assert!(error.to_string().contains("rows"), "{patch}: {error}");
        fake.patch_answer_next("order", patch.clone(), 1);
        let error = client.orders(&OrderQuery::new()).await.unwrap_err();
        assert_eq!(error.kind(), ApiErrorKind::Decode, "{patch}: {error}");
    }
}

/// A redirect is not followed (the key would go along) and is no refusal
/// of Clink's: a base URL to correct, which the error says.
#[tokio::test]
async fn a_redirect_is_not_followed_and_says_to_check_the_base_url() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.put_object("order/ord_1", order("ord_1", "success"));
    let client = client_for(&fake, &[NEW]).build().unwrap();
    fake.fail_next("order", Failure::Status(301), 1);
    let error = client.get::<Order>("ord_1").await.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Decode, "{error}");
    assert!(!error.kind().is_refusal(), "{error}");
    assert!(error.to_string().contains("check the base URL"), "{error}");
    assert_eq!(fake.count("GET", "order/ord_1"), 1, "not retried");
}

#[tokio::test]
async fn endpoints_are_managed_and_their_secrets_masked() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let client = client_for(&fake, &[NEW]).build().unwrap();
    let url = "https://shop.example.com/webhooks/clink";

    // Created with its secret, which Clink shows only then, asked for by
    // default.
    let ensured = client
        .ensure_endpoint(&EnsureEndpoint::new(url, ["order.succeeded"]))
        .await
        .unwrap();
    assert_eq!(ensured.source.as_deref(), Some("created"));
    let id = ensured.endpoint.id.clone();
    let secret = ensured.endpoint.signing_secret.clone().unwrap();
    assert_eq!(Some(secret.expose().to_owned()), fake.endpoint_secret(&id));
    let shown = format!("{ensured:?}\n{}", serde_json::to_string(&ensured).unwrap());
    assert_no_key("an endpoint's Debug and JSON", &shown, &[secret.expose()]);

    // Again: found by its URL, no second endpoint, no secret without rotation.
    let again = client
        .ensure_endpoint(&EnsureEndpoint::new(
            url,
            ["order.succeeded", "order.failed"],
        ))
        .await
        .unwrap();
    assert_eq!(again.endpoint.id, id);
    assert!(again.endpoint.signing_secret.is_none());
    assert!(!again.signing_secret_available);
    let listed = client
        .list_endpoints(&EndpointQuery::new().url(url))
        .await
        .unwrap();
    assert_eq!(listed.total, 1);
    assert_eq!(listed.rows[0].events, ["order.succeeded", "order.failed"]);

    let disabled = client.disable_endpoint(&id).await.unwrap();
    assert!(!disabled.enabled);
    assert!(client.enable_endpoint(&id).await.unwrap().enabled);
    let updated = client
        .update_endpoint(&id, &EndpointUpdate::new().description("shop"))
        .await
        .unwrap();
    assert_eq!(updated.description.as_deref(), Some("shop"));
    assert_eq!(client.endpoint(&id).await.unwrap().url, url);

    let created = client
        .create_endpoint(
            &NewEndpoint::new("https://shop.example.com/other", ["invoice.paid"])
                .description("second")
                .enabled(false),
        )
        .await
        .unwrap();
    assert!(!created.enabled);
    assert_eq!(created.events, ["invoice.paid"]);
    let created_secret = created.signing_secret.clone().unwrap();
    assert_eq!(
        Some(created_secret.expose().to_owned()),
        fake.endpoint_secret(&created.id)
    );
    let request = fake.requests().pop().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body,
        json!({"url": "https://shop.example.com/other", "events": ["invoice.paid"],
               "description": "second", "enabled": false})
    );
    assert_eq!(request.headers["content-type"], "application/json");

    let rotated = client.rotate_endpoint_secret(&id).await.unwrap();
    let new_secret = rotated.signing_secret.unwrap();
    assert_ne!(new_secret, secret);
    assert_eq!(
        Some(new_secret.expose().to_owned()),
        fake.endpoint_secret(&id)
    );

    let names = client.webhook_event_names().await.unwrap();
    assert!(names.iter().any(|n| n.name == "order.succeeded"));

    client.delete_endpoint(&id).await.unwrap();
    let gone = client.endpoint(&id).await.unwrap_err();
    assert_eq!(gone.kind(), ApiErrorKind::NotFound);
}

/// A delivery signed with `secret` to the layer at `addr`; its status.
/// A fake API that takes the key `NEW`, with one endpoint for
/// `order.succeeded`: the fake and the endpoint's id.
async fn one_endpoint() -> (FakeApi, String) {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let id = fake.add_endpoint(
        "https://shop.example.com/webhooks/clink",
        &["order.succeeded"],
    );
    (fake, id)
}

async fn deliver_signed(addr: std::net::SocketAddr, secret: &str, id: &str) -> u16 {
    let body =
        format!(r#"{{"id":"{id}","type":"order.succeeded","data":{{"orderId":"ord_{id}"}}}}"#);
    let request = SignedRequest::new(secret, body)
        .uri(endpoint(addr, "/webhooks/clink"))
        .build();
    send(request).await.status
}

#[tokio::test]
async fn a_rotated_secret_verifies_at_once_and_the_old_one_for_the_grace_period() {
    let (logs, _guard) = capture();
    let (fake, id) = one_endpoint().await;
    let old = fake.endpoint_secret(&id).unwrap();
    let live = LiveVerifier::new(Verifier::new(&old).unwrap());
    let addr = serve(ClinkLayer::live(live.clone()).layer(EventRouter::new())).await;
    assert_eq!(deliver_signed(addr, &old, "evt_before").await, 200);

    let client = client_for(&fake, &[NEW]).build().unwrap();
    let stored = Arc::new(Mutex::new(None));
    let grace = Duration::from_secs(5);
    let store = Arc::clone(&stored);
    let rotated = client
        .rotate_signing_secret(&id, live.clone(), grace, |secret| async move {
            *store.lock().unwrap() = Some(secret.expose().to_owned());
            Ok::<_, std::io::Error>(())
        })
        .await
        .unwrap();
    let new = fake.endpoint_secret(&id).unwrap();
    assert_ne!(new, old);
    assert_eq!(
        stored.lock().unwrap().as_deref(),
        Some(new.as_str()),
        "persisted"
    );
    assert!(
        rotated.endpoint.signing_secret.is_none(),
        "not kept in the result"
    );
    assert_no_key(
        "the rotation's result",
        &format!("{rotated:?}"),
        &[&new, &old],
    );

    // Clink signs with the new secret from now on: accepted at once.
    assert_eq!(deliver_signed(addr, &new, "evt_new").await, 200);
    // A delivery signed before the rotation, retried: accepted in the grace period.
    assert_eq!(deliver_signed(addr, &old, "evt_retried").await, 200);
    let previous_until = rotated.previous_until.expect("a grace period with an end");
    assert!(
        SystemTime::now() < previous_until,
        "the machine took the whole grace period of {grace:?}: the check above proves nothing"
    );
    // After it, refused.
    let wait = previous_until
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    assert_eq!(deliver_signed(addr, &old, "evt_late").await, 401);
    assert_eq!(deliver_signed(addr, &new, "evt_new_2").await, 200);
    let logs = logs.text();
    assert!(
        logs.contains("rotated the endpoint's signing secret"),
        "{logs}"
    );
    assert_no_key("the logs", &logs, &[&new, &old, NEW]);
}

/// Two rotations of one endpoint through one client (and its clones) run
/// one after the other, each from its call to the end of its `persist`:
/// the second says it waits, and calls Clink only once the first has
/// stored its secret, so that the secret stored last, and the newest in
/// the verifier, is the one Clink signs with.
#[tokio::test]
async fn two_rotations_of_one_endpoint_run_one_after_the_other() {
    let (logs, _guard) = capture();
    let (fake, id) = one_endpoint().await;
    let old = fake.endpoint_secret(&id).unwrap();
    let live = LiveVerifier::new(Verifier::new(&old).unwrap());
    let client = client_for(&fake, &[NEW]).build().unwrap();
    let stored = Arc::new(Mutex::new(Vec::new()));
    let (persisting, mut first_persisting) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn({
        let (client, live, id, store) = (
            client.clone(),
            live.clone(),
            id.clone(),
            Arc::clone(&stored),
        );
        async move {
            client
                .rotate_signing_secret(&id, live, DEFAULT_GRACE, move |secret| async move {
                    persisting.send(()).unwrap();
                    released.await.unwrap();
                    store.lock().unwrap().push(secret.expose().to_owned());
                    Ok::<_, std::io::Error>(())
                })
                .await
                .map(drop)
                .map_err(|error| error.to_string())
        }
    });
    first_persisting.recv().await.unwrap();
    let first_secret = fake.endpoint_secret(&id).unwrap();
    assert_ne!(first_secret, old);
    let second = tokio::spawn({
        let (client, live, id, store) = (
            client.clone(),
            live.clone(),
            id.clone(),
            Arc::clone(&stored),
        );
        async move {
            client
                .rotate_signing_secret(&id, live, DEFAULT_GRACE, move |secret| async move {
                    store.lock().unwrap().push(secret.expose().to_owned());
                    Ok::<_, std::io::Error>(())
                })
                .await
                .map(drop)
                .map_err(|error| error.to_string())
        }
    });
    // The second waits for the first, and says so; or, were it not held
    // back, it ends.
    let waits_or_ends = async {
        while !logs
            .text()
            .contains("waiting for the rotation of this endpoint")
            && !second.is_finished()
        {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), waits_or_ends)
        .await
        .expect("the second rotation neither waited nor ended");
    assert!(
        !second.is_finished(),
        "the second rotation ran while the first was storing its secret"
    );
    assert_eq!(
        fake.endpoint_secret(&id).unwrap(),
        first_secret,
        "Clink was not called again meanwhile"
    );
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    let last = fake.endpoint_secret(&id).unwrap();
    assert_ne!(last, first_secret);
    assert_eq!(*stored.lock().unwrap(), [first_secret, last.clone()]);
    assert!(verifies(&live.current(), &last), "the last secret verifies");
}

#[tokio::test]
async fn a_rotation_into_a_key_map_needs_the_account_and_reports_a_failed_persist() {
    let (fake, id) = one_endpoint().await;
    let old = fake.endpoint_secret(&id).unwrap();
    let map = KeyMap::new();
    let client = client_for(&fake, &[NEW]).build().unwrap();

    let error = client
        .rotate_signing_secret(
            &id,
            LiveKeys::account(map.clone(), "acct_1"),
            Duration::ZERO,
            |_| async { Ok::<_, std::io::Error>(()) },
        )
        .await
        .unwrap_err();
    assert!(matches!(error, RotationError::UnknownAccount), "{error}");
    assert!(
        fake.requests().is_empty(),
        "nothing rotated for an unknown account"
    );

    map.insert("acct_1", Verifier::new(&old).unwrap()).unwrap();
    let error = client
        .rotate_signing_secret(
            &id,
            LiveKeys::account(map.clone(), "acct_1"),
            Duration::from_secs(600),
            |_| async { Err::<(), _>(std::io::Error::other("disk full")) },
        )
        .await
        .unwrap_err();
    assert!(matches!(error, RotationError::Persist { .. }), "{error}");
    assert!(error.to_string().contains("disk full"), "{error}");
    // The new secret verifies anyway, and the old one still does.
    let new = fake.endpoint_secret(&id).unwrap();
    let verifier = map.get("acct_1").unwrap();
    let ts = clink_webhooks::Timestamp::now().as_millis().to_string();
    for secret in [&new, &old] {
        let signature = clink_webhooks::sign(secret, &ts, b"{}");
        assert!(verifier.verify(&ts, &signature, b"{}").is_ok());
    }
    assert_no_key(
        "a rotation error",
        &format!("{error} {error:?}"),
        &[&new, &old],
    );
}

/// Whether `secret`, signing a delivery now, verifies with `verifier`.
fn verifies(verifier: &Verifier, secret: &str) -> bool {
    let ts = clink_webhooks::Timestamp::now().as_millis().to_string();
    let signature = clink_webhooks::sign(secret, &ts, b"{}");
    verifier.verify(&ts, &signature, b"{}").is_ok()
}

#[tokio::test]
async fn a_grace_too_long_to_represent_keeps_the_old_key_and_persists_the_new_one() {
    let (fake, id) = one_endpoint().await;
    let old = fake.endpoint_secret(&id).unwrap();
    let live = LiveVerifier::new(Verifier::new(&old).unwrap());
    let client = client_for(&fake, &[NEW]).build().unwrap();
    let stored = Arc::new(Mutex::new(None));
    let store = Arc::clone(&stored);
    let rotated = client
        .rotate_signing_secret(&id, live.clone(), Duration::MAX, |secret| async move {
            *store.lock().unwrap() = Some(secret.expose().to_owned());
            Ok::<_, std::io::Error>(())
        })
        .await
        .unwrap();
    let new = fake.endpoint_secret(&id).unwrap();
    assert_ne!(new, old);
    assert_eq!(stored.lock().unwrap().as_deref(), Some(new.as_str()));
    assert_eq!(rotated.previous_until, None, "no end to the grace period");
    let verifier = live.current();
    assert!(verifies(&verifier, &new), "the new key verifies");
    assert!(verifies(&verifier, &old), "the old key is kept");
}

/// Shapes of an endpoint Clink's sources do not promise against (its
/// `createdAt` is "number|null, unit not stated"), merged into an answer.
fn unexpected_shapes() -> [serde_json::Value; 5] {
    [
        json!({"createdAt": 1_754_819_711.5}),
        json!({"createdAt": "2025-08-10T09:55:11Z", "updatedAt": "2025-08-10T09:55:11.382Z"}),
        json!({"id": null}),
        json!({"id": ""}),
        json!({"url": null, "events": [1, 2], "enabled": "yes", "description": 7,
               "maskedSigningSecret": false, "id": 12}),
    ]
}

#[tokio::test]
async fn a_rotation_answered_in_an_unexpected_shape_still_installs_and_persists_the_secret() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let client = client_for(&fake, &[NEW]).build().unwrap();
    for shape in unexpected_shapes() {
        let id = fake.add_endpoint(
            "https://shop.example.com/webhooks/clink",
            &["order.succeeded"],
        );
        let old = fake.endpoint_secret(&id).unwrap();
        let live = LiveVerifier::new(Verifier::new(&old).unwrap());
        fake.patch_next(
            &format!("webhook/endpoints/{id}/rotate-secret"),
            shape.clone(),
            1,
        );
        let stored = Arc::new(Mutex::new(None));
        let store = Arc::clone(&stored);
        let rotated = client
            .rotate_signing_secret(&id, live.clone(), DEFAULT_GRACE, |secret| async move {
                *store.lock().unwrap() = Some(secret.expose().to_owned());
                Ok::<_, std::io::Error>(())
            })
            .await
            .unwrap_or_else(|error| panic!("{shape}: {error}"));
        let new = fake.endpoint_secret(&id).unwrap();
        assert_ne!(new, old, "{shape}");
        assert_eq!(
            stored.lock().unwrap().as_deref(),
            Some(new.as_str()),
            "{shape}: persisted"
        );
        let verifier = live.current();
        assert!(verifies(&verifier, &new), "{shape}: the new key verifies");
        assert!(verifies(&verifier, &old), "{shape}: the old one too");
        assert_eq!(rotated.endpoint.id, id, "{shape}: the id rotated");
        // A number with a fraction is cut; a string is left out.
        let created_at_fits = shape
            .get("createdAt")
            .is_none_or(serde_json::Value::is_number);
        assert_eq!(
            rotated.endpoint.created_at.is_some(),
            created_at_fits,
            "{shape}: a time that is no number is left out"
        );
        assert!(rotated.endpoint.signing_secret.is_none(), "{shape}");
    }
}

#[tokio::test]
async fn answers_that_carry_a_new_secret_are_read_whatever_the_other_fields_hold() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let client = client_for(&fake, &[NEW]).build().unwrap();
    for (n, shape) in unexpected_shapes().into_iter().enumerate() {
        // rotate-secret on its own: the secret, and the id asked for.
        let url = format!("https://shop.example.com/{n}");
        let id = fake.add_endpoint(&url, &["order.succeeded"]);
        fake.patch_next(
            &format!("webhook/endpoints/{id}/rotate-secret"),
            shape.clone(),
            1,
        );
        let rotated = client
            .rotate_endpoint_secret(&id)
            .await
            .unwrap_or_else(|error| panic!("{shape}: {error}"));
        assert_eq!(
            rotated.signing_secret.map(|s| s.expose().to_owned()),
            fake.endpoint_secret(&id),
            "{shape}"
        );
        assert_eq!(rotated.id, id, "{shape}");

        // ensure that rotates: the endpoint inside the answer.
        fake.patch_next(
            "webhook/endpoints/ensure",
            json!({ "endpoint": shape.clone(), "signingSecretAvailable": "yes" }),
            1,
        );
        let ensured = client
            .ensure_endpoint(&EnsureEndpoint::new(&url, ["order.succeeded"]).rotate_secret())
            .await
            .unwrap_or_else(|error| panic!("{shape}: {error}"));
        assert_eq!(
            ensured
                .endpoint
                .signing_secret
                .map(|s| s.expose().to_owned()),
            fake.endpoint_secret(&id),
            "{shape}"
        );
        assert!(ensured.signing_secret_available, "{shape}");
        assert_eq!(ensured.source.as_deref(), Some("rotated"), "{shape}");

        // create: the secret Clink shows only once.
        fake.patch_next("webhook/endpoints", shape.clone(), 1);
        let created = client
            .create_endpoint(&NewEndpoint::new(format!("{url}/new"), ["invoice.paid"]))
            .await
            .unwrap_or_else(|error| panic!("{shape}: {error}"));
        let created_id = fake.endpoint_id(&format!("{url}/new")).unwrap();
        assert_eq!(
            created.signing_secret.map(|s| s.expose().to_owned()),
            fake.endpoint_secret(&created_id),
            "{shape}"
        );
    }
}

/// A rotation answered with its new secret outside `data` (at the top
/// level, with no `data` or a `null` one; or beside a `data` without one)
/// loses no secret: the rotation goes through with it (the answer says
/// yes, so Clink signs with it), or the error holds it.
#[tokio::test]
async fn a_new_secret_outside_data_is_kept() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let client = client_for(&fake, &[NEW]).build().unwrap();
    let id = fake.add_endpoint("https://shop.example.com/top", &["order.succeeded"]);
    let old = fake.endpoint_secret(&id).unwrap();
    let live = LiveVerifier::new(Verifier::new(&old).unwrap());
    for (data, secret) in [
        ("", "whsec_top_level"),
        (r#""data":null,"#, "whsec_beside_null_data"),
    ] {
        fake.fail_next(
            &format!("webhook/endpoints/{id}/rotate-secret"),
            Failure::Json {
                status: 200,
                body: format!(r#"{{"code":200,"msg":"ok",{data}"signingSecret":"{secret}"}}"#),
            },
            1,
        );
        let stored = Arc::new(Mutex::new(None));
        let store = Arc::clone(&stored);
        let rotated = client
            .rotate_signing_secret(&id, live.clone(), DEFAULT_GRACE, |new| async move {
                *store.lock().unwrap() = Some(new.expose().to_owned());
                Ok::<_, std::io::Error>(())
            })
            .await
            .unwrap_or_else(|error| panic!("{secret}: {error}"));
        assert_eq!(rotated.endpoint.id, id);
        assert_eq!(stored.lock().unwrap().as_deref(), Some(secret));
        assert!(verifies(&live.current(), secret), "{secret}");
        assert!(verifies(&live.current(), &old), "{secret}: the grace");
    }

    // A 2xx answer whose envelope cannot be read (`code` twice), or whose
    // `data` cannot (twice, with two secrets: which one Clink signs with
    // is not known), fails, holding a secret it carries (of two, the
    // last, as a JSON reader keeps it).
    for (body, secret) in [
        (
            r#"{"code":200,"code":200,"data":{"signingSecret":"whsec_twice"}}"#,
            "whsec_twice",
        ),
        (
            r#"{"code":200,"data":{"signingSecret":"whsec_one"},"data":{"signingSecret":"whsec_two"}}"#,
            "whsec_two",
        ),
    ] {
        fake.fail_next(
            &format!("webhook/endpoints/{id}/rotate-secret"),
            Failure::Json {
                status: 200,
                body: body.into(),
            },
            1,
        );
        let error = client.rotate_endpoint_secret(&id).await.unwrap_err();
        assert_eq!(
            error.new_secret().map(WebhookSecret::expose),
            Some(secret),
            "{error}"
        );
        assert_no_key("the error", &format!("{error} {error:?}"), &[secret]);
    }

    fake.fail_next(
        &format!("webhook/endpoints/{id}/rotate-secret"),
        Failure::Json {
            status: 200,
            body: format!(
                r#"{{"code":200,"data":{{"id":"{id}","url":"https://shop.example.com/top"}},"signingSecret":"whsec_beside_data"}}"#
            ),
        },
        1,
    );
    let endpoint = client.rotate_endpoint_secret(&id).await.unwrap();
    assert_eq!(
        endpoint.signing_secret.as_ref().map(WebhookSecret::expose),
        Some("whsec_beside_data")
    );
    // An empty secret (or only spaces) in `data`, as a serializer may
    // write for "not available", is no secret: the one beside it is the
    // secret, and with none beside it the answer holds none.
    for (blank, beside, secret) in [
        ("", r#","signingSecret":"whsec_real""#, Some("whsec_real")),
        ("  ", r#","signingSecret":"whsec_real""#, Some("whsec_real")),
        ("", "", None),
        ("   ", "", None),
    ] {
        fake.fail_next(
            &format!("webhook/endpoints/{id}/rotate-secret"),
            Failure::Json {
                status: 200,
                body: format!(
                    r#"{{"code":200,"data":{{"id":"{id}","signingSecret":"{blank}"}}{beside}}}"#
                ),
            },
            1,
        );
        let endpoint = client.rotate_endpoint_secret(&id).await.unwrap();
        assert_eq!(
            endpoint.signing_secret.as_ref().map(WebhookSecret::expose),
            secret,
            "{blank:?} {beside}"
        );
    }

    // A create, and an ensure that does not say whether it sent one.
    let beside = |secret: &str| Failure::Json {
        status: 200,
        body: format!(
            r#"{{"code":200,"data":{{"endpoint":{{"id":"whk_9","url":"https://shop.example.com/new"}},"id":"whk_9"}},"signingSecret":"{secret}"}}"#
        ),
    };
    fake.fail_next("webhook/endpoints/ensure", beside("whsec_ensured"), 1);
    let ensured = client
        .ensure_endpoint(&EnsureEndpoint::new(
            "https://shop.example.com/new",
            ["order.succeeded"],
        ))
        .await
        .unwrap();
    assert_eq!(
        ensured
            .endpoint
            .signing_secret
            .as_ref()
            .map(WebhookSecret::expose),
        Some("whsec_ensured")
    );
    assert!(ensured.signing_secret_available, "the secret came");
    fake.fail_next("webhook/endpoints", beside("whsec_created"), 1);
    let created = client
        .create_endpoint(&NewEndpoint::new(
            "https://shop.example.com/new",
            ["order.succeeded"],
        ))
        .await
        .unwrap();
    assert_eq!(
        created.signing_secret.as_ref().map(WebhookSecret::expose),
        Some("whsec_created")
    );
}

#[tokio::test]
async fn a_failed_persist_hands_the_new_secret_back_in_the_error() {
    let (fake, id) = one_endpoint().await;
    let old = fake.endpoint_secret(&id).unwrap();
    let live = LiveVerifier::new(Verifier::new(&old).unwrap());
    let client = client_for(&fake, &[NEW]).build().unwrap();
    let given = Arc::new(Mutex::new(None));
    let give = Arc::clone(&given);
    let error = client
        .rotate_signing_secret(&id, live.clone(), DEFAULT_GRACE, |secret| async move {
            *give.lock().unwrap() = Some(secret.expose().to_owned());
            Err::<(), _>(std::io::Error::other("disk full"))
        })
        .await
        .unwrap_err();
    let new = fake.endpoint_secret(&id).unwrap();
    assert_ne!(new, old);
    assert_eq!(given.lock().unwrap().as_deref(), Some(new.as_str()));
    assert!(matches!(error, RotationError::Persist { .. }), "{error}");

    // The caller can store the secret from the error: it is Clink's.
    let secret = error.new_secret().expect("the new secret in the error");
    assert_eq!(secret.expose(), new);
    let stored = Verifier::new(secret.expose()).unwrap();
    assert!(verifies(&stored, &new), "it verifies Clink's deliveries");
    assert!(!verifies(&stored, &old));

    let text = format!(
        "{error}\n{error:?}\n{:?}",
        std::error::Error::source(&error)
    );
    assert_no_key("a failed persist's error", &text, &[&new, &old]);
    assert!(
        text.contains("disk full") && text.contains("new_secret"),
        "{text}"
    );
    assert!(text.contains("[redacted]"), "{text}");
}

#[tokio::test]
async fn an_account_removed_while_clink_rotates_gets_an_error_that_holds_the_new_secret() {
    let (fake, id) = one_endpoint().await;
    let old = fake.endpoint_secret(&id).unwrap();
    let map = KeyMap::new();
    map.insert("acct_1", Verifier::new(&old).unwrap()).unwrap();
    let client = client_for(&fake, &[NEW]).build().unwrap();

    // Clink rotates; its answer is held while the account is removed.
    let held = fake.hold_next(&format!("webhook/endpoints/{id}/rotate-secret"));
    let persisted = Arc::new(Mutex::new(0));
    let rotation = {
        let (client, map, id, persisted) = (
            client.clone(),
            map.clone(),
            id.clone(),
            Arc::clone(&persisted),
        );
        tokio::spawn(async move {
            client
                .rotate_signing_secret(
                    &id,
                    LiveKeys::account(map, "acct_1"),
                    DEFAULT_GRACE,
                    |_| async move {
                        *persisted.lock().unwrap() += 1;
                        Ok::<_, std::io::Error>(())
                    },
                )
                .await
        })
    };
    assert!(fake.wait_for_requests(1, Duration::from_secs(30)).await);
    assert!(map.remove("acct_1"));
    held.release();
    let error = rotation.await.unwrap().unwrap_err();

    let new = fake.endpoint_secret(&id).unwrap();
    assert_ne!(new, old, "Clink rotated");
    assert!(
        matches!(error, RotationError::AccountRemoved { .. }),
        "{error}"
    );
    let secret = error.new_secret().expect("the new secret in the error");
    assert_eq!(secret.expose(), new);
    assert!(verifies(&Verifier::new(secret.expose()).unwrap(), &new));
    assert_eq!(*persisted.lock().unwrap(), 0, "not handed to persist");
    assert!(map.get("acct_1").is_none(), "the account stays removed");

    let text = format!("{error}\n{error:?}");
    assert!(!text.contains("nothing was rotated"), "{text}");
    assert!(text.contains("Clink rotated"), "{text}");
    assert_no_key("the error", &text, &[&new, &old]);
}

/// A rotation waiting for another of the same endpoint looks at the key
/// map again once it is its turn: an account removed meanwhile is not
/// rotated at Clink (which would void the secret the first one stored).
#[tokio::test]
async fn an_account_removed_while_a_rotation_waits_its_turn_is_not_rotated() {
    let (fake, id) = one_endpoint().await;
    let rotate = format!("webhook/endpoints/{id}/rotate-secret");
    let map = KeyMap::new();
    map.insert(
        "acct_1",
        Verifier::new(fake.endpoint_secret(&id).unwrap()).unwrap(),
    )
    .unwrap();
    let client = client_for(&fake, &[NEW]).build().unwrap();
    let rotation = |client: &Client| {
        let (client, map, id) = (client.clone(), map.clone(), id.clone());
        async move {
            client
                .rotate_signing_secret(
                    &id,
                    LiveKeys::account(map, "acct_1"),
                    DEFAULT_GRACE,
                    |_| async { Ok::<_, std::io::Error>(()) },
                )
                .await
        }
    };
    // The first rotation's call to Clink is held.
    let held = fake.hold_next(&rotate);
    let first = tokio::spawn(rotation(&client));
    assert!(fake.wait_for_requests(1, Duration::from_secs(30)).await);
    // The second has found the account and waits for its turn.
    let mut second = Box::pin(rotation(&client));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(second.as_mut().poll(&mut cx).is_pending());
    assert!(map.remove("acct_1"));
    held.release();
    let first = first.await.unwrap().unwrap_err();
    assert!(
        matches!(first, RotationError::AccountRemoved { .. }),
        "{first}"
    );
    let second = second.await.unwrap_err();
    assert!(matches!(second, RotationError::UnknownAccount), "{second}");
    assert_eq!(fake.count("POST", &rotate), 1, "Clink rotated once");
}

/// `persist`'s error may repeat the value it could not store (a
/// database's unique violation does): the rotation's error shows it
/// without the new secret, printed or debugged.
#[tokio::test]
async fn a_persist_error_that_repeats_the_secret_is_shown_without_it() {
    let (fake, id) = one_endpoint().await;
    let old = fake.endpoint_secret(&id).unwrap();
    let live = LiveVerifier::new(Verifier::new(&old).unwrap());
    let client = client_for(&fake, &[NEW]).build().unwrap();
    let error = client
        .rotate_signing_secret(&id, live, DEFAULT_GRACE, |secret| async move {
            let bare = secret.expose().trim_start_matches("whsec_").to_owned();
            Err::<(), _>(std::io::Error::other(format!(
                "duplicate key value violates unique constraint: Key (secret)=({}) already \
                 exists; (bare: {bare})",
                secret.expose()
            )))
        })
        .await
        .unwrap_err();
    let new = fake.endpoint_secret(&id).unwrap();
    assert_eq!(
        error.new_secret().map(WebhookSecret::expose),
        Some(new.as_str())
    );
    let mut text = format!("{error}\n{error:?}");
    assert!(text.contains("duplicate key value"), "{text}");
    // Nor through the chain of sources a report prints.
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!("\n{cause}\n{cause:?}"));
        source = cause.source();
    }
    assert_no_key(
        "the error",
        &text,
        &[&new, new.trim_start_matches("whsec_"), &old],
    );
}

/// A `429` holds every call of the client for its `Retry-After`, also
/// when it answered a write (which is not retried): a read asked for
/// meanwhile, with less time than the pause, fails at once, unsent.
#[tokio::test]
async fn a_429_to_a_write_holds_the_reads_after_it() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.put_object("order/ord_1", order("ord_1", "success"));
    let client = client_for(&fake, &[NEW])
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    fake.fail_next(
        "webhook/endpoints",
        Failure::RateLimited {
            retry_after_secs: 30,
        },
        1,
    );
    let error = client
        .create_endpoint(&NewEndpoint::new(
            "https://shop.example.com/hook",
            ["order.succeeded"],
        ))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::RateLimited);
    assert_eq!(fake.count("POST", "webhook/endpoints"), 1, "not retried");
    let read = client.get::<Order>("ord_1").await.unwrap_err();
    assert_eq!(read.kind(), ApiErrorKind::RateLimited, "{read}");
    assert_eq!(read.status(), None, "{read}");
    assert_eq!(fake.count("GET", "order/ord_1"), 0, "the read was not sent");
}

#[tokio::test]
async fn dot_segment_ids_are_refused_before_any_request() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let id = fake.add_endpoint("https://shop.example.com/hook", &["order.succeeded"]);
    fake.put_object("order/ord_1", order("ord_1", "success"));
    let client = client_for(&fake, &[NEW]).build().unwrap();
    for dots in ["", ".", ".."] {
        let kinds = [
            client.endpoint(dots).await.map(drop),
            client.delete_endpoint(dots).await,
            client.enable_endpoint(dots).await.map(drop),
            client.disable_endpoint(dots).await.map(drop),
            client
                .update_endpoint(dots, &EndpointUpdate::new().enabled(false))
                .await
                .map(drop),
            client.rotate_endpoint_secret(dots).await.map(drop),
            client.get::<Order>(dots).await.map(drop),
            client.get_json(ObjectKind::Refund, dots).await.map(drop),
            client
                .current(&ObjectKey::new("order", dots))
                .await
                .map(drop),
        ]
        .map(|result| result.map_err(|error| error.kind()));
        assert!(
            kinds
                .iter()
                .all(|kind| *kind == Err(ApiErrorKind::Unsupported)),
            "{dots:?}: {kinds:?}"
        );
        let error = client
            .rotate_signing_secret(
                dots,
                LiveVerifier::new(Verifier::new("whsec_kept").unwrap()),
                DEFAULT_GRACE,
                |_| async { Ok::<_, std::io::Error>(()) },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&error, RotationError::Api(e) if e.kind() == ApiErrorKind::Unsupported),
            "{dots:?}: {error}"
        );
    }
    assert!(
        fake.requests().is_empty(),
        "nothing sent: {:?}",
        fake.requests()
    );
    // The endpoint and the order are untouched, and a dot inside an id is fine.
    assert!(fake.endpoint_secret(&id).is_some());
    fake.put_object("order/ord.1..x", order("ord.1..x", "success"));
    let _: Order = client.get("ord.1..x").await.unwrap();
    assert_eq!(fake.count("GET", "order/ord.1..x"), 1);
}

#[tokio::test]
async fn a_deadline_or_timeout_too_long_to_represent_means_none() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.put_object("order/ord_1", order("ord_1", "success"));
    let id = fake.add_endpoint("https://shop.example.com/hook", &["order.succeeded"]);
    let client = client_for(&fake, &[NEW])
        .deadline(Duration::MAX)
        .request_timeout(Duration::MAX)
        .build()
        .unwrap();
    let got: Order = client.get("ord_1").await.unwrap();
    assert_eq!(got.order_id.as_deref(), Some("ord_1"));
    let disabled = client.disable_endpoint(&id).await.unwrap();
    assert!(!disabled.enabled);
}

#[tokio::test]
async fn a_write_queued_behind_reads_is_sent_with_its_whole_timeout_or_not_at_all() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    fake.put_object("order/ord_1", order("ord_1", "success"));
    let id = fake.add_endpoint(
        "https://shop.example.com/webhooks/clink",
        &["order.succeeded"],
    );
    let rotations = format!("webhook/endpoints/{id}/rotate-secret");
    let old = fake.endpoint_secret(&id).unwrap();
    let live = LiveVerifier::new(Verifier::new(&old).unwrap());

    // One request a second: the read takes the budget's only slot, and the
    // rotation waits about a second for the next, leaving it a tenth of a
    // second of its deadline; Clink answers it after 200 ms.
    let client = client_for(&fake, &[NEW])
        .rate_limit(1, 1)
        .deadline(Duration::from_millis(1100))
        .build()
        .unwrap();
    let _: Order = client.get("ord_1").await.unwrap();
    fake.set_delay(Duration::from_millis(200));
    let result = client
        .rotate_signing_secret(&id, live.clone(), DEFAULT_GRACE, |_| async {
            Ok::<_, std::io::Error>(())
        })
        .await;
    match result {
        Ok(_) => {
            let new = fake.endpoint_secret(&id).unwrap();
            assert_ne!(new, old);
            assert!(verifies(&live.current(), &new), "the new key verifies");
        }
        // A machine so slow that the slot came after the deadline: then
        // nothing may have been sent.
        Err(error) => {
            assert_eq!(fake.count("POST", &rotations), 0, "{error}");
            assert_eq!(fake.endpoint_secret(&id).unwrap(), old, "{error}");
        }
    }

    // No room before the deadline: nothing sent, and the error says so.
    fake.set_delay(Duration::ZERO);
    let client = client_for(&fake, &[NEW])
        .rate_limit(1, 1)
        .deadline(Duration::from_millis(100))
        .build()
        .unwrap();
    // Its slot is taken whatever it answers.
    let _ = client.get::<Order>("ord_1").await;
    let before = fake.endpoint_secret(&id).unwrap();
    let posts = fake.count("POST", &rotations);
    let error = client.rotate_endpoint_secret(&id).await.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::RateLimited, "{error}");
    assert!(error.to_string().contains("not sent"), "{error}");
    assert_eq!(fake.count("POST", &rotations), posts, "nothing sent");
    assert_eq!(fake.endpoint_secret(&id).unwrap(), before);
}

#[tokio::test]
async fn a_refused_key_whose_next_key_gets_no_room_is_unauthorized_not_unsent() {
    let fake = FakeApi::start().await;
    fake.accept_key(OLD);
    let id = fake.add_endpoint(
        "https://shop.example.com/webhooks/clink",
        &["order.succeeded"],
    );
    // One request a second, and a deadline under a second: the delete takes
    // the budget's only slot, Clink refuses the newest key, and the next
    // slot comes after the deadline, however fast or slow that went.
    let client = client_for(&fake, &[NEW, OLD])
        .rate_limit(1, 1)
        .deadline(Duration::from_millis(900))
        .build()
        .unwrap();
    let error = client.delete_endpoint(&id).await.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::Unauthorized, "{error}");
    assert_eq!(error.status(), Some(http::StatusCode::UNAUTHORIZED));
    let text = error.to_string();
    assert!(!text.contains("not sent"), "{text}");
    assert!(text.contains("next key was not tried"), "{text}");
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].headers["x-api-key"], NEW);
    assert!(fake.endpoint_secret(&id).is_some(), "not deleted");
}

#[tokio::test]
async fn an_envelope_whose_code_or_msg_has_another_type_loses_no_new_secret() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let client = client_for(&fake, &[NEW]).build().unwrap();
    // A whole number in a string or a float, a code that is no number (in
    // an answer that carries the new secret, taken for a yes as Clink's own
    // CLI takes it), a msg that is no string.
    let envelopes = [
        json!({"code": "200"}),
        json!({"code": 200.0}),
        json!({"code": " 200 ", "msg": 7}),
        json!({"msg": {"en": "success"}}),
        json!({"code": "OK", "msg": ["success"]}),
    ];
    for (n, envelope) in envelopes.into_iter().enumerate() {
        let url = format!("https://shop.example.com/{n}");
        let id = fake.add_endpoint(&url, &["order.succeeded"]);
        let old = fake.endpoint_secret(&id).unwrap();
        let live = LiveVerifier::new(Verifier::new(&old).unwrap());
        fake.patch_answer_next(
            &format!("webhook/endpoints/{id}/rotate-secret"),
            envelope.clone(),
            1,
        );
        let stored = Arc::new(Mutex::new(None));
        let store = Arc::clone(&stored);
        client
            .rotate_signing_secret(&id, live.clone(), DEFAULT_GRACE, |secret| async move {
                *store.lock().unwrap() = Some(secret.expose().to_owned());
                Ok::<_, std::io::Error>(())
            })
            .await
            .unwrap_or_else(|error| panic!("{envelope}: {error}"));
        let new = fake.endpoint_secret(&id).unwrap();
        assert_ne!(new, old, "{envelope}");
        assert_eq!(stored.lock().unwrap().as_deref(), Some(new.as_str()));
        assert!(verifies(&live.current(), &new), "{envelope}");

        fake.patch_answer_next("webhook/endpoints/ensure", envelope.clone(), 1);
        let ensured = client
            .ensure_endpoint(&EnsureEndpoint::new(&url, ["order.succeeded"]).rotate_secret())
            .await
            .unwrap_or_else(|error| panic!("{envelope}: {error}"));
        assert_eq!(
            ensured
                .endpoint
                .signing_secret
                .map(|s| s.expose().to_owned()),
            fake.endpoint_secret(&id),
            "{envelope}"
        );

        fake.patch_answer_next("webhook/endpoints", envelope.clone(), 1);
        let created = client
            .create_endpoint(&NewEndpoint::new(format!("{url}/new"), ["invoice.paid"]))
            .await
            .unwrap_or_else(|error| panic!("{envelope}: {error}"));
        let created_id = fake.endpoint_id(&format!("{url}/new")).unwrap();
        assert_eq!(
            created.signing_secret.map(|s| s.expose().to_owned()),
            fake.endpoint_secret(&created_id),
            "{envelope}"
        );
    }

    // A code that is a number in a string still says no.
    fake.put_object("order/ord_1", order("ord_1", "success"));
    fake.patch_answer_next("order/", json!({"code": "404", "msg": "no such order"}), 1);
    let error = client.get::<Order>("ord_1").await.unwrap_err();
    assert_eq!(error.kind(), ApiErrorKind::NotFound, "{error}");
    assert_eq!(error.code(), Some(404));
    assert!(error.new_secret().is_none());
}

#[tokio::test]
async fn a_code_that_is_no_number_says_no_unless_the_answer_carries_a_new_secret() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let client = client_for(&fake, &[NEW]).build().unwrap();
    fake.put_object("order/ord_1", order("ord_1", "success"));
    let id = fake.add_endpoint("https://shop.example.com/hook", &["order.succeeded"]);
    let path = format!("webhook/endpoints/{id}");
    let rotate = format!("{path}/rotate-secret");
    let codes = [
        json!("FORBIDDEN"),
        json!(true),
        json!({"value": 200}),
        json!(200.5),
        json!(1e300),
    ];
    for code in codes {
        // Clink refuses a delete in words: nothing deleted, and the call
        // says so.
        let refusal = json!({"code": code, "msg": "not allowed"}).to_string();
        fake.fail_next(
            &path,
            Failure::Json {
                status: 200,
                body: refusal.clone(),
            },
            1,
        );
        let error = client.delete_endpoint(&id).await.unwrap_err();
        assert_eq!(error.kind(), ApiErrorKind::Envelope, "{code}: {error}");
        assert_eq!(error.code(), None, "{code}");
        assert_eq!(error.status(), Some(http::StatusCode::OK), "{code}");
        let text = error.to_string();
        assert!(text.contains("not allowed"), "{code}: {text}");
        assert!(text.contains("not a number"), "{code}: {text}");
        assert!(fake.endpoint_secret(&id).is_some(), "{code}: not deleted");

        // Reads whose answers hold their data all the same.
        fake.patch_answer_next("order/ord_1", json!({ "code": code }), 1);
        let error = client.get::<Order>("ord_1").await.unwrap_err();
        assert_eq!(error.kind(), ApiErrorKind::Envelope, "{code}: {error}");
        fake.patch_answer_next(&path, json!({ "code": code }), 1);
        let error = client.endpoint(&id).await.unwrap_err();
        assert_eq!(error.kind(), ApiErrorKind::Envelope, "{code}: {error}");

        // A rotation refused so, with no secret: a refusal too, not an
        // answer that could not be read.
        let old = fake.endpoint_secret(&id).unwrap();
        fake.fail_next(
            &rotate,
            Failure::Json {
                status: 200,
                body: refusal,
            },
            1,
        );
        let error = client.rotate_endpoint_secret(&id).await.unwrap_err();
        assert_eq!(error.kind(), ApiErrorKind::Envelope, "{code}: {error}");
        assert!(error.new_secret().is_none());
        assert_eq!(fake.endpoint_secret(&id).unwrap(), old, "{code}");

        // One that carries the new secret keeps it.
        fake.patch_answer_next(&rotate, json!({ "code": code }), 1);
        let rotated = client.rotate_endpoint_secret(&id).await.unwrap();
        let new = fake.endpoint_secret(&id).unwrap();
        assert_ne!(new, old, "{code}");
        assert_eq!(
            rotated.signing_secret.as_ref().map(WebhookSecret::expose),
            Some(new.as_str()),
            "{code}"
        );
    }
    // A whole number in a string is a yes as before.
    fake.patch_answer_next(&rotate, json!({"code": "200"}), 1);
    let rotated = client.rotate_endpoint_secret(&id).await.unwrap();
    assert_eq!(
        rotated.signing_secret.as_ref().map(WebhookSecret::expose),
        fake.endpoint_secret(&id).as_deref()
    );
    fake.patch_answer_next("order/ord_1", json!({"code": "200"}), 1);
    let got: Order = client.get("ord_1").await.unwrap();
    assert_eq!(got.order_id.as_deref(), Some("ord_1"));
    client.delete_endpoint(&id).await.unwrap();
    assert!(fake.endpoint_secret(&id).is_none());
}

#[tokio::test]
async fn an_answer_that_says_no_but_carries_a_secret_keeps_it_in_the_error() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let client = client_for(&fake, &[NEW]).build().unwrap();
    let id = fake.add_endpoint("https://shop.example.com/hook", &["order.succeeded"]);
    let rotate = format!("webhook/endpoints/{id}/rotate-secret");

    fake.patch_answer_next(&rotate, json!({"code": 0, "msg": "done"}), 1);
    let error = client.rotate_endpoint_secret(&id).await.unwrap_err();
    let new = fake.endpoint_secret(&id).unwrap();
    assert_eq!(error.kind(), ApiErrorKind::Envelope, "{error}");
    assert_eq!(error.code(), Some(0));
    assert_eq!(
        error.new_secret().map(WebhookSecret::expose),
        Some(new.as_str())
    );
    assert_no_key("the error", &format!("{error} {error:?}"), &[&new]);

    // Through a rotation: neither installed nor persisted, but handed back.
    let old = new;
    let live = LiveVerifier::new(Verifier::new(&old).unwrap());
    fake.patch_answer_next(&rotate, json!({"code": 0, "msg": "done"}), 1);
    let persisted = Arc::new(Mutex::new(0));
    let count = Arc::clone(&persisted);
    let error = client
        .rotate_signing_secret(&id, live.clone(), DEFAULT_GRACE, |_| async move {
            *count.lock().unwrap() += 1;
            Ok::<_, std::io::Error>(())
        })
        .await
        .unwrap_err();
    let new = fake.endpoint_secret(&id).unwrap();
    assert!(matches!(error, RotationError::Api(_)), "{error}");
    assert_eq!(
        error.new_secret().map(WebhookSecret::expose),
        Some(new.as_str())
    );
    assert_eq!(*persisted.lock().unwrap(), 0);
    assert!(!verifies(&live.current(), &new), "not installed");
    let text = format!("{error} {error:?}");
    assert!(text.contains("new_secret"), "{text}");
    assert_no_key("the rotation error", &text, &[&new, &old]);
}

#[tokio::test]
async fn a_refusal_that_carries_a_secret_shows_no_piece_of_it() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let client = client_for(&fake, &[NEW]).build().unwrap();
    let id = fake.add_endpoint("https://shop.example.com/hook", &["order.succeeded"]);
    let rotate = format!("webhook/endpoints/{id}/rotate-secret");
    // No prefix to know it by, and characters that end a word.
    let secret = "abc+def/ghi+jkl/mno+pqr/stu+vwx/yz0+123/456+789/ABC+DEF/GHI+JKL";
    let note = "n".repeat(135);
    let answers = [
        // No msg: the whole body is the text, the secret across its 200th
        // character.
        format!(
            r#"{{"code":409,"msg":null,"data":{{"note":"{note}","signingSecret":"{secret}"}}}}"#
        ),
        // The msg holds it across its 200th character.
        format!(
            r#"{{"code":409,"msg":"{}{secret}","data":{{"signingSecret":"{secret}"}}}}"#,
            "m".repeat(190)
        ),
        // Escaped in the JSON, in the endpoint.
        format!(
            r#"{{"data":{{"endpoint":{{"note":"{note}","signingSecret":"{}"}}}}}}"#,
            secret.replace('/', "\\/")
        ),
    ];
    for answer in answers {
        fake.fail_next(
            &rotate,
            Failure::Json {
                status: 409,
                body: answer.clone(),
            },
            1,
        );
        let error = client.rotate_endpoint_secret(&id).await.unwrap_err();
        assert_eq!(error.kind(), ApiErrorKind::Envelope, "{answer}: {error}");
        assert_eq!(error.status(), Some(http::StatusCode::CONFLICT));
        assert_eq!(
            error.new_secret().map(WebhookSecret::expose),
            Some(secret),
            "{answer}: kept apart"
        );
        let text = format!("{error} {error:?}");
        for piece in secret.as_bytes().windows(6) {
            let piece = std::str::from_utf8(piece).unwrap();
            assert!(!text.contains(piece), "{piece:?} of the secret in {text}");
        }
    }
}

#[tokio::test]
async fn endpoint_times_that_are_not_whole_numbers_fail_no_read_or_change() {
    let fake = FakeApi::start().await;
    fake.accept_key(NEW);
    let client = client_for(&fake, &[NEW]).build().unwrap();
    let id = fake.add_endpoint("https://shop.example.com/hook", &["order.succeeded"]);
    let path = format!("webhook/endpoints/{id}");
    // Seconds with a fraction, and an ISO 8601 time.
    let times = json!({"createdAt": 1_754_819_711.5, "updatedAt": "2025-08-10T09:55:11Z"});
    let check = |endpoint: &clink_webhooks::api::Endpoint, what: &str| {
        assert_eq!(endpoint.id, id, "{what}");
        assert_eq!(endpoint.created_at, Some(1_754_819_711), "{what}");
        assert_eq!(endpoint.updated_at, None, "{what}");
    };

    fake.patch_next(&path, times.clone(), 1);
    check(&client.endpoint(&id).await.unwrap(), "get");
    fake.patch_next(&path, times.clone(), 1);
    let updated = client
        .update_endpoint(&id, &EndpointUpdate::new().description("shop"))
        .await
        .unwrap();
    check(&updated, "update");
    assert_eq!(updated.description.as_deref(), Some("shop"));
    fake.patch_next(&path, times.clone(), 1);
    check(&client.disable_endpoint(&id).await.unwrap(), "disable");
    fake.patch_next(&path, times.clone(), 1);
    check(&client.enable_endpoint(&id).await.unwrap(), "enable");

    // A list: its rows are not in `data`.
    let mut row = serde_json::to_value(client.endpoint(&id).await.unwrap()).unwrap();
    row["createdAt"] = json!(1_754_819_711.5);
    row["updatedAt"] = json!("2025-08-10T09:55:11Z");
    fake.patch_answer_next("webhook/endpoints", json!({ "rows": [row] }), 1);
    let page = client.list_endpoints(&EndpointQuery::new()).await.unwrap();
    assert_eq!(page.rows.len(), 1);
    check(&page.rows[0], "list");

    // Whole numbers are kept as they are, and null is none.
    fake.patch_next(
        &path,
        json!({"createdAt": 1_754_819_711_382_i64, "updatedAt": null}),
        1,
    );
    let got = client.endpoint(&id).await.unwrap();
    assert_eq!(
        (got.created_at, got.updated_at),
        (Some(1_754_819_711_382), None)
    );
}

#[test]
fn a_rotation_whose_task_the_runtime_cancels_says_what_it_came_to_is_unknown() {
    let client = Client::builder()
        .base_url("http://127.0.0.1:9/api/")
        .key(ApiKey::new(NEW).unwrap())
        .build()
        .unwrap();
    let live = LiveVerifier::new(Verifier::new("whsec_old_5e0c1a").unwrap());
    let mut rotation = Box::pin(client.rotate_signing_secret(
        "whk_1",
        live,
        DEFAULT_GRACE,
        |_| async { Ok::<_, std::io::Error>(()) },
    ));
    // Its task is spawned on a runtime that never runs it, then shuts down.
    let ending = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    {
        let _entered = ending.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(rotation.as_mut().poll(&mut cx).is_pending());
    }
    drop(ending);
    let caller = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let error = caller.block_on(rotation).unwrap_err();
    assert!(matches!(error, RotationError::Cancelled), "{error:?}");
    assert!(error.new_secret().is_none());
    let text = error.to_string();
    assert!(text.contains("not known"), "{text}");
    assert!(text.contains("rotate again"), "{text}");
}

/// An error `persist` returns that says when it is dropped: once the
/// rotation is done with it (has handed it on, or logged it).
#[derive(Debug)]
struct DiskFull(#[allow(dead_code)] tokio::sync::oneshot::Sender<()>);

impl std::fmt::Display for DiskFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("disk full")
    }
}

impl std::error::Error for DiskFull {}

#[tokio::test]
async fn a_rotation_whose_caller_gives_up_still_persists_or_logs_the_new_secret() {
    let (logs, _guard) = capture();
    let (fake, id) = one_endpoint().await;
    let rotate = format!("webhook/endpoints/{id}/rotate-secret");
    let old = fake.endpoint_secret(&id).unwrap();
    let live = LiveVerifier::new(Verifier::new(&old).unwrap());
    let client = client_for(&fake, &[NEW]).build().unwrap();

    // Clink rotates; while its answer is held, the caller gives up (an
    // admin endpoint's request timeout), then the answer comes.
    let held = fake.hold_next(&rotate);
    let (persisted, mut stored) = tokio::sync::mpsc::unbounded_channel();
    let caller = {
        let (client, id, live) = (client.clone(), id.clone(), live.clone());
        tokio::spawn(async move {
            client
                .rotate_signing_secret(&id, live, DEFAULT_GRACE, move |secret| async move {
                    persisted.send(secret.expose().to_owned()).unwrap();
                    Ok::<_, std::io::Error>(())
                })
                .await
        })
    };
    assert!(fake.wait_for_requests(1, Duration::from_secs(30)).await);
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    held.release();
    let stored = tokio::time::timeout(Duration::from_secs(30), stored.recv())
        .await
        .expect("persist was called within 30 s")
        .expect("persist was called");
    let new = fake.endpoint_secret(&id).unwrap();
    assert_ne!(new, old);
    assert_eq!(stored, new, "the new secret persisted");
    assert!(verifies(&live.current(), &new), "and installed");

    // A persist that fails with nobody left to tell is logged at error.
    let held = fake.hold_next(&rotate);
    let (dropped, error_dropped) = tokio::sync::oneshot::channel();
    let caller = {
        let (client, id, live) = (client.clone(), id.clone(), live.clone());
        tokio::spawn(async move {
            client
                .rotate_signing_secret(&id, live, DEFAULT_GRACE, move |_| async move {
                    Err::<(), _>(DiskFull(dropped))
                })
                .await
        })
    };
    assert!(fake.wait_for_requests(2, Duration::from_secs(30)).await);
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    held.release();
    let done = tokio::time::timeout(Duration::from_secs(30), error_dropped).await;
    assert!(done.is_ok(), "the rotation was done with persist's error");
    let newest = fake.endpoint_secret(&id).unwrap();
    assert_ne!(newest, new, "Clink rotated again");
    let failed: Vec<_> = logs
        .events()
        .into_iter()
        .filter(|event| event.level == tracing::Level::ERROR)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].message.contains("rotate again"), "{failed:?}");
    assert_eq!(
        failed[0].fields.get("error").map(String::as_str),
        Some("disk full")
    );
    assert_no_key("the logs", &logs.text(), &[&old, &new, &newest, NEW]);
}
