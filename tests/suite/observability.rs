//! Metrics and health: scraped from the example receiver after real
//! deliveries, and readiness against real and unreachable stores.

use std::time::{Duration, Instant};

use crate::support::process::{admin_url, example_receiver};
use bytes::Bytes;
use clink_webhooks::layer::DEFAULT_STORE_TIMEOUT;
use clink_webhooks::testing::{fresh_fixture, SignedRequest};
use clink_webhooks::{ClinkLayer, EventType, SigningKey, Verifier};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const KEY: &str = "whsec_observability_test";

async fn send(request: http::Request<Full<Bytes>>) -> (u16, String) {
    let response = Client::builder(TokioExecutor::new())
        .build_http()
        .request(request)
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn get(url: &str) -> (u16, String) {
    send(
        http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// The value of the sample named `name` whose labels include every one of
/// `labels`, from Prometheus' text format; `None` when there is none.
fn sample(scrape: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name && labels.iter().all(|label| rest.contains(label))
        })
        .and_then(|(_, value)| value.parse().ok())
}

/// Metrics and health are served on the example's admin address, and the
/// webhook's address, which anyone can reach, serves neither.
#[tokio::test]
async fn the_example_receiver_serves_metrics_that_match_its_deliveries_and_health() {
    let (receiver, url) = example_receiver(KEY);
    let base = admin_url(&receiver);
    let public = url.strip_suffix("/webhooks/clink").unwrap();
    assert_ne!(base, public);
    let deliver = |body: String| SignedRequest::new(KEY, body).uri(url.as_str());

    let order = fresh_fixture(&EventType::OrderSucceeded);
    let rule = fresh_fixture(&EventType::RiskRuleUpdated);
    assert_eq!(send(deliver(order.clone()).build()).await.0, 200);
    assert_eq!(send(deliver(order.clone()).build()).await.0, 200); // duplicate
    assert_eq!(send(deliver(rule).build()).await.0, 200);
    assert_eq!(send(deliver(order).tamper().build()).await.0, 401);
    // The tampered body claims a type; it must not become a label.
    let forged = r#"{"id":"evt_x","type":"wallet.forged","data":{}}"#.to_owned();
    assert_eq!(send(deliver(forged).tamper().build()).await.0, 401);

    let (status, scrape) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let deliveries = "clink_webhook_deliveries_total";
    let handled = |event_type: &str| {
        sample(
            &scrape,
            deliveries,
            &[
                r#"outcome="handled""#,
                &format!(r#"event_type="{event_type}""#),
            ],
        )
    };
    assert_eq!(handled("order.succeeded"), Some(1.0), "{scrape}");
    assert_eq!(handled("risk_rule.updated"), Some(1.0), "{scrape}");
    assert_eq!(
        sample(
            &scrape,
            deliveries,
            &[r#"outcome="duplicate""#, r#"event_type="order.succeeded""#]
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            deliveries,
            &[r#"outcome="signature_mismatch""#, r#"event_type="none""#]
        ),
        Some(2.0),
        "{scrape}"
    );
    assert!(!scrape.contains("wallet.forged"), "{scrape}");
    // The example's key has no name: it is counted under its fingerprint.
    let key = SigningKey::new(KEY).unwrap();
    assert_eq!(
        sample(
            &scrape,
            "clink_webhook_key_matches_total",
            &[&format!(r#"key="{}""#, key.name())]
        ),
        Some(3.0),
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            "clink_webhook_delivery_duration_seconds_count",
            &[r#"outcome="handled""#]
        ),
        Some(2.0),
        "{scrape}"
    );
    // A histogram with buckets, which adds up across instances.
    assert_eq!(
        sample(
            &scrape,
            "clink_webhook_delivery_duration_seconds_bucket",
            &[r#"outcome="handled""#, r#"le="+Inf""#]
        ),
        Some(2.0),
        "{scrape}"
    );
    assert!(
        !scrape.contains(r#"clink_webhook_delivery_duration_seconds{outcome="handled",quantile"#),
        "{scrape}"
    );
    assert_eq!(
        sample(&scrape, "clink_webhook_deliveries_in_flight", &[]),
        Some(0.0),
        "{scrape}"
    );

    let (status, body) = get(&format!("{base}/health")).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    for path in ["/health", "/metrics"] {
        let (status, body) = get(&format!("{public}{path}")).await;
        assert_eq!(status, 404, "{path} on the webhook's address: {body}");
    }
    drop(receiver);
}

#[tokio::test]
async fn readiness_fails_within_the_store_timeout_when_the_store_does_not_answer() {
    let layer = ClinkLayer::new(Verifier::new(KEY).unwrap())
        .store(crate::support::stores::HungStore)
        .store_timeout(Duration::from_millis(200))
        .unwrap();
    let started = Instant::now();
    let error = layer.readiness().check().await.unwrap_err();
    let elapsed = started.elapsed();
    // Not before the timeout, and before the default (25 times as long)
    // could have answered, however busy the machine.
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < DEFAULT_STORE_TIMEOUT, "{elapsed:?}");
    assert!(error.to_string().starts_with("not ready: "), "{error}");
    assert!(error.to_string().contains("timed out"), "{error}");
    assert_eq!(
        error.store_error().expect("the store's error").kind(),
        clink_webhooks::store::StoreErrorKind::Timeout
    );
    let source = std::error::Error::source(&error).expect("the store's error");
    assert_eq!(
        source.to_string(),
        error.store_error().expect("the store's error").to_string()
    );
    assert_eq!(
        format!("{:?}", layer.readiness()),
        "Readiness { .. }",
        "says nothing of the store's address"
    );
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_readiness_follows_the_server() {
    let _servers = crate::support::servers::shared().await;
    let url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run scripts/test, which starts PostgreSQL");
    let config: tokio_postgres::Config = url.parse().unwrap();
    let pool = |config: tokio_postgres::Config| {
        deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
            config,
            tokio_postgres::NoTls,
        ))
        .max_size(2)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .unwrap()
    };
    let up = ClinkLayer::new(Verifier::new(KEY).unwrap()).store(
        clink_webhooks::store::PostgresStore::new(pool(config.clone())),
    );
    up.readiness().check().await.unwrap();

    // The same database on a port where nothing listens.
    let (_held, port) = crate::support::loopback::refusing_port();
    let mut down = config;
    down.port(port);
    let down = ClinkLayer::new(Verifier::new(KEY).unwrap())
        .store(clink_webhooks::store::PostgresStore::new(pool(down)));
    let error = down.readiness().check().await.unwrap_err();
    let text = error.to_string();
    assert!(text.starts_with("not ready: "), "{text}");
    assert!(!text.contains(&url), "{text}");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_readiness_follows_the_server() {
    use clink_webhooks::store::RedisStore;

    // A server of this test's own, so stopping it disturbs no other test,
    // on a socket file of its own: no port another process could take.
    let dir = std::env::temp_dir().join(format!(
        "clink-readiness-{}-{}",
        std::process::id(),
        clink_webhooks::Timestamp::now().as_millis()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("redis.sock");
    /// Kills the server however the test ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Server(
        std::process::Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--unixsocket"])
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed by scripts/test"),
    );
    let url = format!("redis+unix://{}", socket.display());
    let deadline = Instant::now() + crate::support::process::PATIENCE;
    let store = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("redis-server exited: {status}");
        }
        match RedisStore::connect(&url).await {
            Ok(store) => break store,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "the server never answered: {error}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let store = store.with_timeout(Duration::from_millis(500)).unwrap();
    let layer = ClinkLayer::new(Verifier::new(KEY).unwrap()).store(store);
    layer.readiness().check().await.unwrap();

    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let started = Instant::now();
    let error = layer.readiness().check().await.unwrap_err();
    // The store's own answer (an error, or its 500 ms timeout), not the
    // layer's store timeout, ten times as long, ended the check.
    assert!(
        started.elapsed() < DEFAULT_STORE_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    assert!(error.to_string().starts_with("not ready: "), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}
