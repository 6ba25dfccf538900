//! The memory budget for bodies not yet verified, shared by every delivery
//! a layer serves.
//!
//! A body is buffered until its HMAC can be compared, and anyone can send
//! one. Without a bound across deliveries, a sender without the key holding
//! many connections each with most of a body grows memory without limit. The
//! layer counts the bytes it holds for unverified bodies and the bodies
//! being read; past either bound it answers `503` with `Retry-After`
//! ([`Outcome::Overloaded`](crate::Outcome::Overloaded)) before reading
//! more. A body stops counting the moment its signature checks out, so a
//! verified delivery is never refused for the budget.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The default bytes held for unverified bodies across all deliveries: 64 MiB.
pub const DEFAULT_BODY_BUDGET: usize = 64 * 1024 * 1024;

/// The default number of bodies being read at once: 1,024.
pub const DEFAULT_MAX_BODIES_READING: usize = 1024;

#[derive(Debug)]
pub(super) struct BodyBudget {
    max_bytes: usize,
    max_reading: usize,
    bytes: AtomicUsize,
    reading: AtomicUsize,
    /// The most bytes held at once so far.
    #[cfg(test)]
    peak: AtomicUsize,
}

impl BodyBudget {
    pub(super) fn new(max_bytes: usize, max_reading: usize) -> Self {
        Self {
            max_bytes,
            max_reading,
            bytes: AtomicUsize::new(0),
            reading: AtomicUsize::new(0),
            #[cfg(test)]
            peak: AtomicUsize::new(0),
        }
    }

    pub(super) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The bytes held now, by every body being read.
    #[cfg(test)]
    pub(super) fn bytes_held(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// The most bytes held at once so far.
    #[cfg(test)]
    pub(super) fn peak_held(&self) -> usize {
        self.peak.load(Ordering::Acquire)
    }

    /// A place for one more body being read, if there is one.
    pub(super) fn start(&self) -> Option<Reading<'_>> {
        let taken = self
            .reading
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_reading).then_some(n + 1)
            });
        taken.ok().map(|_| Reading {
            budget: self,
            held: 0,
        })
    }
}

/// One body being read: holds its bytes against the budget until dropped.
#[derive(Debug)]
pub(super) struct Reading<'a> {
    budget: &'a BodyBudget,
    held: usize,
}

impl Reading<'_> {
    /// Counts `len` more bytes of this body; `false` (and nothing counted)
    /// when they do not fit in the budget.
    #[cfg(test)]
    pub(super) fn take(&mut self, len: usize) -> bool {
        self.hold(self.held + len)
    }

    /// Makes this body hold `bytes` in all (more or fewer than now);
    /// `false`, and nothing changed, when the increase does not fit.
    pub(super) fn hold(&mut self, bytes: usize) -> bool {
        if bytes <= self.held {
            self.budget
                .bytes
                .fetch_sub(self.held - bytes, Ordering::AcqRel);
            self.held = bytes;
            return true;
        }
        let more = bytes - self.held;
        let max = self.budget.max_bytes;
        let taken = self
            .budget
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                n.checked_add(more).filter(|&total| total <= max)
            });
        if taken.is_ok() {
            self.held = bytes;
            #[cfg(test)]
            self.budget
                .peak
                .fetch_max(self.budget.bytes.load(Ordering::Acquire), Ordering::AcqRel);
        }
        taken.is_ok()
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.budget.bytes.fetch_sub(self.held, Ordering::AcqRel);
        self.budget.reading.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_bodies_are_bounded_and_given_back() {
        let budget = BodyBudget::new(100, 2);
        let mut a = budget.start().unwrap();
        let mut b = budget.start().unwrap();
        assert!(budget.start().is_none(), "a third body is refused");
        assert!(a.take(60));
        assert!(!b.take(41), "61 + 41 would pass 100");
        assert!(b.take(40));
        drop(a);
        assert_eq!(budget.bytes.load(Ordering::Acquire), 40);
        let mut c = budget.start().unwrap();
        assert!(c.take(60));
        drop((b, c));
        assert_eq!(budget.bytes.load(Ordering::Acquire), 0);
        assert_eq!(budget.reading.load(Ordering::Acquire), 0);
    }

    #[test]
    fn hold_sets_the_total_held_both_up_and_down_counting_each_byte_once() {
        let budget = BodyBudget::new(100, 2);
        let mut a = budget.start().unwrap();
        assert!(a.hold(40));
        assert_eq!(budget.bytes_held(), 40);
        // Growing to 80 in all takes 40 more, not 80 more.
        assert!(a.hold(80));
        assert_eq!(budget.bytes_held(), 80);
        // The same again changes nothing.
        assert!(a.hold(80));
        assert_eq!(budget.bytes_held(), 80);
        // Shrinking gives the difference back.
        assert!(a.hold(30));
        assert_eq!(budget.bytes_held(), 30);
        let mut b = budget.start().unwrap();
        assert!(!b.hold(71), "30 + 71 would pass 100");
        assert_eq!(budget.bytes_held(), 30, "a refused hold takes nothing");
        assert!(b.hold(70));
        assert_eq!(budget.bytes_held(), 100);
        // A body growing past what is left is refused and keeps what it held.
        assert!(!a.hold(31));
        assert_eq!(budget.bytes_held(), 100);
        assert!(a.hold(0));
        assert_eq!(budget.bytes_held(), 70);
        drop(b);
        assert_eq!(budget.bytes_held(), 0);
        assert!(a.hold(100), "the whole budget, once the others let go");
        drop(a);
        assert_eq!(budget.bytes_held(), 0);
    }

    /// The default budget is the 64 MiB its docs promise: a body limit of
    /// exactly that is allowed, one byte more is not (a limit may not pass
    /// the budget).
    #[test]
    fn the_default_budget_is_64_mib() {
        let layer = || crate::ClinkLayer::new(crate::Verifier::new("whsec_test").unwrap());
        assert!(layer().body_limit(64 * 1024 * 1024).is_ok());
        assert!(layer().body_limit(64 * 1024 * 1024 + 1).is_err());
    }
}
