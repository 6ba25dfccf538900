//! How many wrong tokens a console takes: a few in a row, then one every
//! few seconds.
//!
//! The console has a budget of [`BURST`] wrong tokens that refills at one
//! every [`REFILL`]. Once it is spent, every token presented (in the
//! query or the header) is refused with `429` and `Retry-After`, the right
//! one too (checking it would tell a guess from the token), until the
//! budget has one again. Session cookies are never refused: they are
//! signed, not guessed, so browsers already in keep working, and a token
//! sent beside a session (a bookmarked `?token=` link, a header a proxy in
//! front adds) is neither refused nor counted.
//!
//! One budget for every client: the console does not see their addresses
//! (axum hands the connection's address to a handler only when built with
//! its `tokio` feature, which the `console` feature does not turn on), so
//! guesses from anywhere spend it, and a client sending wrong tokens
//! delays the logins of others until it stops. It is one instant per
//! console, whatever the traffic.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How many wrong tokens the console takes in a row.
pub(super) const BURST: u32 = 10;

/// How long each wrong token takes to be made up for: once [`BURST`] came
/// in a row, one more is taken every `REFILL`.
pub(super) const REFILL: Duration = Duration::from_secs(6);

/// The console's budget of wrong tokens.
#[derive(Debug, Default)]
pub(super) struct Throttle {
    /// Until when the budget is spent, [`REFILL`] for each wrong token not
    /// yet made up for; `None`, or a time past, when it is whole.
    spent_until: Mutex<Option<Instant>>,
}

/// How far ahead the budget may be spent before tokens are refused: all of
/// it but one wrong token.
fn allowance() -> Duration {
    REFILL * (BURST - 1)
}

/// How long tokens are refused for when the budget is spent until `until`.
fn wait(until: Instant, now: Instant) -> Option<Duration> {
    let ahead = until.saturating_duration_since(now);
    ahead
        .checked_sub(allowance())
        .filter(|wait| !wait.is_zero())
}

impl Throttle {
    /// How long to wait before a token is taken again, if the budget is
    /// spent.
    pub(super) fn refused_for(&self, now: Instant) -> Option<Duration> {
        let spent = self
            .spent_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        wait((*spent)?, now)
    }

    /// Counts a wrong token; how long tokens are refused for from now on,
    /// if this one spent the budget.
    pub(super) fn failed(&self, now: Instant) -> Option<Duration> {
        let mut spent = self
            .spent_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let until = spent.map_or(now, |until| until.max(now)) + REFILL;
        *spent = Some(until);
        wait(until, now)
    }
}

/// A wait as `Retry-After` says it: whole seconds, rounded up.
pub(super) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_every_refill() {
        let throttle = Throttle::default();
        let now = Instant::now();
        assert_eq!(throttle.refused_for(now), None);
        for n in 1..BURST {
            assert_eq!(throttle.failed(now), None, "wrong token {n}");
            assert_eq!(throttle.refused_for(now), None);
        }
        assert_eq!(throttle.failed(now), Some(REFILL));
        assert_eq!(throttle.refused_for(now), Some(REFILL));
        assert_eq!(throttle.refused_for(now + REFILL / 2), Some(REFILL / 2));
        // Once the wait is over, one more; then a wait again.
        let later = now + REFILL;
        assert_eq!(throttle.refused_for(later), None);
        assert_eq!(throttle.failed(later), Some(REFILL));
        // Long after, the whole budget again.
        let much_later = later + REFILL * BURST;
        for _ in 1..BURST {
            assert_eq!(throttle.failed(much_later), None);
        }
        assert_eq!(throttle.failed(much_later), Some(REFILL));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(5_001)), 6);
        assert_eq!(retry_after_secs(Duration::from_secs(6)), 6);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
    }
}
