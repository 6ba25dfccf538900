//! [`ClinkService`]: runs the steps of one delivery in order and settles on
//! one [`Outcome`].

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;
use tracing::{field, Instrument, Span};

use super::claim::claim;
use super::claim::timed;
use super::config::Config;
use super::inner::{outcome_of, run_inner_else};
#[cfg(feature = "metrics")]
use super::metrics;
use super::metrics::InFlight;
use super::verify::{verify, VerifiedEvent};
use super::{Metrics, ResponseBody, ResponseFuture, VerifiedBody};
use crate::store::{Inbox, Inserted, NewEvent, StoreErrorKind};
use crate::{BoxError, Outcome, Timestamp};

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
            account = field::Empty,
            event_id = field::Empty,
            event_type = field::Empty,
            outcome = field::Empty,
            status = field::Empty,
            duration_ms = field::Empty,
        );
        // With no subscriber listening, there is no span to enter on every
        // poll nor fields to record.
        if span.is_disabled() {
            Box::pin(run(config, inner, request, None))
        } else {
            let fields = span.clone();
            Box::pin(run(config, inner, request, Some(fields)).instrument(span))
        }
    }
}

/// One delivery, timed, counted and logged; `span` is the delivery's span
/// when a subscriber records it.
async fn run<S, B, ResB>(
    config: Arc<Config>,
    inner: S,
    request: Request<B>,
    span: Option<Span>,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<VerifiedBody>, Response = Response<ResB>> + Send,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + Send,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let in_flight = InFlight::start();
    let (response, outcome) = deliver(&config, inner, request, span.as_ref()).await;
    drop(in_flight);
    config.metrics.record(&outcome);
    let elapsed = started.elapsed();
    #[cfg(feature = "metrics")]
    {
        let verified = response.extensions().get::<VerifiedEvent>();
        if let Some(verified) = verified {
            metrics::emit_key_match(verified.key_index());
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
    let outcome = outcome.as_str();
    if response.status().is_success() {
        tracing::info!(outcome, status, duration_ms = elapsed, "clink delivery");
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

/// Writes a verified delivery to the inbox; the delivery's outcome.
async fn keep(config: &Config, inbox: &dyn Inbox, verified: &VerifiedEvent) -> Outcome {
    let event = verified.event();
    let new = NewEvent::new(
        event.account().map(str::to_owned),
        event.id().to_owned(),
        event.event_type().as_str().to_owned(),
        event.created(),
        event
            .object_key()
            .map(|key| match event.account() {
                Some(account) => key.within(account),
                None => key,
            })
            .map(|key| key.to_string()),
        verified.signed_at(),
        Timestamp::now(),
        event.body().clone(),
    );
    match timed(config.store_timeout, inbox.insert(&new)).await {
        Ok(Inserted::New) => Outcome::Queued,
        Ok(Inserted::Duplicate) => Outcome::Duplicate,
        Err(error) if error.kind() == StoreErrorKind::InvalidInput => {
            tracing::warn!(%error, "clink delivery: the event cannot be kept; answering 400");
            Outcome::InvalidEventId
        }
        Err(error) => {
            tracing::error!(%error, "clink delivery: could not write the event to the inbox; answering 503");
            Outcome::StoreUnavailable(error.kind())
        }
    }
}

/// The response the layer writes itself for `outcome`.
fn layer_response<B>(outcome: &Outcome) -> Response<ResponseBody<B>> {
    outcome.to_response().map(ResponseBody::layer)
}

/// One delivery, step by step (see the [module docs](super)). Every path
/// ends in one response and the [`Outcome`] it stands for, which is also in
/// the response's extensions, next to the [`VerifiedEvent`] once verified.
async fn deliver<S, B, ResB>(
    config: &Config,
    inner: S,
    request: Request<B>,
    span: Option<&Span>,
) -> (Response<ResponseBody<ResB>>, Outcome)
where
    S: Service<Request<VerifiedBody>, Response = Response<ResB>> + Send,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + Send,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let verified = match verify(config, &parts, body, span).await {
        Ok(verified) => verified,
        Err(outcome) => return (layer_response(&outcome), outcome),
    };
    if let Some(span) = span {
        span.record("event_id", verified.event().id());
        span.record("event_type", verified.event().event_type().as_str());
    }

    if let Some(inbox) = &config.inbox {
        let outcome = keep(config, &**inbox, &verified).await;
        let mut response = layer_response(&outcome);
        response.extensions_mut().insert::<VerifiedEvent>(verified);
        return (response, outcome);
    }

    // The lease starts somewhere during the claim call; count the handler's
    // deadline from before it, so that a slow claim does not eat the margin.
    let claim_started = Instant::now();
    let (mut response, outcome) = match claim(config, &verified).await {
        Err(outcome) => (layer_response(&outcome), outcome),
        Ok(guard) => {
            let mut request =
                Request::from_parts(parts, Full::new(verified.event().body().clone()));
            // A clone shares the body and the id's bytes: no copy.
            request.extensions_mut().insert(verified.clone());
            let deadline = || {
                config
                    .handler_deadline()
                    .saturating_sub(claim_started.elapsed())
            };
            let (response, outcome) = match run_inner_else(inner, request, deadline).await {
                Ok(response) => {
                    let outcome = outcome_of(&response);
                    (response.map(ResponseBody::inner), outcome)
                }
                Err(outcome) => (layer_response(&outcome), outcome),
            };
            guard.settle(config, &outcome).await;
            (response, outcome)
        }
    };
    // The router's response already carries its outcome.
    if Outcome::of(&response) != Some(&outcome) {
        response.extensions_mut().insert(outcome.clone());
    }
    response.extensions_mut().insert::<VerifiedEvent>(verified);
    (response, outcome)
}
