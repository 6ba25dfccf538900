//! Guards around code the crate waits on: a time bound that arms no timer
//! for a step done at once or at its next poll, a guard that turns a panic into a value, and the
//! deadline a handler gets inside its lease.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::task::coop;
use tokio::time::{Instant, Sleep};

/// A time limit: a [`Duration`], or a function giving one, called only when
/// the limit is needed (the step was not done in its first poll).
pub(crate) trait Limit: Sized {
    fn duration(self) -> Duration;

    /// When the limit ends for a step first polled at `started` (`None`
    /// when that is too far to be an instant), and the limit as a
    /// duration, for [`TimedOut`].
    fn ends(self, started: Instant) -> (Option<Instant>, Duration) {
        let after = self.duration();
        (started.checked_add(after), after)
    }
}

impl Limit for Duration {
    fn duration(self) -> Duration {
        self
    }
}

impl<F: FnOnce() -> Duration> Limit for F {
    fn duration(self) -> Duration {
        self()
    }
}

/// The instant by which the layer stops the service behind it, in the
/// request's extensions on the tower path (`ClinkLayer::layer`): an
/// [`EventRouter`](crate::EventRouter) there reads it, so that a handler
/// that succeeded before it is answered handled even when recording its
/// version runs past it (see [`until`]).
#[derive(Debug, Clone)]
pub(crate) struct HandlerDeadline {
    /// When the layer's deadline ends.
    pub(crate) at: Instant,
    /// The handler's time, as the layer reports it.
    pub(crate) limit: Duration,
    /// Set by the router once a handler succeeded, when the layer asks
    /// (a router that records versions, whose record can outlast the
    /// delivery): a delivery dropped after that completes its claim.
    pub(crate) succeeded: Option<Arc<AtomicBool>>,
}

/// Passes on, when dropped, that the handler behind the tower path
/// succeeded (`shared`, set by the router) to the delivery's own flag
/// (`local`, which its claim reads when it is dropped unsettled).
pub(crate) struct PassOnSuccess<'a> {
    pub(crate) shared: Option<Arc<AtomicBool>>,
    pub(crate) local: &'a AtomicBool,
}

impl Drop for PassOnSuccess<'_> {
    fn drop(&mut self) {
        if self
            .shared
            .as_ref()
            .is_some_and(|shared| shared.load(Ordering::Relaxed))
        {
            self.local.store(true, Ordering::Relaxed);
        }
    }
}

/// Awaits `future` until `deadline`: `Err(())` once the instant has
/// passed and it is not done. It looks at the clock at every poll that
/// finds the step not done, besides its timer, so that polled by a [`within`] ending at
/// the same instant (the layer's, around the service it is in), it has
/// ended whenever that one's timer has fired: the service behind the layer
/// answers first.
pub(crate) fn until<F: Future>(deadline: Instant, future: F) -> Until<F> {
    Until {
        future,
        deadline,
        timer: None,
    }
}

pin_project! {
    /// What [`until`] returns.
    pub(crate) struct Until<F> {
        #[pin]
        future: F,
        deadline: Instant,
        #[pin]
        timer: Option<Sleep>,
    }
}

impl<F: Future> Future for Until<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut me = self.project();
        if let Poll::Ready(output) = me.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if Instant::now() >= *me.deadline {
            return Poll::Ready(Err(()));
        }
        if me.timer.is_none() {
            me.timer.set(Some(tokio::time::sleep_until(*me.deadline)));
        }
        match me.timer.as_pin_mut() {
            Some(timer) => timer.poll(cx).map(|()| Err(())),
            None => Poll::Ready(Err(())),
        }
    }
}

/// A step that did not finish within its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimedOut(pub(crate) Duration);

/// Marks the branch that calls it as rarely taken, so that the compiler
/// lays it out away from the code every delivery runs (a delivery's code
/// is cheaper the fewer cache lines it spans; see `BENCHMARKS.md`).
#[cold]
#[inline(never)]
pub(crate) fn cold() {}

/// Awaits `future` for at most `limit`, counted from its first poll.
///
/// No timer is set up for a step that is done in its first poll (an
/// in-process body, a memory store call, most handlers), nor for one that
/// is done by the next: when the first poll finds the step not ready,
/// `within` notes the time, asks to be polled again and sets up the tokio
/// timer (for what is left of the limit) only if the step is still not
/// ready then. A body from hyper is never ready at the first poll (its
/// bytes come through a channel the connection's task fills right after)
/// and nearly always is at the second; on a multi-threaded runtime, setting
/// up a timer and cancelling it at once cost more per delivery than the
/// memory store's claim, because with no earlier timer pending it wakes the
/// thread parked on the runtime's driver. The extra poll costs nothing
/// there: the channel wakes the task anyway.
///
/// A future of its own rather than an `async fn`: an `async fn` keeps its
/// argument and the pinned copy it polls side by side, which made every
/// step waited on this way (the handler's above all) take twice its size in
/// the delivery's future.
pub(crate) fn within<F: Future, L: Limit>(limit: L, future: F) -> Within<F, L> {
    Within {
        future,
        limit: Some(limit),
        started: None,
        timer: None,
        after: Duration::ZERO,
    }
}

pin_project! {
    /// What [`within`] returns.
    pub(crate) struct Within<F, L> {
        #[pin]
        future: F,
        // Taken when the timer is set up.
        limit: Option<L>,
        // When the first poll found the step not ready.
        started: Option<Instant>,
        #[pin]
        timer: Option<Sleep>,
        // The limit, once worked out.
        after: Duration,
    }
}

impl<F: Future, L: Limit> Future for Within<F, L> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut me = self.project();
        let had_budget = coop::has_budget_remaining();
        if let Poll::Ready(output) = me.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if me.timer.is_none() {
            match *me.started {
                None => {
                    // Not ready at the first poll: look again before
                    // setting up a timer.
                    *me.started = Some(Instant::now());
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Some(started) => {
                    cold();
                    if let Some(limit) = me.limit.take() {
                        let (ends, after) = limit.ends(started);
                        *me.after = after;
                        me.timer.set(Some(match ends {
                            Some(deadline) => tokio::time::sleep_until(deadline),
                            // Too far to be an instant: as long as `sleep` allows.
                            None => tokio::time::sleep(after),
                        }));
                    }
                }
            }
        }
        let Some(timer) = me.timer.as_pin_mut() else {
            cold();
            // Only if working out the limit or setting up the timer panicked
            // and the step is polled again: a bound that cannot be kept is
            // reported as reached, never waited on for ever.
            return Poll::Ready(Err(TimedOut(*me.after)));
        };
        // As `tokio::time::timeout` does: when it was the step that used up
        // the task's budget, the timer is still checked, so that a step
        // that always uses it up cannot outlive its limit.
        let fired = if had_budget && !coop::has_budget_remaining() {
            Pin::new(&mut coop::unconstrained(timer)).poll(cx)
        } else {
            timer.poll(cx)
        };
        fired.map(|()| Err(TimedOut(*me.after)))
    }
}

/// The time a handler gets: `timeout` when set, and always inside `lease`,
/// so that a slow handler is stopped before its lease ends and another
/// delivery or worker can take the event over and run it at the same
/// time; for a claim whose settle may take up to `settle` (a networked
/// store's call timeout, zero for one that answers at once), the spare part of the lease is the
/// longer of a tenth of it and `settle`, so that a completion sent at the
/// deadline and answered in time has landed before the lease ends, and no
/// other delivery can have claimed the event and run its handler again.
/// The spare part never takes more than half the lease: the handler keeps
/// at least the other half, however long the settle may take.
pub(crate) fn handler_deadline_settled_within(
    lease: Duration, timeout: Option<Duration>, settle: Duration,
) -> Duration {
    let spare = (lease / 10).max(settle.min(lease / 2));
    let inside_lease = lease - spare;
    timeout.map_or(inside_lease, |t| t.min(inside_lease))
}

/// Calls `call`, turning a panic inside it into `Err(message)`.
pub(crate) fn catch_panic<T>(call: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|payload| panic_message(&*payload).to_owned())
}

pin_project! {
    /// Polls `F`, turning a panic inside it into `Err(message)`.
    pub(crate) struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(panic_message(&*payload).to_owned())),
        }
    }
}

/// The future `make` makes, in a box allocated before it is made, so that
/// it is written straight into the box instead of made on the stack and
/// copied there (a delivery's future is some kilobytes).
#[inline(always)]
pub(crate) fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let slot = Box::<F>::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}

/// The text of a panic payload, when it is a string.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic payload>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ready_at_once_or_bounded() {
        assert_eq!(within(Duration::ZERO, async { 7 }).await.ok(), Some(7));
        let slow = tokio::time::sleep(Duration::from_secs(10));
        assert_eq!(
            within(Duration::from_secs(1), slow).await,
            Err(TimedOut(Duration::from_secs(1)))
        );
        let fast = tokio::time::sleep(Duration::from_millis(10));
        assert!(within(Duration::from_secs(1), fast).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lazy_limit_is_worked_out_only_when_needed() {
        let mut asked = false;
        assert!(within(
            || {
                asked = true;
                Duration::ZERO
            },
            async {}
        )
        .await
        .is_ok());
        assert!(!asked);
        let slow = tokio::time::sleep(Duration::from_secs(10));
        assert!(within(|| Duration::from_secs(2), slow).await.is_err());
    }

    /// A step that is not ready at its first poll but is at the next (as a
    /// body from hyper is) gets no timer: its lazy limit is never asked for.
    /// The step does not wake its task, so only `within`'s own request to be
    /// polled again brings the second poll.
    #[tokio::test(start_paused = true)]
    async fn a_step_done_at_its_second_poll_sets_up_no_timer() {
        let mut polls = 0;
        let step = std::future::poll_fn(|_| {
            polls += 1;
            if polls == 1 {
                Poll::Pending
            } else {
                Poll::Ready(7)
            }
        });
        let mut asked = false;
        let limit = || {
            asked = true;
            Duration::from_secs(3600)
        };
        assert_eq!(within(limit, step).await, Ok(7));
        assert!(!asked);
        assert_eq!(polls, 2);
    }

    /// The limit counts from the first poll, even when the next poll, where
    /// the timer is set up, comes late.
    #[tokio::test(start_paused = true)]
    async fn the_limit_counts_from_the_first_poll() {
        let start = tokio::time::Instant::now();
        let limit = Duration::from_secs(10);
        let mut bounded = std::pin::pin!(within(limit, std::future::pending::<()>()));
        let first = std::future::poll_fn(|cx| Poll::Ready(bounded.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(bounded.await, Err(TimedOut(limit)));
        assert_eq!(start.elapsed(), limit);
    }

    /// A step that is never done and uses up the task's budget on every
    /// poll still ends at its limit: its timer is checked outside the budget.
    /// Were it checked inside, it would never fire, and the outer bound (by
    /// far the longer) would end the test instead.
    #[tokio::test]
    async fn a_step_that_uses_up_the_budget_still_times_out() {
        let busy = async {
            loop {
                tokio::task::coop::consume_budget().await;
            }
        };
        let limit = Duration::from_millis(50);
        let bounded = tokio::time::timeout(Duration::from_secs(20), within(limit, busy)).await;
        assert_eq!(bounded.map(Result::err), Ok(Some(TimedOut(limit))));
    }

    #[test]
    fn the_handler_deadline_stays_inside_the_lease() {
        let lease = Duration::from_secs(30);
        let handler_deadline =
            |timeout| handler_deadline_settled_within(lease, timeout, Duration::ZERO);
        assert_eq!(handler_deadline(None), Duration::from_secs(27));
        let short = Duration::from_secs(5);
        assert_eq!(handler_deadline(Some(short)), short);
        assert_eq!(
            handler_deadline(Some(Duration::from_secs(60))),
            Duration::from_secs(27)
        );
    }

    /// A settle that may take longer than a tenth of the lease is given
    /// its whole time before the lease ends, up to half the lease.
    #[test]
    fn the_handler_deadline_leaves_the_settle_its_time() {
        let s = Duration::from_secs;
        let lease = s(30);
        let deadline = handler_deadline_settled_within;
        assert_eq!(deadline(lease, None, Duration::ZERO), s(27));
        assert_eq!(deadline(lease, None, s(1)), s(27));
        assert_eq!(deadline(lease, None, s(5)), s(25));
        assert_eq!(deadline(lease, Some(s(26)), s(5)), s(25));
        assert_eq!(deadline(lease, Some(s(20)), s(5)), s(20));
        assert_eq!(deadline(lease, None, s(20)), s(15));
        assert_eq!(deadline(lease, None, s(3600)), s(15));
    }

    #[tokio::test]
    async fn panics_become_values() {
        assert_eq!(catch_panic(|| 1), Ok(1));
        assert_eq!(
            catch_panic(|| -> u8 { panic!("boom") }),
            Err("boom".to_owned())
        );
        let future = CatchUnwind::new(async { panic!("{}", String::from("later")) });
        assert_eq!(future.await, Err::<(), _>("later".to_owned()));
    }
}
