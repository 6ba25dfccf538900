//! Step 7: call the inner service with the verified body, inside the
//! handler's deadline, turning a panic into an outcome.

use http::{Request, Response};
use tower_service::Service;

use super::VerifiedBody;
use crate::guard::{catch_panic, cold, within, CatchUnwind, Limit};
use crate::outcome::handler_timed_out;
use crate::{BoxError, Outcome};

/// Calls `inner` within `deadline`, worked out only if the inner service
/// does not answer in its first poll (see [`within`]). The response comes
/// back when the inner service answered, with the outcome it stands for;
/// otherwise only the outcome (an error, a panic, the deadline).
pub(super) async fn run_inner<S, ResB>(
    mut inner: S, request: Request<VerifiedBody>, deadline: impl Limit + Copy,
) -> Result<(Response<ResB>, Outcome), Outcome>
where
    S: Service<Request<VerifiedBody>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    // Ready within the handler's time: a service that is not (a
    // concurrency limit's places all taken) is waited for, and one that
    // never gets ready is a handler timeout; one that fails to get ready
    // has failed.
    let ready = std::future::poll_fn(|cx| inner.poll_ready(cx));
    match within(deadline, CatchUnwind::new(ready)).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => {
            cold();
            let error: BoxError = error.into();
            tracing::error!(error = ?error.to_string(), "clink inner service failed to get ready; releasing the event so a retry runs it");
            return Err(Outcome::HandlerFailed);
        }
        Ok(Err(panic)) => {
            cold();
            tracing::error!(panic = ?panic, "clink inner service panicked getting ready");
            return Err(Outcome::HandlerPanicked);
        }
        Err(timed_out) => {
            cold();
            tracing::error!(
                timeout_ms = u64::try_from(timed_out.0.as_millis()).unwrap_or(u64::MAX),
                "clink inner service not ready within the handler's deadline (its places all \
                 taken); releasing the event so a retry runs it"
            );
            return Err(Outcome::HandlerTimeout);
        }
    }
    let future = catch_panic(|| inner.call(request)).map_err(|panic| {
        tracing::error!(panic = ?panic, "clink handler panicked");
        Outcome::HandlerPanicked
    })?;
    match within(deadline, CatchUnwind::new(future)).await {
        Ok(Ok(Ok(response))) => {
            let outcome = outcome_of(&response);
            Ok((response, outcome))
        }
        Ok(Ok(Err(error))) => {
            let error: BoxError = error.into();
            tracing::error!(error = ?error.to_string(), "clink inner service failed; releasing the event so a retry runs it");
            Err(Outcome::HandlerFailed)
        }
        Ok(Err(panic)) => {
            tracing::error!(panic = ?panic, "clink handler panicked");
            Err(Outcome::HandlerPanicked)
        }
        Err(timed_out) => Err(handler_timed_out(timed_out)),
    }
}

/// The outcome an inner service's response stands for: the one it carries
/// (an [`EventRouter`](crate::EventRouter) says whether a handler ran), or
/// [`Handled`](Outcome::Handled) for any `2xx` and
/// [`HandlerRefused`](Outcome::HandlerRefused) for any other status.
fn outcome_of<B>(response: &Response<B>) -> Outcome {
    match Outcome::of(response) {
        Some(outcome) => outcome.clone(),
        None if response.status().is_success() => Outcome::Handled,
        None => Outcome::HandlerRefused(response.status()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn response(status: StatusCode) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = status;
        response
    }

    #[test]
    fn a_response_stands_for_the_outcome_it_carries_or_its_status() {
        assert_eq!(outcome_of(&response(StatusCode::OK)), Outcome::Handled);
        assert_eq!(
            outcome_of(&response(StatusCode::ACCEPTED)),
            Outcome::Handled
        );
        for status in [
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            assert_eq!(
                outcome_of(&response(status)),
                Outcome::HandlerRefused(status)
            );
        }
        // An EventRouter's response says what happened, whatever its status.
        let mut unhandled = response(StatusCode::OK);
        unhandled.extensions_mut().insert(Outcome::Unhandled);
        assert_eq!(outcome_of(&unhandled), Outcome::Unhandled);
        let mut failed = response(StatusCode::INTERNAL_SERVER_ERROR);
        failed.extensions_mut().insert(Outcome::HandlerFailed);
        assert_eq!(outcome_of(&failed), Outcome::HandlerFailed);
    }
}
