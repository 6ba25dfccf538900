//! Outages of what a delivery depends on (the idempotency store, an inbox,
//! the key source, the freshness store), logged as outages rather than once
//! per delivery.
//!
//! When Redis goes away under load, every delivery fails the same way: one
//! `ERROR` line each would be thousands of lines saying one thing, and would
//! bury everything else. An [`OutageLog`] writes one line when the failures
//! start, a summary of counts at the end of each interval while they go on
//! (written by a timer, so it comes on time whatever the traffic), and one
//! line when a call succeeds again. Each failure is also logged at `debug`,
//! and the layer's [`Metrics`](crate::layer::Metrics) count them all.
//!
//! [`every_interval`] is the timer, shared with the layer's summary of
//! refusals: a task that lives while there is something to summarise and
//! holds only a weak reference, so it never keeps a layer alive.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// The default time between two summary lines: 10 s.
pub(crate) const DEFAULT_OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Calls `tick` on `target` at the end of each `interval` from now, on a
/// task of the current tokio runtime, until `tick` returns `false` or
/// `target` is dropped (the task holds a [`Weak`] reference only, and ends
/// at its next tick). The task, if started: there is no timer outside a
/// runtime. An interval that reaches past what the clock can tell
/// (`Duration::MAX`, say) ends where it can no longer be counted: no tick
/// comes then.
pub(crate) fn every_interval<T: Send + Sync + 'static>(
    target: &Arc<T>, interval: Duration, tick: fn(&T) -> bool,
) -> Option<tokio::task::JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let target: Weak<T> = Arc::downgrade(target);
    // At least a millisecond apart, so that a zero interval cannot spin.
    let interval = interval.max(Duration::from_millis(1));
    Some(runtime.spawn(async move {
        let mut next = Instant::now();
        loop {
            next = match next.checked_add(interval) {
                Some(next) => next,
                None => return,
            };
            tokio::time::sleep_until(next).await;
            let Some(target) = target.upgrade() else {
                return;
            };
            if !tick(&target) {
                return;
            }
        }
    }))
}

/// The outage of one thing the crate calls: see the [module docs](self).
#[derive(Debug)]
pub(crate) struct OutageLog {
    /// What is down, as the log lines name it: "idempotency store".
    what: &'static str,
    /// What that does to deliveries: "deliveries are answered 503".
    effect: &'static str,
    interval: Duration,
    /// Whether an outage is going on: read on every success, so that a
    /// success outside an outage costs one atomic load.
    down: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the outage started, while it goes on.
    since: Option<Instant>,
    /// Failures since it started.
    failures: u64,
    /// Failures since the last line.
    recent: u64,
    /// The last failure's message.
    last_error: String,
    /// Whether a timer is summarising.
    timer: bool,
    /// Whether a line said the outage going on now was going on (its first
    /// line, or a summary): then its end is logged too.
    announced: bool,
    /// When the end of an outage was last logged.
    end_logged: Option<Instant>,
    /// Brief outages since the last line, begun and ended within an
    /// interval of the last logged end: a dependency that fails and
    /// answers by turns gets a summary per interval, not two lines per
    /// failure.
    brief: u64,
}

impl OutageLog {
    pub(crate) fn new(what: &'static str, effect: &'static str, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            what,
            effect,
            interval,
            down: AtomicBool::new(false),
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a failed call: the first of an outage is logged at once (at
    /// `error`), the others summed up at the end of each interval.
    pub(crate) fn failed(self: &Arc<Self>, error: &dyn fmt::Display) {
        let error = error.to_string();
        tracing::debug!(what = self.what, error = ?error, "clink dependency call failed");
        let mut state = self.state();
        state.failures += 1;
        let started = state.since.is_none();
        // An outage that starts within an interval of the last one's logged
        // end is counted, and announced by the next summary if it lasts.
        let quiet = started
            && state
                .end_logged
                .is_some_and(|ended| ended.elapsed() < self.interval);
        if started {
            state.since = Some(Instant::now());
            state.announced = !quiet;
            self.down.store(true, Ordering::Relaxed);
        }
        if !started || quiet {
            state.recent += 1;
        }
        if quiet {
            state.brief += 1;
        }
        state.last_error = error;
        if !state.timer {
            state.timer = every_interval(self, self.interval, Self::tick).is_some();
        }
        if started && !quiet {
            tracing::error!(
                error = ?state.last_error,
                "clink {} unavailable; {}. Further failures are summed up every {} s until it answers again",
                self.what,
                self.effect,
                self.interval.as_secs_f64()
            );
        }
    }

    /// Notes a call that succeeded: the end of an outage, if one was going on.
    pub(crate) fn succeeded(&self) {
        if !self.down.load(Ordering::Relaxed) {
            return;
        }
        let mut state = self.state();
        let Some(since) = state.since.take() else {
            return;
        };
        self.down.store(false, Ordering::Relaxed);
        if !std::mem::take(&mut state.announced) {
            // A brief outage no line announced: the next summary counts it.
            state.failures = 0;
            return;
        }
        let failures = std::mem::take(&mut state.failures);
        state.recent = 0;
        state.brief = 0;
        state.end_logged = Some(Instant::now());
        tracing::warn!(
            failures,
            down_for_s = since.elapsed().as_secs(),
            "clink {} available again after {} s; {failures} calls failed in all",
            self.what,
            since.elapsed().as_secs()
        );
    }

    /// The summary at the end of an interval; whether to keep summarising.
    fn tick(&self) -> bool {
        let mut state = self.state();
        let Some(since) = state.since else {
            let (recent, brief) = (
                std::mem::take(&mut state.recent),
                std::mem::take(&mut state.brief),
            );
            if recent > 0 {
                tracing::warn!(
                    failures = recent,
                    brief_outages = brief,
                    last_error = ?state.last_error,
                    "clink {} failed {recent} calls in {brief} brief outages since the last line; it answers now",
                    self.what
                );
                state.end_logged = Some(Instant::now());
            }
            state.timer = false;
            return false;
        };
        if state.recent == 0 {
            // Nothing new: the next failure starts the timer again.
            state.timer = false;
            return false;
        }
        let recent = std::mem::take(&mut state.recent);
        // Announced now, if it began as a brief one: its end is logged.
        state.announced = true;
        state.brief = 0;
        tracing::warn!(
            failures = recent,
            total = state.failures,
            down_for_s = since.elapsed().as_secs(),
            last_error = ?state.last_error,
            "clink {} still unavailable: {recent} more calls failed ({} since it went down {} s ago)",
            self.what,
            state.failures,
            since.elapsed().as_secs()
        );
        true
    }

    /// Whether an outage is going on.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The lines logged by `run` on a current-thread runtime with paused
    /// time, as "LEVEL message".
    pub(crate) fn logged<F: std::future::Future<Output = ()>>(
        run: impl FnOnce() -> F,
    ) -> Vec<String> {
        use std::io::Write;

        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        keep_interest_shared();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
                .block_on(run());
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| line.trim_start().to_owned())
            .collect()
    }

    /// Keeps two dispatchers that want nothing alive for the whole run.
    ///
    /// `tracing-core` caches whether each callsite is of interest. While at
    /// most one dispatcher exists, it asks only the dispatcher of the thread
    /// that first hits a callsite: a refusal logged first by another test,
    /// on a thread with no subscriber, would be cached as of no interest and
    /// stay invisible to [`logged`]'s subscriber. With two or more
    /// dispatchers it asks every live one, under the lock that also covers
    /// the rebuild each new subscriber causes.
    fn keep_interest_shared() {
        use std::sync::LazyLock;
        use tracing::subscriber::{Interest, Subscriber};
        use tracing::{span, Dispatch, Event, Metadata};

        struct Uninterested;

        impl Subscriber for Uninterested {
            fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
                Interest::never()
            }
            fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
                Some(tracing::level_filters::LevelFilter::OFF)
            }
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                false
            }
            fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
                span::Id::from_u64(1)
            }
            fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
            fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
            fn event(&self, _: &Event<'_>) {}
            fn enter(&self, _: &span::Id) {}
            fn exit(&self, _: &span::Id) {}
        }

        static KEEP: LazyLock<[Dispatch; 2]> =
            LazyLock::new(|| [Dispatch::new(Uninterested), Dispatch::new(Uninterested)]);
        LazyLock::force(&KEEP);
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// An interval past what the clock can count (`Duration::MAX`, which
    /// a caller may give for "no summaries") ends its timer quietly; it
    /// panicked on its first deadline before.
    #[tokio::test(start_paused = true)]
    async fn an_interval_past_the_clock_ends_its_timer_without_a_panic() {
        fn tick(_: &()) -> bool {
            true
        }
        let target = Arc::new(());
        for interval in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
            let timer = every_interval(&target, interval, tick).expect("in a runtime");
            timer.await.expect("the timer ended without a panic");
        }
        // A short interval ticks, and ends once its tick says so.
        fn once(_: &()) -> bool {
            false
        }
        every_interval(&target, SECOND, once)
            .unwrap()
            .await
            .unwrap();
    }

    #[test]
    fn an_outage_is_a_line_when_it_starts_a_summary_per_interval_and_a_line_when_it_ends() {
        let lines = logged(|| async {
            let log = OutageLog::new("test store", "deliveries are answered 503", 10 * SECOND);
            log.succeeded();
            for _ in 0..1000 {
                log.failed(&"connection refused");
            }
            assert!(log.is_down());
            // Still failing through three intervals (one failure at 9, 18
            // and 27 s), then nothing: the timer stops at the end of the
            // interval ending at 40 s, and a call succeeds at 52 s.
            for _ in 0..3 {
                tokio::time::sleep(9 * SECOND).await;
                log.failed(&"connection \u{202e}refused");
            }
            tokio::time::sleep(25 * SECOND).await;
            log.succeeded();
            log.succeeded();
            assert!(!log.is_down());
        });
        assert_eq!(lines.len(), 5, "{lines:#?}");
        let expected = [
            (
                0,
                "ERROR clink test store unavailable; deliveries are answered 503.",
            ),
            (0, r#"error="connection refused""#),
            (
                1,
                " 1000 more calls failed (1001 since it went down 10 s ago)",
            ),
            (2, " 1 more calls failed (1002 since"),
            (3, " 1 more calls failed (1003 since"),
            // The failure's text is escaped.
            (3, r#"last_error="connection \u{202e}refused""#),
            (
                4,
                "WARN clink test store available again after 52 s; 1003 calls failed in all",
            ),
        ];
        for (line, part) in expected {
            assert!(
                lines[line].contains(part),
                "line {line} lacks {part:?}: {}",
                lines[line]
            );
        }
        assert!(lines[0].starts_with("ERROR ") && lines[4].starts_with("WARN "));
        assert!(!lines.iter().any(|line| line.contains('\u{202e}')));
    }

    /// A dependency that fails and answers by turns (a store under lock
    /// contention) gets its first outage's start and end, then a summary
    /// per interval: never two lines per failure.
    #[test]
    fn an_outage_that_comes_and_goes_is_summed_up_not_logged_each_time() {
        let lines = logged(|| async {
            let log = OutageLog::new("test store", "deliveries are answered 503", 10 * SECOND);
            for _ in 0..1000 {
                log.failed(&"busy");
                log.succeeded();
            }
            assert!(!log.is_down());
            // The summary comes at the end of the interval.
            tokio::time::sleep(11 * SECOND).await;
            tokio::task::yield_now().await;
            // Past an interval after the last logged line, an outage is
            // logged as one again.
            tokio::time::sleep(11 * SECOND).await;
            log.failed(&"busy");
            log.succeeded();
        });
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(
            lines[0].starts_with("ERROR clink test store unavailable"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("WARN clink test store available again"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("failed 999 calls in 999 brief outages since the last line"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].starts_with("ERROR clink test store unavailable"),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].starts_with("WARN clink test store available again"),
            "{}",
            lines[4]
        );
    }

    /// A brief outage that lasts to the next summary is announced by it,
    /// and its end is logged.
    #[test]
    fn a_brief_outage_that_lasts_is_announced_and_its_end_logged() {
        let lines = logged(|| async {
            let log = OutageLog::new("test store", "nothing", 10 * SECOND);
            log.failed(&"down");
            log.succeeded();
            log.failed(&"down again");
            assert!(log.is_down());
            tokio::time::sleep(11 * SECOND).await;
            tokio::task::yield_now().await;
            log.succeeded();
        });
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[2].contains("still unavailable: 1 more calls failed"),
            "{}",
            lines[2]
        );
        assert!(lines[3].contains("available again"), "{}", lines[3]);
    }

    #[test]
    fn the_timer_stops_with_the_failures_and_with_the_log() {
        logged(|| async {
            let log = OutageLog::new("test store", "nothing", SECOND);
            log.failed(&"down");
            log.failed(&"down");
            assert!(log.state().timer);
            tokio::time::sleep(SECOND).await;
            tokio::task::yield_now().await;
            assert!(log.state().timer, "a summary was due");
            tokio::time::sleep(SECOND).await;
            tokio::task::yield_now().await;
            assert!(!log.state().timer, "nothing new: the timer ended");
            let alive = || {
                tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks()
            };
            assert_eq!(alive(), 0);
            // Dropped while its timer waits: the timer ends too.
            log.failed(&"down");
            assert!(log.state().timer);
            assert_eq!(alive(), 1);
            let weak = Arc::downgrade(&log);
            drop(log);
            assert!(
                weak.upgrade().is_none(),
                "the timer holds no strong reference"
            );
            tokio::time::sleep(2 * SECOND).await;
            tokio::task::yield_now().await;
            assert_eq!(alive(), 0);
        });
    }
}
