//! A fake of Clink's merchant REST API (`/work/shared/clink-api.md`) on a
//! loopback port, for the tests of the crate's API client.
//!
//! [`FakeApi::start`] serves, under `http://127.0.0.1:PORT/api/`:
//!
//! - the object reads (`GET order/{id}`, `refund/{id}`, `subscription/{id}`,
//!   `subscription/invoice/{id}`, `checkout/session/{id}`) of what a test
//!   stored with [`FakeApi::put_object`], and the order list (`GET order`);
//! - the webhook endpoint API (§5): events, list, get, create, update,
//!   enable, disable, delete, rotate-secret and ensure, with signing secrets
//!   the test can read back with [`FakeApi::endpoint_secret`].
//!
//! Every request must carry an `X-API-KEY` the test accepted with
//! [`FakeApi::accept_key`]; the refusal takes either shape the reference
//! allows ([`AuthFailure`]). A test can make the next requests to a path
//! fail ([`FakeApi::fail_next`]), change the `data` of the next answers
//! to a path ([`FakeApi::patch_next`]) or the whole answer
//! ([`FakeApi::patch_answer_next`]), hold the next answer to a path
//! until the test releases it ([`FakeApi::hold_next`]), slow every answer
//! down ([`FakeApi::set_delay`]), and read every request afterwards
//! ([`FakeApi::requests`], [`FakeApi::count`]).
//!
//! The order of checks for each request: it is recorded, then its key is
//! checked, then a programmed failure is taken, then the route answers
//! (after the delay), then a programmed patch changes that answer, then a
//! hold keeps it until released. Answers the reference does not describe are plain
//! text: `404 Not Found` for an unknown path or object, `405 Method Not
//! Allowed` for a known path with another method, `400 Bad Request` for a
//! body or query the fake cannot read.
//!
//! The server runs while any clone of its [`FakeApi`] handle lives: when the
//! last one is dropped it stops accepting and closes every connection,
//! including those a [`Failure::Hang`] holds open.

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

/// The path every route is under.
const BASE_PATH: &str = "/api/";

/// What [`FakeApi`] answers a request that carries no accepted key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum AuthFailure {
    /// HTTP 401, `content-type: text/plain`, body `Unauthorized` (the
    /// OpenAPI file's shape).
    #[default]
    HttpText,
    /// HTTP 200 with the envelope `{"code":401,"msg":"invalid apiKey"}` (the
    /// CLI's test fixture's shape).
    Envelope,
}

/// A failure [`FakeApi::fail_next`] programs for the next requests to a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// That HTTP status, with the text body `upstream error`. A number that
    /// is not a status answers 500.
    Status(u16),
    /// HTTP 429 with `Retry-After: retry_after_secs`.
    RateLimited {
        /// The `Retry-After` header's value, in seconds.
        retry_after_secs: u64,
    },
    /// HTTP 200 with the envelope `{"code":429,"msg":"Too Many Requests"}`
    /// and `Retry-After: retry_after_secs`.
    RateLimitedEnvelope {
        /// The `Retry-After` header's value, in seconds.
        retry_after_secs: u64,
    },
    /// HTTP 200 with the envelope `{"code":code,"msg":msg}` and no `data`.
    Envelope {
        /// The envelope's `code`.
        code: i64,
        /// The envelope's `msg`.
        msg: String,
    },
    /// That HTTP status (500 for a number that is not one) with `body` as
    /// a JSON answer (`content-type: application/json`), in place of what
    /// the route would do: nothing changes. For answers in shapes the
    /// routes never give (a refusal whose `code` is no number, a refusal
    /// that carries a secret).
    Json {
        /// The status.
        status: u16,
        /// The body, sent as it is.
        body: String,
    },
    /// No answer at all: the connection stays open until the server stops
    /// (its last handle is dropped, or the test's runtime ends). Other
    /// connections are served meanwhile.
    Hang,
}

/// A request as [`FakeApi`] received it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    /// The method, as `GET`, `POST`, ...
    pub(crate) method: String,
    /// The path after `/api/`, without the query and still percent-encoded
    /// (`order/ord%2F1`). A path outside `/api/` is kept whole, with its
    /// leading `/`.
    pub(crate) path: String,
    /// The query string, without the `?`, if there was one.
    pub(crate) query: Option<String>,
    /// Every header the request carried.
    pub(crate) headers: HeaderMap,
    /// The whole body (empty if it could not be read).
    pub(crate) body: Bytes,
    /// When the request's head and body had arrived.
    pub(crate) at: Instant,
}

/// A handle on a running fake API. Clones share the same server and state;
/// the server stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct FakeApi {
    state: Arc<State>,
    addr: SocketAddr,
    /// Dropping the last clone closes the channel, which stops the server.
    _running: Arc<watch::Sender<()>>,
}

impl FakeApi {
    /// Binds `127.0.0.1:0` and serves the fake on the current tokio runtime,
    /// over HTTP/1.1 with keep-alive. No key is accepted until
    /// [`accept_key`](Self::accept_key).
    pub(crate) async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port to bind");
        let addr = listener.local_addr().expect("a bound listener's address");
        let state = Arc::new(State::default());
        let (running, stopped) = watch::channel(());
        tokio::spawn(accept_loop(listener, Arc::clone(&state), stopped));
        FakeApi {
            state,
            addr,
            _running: Arc::new(running),
        }
    }

    /// The address the server listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's base URL, `http://127.0.0.1:PORT/api/`.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}{BASE_PATH}", self.addr)
    }

    /// Accepts `key` as an `X-API-KEY` from now on (next to any accepted
    /// before).
    pub(crate) fn accept_key(&self, key: &str) {
        let mut data = self.state.data();
        if !data.keys.iter().any(|known| known == key) {
            data.keys.push(key.to_owned());
        }
    }

    /// Stops accepting `key` (a rolled or deleted key).
    pub(crate) fn revoke_key(&self, key: &str) {
        self.state.data().keys.retain(|known| known != key);
    }

    /// How requests without an accepted key are refused from now on
    /// (initially [`AuthFailure::HttpText`]).
    pub(crate) fn set_auth_failure(&self, failure: AuthFailure) {
        self.state.data().auth_failure = failure;
    }

    /// Stores `data` as the object at `path`, such as `"order/ord_1"` or
    /// `"subscription/invoice/inv_1"` (the path after `/api/`, with the id
    /// not encoded), replacing what was there. Orders (`"order/..."`) are
    /// listed by `GET order` in the order they were first stored.
    pub(crate) fn put_object(&self, path: &str, data: Value) {
        let path = path.trim_start_matches('/');
        let mut state = self.state.data();
        match state.objects.iter_mut().find(|(known, _)| known == path) {
            Some((_, stored)) => *stored = data,
            None => state.objects.push((path.to_owned(), data)),
        }
    }

    /// Makes the next `times` requests whose path (after `/api/`, as sent)
    /// starts with `path_prefix` fail with `failure`, once their key has
    /// been accepted. Failures programmed for the same requests are taken
    /// in the order they were programmed.
    pub(crate) fn fail_next(&self, path_prefix: &str, failure: Failure, times: usize) {
        if times > 0 {
            self.state.data().failures.push(Programmed {
                prefix: path_prefix.trim_start_matches('/').to_owned(),
                failure,
                remaining: times,
            });
        }
    }

    /// Changes the `data` of the next `times` answers of the routes whose
    /// path (after `/api/`, as sent) starts with `path_prefix`, once the
    /// route has done its work (a rotation has rotated): `patch` is merged
    /// into `data` as a JSON merge patch (RFC 7386), so a `null` member
    /// removes that field and any other value replaces it. For answers in
    /// shapes the reference does not promise. Programmed failures are
    /// taken first, and a failed request uses up no patch.
    pub(crate) fn patch_next(&self, path_prefix: &str, patch: Value, times: usize) {
        self.program_patch(path_prefix, patch, times, false);
    }

    /// As [`patch_next`](Self::patch_next), but `patch` is merged into the
    /// whole answer: its envelope (`code`, `msg`), or a list's top-level
    /// `total` and `rows`.
    pub(crate) fn patch_answer_next(&self, path_prefix: &str, patch: Value, times: usize) {
        self.program_patch(path_prefix, patch, times, true);
    }

    fn program_patch(&self, path_prefix: &str, patch: Value, times: usize, whole: bool) {
        if times > 0 {
            self.state.data().patches.push(Patch {
                prefix: path_prefix.trim_start_matches('/').to_owned(),
                patch,
                remaining: times,
                whole,
            });
        }
    }

    /// Holds the answer of the next request whose path (after `/api/`, as
    /// sent) starts with `path_prefix` until [`Held::release`] (or until the
    /// [`Held`] is dropped): the route has done its work (a rotation has
    /// rotated) and the answer is on its way, for a test to act in between.
    /// The request is recorded before it is held, so
    /// [`wait_for_requests`](Self::wait_for_requests) says when it is.
    pub(crate) fn hold_next(&self, path_prefix: &str) -> Held {
        let (release, held) = oneshot::channel();
        self.state
            .data()
            .holds
            .push((path_prefix.trim_start_matches('/').to_owned(), held));
        Held(release)
    }

    /// Delays every answer of the routes (not refusals of a key, nor
    /// programmed failures) by `delay`: a slow server, so that concurrent
    /// callers overlap. [`Duration::ZERO`] turns it off.
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.state.data().delay = delay;
    }

    /// Creates a webhook endpoint directly (no request is recorded), enabled,
    /// with a fresh secret, and returns its id. For tests that need an
    /// endpoint to exist before the client under test runs.
    pub(crate) fn add_endpoint(&self, url: &str, events: &[&str]) -> String {
        let mut data = self.state.data();
        let endpoint = data.new_endpoint(
            url.to_owned(),
            events.iter().map(|&event| event.to_owned()).collect(),
            None,
            true,
        );
        endpoint.id.clone()
    }

    /// The current plaintext signing secret of the endpoint `id`, for
    /// signing deliveries to it; `None` if there is no such endpoint.
    pub(crate) fn endpoint_secret(&self, id: &str) -> Option<String> {
        let data = self.state.data();
        data.endpoints
            .iter()
            .find(|endpoint| endpoint.id == id)
            .map(|endpoint| endpoint.secret.clone())
    }

    /// The id of the first endpoint at `url`, if there is one.
    pub(crate) fn endpoint_id(&self, url: &str) -> Option<String> {
        let data = self.state.data();
        data.endpoints
            .iter()
            .find(|endpoint| endpoint.url == url)
            .map(|endpoint| endpoint.id.clone())
    }

    /// Every request received so far (also refused ones), in arrival order.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.state.data().requests.clone()
    }

    /// How many requests had `method` (any case) and exactly `path` (as
    /// [`Recorded::path`]: after `/api/`, still percent-encoded).
    pub(crate) fn count(&self, method: &str, path: &str) -> usize {
        self.state
            .data()
            .requests
            .iter()
            .filter(|request| request.method.eq_ignore_ascii_case(method) && request.path == path)
            .count()
    }

    /// The most requests that were being handled at once so far (a hung
    /// request counts until the server stops).
    pub(crate) fn in_flight_max(&self) -> usize {
        self.state.in_flight_max.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have been recorded; `false` if
    /// `timeout` passed first.
    pub(crate) async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let mut received = self.state.received.subscribe();
        let reached = tokio::time::timeout(timeout, received.wait_for(|&count| count >= n))
            .await
            .is_ok_and(|waited| waited.is_ok());
        reached
    }
}

/// An answer [`FakeApi::hold_next`] holds back.
#[derive(Debug)]
pub(crate) struct Held(oneshot::Sender<()>);

impl Held {
    /// Lets the held answer go.
    pub(crate) fn release(self) {
        let _ = self.0.send(());
    }
}

/// What the server and the handles share.
#[derive(Debug)]
struct State {
    data: Mutex<Data>,
    /// How many requests have been recorded, for
    /// [`FakeApi::wait_for_requests`].
    received: watch::Sender<usize>,
    in_flight: AtomicUsize,
    in_flight_max: AtomicUsize,
}

impl Default for State {
    fn default() -> Self {
        State {
            data: Mutex::default(),
            received: watch::Sender::new(0),
            in_flight: AtomicUsize::new(0),
            in_flight_max: AtomicUsize::new(0),
        }
    }
}

impl State {
    /// The data, even after a panic elsewhere (a failing test's assertion
    /// must not turn every later request into a second panic).
    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request in flight until the guard is dropped.
    fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.in_flight_max.fetch_max(now, Ordering::SeqCst);
        InFlight(self)
    }

    fn record(&self, request: Recorded) {
        let count = {
            let mut data = self.data();
            data.requests.push(request);
            data.requests.len()
        };
        self.received.send_replace(count);
    }
}

/// A request being handled (see [`State::enter`]).
struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The fake's mutable state, behind [`State::data`].
#[derive(Debug, Default)]
struct Data {
    keys: Vec<String>,
    auth_failure: AuthFailure,
    /// Stored objects by path (`order/ord_1`), in insertion order.
    objects: Vec<(String, Value)>,
    failures: Vec<Programmed>,
    patches: Vec<Patch>,
    /// Answers to hold, by path prefix, each until its sender is used.
    holds: Vec<(String, oneshot::Receiver<()>)>,
    delay: Duration,
    /// Webhook endpoints in creation order.
    endpoints: Vec<Endpoint>,
    /// The last endpoint number given out (`whk_N`).
    endpoint_counter: u64,
    /// The last secret number given out (`whsec_fake_N_...`).
    secret_counter: u64,
    requests: Vec<Recorded>,
}

impl Data {
    /// A fresh signing secret, unlike every one before.
    fn new_secret(&mut self) -> String {
        self.secret_counter += 1;
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(self.secret_counter);
        let random = hasher.finish();
        format!("whsec_fake_{}_{random:016x}", self.secret_counter)
    }

    fn new_endpoint(
        &mut self, url: String, events: Vec<String>, description: Option<String>, enabled: bool,
    ) -> &mut Endpoint {
        self.endpoint_counter += 1;
        let secret = self.new_secret();
        let now = now_ms();
        self.endpoints.push(Endpoint {
            id: format!("whk_{}", self.endpoint_counter),
            url,
            events,
            enabled,
            secret,
            description,
            created_at: now,
            updated_at: now,
        });
        self.endpoints
            .last_mut()
            .expect("an endpoint was just pushed")
    }

    fn endpoint_mut(&mut self, id: &str) -> Option<&mut Endpoint> {
        self.endpoints.iter_mut().find(|endpoint| endpoint.id == id)
    }

    /// Takes the first hold for `path`.
    fn take_hold(&mut self, path: &str) -> Option<oneshot::Receiver<()>> {
        let index = self
            .holds
            .iter()
            .position(|(prefix, _)| path.starts_with(prefix.as_str()))?;
        Some(self.holds.remove(index).1)
    }

    /// Takes one use of the first programmed patch for `path`, and whether
    /// it is for the whole answer.
    fn take_patch(&mut self, path: &str) -> Option<(Value, bool)> {
        let index = self
            .patches
            .iter()
            .position(|programmed| path.starts_with(&programmed.prefix))?;
        let programmed = &mut self.patches[index];
        programmed.remaining -= 1;
        let patch = (programmed.patch.clone(), programmed.whole);
        if programmed.remaining == 0 {
            self.patches.remove(index);
        }
        Some(patch)
    }

    /// Takes one use of the first programmed failure for `path`.
    fn take_failure(&mut self, path: &str) -> Option<Failure> {
        let index = self
            .failures
            .iter()
            .position(|programmed| path.starts_with(&programmed.prefix))?;
        let programmed = &mut self.failures[index];
        programmed.remaining -= 1;
        let failure = programmed.failure.clone();
        if programmed.remaining == 0 {
            self.failures.remove(index);
        }
        Some(failure)
    }
}

/// A patch [`FakeApi::patch_next`] programmed, with the uses left.
#[derive(Debug)]
struct Patch {
    prefix: String,
    patch: Value,
    remaining: usize,
    /// Merged into the whole answer, not its `data`.
    whole: bool,
}

/// A failure [`FakeApi::fail_next`] programmed, with the uses left.
#[derive(Debug)]
struct Programmed {
    prefix: String,
    failure: Failure,
    remaining: usize,
}

/// A webhook endpoint.
#[derive(Debug, Clone)]
struct Endpoint {
    id: String,
    url: String,
    events: Vec<String>,
    enabled: bool,
    secret: String,
    description: Option<String>,
    created_at: u64,
    updated_at: u64,
}

impl Endpoint {
    /// The endpoint's JSON, with the plaintext secret only if `plaintext`.
    fn json(&self, plaintext: bool) -> Value {
        let tail = &self.secret[self.secret.len().saturating_sub(4)..];
        let plaintext = plaintext.then_some(self.secret.as_str());
        json!({
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "enabled": self.enabled,
            "signingSecret": plaintext,
            "maskedSigningSecret": format!("whsec_...{tail}"),
            "description": self.description,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        })
    }

    /// Applies `fields`; whether anything changed.
    fn apply(&mut self, fields: EndpointFields) -> bool {
        let before = (
            self.url.clone(),
            self.events.clone(),
            self.description.clone(),
            self.enabled,
        );
        if let Some(url) = fields.url {
            self.url = url;
        }
        if let Some(events) = fields.events {
            self.events = events;
        }
        if let Some(description) = fields.description {
            self.description = description.as_str().map(str::to_owned);
        }
        if let Some(enabled) = fields.enabled {
            self.enabled = enabled;
        }
        let changed = before
            != (
                self.url.clone(),
                self.events.clone(),
                self.description.clone(),
                self.enabled,
            );
        self.updated_at = now_ms();
        changed
    }

    fn rotate(&mut self, secret: String) {
        self.secret = secret;
        self.updated_at = now_ms();
    }
}

/// The endpoint fields of a create, update or ensure body; `None` where the
/// body leaves a field out.
#[derive(Debug, Default)]
struct EndpointFields {
    url: Option<String>,
    events: Option<Vec<String>>,
    /// A string or `null`.
    description: Option<Value>,
    enabled: Option<bool>,
}

impl EndpointFields {
    /// Reads the fields of `body`; `None` if one has the wrong type.
    fn parse(body: &Map<String, Value>) -> Option<EndpointFields> {
        let mut fields = EndpointFields::default();
        if let Some(url) = body.get("url") {
            fields.url = Some(url.as_str()?.to_owned());
        }
        if let Some(events) = body.get("events") {
            let events = events
                .as_array()?
                .iter()
                .map(|event| event.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()?;
            fields.events = Some(events);
        }
        if let Some(description) = body.get("description") {
            if !(description.is_string() || description.is_null()) {
                return None;
            }
            fields.description = Some(description.clone());
        }
        if let Some(enabled) = body.get("enabled") {
            fields.enabled = Some(enabled.as_bool()?);
        }
        Some(fields)
    }

    /// A new endpoint's values: `url` is required, `events` default to
    /// none, `enabled` to `true`.
    fn create(self, data: &mut Data) -> Option<&mut Endpoint> {
        let url = self.url?;
        let description = self.description.and_then(|d| d.as_str().map(str::to_owned));
        Some(data.new_endpoint(
            url,
            self.events.unwrap_or_default(),
            description,
            self.enabled.unwrap_or(true),
        ))
    }
}

/// The event catalog `GET webhook/events` answers (§5), in code order.
const EVENTS: &[&str] = &[
    "order.created",
    "order.succeeded",
    "order.failed",
    "refund.created",
    "refund.succeeded",
    "refund.failed",
    "subscription.created",
    "subscription.trialing",
    "subscription.activated",
    "subscription.incomplete_expired",
    "subscription.past_due",
    "subscription.cancelled",
    "invoice.open",
    "invoice.paid",
    "invoice.void",
    "order.next_action",
    "subscription.updated.plan_changed",
    "subscription.updated.plan_change_canceled",
    "subscription.updated.renewed",
    "subscription.updated.cancel_at_period_end_set",
    "subscription.updated.cancel_at_period_end_revoked",
    "session.complete",
    "session.expired",
    "dispute.created",
    "dispute.updated",
    "dispute.won",
    "dispute.lost",
    "dispute.closed",
    "customer.verify",
];

type Reply = Response<Full<Bytes>>;

/// Accepts connections until every handle is dropped.
async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stopped: watch::Receiver<()>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stopped.changed() => return,
        };
        let state = Arc::clone(&state);
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            // Dropping the connection closes it, and drops a hung request.
            tokio::select! {
                _ = connection => {}
                _ = stopped.changed() => {}
            }
        });
    }
}

async fn handle(state: &State, request: Request<Incoming>) -> Reply {
    let _in_flight = state.enter();
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes);
    let full_path = parts.uri.path();
    let path = full_path.strip_prefix(BASE_PATH).unwrap_or(full_path);
    state.record(Recorded {
        method: parts.method.as_str().to_owned(),
        path: path.to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body: body.as_ref().cloned().unwrap_or_default(),
        at: Instant::now(),
    });

    let (failure, delay) = {
        let mut data = state.data();
        let key = parts.headers.get("x-api-key");
        let accepted = key.is_some_and(|key| {
            data.keys
                .iter()
                .any(|known| known.as_bytes() == key.as_bytes())
        });
        if !accepted {
            return match data.auth_failure {
                AuthFailure::HttpText => text(StatusCode::UNAUTHORIZED, "Unauthorized"),
                AuthFailure::Envelope => envelope(&json!({"code": 401, "msg": "invalid apiKey"})),
            };
        }
        (data.take_failure(path), data.delay)
    };
    match failure {
        None => {}
        Some(Failure::Status(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return text(status, "upstream error");
        }
        Some(Failure::RateLimited { retry_after_secs }) => {
            let mut reply = text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
            reply
                .headers_mut()
                .insert(RETRY_AFTER, retry_after_secs.into());
            return reply;
        }
        Some(Failure::RateLimitedEnvelope { retry_after_secs }) => {
            let mut reply = envelope(&json!({"code": 429, "msg": "Too Many Requests"}));
            reply
                .headers_mut()
                .insert(RETRY_AFTER, retry_after_secs.into());
            return reply;
        }
        Some(Failure::Envelope { code, msg }) => {
            return envelope(&json!({"code": code, "msg": msg}));
        }
        Some(Failure::Json { status, body }) => {
            let mut reply = Response::new(Full::new(Bytes::from(body)));
            *reply.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            reply.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return reply;
        }
        Some(Failure::Hang) => std::future::pending().await,
    }

    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let Ok(body) = body else {
        return bad_request();
    };
    if !full_path.starts_with(BASE_PATH) {
        return not_found();
    }
    let reply = route(state, &parts.method, path, parts.uri.query(), &body);
    let (patch, hold) = {
        let mut data = state.data();
        (data.take_patch(path), data.take_hold(path))
    };
    let reply = match patch {
        Some((patch, whole)) => patched(reply, &patch, whole).await,
        None => reply,
    };
    if let Some(hold) = hold {
        // Released, or its `Held` dropped: either way the answer goes.
        let _ = hold.await;
    }
    reply
}

/// `reply` with `patch` merged into its envelope's `data`, or with `whole`
/// into the envelope itself; a reply that is not a JSON object is returned
/// as it was.
async fn patched(reply: Reply, patch: &Value, whole: bool) -> Reply {
    let (parts, body) = reply.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Full::new(bytes));
    };
    let mut object = Value::Object(object);
    if whole {
        merge_patch(&mut object, patch);
    } else if let Value::Object(members) = &mut object {
        merge_patch(members.entry("data").or_insert(Value::Null), patch);
    }
    let body = Bytes::from(object.to_string());
    Response::from_parts(parts, Full::new(body))
}

/// Applies `patch` to `target` as a JSON merge patch (RFC 7386).
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(object) = target {
        for (name, value) in members {
            if value.is_null() {
                object.remove(name);
            } else {
                merge_patch(object.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Answers an authenticated request for `path` (after `/api/`).
fn route(state: &State, method: &Method, path: &str, query: Option<&str>, body: &[u8]) -> Reply {
    let segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        ["order"] => only(method, &Method::GET, || list_orders(state, query)),
        ["order" | "refund" | "subscription", id]
        | ["subscription", "invoice", id]
        | ["checkout", "session", id] => only(method, &Method::GET, || {
            let prefix = &segments[..segments.len() - 1];
            get_object(state, &prefix.join("/"), id)
        }),
        ["webhook", "events"] => only(method, &Method::GET, || {
            let events: Vec<Value> = EVENTS
                .iter()
                .zip(1..)
                .map(|(name, code)| {
                    json!({"name": name, "code": code, "description": format!("Occurs on {name}.")})
                })
                .collect();
            ok(json!({ "events": events }))
        }),
        ["webhook", "endpoints"] => match *method {
            Method::GET => list_endpoints(state, query),
            Method::POST => create_endpoint(state, body),
            _ => method_not_allowed(),
        },
        ["webhook", "endpoints", "ensure"] if method == Method::PUT => ensure_endpoint(state, body),
        ["webhook", "endpoints", id] => {
            let Some(id) = percent_decode(id, false) else {
                return bad_request();
            };
            match *method {
                Method::GET => with_endpoint(state, &id, |_, endpoint| ok(endpoint.json(false))),
                Method::PATCH => update_endpoint(state, &id, body),
                Method::DELETE => {
                    let mut data = state.data();
                    let before = data.endpoints.len();
                    data.endpoints.retain(|endpoint| endpoint.id != id);
                    if data.endpoints.len() == before {
                        not_found()
                    } else {
                        ok(Value::Null)
                    }
                }
                _ => method_not_allowed(),
            }
        }
        ["webhook", "endpoints", id, action @ ("enable" | "disable" | "rotate-secret")] => {
            only(method, &Method::POST, || {
                let Some(id) = percent_decode(id, false) else {
                    return bad_request();
                };
                with_endpoint(state, &id, |data, endpoint| match *action {
                    "rotate-secret" => {
                        endpoint.rotate(data.new_secret());
                        ok(endpoint.json(true))
                    }
                    _ => {
                        endpoint.enabled = *action == "enable";
                        endpoint.updated_at = now_ms();
                        ok(endpoint.json(false))
                    }
                })
            })
        }
        _ => not_found(),
    }
}

/// `answer()` if `method` is `allowed`, else 405.
fn only(method: &Method, allowed: &Method, answer: impl FnOnce() -> Reply) -> Reply {
    if method == allowed {
        answer()
    } else {
        method_not_allowed()
    }
}

fn get_object(state: &State, prefix: &str, encoded_id: &str) -> Reply {
    let Some(id) = percent_decode(encoded_id, false) else {
        return bad_request();
    };
    let key = format!("{prefix}/{id}");
    let data = state.data();
    match data.objects.iter().find(|(path, _)| *path == key) {
        Some((_, object)) => ok(object.clone()),
        None => not_found(),
    }
}

/// `GET order`: stored orders filtered by `customerId` and `subscriptionId`
/// (an empty value filters nothing), paged by `pageNum` (default 1) and
/// `pageSize` (default 20, at most 50).
fn list_orders(state: &State, query: Option<&str>) -> Reply {
    let Some(params) = query_params(query) else {
        return bad_request();
    };
    let Some((page_num, page_size)) = paging(&params, 50) else {
        return bad_request();
    };
    let customer = param(&params, "customerId").filter(|value| !value.is_empty());
    let subscription = param(&params, "subscriptionId").filter(|value| !value.is_empty());
    let data = state.data();
    let matches = |order: &Value, field: &str, wanted: Option<&str>| {
        wanted.is_none_or(|wanted| order[field].as_str() == Some(wanted))
    };
    let orders: Vec<&Value> = data
        .objects
        .iter()
        .filter(|(path, _)| path.starts_with("order/"))
        .map(|(_, order)| order)
        .filter(|order| {
            matches(order, "customerId", customer) && matches(order, "subscriptionId", subscription)
        })
        .collect();
    page(&orders, page_num, page_size)
}

/// `GET webhook/endpoints`: filtered by `enabled` (`true`/`false`) and `url`
/// (exact), paged by `pageNum` (default 1) and `pageSize` (default 20, at
/// most 100), without plaintext secrets.
fn list_endpoints(state: &State, query: Option<&str>) -> Reply {
    let Some(params) = query_params(query) else {
        return bad_request();
    };
    let Some((page_num, page_size)) = paging(&params, 100) else {
        return bad_request();
    };
    let enabled = match param(&params, "enabled") {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return bad_request(),
    };
    let url = param(&params, "url").filter(|url| !url.is_empty());
    let data = state.data();
    let rows: Vec<Value> = data
        .endpoints
        .iter()
        .filter(|endpoint| enabled.is_none_or(|enabled| endpoint.enabled == enabled))
        .filter(|endpoint| url.is_none_or(|url| endpoint.url == url))
        .map(|endpoint| endpoint.json(false))
        .collect();
    page(&rows.iter().collect::<Vec<_>>(), page_num, page_size)
}

/// `POST webhook/endpoints`: `url` is required.
fn create_endpoint(state: &State, body: &[u8]) -> Reply {
    let Some(fields) = json_object(body).as_ref().and_then(EndpointFields::parse) else {
        return bad_request();
    };
    let mut data = state.data();
    match fields.create(&mut data) {
        Some(endpoint) => ok(endpoint.json(true)),
        None => bad_request(),
    }
}

/// `PATCH webhook/endpoints/{id}`: changes the fields the body has.
fn update_endpoint(state: &State, id: &str, body: &[u8]) -> Reply {
    let Some(fields) = json_object(body).as_ref().and_then(EndpointFields::parse) else {
        return bad_request();
    };
    with_endpoint(state, id, |_, endpoint| {
        endpoint.apply(fields);
        ok(endpoint.json(false))
    })
}

/// `PUT webhook/endpoints/ensure`: creates the endpoint for `url`, or
/// updates the first with that url (rotating its secret if asked); a new
/// secret (created or rotated) is shown only with `returnSigningSecret`.
fn ensure_endpoint(state: &State, body: &[u8]) -> Reply {
    let Some(object) = json_object(body) else {
        return bad_request();
    };
    let Some(fields) = EndpointFields::parse(&object) else {
        return bad_request();
    };
    let flag = |name: &str| match object.get(name) {
        None | Some(Value::Null) => Some(false),
        Some(value) => value.as_bool(),
    };
    let (Some(return_secret), Some(rotate_if_unavailable), Some(rotate)) = (
        flag("returnSigningSecret"),
        flag("rotateSecretIfUnavailable"),
        flag("rotateSecret"),
    ) else {
        return bad_request();
    };
    let Some(url) = fields.url.clone() else {
        return bad_request();
    };
    let rotate = rotate || (return_secret && rotate_if_unavailable);

    let mut data = state.data();
    let existing = data
        .endpoints
        .iter()
        .position(|endpoint| endpoint.url == url);
    let (source, endpoint) = match existing {
        None => {
            let Some(endpoint) = fields.create(&mut data) else {
                return bad_request();
            };
            // Its secret, shown only here, only when asked for (as
            // Clink's CLI asks for it).
            ("created", endpoint.json(return_secret))
        }
        Some(index) => {
            let secret = rotate.then(|| data.new_secret());
            let endpoint = &mut data.endpoints[index];
            let changed = endpoint.apply(fields);
            match secret {
                Some(secret) => {
                    endpoint.rotate(secret);
                    let source = if changed {
                        "updated_rotated"
                    } else {
                        "rotated"
                    };
                    // A rotation shows its secret only when asked to
                    // (`returnSigningSecret`), as Clink's CLI asks for it.
                    (source, endpoint.json(return_secret))
                }
                None => ("updated", endpoint.json(false)),
            }
        }
    };
    let available = !endpoint["signingSecret"].is_null();
    let (reason, next_action) = if available {
        (None, None)
    } else {
        (
            Some("secret is only shown on create or rotation"),
            Some("rotate-secret"),
        )
    };
    ok(json!({
        "source": source,
        "endpoint": endpoint,
        "signingSecretAvailable": available,
        "signingSecretUnavailableReason": reason,
        "nextAction": next_action,
    }))
}

/// `answer(data, endpoint)` for the endpoint `id`, or 404.
fn with_endpoint(
    state: &State, id: &str, answer: impl FnOnce(&mut Data, &mut Endpoint) -> Reply,
) -> Reply {
    let mut data = state.data();
    let Some(index) = data.endpoints.iter().position(|endpoint| endpoint.id == id) else {
        return not_found();
    };
    // The endpoint is taken out while `answer` runs, so that it can also
    // use the rest of the data (a new secret).
    let mut endpoint = data.endpoints[index].clone();
    let reply = answer(&mut data, &mut endpoint);
    if let Some(slot) = data.endpoint_mut(id) {
        *slot = endpoint;
    }
    reply
}

/// The JSON object `body` holds, if it holds one.
fn json_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    }
}

/// The decoded `name=value` pairs of a query; `None` if one is not
/// decodable.
fn query_params(query: Option<&str>) -> Option<Vec<(String, String)>> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(name, true)?, percent_decode(value, true)?))
        })
        .collect()
}

/// The first value of `name`.
fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(known, _)| known == name)
        .map(|(_, value)| value.as_str())
}

/// `pageNum` (default 1, at least 1) and `pageSize` (default 20, between 1
/// and `max`); `None` if one is not a number.
fn paging(params: &[(String, String)], max: usize) -> Option<(usize, usize)> {
    let number = |name: &str, default: usize| match param(params, name) {
        None | Some("") => Some(default),
        Some(value) => value.parse::<usize>().ok(),
    };
    let page_num = number("pageNum", 1)?.max(1);
    let page_size = number("pageSize", 20)?.clamp(1, max);
    Some((page_num, page_size))
}

/// One page of `rows`, at the top level as Clink's lists answer.
fn page(rows: &[&Value], page_num: usize, page_size: usize) -> Reply {
    let start = (page_num - 1).saturating_mul(page_size);
    let shown: Vec<&Value> = rows.iter().skip(start).take(page_size).copied().collect();
    envelope(&json!({"total": rows.len(), "rows": shown, "code": 200, "msg": "success"}))
}

/// Decodes `%XX` escapes (and `+` as a space if `plus_is_space`); `None` if
/// an escape is malformed or the result is not UTF-8.
fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                decoded.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                decoded.push(b' ');
                i += 1;
            }
            byte => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// `{"code":200,"msg":"success","data":data}`.
fn ok(data: Value) -> Reply {
    let mut body = Map::new();
    body.insert("code".to_owned(), Value::from(200));
    body.insert("msg".to_owned(), Value::from("success"));
    body.insert("data".to_owned(), data);
    envelope(&Value::Object(body))
}

/// HTTP 200 with `json` as the body.
fn envelope(json: &Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(json.to_string())));
    reply.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    reply
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    reply
}

fn not_found() -> Reply {
    text(StatusCode::NOT_FOUND, "Not Found")
}

fn bad_request() -> Reply {
    text(StatusCode::BAD_REQUEST, "Bad Request")
}

fn method_not_allowed() -> Reply {
    text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

/// The fake checked through a plain HTTP client.
#[cfg(test)]
mod tests {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    use super::*;

    const KEY: &str = "sk_test_fake";

    /// Sends `method path` (after `/api/`) with `key` and `body`; the
    /// status, headers and body text.
    async fn call(
        api: &FakeApi, method: &str, path: &str, key: Option<&str>, body: Option<Value>,
    ) -> (u16, HeaderMap, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", api.base_url()));
        if let Some(key) = key {
            request = request.header("X-API-KEY", key);
        }
        let body = body.map_or_else(Bytes::new, |body| Bytes::from(body.to_string()));
        let request = request.body(Full::new(body)).unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
            .await
            .expect("the fake answered")
            .expect("the request reached the fake");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    fn parse(body: &str) -> Value {
        serde_json::from_str(body).unwrap()
    }

    #[tokio::test]
    async fn fake_api_objects_keys_and_order_lists() {
        let api = FakeApi::start().await;
        assert!(api.base_url().ends_with("/api/"));
        assert_eq!(api.addr().ip().to_string(), "127.0.0.1");
        api.accept_key(KEY);
        api.put_object(
            "order/ord/1",
            json!({"orderId": "ord/1", "customerId": "c1"}),
        );
        api.put_object(
            "order/ord_2",
            json!({"orderId": "ord_2", "customerId": "c2", "subscriptionId": "s"}),
        );
        api.put_object(
            "order/ord_3",
            json!({"orderId": "ord_3", "customerId": "c1"}),
        );
        api.put_object("subscription/invoice/inv_1", json!({"invoiceId": "inv_1"}));

        let (status, _, body) = call(&api, "GET", "order/ord%2F1", Some(KEY), None).await;
        assert_eq!(
            (status, parse(&body)["data"]["orderId"].clone()),
            (200, json!("ord/1"))
        );
        let (status, _, body) =
            call(&api, "GET", "subscription/invoice/inv_1", Some(KEY), None).await;
        assert_eq!((status, parse(&body)["code"].clone()), (200, json!(200)));
        let (status, _, body) = call(&api, "GET", "refund/nope", Some(KEY), None).await;
        assert_eq!((status, body.as_str()), (404, "Not Found"));

        let (_, _, body) = call(
            &api,
            "GET",
            "order?customerId=c1&pageSize=1&pageNum=2",
            Some(KEY),
            None,
        )
        .await;
        let page = parse(&body);
        assert_eq!(
            (page["total"].clone(), page["rows"][0]["orderId"].clone()),
            (json!(2), json!("ord_3"))
        );
        let (_, _, body) = call(&api, "GET", "order?subscriptionId=s", Some(KEY), None).await;
        assert_eq!(
            parse(&body)["rows"],
            json!([{"orderId": "ord_2", "customerId": "c2", "subscriptionId": "s"}])
        );

        let (status, headers, body) = call(&api, "GET", "order/ord_3", None, None).await;
        assert_eq!((status, body.as_str()), (401, "Unauthorized"));
        assert!(headers[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        api.set_auth_failure(AuthFailure::Envelope);
        api.revoke_key(KEY);
        let (status, _, body) = call(&api, "GET", "order/ord_3", Some(KEY), None).await;
        assert_eq!(
            (status, parse(&body)),
            (200, json!({"code": 401, "msg": "invalid apiKey"}))
        );

        assert!(api.wait_for_requests(7, Duration::from_secs(30)).await);
        assert_eq!(api.count("GET", "order/ord%2F1"), 1);
        assert_eq!(api.count("get", "order/ord_3"), 2);
        let requests = api.requests();
        assert_eq!(
            requests[3].query.as_deref(),
            Some("customerId=c1&pageSize=1&pageNum=2")
        );
        assert_eq!(requests[0].headers["x-api-key"], KEY);
        assert!(requests[0].body.is_empty() && requests[0].at <= requests[1].at);
    }

    #[tokio::test]
    async fn fake_api_webhook_endpoints() {
        let api = FakeApi::start().await;
        api.accept_key(KEY);
        let seeded = api.add_endpoint("https://a.example/hook", &["order.succeeded"]);
        let (_, _, body) = call(&api, "GET", "webhook/events", Some(KEY), None).await;
        assert_eq!(parse(&body)["data"]["events"][0]["code"], json!(1));

        let create =
            json!({"url": "https://b.example/hook", "events": ["invoice.paid"], "enabled": true});
        let (status, _, body) =
            call(&api, "POST", "webhook/endpoints", Some(KEY), Some(create)).await;
        let created = parse(&body)["data"].clone();
        let id = created["id"].as_str().unwrap().to_owned();
        assert_eq!(status, 200);
        assert_eq!(
            created["signingSecret"].as_str(),
            api.endpoint_secret(&id).as_deref()
        );

        let (_, _, body) = call(
            &api,
            "GET",
            "webhook/endpoints?enabled=true&url=https%3A%2F%2Fb.example%2Fhook",
            Some(KEY),
            None,
        )
        .await;
        let list = parse(&body);
        assert_eq!(
            (
                list["total"].clone(),
                list["rows"][0]["signingSecret"].clone()
            ),
            (json!(1), Value::Null)
        );
        assert!(list["rows"][0]["maskedSigningSecret"].is_string());

        let patch = json!({"enabled": false, "description": "d"});
        let (_, _, body) = call(
            &api,
            "PATCH",
            &format!("webhook/endpoints/{id}"),
            Some(KEY),
            Some(patch),
        )
        .await;
        assert_eq!(parse(&body)["data"]["enabled"], json!(false));
        let (_, _, body) = call(
            &api,
            "POST",
            &format!("webhook/endpoints/{id}/enable"),
            Some(KEY),
            None,
        )
        .await;
        assert_eq!(parse(&body)["data"]["enabled"], json!(true));
        let old = api.endpoint_secret(&id).unwrap();
        let (_, _, body) = call(
            &api,
            "POST",
            &format!("webhook/endpoints/{id}/rotate-secret"),
            Some(KEY),
            None,
        )
        .await;
        let rotated = parse(&body)["data"]["signingSecret"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_ne!(rotated, old);
        assert_eq!(api.endpoint_secret(&id), Some(rotated));

        let ensure = json!({
            "url": "https://a.example/hook",
            "events": ["order.succeeded"],
            "enabled": true,
        });
        let (_, _, body) = call(
            &api,
            "PUT",
            "webhook/endpoints/ensure",
            Some(KEY),
            Some(ensure),
        )
        .await;
        let ensured = parse(&body)["data"].clone();
        assert_eq!(
            (ensured["source"].clone(), ensured["nextAction"].clone()),
            (json!("updated"), json!("rotate-secret"))
        );
        assert_eq!(ensured["endpoint"]["id"].as_str(), Some(seeded.as_str()));
        let ensure = json!({
            "url": "https://a.example/hook",
            "events": [],
            "enabled": true,
            "rotateSecret": true,
        });
        let (_, _, body) = call(
            &api,
            "PUT",
            "webhook/endpoints/ensure",
            Some(KEY),
            Some(ensure),
        )
        .await;
        // Rotated, but not asked for the secret: withheld.
        let ensured = parse(&body)["data"].clone();
        assert_eq!(ensured["source"], json!("updated_rotated"));
        assert_eq!(ensured["endpoint"]["signingSecret"], Value::Null);
        assert_eq!(ensured["signingSecretAvailable"], false);
        let ensure = json!({
            "url": "https://a.example/hook",
            "events": [],
            "enabled": true,
            "rotateSecret": true,
            "returnSigningSecret": true,
        });
        let before = api.endpoint_secret(&seeded);
        let (_, _, body) = call(
            &api,
            "PUT",
            "webhook/endpoints/ensure",
            Some(KEY),
            Some(ensure),
        )
        .await;
        let ensured = parse(&body)["data"].clone();
        assert_eq!(ensured["source"], json!("rotated"));
        assert_ne!(api.endpoint_secret(&seeded), before);
        assert_eq!(
            ensured["endpoint"]["signingSecret"].as_str(),
            api.endpoint_secret(&seeded).as_deref()
        );
        let ensure = json!({"url": "https://c.example/hook", "events": [], "enabled": true});
        let (_, _, body) = call(
            &api,
            "PUT",
            "webhook/endpoints/ensure",
            Some(KEY),
            Some(ensure),
        )
        .await;
        // Created, but not asked for the secret: withheld.
        assert_eq!(parse(&body)["data"]["source"], json!("created"));
        assert_eq!(
            parse(&body)["data"]["endpoint"]["signingSecret"],
            Value::Null
        );

        let (status, _, body) = call(
            &api,
            "DELETE",
            &format!("webhook/endpoints/{id}"),
            Some(KEY),
            None,
        )
        .await;
        assert_eq!((status, parse(&body)["data"].clone()), (200, Value::Null));
        assert_eq!(api.endpoint_secret(&id), None);
        let (status, _, _) = call(
            &api,
            "GET",
            &format!("webhook/endpoints/{id}"),
            Some(KEY),
            None,
        )
        .await;
        assert_eq!(status, 404);
        let (status, _, body) = call(&api, "POST", "webhook/endpoints", Some(KEY), None).await;
        assert_eq!((status, body.as_str()), (400, "Bad Request"));
    }

    #[tokio::test]
    async fn fake_api_patches_the_data_of_the_next_answers() {
        let api = FakeApi::start().await;
        api.accept_key(KEY);
        api.put_object(
            "refund/rfd_1",
            json!({"refundId": "rfd_1", "status": "created"}),
        );
        api.fail_next("refund/", Failure::Status(503), 1);
        api.patch_next(
            "refund/",
            json!({"status": null, "refundAmount": 1.5, "metadata": {"a": "b"}}),
            1,
        );
        let (status, _, _) = call(&api, "GET", "refund/rfd_1", Some(KEY), None).await;
        assert_eq!(status, 503, "a failure first, using up no patch");
        let (status, _, body) = call(&api, "GET", "refund/rfd_1", Some(KEY), None).await;
        assert_eq!(status, 200);
        assert_eq!(
            parse(&body),
            json!({"code": 200, "msg": "success",
                   "data": {"refundId": "rfd_1", "refundAmount": 1.5, "metadata": {"a": "b"}}})
        );
        let (_, _, body) = call(&api, "GET", "refund/rfd_1", Some(KEY), None).await;
        assert_eq!(parse(&body)["data"]["status"], json!("created"), "used up");

        // The whole answer: its envelope.
        api.patch_answer_next("refund/", json!({"code": "200", "msg": null}), 1);
        let (status, _, body) = call(&api, "GET", "refund/rfd_1", Some(KEY), None).await;
        assert_eq!(status, 200);
        assert_eq!(
            parse(&body),
            json!({"code": "200", "data": {"refundId": "rfd_1", "status": "created"}})
        );
    }

    #[tokio::test]
    async fn fake_api_holds_an_answer_until_released() {
        let api = FakeApi::start().await;
        api.accept_key(KEY);
        api.put_object("refund/rfd_1", json!({"refundId": "rfd_1"}));
        let held = api.hold_next("refund/");
        let first = {
            let api = api.clone();
            tokio::spawn(async move { call(&api, "GET", "refund/rfd_1", Some(KEY), None).await })
        };
        assert!(api.wait_for_requests(1, Duration::from_secs(30)).await);
        // Only that answer is held: the next request is answered meanwhile.
        let (status, _, _) = call(&api, "GET", "refund/rfd_1", Some(KEY), None).await;
        assert_eq!(status, 200);
        assert!(!first.is_finished());
        held.release();
        let (status, _, body) = first.await.unwrap();
        assert_eq!(
            (status, parse(&body)["data"]["refundId"].clone()),
            (200, json!("rfd_1"))
        );
    }

    #[tokio::test]
    async fn fake_api_failures_delay_and_hangs() {
        let api = FakeApi::start().await;
        api.accept_key(KEY);
        api.put_object("refund/rfd_1", json!({"refundId": "rfd_1"}));
        api.fail_next("refund/", Failure::Status(503), 1);
        api.fail_next(
            "refund/",
            Failure::RateLimited {
                retry_after_secs: 7,
            },
            1,
        );
        api.fail_next(
            "refund/",
            Failure::Envelope {
                code: 500,
                msg: "busy".to_owned(),
            },
            1,
        );
        let (status, _, body) = call(&api, "GET", "refund/rfd_1", Some(KEY), None).await;
        assert_eq!((status, body.as_str()), (503, "upstream error"));
        let (status, headers, _) = call(&api, "GET", "refund/rfd_1", Some(KEY), None).await;
        assert_eq!((status, headers[RETRY_AFTER].to_str().unwrap()), (429, "7"));
        let (_, _, body) = call(&api, "GET", "refund/rfd_1", Some(KEY), None).await;
        assert_eq!(parse(&body), json!({"code": 500, "msg": "busy"}));
        api.fail_next(
            "refund/",
            Failure::Json {
                status: 409,
                body: r#"{"code":"NO"}"#.to_owned(),
            },
            1,
        );
        let (status, headers, body) = call(&api, "GET", "refund/rfd_1", Some(KEY), None).await;
        assert_eq!((status, body.as_str()), (409, r#"{"code":"NO"}"#));
        assert_eq!(headers[CONTENT_TYPE], "application/json");

        api.fail_next("refund/", Failure::Hang, 1);
        let hung = {
            let api = api.clone();
            tokio::spawn(async move { call(&api, "GET", "refund/rfd_1", Some(KEY), None).await })
        };
        assert!(api.wait_for_requests(5, Duration::from_secs(30)).await);
        api.set_delay(Duration::from_millis(20));
        let (status, _, _) = call(&api, "GET", "refund/rfd_1", Some(KEY), None).await;
        assert_eq!(status, 200);
        assert!(!hung.is_finished());
        assert!(api.in_flight_max() >= 2);
        hung.abort();
    }
}
