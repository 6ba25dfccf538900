//! Receivers over real HTTP in front of a shared store, a handler that keeps
//! a ledger of its runs, and a sender that retries the way Clink does.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use clink_webhooks::layer::VerifiedBody;
use clink_webhooks::store::{Claim, IdempotencyStore};
use clink_webhooks::{ClinkLayer, VerifiedEvent, Verifier};
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::Layer;

use crate::support::loopback::{deliver, event, serve, SECRET};

/// What the handler did for one event id.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Runs {
    pub(crate) started: u32,
    pub(crate) succeeded: u32,
    running: u32,
    /// Whether a run started while another run of the same id was going.
    pub(crate) overlapped: bool,
}

/// The handlers' record, shared by every receiver of a test.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    runs: Mutex<HashMap<String, Runs>>,
}

impl Ledger {
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Runs) -> T) -> T {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        f(runs.entry(id.to_owned()).or_default())
    }

    pub(crate) fn runs(&self, id: &str) -> Runs {
        self.with(id, |runs| *runs)
    }

    pub(crate) fn total_started(&self) -> u32 {
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.values().map(|runs| runs.started).sum()
    }

    pub(crate) fn any_overlap(&self) -> Option<String> {
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.iter()
            .find(|(_, runs)| runs.overlapped)
            .map(|(id, _)| id.clone())
    }
}

/// Marks a run as going until dropped, which also happens when the layer
/// cuts the handler off at its deadline.
struct Running {
    ledger: Arc<Ledger>,
    id: String,
}

impl Running {
    fn start(ledger: &Arc<Ledger>, id: &str) -> (Self, u32) {
        let attempt = ledger.with(id, |runs| {
            runs.started += 1;
            runs.running += 1;
            runs.overlapped |= runs.running > 1;
            runs.started
        });
        let running = Self {
            ledger: Arc::clone(ledger),
            id: id.to_owned(),
        };
        (running, attempt)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.ledger.with(&self.id, |runs| runs.running -= 1);
    }
}

/// How the test handler behaves.
#[derive(Clone)]
pub(crate) struct Handler {
    pub(crate) ledger: Arc<Ledger>,
    /// How long each run takes.
    pub(crate) work: Duration,
    /// Whether run number `attempt` (from 1) of event `id` fails with 500.
    pub(crate) fails: fn(id: &str, attempt: u32) -> bool,
}

impl Handler {
    pub(crate) fn reliable(ledger: &Arc<Ledger>, work: Duration) -> Self {
        Self {
            ledger: Arc::clone(ledger),
            work,
            fails: |_, _| false,
        }
    }

    async fn run(self, request: Request<VerifiedBody>) -> Response<Full<Bytes>> {
        let Some(verified) = request.extensions().get::<VerifiedEvent>() else {
            return status(500);
        };
        let id = verified.event().id().to_owned();
        let (running, attempt) = Running::start(&self.ledger, &id);
        tokio::time::sleep(self.work).await;
        if (self.fails)(&id, attempt) {
            return status(500);
        }
        self.ledger.with(&id, |runs| runs.succeeded += 1);
        drop(running);
        status(200)
    }
}

fn status(code: u16) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = http::StatusCode::from_u16(code).unwrap_or_default();
    response
}

/// A receiver on its own loopback port: the layer over `store` with `lease`,
/// in front of `handler`.
pub(crate) async fn receiver(
    store: Arc<dyn IdempotencyStore>,
    prefix: &str,
    lease: Duration,
    handler: Handler,
) -> SocketAddr {
    let verifier = Verifier::new(SECRET).expect("test secret");
    let layer = ClinkLayer::new(verifier)
        .store(store)
        .key_prefix(prefix)
        .and_then(|layer| layer.lease(lease))
        .expect("the test's layer settings are valid");
    let service = layer.layer(tower::service_fn(move |request| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.run(request).await) }
    }));
    serve(service).await
}

/// The key the layer uses for a test event (which carries no `livemode`).
pub(crate) fn layer_key(prefix: &str, id: &str) -> String {
    format!("{prefix}:any:{id}")
}

/// A key prefix unique to one test in one run.
pub(crate) fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{test}-{}-{nanos}", std::process::id())
}

/// Every status the receivers answered, counted.
#[derive(Debug, Default)]
pub(crate) struct Statuses {
    counts: Mutex<BTreeMap<u16, u32>>,
    acknowledged: AtomicU32,
}

impl Statuses {
    fn note(&self, status: u16) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry(status).or_default() += 1;
        if (200..300).contains(&status) {
            self.acknowledged.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn count(&self, status: u16) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&status).copied().unwrap_or(0)
    }

    pub(crate) fn acknowledged(&self) -> u32 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// The statuses seen other than those in `allowed`.
    pub(crate) fn unexpected(&self, allowed: &[u16]) -> BTreeMap<u16, u32> {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts
            .iter()
            .filter(|(status, _)| !allowed.contains(status))
            .map(|(status, count)| (*status, *count))
            .collect()
    }
}

/// Sends one delivery of event `id` and notes the status.
pub(crate) async fn send_once(addr: SocketAddr, id: &str, statuses: &Statuses) -> (u16, Duration) {
    let reply = deliver(addr, &event(id, "order.succeeded", "{}")).await;
    statuses.note(reply.status);
    let retry_after = reply
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    (reply.status, retry_after)
}

/// Clink's schedule, compressed: the tests wait a tenth of what it would.
const TIME_SCALE: u32 = 10;

/// Delivers event `id` like Clink: to the receivers in turn until one
/// answers 2xx, waiting out `Retry-After` (scaled down) on 409 and 503 and a
/// short backoff on other failures. Gives up after `max_failures` handler
/// failures (5xx other than 503) or at `deadline`. Whether it got a 2xx.
pub(crate) async fn deliver_until_acknowledged(
    receivers: &[SocketAddr],
    id: &str,
    statuses: &Statuses,
    max_failures: u32,
    deadline: Instant,
) -> bool {
    let mut failures = 0;
    for attempt in 0.. {
        if Instant::now() >= deadline {
            return false;
        }
        let addr = receivers[attempt % receivers.len()];
        let (status, retry_after) = send_once(addr, id, statuses).await;
        match status {
            200..=299 => return true,
            409 | 503 => tokio::time::sleep(retry_after / TIME_SCALE).await,
            _ => {
                failures += 1;
                if failures >= max_failures {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    false
}

/// Polls `done` every 10 ms until it holds; fails the test after `patience`.
pub(crate) async fn wait_for(what: &str, patience: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < patience, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the store holds `key` as completed. Claims the key when it is
/// free, so use it only once the test is over with the key.
pub(crate) async fn is_completed(store: &dyn IdempotencyStore, key: &str) -> bool {
    matches!(
        store.claim(key, Duration::from_secs(1)).await,
        Ok(Claim::Completed)
    )
}
