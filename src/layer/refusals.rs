//! Refusals before verification, logged at a bounded rate.
//!
//! Anyone can POST to a webhook URL, and a client without the key can be
//! refused thousands of times a second. Each refusal is logged at `debug`;
//! at `warn` there is at most one summary line per interval, with the count
//! of each outcome since the last one. The summary of an interval is written
//! with the first refusal after it ends.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::Outcome;

/// The default time between two summary lines: 10 s.
pub const DEFAULT_REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(super) struct RefusalLog {
    interval: Duration,
    started: Instant,
    /// Milliseconds since `started` when the next summary may be written.
    next_summary: AtomicU64,
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl RefusalLog {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            started: Instant::now(),
            next_summary: AtomicU64::new(0),
            counts: Mutex::default(),
        }
    }

    /// Notes a delivery refused before its signature checked out.
    pub(super) fn note(&self, outcome: &Outcome, status: u16) {
        let code = outcome.as_str();
        tracing::debug!(
            outcome = code,
            status,
            "clink delivery refused before verification"
        );
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry(code).or_default() += 1;
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.next_summary.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let interval = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        self.next_summary
            .store(now.saturating_add(interval), Ordering::Relaxed);
        let counts = std::mem::take(&mut *counts);
        let total: u64 = counts.values().sum();
        let mut by_outcome = String::new();
        for (code, count) in &counts {
            let _ = write!(
                by_outcome,
                "{}{code}={count}",
                if by_outcome.is_empty() { "" } else { " " }
            );
        }
        tracing::warn!(
            refused = total,
            by_outcome = by_outcome.as_str(),
            "clink deliveries refused before verification (at most one such line per {} s; each at debug)",
            self.interval.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::VerifyErrorKind;

    #[test]
    fn a_burst_of_refusals_is_one_line_then_a_summary_per_interval() {
        let log = RefusalLog::new(Duration::from_secs(3600));
        let refused = Outcome::Verify(VerifyErrorKind::SignatureMismatch);
        for _ in 0..1000 {
            log.note(&refused, 401);
        }
        // The first refusal was summarised at once; the rest wait for the interval.
        let counts = log.counts.lock().unwrap();
        assert_eq!(counts.get("signature_mismatch"), Some(&999));
    }
}
