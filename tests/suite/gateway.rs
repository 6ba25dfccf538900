//! `clink-webhook serve`, the receiving gateway, as a process against real
//! servers: a nats-server with JetStream (`NATS_URL`), a redis-server
//! (`REDIS_URL`) and an HTTP app in the test, each behind a [`Gate`] that
//! can take it down.
//!
//! Run with `scripts/with-services cargo test --all-features --test suite gateway::`.
//! The deliveries are shuffled with the test's seed (printed;
//! `CLINK_TEST_SEED` repeats it).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clink_webhooks::store::Settle;
use clink_webhooks::{sign, Timestamp, Verifier};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::loopback;
use crate::support::process::Process;
use crate::support::seed::seed;
use crate::support::servers;
use crate::support::stores::PrivateDatabase;

const KEY: &str = "whsec_gateway_suite_key";

/// How long a whole phase (all deliveries acknowledged, every event
/// arrived) may take before the test fails: a bound on a hang only.
const PHASE: Duration = Duration::from_secs(240);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

fn env_url(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set; run with scripts/with-services (it starts the servers)")
    })
}

/// A name unique to this run and test, for streams and subjects.
fn unique(test: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{test}{}x{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst),
        Timestamp::now().as_millis() % 1_000_000
    )
}

/// splitmix64, seeded by the test's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.next() % (i as u64 + 1)).unwrap();
            items.swap(i, j);
        }
    }
}

/// Waits until `condition` holds, checking every 50 ms, for at most `within`.
async fn until<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut condition: F) {
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP gate in front of a server: while open it forwards connections;
/// closed, it drops new connections at once and cuts the open ones, as a
/// server that went down would.
struct Gate {
    port: u16,
    open: watch::Sender<bool>,
}

impl Gate {
    async fn new(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, watching) = watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut watching = watching.clone();
                if !*watching.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watching.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Self { port, open }
    }

    fn set(&self, open: bool) {
        self.open.send_replace(open);
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }
}

fn target(url: &str) -> SocketAddr {
    let host = url.split("://").nth(1).unwrap().trim_end_matches('/');
    let host = host.split('/').next().unwrap();
    host.parse()
        .unwrap_or_else(|_| panic!("{url}: expected host:port"))
}

/// The gateway process, restartable; the URL senders POST to follows it.
struct Gateway {
    env: Vec<(String, String)>,
    process: Option<Process>,
    url: Arc<RwLock<String>>,
    /// The admin address's URL, with `CLINK_ADMIN_LISTEN`.
    admin: Option<String>,
}

impl Gateway {
    fn start(env: Vec<(String, String)>) -> Self {
        let mut gateway = Self {
            env,
            process: None,
            url: Arc::default(),
            admin: None,
        };
        gateway.launch();
        gateway
    }

    fn launch(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_clink-webhook"));
        command.arg("serve");
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let process = Process::start(&mut command);
        let line = Process::line_starting(&process.stdout, "listening on ");
        *self.url.write().unwrap() = line["listening on ".len()..].to_owned();
        if self
            .env
            .iter()
            .any(|(name, _)| name == "CLINK_ADMIN_LISTEN")
        {
            let line = Process::line_starting(&process.stdout, "admin listening on ");
            let url = line["admin listening on ".len()..]
                .split(' ')
                .next()
                .unwrap();
            self.admin = Some(url.to_owned());
        }
        self.process = Some(process);
    }

    /// SIGKILL, then start again on a new port.
    fn crash_and_restart(&mut self) {
        // Dropping a Process kills it with SIGKILL and reaps it.
        drop(self.process.take());
        self.launch();
    }

    fn url(&self) -> String {
        self.url.read().unwrap().clone()
    }

    fn base(&self) -> String {
        let url = self.url();
        url[..url.find("/webhooks").unwrap()].to_owned()
    }

    fn stop(mut self) {
        let finished = self.process.take().unwrap().terminate();
        assert_eq!(finished.code, Some(0), "the gateway's exit: {finished:?}");
        assert!(finished.stderr.contains("stopped"), "{}", finished.stderr);
    }
}

/// The environment of a gateway: its inbox in `dir`, sending to `destination`.
fn gateway_env(dir: &std::path::Path, name: &str, destination: &str) -> Vec<(String, String)> {
    [
        ("CLINK_SERVE_LISTEN", "127.0.0.1:0".to_owned()),
        ("CLINK_WEBHOOK_SIGNING_KEY", KEY.to_owned()),
        (
            "CLINK_INBOX",
            format!("sqlite:{}", dir.join(format!("{name}.db")).display()),
        ),
        ("CLINK_DESTINATION", destination.to_owned()),
        ("CLINK_SETTLE_MS", "100".to_owned()),
        ("CLINK_LEASE_MS", "3000".to_owned()),
        ("CLINK_BACKOFF_MS", "100".to_owned()),
        ("CLINK_MAX_BACKOFF_MS", "1000".to_owned()),
        ("CLINK_DESTINATION_TIMEOUT_MS", "2000".to_owned()),
        ("CLINK_CONCURRENCY", "8".to_owned()),
        ("CLINK_LOG", "error".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Sets the gateway's lease in `env` to `ms`: one over PostgreSQL keeps
/// the store's timeout (5 s by default, at most half the lease) for a
/// forward's settle, which `gateway_env`'s 3 s lease and 2 s destination
/// timeout leave no room for.
fn with_lease(env: &mut Vec<(String, String)>, ms: &str) {
    env.retain(|(name, _)| name != "CLINK_LEASE_MS");
    env.push(("CLINK_LEASE_MS".into(), ms.into()));
}

/// A directory of its own for a test's inboxes, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(&format!("clink-gateway-{test}-")));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Kept when the test fails, to look into its inboxes.
        if std::thread::panicking() {
            eprintln!("kept {} for a look", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One event of the test: object `object`, `index` in its `created` order.
#[derive(Clone)]
struct TestEvent {
    id: String,
    object: usize,
    index: usize,
    body: Bytes,
}

fn events(objects: usize, per_object: usize, tag: &str) -> Vec<TestEvent> {
    let start = Timestamp::now().as_millis() - 86_400_000;
    let mut events = Vec::new();
    for object in 0..objects {
        for index in 0..per_object {
            let id = format!("evt_{tag}_o{object}_k{index}");
            let event_type = if index == 0 {
                "order.created"
            } else {
                "order.succeeded"
            };
            let created = start + i64::try_from(index * 1000 + object).unwrap();
            let body = serde_json::json!({
                "id": id,
                "object": "event",
                "created": created,
                "type": event_type,
                "data": { "orderId": format!("ord_{tag}_{object}") },
            });
            events.push(TestEvent {
                id,
                object,
                index,
                body: Bytes::from(body.to_string()),
            });
        }
    }
    events
}

/// POSTs `event`, signed now, to the gateway's current URL until it answers 2xx.
async fn deliver(client: &HttpClient, url: &RwLock<String>, event: &TestEvent) {
    let deadline = Instant::now() + PHASE;
    loop {
        let url = url.read().unwrap().clone();
        let timestamp = Timestamp::now().as_millis().to_string();
        let request = Request::post(url)
            .header("x-clink-timestamp", &timestamp)
            .header("x-clink-signature", sign(KEY, &timestamp, &event.body))
            .body(Full::new(event.body.clone()))
            .unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(30), client.request(request)).await;
        if let Ok(Ok(response)) = answered {
            let ok = response.status().is_success();
            let _ = response.into_body().collect().await;
            if ok {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{} never acknowledged", event.id);
        // The gateway is down (killed, restarting) or busy: try again shortly.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Checks that each object's events came in `created` order in `seen`
/// (ids in arrival order, repeats allowed): an older event never after a newer one.
fn assert_in_order(destination: &str, seen: &[String], by_id: &HashMap<String, (usize, usize)>) {
    let mut last: HashMap<usize, usize> = HashMap::new();
    for id in seen {
        let (object, index) = by_id[id];
        if let Some(&before) = last.get(&object) {
            if index < before {
                let of_object: Vec<(usize, &String)> = seen
                    .iter()
                    .enumerate()
                    .filter(|(_, id)| by_id[*id].0 == object)
                    .collect();
                panic!(
                    "{destination}: object {object} got event {index} after event {before}; \
                     its events as they came (position, id): {of_object:?}"
                );
            }
        }
        last.insert(object, index);
    }
}

/// The HTTP app: verifies each forwarded delivery with the key, marks each
/// event id handled once, and notes every arrival in order.
#[derive(Default)]
struct App {
    arrivals: Mutex<Vec<String>>,
    handled: Mutex<HashSet<String>>,
    refused: AtomicUsize,
    /// Requests that reached the app, answered or not.
    started: AtomicUsize,
    /// How long each answer takes.
    delay_ms: std::sync::atomic::AtomicU64,
}

async fn start_app(app: Arc<App>) -> SocketAddr {
    // Each forward is signed when it is sent, with the key that verified
    // it: the default tolerance.
    start_app_verifying(app, KEY, Duration::from_secs(300)).await
}

/// [`start_app`] verifying with `key` and `tolerance`.
async fn start_app_verifying(app: Arc<App>, key: &str, tolerance: Duration) -> SocketAddr {
    let verifier = Arc::new(Verifier::new(key).unwrap().tolerance(tolerance));
    loopback::serve(tower::service_fn(move |request: Request<Incoming>| {
        let (app, verifier) = (Arc::clone(&app), Arc::clone(&verifier));
        async move {
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let (timestamp, signature, event_id) = (
                header("x-clink-timestamp"),
                header("x-clink-signature"),
                header("x-clink-event-id"),
            );
            let body = request.into_body().collect().await.unwrap().to_bytes();
            app.started.fetch_add(1, Ordering::SeqCst);
            let delay = app.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let verified = verifier.verify(&timestamp, &signature, &body);
            let status = if verified.is_ok() {
                app.arrivals.lock().unwrap().push(event_id.clone());
                app.handled.lock().unwrap().insert(event_id);
                StatusCode::OK
            } else {
                app.refused.fetch_add(1, Ordering::SeqCst);
                StatusCode::UNAUTHORIZED
            };
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    }))
    .await
}

/// What a JetStream stream holds: each message's Nats-Msg-Id, in order.
async fn nats_ids(jetstream: &async_nats::jetstream::Context, stream: &str) -> Vec<String> {
    let mut stream = jetstream.get_stream(stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut ids = Vec::new();
    for sequence in 1..=last {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str()
            .to_owned();
        ids.push(id.trim_start_matches(':').to_owned());
    }
    ids
}

async fn nats_count(jetstream: &async_nats::jetstream::Context, stream: &str) -> u64 {
    match jetstream.get_stream(stream).await {
        Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
        Err(_) => 0,
    }
}

/// What a Redis stream holds: each entry's event id, in order.
async fn redis_ids(redis: &mut impl redis::aio::ConnectionLike, stream: &str) -> Vec<String> {
    // XRANGE answers [id, [field, value, ...]] per entry.
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(redis)
        .await
        .unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| {
            let at = fields.iter().position(|f| f == "event_id").unwrap();
            fields[at + 1].clone()
        })
        .collect()
}

async fn redis_count(redis: &mut redis::aio::MultiplexedConnection, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(redis)
        .await
        .unwrap()
}

async fn health(client: &HttpClient, base: &str) -> (u16, serde_json::Value) {
    let request = Request::get(format!("{base}/health"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

/// The attempts in flight in the gateway's SQLite inbox now: each event a
/// worker holds under a live lease, with the lease's token. (A row a killed
/// gateway held stays `running` until it is taken again, so the inbox's
/// counts cannot say this; the table can.)
fn attempts_in_flight(env: &[(String, String)]) -> HashSet<(i64, String)> {
    let path = env
        .iter()
        .find_map(|(name, value)| {
            (name == "CLINK_INBOX").then(|| value["sqlite:".len()..].to_owned())
        })
        .unwrap();
    let connection = rusqlite::Connection::open(path).unwrap();
    connection.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut statement = connection
        .prepare(
            "SELECT seq, token FROM clink_webhook_inbox \
             WHERE status = 'running' AND lease_until_ms > ?1 AND token IS NOT NULL",
        )
        .unwrap();
    statement
        .query_map([Timestamp::now().as_millis()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Waits until every attempt in flight now has ended: those begun later
/// see every event the inbox holds now.
async fn attempts_now_ended(env: &[(String, String)]) {
    let before = attempts_in_flight(env);
    until("the attempts in flight ended", PHASE, async || {
        attempts_in_flight(env).is_disjoint(&before)
    })
    .await;
}

/// Whether the gateway's inbox has nothing left to forward.
async fn drained(client: &HttpClient, base: &str) -> bool {
    let (_, health) = health(client, base).await;
    let events = &health["events"];
    ["pending", "retrying", "running"]
        .iter()
        .all(|status| events[status] == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_events_reach_nats_redis_and_http_in_order_through_two_crashes() {
    let started = Instant::now();
    let seed = seed();
    let _servers = servers::shared().await;
    let dir = TempDir::new("crash");
    let tag = unique("c");
    let events = events(50, 20, &tag);
    let by_id: HashMap<String, (usize, usize)> = events
        .iter()
        .map(|e| (e.id.clone(), (e.object, e.index)))
        .collect();

    // The three destinations, each behind a gate closed while deliveries
    // arrive: the inbox then holds every event of an object before the
    // destination takes any, so their order there is the inbox's order
    // whatever the machine's speed. The second crash comes while they
    // publish.
    let nats_url = env_url("NATS_URL");
    let redis_url = env_url("REDIS_URL");
    let app = Arc::new(App::default());
    let app_addr = start_app(Arc::clone(&app)).await;
    let gates = [
        Gate::new(target(&nats_url)).await,
        Gate::new(target(&redis_url)).await,
        Gate::new(app_addr).await,
    ];
    for gate in &gates {
        gate.set(false);
    }
    let stream = format!("T{tag}");
    let subject_prefix = format!("t{tag}");
    let redis_stream = format!("clinktest:{tag}:");
    let mut nats_env = gateway_env(&dir.0, "nats", &gates[0].url("nats", ""));
    nats_env.push(("CLINK_NATS_STREAM".into(), stream.clone()));
    nats_env.push((
        "CLINK_NATS_SUBJECT".into(),
        format!("{subject_prefix}.{{account}}.{{type}}"),
    ));
    let mut redis_env = gateway_env(&dir.0, "redis", &gates[1].url("redis", "/"));
    redis_env.push((
        "CLINK_REDIS_STREAM".into(),
        format!("clinktest:{tag}:{{account}}"),
    ));
    let http_env = gateway_env(&dir.0, "http", &gates[2].url("http", "/hooks"));
    let gateways: Vec<Arc<Mutex<Gateway>>> = tokio::task::spawn_blocking(move || {
        [nats_env, redis_env, http_env]
            .into_iter()
            .map(|env| Arc::new(Mutex::new(Gateway::start(env))))
            .collect()
    })
    .await
    .unwrap();
    let urls: Vec<Arc<RwLock<String>>> = gateways
        .iter()
        .map(|g| Arc::clone(&g.lock().unwrap().url))
        .collect();

    // Every event to every gateway, in shuffled order, by 12 senders that
    // retry until 2xx; each gateway is SIGKILLed once 40 % are acknowledged.
    let mut deliveries: Vec<(usize, TestEvent)> = (0..3)
        .flat_map(|g| events.iter().cloned().map(move |e| (g, e)))
        .collect();
    Rng(seed).shuffle(&mut deliveries);
    let queue = Arc::new(Mutex::new(deliveries));
    let acknowledged: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let mut senders = Vec::new();
    for _ in 0..12 {
        let (queue, urls, acknowledged) =
            (Arc::clone(&queue), urls.clone(), Arc::clone(&acknowledged));
        senders.push(tokio::spawn(async move {
            let client = client();
            loop {
                let next = queue.lock().unwrap().pop();
                let Some((g, event)) = next else { return };
                deliver(&client, &urls[g], &event).await;
                acknowledged[g].fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let mut crashes = Vec::new();
    for (g, gateway) in gateways.iter().enumerate() {
        let (gateway, acknowledged) = (Arc::clone(gateway), Arc::clone(&acknowledged));
        crashes.push(tokio::spawn(async move {
            let deadline = Instant::now() + PHASE;
            while acknowledged[g].load(Ordering::SeqCst) < 400 {
                assert!(
                    Instant::now() < deadline,
                    "400 deliveries not acknowledged in time"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::task::spawn_blocking(move || gateway.lock().unwrap().crash_and_restart())
                .await
                .unwrap();
        }));
    }
    for task in senders.into_iter().chain(crashes) {
        task.await.unwrap();
    }
    let received = started.elapsed();

    // The destinations come up once every attempt begun before the last
    // delivery has ended (one still in flight could get through and go
    // before an older event of its object that arrived after it began:
    // later than the reorder window promises anything about). Then each
    // gateway is killed again mid-publish.
    for gateway in &gateways {
        let env = gateway.lock().unwrap().env.clone();
        attempts_now_ended(&env).await;
    }
    let client = client();
    for gate in &gates {
        gate.set(true);
    }
    let nats = async_nats::connect(&nats_url).await.unwrap();
    let jetstream = async_nats::jetstream::new(nats);
    let redis_client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut redis = crate::support::stores::redis_connection(&redis_client)
        .await
        .unwrap();
    let counts = {
        let (jetstream, redis, app) = (jetstream.clone(), redis.clone(), Arc::clone(&app));
        let (stream, redis_stream) = (stream.clone(), redis_stream.clone());
        move |g: usize| {
            let (jetstream, mut redis, app) = (jetstream.clone(), redis.clone(), Arc::clone(&app));
            let (stream, redis_stream) = (stream.clone(), redis_stream.clone());
            async move {
                match g {
                    0 => nats_count(&jetstream, &stream).await,
                    1 => redis_count(&mut redis, &redis_stream).await,
                    _ => app.handled.lock().unwrap().len() as u64,
                }
            }
        }
    };
    for (g, gateway) in gateways.iter().enumerate() {
        let counts = counts.clone();
        until("200 events forwarded", PHASE, async || {
            counts(g).await >= 200
        })
        .await;
        let gateway = Arc::clone(gateway);
        tokio::task::spawn_blocking(move || gateway.lock().unwrap().crash_and_restart())
            .await
            .unwrap();
    }
    for (g, gateway) in gateways.iter().enumerate() {
        let base = gateway.lock().unwrap().base();
        let counts = counts.clone();
        until("every event forwarded", PHASE, async || {
            counts(g).await >= 1000 && drained(&client, &base).await
        })
        .await;
    }

    // NATS and Redis: every event exactly once, by count and by id.
    let expected: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    let nats_ids = nats_ids(&jetstream, &stream).await;
    let redis_ids = redis_ids(&mut redis, &redis_stream).await;
    for (name, ids) in [("NATS", &nats_ids), ("Redis", &redis_ids)] {
        assert_eq!(ids.len(), 1000, "{name}: {} messages, not 1000", ids.len());
        let distinct: HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(distinct, expected, "{name}: not every event once");
        assert_in_order(name, ids, &by_id);
    }
    // The HTTP app: every event at least once, each handled once, in order.
    let arrivals = app.arrivals.lock().unwrap().clone();
    assert_eq!(
        *app.handled.lock().unwrap(),
        expected,
        "HTTP: not every event handled"
    );
    assert_eq!(
        app.refused.load(Ordering::SeqCst),
        0,
        "HTTP: a forwarded signature did not verify"
    );
    assert_in_order("HTTP", &arrivals, &by_id);

    let _: redis::RedisResult<()> = redis::cmd("DEL")
        .arg(&redis_stream)
        .query_async(&mut redis)
        .await;
    let _ = jetstream.delete_stream(&stream).await;
    for gateway in gateways {
        let gateway = Arc::into_inner(gateway).unwrap().into_inner().unwrap();
        tokio::task::spawn_blocking(move || gateway.stop())
            .await
            .unwrap();
    }
    eprintln!(
        "gateway crash test: seed {seed}; 3,000 deliveries acknowledged in {:.1} s, all \
         forwarded in {:.1} s; HTTP app got {} deliveries for 1,000 events",
        received.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        arrivals.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_down_for_30_s_loses_nothing_and_health_names_it() {
    let seed = seed();
    let dir = TempDir::new("outage");
    let tag = unique("o");
    let nats_url = env_url("NATS_URL");
    let gate = Gate::new(target(&nats_url)).await;
    let stream = format!("T{tag}");
    let mut env = gateway_env(&dir.0, "nats", &gate.url("nats", ""));
    env.push(("CLINK_NATS_STREAM".into(), stream.clone()));
    env.push((
        "CLINK_NATS_SUBJECT".into(),
        format!("t{tag}.{{account}}.{{type}}"),
    ));
    let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let (url, base) = (Arc::clone(&gateway.url), gateway.base());
    let client = client();
    let jetstream = async_nats::jetstream::new(async_nats::connect(&nats_url).await.unwrap());
    let all = events(10, 12, &tag);
    let by_id: HashMap<String, (usize, usize)> = all
        .iter()
        .map(|e| (e.id.clone(), (e.object, e.index)))
        .collect();
    // Before: the first two events of each object go through.
    let (before, mut during): (Vec<_>, Vec<_>) = all.iter().cloned().partition(|e| e.index < 2);
    for event in &before {
        deliver(&client, &url, event).await;
    }
    until("the first events forwarded", PHASE, async || {
        nats_count(&jetstream, &stream).await == 20
    })
    .await;
    assert_eq!(health(&client, &base).await.0, 200);

    // Down for 30 s: deliveries are still acknowledged, and wait.
    gate.set(false);
    let down = Instant::now();
    Rng(seed).shuffle(&mut during);
    for event in &during {
        deliver(&client, &url, event).await;
    }
    until(
        "/health naming the failing destination",
        PHASE,
        async || {
            let (status, body) = health(&client, &base).await;
            status == 503
                && body["destination"]["status"] == "failing"
                && body["destination"]["name"] == gate.url("nats", "").as_str()
                && body["inbox"]["status"] == "ok"
        },
    )
    .await;
    // The outage itself: 30 s from when the destination went down.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down.elapsed())).await;
    assert_eq!(
        nats_count(&jetstream, &stream).await,
        20,
        "nothing passes while down"
    );
    let (status, body) = health(&client, &base).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["events"]["retrying"].as_u64().unwrap() + body["events"]["pending"].as_u64().unwrap()
            > 0,
        "{body}"
    );

    // Back: everything arrives, once, in order, and /health is ok again.
    attempts_now_ended(&gateway.env).await;
    gate.set(true);
    let back = Instant::now();
    until(
        "every event forwarded after the outage",
        PHASE,
        async || nats_count(&jetstream, &stream).await >= 120 && drained(&client, &base).await,
    )
    .await;
    let caught_up = back.elapsed();
    until("/health ok again", PHASE, async || {
        health(&client, &base).await.0 == 200
    })
    .await;
    let ids = nats_ids(&jetstream, &stream).await;
    assert_eq!(ids.len(), 120);
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 120);
    assert_in_order("NATS", &ids, &by_id);
    let _ = jetstream.delete_stream(&stream).await;
    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
    eprintln!(
        "gateway outage test: seed {seed}; caught up {:.1} s after the destination came back",
        caught_up.as_secs_f64()
    );
}

#[test]
fn check_validates_a_file_names_a_wrong_field_and_masks_secrets() {
    let dir = TempDir::new("check");
    let file = dir.0.join("gateway.toml");
    let run = |env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_clink-webhook"));
        command.args(["serve", "--check"]).arg(&file);
        for (name, value) in env {
            command.env(name, value);
        }
        for name in [
            "CLINK_WEBHOOK_SIGNING_KEY",
            "DATABASE_URL",
            "CLINK_DESTINATION",
            "CLINK_INBOX",
        ] {
            if !env.iter().any(|(n, _)| n == &name) {
                command.env_remove(name);
            }
        }
        Process::start(&mut command).finish()
    };
    std::fs::write(
        &file,
        "destination = \"redis://:hunter2@127.0.0.1:6379/\"\n\
         inbox = \"postgres\"\n\
         database_url = \"postgres://app:s3cret@127.0.0.1/db\"\n\
         settle_ms = 250\n\
         [[signing_keys]]\nsecret = \"whsec_file_key\"\nname = \"2026-01\"\n",
    )
    .unwrap();
    let ok = run(&[]);
    assert_eq!(ok.code, Some(0), "{ok:?}");
    for hidden in ["hunter2", "s3cret", "whsec_file_key"] {
        assert!(
            !ok.stdout.contains(hidden),
            "{hidden} printed:\n{}",
            ok.stdout
        );
    }
    assert!(
        ok.stdout.contains("settle_ms = 250 (file)"),
        "{}",
        ok.stdout
    );
    assert!(
        ok.stdout
            .contains("destination = redis://:***@127.0.0.1:6379/"),
        "{}",
        ok.stdout
    );
    assert!(ok.stdout.contains("configuration ok"), "{}", ok.stdout);

    // The environment wins over the file, and a wrong value names its field.
    let wrong = run(&[("CLINK_SETTLE_MS", "soon")]);
    assert_eq!(wrong.code, Some(2), "{wrong:?}");
    assert!(
        wrong
            .stderr
            .contains("settle_ms (from the environment variable CLINK_SETTLE_MS)"),
        "{}",
        wrong.stderr
    );
    std::fs::write(&file, "destinaton = \"nats://127.0.0.1:4222\"\n").unwrap();
    let typo = run(&[]);
    assert_eq!(typo.code, Some(2));
    assert!(
        typo.stderr.contains("destinaton") && typo.stderr.contains("unknown setting"),
        "{}",
        typo.stderr
    );
}

/// A worker that died holding an older event of an object (its lease ran
/// out) must not let a newer event of that object go first: the gateway
/// would publish them out of order after a crash.
async fn older_event_of_a_dead_worker_goes_first(inbox: Arc<dyn clink_webhooks::store::Inbox>) {
    use clink_webhooks::store::NewEvent;
    let tag = unique("d");
    let now = Timestamp::now();
    let event = |id: &str, created: i64| {
        NewEvent::new(
            None,
            format!("{id}_{tag}"),
            "order.succeeded".to_owned(),
            Some(Timestamp::from_millis(created)),
            Some(format!("order:ord_{tag}")),
            now,
            now,
            Bytes::from_static(b"{}"),
        )
    };
    // The newer event arrives first, so it has the lower number.
    inbox.insert(&event("newer", 2_000)).await.unwrap();
    inbox.insert(&event("older", 1_000)).await.unwrap();
    let lease = Duration::from_millis(20);
    let first = inbox.claim(lease, Duration::ZERO).await.unwrap().unwrap();
    assert!(first.entry.event.event_id.starts_with("older"));
    // Its worker dies: nothing settles it. Once the lease has ended, the
    // next claim takes it again, never the newer one.
    // The claims from here on hold a lease no slow machine outlives
    // between claim and completion.
    let held = Duration::from_secs(600);
    let deadline = Instant::now() + PHASE;
    let again = loop {
        if let Some(claim) = inbox.claim(held, Duration::ZERO).await.unwrap() {
            break claim;
        }
        assert!(Instant::now() < deadline, "the lease never ended");
        tokio::task::yield_now().await;
    };
    assert!(
        again.entry.event.event_id.starts_with("older"),
        "{} was claimed while an older event of its object was unfinished",
        again.entry.event.event_id
    );
    assert_eq!(inbox.complete(&again).await.unwrap(), Settle::Applied);
    let last = inbox.claim(held, Duration::ZERO).await.unwrap().unwrap();
    assert!(
        last.entry.event.event_id.starts_with("newer"),
        "{} was claimed after the older event was done",
        last.entry.event.event_id
    );
    assert_eq!(inbox.complete(&last).await.unwrap(), Settle::Applied);
}

#[tokio::test]
async fn an_older_event_whose_worker_died_still_goes_first() {
    let dir = TempDir::new("claim");
    older_event_of_a_dead_worker_goes_first(Arc::new(clink_webhooks::store::MemoryInbox::new()))
        .await;
    let sqlite = clink_webhooks::store::SqliteInbox::open(dir.0.join("claim.db")).unwrap();
    older_event_of_a_dead_worker_goes_first(Arc::new(sqlite)).await;
    let _servers = servers::shared().await;
    let url = env_url("DATABASE_URL");
    let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
        url.parse::<tokio_postgres::Config>().unwrap(),
        tokio_postgres::NoTls,
    ))
    .max_size(2)
    .runtime(deadpool_postgres::Runtime::Tokio1)
    .build()
    .unwrap();
    let table = format!("gw_claim_{}", unique("t").to_lowercase());
    let postgres = clink_webhooks::store::PostgresInbox::new(pool)
        .with_table(&table[..table.len().min(48)])
        .unwrap();
    postgres.migrate().await.unwrap();
    older_event_of_a_dead_worker_goes_first(Arc::new(postgres)).await;
}

/// POSTs `body` signed with `key` to `url`; the status.
async fn post_signed(client: &HttpClient, url: &str, key: &str, body: &str) -> u16 {
    let timestamp = Timestamp::now().as_millis().to_string();
    let request = Request::post(url)
        .header("x-clink-timestamp", &timestamp)
        .header("x-clink-signature", sign(key, &timestamp, body.as_bytes()))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

#[tokio::test]
async fn accounts_come_from_a_file_re_read_on_sighup() {
    let dir = TempDir::new("accounts");
    let file = dir.0.join("accounts.toml");
    std::fs::write(&file, "[acct_a]\nsigning_key = \"whsec_account_a_key\"\n").unwrap();
    let mut env = gateway_env(&dir.0, "accounts", "http://127.0.0.1:9/unused");
    env.retain(|(name, _)| name != "CLINK_WEBHOOK_SIGNING_KEY");
    env.push(("CLINK_ACCOUNTS_FILE".into(), file.display().to_string()));
    let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let url = gateway.url();
    assert!(url.ends_with("/webhooks/clink/{account}"), "{url}");
    let at = |account: &str| url.replace("{account}", account);
    let client = client();
    let body = |id: &str| format!(r#"{{"id":"{id}","type":"order.succeeded","data":{{}}}}"#);
    assert_eq!(
        post_signed(
            &client,
            &at("acct_a"),
            "whsec_account_a_key",
            &body("evt_a")
        )
        .await,
        200
    );
    assert_eq!(
        post_signed(
            &client,
            &at("acct_b"),
            "whsec_account_b_key",
            &body("evt_b")
        )
        .await,
        404
    );
    assert_eq!(
        post_signed(
            &client,
            &at("acct_a"),
            "whsec_account_b_key",
            &body("evt_x")
        )
        .await,
        401
    );

    // A broken file on SIGHUP changes nothing; a good one adds acct_b.
    let hangup = |pid: u32| {
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let pid = gateway.process.as_ref().unwrap().id();
    std::fs::write(&file, "[acct_a\n").unwrap();
    hangup(pid);
    let line = Process::line_starting(&gateway.process.as_ref().unwrap().stderr, "SIGHUP:");
    assert!(
        line.contains("unchanged") && line.contains("not valid TOML"),
        "{line}"
    );
    assert_eq!(
        post_signed(
            &client,
            &at("acct_a"),
            "whsec_account_a_key",
            &body("evt_a2")
        )
        .await,
        200
    );
    std::fs::write(
        &file,
        "[acct_a]\nsigning_key = \"whsec_account_a_key\"\n[acct_b]\nsigning_key = \"whsec_account_b_key\"\n",
    )
    .unwrap();
    hangup(pid);
    let line = Process::line_starting(&gateway.process.as_ref().unwrap().stderr, "SIGHUP:");
    assert!(line.contains("2 accounts"), "{line}");
    assert_eq!(
        post_signed(
            &client,
            &at("acct_b"),
            "whsec_account_b_key",
            &body("evt_b")
        )
        .await,
        200
    );
    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
}

/// Events per second from Clink's side (signed deliveries POSTed to the
/// gateway, SQLite inbox with `synchronous = FULL`) until the destination
/// holds them all, against the destination's own rate in the same run (the
/// same number of messages published straight to it by 8 concurrent
/// publishers, as many as the gateway's workers, each waiting for its
/// acknowledgement). For BENCHMARKS.md; run it in release:
///
/// `scripts/with-services cargo test --release --all-features --test suite gateway::throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement for BENCHMARKS.md, not a test"]
async fn throughput() {
    const EVENTS: usize = 2000;
    let _servers = servers::shared().await;
    let dir = TempDir::new("throughput");
    let nats_url = env_url("NATS_URL");
    let redis_url = env_url("REDIS_URL");
    let jetstream = async_nats::jetstream::new(async_nats::connect(&nats_url).await.unwrap());
    let redis_client = redis::Client::open(redis_url.as_str()).unwrap();
    let redis = crate::support::stores::redis_connection(&redis_client)
        .await
        .unwrap();
    let app = Arc::new(App::default());
    let app_addr = start_app(Arc::clone(&app)).await;
    println!(
        "| destination | via the gateway | straight to it | ratio | deliveries acknowledged |"
    );
    println!("|---|---:|---:|---:|---:|");
    for destination in ["http", "nats", "redis"] {
        let tag = unique("b");
        let events = events(EVENTS / 4, 4, &tag);
        let (stream, redis_stream) = (format!("T{tag}"), format!("clinkbench:{tag}:"));
        let url = match destination {
            "http" => format!("http://{app_addr}/hooks"),
            "nats" => nats_url.clone(),
            _ => redis_url.clone(),
        };
        let mut env = gateway_env(&dir.0, &tag, &url);
        env.retain(|(name, _)| name != "CLINK_SETTLE_MS");
        env.push(("CLINK_SETTLE_MS".into(), "0".into()));
        env.push(("CLINK_NATS_STREAM".into(), stream.clone()));
        env.push((
            "CLINK_NATS_SUBJECT".into(),
            format!("t{tag}.{{account}}.{{type}}"),
        ));
        env.push((
            "CLINK_REDIS_STREAM".into(),
            format!("clinkbench:{tag}:{{account}}"),
        ));
        let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
            .await
            .unwrap();
        let handled_before = app.handled.lock().unwrap().len();
        let count = {
            let (jetstream, redis, app, stream, redis_stream) = (
                jetstream.clone(),
                redis.clone(),
                Arc::clone(&app),
                stream.clone(),
                redis_stream.clone(),
            );
            move || {
                let (jetstream, mut redis, app, stream, redis_stream) = (
                    jetstream.clone(),
                    redis.clone(),
                    Arc::clone(&app),
                    stream.clone(),
                    redis_stream.clone(),
                );
                async move {
                    match destination {
                        "http" => (app.handled.lock().unwrap().len() - handled_before) as u64,
                        "nats" => nats_count(&jetstream, &stream).await,
                        _ => redis_count(&mut redis, &redis_stream).await,
                    }
                }
            }
        };
        let started = Instant::now();
        let queue = Arc::new(Mutex::new(events.clone()));
        let mut senders = Vec::new();
        for _ in 0..16 {
            let (queue, url) = (Arc::clone(&queue), Arc::clone(&gateway.url));
            senders.push(tokio::spawn(async move {
                let client = client();
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some(event) = next else { return };
                    deliver(&client, &url, &event).await;
                }
            }));
        }
        for sender in senders {
            sender.await.unwrap();
        }
        let acknowledged = started.elapsed();
        let count2 = count.clone();
        until("every event forwarded", PHASE, async || {
            count2().await >= EVENTS as u64
        })
        .await;
        let via_gateway = started.elapsed();
        tokio::task::spawn_blocking(move || gateway.stop())
            .await
            .unwrap();

        // The destination's own rate: the same messages, 8 publishers.
        let direct_tag = unique("p");
        let direct_stream = format!("T{direct_tag}");
        if destination == "nats" {
            jetstream
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: direct_stream.clone(),
                    subjects: vec![format!("t{direct_tag}.>")],
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let queue = Arc::new(Mutex::new(events.clone()));
        let started = Instant::now();
        let mut publishers = Vec::new();
        for _ in 0..8 {
            let (queue, jetstream, mut redis, direct_tag, app_url) = (
                Arc::clone(&queue),
                jetstream.clone(),
                redis.clone(),
                direct_tag.clone(),
                format!("http://{app_addr}/direct"),
            );
            publishers.push(tokio::spawn(async move {
                let client = client();
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some(event) = next else { return };
                    match destination {
                        "http" => {
                            let timestamp = Timestamp::now().as_millis().to_string();
                            let request = Request::post(&app_url)
                                .header("x-clink-timestamp", &timestamp)
                                .header("x-clink-signature", sign(KEY, &timestamp, &event.body))
                                .header("x-clink-event-id", format!("direct_{}", event.id))
                                .body(Full::new(event.body.clone()))
                                .unwrap();
                            let response = client.request(request).await.unwrap();
                            assert!(response.status().is_success());
                            let _ = response.into_body().collect().await;
                        }
                        "nats" => {
                            let mut headers = async_nats::HeaderMap::new();
                            headers.insert("Nats-Msg-Id", event.id.as_str());
                            jetstream
                                .publish_with_headers(
                                    format!("t{direct_tag}.order.succeeded"),
                                    headers,
                                    event.body.clone(),
                                )
                                .await
                                .unwrap()
                                .await
                                .unwrap();
                        }
                        _ => {
                            let _: String = redis::cmd("XADD")
                                .arg(format!("clinkbench:{direct_tag}:"))
                                .arg("*")
                                .arg("event_id")
                                .arg(&event.id)
                                .arg("body")
                                .arg(&event.body[..])
                                .query_async(&mut redis)
                                .await
                                .unwrap();
                        }
                    }
                }
            }));
        }
        for publisher in publishers {
            publisher.await.unwrap();
        }
        let direct = started.elapsed();
        let rate = |elapsed: Duration| EVENTS as f64 / elapsed.as_secs_f64();
        println!(
            "| {destination} | {:.0} events/s | {:.0} events/s | {:.3} | {:.0} deliveries/s |",
            rate(via_gateway),
            rate(direct),
            rate(via_gateway) / rate(direct),
            rate(acknowledged)
        );
        let _ = jetstream.delete_stream(&stream).await;
        let _ = jetstream.delete_stream(&direct_stream).await;
        let mut redis = redis.clone();
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(&redis_stream)
            .arg(format!("clinkbench:{direct_tag}:"))
            .query_async(&mut redis)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_publishes_in_flight_finish() {
    let dir = TempDir::new("drain");
    let app = Arc::new(App::default());
    // A slow app: each answer takes 1.5 s, so publishes are in flight
    // when the gateway is told to stop.
    app.delay_ms.store(1500, Ordering::SeqCst);
    let app_addr = start_app(Arc::clone(&app)).await;
    let mut env = gateway_env(&dir.0, "drain", &format!("http://{app_addr}/hooks"));
    env.retain(|(name, _)| name != "CLINK_SETTLE_MS");
    env.push(("CLINK_SETTLE_MS".into(), "0".into()));
    let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let client = client();
    let tag = unique("s");
    // Eight objects, one event each: eight publishes at once.
    let events = events(8, 1, &tag);
    for event in &events {
        deliver(&client, &gateway.url, event).await;
    }
    until("eight publishes in flight", PHASE, async || {
        app.started.load(Ordering::SeqCst) == 8
    })
    .await;
    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
    // Stopped after they finished: each event reached the app once and
    // the inbox holds it done; nothing is left to publish again.
    assert_eq!(app.arrivals.lock().unwrap().len(), 8);
    let inbox = clink_webhooks::store::SqliteInbox::open(dir.0.join("drain.db")).unwrap();
    use clink_webhooks::store::Inbox as _;
    let stats = inbox.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.retrying, stats.running, stats.dead),
        (0, 0, 0, 0),
        "{stats:?}"
    );
}

/// A delivery to `gateway` whose body never ends, once the gateway counts
/// it in progress: it holds the HTTP drain of a shutdown to its end.
async fn delivery_in_progress(gateway: &Gateway, client: &HttpClient) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let address = target(&gateway.url());
    let mut slow = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /webhooks/clink HTTP/1.1\r\nhost: {address}\r\ncontent-length: 1000\r\n\
         x-clink-timestamp: {}\r\nx-clink-signature: {}\r\n\r\nhalf",
        Timestamp::now().as_millis(),
        "0".repeat(64)
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let metrics = format!("{}/metrics", gateway.base());
    until("the delivery in progress", PHASE, async || {
        let request = Request::get(&metrics)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let Ok(response) = client.request(request).await else {
            return false;
        };
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|line| line.starts_with("clink_webhook_deliveries_in_flight"))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
            >= 1.0
    })
    .await;
    slow
}

/// A gateway in `dir` (inbox `name`) relaying to the app at `app_addr`,
/// stopping within `shutdown`, with leases, bodies and publishes given far
/// longer than a test runs.
async fn gateway_for_shutdown(
    dir: &TempDir, name: &str, app_addr: SocketAddr, shutdown: Duration,
) -> Gateway {
    let mut env = gateway_env(&dir.0, name, &format!("http://{app_addr}/hooks"));
    let set = [
        ("CLINK_SETTLE_MS", "0".to_owned()),
        ("CLINK_LEASE_MS", "120000".to_owned()),
        ("CLINK_DESTINATION_TIMEOUT_MS", "100000".to_owned()),
        ("CLINK_BODY_TIMEOUT_MS", "120000".to_owned()),
        (
            "CLINK_SHUTDOWN_TIMEOUT_MS",
            shutdown.as_millis().to_string(),
        ),
    ];
    env.retain(|(name, _)| !set.iter().any(|(set, _)| set == name));
    env.extend(set.map(|(name, value)| (name.to_owned(), value)));
    tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap()
}

/// SIGTERM gives the deliveries in progress and the publishes in flight
/// one shutdown_timeout_ms between them, not one each: with a delivery
/// whose body never ends (it holds the HTTP drain to the end of the
/// timeout) and a publish the app never answers, the gateway exits before
/// twice the timeout (a generous bound: the rest is giving the event back),
/// and the event is back in the inbox, to be published again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_deliveries_and_publishes_one_deadline() {
    const SHUTDOWN: Duration = Duration::from_secs(5);
    let dir = TempDir::new("deadline");
    let app = Arc::new(App::default());
    // The app takes the publish and answers long after the test.
    app.delay_ms.store(3_600_000, Ordering::SeqCst);
    let app_addr = start_app(Arc::clone(&app)).await;
    let gateway = gateway_for_shutdown(&dir, "deadline", app_addr, SHUTDOWN).await;
    let client = client();
    deliver(&client, &gateway.url, &events(1, 1, &unique("t"))[0]).await;
    until("the publish in flight", PHASE, async || {
        app.started.load(Ordering::SeqCst) == 1
    })
    .await;
    let slow = delivery_in_progress(&gateway, &client).await;

    let started = Instant::now();
    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= SHUTDOWN,
        "the delivery in progress held it: {took:?}"
    );
    assert!(took < 2 * SHUTDOWN, "exit took {took:?}");
    drop(slow);
    let inbox = clink_webhooks::store::SqliteInbox::open(dir.0.join("deadline.db")).unwrap();
    use clink_webhooks::store::Inbox as _;
    let stats = inbox.stats().await.unwrap();
    assert_eq!(
        (stats.pending + stats.retrying, stats.running, stats.dead),
        (1, 0, 0),
        "{stats:?}"
    );
}

/// From SIGTERM on, the workers take no new event while the deliveries
/// in progress finish: with a delivery whose body never ends holding the
/// HTTP drain to the end of the timeout, the publish in flight finishes
/// (the app answers it in 5 s) and the next event of its object, ready
/// once it did, is not started, so no publish begins that the end of the
/// deadline would cut off and publish again after the restart. (The
/// workers went on through the drain, and took it.) The app's 5 s are the
/// time the test has to send the signal once the first publish began,
/// and the shutdown's 12 s leave it time to finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_the_workers_start_no_new_publish() {
    const SHUTDOWN: Duration = Duration::from_secs(12);
    let dir = TempDir::new("nonew");
    let app = Arc::new(App::default());
    app.delay_ms.store(5_000, Ordering::SeqCst);
    let app_addr = start_app(Arc::clone(&app)).await;
    let gateway = gateway_for_shutdown(&dir, "nonew", app_addr, SHUTDOWN).await;
    let client = client();
    // Two events of one object: the second waits for the first.
    for event in &events(1, 2, &unique("n")) {
        deliver(&client, &gateway.url, event).await;
    }
    until("the first publish in flight", PHASE, async || {
        app.started.load(Ordering::SeqCst) == 1
    })
    .await;
    let slow = delivery_in_progress(&gateway, &client).await;
    // Both events are in: the first is being published, the second waits.
    assert_eq!(app.started.load(Ordering::SeqCst), 1);

    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
    drop(slow);
    assert_eq!(
        app.started.load(Ordering::SeqCst),
        1,
        "a publish began after the signal"
    );
    let inbox = clink_webhooks::store::SqliteInbox::open(dir.0.join("nonew.db")).unwrap();
    use clink_webhooks::store::Inbox as _;
    let stats = inbox.stats().await.unwrap();
    assert_eq!(
        (stats.pending + stats.retrying, stats.running, stats.dead),
        (1, 0, 0),
        "the first done, the second waiting: {stats:?}"
    );
}

/// The gateway relays to a Redis Cluster (`redis+cluster://` with the
/// nodes of `REDIS_CLUSTER_URLS`): every event once, each object's events
/// in order, also when Clink delivers them all again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_a_redis_cluster_once_and_in_order() {
    let seed = seed();
    let _servers = servers::shared().await;
    let dir = TempDir::new("cluster");
    let tag = unique("k");
    let nodes: Vec<String> = env_url("REDIS_CLUSTER_URLS")
        .split(',')
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .collect();
    let hosts: Vec<&str> = nodes
        .iter()
        .map(|url| url.trim_start_matches("redis://").trim_end_matches('/'))
        .collect();
    let destination = format!("redis+cluster://{}", hosts.join(","));
    let stream = format!("clink-cluster-{tag}");
    let mut env = gateway_env(&dir.0, "cluster", &destination);
    env.push(("CLINK_REDIS_STREAM".into(), stream.clone()));
    let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let (url, base) = (Arc::clone(&gateway.url), gateway.base());
    let client = client();

    // Each object's events in order, the objects interleaved at random:
    // eight workers must still publish one object's events one at a time.
    let all = events(8, 4, &tag);
    let by_id: HashMap<String, (usize, usize)> = all
        .iter()
        .map(|e| (e.id.clone(), (e.object, e.index)))
        .collect();
    let mut order: Vec<usize> = (0..all.len()).map(|i| i % 8).collect();
    Rng(seed).shuffle(&mut order);
    let mut next = [0usize; 8];
    for object in order {
        let event = &all[object * 4 + next[object]];
        next[object] += 1;
        deliver(&client, &url, event).await;
    }
    let cluster = redis::cluster::ClusterClient::new(nodes).unwrap();
    let mut redis = cluster.get_async_connection().await.unwrap();
    until("every event in the cluster's stream", PHASE, async || {
        redis_ids(&mut redis, &stream).await.len() >= all.len()
    })
    .await;

    // Clink delivers them all again: acknowledged, not added again.
    for event in &all {
        deliver(&client, &url, event).await;
    }
    until("the redeliveries settled", PHASE, async || {
        drained(&client, &base).await
    })
    .await;
    let seen = redis_ids(&mut redis, &stream).await;
    assert_eq!(seen.len(), all.len(), "each event once: {seen:?}");
    let unique_ids: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique_ids.len(), all.len());
    assert_in_order("redis cluster", &seen, &by_id);
    let (status, body) = health(&client, &base).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["destination"]["name"]
            .as_str()
            .is_some_and(|name| name.starts_with("redis+cluster://")),
        "{body}"
    );
    gateway.stop();
}

/// `serve --check` with `env` alone (none of the gateway's variables from
/// the test's own environment): what it printed.
fn check_with(env: &[(&str, &str)]) -> crate::support::process::Finished {
    check_file_with(None, env)
}

/// A Redis URL the gateway can never write to stops its start, saying
/// why: a node of a Redis Cluster given as `redis://` (it holds only some
/// streams), and a password the server refuses. Before, the gateway
/// started, answered Clink 200, and retried each event until dead. A user
/// who may write but not run ROLE or INFO starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_the_gateway_cannot_write_to_stops_the_start() {
    let _servers = servers::shared().await;
    let dir = TempDir::new("redisstart");
    let node = env_url("REDIS_CLUSTER_URLS")
        .split(',')
        .map(|url| url.trim().to_owned())
        .find(|url| !url.is_empty())
        .expect("a cluster node");
    let redis = env_url("REDIS_URL");
    let with_password = redis.replacen("redis://", "redis://:not-the-password@", 1);
    for (case, destination, expected) in [
        (
            "a cluster node",
            node.as_str(),
            "a node of a Redis Cluster, which holds only some of the streams",
        ),
        (
            "a wrong password",
            with_password.as_str(),
            "the server refused the gateway",
        ),
    ] {
        let env = gateway_env(&dir.0, &unique("redisstart"), destination);
        let exited = tokio::task::spawn_blocking(move || serve_exit(&env))
            .await
            .unwrap();
        let finished = exited.unwrap_or_else(|| panic!("{case}: the gateway started"));
        assert_eq!(finished.code, Some(2), "{case}: {finished:?}");
        assert!(finished.stderr.contains(expected), "{case}: {finished:?}");
        assert!(
            !finished.stderr.contains("not-the-password"),
            "{case}: {finished:?}"
        );
    }

    // A user of least privilege, who may not run ROLE or INFO (Redis's
    // `@dangerous`), can write all the same: the gateway starts.
    let user = unique("gw");
    let mut admin =
        crate::support::stores::redis_connection(&redis::Client::open(redis.as_str()).unwrap())
            .await
            .unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">least-privilege")
        .arg("~*")
        .arg("+@all")
        .arg("-@dangerous")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let least = redis.replacen("redis://", &format!("redis://{user}:least-privilege@"), 1);
    let env = gateway_env(&dir.0, &unique("redisleast"), &least);
    let exited = tokio::task::spawn_blocking(move || serve_exit(&env))
        .await
        .unwrap();
    assert!(exited.is_none(), "a user without ROLE or INFO: {exited:?}");
    redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
}

/// `serve --check [FILE]` with `env` and no other `CLINK_` variable.
fn check_file_with(file: Option<&str>, env: &[(&str, &str)]) -> crate::support::process::Finished {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clink-webhook"));
    command.args(["serve", "--check"]);
    command.args(file);
    for (name, _) in std::env::vars() {
        if name.starts_with("CLINK_") || name == "DATABASE_URL" {
            command.env_remove(name);
        }
    }
    for (name, value) in env {
        command.env(name, value);
    }
    Process::start(&mut command).finish()
}

/// An inbox_retention_hours under 48 h, shorter than Clink's retries of a
/// delivery (about a day) with a margin, is warned about at start (here by
/// `serve --check`); 48 h and the default are not.
#[test]
fn a_retention_shorter_than_clinks_retries_is_warned_about() {
    for (retention, warned) in [
        (Some("1"), true),
        (Some("47"), true),
        (Some("48"), false),
        (None, false),
    ] {
        let mut env = vec![
            ("CLINK_WEBHOOK_SIGNING_KEY", KEY),
            ("CLINK_INBOX", "sqlite:/nonexistent/inbox.db"),
            ("CLINK_DESTINATION", "http://127.0.0.1:9/hook"),
        ];
        env.extend(retention.map(|hours| ("CLINK_INBOX_RETENTION_HOURS", hours)));
        let checked = check_with(&env);
        assert_eq!(checked.code, Some(0), "{retention:?}: {checked:?}");
        let warning = format!(
            "gateway: inbox_retention_hours ({} h) is shorter than 48 h",
            retention.unwrap_or("168")
        );
        assert_eq!(
            checked.stderr.contains(&warning),
            warned,
            "{retention:?}: {}",
            checked.stderr
        );
        assert_eq!(
            checked.stderr.contains("inbox_retention_hours"),
            warned,
            "{retention:?}: {}",
            checked.stderr
        );
    }
}

/// Every password in every URL is masked in what `serve --check` prints,
/// whatever it holds (`/`, `@`, `,`), in each URL of a list, and in the
/// error about a URL that is refused.
#[test]
fn check_never_prints_a_password_of_any_url() {
    let accepted = [
        (
            "DATABASE_URL",
            "postgres://app:ab/cd+ef@127.0.0.1:5432/clink",
            "postgres://app:***@127.0.0.1:5432/clink",
        ),
        (
            "CLINK_DESTINATION",
            "nats://app:ab/cd+ef@127.0.0.1:4222",
            "nats://app:***@127.0.0.1:4222",
        ),
        (
            "CLINK_DESTINATION",
            "nats://app:ab/cd+ef@127.0.0.1:4222,nats://app:ab/cd+ef@127.0.0.2:4222",
            "nats://app:***@127.0.0.1:4222,nats://app:***@127.0.0.2:4222",
        ),
        (
            "CLINK_DESTINATION",
            "nats://ab/cd+ef@127.0.0.1:4222",
            "nats://***@127.0.0.1:4222",
        ),
        (
            "CLINK_DESTINATION",
            "redis://:ab/cd+ef@127.0.0.1:6379/0",
            "redis://:***@127.0.0.1:6379/0",
        ),
        (
            "CLINK_DESTINATION",
            "redis+cluster://app:ab/cd,ef@127.0.0.1:7000,127.0.0.1:7001",
            "redis+cluster://app:***@127.0.0.1:7000,127.0.0.1:7001",
        ),
        (
            "CLINK_DESTINATION",
            "https://app:ab%2Fcd+ef@app.internal/hook?token=ab",
            "https://app:***@app.internal:443/…",
        ),
    ];
    for (name, value, shown) in accepted {
        let mut env = vec![
            ("CLINK_WEBHOOK_SIGNING_KEY", KEY),
            ("CLINK_INBOX", "postgres"),
            ("DATABASE_URL", "postgres://127.0.0.1/clink"),
            ("CLINK_DESTINATION", "http://127.0.0.1:9/hook"),
        ];
        env.retain(|(n, _)| *n != name);
        env.push((name, value));
        let ok = check_with(&env);
        assert_eq!(ok.code, Some(0), "{name}={shown}: {ok:?}");
        let printed = format!("{}{}", ok.stdout, ok.stderr);
        for secret in ["ab/cd", "cd+ef", "cd,ef", "ab%2Fcd", "token=ab"] {
            assert!(
                !printed.contains(secret),
                "{name}: {secret} printed:\n{printed}"
            );
        }
        assert!(
            printed.contains(shown),
            "{name}: {shown} not in:\n{printed}"
        );
    }

    for refused in [
        "redis://:ab/cd+ef@127.0.0.1:notaport/",
        "redis+cluster://app:ab/cd+ef@127.0.0.1:x,127.0.0.1:7001",
        "nats://app:ab/cd+ef@127.0.0.1:4222/path",
        "nats://app:ab/cd+ef@127.0.0.1:4222,nats://app:other@127.0.0.2:4222",
        "https://app:ab/cd+ef@app.internal/hook",
        "ftp://app:ab/cd+ef@host/",
    ] {
        let wrong = check_with(&[
            ("CLINK_WEBHOOK_SIGNING_KEY", KEY),
            ("CLINK_INBOX", "sqlite:/nonexistent/inbox.db"),
            ("CLINK_DESTINATION", refused),
        ]);
        assert_eq!(wrong.code, Some(2), "{wrong:?}");
        let printed = format!("{}{}", wrong.stdout, wrong.stderr);
        assert!(
            printed.contains("destination (from the environment variable CLINK_DESTINATION)"),
            "{printed}"
        );
        for secret in ["ab/cd", "cd+ef", "other"] {
            assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        }
    }
}

/// A wrong `inbox` is repeated in the error with its password masked, or
/// not at all when it is not a URL but may hold one.
#[test]
fn a_wrong_inbox_never_prints_its_password() {
    for (inbox, shown) in [
        (
            "postgres://app:hunter2@db/clink",
            "postgres://app:***@db/clink",
        ),
        ("host=db password=hunter2", "[redacted]"),
    ] {
        let wrong = check_with(&[
            ("CLINK_WEBHOOK_SIGNING_KEY", KEY),
            ("CLINK_INBOX", inbox),
            ("CLINK_DESTINATION", "http://127.0.0.1:9/hook"),
        ]);
        assert_eq!(wrong.code, Some(2), "{wrong:?}");
        let printed = format!("{}{}", wrong.stdout, wrong.stderr);
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(
            printed.contains(&format!(
                "inbox (from the environment variable CLINK_INBOX): {shown}: expected"
            )),
            "{printed}"
        );
    }
}

/// A variable that is not valid UTF-8 is refused by name: before, it was
/// skipped, and the file's value used instead.
#[test]
fn a_variable_that_is_not_utf8_is_refused_by_name() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = TempDir::new("notutf8");
    let file = dir.0.join("gateway.toml");
    std::fs::write(
        &file,
        "inbox = \"sqlite:/nonexistent/inbox.db\"\n\
         destination = \"http://127.0.0.1:9/hook\"\n\
         settle_ms = 250\n",
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_clink-webhook"));
    command.args(["serve", "--check"]).arg(&file);
    for (name, _) in std::env::vars() {
        if name.starts_with("CLINK_") || name == "DATABASE_URL" {
            command.env_remove(name);
        }
    }
    command.env("CLINK_WEBHOOK_SIGNING_KEY", KEY);
    command.env(
        "CLINK_SETTLE_MS",
        std::ffi::OsStr::from_bytes(b"1\xff00hunter2"),
    );
    let refused = Process::start(&mut command).finish();
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains(
            "configuration: settle_ms (from the environment variable CLINK_SETTLE_MS): not \
             valid UTF-8"
        ),
        "{refused:?}"
    );
    assert!(!refused.stderr.contains("hunter2"), "{refused:?}");
    assert!(!refused.stdout.contains("hunter2"), "{refused:?}");
}

/// A nats-server of the test's own that wants `user` and `password`, with
/// JetStream in `dir`: the process (killed when dropped) and its port.
fn nats_server_with_password(dir: &std::path::Path, user: &str, password: &str) -> (Process, u16) {
    let mut command = Command::new("nats-server");
    command.args(["-js", "-sd"]).arg(dir.join("nats-js")).args([
        "-a",
        "127.0.0.1",
        "-p",
        "-1",
        "--user",
        user,
        "--pass",
        password,
    ]);
    nats_server(&mut command)
}

/// A nats-server of the test's own started by `command`, once ready: the
/// process (killed when dropped) and its client port.
fn nats_server(command: &mut Command) -> (Process, u16) {
    let server = Process::start(command);
    let deadline = Instant::now() + PHASE;
    let mut port = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = server
            .stderr
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("nats-server did not get ready: {e}"));
        if let Some((_, at)) = line.split_once("Listening for client connections on ") {
            port = Some(
                at.trim()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse::<u16>()
                    .unwrap(),
            );
        }
        if line.contains("Server is ready") {
            return (server, port.expect("no client port before ready"));
        }
    }
}

/// The rights README lists for a NATS user are the ones the gateway needs,
/// and lacking one a lookup after a lost acknowledgement would need stops
/// the start, naming them, instead of failing that lookup: on a stream of
/// limits the lookup reads the last message on the subject and creates,
/// reads through and deletes a consumer; on a work-queue stream it reads
/// messages alone, so the consumers' rights are not needed there. A start
/// that passes leaves no consumer behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_user_without_the_rights_of_a_lookup_stops_the_start() {
    use async_nats::jetstream::stream::RetentionPolicy;
    let dir = TempDir::new("natsrights");
    let tag = unique("r");
    let (limits, queue) = (format!("L{tag}"), format!("Q{tag}"));
    // What README lists, on the stream's own subjects besides.
    let listed = |stream: &str, consumers: bool| {
        let mut subjects = vec![
            format!("{}.>", stream.to_lowercase()),
            format!("$JS.API.STREAM.INFO.{stream}"),
            format!("$JS.API.STREAM.MSG.GET.{stream}"),
        ];
        if consumers {
            for request in ["CREATE", "MSG.NEXT", "DELETE"] {
                subjects.push(format!("$JS.API.CONSUMER.{request}.{stream}.>"));
            }
        }
        subjects
    };
    let mut all = listed(&limits, true);
    all.extend(listed(&queue, false));
    let mut no_consumers = listed(&limits, false);
    no_consumers.extend(listed(&queue, false));
    let no_read: Vec<String> = listed(&limits, true)
        .into_iter()
        .filter(|subject| !subject.contains("MSG.GET"))
        .collect();
    let (_server, port, jetstream) = nats_server_with_users(
        &dir.0,
        &[
            nats_user("all", &all),
            nats_user("noconsumers", &no_consumers),
            nats_user("noread", &no_read),
        ],
    )
    .await;
    for (stream, retention) in [
        (&limits, RetentionPolicy::Limits),
        (&queue, RetentionPolicy::WorkQueue),
    ] {
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("{}.>", stream.to_lowercase())],
                retention,
                duplicate_window: Duration::from_secs(600),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // The server's refusal, printed with its quotes escaped.
    for (user, stream, refused) in [
        ("all", &limits, None),
        ("all", &queue, None),
        ("noconsumers", &queue, None),
        (
            "noconsumers",
            &limits,
            Some(format!(
                "Permissions Violation for Publish to \\\"$JS.API.CONSUMER.CREATE.{limits}."
            )),
        ),
        (
            "noread",
            &limits,
            Some(format!(
                "Permissions Violation for Publish to \\\"$JS.API.STREAM.MSG.GET.{limits}\\\""
            )),
        ),
    ] {
        let case = format!("{user} on {stream}");
        // The server refuses at once: time for a slow machine.
        let env = nats_user_env(
            &dir.0,
            &format!("{user}{stream}"),
            user,
            port,
            stream,
            format!("{}.{{account}}.{{type}}", stream.to_lowercase()),
            ["30000", "120000"],
        );
        let exited = tokio::task::spawn_blocking(move || serve_exit(&env))
            .await
            .unwrap();
        match (exited, refused) {
            (None, None) => {}
            (Some(finished), None) => panic!("{case}: refused: {finished:?}"),
            (None, Some(_)) => panic!("{case}: the gateway started"),
            (Some(finished), Some(refusal)) => {
                assert_eq!(finished.code, Some(2), "{case}: {finished:?}");
                let stderr = &finished.stderr;
                for expected in [
                    refusal.as_str(),
                    &format!("the stream {limits}"),
                    &format!(
                        "needs the right to publish to $JS.API.STREAM.INFO.{limits}, \
                         $JS.API.STREAM.MSG.GET.{limits}, $JS.API.CONSUMER.CREATE.{limits}.>, \
                         $JS.API.CONSUMER.MSG.NEXT.{limits}.>, $JS.API.CONSUMER.DELETE.{limits}.>"
                    ),
                ] {
                    assert!(stderr.contains(expected), "{case}: {expected}: {stderr}");
                }
                assert!(
                    !stderr.contains(&format!("{user}:{user}@")),
                    "{case}: {stderr}"
                );
            }
        }
        let mut found = jetstream.get_stream(stream.as_str()).await.unwrap();
        assert_eq!(
            found.info().await.unwrap().state.consumer_count,
            0,
            "{case}: a consumer left behind"
        );
    }
}

/// A nats-server of the test's own with JetStream, its files in `dir`, with
/// one account holding `users` (see [`nats_user`]) and `admin` (password
/// `admin`), who may do anything: the server, its port, and a JetStream
/// context of `admin`'s.
async fn nats_server_with_users(
    dir: &std::path::Path, users: &[String],
) -> (Process, u16, async_nats::jetstream::Context) {
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "host: 127.0.0.1\nport: -1\njetstream {{ store_dir: \"{}\" }}\naccounts {{ APP {{ \
             jetstream: enabled\n users: [\n {{ user: admin, password: admin }}\n {}\n ] }} }}\n",
            dir.join("nats-js").display(),
            users.join("\n ")
        ),
    )
    .unwrap();
    let (server, port) = nats_server(Command::new("nats-server").arg("-c").arg(&conf));
    let admin = async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin".into())
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    (server, port, async_nats::jetstream::new(admin))
}

/// A user of a nats-server's configuration, its password its name, who may
/// publish to `publish` and subscribe to replies only.
fn nats_user(name: &str, publish: &[String]) -> String {
    format!(
        "{{ user: {name}, password: {name}, permissions: {{ publish: {{ allow: [{}] }}, \
         subscribe: {{ allow: [\"_INBOX.>\"] }} }} }}",
        publish
            .iter()
            .map(|subject| format!("\"{subject}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// [`gateway_env`] named `name` for the NATS user `user` (its password the
/// same) of the server on `port`, publishing to `stream` on `subject`, with
/// the destination's timeout and the lease given in milliseconds
/// (`[timeout_ms, lease_ms]`): longer than the defaults, for a server that
/// refuses at once.
fn nats_user_env(
    dir: &std::path::Path, name: &str, user: &str, port: u16, stream: &str, subject: String,
    [timeout_ms, lease_ms]: [&str; 2],
) -> Vec<(String, String)> {
    let mut env = gateway_env(dir, name, &format!("nats://{user}:{user}@127.0.0.1:{port}"));
    env.retain(|(name, _)| {
        !["CLINK_LEASE_MS", "CLINK_DESTINATION_TIMEOUT_MS"].contains(&name.as_str())
    });
    env.extend(
        [
            ("CLINK_NATS_STREAM", stream.to_owned()),
            ("CLINK_NATS_SUBJECT", subject),
            ("CLINK_DESTINATION_TIMEOUT_MS", timeout_ms.to_owned()),
            ("CLINK_LEASE_MS", lease_ms.to_owned()),
        ]
        .map(|(name, value)| (name.to_owned(), value)),
    );
    env
}

/// A NATS user that may not find the stream stops the start at once,
/// saying which rights it needs; one that may find it but not publish to
/// its subjects has each publish refused at once, and `/health` says
/// which right is missing. Before, the server's refusal went unseen: the
/// stream's request waited out the whole destination timeout and the
/// gateway started anyway, and each publish timed out as one that may
/// have been kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_user_refused_the_stream_or_the_publish_is_told_so() {
    let dir = TempDir::new("natsrefused");
    let tag = unique("p");
    let stream = format!("T{tag}");
    let subjects = format!("t{tag}.>");
    let lookups = [
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
    ];
    let mut no_stream = vec![subjects.clone()];
    no_stream.extend(lookups.iter().cloned());
    let mut no_publish = vec![format!("$JS.API.STREAM.INFO.{stream}")];
    no_publish.extend(lookups.iter().cloned());
    let (_server, port, jetstream) = nats_server_with_users(
        &dir.0,
        &[
            nats_user("nostream", &no_stream),
            nats_user("nopublish", &no_publish),
        ],
    )
    .await;
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subjects.clone()],
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
    // A destination timeout far longer than a refusal takes, which is at
    // once: a refusal waited out instead fails the test.
    let env_for = |user: &str| {
        nats_user_env(
            &dir.0,
            &format!("{user}{tag}"),
            user,
            port,
            &stream,
            format!("t{tag}.{{account}}.{{type}}"),
            ["120000", "300000"],
        )
    };

    let env = env_for("nostream");
    let started = std::time::Instant::now();
    let exited = tokio::task::spawn_blocking(move || serve_exit(&env))
        .await
        .unwrap();
    let finished = exited.expect("the gateway refused to start");
    assert_eq!(finished.code, Some(2), "{finished:?}");
    for expected in [
        format!("the server refused to find or make the stream {stream}"),
        "Permissions Violation".to_owned(),
        format!("needs the right to publish to $JS.API.STREAM.INFO.{stream}"),
    ] {
        assert!(
            finished.stderr.contains(&expected),
            "{expected}: {finished:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the start waited out the destination timeout"
    );

    let env = env_for("nopublish");
    let mut gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let (url, base) = (Arc::clone(&gateway.url), gateway.base());
    let client = client();
    for event in &events(1, 1, &tag) {
        deliver(&client, &url, event).await;
    }
    until("/health naming the missing right", PHASE, async || {
        let (status, body) = health(&client, &base).await;
        status == 503
            && body["destination"]["error"].as_str().is_some_and(|error| {
                error.contains(&format!("needs the right to publish to {subjects}"))
            })
    })
    .await;
    assert_eq!(nats_count(&jetstream, &stream).await, 0);
    let finished = tokio::task::spawn_blocking(move || gateway.process.take().unwrap().terminate())
        .await
        .unwrap();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let _ = jetstream.delete_stream(&stream).await;
}

/// A NATS URL whose password holds `/`, `,` and `@`: the gateway logs in
/// with it (the server wants it) and `/health`, `/metrics` and its output
/// never show it, its logs not even at `trace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_password_with_a_slash_is_used_and_never_shown() {
    const PASSWORD: &str = "pq/rs,t@u";
    let dir = TempDir::new("natsauth");
    let (_server, port) = nats_server_with_password(&dir.0, "app", PASSWORD);
    let tag = unique("a");
    let stream = format!("T{tag}");
    let mut env = gateway_env(
        &dir.0,
        "natsauth",
        &format!("nats://app:{PASSWORD}@127.0.0.1:{port}"),
    );
    env.push(("CLINK_NATS_STREAM".into(), stream.clone()));
    env.push((
        "CLINK_NATS_SUBJECT".into(),
        format!("t{tag}.{{account}}.{{type}}"),
    ));
    env.retain(|(name, _)| name != "CLINK_LOG");
    env.push(("CLINK_LOG".into(), "trace".into()));
    let mut gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let (url, base) = (Arc::clone(&gateway.url), gateway.base());
    let client = client();
    let nats = async_nats::ConnectOptions::with_user_and_password("app".into(), PASSWORD.into())
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let jetstream = async_nats::jetstream::new(nats);
    for event in &events(1, 2, &tag) {
        deliver(&client, &url, event).await;
    }
    until("both events in the stream", PHASE, async || {
        nats_count(&jetstream, &stream).await == 2 && drained(&client, &base).await
    })
    .await;

    let (status, body) = health(&client, &base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["destination"]["name"],
        format!("nats://app:***@127.0.0.1:{port}"),
        "{body}"
    );
    let metrics = {
        let request = Request::get(format!("{base}/metrics"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    };
    assert!(
        metrics.contains("clink_gateway_published_total{destination=\"nats://app:***@127.0.0.1:"),
        "{metrics}"
    );
    let finished = tokio::task::spawn_blocking(move || gateway.process.take().unwrap().terminate())
        .await
        .unwrap();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    // async-nats logged, at debug.
    assert!(
        finished.stderr.contains("DEBUG async_nats"),
        "{}",
        finished.stderr
    );
    for text in [
        &body.to_string(),
        &metrics,
        &finished.stdout,
        &finished.stderr,
    ] {
        for secret in ["pq/rs", "rs,t", "t@u"] {
            assert!(!text.contains(secret), "{secret} shown in:\n{text}");
        }
    }
    let _ = jetstream.delete_stream(&stream).await;
}

/// How long an event on loopback may take to reach a destination that
/// takes it: a bound on a hang only.
const PROMPTLY: Duration = Duration::from_secs(60);

/// Every subject template `--check` accepts publishes into the stream the
/// gateway makes for it: one whose subject has no token left once the
/// (empty, one key) account is dropped, and one with a `:` in its fixed
/// first token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_subject_template_reaches_its_stream() {
    let _servers = servers::shared().await;
    let dir = TempDir::new("subjects");
    let nats_url = env_url("NATS_URL");
    let jetstream = async_nats::jetstream::new(async_nats::connect(&nats_url).await.unwrap());
    let client = client();
    for (template, published) in [
        ("t{tag}.{account}", "t{tag}"),
        ("t{tag}:v1.{account}.{type}", "t{tag}_v1.order.created"),
    ] {
        let tag = unique("u");
        let stream = format!("T{tag}");
        let mut env = gateway_env(&dir.0, &tag, &nats_url);
        env.push(("CLINK_NATS_STREAM".into(), stream.clone()));
        env.push(("CLINK_NATS_SUBJECT".into(), template.replace("{tag}", &tag)));
        let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
            .await
            .unwrap();
        let (url, base) = (Arc::clone(&gateway.url), gateway.base());
        deliver(&client, &url, &events(1, 1, &tag)[0]).await;
        until(
            &format!("{template}: the event in the stream"),
            PROMPTLY,
            async || nats_count(&jetstream, &stream).await == 1 && drained(&client, &base).await,
        )
        .await;
        let message = jetstream
            .get_stream(&stream)
            .await
            .unwrap()
            .get_raw_message(1)
            .await
            .unwrap();
        assert_eq!(message.subject.as_str(), published.replace("{tag}", &tag));
        let (status, body) = health(&client, &base).await;
        assert_eq!(status, 200, "{body}");
        tokio::task::spawn_blocking(move || gateway.stop())
            .await
            .unwrap();
        let _ = jetstream.delete_stream(&stream).await;
    }
}

/// An app that takes connections and never answers: its address.
async fn silent_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A gateway relaying to the HTTP app at `app` with a 1 s destination
/// timeout and a 2 s lease.
async fn gateway_with_a_1_s_timeout(dir: &TempDir, name: &str, app: SocketAddr) -> Gateway {
    let mut env = gateway_env(&dir.0, name, &format!("http://{app}/hook"));
    env.retain(|(name, _)| {
        !["CLINK_LEASE_MS", "CLINK_DESTINATION_TIMEOUT_MS"].contains(&name.as_str())
    });
    env.push(("CLINK_LEASE_MS".into(), "2000".into()));
    env.push(("CLINK_DESTINATION_TIMEOUT_MS".into(), "1000".into()));
    tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap()
}

/// A destination timeout that the workers' stop at nine tenths of the
/// lease would cut short is refused, naming both settings; inside the
/// lease, an app that never answers shows on `/health` by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_timeout_must_end_inside_the_lease() {
    let refused = check_with(&[
        ("CLINK_WEBHOOK_SIGNING_KEY", KEY),
        ("CLINK_INBOX", "sqlite:/nonexistent/inbox.db"),
        ("CLINK_DESTINATION", "http://127.0.0.1:9/hook"),
        ("CLINK_LEASE_MS", "2000"),
        ("CLINK_DESTINATION_TIMEOUT_MS", "10000"),
    ]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("destination_timeout_ms (10000 ms)")
            && refused.stderr.contains("lease_ms (2000 ms)")
            && refused.stderr.contains("so under 1800 ms"),
        "{}",
        refused.stderr
    );

    let dir = TempDir::new("silent");
    let app = silent_app().await;
    let gateway = gateway_with_a_1_s_timeout(&dir, "silent", app).await;
    let (url, base) = (Arc::clone(&gateway.url), gateway.base());
    let client = client();
    deliver(&client, &url, &events(1, 1, &unique("s"))[0]).await;
    until("/health naming the silent app", PROMPTLY, async || {
        let (status, body) = health(&client, &base).await;
        status == 503
            && body["destination"]["name"] == format!("http://{app}/…").as_str()
            && body["destination"]["error"]
                .as_str()
                .is_some_and(|error| error.contains("did not acknowledge within 1000 ms"))
    })
    .await;
    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
}

/// An app that answers each request `200` with a body it announces and
/// never sends, holding the connection: its address, and how many
/// requests it has read.
async fn stalling_app() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            // The request's head, then as many bytes as it says follow.
            let mut read = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(end + 4);
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => read.extend_from_slice(&chunk[..n]),
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&read[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            while read.len() < head_end + length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read.extend_from_slice(&chunk[..n]),
                }
            }
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
                .await;
            held.push(stream);
        }
    });
    (addr, requests)
}

/// A `2xx` is the app's answer, whatever its body does: an app whose
/// `200` is followed by a body that never comes has the event once, and
/// the event is done (the body was read inside the publish's timeout,
/// which then failed the publish and sent the event again and again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_whose_body_never_comes_completes_the_event_once() {
    let dir = TempDir::new("stalling");
    let (app, requests) = stalling_app().await;
    let gateway = gateway_with_a_1_s_timeout(&dir, "stalling", app).await;
    let (url, base) = (Arc::clone(&gateway.url), gateway.base());
    let client = client();
    deliver(&client, &url, &events(1, 1, &unique("stall"))[0]).await;
    until("the event done", PROMPTLY, async || {
        drained(&client, &base).await
    })
    .await;
    assert_eq!(requests.load(Ordering::SeqCst), 1, "relayed once");
    let (status, body) = health(&client, &base).await;
    assert_eq!(status, 200, "{body}");
    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
}

/// An HTTP app that answers 400 to events whose id starts with `evt_bad`
/// and 200 to the others, counting each id's requests.
async fn picky_app(seen: Arc<Mutex<HashMap<String, usize>>>) -> SocketAddr {
    app_answering(seen, |id| {
        if id.starts_with("evt_bad") {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        }
    })
    .await
}

/// An HTTP app that answers each event the status `status` gives its id,
/// counting each id's requests.
async fn app_answering(
    seen: Arc<Mutex<HashMap<String, usize>>>, status: fn(&str) -> StatusCode,
) -> SocketAddr {
    loopback::serve(tower::service_fn(move |request: Request<Incoming>| {
        let seen = Arc::clone(&seen);
        async move {
            let id = request
                .headers()
                .get("x-clink-event-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let _ = request.into_body().collect().await;
            *seen.lock().unwrap().entry(id.clone()).or_default() += 1;
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = status(&id);
            Ok::<_, Infallible>(response)
        }
    }))
    .await
}

/// One event with id `evt_{name}_{tag}`.
fn one_event(name: &str, tag: &str) -> TestEvent {
    let id = format!("evt_{name}_{tag}");
    let body = serde_json::json!({
        "id": id, "object": "event", "type": "order.succeeded",
        "created": Timestamp::now().as_millis(),
        "data": { "orderId": format!("ord_{name}_{tag}") },
    });
    TestEvent {
        id,
        object: 0,
        index: 0,
        body: Bytes::from(body.to_string()),
    }
}

/// The Prometheus text of the gateway at `base`.
async fn metrics_text(client: &HttpClient, base: &str) -> String {
    let request = Request::get(format!("{base}/metrics"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// An HTTP destination's path may be a secret (a Slack-style hook URL):
/// the gateway names the destination by its scheme, host and port, and
/// neither `/health`, `/metrics`, its output, its logs (at `trace`) nor
/// the errors it records show the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_destinations_path_is_never_shown() {
    const SECRET: &str = "B000SECRETPATH";
    let dir = TempDir::new("hookpath");
    let tag = unique("p");
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let app = picky_app(Arc::clone(&seen)).await;
    let mut env = gateway_env(
        &dir.0,
        "hookpath",
        &format!("http://{app}/services/T000/{SECRET}"),
    );
    env.retain(|(name, _)| name != "CLINK_LOG");
    env.push(("CLINK_LOG".into(), "trace".into()));
    env.push(("CLINK_MAX_ATTEMPTS".into(), "1".into()));
    let mut gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let (url, base) = (Arc::clone(&gateway.url), gateway.base());
    let client = client();
    // One event the app takes, one it refuses: dead, its error recorded.
    deliver(&client, &url, &one_event("good", &tag)).await;
    deliver(&client, &url, &one_event("bad", &tag)).await;
    until("one event done, one dead", PROMPTLY, async || {
        let (_, body) = health(&client, &base).await;
        body["events"]["dead"] == 1 && drained(&client, &base).await
    })
    .await;
    assert_eq!(seen.lock().unwrap().len(), 2);
    let name = format!("http://{app}/…");
    let (status, body) = health(&client, &base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["destination"]["name"], name.as_str(), "{body}");
    let metrics = metrics_text(&client, &base).await;
    assert!(
        metrics.contains(&format!(
            "clink_gateway_published_total{{destination=\"{name}\"}} 1"
        )),
        "{metrics}"
    );
    let finished = tokio::task::spawn_blocking(move || gateway.process.take().unwrap().terminate())
        .await
        .unwrap();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(
        finished.stdout.contains(&format!("forwarding to {name}")),
        "{}",
        finished.stdout
    );
    let mut inbox = Vec::new();
    for entry in std::fs::read_dir(&dir.0).unwrap() {
        inbox.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let inbox = String::from_utf8_lossy(&inbox);
    assert!(
        inbox.contains(&format!("evt_bad_{tag}")),
        "the inbox was read"
    );
    for text in [
        &body.to_string(),
        &metrics,
        &finished.stdout,
        &finished.stderr,
        &inbox.into_owned(),
    ] {
        assert!(!text.contains(SECRET), "the path shown in:\n{text}");
    }
}

/// `/health` tells how the destination is, not how one event fared: an
/// app that answers one event 400 is up, and once the events that failed
/// at a destination that was down are dead, nothing is failing any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_destination_not_one_event() {
    let dir = TempDir::new("health");
    let tag = unique("h");
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let app = picky_app(Arc::clone(&seen)).await;
    let gate = Gate::new(app).await;
    let mut env = gateway_env(&dir.0, "health", &gate.url("http", "/hook"));
    env.push(("CLINK_MAX_ATTEMPTS".into(), "2".into()));
    let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let (url, base) = (Arc::clone(&gateway.url), gateway.base());
    let client = client();
    let dead = async |count: u64| {
        let (_, body) = health(&client, &base).await;
        body["events"]["dead"] == count && drained(&client, &base).await
    };

    // The app answers one event 400, twice: that event is dead, and the
    // app was up all along.
    let bad = one_event("bad", &tag);
    deliver(&client, &url, &bad).await;
    until("the refused event dead", PROMPTLY, async || dead(1).await).await;
    assert_eq!(seen.lock().unwrap().get(&bad.id), Some(&2));
    let (status, body) = health(&client, &base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["destination"]["status"], "ok", "{body}");

    // The app down while an event is tried: once that event is dead,
    // nothing is failing any more.
    gate.set(false);
    deliver(&client, &url, &one_event("lost", &tag)).await;
    until("the event tried while down dead", PROMPTLY, async || {
        dead(2).await
    })
    .await;
    let (status, body) = health(&client, &base).await;
    assert_eq!(status, 200, "{body}");

    // Back up: an event goes through.
    gate.set(true);
    let good = one_event("good", &tag);
    deliver(&client, &url, &good).await;
    until("the good event handled", PROMPTLY, async || {
        seen.lock().unwrap().contains_key(&good.id) && drained(&client, &base).await
    })
    .await;
    assert_eq!(health(&client, &base).await.0, 200);
    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
}

/// A destination failing stays failing when it refuses one event (a
/// `400`) in the meantime: the refusal says nothing of it either way.
/// Here the app answers `503` to one event, whose next attempt is a
/// minute away, then `400` to another: `/health` still names the
/// destination failing, since the first. Before, the refusal marked it
/// up until the next `503`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_does_not_mark_a_failing_destination_up() {
    let dir = TempDir::new("refusedup");
    let tag = unique("r");
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let app = app_answering(Arc::clone(&seen), |id| {
        if id.starts_with("evt_down") {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        }
    })
    .await;
    let mut env = gateway_env(&dir.0, "refusedup", &format!("http://{app}/hook"));
    env.retain(|(name, _)| !name.ends_with("BACKOFF_MS"));
    env.push(("CLINK_BACKOFF_MS".into(), "60000".into()));
    env.push(("CLINK_MAX_BACKOFF_MS".into(), "60000".into()));
    let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let (url, base) = (Arc::clone(&gateway.url), gateway.base());
    let client = client();
    let down = one_event("down", &tag);
    deliver(&client, &url, &down).await;
    until("the destination failing", PROMPTLY, async || {
        health(&client, &base).await.0 == 503
    })
    .await;
    let (_, failing) = health(&client, &base).await;
    let bad = one_event("bad", &tag);
    deliver(&client, &url, &bad).await;
    until("the event refused", PROMPTLY, async || {
        seen.lock().unwrap().contains_key(&bad.id)
    })
    .await;
    // Its refusal recorded: the attempt's error is kept once settled.
    until("the refusal settled", PROMPTLY, async || {
        let (_, body) = health(&client, &base).await;
        body["events"]["retrying"] == 2
    })
    .await;
    let (status, body) = health(&client, &base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["destination"]["status"], "failing", "{body}");
    assert_eq!(
        body["destination"]["since"], failing["destination"]["since"],
        "{body}"
    );
    assert_eq!(seen.lock().unwrap().get(&down.id), Some(&1), "one attempt");
    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
}

/// `/health` waits for the inbox's counts no longer than the store
/// timeout: with the inbox's table locked by another session, so that
/// counting it waits for the lock, it answers with the counts unknown
/// (`events` null), and counts again once the lock is released. (The
/// PostgreSQL inbox bounds each call by the store timeout too; the
/// gateway's unit tests hold the counts back for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_within_the_store_timeout_while_the_inbox_table_is_locked() {
    // Far above the store timeout: it only stops a hang from hanging the run.
    const GUARD: Duration = Duration::from_secs(60);
    let _servers = servers::shared().await;
    let database = PrivateDatabase::create("gateway_health").await;
    let dir = TempDir::new("locked");
    let app = silent_app().await;
    let mut env = gateway_env(&dir.0, "locked", &format!("http://{app}/hook"));
    env.retain(|(name, _)| name != "CLINK_INBOX");
    env.push(("CLINK_INBOX".into(), "postgres".into()));
    env.push(("DATABASE_URL".into(), database.url.clone()));
    env.push(("CLINK_STORE_TIMEOUT_MS".into(), "2000".into()));
    // The workers keep the store's 2 s of the lease for a forward's settle:
    // 3 s more for the 2 s destination timeout.
    with_lease(&mut env, "5000");
    let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let base = gateway.base();
    let client = client();
    let counted = async || health(&client, &base).await.1["events"]["pending"] == 0;
    until("/health counting the inbox", PHASE, counted).await;

    let (locker, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE clink_webhook_inbox IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let answered = tokio::time::timeout(GUARD, health(&client, &base)).await;
    let (status, body) = answered.unwrap_or_else(|_| {
        panic!("/health did not answer within {GUARD:?} while the inbox table was locked")
    });
    assert!(body["events"].is_null(), "{body}");
    // Unknown counts fail nothing by themselves: the status follows the
    // inbox's writes (to a table of their own, not locked) and the
    // destination, which has had no event to fail.
    assert_eq!(body["destination"]["status"], "ok", "{body}");
    let writable = body["inbox"]["status"] == "ok";
    assert_eq!(status, if writable { 200 } else { 503 }, "{body}");

    locker.batch_execute("ROLLBACK").await.unwrap();
    until("/health counting the inbox again", PHASE, counted).await;
    drop(locker);
    let _ = connection.await;
    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
    database.drop_now().await;
}

/// With its console on and a PostgreSQL inbox, the gateway builds the
/// console's indexes beside the deliveries, so that the console's filters,
/// counts and chart do not read the whole table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_a_console_builds_its_postgres_indexes() {
    let _servers = servers::shared().await;
    let database = PrivateDatabase::create("gateway_console_idx").await;
    let dir = TempDir::new("console_idx");
    let app = silent_app().await;
    let mut env = gateway_env(&dir.0, "console_idx", &format!("http://{app}/hook"));
    env.retain(|(name, _)| name != "CLINK_INBOX");
    env.push(("CLINK_INBOX".into(), "postgres".into()));
    env.push(("DATABASE_URL".into(), database.url.clone()));
    with_lease(&mut env, "5000");
    env.push((
        "CLINK_CONSOLE_TOKEN".into(),
        "gateway-console-token-0123456789".into(),
    ));
    let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let (client, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let built = async || {
        let mut all = true;
        for index in [
            "clink_webhook_inbox_type_idx",
            "clink_webhook_inbox_account_idx",
            "clink_webhook_inbox_object_all_idx",
            "clink_webhook_inbox_received_idx",
            "clink_webhook_inbox_handled_idx",
        ] {
            let row = client
                .query_one(
                    "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                     WHERE c.relname = $1 AND i.indisvalid",
                    &[&index],
                )
                .await
                .unwrap();
            all &= row.get::<_, i64>(0) == 1;
        }
        all
    };
    until("the console's indexes built", PHASE, built).await;
    drop(client);
    let _ = connection.await;
    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
    database.drop_now().await;
}

/// POSTs `event` signed with `key` at `timestamp` (milliseconds) to `url`;
/// the status.
async fn post_signed_at(
    client: &HttpClient, url: &str, key: &str, timestamp: i64, event: &TestEvent,
) -> u16 {
    let timestamp = timestamp.to_string();
    let request = Request::post(url)
        .header("x-clink-timestamp", &timestamp)
        .header("x-clink-signature", sign(key, &timestamp, &event.body))
        .body(Full::new(event.body.clone()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

/// Each forward to an HTTP app is signed when it is sent: an event relayed
/// later than the app's tolerance after Clink signed it (a backlog, an app
/// that was down) still verifies. Signed with the key that verified the
/// event (one key, or the account's), or with destination_signing_key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_relayed_after_the_apps_tolerance_still_verifies() {
    const APP_KEY: &str = "whsec_gateway_to_app_key";
    const ACCOUNT_KEY: &str = "whsec_account_a_key";
    const ACCOUNT_OLD_KEY: &str = "whsec_account_a_old";
    let dir = TempDir::new("resign");
    let accounts = dir.0.join("accounts.toml");
    std::fs::write(
        &accounts,
        format!(
            "[acct_a]\nsigning_keys = [{{ secret = \"{ACCOUNT_KEY}\", name = \"a-2026\" }}, \
             {{ secret = \"{ACCOUNT_OLD_KEY}\", name = \"a-2025\" }}]\n"
        ),
    )
    .unwrap();
    let client = client();
    // Clink signed each delivery 10 s before it came: inside the gateway's
    // tolerance (300 s), past the app's (2 s).
    let signed = Timestamp::now().as_millis() - 10_000;
    for (case, app_key, clink_key, extra) in [
        ("one key", KEY, KEY, vec![]),
        // Clink still signs with the account's older key: so does the
        // gateway, for an app that has not the newer one yet.
        (
            "an account's older key",
            ACCOUNT_OLD_KEY,
            ACCOUNT_OLD_KEY,
            vec![("CLINK_ACCOUNTS_FILE", accounts.display().to_string())],
        ),
        (
            "destination_signing_key",
            APP_KEY,
            KEY,
            vec![("CLINK_DESTINATION_SIGNING_KEY", APP_KEY.to_owned())],
        ),
    ] {
        let app = Arc::new(App::default());
        let addr = start_app_verifying(Arc::clone(&app), app_key, Duration::from_secs(2)).await;
        let tag = unique("r");
        let mut env = gateway_env(&dir.0, &tag, &format!("http://{addr}/hooks"));
        if extra.iter().any(|(name, _)| *name == "CLINK_ACCOUNTS_FILE") {
            env.retain(|(name, _)| name != "CLINK_WEBHOOK_SIGNING_KEY");
        }
        env.extend(
            extra
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value)),
        );
        let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
            .await
            .unwrap();
        let event = &events(1, 1, &tag)[0];
        let url = gateway.url().replace("{account}", "acct_a");
        assert_eq!(
            post_signed_at(&client, &url, clink_key, signed, event).await,
            200,
            "{case}"
        );
        let base = gateway.base();
        until(
            &format!("{case}: the event verified by the app"),
            PROMPTLY,
            async || {
                app.handled.lock().unwrap().contains(&event.id) && drained(&client, &base).await
            },
        )
        .await;
        assert_eq!(app.refused.load(Ordering::SeqCst), 0, "{case}");
        tokio::task::spawn_blocking(move || gateway.stop())
            .await
            .unwrap();
    }
}

/// How a [`Proxy`] passes traffic.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flow {
    /// Both ways.
    Open,
    /// From the client to the server only: what the server says is lost
    /// (a publish arrives and is kept; its acknowledgement never comes).
    Deaf,
    /// Not at all: new connections are dropped at once, open ones cut.
    Closed,
}

/// A TCP proxy in front of a server whose [`Flow`] the test sets.
struct Proxy {
    port: u16,
    flow: watch::Sender<Flow>,
}

impl Proxy {
    async fn new(target: SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (flow, watching) = watch::channel(Flow::Open);
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut watching = watching.clone();
                if *watching.borrow() == Flow::Closed {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    let answers = watching.clone();
                    tokio::select! {
                        _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
                        () = async {
                            let mut buffer = vec![0u8; 16 * 1024];
                            loop {
                                let Ok(read) = server_read.read(&mut buffer).await else { return };
                                if read == 0 {
                                    return;
                                }
                                if *answers.borrow() == Flow::Open
                                    && client_write.write_all(&buffer[..read]).await.is_err()
                                {
                                    return;
                                }
                            }
                        } => {}
                        _ = watching.wait_for(|flow| *flow == Flow::Closed) => {}
                    }
                });
            }
        });
        Self { port, flow }
    }

    fn set(&self, flow: Flow) {
        self.flow.send_replace(flow);
    }
}

/// A publish that JetStream kept but whose acknowledgement was lost, with
/// NATS then out of reach for longer than the stream's duplicate window:
/// the gateway finds the event in the stream before publishing it again,
/// and the stream holds it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_kept_unacknowledged_is_not_kept_again_after_the_window() {
    const WINDOW: Duration = Duration::from_secs(3);
    let _servers = servers::shared().await;
    let dir = TempDir::new("lostack");
    let tag = unique("l");
    let nats_url = env_url("NATS_URL");
    let proxy = Proxy::new(target(&nats_url)).await;
    let stream = format!("T{tag}");
    let mut env = gateway_env(
        &dir.0,
        "lostack",
        &format!("nats://127.0.0.1:{}", proxy.port),
    );
    env.retain(|(name, _)| {
        !["CLINK_LEASE_MS", "CLINK_DESTINATION_TIMEOUT_MS"].contains(&name.as_str())
    });
    env.extend(
        [
            ("CLINK_NATS_STREAM", stream.clone()),
            ("CLINK_NATS_SUBJECT", format!("t{tag}.{{account}}.{{type}}")),
            (
                "CLINK_NATS_DUPLICATE_WINDOW_S",
                WINDOW.as_secs().to_string(),
            ),
            ("CLINK_LEASE_MS", "2000".to_owned()),
            ("CLINK_DESTINATION_TIMEOUT_MS", "1000".to_owned()),
        ]
        .map(|(name, value)| (name.to_owned(), value)),
    );
    let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let (url, base) = (Arc::clone(&gateway.url), gateway.base());
    let client = client();
    let jetstream = async_nats::jetstream::new(async_nats::connect(&nats_url).await.unwrap());
    let all = events(2, 1, &tag);

    // The first event goes through: the gateway is connected.
    deliver(&client, &url, &all[0]).await;
    until("the first event in the stream", PROMPTLY, async || {
        nats_count(&jetstream, &stream).await == 1 && drained(&client, &base).await
    })
    .await;

    // The second is kept, and its acknowledgement lost.
    proxy.set(Flow::Deaf);
    deliver(&client, &url, &all[1]).await;
    until(
        "the second event kept unacknowledged",
        PROMPTLY,
        async || nats_count(&jetstream, &stream).await == 2,
    )
    .await;
    until("the publish failed", PROMPTLY, async || {
        health(&client, &base).await.1["destination"]["status"] == "failing"
    })
    .await;

    // NATS out of reach until the duplicate window has passed since.
    proxy.set(Flow::Closed);
    let kept = jetstream
        .get_stream(&stream)
        .await
        .unwrap()
        .get_raw_message(2)
        .await
        .unwrap()
        .time;
    let window_passed = kept + WINDOW + Duration::from_secs(1);
    until("the duplicate window passed", PROMPTLY, async || {
        time::OffsetDateTime::now_utc() > window_passed
    })
    .await;

    // Back: the event is done, and in the stream once.
    proxy.set(Flow::Open);
    until("the second event done", PROMPTLY, async || {
        drained(&client, &base).await && health(&client, &base).await.0 == 200
    })
    .await;
    let ids = nats_ids(&jetstream, &stream).await;
    let expected: Vec<String> = all.iter().map(|event| event.id.clone()).collect();
    assert_eq!(ids, expected, "each event once");
    let _ = jetstream.delete_stream(&stream).await;
    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
}

/// `serve` with `env`: what it printed if it exited before it listened,
/// or `None` once it listens (then it is stopped).
fn serve_exit(env: &[(String, String)]) -> Option<crate::support::process::Finished> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clink-webhook"));
    command.arg("serve");
    for (name, value) in env {
        command.env(name, value);
    }
    let process = Process::start(&mut command);
    loop {
        match process.stdout.recv_timeout(PROMPTLY) {
            Ok(line) if line.starts_with("listening on ") => {
                let finished = process.terminate();
                assert_eq!(finished.code, Some(0), "{finished:?}");
                return None;
            }
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Some(process.finish()),
            Err(error) => panic!("serve neither listened nor exited: {error}"),
        }
    }
}

/// With `sslmode=require` in `database_url`, the gateway reaches its
/// PostgreSQL inbox over TLS, the server's certificate verified: against
/// `database_ca_file`, every connection it holds is TLS by the server's own
/// account (`pg_stat_ssl`), the LISTEN connection too, and an event goes
/// through; without the CA file the private CA's certificate is refused
/// and the start stops, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_database_is_reached_over_verified_tls() {
    let _servers = servers::shared().await;
    let ca = std::env::var("DATABASE_TLS_CA")
        .expect("DATABASE_TLS_CA is not set: run scripts/test, which starts PostgreSQL");
    let database = PrivateDatabase::create("gateway_tls").await;
    let application = format!("clink_tls_{}", unique("a").replace('-', "_"));
    let joined = if database.url.contains('?') { '&' } else { '?' };
    let url = format!(
        "{}{joined}sslmode=require&application_name={application}",
        database.url
    );
    let dir = TempDir::new("pg-tls");
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let app = picky_app(Arc::clone(&seen)).await;
    let mut env = gateway_env(&dir.0, "pg-tls", &format!("http://{app}/hook"));
    env.retain(|(name, _)| name != "CLINK_INBOX");
    env.push(("CLINK_INBOX".into(), "postgres".into()));
    env.push(("DATABASE_URL".into(), url));
    with_lease(&mut env, "5000");

    let unverified = env.clone();
    let exited = tokio::task::spawn_blocking(move || serve_exit(&unverified))
        .await
        .unwrap()
        .expect("the start stops without the CA");
    assert_ne!(exited.code, Some(0), "{exited:?}");
    assert!(
        exited.stderr.to_ascii_lowercase().contains("certificate"),
        "{exited:?}"
    );

    env.push(("CLINK_DATABASE_CA_FILE".into(), ca));
    let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let (url, base) = (Arc::clone(&gateway.url), gateway.base());
    let client = client();
    let event = one_event("tls", &unique("t"));
    deliver(&client, &url, &event).await;
    until("the event relayed", PROMPTLY, async || {
        seen.lock().unwrap().contains_key(&event.id) && drained(&client, &base).await
    })
    .await;
    let (admin, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let rows = admin
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = $1",
            &[&application],
        )
        .await
        .unwrap();
    let ssl: Vec<bool> = rows.iter().map(|row| row.get(0)).collect();
    assert!(
        ssl.len() >= 2,
        "the pool's and the LISTEN connections: {ssl:?}"
    );
    assert!(ssl.iter().all(|ssl| *ssl), "{ssl:?}");
    drop(admin);
    let _ = connection.await;
    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
    database.drop_now().await;
}

/// A body limit above the budget's default, with a budget that holds it,
/// is taken at start as `--check` takes it (the limit was checked against
/// the default budget before the budget given was set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_limit_above_the_default_budget_starts_with_its_budget() {
    let dir = TempDir::new("large-bodies");
    let app = silent_app().await;
    let mut env = gateway_env(&dir.0, "large-bodies", &format!("http://{app}/hook"));
    env.push(("CLINK_BODY_LIMIT_BYTES".into(), "104857600".into()));
    env.push(("CLINK_BODY_BUDGET_BYTES".into(), "209715200".into()));
    let exited = tokio::task::spawn_blocking(move || serve_exit(&env))
        .await
        .unwrap();
    assert!(exited.is_none(), "{exited:?}");
}

/// A gateway whose port is taken (by another gateway on the same inbox,
/// say) exits with the error before its workers start: it claims none of
/// the events waiting in the inbox, and relays none. Started several times
/// over, for a worker started before the port was bound would have to win
/// a race to show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_port_is_taken_claims_and_relays_nothing() {
    use clink_webhooks::store::{Inbox as _, NewEvent};
    const EVENTS: usize = 16;
    const STARTS: usize = 10;
    let dir = TempDir::new("taken");
    let app = Arc::new(App::default());
    let app_addr = start_app(Arc::clone(&app)).await;
    let inbox = clink_webhooks::store::SqliteInbox::open(dir.0.join("taken.db")).unwrap();
    let tag = unique("p");
    let now = Timestamp::now();
    for (n, event) in events(EVENTS, 1, &tag).iter().enumerate() {
        let new = NewEvent::new(
            None,
            event.id.clone(),
            "order.succeeded".to_owned(),
            Some(now),
            Some(format!("order:ord_{tag}_{n}")),
            now,
            now,
            event.body.clone(),
        );
        inbox.insert(&new).await.unwrap();
    }
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = taken.local_addr().unwrap();
    let mut env = gateway_env(&dir.0, "taken", &format!("http://{app_addr}/hooks"));
    env.retain(|(name, _)| !["CLINK_SERVE_LISTEN", "CLINK_SETTLE_MS"].contains(&name.as_str()));
    env.push(("CLINK_SERVE_LISTEN".into(), address.to_string()));
    env.push(("CLINK_SETTLE_MS".into(), "0".into()));
    for start in 0..STARTS {
        let env = env.clone();
        let finished = tokio::task::spawn_blocking(move || serve_exit(&env))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("start {start}: the gateway listened on a taken port"));
        assert_eq!(finished.code, Some(2), "start {start}: {finished:?}");
        assert!(
            finished
                .stderr
                .contains(&format!("cannot listen on {address}")),
            "start {start}: {}",
            finished.stderr
        );
        let stats = inbox.stats().await.unwrap();
        assert_eq!(
            (stats.pending, stats.running),
            (EVENTS as u64, 0),
            "start {start}: the gateway that did not start claimed events: {stats:?}"
        );
        assert_eq!(app.started.load(Ordering::SeqCst), 0, "start {start}");
    }
    drop(taken);
}

/// A stream made before that does not hold the gateway's subjects, drops
/// repeated publishes for less time than nats_duplicate_window_s, or is
/// kept by fewer servers than nats_replicas, stops the gateway at start
/// with what to change; a stream the gateway would make with more
/// replicas than the server can keep stops it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_cannot_keep_the_events_stops_the_start() {
    let _servers = servers::shared().await;
    let dir = TempDir::new("stream");
    let nats_url = env_url("NATS_URL");
    let jetstream = async_nats::jetstream::new(async_nats::connect(&nats_url).await.unwrap());
    for (case, subjects, window, replicas, expected) in [
        (
            "subjects",
            Some("other{tag}.>"),
            600,
            "1",
            "which do not cover t{tag}.> that nats_subject publishes to",
        ),
        (
            "window",
            Some("t{tag}.>"),
            120,
            "1",
            "drops a repeated publish for 120 s (its duplicate window), less than \
             nats_duplicate_window_s (600 s)",
        ),
        (
            "replicas",
            Some("t{tag}.>"),
            900,
            "3",
            "is kept by 1 server(s), fewer than nats_replicas (3)",
        ),
        // The test server is one server: it makes no stream for three.
        ("replicas to make", None, 900, "3", "(nats_replicas is 3)"),
        ("a stream that fits", Some("t{tag}.>"), 900, "1", ""),
    ] {
        let tag = unique("m");
        let stream = format!("T{tag}");
        if let Some(subjects) = subjects {
            jetstream
                .create_stream(async_nats::jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: vec![subjects.replace("{tag}", &tag)],
                    duplicate_window: Duration::from_secs(window),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let mut env = gateway_env(&dir.0, &tag, &nats_url);
        env.push(("CLINK_NATS_STREAM".into(), stream.clone()));
        env.push((
            "CLINK_NATS_SUBJECT".into(),
            format!("t{tag}.{{account}}.{{type}}"),
        ));
        env.push(("CLINK_NATS_REPLICAS".into(), replicas.into()));
        let exited = tokio::task::spawn_blocking(move || serve_exit(&env))
            .await
            .unwrap();
        match exited {
            Some(finished) => {
                assert!(!expected.is_empty(), "{case}: refused: {finished:?}");
                assert_eq!(finished.code, Some(2), "{case}: {finished:?}");
                assert!(
                    finished.stderr.contains(&format!("the stream {stream}"))
                        && finished.stderr.contains(&expected.replace("{tag}", &tag)),
                    "{case}: {}",
                    finished.stderr
                );
            }
            None => assert!(expected.is_empty(), "{case}: the gateway started"),
        }
        let _ = jetstream.delete_stream(&stream).await;
    }
}

/// A stream JetStream refuses to make for a reason that lasts stops the
/// gateway at start, saying what to change, instead of failing every event
/// until it is dead: one whose subjects a stream of another name already
/// holds (JetStream's error 10065: subjects overlap), and any stream for a
/// NATS user whose account has no JetStream (error 10039). The server is
/// the test's own, with an account of each kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_jetstream_refuses_to_make_stops_the_start() {
    let dir = TempDir::new("refused");
    let tag = unique("o");
    let conf = dir.0.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "host: 127.0.0.1\nport: -1\njetstream {{ store_dir: \"{}\" }}\naccounts {{\n APP {{ \
             jetstream: enabled, users: [ {{ user: app, password: app }} ] }}\n PLAIN {{ users: \
             [ {{ user: plain, password: plain }} ] }}\n}}\n",
            dir.0.join("nats-js").display()
        ),
    )
    .unwrap();
    let (_server, port) = nats_server(Command::new("nats-server").arg("-c").arg(&conf));
    let app = async_nats::ConnectOptions::with_user_and_password("app".into(), "app".into())
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let jetstream = async_nats::jetstream::new(app);
    // The stream that holds the gateway's subjects first, by another name.
    let (holder, stream, subjects) = (format!("H{tag}"), format!("T{tag}"), format!("t{tag}.>"));
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: holder.clone(),
            subjects: vec![subjects.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    for (case, user, expected) in [
        (
            "overlap",
            "app",
            vec![
                "error code 10065".to_owned(),
                format!(
                    "another stream holds subjects that overlap {subjects}: set nats_stream to \
                     that stream"
                ),
            ],
        ),
        (
            "no JetStream",
            "plain",
            vec![
                "error code 10039".to_owned(),
                "JetStream is not enabled for the account of the gateway's NATS user".to_owned(),
            ],
        ),
    ] {
        // The server refuses at once: time for a slow machine.
        let env = nats_user_env(
            &dir.0,
            user,
            user,
            port,
            &stream,
            format!("t{tag}.{{account}}.{{type}}"),
            ["30000", "120000"],
        );
        let exited = tokio::task::spawn_blocking(move || serve_exit(&env))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{case}: the gateway started"));
        assert_eq!(exited.code, Some(2), "{case}: {exited:?}");
        for expected in
            std::iter::once(format!("cannot find or create the stream {stream}")).chain(expected)
        {
            assert!(
                exited.stderr.contains(&expected),
                "{case}: {expected}: {}",
                exited.stderr
            );
        }
        assert!(
            !exited.stderr.contains(&format!("{user}:{user}@")),
            "{case}"
        );
    }
    assert!(
        jetstream.get_stream(&stream).await.is_err(),
        "the gateway's stream was not made"
    );
}

/// The status and body of a GET of `url`.
async fn get(client: &HttpClient, url: &str) -> (u16, String) {
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// With `admin_listen`, `/health`, `/ready`, `/metrics` and `/console`
/// answer on that address only, and the delivery port takes deliveries
/// only: each admin route there, and a delivery to the admin address, is
/// a `404`. Both ports stop on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listen_moves_health_metrics_and_the_console_off_the_delivery_port() {
    const TOKEN: &str = "gateway-console-token-0123456789";
    let dir = TempDir::new("admin");
    let tag = unique("a");
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let app = picky_app(Arc::clone(&seen)).await;
    let mut env = gateway_env(&dir.0, "admin", &format!("http://{app}/hook"));
    env.push(("CLINK_ADMIN_LISTEN".into(), "127.0.0.1:0".into()));
    env.push(("CLINK_CONSOLE_TOKEN".into(), TOKEN.into()));
    env.push((
        "CLINK_CONSOLE_CLIENT_HEADER".into(),
        "x-forwarded-for".into(),
    ));
    env.push((
        "CLINK_CONSOLE_TRUSTED_PROXIES".into(),
        "127.0.0.1, ::1".into(),
    ));
    let gateway = tokio::task::spawn_blocking(move || Gateway::start(env))
        .await
        .unwrap();
    let (url, base) = (Arc::clone(&gateway.url), gateway.base());
    let admin = gateway.admin.clone().expect("an admin address printed");
    assert_ne!(admin, base);
    let client = client();

    let good = one_event("good", &tag);
    deliver(&client, &url, &good).await;
    until("the event handled", PROMPTLY, async || {
        seen.lock().unwrap().contains_key(&good.id) && drained(&client, &admin).await
    })
    .await;

    // The delivery port: every admin route is not there, and its 404
    // tells nothing of the other port or of the delivery path.
    for route in [
        "/health",
        "/ready",
        "/metrics",
        "/console",
        "/console/events",
    ] {
        let (status, body) = get(&client, &format!("{base}{route}")).await;
        assert_eq!(status, 404, "{route} on the delivery port: {body}");
        assert_eq!(body, r#"{"error":"not_found"}"#, "{route}");
    }
    // The admin address: each of them answers.
    let (status, body) = health(&client, &admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(get(&client, &format!("{admin}/ready")).await.0, 200);
    let metrics = metrics_text(&client, &admin).await;
    assert!(
        metrics.contains("clink_gateway_published_total"),
        "{metrics}"
    );
    if cfg!(feature = "console") {
        let (status, body) = get(&client, &format!("{admin}/console")).await;
        assert_eq!(status, 401, "the console without its token: {body}");
        let (status, body) = get(&client, &format!("{admin}/console?token={TOKEN}")).await;
        assert!(
            (200..400).contains(&status),
            "the console with its token: {status} {body}"
        );
        // console_client_header: the clients the proxy names have budgets
        // of their own; console_trusted_proxies: the header is read past a
        // second proxy on loopback.
        let from = async |forwarded: &str, token: &str| -> u16 {
            let request = Request::get(format!("{admin}/console/events"))
                .header("x-forwarded-for", forwarded)
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = client.request(request).await.unwrap();
            let status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            status
        };
        for n in 0..10 {
            let wrong = format!("wrong-{n}-guess-abcdefghij");
            let forwarded = "203.0.113.5, 127.0.0.1";
            assert_eq!(from(forwarded, &wrong).await, 401, "wrong token {n}");
        }
        assert_eq!(from("203.0.113.5", TOKEN).await, 429);
        assert_eq!(from("203.0.113.6", TOKEN).await, 200);
    }
    // A delivery to the admin address is refused, never acknowledged.
    let path = &url.read().unwrap().clone()[base.len()..];
    let stray = one_event("stray", &tag);
    let body = std::str::from_utf8(&stray.body).unwrap();
    let status = post_signed(&client, &format!("{admin}{path}"), KEY, body).await;
    assert_eq!(status, 404, "a delivery to the admin address");

    tokio::task::spawn_blocking(move || gateway.stop())
        .await
        .unwrap();
    assert!(!seen.lock().unwrap().contains_key(&stray.id));
}

/// `admin_listen` is checked: an address it cannot be, or the delivery
/// port's own, is refused by name; a delivery port open beyond loopback
/// with the admin routes on it is warned about, and not once they have an
/// address of their own.
#[test]
fn admin_listen_is_checked_and_a_shared_public_port_is_warned_about() {
    let base = [
        ("CLINK_WEBHOOK_SIGNING_KEY", KEY),
        ("CLINK_INBOX", "sqlite:/nonexistent/inbox.db"),
        ("CLINK_DESTINATION", "http://127.0.0.1:9/hook"),
    ];
    let mut env = base.to_vec();
    env.push(("CLINK_CONSOLE_CLIENT_HEADER", "x forwarded for"));
    let checked = check_with(&env);
    assert_eq!(checked.code, Some(2), "{checked:?}");
    assert!(
        checked.stderr.contains("console_client_header")
            && checked.stderr.contains("a header name"),
        "{}",
        checked.stderr
    );
    // console_trusted_proxies: addresses or ranges, and only beside the
    // header it is about.
    for (header, proxies, refused) in [
        (
            "x-forwarded-for",
            "10.0.0.0/33",
            "\"10.0.0.0/33\" is neither",
        ),
        (
            "x-forwarded-for",
            "10.0.0.1, proxy.lan",
            "\"proxy.lan\" is neither",
        ),
        ("", "10.0.0.1", "set console_client_header too"),
    ] {
        let mut env = base.to_vec();
        env.push(("CLINK_CONSOLE_CLIENT_HEADER", header));
        env.push(("CLINK_CONSOLE_TRUSTED_PROXIES", proxies));
        let checked = check_with(&env);
        assert_eq!(checked.code, Some(2), "{proxies}: {checked:?}");
        assert!(
            checked.stderr.contains("console_trusted_proxies") && checked.stderr.contains(refused),
            "{proxies}: {}",
            checked.stderr
        );
    }
    // The header believed from every connection is warned about, when
    // the gateway serves the console.
    for (proxies, warned) in [(None, true), (Some("127.0.0.1"), false)] {
        let mut env = base.to_vec();
        env.push(("CLINK_CONSOLE_TOKEN", "0123456789abcdef-console"));
        env.push(("CLINK_CONSOLE_CLIENT_HEADER", "x-forwarded-for"));
        env.extend(proxies.map(|proxies| ("CLINK_CONSOLE_TRUSTED_PROXIES", proxies)));
        let checked = check_with(&env);
        assert_eq!(checked.code, Some(0), "{proxies:?}: {checked:?}");
        assert_eq!(
            checked.stderr.contains("set console_trusted_proxies"),
            warned,
            "{proxies:?}: {}",
            checked.stderr
        );
    }
    for (listen, admin, refused) in [
        (
            "127.0.0.1:3000",
            "localhost:3001",
            "expected an address and port",
        ),
        (
            "127.0.0.1:3000",
            "127.0.0.1:3000",
            "port 3000 is serve_listen's",
        ),
        (
            "0.0.0.0:3000",
            "127.0.0.1:3000",
            "port 3000 is serve_listen's",
        ),
        ("127.0.0.1:3000", "[::]:3000", "port 3000 is serve_listen's"),
    ] {
        let mut env = base.to_vec();
        env.extend([
            ("CLINK_SERVE_LISTEN", listen),
            ("CLINK_ADMIN_LISTEN", admin),
        ]);
        let checked = check_with(&env);
        assert_eq!(checked.code, Some(2), "{admin}: {checked:?}");
        assert!(
            checked
                .stderr
                .contains("admin_listen (from the environment variable CLINK_ADMIN_LISTEN)")
                && checked.stderr.contains(refused),
            "{admin}: {}",
            checked.stderr
        );
    }
    for (listen, admin, warned) in [
        ("0.0.0.0:3000", None, true),
        ("[::]:3000", None, true),
        ("0.0.0.0:3000", Some("127.0.0.1:3001"), false),
        ("127.0.0.1:3000", None, false),
        ("[::ffff:127.0.0.1]:3000", None, false),
        ("0.0.0.0:3000", Some(""), true),
        ("127.0.0.1:0", Some("127.0.0.1:0"), false),
        ("127.0.0.2:3000", Some("127.0.0.1:3000"), false),
    ] {
        let mut env = base.to_vec();
        env.push(("CLINK_SERVE_LISTEN", listen));
        env.extend(admin.map(|admin| ("CLINK_ADMIN_LISTEN", admin)));
        let checked = check_with(&env);
        assert_eq!(checked.code, Some(0), "{listen} {admin:?}: {checked:?}");
        assert_eq!(
            checked.stderr.contains("admin_listen is unset"),
            warned,
            "{listen} {admin:?}: {}",
            checked.stderr
        );
    }
}

/// The example configuration in `deploy/` is one the gateway takes, its
/// admin routes on an address of their own.
#[test]
fn the_deploy_configuration_checks() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/gateway.toml");
    let checked = check_file_with(Some(file), &[("CLINK_WEBHOOK_SIGNING_KEY", KEY)]);
    assert_eq!(checked.code, Some(0), "{checked:?}");
    assert!(
        checked.stdout.contains("admin_listen") && checked.stdout.contains("127.0.0.1:3001"),
        "{}",
        checked.stdout
    );
    assert!(
        !checked.stderr.contains("admin_listen is unset"),
        "{}",
        checked.stderr
    );
}

/// A gateway whose admin address is taken does not start: it says which
/// setting, and exits before taking any event.
#[test]
fn an_admin_address_in_use_stops_the_start() {
    let dir = TempDir::new("admintaken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let mut env = gateway_env(&dir.0, "admintaken", "http://127.0.0.1:9/hook");
    env.push(("CLINK_ADMIN_LISTEN".into(), address.clone()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_clink-webhook"));
    command.arg("serve");
    for (name, value) in &env {
        command.env(name, value);
    }
    let finished = Process::start(&mut command).finish();
    assert_ne!(finished.code, Some(0), "{finished:?}");
    assert!(
        finished
            .stderr
            .contains(&format!("cannot listen on {address} (admin_listen)")),
        "{}",
        finished.stderr
    );
    assert!(
        !finished.stdout.contains("listening on"),
        "{}",
        finished.stdout
    );
}

/// A plain `http://` destination starts on a machine without the system's
/// root certificates (an image without `ca-certificates`: here, every
/// place they are read from points nowhere), since it makes no TLS
/// connection; an `https://` one does not, saying why. Before, both
/// stopped the start.
#[cfg(unix)]
#[test]
fn a_plain_http_destination_starts_without_root_certificates() {
    let dir = TempDir::new("noroots");
    for (destination, starts) in [
        ("http://127.0.0.1:9/hook", true),
        ("https://127.0.0.1:9/hook", false),
    ] {
        let mut env = gateway_env(&dir.0, &unique("noroots"), destination);
        env.push((
            "SSL_CERT_FILE".to_owned(),
            "/nonexistent/roots.pem".to_owned(),
        ));
        env.push(("SSL_CERT_DIR".to_owned(), "/nonexistent/certs".to_owned()));
        let exited = serve_exit(&env);
        if starts {
            assert!(exited.is_none(), "{destination}: {exited:?}");
        } else {
            let finished = exited.unwrap_or_else(|| panic!("{destination} started"));
            assert!(
                finished
                    .stderr
                    .contains("cannot load the system's root certificates"),
                "{destination}: {finished:?}"
            );
        }
    }
}

/// A gateway started with `env` until it listens, then stopped with
/// SIGTERM: what it wrote, and how it ended.
async fn started_and_stopped(env: Vec<(String, String)>) -> crate::support::process::Finished {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_clink-webhook"));
        command.arg("serve");
        for (name, value) in &env {
            command.env(name, value);
        }
        let process = Process::start(&mut command);
        Process::line_starting(&process.stdout, "listening on ");
        process.terminate()
    })
    .await
    .unwrap()
}

/// A Redis destination whose server can lose what it acknowledged is
/// warned about at start: one without an append-only file (the test
/// servers' `REDIS_URL`, `appendonly no`) is, the durable one
/// (`appendonly yes`) is not. Before, nothing was said, and a restart of
/// the server lost the entries of events the inbox had done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_destination_without_an_append_only_file_is_warned_about() {
    let _servers = servers::shared().await;
    let dir = TempDir::new("redisaof");
    for (url, warned) in [
        (env_url("REDIS_URL"), true),
        (env_url("REDIS_DURABLE_URL"), false),
    ] {
        let env = gateway_env(&dir.0, &unique("redisaof"), &url);
        let finished = started_and_stopped(env).await;
        assert_eq!(finished.code, Some(0), "{finished:?}");
        assert_eq!(
            finished
                .stderr
                .contains("warning: the server keeps no append-only file (appendonly no)"),
            warned,
            "{url}: {finished:?}"
        );
        assert!(
            !finished.stderr.contains("maxmemory-policy"),
            "{finished:?}"
        );
    }
}

/// A stream made before whose limits can remove a message nobody has read
/// (an age, or a count whose oldest messages go) is warned about at start,
/// naming the limit: the inbox has each event it acknowledged done. A
/// stream that refuses a publish when full (`discard: new`) loses nothing
/// and is not warned about. One that keeps a message only while a consumer
/// wants it (`retention: interest`) is warned about too: it acknowledges a
/// publish nobody wants and keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_limits_remove_unread_messages_is_warned_about() {
    let _servers = servers::shared().await;
    let dir = TempDir::new("limits");
    let nats_url = env_url("NATS_URL");
    let jetstream = async_nats::jetstream::new(async_nats::connect(&nats_url).await.unwrap());
    for (discard, warned) in [
        (async_nats::jetstream::stream::DiscardPolicy::Old, true),
        (async_nats::jetstream::stream::DiscardPolicy::New, false),
    ] {
        let tag = unique("l");
        let stream = format!("T{tag}");
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("t{tag}.>")],
                duplicate_window: Duration::from_secs(900),
                max_age: if warned {
                    Duration::from_secs(3600)
                } else {
                    Duration::ZERO
                },
                max_messages: 1000,
                discard,
                // Kept only while a consumer wants it: warned about too.
                retention: if warned {
                    async_nats::jetstream::stream::RetentionPolicy::Limits
                } else {
                    async_nats::jetstream::stream::RetentionPolicy::Interest
                },
                ..Default::default()
            })
            .await
            .unwrap();
        let mut env = gateway_env(&dir.0, &tag, &nats_url);
        env.push(("CLINK_NATS_STREAM".into(), stream.clone()));
        env.push((
            "CLINK_NATS_SUBJECT".into(),
            format!("t{tag}.{{account}}.{{type}}"),
        ));
        let finished = started_and_stopped(env).await;
        assert_eq!(finished.code, Some(0), "{finished:?}");
        for said in [
            "warning: it removes every message 3600 s after it is kept, read or not (max_age)",
            "warning: it removes its oldest messages, read or not, once it is full (max_msgs 1000)",
        ] {
            assert_eq!(
                finished
                    .stderr
                    .contains(&format!("the stream {stream}: {said}")),
                warned,
                "{discard:?}: {said}: {finished:?}"
            );
        }
        let interest = format!(
            "the stream {stream}: warning: it keeps a message only while a consumer wants its \
             subject (retention interest)"
        );
        assert_eq!(finished.stderr.contains(&interest), !warned, "{finished:?}");
        let _ = jetstream.delete_stream(&stream).await;
    }
}
