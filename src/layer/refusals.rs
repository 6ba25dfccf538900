//! Refusals before verification, logged at a bounded rate.
//!
//! Anyone can POST to a webhook URL, and a client without the key can be
//! refused thousands of times a second. Each refusal is logged at `debug`;
//! at `warn` there is one line for the first refusal after a quiet spell,
//! then one summary line at the end of each interval in which there were
//! more, with the count of each outcome (at `error` when one of them is
//! `no_active_key`: every key has expired, and nothing can be verified
//! until a current one is configured). The summaries are written by a
//! timer, so the last one comes at the end of its interval even when no
//! request follows; the timer stops after an interval without refusals and
//! when the layer is dropped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::outage::every_interval;
use crate::Outcome;

/// The code of the refusal that is the receiver's own fault.
const NO_ACTIVE_KEY: &str = "no_active_key";

/// The default time between two summary lines: 10 s.
pub const DEFAULT_REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(super) struct RefusalLog {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Refusals not yet summed up, by outcome code.
    counts: BTreeMap<&'static str, u64>,
    /// Whether a timer is summing them up.
    timer: bool,
    /// When the last line was written, for the summary without a timer
    /// (outside a tokio runtime).
    last_line: Option<Instant>,
}

impl RefusalLog {
    pub(super) fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            interval,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a delivery refused before its signature checked out.
    pub(super) fn note(self: &Arc<Self>, outcome: &Outcome, status: u16) {
        let code = outcome.as_str();
        tracing::debug!(
            outcome = code,
            status,
            "clink delivery refused before verification"
        );
        let mut state = self.state();
        *state.counts.entry(code).or_default() += 1;
        if state.timer {
            return;
        }
        // The first refusal after a quiet spell is logged at once; the timer
        // sums up the ones that follow.
        state.timer = every_interval(self, self.interval, Self::tick).is_some();
        if !state.timer
            && state
                .last_line
                .is_some_and(|last| last.elapsed() < self.interval)
        {
            return;
        }
        state.last_line = Some(Instant::now());
        let counts = std::mem::take(&mut state.counts);
        drop(state);
        self.write(&counts);
    }

    /// The summary at the end of an interval; whether to keep summing up.
    fn tick(&self) -> bool {
        let mut state = self.state();
        if state.counts.is_empty() {
            state.timer = false;
            return false;
        }
        state.last_line = Some(Instant::now());
        let counts = std::mem::take(&mut state.counts);
        drop(state);
        self.write(&counts);
        true
    }

    fn write(&self, counts: &BTreeMap<&'static str, u64>) {
        let total: u64 = counts.values().sum();
        let mut by_outcome = String::new();
        for (code, count) in counts {
            let _ = write!(
                by_outcome,
                "{}{code}={count}",
                if by_outcome.is_empty() { "" } else { " " }
            );
        }
        // Every key expired is this receiver's fault, and refuses every
        // delivery until a current key is configured: an error, not noise.
        if counts.contains_key(NO_ACTIVE_KEY) {
            tracing::error!(
                refused = total,
                by_outcome = by_outcome.as_str(),
                "clink deliveries refused: every signing key has expired, so no delivery can be verified until the endpoint's current signing secret is configured (summed up every {} s while they go on; each at debug)",
                self.interval.as_secs_f64()
            );
            return;
        }
        tracing::warn!(
            refused = total,
            by_outcome = by_outcome.as_str(),
            "clink deliveries refused before verification (summed up every {} s while they go on; each at debug)",
            self.interval.as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::VerifyErrorKind;

    const MISMATCH: Outcome = Outcome::Verify(VerifyErrorKind::SignatureMismatch);

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_line_then_a_summary_at_the_end_of_the_interval_without_more_traffic() {
        let log = RefusalLog::new(Duration::from_secs(10));
        for _ in 0..1000 {
            log.note(&MISMATCH, 401);
        }
        // The first was written at once; the rest wait for the interval.
        assert_eq!(log.state().counts.get("signature_mismatch"), Some(&999));
        assert!(log.state().timer);
        tokio::time::sleep(Duration::from_millis(9_999)).await;
        assert_eq!(log.state().counts.get("signature_mismatch"), Some(&999));
        // The timer writes them at the end of the interval, with no refusal
        // to prompt it.
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert!(log.state().counts.is_empty());
        assert!(log.state().timer);
        // A quiet interval ends the timer; the next refusal is written at once.
        tokio::time::sleep(Duration::from_secs(10)).await;
        tokio::task::yield_now().await;
        assert!(!log.state().timer);
        log.note(&MISMATCH, 401);
        assert!(log.state().counts.is_empty());
        assert!(log.state().timer);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_ends_when_the_layer_is_dropped() {
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let log = RefusalLog::new(Duration::from_secs(10));
        log.note(&MISMATCH, 401);
        log.note(&MISMATCH, 401);
        assert_eq!(alive(), 1);
        drop(log);
        tokio::time::sleep(Duration::from_secs(10)).await;
        tokio::task::yield_now().await;
        assert_eq!(alive(), 0);
    }

    #[test]
    fn the_lines_say_how_many_were_refused_and_why() {
        let lines = crate::outage::tests::logged(|| async {
            let log = RefusalLog::new(Duration::from_secs(10));
            for _ in 0..1000 {
                log.note(&MISMATCH, 401);
            }
            for _ in 0..5 {
                log.note(&Outcome::Verify(VerifyErrorKind::MalformedSignature), 400);
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
            tokio::task::yield_now().await;
        });
        assert_eq!(lines.len(), 2, "{lines:#?}");
        let summary = "clink deliveries refused before verification (summed up every 10 s";
        assert!(
            lines[0].starts_with("WARN") && lines[0].contains(summary),
            "{lines:#?}"
        );
        assert!(
            lines[0].contains("refused=1 ") && lines[0].contains("signature_mismatch=1"),
            "{lines:#?}"
        );
        assert!(lines[1].contains("refused=1004 "), "{lines:#?}");
        assert!(
            lines[1].contains("malformed_signature=5 signature_mismatch=999"),
            "{lines:#?}"
        );
    }

    #[test]
    fn every_key_expired_is_logged_as_an_error() {
        assert_eq!(VerifyErrorKind::NoActiveKey.code(), NO_ACTIVE_KEY);
        let lines = crate::outage::tests::logged(|| async {
            let log = RefusalLog::new(Duration::from_secs(10));
            for _ in 0..3 {
                log.note(&MISMATCH, 401);
                log.note(&Outcome::Verify(VerifyErrorKind::NoActiveKey), 503);
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
            tokio::task::yield_now().await;
        });
        assert_eq!(lines.len(), 2, "{lines:#?}");
        // The first line is the first refusal, a mismatch: a warning.
        assert!(lines[0].starts_with("WARN"), "{lines:#?}");
        assert!(
            lines[1].starts_with("ERROR")
                && lines[1].contains("every signing key has expired")
                && lines[1].contains("no_active_key=3 signature_mismatch=2"),
            "{lines:#?}"
        );
    }

    #[test]
    fn without_a_runtime_the_next_refusal_after_the_interval_writes_the_summary() {
        let log = RefusalLog::new(Duration::from_secs(3600));
        for _ in 0..1000 {
            log.note(&MISMATCH, 401);
        }
        assert_eq!(log.state().counts.get("signature_mismatch"), Some(&999));
        assert!(!log.state().timer);
    }
}
