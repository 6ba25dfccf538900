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
    /// Runs that answered 500 because the test's handler chose to fail.
    pub(crate) failed: u32,
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

    /// How many runs, of every id, the handler failed on purpose.
    pub(crate) fn total_failed(&self) -> u32 {
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.values().map(|runs| runs.failed).sum()
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
            self.ledger.with(&id, |runs| runs.failed += 1);
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
    store: Arc<dyn IdempotencyStore>, prefix: &str, lease: Duration, handler: Handler,
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
    /// Answers of 5xx other than 503 that the layer wrote itself (a JSON
    /// body with an error code), as `status code`: the test handler's own
    /// 500 has an empty body.
    layer_failures: Mutex<BTreeMap<String, u32>>,
    acknowledged: AtomicU32,
}

impl Statuses {
    fn note(&self, status: u16, error_code: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry(status).or_default() += 1;
        if (200..300).contains(&status) {
            self.acknowledged.fetch_add(1, Ordering::Relaxed);
        }
        if status >= 500 && status != 503 && !error_code.is_empty() {
            let mut failures = self
                .layer_failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *failures
                .entry(format!("{status} {error_code}"))
                .or_default() += 1;
        }
    }

    /// The 5xx answers (503 aside) that the test handler did not give.
    pub(crate) fn layer_failures(&self) -> BTreeMap<String, u32> {
        self.layer_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
    let (status, retry_after, _) = send_noting_outcome(addr, id, statuses).await;
    (status, retry_after)
}

/// [`send_once`], also returning the layer's outcome code (`handled`,
/// `duplicate`, an error code; empty when the handler wrote the body).
pub(crate) async fn send_noting_outcome(
    addr: SocketAddr, id: &str, statuses: &Statuses,
) -> (u16, Duration, String) {
    let reply = deliver(addr, &event(id, "order.succeeded", "{}")).await;
    statuses.note(reply.status, reply.error_code());
    let outcome = reply.json["outcome"]
        .as_str()
        .unwrap_or_else(|| reply.error_code())
        .to_owned();
    let retry_after = reply
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    (reply.status, retry_after, outcome)
}

/// One of Clink's senders, its schedule compressed: delivers event `id`,
/// starting at receiver `first` and taking the receivers in turn, until an
/// answer is `2xx`. Any other answer is a failed attempt, retried after a
/// backoff that doubles from 25 ms up to 400 ms (Clink's own waits are
/// minutes to hours, and it does not read `Retry-After`). Gives up after
/// `max_handler_failures` answers of 5xx other than 503 (a handler that keeps
/// failing) or at `deadline`. Whether it got a `2xx`.
pub(crate) async fn clink_sender(
    receivers: &[SocketAddr], first: usize, id: &str, statuses: &Statuses,
    max_handler_failures: u32, deadline: Instant,
) -> bool {
    let mut backoff = Duration::from_millis(25);
    let mut handler_failures = 0;
    for attempt in first.. {
        if Instant::now() >= deadline {
            return false;
        }
        let addr = receivers[attempt % receivers.len()];
        let (status, _) = send_once(addr, id, statuses).await;
        if (200..300).contains(&status) {
            return true;
        }
        if status >= 500 && status != 503 {
            handler_failures += 1;
            if handler_failures >= max_handler_failures {
                return false;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(400));
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
