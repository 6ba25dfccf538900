//! [`ClinkService`]: runs the steps of one delivery in order and settles on
//! one [`Outcome`].

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tokio::time::Instant;
use tower_service::Service;
use tracing::{field, Instrument, Span};

use super::claim::claim;
use super::config::Config;
use super::inner::run_inner;
#[cfg(feature = "metrics")]
use super::metrics;
use super::metrics::InFlight;
use super::verify::verify;
use super::{Metrics, ResponseBody, ResponseFuture, VerifiedBody};
use crate::events::DecodesTyped;
use crate::guard::{boxed_in_place, cold, HandlerDeadline, Limit, PassOnSuccess};
use crate::router::Dispatched;
use crate::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::store::{timed, Inbox, NewEvent, SignatureHeaders};
use crate::{BoxError, Outcome, Timestamp, VerifiedEvent};

/// The service made by [`ClinkLayer`](super::ClinkLayer): verifies,
/// deduplicates and hands each delivery to `S`.
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
    pub(super) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

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

    /// Always ready: the inner service's readiness is awaited once the
    /// delivery is verified and claimed, within the handler's deadline, so
    /// that no request holds a place of the inner service's (a concurrency
    /// limit's permit) while its body streams in unverified.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // A clone of its own, made ready when the delivery reaches it.
        let inner = self.inner.clone();
        delivery(
            Arc::clone(&self.config),
            request,
            inner,
            router_typed::<S>,
            move |config, parts, verified, inner| {
                let received = Received::for_dead_letters(&config, &parts.headers);
                handle(
                    config,
                    verified,
                    received,
                    async move |verified, deadline, succeeded| {
                        let body = Full::new(verified.event().body().clone());
                        let mut request = Request::from_parts(parts, body);
                        request.extensions_mut().insert(verified);
                        // A router that records versions after a handler
                        // succeeded says so in a flag of its own, passed on to
                        // the delivery's when this step ends or is dropped.
                        let _pass_on = PassOnSuccess {
                            shared: records_versions(&inner).then(Arc::default),
                            local: succeeded,
                        };
                        if let Some(at) = deadline.instant() {
                            let limit = deadline.handler;
                            request.extensions_mut().insert(HandlerDeadline {
                                at,
                                limit,
                                succeeded: _pass_on.shared.clone(),
                            });
                        }
                        match run_inner(inner, request, deadline).await {
                            // An outcome that releases the claim is never
                            // answered with a status Clink could read as done
                            // or as "stop retrying" (a `2xx`, a redirect,
                            // `410`, `429`): a refusal with one, or a service
                            // between the layer and the router that rewrote
                            // the router's answer, is answered as the outcome
                            // says, so that the retry comes.
                            Ok((response, outcome))
                                if !outcome.is_acknowledged()
                                    && outcome.status() != response.status()
                                    && (response.status().is_success()
                                        || crate::outcome::stops_retries(response.status())) =>
                            {
                                (layer_response(&outcome), outcome)
                            }
                            // Nor an outcome that completes it with a status
                            // that is no final answer or could stop Clink's
                            // deliveries (a service between the layer and the
                            // router that rewrote its `200`): as it says.
                            Ok((response, outcome))
                                if outcome.is_acknowledged()
                                    && crate::outcome::stops_retries(response.status()) =>
                            {
                                cold();
                                (layer_response(&outcome), outcome)
                            }
                            Ok((response, outcome)) => (response.map(ResponseBody::inner), outcome),
                            Err(outcome) => (layer_response(&outcome), outcome),
                        }
                    },
                )
            },
        )
    }
}

/// The event types `inner` decodes into a typed handler's data, when it is
/// an [`EventRouter`](crate::EventRouter) without state (as
/// `layer.layer(router)` makes it): its typed routes then take the data
/// decoded in the pass that reads the envelope, as a
/// [`RoutedService`](super::RoutedService)'s do, instead of reading it
/// again. Any other inner service reads what it needs itself.
fn router_typed<S: 'static>(inner: &S) -> Option<&dyn DecodesTyped> {
    let inner: &dyn std::any::Any = inner;
    inner
        .downcast_ref::<crate::EventRouter>()
        .map(crate::EventRouter::decodes_typed)
}

/// Whether a handler behind `inner` may succeed before the call ends (see
/// [`PassOnSuccess`]): unless `inner` is an
/// [`EventRouter`](crate::EventRouter) without state that records no
/// versions, it may (a router with state, or one inside another service,
/// such as an axum `Router`, is not recognised, and may record them).
fn records_versions<S: 'static>(inner: &S) -> bool {
    let inner: &dyn std::any::Any = inner;
    inner
        .downcast_ref::<crate::EventRouter>()
        .is_none_or(crate::EventRouter::records_versions)
}

/// What a delivery does once it is verified: its response, its outcome,
/// the verified event back, for the response's extensions, and the reading
/// of the clock its claim was settled as of, when the store took one (the
/// delivery's end, for timing it without reading the clock again).
pub(super) type Verified<ResB> = (
    Response<ResponseBody<ResB>>,
    Outcome,
    VerifiedEvent,
    Option<Instant>,
);

/// One delivery, as every service of this module takes it: its span, the
/// steps up to a verified event ([`verify`]), then `then` (hand it on, or
/// keep it), and the delivery timed, counted and logged. Every path ends in
/// one response and the [`Outcome`] it stands for, which is also in the
/// response's extensions, next to the [`VerifiedEvent`] once verified.
///
/// `then` takes the verified event and `to`, what the delivery goes to (a
/// router, the inner service, an inbox). `typed` says, from `to`, which
/// types it decodes when it is an [`EventRouter`](crate::EventRouter): their
/// resources are decoded as the envelope is read, in the same pass over the
/// body. It borrows from `to`, so that a delivery takes one handle to the
/// router, not two.
pub(super) fn delivery<B, ResB, E, To, F, Fut>(
    config: Arc<Config>, request: Request<B>, to: To, typed: Typed<To>, then: F,
) -> ResponseFuture<Response<ResponseBody<ResB>>, E>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResB: Send + 'static,
    E: 'static,
    To: Send + 'static,
    F: FnOnce(Arc<Config>, Parts, VerifiedEvent, To) -> Fut + Send + 'static,
    Fut: Future<Output = Verified<ResB>> + Send + 'static,
{
    let span = tracing::info_span!(
        "clink_delivery",
        account = field::Empty,
        event_id = field::Empty,
        event_type = field::Empty,
        signing_key = field::Empty,
        outcome = field::Empty,
        status = field::Empty,
        duration_ms = field::Empty,
    );
    let (parts, body) = request.into_parts();
    // With no subscriber listening, there is no span to enter on every
    // poll nor fields to record. The future is made in its box, not copied
    // there (a few kilobytes a delivery).
    if span.is_disabled() {
        boxed_in_place(|| run(config, parts, body, (to, typed), None, then))
    } else {
        let fields = span.clone();
        boxed_in_place(|| {
            run(config, parts, body, (to, typed), Some(fields), then).instrument(span)
        })
    }
}

/// Which event types a delivery's recipient decodes into a typed handler's
/// data, read from the recipient itself; `None` when it reads what it needs.
pub(super) type Typed<To> = fn(&To) -> Option<&dyn DecodesTyped>;

/// For a recipient that decodes nothing as the envelope is read.
pub(super) fn decodes_nothing<To>(_: &To) -> Option<&dyn DecodesTyped> {
    None
}

/// One delivery, timed, counted and logged; `span` is the delivery's span
/// when a subscriber records it.
#[expect(
    clippy::manual_async_fn,
    reason = "an async block keeps no second copy of the arguments"
)]
fn run<B, ResB, E, To, F, Fut>(
    config: Arc<Config>, parts: Parts, body: B, (to, typed): (To, Typed<To>), span: Option<Span>,
    then: F,
) -> impl Future<Output = Result<Response<ResponseBody<ResB>>, E>>
where
    B: Body + Send,
    B::Data: Send,
    B::Error: Into<BoxError>,
    F: FnOnce(Arc<Config>, Parts, VerifiedEvent, To) -> Fut,
    Fut: Future<Output = Verified<ResB>>,
{
    // A block, not an `async fn`: its captures are used where they are,
    // not copied again into locals when it starts.
    async move {
        let started = Instant::now();
        let in_flight = InFlight::start();
        let verified = verify(&config, &parts, body, typed(&to), span.as_ref()).await;
        let (response, outcome, settled_at) = match verified {
            Err(outcome) => {
                cold();
                (layer_response(&outcome), outcome, None)
            }
            Ok(verified) => {
                if let Some(span) = &span {
                    span.record("event_id", verified.event().id());
                    span.record("event_type", verified.event().event_type().as_str());
                    span.record("signing_key", verified.key_name());
                }
                let (mut response, outcome, verified, settled_at) =
                    then(Arc::clone(&config), parts, verified, to).await;
                if Outcome::of(&response) != Some(&outcome) {
                    response.extensions_mut().insert(outcome.clone());
                }
                response.extensions_mut().insert::<VerifiedEvent>(verified);
                (response, outcome, settled_at)
            }
        };
        drop(in_flight);
        config.metrics.record(&outcome);
        let ended = settled_at.unwrap_or_else(Instant::now);
        let elapsed = ended.saturating_duration_since(started);
        #[cfg(feature = "metrics")]
        {
            let verified = response.extensions().get::<VerifiedEvent>();
            if let Some(verified) = verified {
                metrics::emit_key_match(verified.key_label());
            }
            let event_type = verified.map(|v| v.event().event_type());
            metrics::emit(&outcome, event_type, elapsed.as_secs_f64());
        }
        let elapsed = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let status = response.status().as_u16();
        if let Some(span) = &span {
            span.record("duration_ms", elapsed);
            span.record("status", status);
            span.record("outcome", outcome.as_str());
        }
        if !outcome.is_verified() {
            config.refusals.note(&outcome, status);
            return Ok(response);
        }
        let unavailable = matches!(outcome, Outcome::StoreUnavailable(_));
        let outcome = outcome.as_str();
        if response.status().is_success() {
            tracing::info!(outcome, status, duration_ms = elapsed, "clink delivery");
        } else if unavailable {
            // The store's outage log says it, once, not once per delivery.
            tracing::debug!(
                outcome,
                status,
                duration_ms = elapsed,
                "clink delivery refused"
            );
        } else {
            tracing::warn!(
                outcome,
                status,
                duration_ms = elapsed,
                "clink delivery refused"
            );
        }
        Ok(response)
    }
}

/// The response the layer writes itself for `outcome`.
pub(super) fn layer_response<B>(outcome: &Outcome) -> Response<ResponseBody<B>> {
    outcome.to_response().map(ResponseBody::layer)
}

/// Steps 6 to 8 for a verified delivery: claim the event, hand it to `run`
/// (a clone sharing its bytes, with the handler's deadline, worked out when
/// it is needed), settle the claim on the outcome `run` answers with.
#[expect(
    clippy::manual_async_fn,
    reason = "an async block keeps no second copy of the arguments"
)]
pub(super) fn handle<ResB, F>(
    config: Arc<Config>, mut verified: VerifiedEvent, received: Received, run: F,
) -> impl Future<Output = Verified<ResB>>
where
    F: AsyncFnOnce(VerifiedEvent, Deadline, &AtomicBool) -> (Response<ResponseBody<ResB>>, Outcome),
{
    // A block, not an `async fn`: its captures are used where they are,
    // not copied again into locals when it starts.
    async move {
        // Set by `run` once a handler succeeded: a delivery dropped after
        // that (the sender hung up while the handler's version was being
        // recorded, say) completes its claim instead of letting it go, so
        // that no retry runs the handler again.
        let succeeded = AtomicBool::new(false);
        // The lease starts somewhere during the claim call; count the handler's
        // deadline from before it, so that a slow claim does not eat the margin.
        let claim_started = Instant::now();
        let mut guard = match claim(&config, &verified, claim_started).await {
            Err(mut outcome) => {
                cold();
                verified.forget_predecoded();
                // An id the store cannot keep: kept dead, if the layer has
                // a dead-letter inbox.
                if outcome == Outcome::InvalidEventId {
                    let whole = WholeBody {
                        body: verified.event().body().clone(),
                        signed_at: verified.signed_at(),
                        key_name: verified.key_name(),
                        account: verified.account(),
                        headers: received.signature_headers(),
                    };
                    outcome = Box::pin(dead_letter_invalid_id(&config, whole)).await;
                }
                return (layer_response(&outcome), outcome, verified, None);
            }
            Ok(guard) => guard.completing_once(&succeeded),
        };
        let deadline = Deadline {
            handler: config.handler_deadline(),
            claim_started,
        };
        // A store that answered the claim after the handler's time was
        // spent (slow, under the store's timeout) may have let the lease end
        // too, and another delivery run the handler meanwhile: this one
        // runs nothing, and the claim is let go for a retry. A memory store
        // claims at once.
        if config.memory.is_none() && deadline.duration().is_zero() {
            cold();
            tracing::error!(
                "clink claim answered after the handler's time was spent; \
                 releasing the event so a retry runs it"
            );
            let outcome = Outcome::HandlerTimeout;
            let settled_at = guard.settle(&outcome).await;
            verified.forget_predecoded();
            return (layer_response(&outcome), outcome, verified, settled_at);
        }
        // A clone shares the body and the id's bytes: no copy. The resource
        // decoded with the envelope goes with it, to the handler.
        let (mut response, mut outcome) = run(verified.lend(), deadline, &succeeded).await;
        // A handler that succeeded is never run again: a service around the
        // router that failed after it (a timeout while its version was
        // recorded, a middleware's own error) does not release the claim.
        if !outcome.is_acknowledged() && succeeded.load(Ordering::Relaxed) {
            cold();
            tracing::error!(
                outcome = outcome.as_str(),
                "clink handler succeeded, but the service around it did not answer so; \
                 acknowledged, so that no retry runs it again"
            );
            outcome = Outcome::Handled;
            response = layer_response(&outcome);
        }
        // An event no retry can help (its data does not decode, or its
        // handler failed for good) is kept dead in the dead-letter inbox,
        // if the layer has one, and acknowledged.
        let dispatched = response.extensions().get::<Dispatched>();
        let dead = match &outcome {
            Outcome::Undecodable => Some((
                Outcome::DeadLettered,
                "its data does not decode",
                "undecodable data",
                "the event's data does not decode into its handler's type",
            )),
            Outcome::HandlerFailed if dispatched.is_some_and(Dispatched::is_permanent) => Some((
                Outcome::FailedKeptDead,
                "it failed with an error marked permanent",
                "an event that failed for good",
                "the handler failed for good",
            )),
            _ => None,
        };
        if let (Some((kept_as, why, what, failed)), Some(inbox)) = (dead, &config.dead_letters) {
            cold();
            let failure = dispatched.and_then(Dispatched::failure).unwrap_or(failed);
            let error = format!("dead: {why}, so no retry can help: {failure}");
            let kept = dead_letter(
                &config,
                &**inbox,
                &verified,
                &received,
                (&error, what),
                deadline.duration(),
            );
            if kept.await {
                outcome = kept_as;
                response = layer_response(&outcome);
            }
        }
        let settled_at = guard.settle(&outcome).await;
        (response, outcome, verified, settled_at)
    }
}

/// The time a handler has left: the layer's handler deadline counted from
/// the start of the claim.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    handler: Duration,
    claim_started: Instant,
}

impl Deadline {
    /// The instant the handler's time ends (`None` when that is too far to
    /// be an instant).
    fn instant(self) -> Option<Instant> {
        self.claim_started.checked_add(self.handler)
    }
}

impl Limit for Deadline {
    fn duration(self) -> Duration {
        self.handler.saturating_sub(self.claim_started.elapsed())
    }

    /// The same instant however late the step was first polled, so that an
    /// [`EventRouter`](crate::EventRouter) behind the layer, told it through
    /// [`HandlerDeadline`], ends at the layer's instant, not after it.
    fn ends(self, _started: Instant) -> (Option<Instant>, Duration) {
        (self.instant(), self.handler)
    }
}

/// A delivery's signature headers as received, kept only when the layer
/// has a dead-letter inbox (a box of two shared handles, no copy): a dead
/// letter is kept with them, as the intake keeps every event, so that one
/// forwarded later can be verified by its recipient.
#[derive(Debug, Default)]
pub(super) struct Received(Option<Box<(http::HeaderValue, http::HeaderValue)>>);

impl Received {
    /// The signature headers in `headers` if `config` has a dead-letter
    /// inbox; nothing otherwise.
    pub(super) fn for_dead_letters(config: &Config, headers: &http::HeaderMap) -> Self {
        if config.dead_letters.is_none() {
            return Self(None);
        }
        let header = |name| headers.get(name).cloned();
        Self(
            header(TIMESTAMP_HEADER)
                .zip(header(SIGNATURE_HEADER))
                .map(Box::new),
        )
    }

    fn signature_headers(&self) -> Option<SignatureHeaders> {
        let (timestamp, signature) = &**self.0.as_ref()?;
        signature_headers_from(timestamp, signature)
    }
}

/// A delivery's signature headers in `headers`, as received, to keep with
/// its event.
pub(super) fn signature_headers(headers: &http::HeaderMap) -> Option<SignatureHeaders> {
    signature_headers_from(
        headers.get(TIMESTAMP_HEADER)?,
        headers.get(SIGNATURE_HEADER)?,
    )
}

fn signature_headers_from(
    timestamp: &http::HeaderValue, signature: &http::HeaderValue,
) -> Option<SignatureHeaders> {
    Some(SignatureHeaders::new(
        timestamp.to_str().ok()?,
        signature.to_str().ok()?,
    ))
}

/// Keeps an event no retry can help as dead in `inbox` with `error`, with
/// the signature headers it was `received` with, logging `what` was kept;
/// whether it is kept (a copy kept before counts).
async fn dead_letter(
    config: &Config, inbox: &dyn Inbox, verified: &VerifiedEvent, received: &Received,
    (error, what): (&str, &str), left: Duration,
) -> bool {
    let mut event = NewEvent::from_verified(verified, Timestamp::now());
    if let Some(headers) = received.signature_headers() {
        event = event.with_signature_headers(headers);
    }
    // Within the handler's time: the completion after it must still land
    // inside the lease. One cut short is answered 500 and released; the
    // retry keeps the event then (an insert that landed meanwhile finds it
    // kept already).
    keep_dead(
        config,
        inbox,
        &event,
        error,
        config.settings.store_timeout.min(left),
        what,
    )
    .await
}

/// A verified body no event can be made of or kept under its id, with
/// what the dead-letter inbox keeps beside it.
pub(super) struct WholeBody<'a> {
    pub(super) body: Bytes,
    pub(super) signed_at: Timestamp,
    pub(super) key_name: &'a str,
    pub(super) account: Option<&'a str>,
    pub(super) headers: Option<SignatureHeaders>,
}

/// Keeps a verified body that is no Clink event envelope (`error` says
/// why) as dead in the layer's dead-letter inbox, if it has one; the
/// outcome to answer: [`Outcome::DeadLettered`] once kept, the refusal
/// (`400`, which Clink retries) otherwise. It has no event id to claim or
/// to be kept under, so it is kept under `not-an-envelope:` and the
/// SHA-256 of the body in hex: a retry of the same body is kept once.
/// Nothing reads it but the dead-letter inbox's readers; replayed, it goes
/// dead again until an upgrade of the crate reads it.
pub(super) async fn dead_letter_not_an_envelope(
    config: &Config, headers: &http::HeaderMap, body: Bytes, verified: &crate::Verified,
    account: Option<&str>, error: crate::events::EnvelopeError,
) -> Outcome {
    let whole = WholeBody {
        body,
        signed_at: verified.signed_at(),
        key_name: verified.key_name(),
        account,
        headers: signature_headers(headers),
    };
    let reason = format!(
        "dead: the verified body is not a Clink event envelope ({error}), so no retry can help"
    );
    let what = "a verified body that is not an event envelope";
    if dead_letter_whole_body(config, whole, "not-an-envelope", &reason, what).await {
        Outcome::DeadLettered
    } else {
        Outcome::InvalidEnvelope(error)
    }
}

/// Keeps a verified event whose id cannot be kept (a character that does
/// not print as itself, or too long for the store) as dead in the layer's
/// dead-letter inbox, if it has one, as a body that is no envelope is
/// kept: under `invalid-event-id:` and the SHA-256 of the body. The
/// outcome: [`Outcome::DeadLettered`] once kept, else the refusal (`400`).
pub(super) async fn dead_letter_invalid_id(config: &Config, whole: WholeBody<'_>) -> Outcome {
    if config.dead_letters.is_none() {
        return Outcome::InvalidEventId;
    }
    let reason = "dead: the verified event's id has a character that does not print as itself, \
                  or is longer than the store can keep, so no retry can help";
    let what = "a verified event whose id cannot be kept";
    let label = crate::store::INVALID_ID_LABEL;
    if dead_letter_whole_body(config, whole, label, reason, what).await {
        Outcome::DeadLettered
    } else {
        Outcome::InvalidEventId
    }
}

/// Keeps `whole` as dead in the layer's dead-letter inbox (if it has one)
/// under `{label}:` and the SHA-256 of its body in hex, with `reason`;
/// whether it is kept.
async fn dead_letter_whole_body(
    config: &Config, whole: WholeBody<'_>, label: &str, reason: &str, what: &str,
) -> bool {
    let Some(inbox) = &config.dead_letters else {
        return false;
    };
    use sha2::{Digest as _, Sha256};
    let id = format!("{label}:{}", hex::encode(Sha256::digest(&whole.body)));
    let mut event = NewEvent::new(
        whole.account.map(str::to_owned),
        id,
        String::new(),
        None,
        None,
        whole.signed_at,
        Timestamp::now(),
        whole.body,
    )
    .with_signing_key(whole.key_name);
    if let Some(headers) = whole.headers {
        event = event.with_signature_headers(headers);
    }
    let timeout = config.settings.store_timeout;
    keep_dead(config, &**inbox, &event, reason, timeout, what).await
}

/// Inserts `event` as dead with `error` into `inbox` within `timeout`,
/// logging `what` was kept; whether it was (a copy kept before counts).
async fn keep_dead(
    config: &Config, inbox: &dyn Inbox, event: &NewEvent, error: &str, timeout: Duration,
    what: &str,
) -> bool {
    match timed(timeout, async { inbox.insert_dead(event, error).await }).await {
        Ok(_) => {
            config.outages.dead_letters.succeeded();
            tracing::warn!(
                event_id = ?event.event_id,
                event_type = ?event.event_type,
                "clink delivery: {what} kept as dead in the dead-letter inbox"
            );
            true
        }
        Err(error) => {
            tracing::debug!(
                %error,
                event_id = ?event.event_id,
                "clink delivery: could not keep {what} in the dead-letter inbox; answering it as without one"
            );
            config.outages.dead_letters.failed(&error);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::task::Waker;
    use std::time::Duration;

    use super::*;
    use crate::{ClinkLayer, EventRouter, Layer, Verifier};

    /// An inner service that is ready only when told.
    #[derive(Clone, Debug)]
    struct Gate(bool);

    impl Service<Request<VerifiedBody>> for Gate {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.0 {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn call(&mut self, _: Request<VerifiedBody>) -> Self::Future {
            std::future::ready(Ok(Response::new(Full::default())))
        }
    }

    /// An inner service whose readiness panics, or fails.
    #[derive(Clone)]
    struct BrokenReady {
        panics: bool,
    }

    impl Service<Request<VerifiedBody>> for BrokenReady {
        type Response = Response<Full<Bytes>>;
        type Error = std::io::Error;
        type Future = std::future::Ready<Result<Self::Response, std::io::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
            assert!(!self.panics, "an inner service that panics getting ready");
            Poll::Ready(Err(std::io::Error::other("never ready")))
        }

        fn call(&mut self, _: Request<VerifiedBody>) -> Self::Future {
            std::future::ready(Ok(Response::new(Full::default())))
        }
    }

    fn layer() -> ClinkLayer {
        ClinkLayer::new(Verifier::new("whsec_test").unwrap())
    }

    /// A delivery of `body`, signed now with the layer's key.
    fn signed(body: impl Into<Bytes>) -> Request<Full<Bytes>> {
        let body = body.into();
        let timestamp = Timestamp::now().as_millis().to_string();
        Request::post("/webhooks/clink")
            .header("x-clink-timestamp", &timestamp)
            .header(
                "x-clink-signature",
                crate::sign("whsec_test", &timestamp, &body),
            )
            .body(Full::new(body))
            .unwrap()
    }

    /// The service is always ready: its inner service's readiness is
    /// awaited once a delivery is verified and claimed, within the
    /// handler's deadline. One that never gets ready is a handler timeout,
    /// its claim released; a handler that runs fine after it is not
    /// turned away (the same event, delivered again, is handled).
    #[tokio::test(start_paused = true)]
    async fn readiness_is_awaited_within_the_handlers_deadline() {
        let mut cx = Context::from_waker(Waker::noop());
        let layer = layer();
        let mut closed = layer.layer(Gate(false));
        let ready = Service::<Request<Full<Bytes>>>::poll_ready(&mut closed, &mut cx);
        assert!(matches!(ready, Poll::Ready(Ok(()))));
        let body = &br#"{"id":"evt_ready","type":"order.succeeded","data":{}}"#[..];
        let response = closed.call(signed(body)).await.unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(Outcome::of(&response), Some(&Outcome::HandlerTimeout));
        let mut open = layer.layer(Gate(true));
        let response = open.call(signed(body)).await.unwrap();
        assert_eq!(Outcome::of(&response), Some(&Outcome::Handled));
    }

    /// An inner service whose readiness panics or fails answers `500`
    /// (`handler_panicked`, `handler_failed`) and releases the claim, as
    /// its call would: the delivery is answered, not dropped.
    #[tokio::test]
    async fn an_inner_service_that_breaks_getting_ready_is_a_failed_handler() {
        let body = &br#"{"id":"evt_broken","type":"order.succeeded","data":{}}"#[..];
        let layer = layer();
        for (panics, outcome) in [
            (true, Outcome::HandlerPanicked),
            (false, Outcome::HandlerFailed),
        ] {
            let mut service = layer.layer(BrokenReady { panics });
            let response = service.call(signed(body)).await.unwrap();
            assert_eq!(response.status(), 500);
            assert_eq!(Outcome::of(&response), Some(&outcome));
        }
        assert_eq!(layer.metrics().abandoned(), 0);
        let mut open = layer.layer(Gate(true));
        let response = open.call(signed(body)).await.unwrap();
        assert_eq!(Outcome::of(&response), Some(&Outcome::Handled));
    }

    /// A response from an inner service that says nothing of its outcome
    /// gets the one its status stands for, in its extensions.
    #[tokio::test]
    async fn a_plain_inner_services_response_carries_its_outcome() {
        let mut service = layer().layer(Gate(true));
        let request = signed(&br#"{"id":"evt_1","type":"order.succeeded","data":{}}"#[..]);
        let response = service.call(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(Outcome::of(&response), Some(&Outcome::Handled));
        assert!(response.extensions().get::<VerifiedEvent>().is_some());
    }

    /// A service between the layer and the router that rewrites the
    /// router's answer to a failed handler (`500`) into one Clink could
    /// read as done or as "stop retrying" (`200`, `410`) is not passed on:
    /// the claim is released, and the answer is the outcome's own, so
    /// that the retry comes and runs the handler again.
    #[tokio::test]
    async fn a_failure_rewritten_into_a_final_status_is_answered_as_the_failure() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        for rewritten in [http::StatusCode::OK, http::StatusCode::GONE] {
            let ran = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&ran);
            let router = EventRouter::new().on::<crate::events::OrderSucceeded, _>(move |_event| {
                counted.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Err::<(), _>(std::io::Error::other("down")))
            });
            let inner = tower::service_fn(move |request: Request<Full<Bytes>>| {
                let mut router = router.clone();
                async move {
                    let mut response = router.call(request).await?;
                    *response.status_mut() = rewritten;
                    Ok::<_, Infallible>(response)
                }
            });
            let service = layer().layer(inner);
            for run in 1..=2 {
                let response = service
                    .clone()
                    .call(signed(
                        r#"{"id":"evt_rw","type":"order.succeeded","data":{}}"#,
                    ))
                    .await
                    .unwrap();
                assert_eq!(response.status(), 500, "{rewritten}");
                assert_eq!(Outcome::of(&response), Some(&Outcome::HandlerFailed));
                assert_eq!(ran.load(Ordering::SeqCst), run, "{rewritten}: released");
            }
        }
    }

    /// A routed delivery's resource is decoded with its envelope, in one
    /// pass, and the typed handler takes it, through `route` and through
    /// the tower path over a router without state; a duplicate's decoded
    /// resource is let go before the event goes into the response (this
    /// test's one thread runs every step).
    #[tokio::test]
    async fn a_routed_delivery_decodes_its_resource_in_one_pass() {
        let router = || {
            EventRouter::new().on::<crate::events::OrderSucceeded, _>(|_event| {
                std::future::ready(Ok::<_, Infallible>(()))
            })
        };
        let request = |id: &str| {
            signed(format!(
                r#"{{"id":"{id}","type":"order.succeeded","data":{{"orderId":"ord_1"}}}}"#
            ))
        };
        let taken = || crate::events::PREDECODED_TAKEN.with(std::cell::Cell::get);
        let mut routed = layer().route(router());
        let before = taken();
        let response = routed.call(request("evt_1")).await.unwrap();
        assert_eq!(Outcome::of(&response), Some(&Outcome::Handled));
        assert_eq!(taken(), before + 1);
        let response = routed.call(request("evt_1")).await.unwrap();
        assert_eq!(Outcome::of(&response), Some(&Outcome::Duplicate));
        assert_eq!(taken(), before + 1);
        let kept = response.extensions().get::<VerifiedEvent>().unwrap();
        assert!(!kept.event().holds_predecoded::<crate::data::Order>());
        // The router as the layer's inner service (`layer.layer(router)`)
        // takes it as well.
        let mut tower = layer().layer(router());
        let response = tower.call(request("evt_2")).await.unwrap();
        assert_eq!(Outcome::of(&response), Some(&Outcome::Handled));
        assert_eq!(taken(), before + 2);
        // A router with state is not recognised there: it reads the data
        // itself, to the same outcome.
        let stateful = EventRouter::with_state(7_u32).on::<crate::events::OrderSucceeded, _>(
            |_event, _state| std::future::ready(Ok::<_, Infallible>(())),
        );
        let mut tower = layer().layer(stateful);
        let response = tower.call(request("evt_3")).await.unwrap();
        assert_eq!(Outcome::of(&response), Some(&Outcome::Handled));
        assert_eq!(taken(), before + 2);
    }

    /// A store that answers each claim `delay_ms` late (by Tokio's clock),
    /// and otherwise as a memory store.
    struct Late {
        inner: crate::store::MemoryStore,
        delay_ms: std::sync::atomic::AtomicU64,
    }

    impl crate::store::IdempotencyStore for Late {
        fn claim<'a>(
            &'a self, key: &'a str, lease: Duration,
        ) -> crate::BoxFuture<'a, Result<crate::store::Claim, crate::store::StoreError>> {
            let delay = self.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                self.inner.claim(key, lease).await
            })
        }

        fn complete<'a>(
            &'a self, key: &'a str, token: &'a crate::store::LeaseToken, retention: Duration,
        ) -> crate::BoxFuture<'a, Result<crate::store::Settle, crate::store::StoreError>> {
            self.inner.complete(key, token, retention)
        }

        fn release<'a>(
            &'a self, key: &'a str, token: &'a crate::store::LeaseToken,
        ) -> crate::BoxFuture<'a, Result<crate::store::Settle, crate::store::StoreError>> {
            self.inner.release(key, token)
        }
    }

    /// A claim the store answered after the handler's time was spent (3 s
    /// for a lease of 2 s, under the store's timeout of 5 s) runs no
    /// handler: its lease may have ended, and another delivery may be
    /// running it. It is answered as timed out and let go, so that the
    /// retry runs the handler, once.
    #[tokio::test(start_paused = true)]
    async fn a_claim_answered_after_the_handlers_time_runs_no_handler() {
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

        let store = Arc::new(Late {
            inner: crate::store::MemoryStore::new(),
            delay_ms: AtomicU64::new(3_000),
        });
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&ran);
        let router = EventRouter::new().on::<crate::events::OrderSucceeded, _>(move |_event| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, Infallible>(()))
        });
        let mut service = layer()
            .store(Arc::clone(&store))
            .lease(Duration::from_secs(2))
            .unwrap()
            .route(router);
        let request = || {
            signed(&br#"{"id":"evt_late","type":"order.succeeded","data":{"orderId":"ord_1"}}"#[..])
        };
        let response = service.call(request()).await.unwrap();
        assert_eq!(Outcome::of(&response), Some(&Outcome::HandlerTimeout));
        assert_eq!(response.status(), Outcome::HandlerTimeout.status());
        assert_eq!(ran.load(Ordering::SeqCst), 0, "no handler ran");
        // Let go: the retry, answered in time, runs the handler.
        store.delay_ms.store(0, Ordering::Relaxed);
        let response = service.call(request()).await.unwrap();
        assert_eq!(Outcome::of(&response), Some(&Outcome::Handled));
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    /// With a store other than the memory store, a handler is stopped the
    /// store timeout before its lease ends, so that its completion, given
    /// up to the store timeout, lands inside the lease: with a lease of
    /// 10 s and the store timeout of 5 s, a handler of 6 s is stopped, and
    /// the same handler in front of a memory store (which settles at once)
    /// runs to its end, nine tenths of the lease.
    #[tokio::test(start_paused = true)]
    async fn a_handler_before_a_networked_store_leaves_its_completion_the_store_timeout() {
        let router = || {
            EventRouter::new().on::<crate::events::OrderSucceeded, _>(|_event| async {
                tokio::time::sleep(Duration::from_secs(6)).await;
                Ok::<_, Infallible>(())
            })
        };
        let request = || {
            signed(&br#"{"id":"evt_slow","type":"order.succeeded","data":{"orderId":"ord_1"}}"#[..])
        };
        let networked = Arc::new(Late {
            inner: crate::store::MemoryStore::new(),
            delay_ms: std::sync::atomic::AtomicU64::new(0),
        });
        let lease = Duration::from_secs(10);
        let mut service = layer()
            .store(networked)
            .lease(lease)
            .unwrap()
            .route(router());
        let response = service.call(request()).await.unwrap();
        assert_eq!(Outcome::of(&response), Some(&Outcome::HandlerTimeout));
        let mut service = layer().lease(lease).unwrap().route(router());
        let response = service.call(request()).await.unwrap();
        assert_eq!(Outcome::of(&response), Some(&Outcome::Handled));
    }

    /// A freshness store whose records never end (each waits for good),
    /// or panic.
    #[derive(Clone, Copy)]
    enum Records {
        Never,
        Panicking,
    }

    impl crate::store::FreshnessStore for Records {
        fn newest<'a>(
            &'a self, _object: &'a crate::events::ObjectKey,
        ) -> crate::BoxFuture<'a, Result<Option<crate::events::Version>, crate::store::StoreError>>
        {
            Box::pin(std::future::ready(Ok(None)))
        }

        fn record<'a>(
            &'a self, _object: &'a crate::events::ObjectKey, _version: &'a crate::events::Version,
        ) -> crate::BoxFuture<'a, Result<(), crate::store::StoreError>> {
            match self {
                Self::Never => Box::pin(std::future::pending()),
                Self::Panicking => panic!("the freshness store fell over"),
            }
        }
    }

    /// A router whose `order.succeeded` handler counts its runs in `ran`,
    /// recording the versions of the events it handles in `freshness`.
    fn counting_router(
        ran: &Arc<std::sync::atomic::AtomicUsize>, freshness: impl crate::store::FreshnessStore,
    ) -> EventRouter {
        let counted = Arc::clone(ran);
        EventRouter::new()
            .ordering(freshness)
            .on::<crate::events::OrderSucceeded, _>(move |_event| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::future::ready(Ok::<_, Infallible>(()))
            })
    }

    /// An `order.succeeded` with the event id `id`, with a `created`.
    fn order_event(id: &str) -> String {
        format!(
            r#"{{"id":"{id}","type":"order.succeeded","created":1000,"data":{{"orderId":"ord_1"}}}}"#
        )
    }

    /// A delivery dropped after its handler succeeded, while the handler's
    /// version was being recorded (the sender hung up, the server shut
    /// down), completes its claim rather than letting it go: the retry is
    /// a duplicate, and the handler ran once. Through `route` and through
    /// the tower path over a router without state.
    #[tokio::test(start_paused = true)]
    async fn a_delivery_dropped_after_its_handler_succeeded_is_not_handled_again() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let ran = Arc::new(AtomicUsize::new(0));
        let router = || counting_router(&ran, Records::Never);
        let request = |id: &str| signed(order_event(id));
        let routed = layer().route(router());
        let tower = layer().layer(router());
        for (n, id) in ["evt_routed", "evt_tower"].into_iter().enumerate() {
            let call = |service_request| async {
                let response = if id == "evt_routed" {
                    routed.clone().call(service_request).await
                } else {
                    tower.clone().call(service_request).await
                };
                response.unwrap().into_parts().0.extensions
            };
            // The record never ends (its bound is 1 s): dropped at 100 ms,
            // after the handler ran.
            let dropped = tokio::time::timeout(Duration::from_millis(100), call(request(id))).await;
            assert!(dropped.is_err(), "the delivery waits on the record");
            assert_eq!(ran.load(Ordering::SeqCst), n + 1, "the handler ran");
            // The dropped delivery's settle runs in a task of its own.
            let mut answered = None;
            for _ in 0..100 {
                tokio::task::yield_now().await;
                let extensions = call(request(id)).await;
                let outcome = extensions.get::<Outcome>().cloned();
                if !matches!(outcome, Some(Outcome::InFlight { .. })) {
                    answered = outcome;
                    break;
                }
            }
            assert_eq!(answered, Some(Outcome::Duplicate), "{id}");
            assert_eq!(ran.load(Ordering::SeqCst), n + 1, "{id}: run once");
        }
    }

    /// A panic after the handler succeeded (in recording its version)
    /// does not undo the success: the delivery is handled, its claim
    /// completed, and the retry is a duplicate; the handler ran once.
    /// Through `route`, through the tower path, and in `dispatch` alone.
    #[tokio::test]
    async fn a_panic_after_the_handler_succeeded_leaves_the_event_handled() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let ran = Arc::new(AtomicUsize::new(0));
        let router = || counting_router(&ran, Records::Panicking);
        let body = order_event;
        let routed = layer().route(router());
        let tower = layer().layer(router());
        for (n, id) in ["evt_routed", "evt_tower"].into_iter().enumerate() {
            for expected in [Outcome::Handled, Outcome::Duplicate] {
                let response = if id == "evt_routed" {
                    routed.clone().call(signed(body(id))).await
                } else {
                    tower.clone().call(signed(body(id))).await
                };
                let response = response.unwrap();
                assert_eq!(Outcome::of(&response), Some(&expected), "{id}");
                assert_eq!(response.status(), 200, "{id}");
            }
            assert_eq!(ran.load(Ordering::SeqCst), n + 1, "{id}: run once");
        }
        let verifier = crate::Verifier::new("whsec_test").unwrap();
        let bytes = body("evt_dispatched");
        let ts = crate::Timestamp::now().as_millis().to_string();
        let verified = verifier
            .verify(
                &ts,
                &crate::sign("whsec_test", &ts, bytes.as_bytes()),
                bytes.as_bytes(),
            )
            .unwrap();
        let event = VerifiedEvent::new(
            crate::events::RawEvent::from_slice(bytes.as_bytes()).unwrap(),
            &verified,
        );
        let dispatched = router().dispatch(event).await;
        assert_eq!(dispatched.outcome(), &Outcome::Handled);
        assert_eq!(ran.load(Ordering::SeqCst), 3);
    }

    /// A router the layer does not recognise (one with state, here) hears
    /// of the delivery's success flag too: a delivery dropped after its
    /// handler succeeded, while its version was being recorded, completes
    /// its claim, and the retry is a duplicate.
    #[tokio::test(start_paused = true)]
    async fn a_router_with_state_dropped_after_its_handler_succeeded_is_not_handled_again() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let ran = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&ran);
        let router = EventRouter::with_state(7_u32)
            .ordering(Records::Never)
            .on::<crate::events::OrderSucceeded, _>(move |_event, _state| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, Infallible>(()))
        });
        let tower = layer().layer(router);
        let request = || {
            signed(
                &br#"{"id":"evt_state","type":"order.succeeded","created":1000,"data":{"orderId":"ord_1"}}"#[..],
            )
        };
        let call = |service_request| async {
            let response = tower.clone().call(service_request).await;
            response.unwrap().into_parts().0.extensions
        };
        let dropped = tokio::time::timeout(Duration::from_millis(100), call(request())).await;
        assert!(dropped.is_err(), "the delivery waits on the record");
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the handler ran");
        // The dropped delivery's settle runs in a task of its own.
        let mut answered = None;
        for _ in 0..100 {
            tokio::task::yield_now().await;
            let outcome = call(request()).await.get::<Outcome>().cloned();
            if !matches!(outcome, Some(Outcome::InFlight { .. })) {
                answered = outcome;
                break;
            }
        }
        assert_eq!(answered, Some(Outcome::Duplicate));
        assert_eq!(ran.load(Ordering::SeqCst), 1, "run once");
    }

    /// `Debug` names the service and shows its inner service; a routed
    /// service shows its router.
    #[test]
    fn debug_shows_the_inner_service() {
        let text = format!("{:?}", layer().layer(Gate(true)));
        assert!(
            text.starts_with("ClinkService { inner: Gate(true)"),
            "{text}"
        );
        let text = format!("{:?}", layer().route(EventRouter::new()));
        assert!(
            text.starts_with("RoutedService { router: EventRouter"),
            "{text}"
        );
    }

    /// The handler's time is counted from the start of the claim, and
    /// ends at one instant however late its step is first polled.
    #[test]
    fn the_deadline_counts_from_the_claim() {
        let now = Instant::now();
        let fresh = Deadline {
            handler: Duration::from_secs(60),
            claim_started: now,
        };
        let left = fresh.duration();
        assert!(
            left > Duration::from_secs(50) && left <= Duration::from_secs(60),
            "{left:?}"
        );
        if let Some(long_ago) = now.checked_sub(Duration::from_secs(61)) {
            let spent = Deadline {
                handler: Duration::from_secs(60),
                claim_started: long_ago,
            };
            assert_eq!(spent.duration(), Duration::ZERO);
        }
        let later = now + Duration::from_secs(5);
        assert_eq!(
            fresh.ends(later),
            (Some(now + Duration::from_secs(60)), Duration::from_secs(60))
        );
    }
}
