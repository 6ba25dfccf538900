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
//!
//! A sender without the key could keep the budget full with bodies it
//! never finishes, each sent slowly enough to last the body timeout. So a
//! body that does not fit first makes room: the body read longest, since
//! it first waited for its bytes, [`EVICT_AFTER`] or more, is ended
//! (`Overloaded`, which Clink retries) and its bytes given back. A real delivery's body
//! comes whole in milliseconds; only a body still arriving a second after
//! it first waited is ever ended so. The registry of bodies being read is
//! touched by a body that waited for more after its first bytes (never by
//! one that came whole with its declared length; a chunked one may), and
//! by a body still waiting for its first bytes while more than half the
//! places for bodies are taken (so that bodies that never send a byte
//! hold at most half the places for good: one that registered can be
//! ended for a place, never for bytes, which it does not hold): not by a
//! delivery on a receiver under no flood.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

/// The default bytes held for unverified bodies across all deliveries: 64 MiB.
pub const DEFAULT_BODY_BUDGET: usize = 64 * 1024 * 1024;

/// The default number of bodies being read at once: 1,024.
pub const DEFAULT_MAX_BODIES_READING: usize = 1024;

/// How long a body must have waited for its bytes, since it first waited
/// (registered), before it is ended to make room for another.
pub(super) const EVICT_AFTER: Duration = Duration::from_secs(1);

/// The longest a body making room waits for the body it ended to give its
/// bytes back (its task to run), before it looks again.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct BodyBudget {
    max_bytes: usize,
    max_reading: usize,
    bytes: AtomicUsize,
    reading: AtomicUsize,
    /// The bodies registered as they waited (see `Reading::waits`), oldest
    /// first (by the number each took when it first waited).
    waiting: Mutex<BTreeMap<u64, Arc<Waiting>>>,
    next_waiting: AtomicU64,
    /// The most bytes held at once so far.
    #[cfg(test)]
    peak: AtomicUsize,
}

/// A body that waited for more after its first bytes: when it first did,
/// whether it was ended to make room, how to wake it, and how it says it
/// let go.
#[derive(Debug)]
struct Waiting {
    since: Instant,
    /// The bytes the body holds (it gives none back, ended, while this is
    /// zero: a body still waiting for its first bytes).
    held: AtomicUsize,
    evicted: AtomicBool,
    waker: Mutex<Option<Waker>>,
    released: tokio::sync::Notify,
}

impl BodyBudget {
    pub(super) fn new(max_bytes: usize, max_reading: usize) -> Self {
        Self {
            max_bytes,
            max_reading,
            bytes: AtomicUsize::new(0),
            reading: AtomicUsize::new(0),
            waiting: Mutex::new(BTreeMap::new()),
            next_waiting: AtomicU64::new(0),
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

    /// Whether no body is among the waiting ones.
    #[cfg(test)]
    pub(super) fn nothing_waits(&self) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
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
            waiting: None,
        })
    }

    /// A place for one more body being read, made by ending bodies that
    /// stalled (see [`make_room`](Self::make_room)) when there is none.
    pub(super) async fn start_making_room(&self) -> Option<Reading<'_>> {
        loop {
            if let Some(reading) = self.start() {
                return Some(reading);
            }
            if !self.make_room(None, false, || false).await {
                return None;
            }
        }
    }

    /// Ends the body read longest (of those holding bytes, when `bytes`),
    /// if it has waited [`EVICT_AFTER`] or more since it first waited (and
    /// is not `except`), and waits (up to `RELEASE_WAIT`, and only while
    /// `until` is false) for it to give its bytes and its place back;
    /// whether one was ended.
    async fn make_room(&self, except: Option<u64>, bytes: bool, until: impl Fn() -> bool) -> bool {
        let ended = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            // A body ended meanwhile makes no more room: two bodies ending
            // each other would both be refused.
            if except.is_some_and(|number| !waiting.contains_key(&number)) {
                return false;
            }
            let oldest = waiting
                .iter()
                .find(|(&number, body)| {
                    Some(number) != except && (!bytes || body.held.load(Ordering::Relaxed) > 0)
                })
                .filter(|(_, body)| body.since.elapsed() >= EVICT_AFTER)
                .map(|(&number, _)| number);
            let Some(body) = oldest.and_then(|number| waiting.remove(&number)) else {
                return false;
            };
            // Under the lock: a body dropped from now on finds itself out
            // of the map, and says it let go.
            body.evicted.store(true, Ordering::Release);
            body
        };
        let waker = ended
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
        tracing::debug!(
            waited_ms = u64::try_from(ended.since.elapsed().as_millis()).unwrap_or(u64::MAX),
            "clink delivery: a body stalled while the body budget was full; ended to make room"
        );
        // `notify_one` keeps its permit for a wait begun after it.
        let mut released = std::pin::pin!(ended.released.notified());
        let released = std::future::poll_fn(|cx| {
            if until() {
                return std::task::Poll::Ready(());
            }
            released.as_mut().poll(cx)
        });
        let _ = tokio::time::timeout(RELEASE_WAIT, released).await;
        true
    }
}

/// One body being read: holds its bytes against the budget until dropped.
#[derive(Debug)]
pub(super) struct Reading<'a> {
    budget: &'a BodyBudget,
    held: usize,
    /// Its place among the bodies waiting for their bytes, once it waited.
    waiting: Option<(u64, Arc<Waiting>)>,
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
            if let Some((_, waiting)) = &self.waiting {
                waiting.held.store(bytes, Ordering::Relaxed);
            }
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
            if let Some((_, waiting)) = &self.waiting {
                waiting.held.store(bytes, Ordering::Relaxed);
            }
            #[cfg(test)]
            self.budget
                .peak
                .fetch_max(self.budget.bytes.load(Ordering::Acquire), Ordering::AcqRel);
        }
        taken.is_ok()
    }

    /// Notes that this body, its first bytes come, waits for more, to be
    /// woken by `waker` if it is ended to make room: the first time, it
    /// takes its place among the bodies being read.
    pub(super) fn waits(&mut self, waker: &Waker) {
        let (budget, held) = (self.budget, self.held);
        let (_, waiting) = self.waiting.get_or_insert_with(|| {
            let number = budget.next_waiting.fetch_add(1, Ordering::Relaxed);
            let waiting = Arc::new(Waiting {
                since: Instant::now(),
                held: AtomicUsize::new(held),
                evicted: AtomicBool::new(false),
                waker: Mutex::new(None),
                released: tokio::sync::Notify::new(),
            });
            budget
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(number, Arc::clone(&waiting));
            (number, waiting)
        });
        let mut held = waiting.waker.lock().unwrap_or_else(PoisonError::into_inner);
        if !held.as_ref().is_some_and(|held| held.will_wake(waker)) {
            *held = Some(waker.clone());
        }
    }

    /// Whether more than half the places for bodies are taken: a body
    /// still waiting for its first bytes then takes its place among the
    /// bodies being read, so that bodies that never send a byte cannot
    /// hold every place.
    pub(super) fn places_scarce(&self) -> bool {
        self.budget
            .reading
            .load(Ordering::Relaxed)
            .saturating_mul(2)
            > self.budget.max_reading
    }

    /// Whether this body was ended to make room for another.
    pub(super) fn evicted(&self) -> bool {
        self.waiting
            .as_ref()
            .is_some_and(|(_, waiting)| waiting.evicted.load(Ordering::Acquire))
    }

    /// Ends the body read longest of those holding bytes, a second or more
    /// (never this one), and waits for it to give its bytes back, unless
    /// this body is ended meanwhile; whether one was ended (then try
    /// again, unless this body was ended).
    pub(super) async fn make_room(&self) -> bool {
        let this = self.waiting.as_ref().map(|(number, _)| *number);
        self.budget.make_room(this, true, || self.evicted()).await
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.budget.bytes.fetch_sub(self.held, Ordering::AcqRel);
        self.budget.reading.fetch_sub(1, Ordering::AcqRel);
        if let Some((number, waiting)) = self.waiting.take() {
            let ended = self
                .budget
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&number)
                .is_none();
            if ended {
                // Taken out of the map by the body that ended it, which
                // waits for its bytes: they are back.
                waiting.released.notify_one();
            }
        }
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
