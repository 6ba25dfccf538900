//! Step 7: call the inner service with the verified body, inside the
//! handler's deadline, turning a panic into an outcome.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::within::within_else;
use super::VerifiedBody;
use crate::{BoxError, Outcome};

/// Calls `inner` within `deadline`. The response comes back when the inner
/// service answered, with the outcome it stands for; otherwise only the
/// outcome (an error, a panic, the deadline).
pub(crate) async fn run_inner<S, ResB>(
    inner: S,
    request: Request<VerifiedBody>,
    deadline: Duration,
) -> Result<Response<ResB>, Outcome>
where
    S: Service<Request<VerifiedBody>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    run_inner_else(inner, request, || deadline).await
}

/// As [`run_inner`], with the deadline worked out only if the inner service
/// does not answer in its first poll (see [`within_else`]).
pub(super) async fn run_inner_else<S, ResB>(
    mut inner: S,
    request: Request<VerifiedBody>,
    deadline: impl FnOnce() -> Duration,
) -> Result<Response<ResB>, Outcome>
where
    S: Service<Request<VerifiedBody>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    let call = catch_unwind(AssertUnwindSafe(|| inner.call(request)));
    let future = match call {
        Ok(future) => future,
        Err(payload) => {
            tracing::error!(panic = ?panic_message(&*payload), "clink handler panicked");
            return Err(Outcome::HandlerPanicked);
        }
    };
    let mut timeout = Duration::ZERO;
    let until = || {
        timeout = deadline();
        timeout
    };
    let result = within_else(until, CatchUnwind { inner: future }).await;
    match result {
        Ok(Ok(Ok(response))) => Ok(response),
        Ok(Ok(Err(error))) => {
            let error: BoxError = error.into();
            tracing::error!(error = ?error.to_string(), "clink inner service failed; releasing the event so a retry runs it");
            Err(Outcome::HandlerFailed)
        }
        Ok(Err(payload)) => {
            tracing::error!(panic = ?panic_message(&*payload), "clink handler panicked");
            Err(Outcome::HandlerPanicked)
        }
        Err(_) => {
            tracing::error!(
                timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                "clink handler timed out; releasing the event so a retry runs it"
            );
            Err(Outcome::HandlerTimeout)
        }
    }
}

/// The outcome an inner service's response stands for: the one it carries
/// (an [`EventRouter`](crate::EventRouter) says whether a handler ran), or
/// [`Handled`](Outcome::Handled) for any `2xx` and
/// [`HandlerRefused`](Outcome::HandlerRefused) for any other status.
pub(crate) fn outcome_of<B>(response: &Response<B>) -> Outcome {
    match Outcome::of(response) {
        Some(outcome) => outcome.clone(),
        None if response.status().is_success() => Outcome::Handled,
        None => Outcome::HandlerRefused(response.status()),
    }
}

pin_project! {
    /// Polls `F`, turning a panic inside it into `Err(payload)`.
    struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// The text of a panic payload, when it is a string.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic payload>")
}
