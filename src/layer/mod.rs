//! [`ClinkLayer`]: a tower layer that verifies, deduplicates and hands on Clink deliveries.
//!
//! One delivery takes this path:
//!
//! 1. **Method**: anything but `POST` gets `405`.
//! 2. **Headers**: `X-Clink-Timestamp` and `X-Clink-Signature` must be present
//!    and well formed (`400`), the timestamp within tolerance (`401`).
//! 3. **Body**: a `Content-Length` over the limit gets `413` before a byte is
//!    read; a streamed body is cut off with `413` the moment it crosses the
//!    limit. The HMAC is computed while the body streams in.
//! 4. **Signature**: checked in constant time against every active key (`401`).
//! 5. **Envelope**: the verified body must be an event with an `id` and a `type` (`400`).
//! 6. **Claim**: the event id is claimed in the [`IdempotencyStore`]. Already
//!    handled: `200` without calling the inner service. Being handled by
//!    another delivery: `409` with `Retry-After`. Store unreachable: `503`
//!    with `Retry-After`, and the inner service is not called.
//! 7. **Inner service**: called with a [`VerifiedEvent`] in the request
//!    extensions and the body as [`VerifiedBody`].
//! 8. **Settle**: a `2xx` marks the event completed; any other status, an
//!    error or a panic (answered `500`), or the handler timeout (`500`)
//!    releases the claim, so Clink's retry runs the handler again. Every store
//!    call is bounded by [`ClinkLayer::store_timeout`]; a delivery dropped
//!    mid-way (the sender hung up) still settles its claim in the background.
//!
//! Every response the layer writes itself is `{"error": "<code>", "message": "..."}`
//! with a [`Rejection`] in the response extensions; it never contains a secret.
//!
//! ```
//! use clink_webhooks::{events, sign, ClinkLayer, EventRouter, Timestamp, Verifier};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let router = EventRouter::new().on::<events::OrderSucceeded, _>(|event| async move {
//!     assert_eq!(event.data.order_id.as_deref(), Some("ord_1"));
//!     Ok::<_, std::convert::Infallible>(())
//! });
//! let service = ClinkLayer::new(Verifier::new("whsec_test")?).layer(router);
//!
//! let body = r#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"ord_1"}}"#;
//! let timestamp = Timestamp::now().as_millis().to_string();
//! let request = http::Request::post("/webhooks/clink")
//!     .header("x-clink-timestamp", &timestamp)
//!     .header("x-clink-signature", sign("whsec_test", &timestamp, body.as_bytes()))
//!     .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
//! let response = service.clone().oneshot(request.clone()).await?;
//! assert_eq!(response.status(), 200);
//!
//! // The same event again is acknowledged without running the handler.
//! let response = service.oneshot(request).await?;
//! assert!(response.extensions().get::<clink_webhooks::layer::Duplicate>().is_some());
//! # Ok(()) }
//! ```

mod body;
mod future;
mod rejection;

use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower_layer::Layer;
use tower_service::Service;
use tracing::{field, Instrument, Span};

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub(crate) use rejection::ok_response;
pub use rejection::{Duplicate, Rejection, RejectionKind};

use crate::event::RawEvent;
use crate::idempotency::{
    timed, Claim, IdempotencyStore, LeaseToken, MemoryStore, Settle, StoreErrorKind, DEFAULT_LEASE,
    DEFAULT_RETENTION, MAX_TTL,
};
use crate::signature::{SignatureHeaders, Verification, Verified, Verifier};
use crate::{BoxError, Timestamp};
use future::{panic_message, CatchUnwind};

/// The body the inner service receives: the verified bytes, already buffered.
pub type VerifiedBody = Full<Bytes>;

/// The default body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The default time allowed for the whole body to arrive: 30 s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The default time the layer waits for any one store call: 5 s. The Redis
/// and PostgreSQL stores time out sooner on their own (1 s by default); this
/// bounds any store, including your own.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// The default prefix of idempotency keys.
pub const DEFAULT_KEY_PREFIX: &str = "clink";

/// A verified Clink event, found in the request extensions of every request
/// the inner service receives from [`ClinkService`].
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    event: RawEvent,
    verified: Verified,
}

impl VerifiedEvent {
    pub(crate) fn new(event: RawEvent, verified: Verified) -> Self {
        Self { event, verified }
    }

    /// The event: envelope read, data still raw JSON.
    #[must_use]
    pub fn event(&self) -> &RawEvent {
        &self.event
    }

    /// The event, owned.
    #[must_use]
    pub fn into_event(self) -> RawEvent {
        self.event
    }

    /// Which signing key matched (see [`Verified::key_index`]).
    #[must_use]
    pub fn key_index(&self) -> usize {
        self.verified.key_index()
    }

    /// When Clink signed this delivery (`X-Clink-Timestamp`).
    #[must_use]
    pub fn signed_at(&self) -> Timestamp {
        self.verified.signed_at()
    }
}

/// Counters of what the layer did, shared by every clone of a layer and its services.
#[derive(Debug, Default)]
pub struct Metrics {
    handled: AtomicU64,
    duplicates: AtomicU64,
    in_flight: AtomicU64,
    rejected: AtomicU64,
    handler_failures: AtomicU64,
    store_errors: AtomicU64,
    lease_lost: AtomicU64,
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),+ $(,)?) => {
        impl Metrics {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(&self) -> u64 {
                    self.$name.load(Ordering::Relaxed)
                }
            )+
        }
    };
}

counters! {
    /// Deliveries whose inner service answered `2xx`.
    handled,
    /// Deliveries answered `200` because the event was already handled.
    duplicates,
    /// Deliveries answered `409` because another delivery held the event.
    in_flight,
    /// Deliveries refused before the store was asked (method, headers,
    /// signature, body, envelope).
    rejected,
    /// Handler errors, non-`2xx` answers, panics and timeouts.
    handler_failures,
    /// Store calls that failed (claims answered `503`, settles logged).
    store_errors,
    /// Handled events whose lease had been lost by the time they were marked
    /// completed (the response was still `2xx`).
    lease_lost,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone)]
struct Config {
    verifier: Verifier,
    store: Arc<dyn IdempotencyStore>,
    body_limit: usize,
    body_timeout: Duration,
    lease: Duration,
    retention: Duration,
    handler_timeout: Option<Duration>,
    store_timeout: Duration,
    key_prefix: Arc<str>,
    metrics: Arc<Metrics>,
}

impl Config {
    /// The handler's deadline: the configured timeout, but always inside the
    /// lease (with a tenth of it to spare), so that a slow handler is stopped
    /// before another delivery can take the event over and run it at the same time.
    fn handler_deadline(&self) -> Duration {
        let inside_lease = self.lease - self.lease / 10;
        self.handler_timeout
            .map_or(inside_lease, |t| t.min(inside_lease))
    }
}

/// The tower [`Layer`] that puts a [`ClinkService`] in front of a service.
///
/// Cheap to clone; clones share their configuration, store and [`Metrics`].
#[derive(Clone)]
pub struct ClinkLayer {
    config: Arc<Config>,
}

impl fmt::Debug for ClinkLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("ClinkLayer")
            .field("verifier", &c.verifier)
            .field("body_limit", &c.body_limit)
            .field("body_timeout", &c.body_timeout)
            .field("lease", &c.lease)
            .field("retention", &c.retention)
            .field("handler_timeout", &c.handler_timeout)
            .field("key_prefix", &c.key_prefix)
            .finish_non_exhaustive()
    }
}

impl ClinkLayer {
    /// A layer that verifies with `verifier` and deduplicates in a fresh
    /// [`MemoryStore`] (one process). Use [`store`](Self::store) when the app
    /// runs on several machines.
    #[must_use]
    pub fn new(verifier: Verifier) -> Self {
        Self {
            config: Arc::new(Config {
                verifier,
                store: Arc::new(MemoryStore::new()),
                body_limit: DEFAULT_BODY_LIMIT,
                body_timeout: DEFAULT_BODY_TIMEOUT,
                lease: DEFAULT_LEASE,
                retention: DEFAULT_RETENTION,
                handler_timeout: None,
                store_timeout: DEFAULT_STORE_TIMEOUT,
                key_prefix: Arc::from(DEFAULT_KEY_PREFIX),
                metrics: Arc::default(),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Deduplicates in `store` instead of the default [`MemoryStore`].
    #[must_use]
    pub fn store(mut self, store: impl IdempotencyStore) -> Self {
        self.config_mut().store = Arc::new(store);
        self
    }

    /// Deduplicates in a store already shared as `Arc<dyn IdempotencyStore>`.
    #[must_use]
    pub fn shared_store(mut self, store: Arc<dyn IdempotencyStore>) -> Self {
        self.config_mut().store = store;
        self
    }

    /// The largest body accepted, in bytes (default 1 MiB).
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config_mut().body_limit = bytes;
        self
    }

    /// How long the whole body may take to arrive (default 30 s); slower
    /// bodies get `408`.
    #[must_use]
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().body_timeout = timeout;
        self
    }

    /// How long a claim holds before another delivery may take the event
    /// over (default 30 s). Handlers must finish within it: see
    /// [`handler_timeout`](Self::handler_timeout).
    ///
    /// # Panics
    ///
    /// When `lease` is under one millisecond (every claim would expire at
    /// once) or over [`MAX_TTL`] (no store could hold it).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        assert!(
            lease >= Duration::from_millis(1) && lease <= MAX_TTL,
            "ClinkLayer::lease must be at least 1 ms and at most 10 years (the default is 30 s)"
        );
        self.config_mut().lease = lease;
        self
    }

    /// How long a handled event id is remembered (default 72 h, beyond
    /// Clink's ~24 h of retries).
    ///
    /// # Panics
    ///
    /// When `retention` is under one millisecond (nothing would be
    /// remembered) or over [`MAX_TTL`] (no store could hold it).
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        assert!(
            retention >= Duration::from_millis(1) && retention <= MAX_TTL,
            "ClinkLayer::retention must be at least 1 ms and at most 10 years (the default is 72 h)"
        );
        self.config_mut().retention = retention;
        self
    }

    /// Stops a handler after `timeout` (answered `500` and released, so it
    /// runs again on retry).
    ///
    /// The timeout never exceeds nine tenths of the [`lease`](Self::lease),
    /// whatever is set here, and without this call it is exactly that: a
    /// handler is always stopped before its lease can run out, so two
    /// deliveries of one event never run their handlers at the same time.
    /// The time the claim itself took is taken off, since the lease starts
    /// during the claim.
    #[must_use]
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().handler_timeout = Some(timeout);
        self
    }

    /// How long the layer waits for any one store call (default
    /// [`DEFAULT_STORE_TIMEOUT`]). A claim that times out answers `503`; a
    /// settle that times out is logged, and the lease frees the claim.
    ///
    /// # Panics
    ///
    /// When `timeout` is under one millisecond.
    #[must_use]
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            timeout >= Duration::from_millis(1),
            "ClinkLayer::store_timeout must be at least 1 ms (the default is 5 s)"
        );
        self.config_mut().store_timeout = timeout;
        self
    }

    /// The prefix of idempotency keys (default `clink`), so several
    /// endpoints or apps can share one store. Keys are
    /// `{prefix}:{live|test|any}:{event id}`, so live and test events never collide.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config_mut().key_prefix = Arc::from(prefix.into());
        self
    }

    /// The counters shared by this layer and every service it makes.
    #[must_use]
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.config.metrics)
    }
}

impl<S> Layer<S> for ClinkLayer {
    type Service = ClinkService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClinkService {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service made by [`ClinkLayer`]: verifies, deduplicates and hands each
/// delivery to `S`.
#[derive(Clone)]
pub struct ClinkService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for ClinkService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClinkService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> ClinkService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The counters shared with the layer that made this service.
    #[must_use]
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.config.metrics)
    }
}

impl<S, B, ResB> Service<Request<B>> for ClinkService<S>
where
    S: Service<Request<VerifiedBody>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready service goes with this call; the clone waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        let span = tracing::info_span!(
            "clink_delivery",
            event_id = field::Empty,
            event_type = field::Empty,
            outcome = field::Empty,
            status = field::Empty,
            duration_ms = field::Empty,
        );
        Box::pin(
            async move {
                let started = Instant::now();
                let result = deliver(&config, inner, request).await;
                let span = Span::current();
                let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                span.record("duration_ms", elapsed);
                match &result {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        span.record("status", status);
                        let outcome = outcome(response);
                        span.record("outcome", outcome);
                        if response.status().is_success() {
                            tracing::info!(
                                outcome,
                                status,
                                duration_ms = elapsed,
                                "clink delivery"
                            );
                        } else {
                            tracing::warn!(
                                outcome,
                                status,
                                duration_ms = elapsed,
                                "clink delivery refused"
                            );
                        }
                    }
                    Err(_) => {
                        span.record("outcome", "inner_service_error");
                        tracing::warn!(
                            duration_ms = elapsed,
                            "clink delivery: inner service error"
                        );
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

/// What the layer did with a delivery, read from its response: the
/// [`Rejection`] code when it refused it (`signature_mismatch`, `in_flight`,
/// ...), `duplicate` when it acknowledged an already handled event without
/// calling the inner service, `handled` for any other `2xx`, and
/// `handler_failed` for any other status.
///
/// It is the `outcome` field of the layer's `tracing` events, for outer
/// layers and tests that want the same word.
///
/// ```
/// use clink_webhooks::layer::{outcome, Rejection, RejectionKind};
///
/// let refused = Rejection::new(RejectionKind::MethodNotAllowed).to_response();
/// assert_eq!(outcome(&refused), "method_not_allowed");
/// assert_eq!(outcome(&http::Response::new(())), "handled");
/// ```
#[must_use]
pub fn outcome<B>(response: &Response<B>) -> &'static str {
    if let Some(rejection) = response.extensions().get::<Rejection>() {
        rejection.code()
    } else if response.extensions().get::<Duplicate>().is_some() {
        "duplicate"
    } else if response.status().is_success() {
        "handled"
    } else {
        "handler_failed"
    }
}

fn layer_response<B>(response: Response<Bytes>) -> Response<ResponseBody<B>> {
    response.map(ResponseBody::layer)
}

fn reject<B>(config: &Config, kind: RejectionKind) -> Response<ResponseBody<B>> {
    let counter = match kind {
        RejectionKind::InFlight { .. } => &config.metrics.in_flight,
        RejectionKind::StoreUnavailable(_) => &config.metrics.store_errors,
        RejectionKind::HandlerFailed
        | RejectionKind::HandlerPanicked
        | RejectionKind::HandlerTimeout => &config.metrics.handler_failures,
        _ => &config.metrics.rejected,
    };
    bump(counter);
    layer_response(Rejection::new(kind).to_response())
}

async fn deliver<S, B, ResB>(
    config: &Config,
    inner: S,
    request: Request<B>,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<VerifiedBody>, Response = Response<ResB>> + Send,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + Send,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let (event, verified) = match verify(config, &parts, body).await {
        Ok(ok) => ok,
        Err(kind) => return Ok(reject(config, kind)),
    };
    let span = Span::current();
    span.record("event_id", event.id());
    span.record("event_type", event.event_type().as_str());

    let mode = match event.livemode() {
        Some(true) => "live",
        Some(false) => "test",
        None => "any",
    };
    let key = format!("{}:{mode}:{}", config.key_prefix, event.id());
    // The lease starts somewhere during the claim call; count the handler's
    // deadline from before it, so that a slow claim does not eat the margin.
    let claim_started = Instant::now();
    let token = match timed(config.store_timeout, config.store.claim(&key, config.lease)).await {
        Ok(Claim::Claimed(token)) => token,
        Ok(Claim::Completed) => {
            bump(&config.metrics.duplicates);
            return Ok(layer_response(rejection::duplicate_response()));
        }
        Ok(Claim::InFlight { retry_after }) => {
            return Ok(reject(config, RejectionKind::InFlight { retry_after }));
        }
        Err(error) if error.kind() == StoreErrorKind::InvalidInput => {
            tracing::warn!(%error, "clink delivery: the event id cannot be stored; answering 400");
            return Ok(reject(config, RejectionKind::UnstorableEventId));
        }
        Err(error) => {
            tracing::error!(%error, "clink delivery: could not claim the event; answering 503");
            return Ok(reject(
                config,
                RejectionKind::StoreUnavailable(error.kind()),
            ));
        }
    };
    let mut guard = ClaimGuard {
        store: Arc::clone(&config.store),
        key,
        token: Some(token),
        timeout: config.store_timeout,
        completes_with: None,
    };

    let mut request = Request::from_parts(parts, Full::new(event.body().clone()));
    request
        .extensions_mut()
        .insert(VerifiedEvent::new(event, verified));
    let deadline = config
        .handler_deadline()
        .saturating_sub(claim_started.elapsed());
    let outcome = run_inner(inner, request, deadline).await;

    match outcome {
        InnerOutcome::Response(response) if response.status().is_success() => {
            guard.complete(config).await;
            bump(&config.metrics.handled);
            Ok(response.map(ResponseBody::inner))
        }
        InnerOutcome::Response(response) => {
            bump(&config.metrics.handler_failures);
            guard.release().await;
            Ok(response.map(ResponseBody::inner))
        }
        InnerOutcome::Error(error) => {
            let error: BoxError = error.into();
            tracing::error!(%error, "clink inner service failed; releasing the event so a retry runs it");
            guard.release().await;
            Ok(reject(config, RejectionKind::HandlerFailed))
        }
        InnerOutcome::Panicked => {
            guard.release().await;
            Ok(reject(config, RejectionKind::HandlerPanicked))
        }
        InnerOutcome::TimedOut(deadline) => {
            tracing::error!(
                timeout_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                "clink handler timed out; releasing the event so a retry runs it"
            );
            guard.release().await;
            Ok(reject(config, RejectionKind::HandlerTimeout))
        }
    }
}

/// Checks method, headers, body and signature, and reads the envelope.
async fn verify<B>(
    config: &Config,
    parts: &http::request::Parts,
    body: B,
) -> Result<(RawEvent, Verified), RejectionKind>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if parts.method != Method::POST {
        return Err(RejectionKind::MethodNotAllowed);
    }
    let log_verify = |error: crate::VerifyError| {
        tracing::warn!(%error, "clink delivery refused");
        RejectionKind::Verify(error.kind())
    };
    let headers = SignatureHeaders::from_headers(&parts.headers).map_err(log_verify)?;
    let mut verification = config
        .verifier
        .begin(headers.timestamp)
        .map_err(log_verify)?;
    let signature = headers.signature;

    let declared = declared_length(&parts.headers);
    if declared.is_some_and(|len| len > config.body_limit as u64) {
        return Err(RejectionKind::BodyTooLarge {
            limit: config.body_limit,
        });
    }
    let read = read_body(body, config.body_limit, declared, &mut verification);
    let bytes = tokio::time::timeout(config.body_timeout, read)
        .await
        .map_err(|_| RejectionKind::BodyTimeout)??;
    let verified = verification.finish_parsed(&signature).map_err(log_verify)?;
    let event = RawEvent::from_bytes(bytes).map_err(RejectionKind::InvalidEnvelope)?;
    Ok((event, verified))
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The most a declared `Content-Length` reserves up front.
const INITIAL_BUFFER_CAP: usize = 64 * 1024;

/// Reads the body up to `limit` bytes, feeding the HMAC as chunks arrive.
async fn read_body<B>(
    body: B,
    limit: usize,
    declared: Option<u64>,
    verification: &mut Verification,
) -> Result<Bytes, RejectionKind>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = pin!(body);
    // The common case is one chunk: keep it as is, copying only when a second arrives.
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total: usize = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            let error: BoxError = error.into();
            tracing::warn!(%error, "clink delivery: could not read the body");
            RejectionKind::BodyUnreadable
        })?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let len = data.remaining();
        total = total.saturating_add(len);
        if total > limit {
            return Err(RejectionKind::BodyTooLarge { limit });
        }
        let chunk = data.copy_to_bytes(len);
        verification.update(&chunk);
        match (&mut first, &mut rest) {
            (None, _) => first = Some(chunk),
            (Some(head), None) => {
                // Trust the declared length only so far: the sender is not
                // authenticated yet, and the buffer grows as data arrives.
                let hint = declared
                    .and_then(|d| usize::try_from(d).ok())
                    .unwrap_or(0)
                    .min(INITIAL_BUFFER_CAP)
                    .clamp(total, limit);
                let mut buf = BytesMut::with_capacity(hint);
                buf.extend_from_slice(head);
                buf.extend_from_slice(&chunk);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&chunk),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(head), None) => head,
        (None, None) => Bytes::new(),
    })
}

enum InnerOutcome<R, E> {
    Response(R),
    Error(E),
    Panicked,
    TimedOut(Duration),
}

async fn run_inner<S, ResB>(
    mut inner: S,
    request: Request<VerifiedBody>,
    deadline: Duration,
) -> InnerOutcome<Response<ResB>, S::Error>
where
    S: Service<Request<VerifiedBody>, Response = Response<ResB>>,
{
    let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.call(request)));
    let future = match call {
        Ok(future) => future,
        Err(payload) => {
            tracing::error!(panic = panic_message(&*payload), "clink handler panicked");
            return InnerOutcome::Panicked;
        }
    };
    match tokio::time::timeout(deadline, CatchUnwind::new(future)).await {
        Ok(Ok(Ok(response))) => InnerOutcome::Response(response),
        Ok(Ok(Err(error))) => InnerOutcome::Error(error),
        Ok(Err(payload)) => {
            tracing::error!(panic = panic_message(&*payload), "clink handler panicked");
            InnerOutcome::Panicked
        }
        Err(_) => InnerOutcome::TimedOut(deadline),
    }
}

/// Holds a claim until it is settled. If the delivery is dropped first (the
/// sender hung up, the server is shutting down), the settle it was about to
/// make (release, or complete once the handler succeeded) runs in the
/// background, so the next retry does not wait out the lease and a handled
/// event is not handled again.
struct ClaimGuard {
    store: Arc<dyn IdempotencyStore>,
    key: String,
    token: Option<LeaseToken>,
    timeout: Duration,
    /// What a drop does with an unsettled claim: `None` releases it,
    /// `Some(retention)` completes it (the handler succeeded).
    completes_with: Option<Duration>,
}

impl ClaimGuard {
    async fn complete(&mut self, config: &Config) {
        self.completes_with = Some(config.retention);
        let Some(token) = &self.token else {
            return;
        };
        let result = timed(
            self.timeout,
            self.store.complete(&self.key, token, config.retention),
        )
        .await;
        // Only now is the claim settled; a drop before this point completes it.
        self.token = None;
        match result {
            Ok(Settle::Applied) => {}
            Ok(Settle::LeaseLost) => {
                bump(&config.metrics.lease_lost);
                tracing::warn!(
                    "clink event handled, but its lease had expired before it was marked \
                     completed; another delivery may run (or be running) the handler again"
                );
            }
            Err(error) => {
                bump(&config.metrics.store_errors);
                tracing::error!(
                    %error,
                    "clink event handled, but could not be marked completed; \
                     a retry after the lease expires may run the handler again"
                );
            }
        }
    }

    async fn release(&mut self) {
        let Some(token) = &self.token else {
            return;
        };
        release_logged(&*self.store, &self.key, token, self.timeout).await;
        self.token = None;
    }
}

async fn release_logged(
    store: &dyn IdempotencyStore,
    key: &str,
    token: &LeaseToken,
    timeout: Duration,
) {
    if let Err(error) = timed(timeout, store.release(key, token)).await {
        tracing::warn!(%error, "clink claim could not be released; it frees itself when the lease expires");
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = Arc::clone(&self.store);
        let key = std::mem::take(&mut self.key);
        let (timeout, completes_with) = (self.timeout, self.completes_with);
        runtime.spawn(async move {
            match completes_with {
                Some(retention) => {
                    if let Err(error) =
                        timed(timeout, store.complete(&key, &token, retention)).await
                    {
                        tracing::error!(%error, "clink event handled, but could not be marked completed");
                    }
                }
                None => release_logged(&*store, &key, &token, timeout).await,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> ClinkLayer {
        ClinkLayer::new(Verifier::new("whsec_test").unwrap())
    }

    #[test]
    fn the_handler_deadline_stays_inside_the_lease() {
        let config = layer().lease(Duration::from_secs(10)).config;
        assert_eq!(config.handler_deadline(), Duration::from_secs(9));
        let config = layer()
            .lease(Duration::from_secs(10))
            .handler_timeout(Duration::from_secs(60))
            .config;
        assert_eq!(config.handler_deadline(), Duration::from_secs(9));
        let config = layer().handler_timeout(Duration::from_secs(2)).config;
        assert_eq!(config.handler_deadline(), Duration::from_secs(2));
    }

    async fn claim_state(store: &dyn IdempotencyStore) -> Claim {
        // The guard settles on a spawned task: yield to it, within a bound.
        for _ in 0..1000 {
            match store.claim("k", DEFAULT_LEASE).await.unwrap() {
                Claim::InFlight { .. } => tokio::task::yield_now().await,
                settled => return settled,
            }
        }
        panic!("the dropped guard never settled its claim");
    }

    async fn dropped_guard(completes_with: Option<Duration>) -> Claim {
        let store: Arc<dyn IdempotencyStore> = Arc::new(MemoryStore::new());
        let Claim::Claimed(token) = store.claim("k", DEFAULT_LEASE).await.unwrap() else {
            panic!("a fresh key is claimed");
        };
        drop(ClaimGuard {
            store: Arc::clone(&store),
            key: "k".to_owned(),
            token: Some(token),
            timeout: DEFAULT_STORE_TIMEOUT,
            completes_with,
        });
        claim_state(&*store).await
    }

    #[tokio::test]
    async fn a_dropped_delivery_releases_its_claim() {
        assert!(matches!(dropped_guard(None).await, Claim::Claimed(_)));
    }

    #[tokio::test]
    async fn a_delivery_dropped_after_its_handler_succeeded_still_completes() {
        let retention = Some(DEFAULT_RETENTION);
        assert_eq!(dropped_guard(retention).await, Claim::Completed);
    }

    #[test]
    #[should_panic(expected = "lease must be at least 1 ms")]
    fn a_zero_lease_is_refused_at_configuration() {
        let _ = layer().lease(Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "retention must be at least 1 ms")]
    fn a_zero_retention_is_refused_at_configuration() {
        let _ = layer().retention(Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "at most 10 years")]
    fn a_retention_no_store_can_hold_is_refused_at_configuration() {
        let _ = layer().retention(MAX_TTL + Duration::from_secs(1));
    }
}
