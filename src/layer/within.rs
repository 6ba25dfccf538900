//! Bounding a step in time without arming a timer when the step is done at
//! once, as the body of an in-process request, a memory store call and most
//! handlers are.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::error::Elapsed;

/// Awaits `future` for at most `timeout` (counted from its first poll).
///
/// The future is polled once first; only when it is not ready is a tokio
/// timer set up for the rest of the wait. Setting one up reads the clock and
/// takes a handle to the runtime's timer; a step that finishes in its first
/// poll never needs it.
pub(super) async fn within<F: Future>(timeout: Duration, future: F) -> Result<F::Output, Elapsed> {
    within_else(|| timeout, future).await
}

/// As [`within`], with the timeout worked out only when it is needed.
pub(super) async fn within_else<F: Future>(
    timeout: impl FnOnce() -> Duration,
    future: F,
) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future);
    let first = poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    match first {
        Some(output) => Ok(output),
        None => tokio::time::timeout(timeout(), future).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ready_at_once_or_bounded() {
        assert_eq!(within(Duration::ZERO, async { 7 }).await.ok(), Some(7));
        let slow = tokio::time::sleep(Duration::from_secs(10));
        assert!(within(Duration::from_secs(1), slow).await.is_err());
        let fast = tokio::time::sleep(Duration::from_millis(10));
        assert!(within(Duration::from_secs(1), fast).await.is_ok());
    }
}
