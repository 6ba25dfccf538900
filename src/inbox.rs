//! The durable inbox: acknowledge in milliseconds, handle later in order,
//! retry, dead-letter, replay.
//!
//! Clink's own advice (after Stripe's) is to answer `2xx` quickly and handle
//! events from a queue. Serve an [`InboxIntake`](crate::InboxIntake) made
//! by [`ClinkLayer::intake`](crate::ClinkLayer::intake): a verified delivery
//! is written in one write and answered `200` (a duplicate is `200` without
//! a second row; a failed write `503`). [`Workers`] then run an
//! [`EventRouter`]'s handlers on the kept events, through
//! [`EventRouter::dispatch`]:
//!
//! - **concurrently**, up to a set number at once, each inside a lease with
//!   a fencing token and the handler's timeout inside the lease (nine
//!   tenths of it, or the lease less the inbox's
//!   [call timeout](Inbox::call_timeout) where that is longer, at most
//!   half of it, counted from when the worker asked for the event, so
//!   that a claim slow to answer leaves its handler less time, not less
//!   margin);
//! - **in order per object**: the events of one object run one at a time,
//!   oldest `created` first, and each waits a reorder window after arriving
//!   (1 s by default) so that deliveries arriving close together are sorted
//!   before either runs; events about no object run in arrival order; a
//!   dead event no longer holds the later ones of its object back (run
//!   again by a replay, it comes late, and its handler is told it is
//!   stale where the router tracks freshness, as long as the store keeps
//!   the newer event's record ([`DEFAULT_FRESHNESS_RETENTION`](crate::store::DEFAULT_FRESHNESS_RETENTION),
//!   72 h, unless set otherwise), after which an event with
//!   no record looks fresh, so a handler replayed later should compare
//!   versions with its own state);
//! - **with retries**: a handler error, panic or timeout schedules the next
//!   attempt with exponential backoff and jitter; after the last attempt
//!   (36 by default, about a day of retries) the event is dead, kept
//!   with its last error until
//!   [`replay`](Inbox::replay)ed;
//! - **crash-safe**: a worker that dies mid-handler loses its lease and
//!   another takes the event; on [shutdown](WorkerPool::shutdown) a pool
//!   finishes or gives back what it holds, and has given it back when
//!   `shutdown` returns (unless the inbox did not answer within 5 s, or a
//!   handler blocks its thread: that one is left running, and its event
//!   frees itself when its lease ends). An
//!   attempt lost with its lease counts as an attempt:
//!   an event whose last attempt ended that way (a handler that crashes
//!   the process or blocks its thread every time) is dead, not run again;
//! - **on record**: each attempt's start, duration and end (completed,
//!   failed with its error, given back, or lost with its lease) is kept on
//!   the event, the newest 20 of them, in
//!   [`InboxEntry::history`](crate::store::InboxEntry::history), which the
//!   console's event page lists.
//!
//! # Metrics
//!
//! With the `metrics` feature, a pool records:
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `clink_webhook_inbox_events` | gauge | `status` (`pending`, `retrying`, `running`, `dead`) | events in the inbox, refreshed every 5 s |
//! | `clink_webhook_inbox_oldest_unhandled_seconds` | gauge | | how long the oldest event still to handle has waited |
//! | `clink_webhook_inbox_retries_total` | counter | | failed attempts recorded to be retried |
//! | `clink_webhook_inbox_dead_total` | counter | | events recorded dead after their last attempt (or at once, for no retry can help) |
//! | `clink_webhook_inbox_handled_total` | counter | | events handled |
//! | `clink_webhook_inbox_stats_failures_total` | counter | | reads of the counts above that failed or took over 5 s: the two gauges keep their last values meanwhile, so alert on this too |
//!
//! Direct handling (no inbox) answers after the handler has run: simpler,
//! no second store, and the sender's retry is the retry. The inbox answers
//! in the time of one write whatever the handler does, survives the process
//! dying between the answer and the handler, and orders each object's
//! events; it costs a durable store and a reorder window of latency.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use clink_webhooks::inbox::Workers;
//! use clink_webhooks::store::MemoryInbox;
//! use clink_webhooks::{events, ClinkLayer, EventRouter, Verifier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let inbox = Arc::new(MemoryInbox::new()); // SqliteInbox or PostgresInbox for real
//! let router = EventRouter::new().on::<events::OrderSucceeded, _>(|event| async move {
//!     // Call the payment provider, send the email, write the ledger...
//!     Ok::<_, std::io::Error>(())
//! });
//! // Deliveries are verified, written and acknowledged.
//! let intake = ClinkLayer::new(Verifier::new("whsec_...")?).intake(Arc::clone(&inbox));
//! // Workers run the router on what was kept.
//! let pool = Workers::new(inbox, router).concurrency(8)?.spawn();
//! // ...serve `intake`; on shutdown:
//! pool.shutdown(Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::events::{InboxAttempt, RawEvent};
use crate::guard::{handler_deadline_settled_within, until, CatchUnwind};
use crate::outage::{OutageLog, DEFAULT_OUTAGE_LOG_INTERVAL};
use crate::router::EventRouter;
use crate::store::{
    Inbox, InboxClaim, NewEvent, Settle, StoreError, StoreErrorKind, DEFAULT_LEASE,
};
use crate::{ConfigError, Outcome, Timestamp, VerifiedEvent};

/// The default number of events handled at once: 4.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// The default number of attempts before an event is dead: 36, which
/// with the default backoff (1 s doubling to at most 1 h, give or take a
/// fifth) go on for about a day, as Clink's own retries of a delivery do:
/// an outage of a few hours downstream leaves no event dead.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 36;
/// The default delay after arrival before an event may run: 1 s.
pub const DEFAULT_REORDER_WINDOW: Duration = Duration::from_secs(1);
/// The default wait before the second attempt: 1 s, doubling each time,
/// each wait give or take a fifth (random jitter, see
/// [`Workers::backoff`]).
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// The default cap of the doubling wait between two attempts: 1 h, which
/// the jitter of a fifth either way makes 48 to 72 minutes.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How long the metrics' count of the inbox's events waits for its answer.
#[cfg(feature = "metrics")]
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an idle worker waits before looking again, when nothing wakes it.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// How long [`WorkerPool::shutdown`] waits, after its deadline, for the
/// inbox to take back the events of the handlers it stopped.
const GIVE_BACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The first wait before a settle the inbox refused for a moment is tried
/// again; it doubles up to [`SETTLE_RETRY_MAX`].
const SETTLE_RETRY_FIRST: Duration = Duration::from_millis(20);

/// Whether a failed attempt can be mended by another.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hopeless {
    /// It may: retried, up to `max_attempts`.
    No,
    /// Its data does not decode: dead at once.
    Undecodable,
    /// Its handler said no retry can mend it ([`Permanent`](crate::router::Permanent)):
    /// dead at once.
    Permanent,
    /// A dead letter kept for its id, which does not print as itself: no
    /// handler is given it, now or on any replay; dead at once.
    InvalidId,
}

/// The longest wait between two tries of a settle.
const SETTLE_RETRY_MAX: Duration = Duration::from_secs(1);

/// For how many leases, counted from the claim, a settle the inbox refused
/// for a moment is tried again.
const SETTLE_RETRY_LEASES: u32 = 4;

/// A pool of workers to be spawned: runs an [`EventRouter`]'s handlers on
/// the events an [`Inbox`] keeps. See the [module docs](self).
pub struct Workers<S = ()> {
    inbox: Arc<dyn Inbox>,
    router: EventRouter<S>,
    settings: Settings,
    /// The inbox's outage log: a line when the workers' calls start to
    /// fail, a summary per interval, a line when one succeeds again.
    outage: Arc<OutageLog>,
    /// Where a stopped worker leaves its claim during a shutdown.
    given_back: Arc<GivenBack>,
}

impl<S> fmt::Debug for Workers<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What [`Workers`]' builder methods set.
#[derive(Debug, Clone, Copy)]
struct Settings {
    concurrency: usize,
    lease: Duration,
    handler_timeout: Option<Duration>,
    max_attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
    reorder_window: Duration,
}

impl Settings {
    /// The wait before attempt `attempt + 1`, with jitter.
    fn backoff_after(&self, attempt: u32) -> Duration {
        let doubled = self.backoff.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let wait = doubled.min(self.max_backoff);
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(attempt);
        // A factor in [0.8, 1.2).
        let factor = 0.8 + (hasher.finish() % 4000) as f64 / 10_000.0;
        wait.mul_f64(factor)
    }
}

fn check(what: &str, value: Duration, low: Duration) -> Result<Duration, ConfigError> {
    if value < low || value > crate::store::MAX_TTL {
        return Err(ConfigError::new(format!(
            "Workers::{what} must be at least {low:?} and at most 10 years"
        )));
    }
    Ok(value)
}

impl<S: Clone + Send + Sync + 'static> Workers<S> {
    /// Workers for `inbox` running `router`, with the defaults: 4 at once,
    /// a 30 s lease, 36 attempts (about a day), backoff from 1 s to 1 h, a
    /// 1 s reorder window.
    pub fn new(inbox: impl Inbox, router: EventRouter<S>) -> Self {
        Self {
            inbox: Arc::new(inbox),
            router,
            settings: Settings {
                concurrency: DEFAULT_CONCURRENCY,
                lease: DEFAULT_LEASE,
                handler_timeout: None,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                backoff: DEFAULT_BACKOFF,
                max_backoff: DEFAULT_MAX_BACKOFF,
                reorder_window: DEFAULT_REORDER_WINDOW,
            },
            outage: OutageLog::new(
                "inbox (workers)",
                "no event is handled until it answers again",
                DEFAULT_OUTAGE_LOG_INTERVAL,
            ),
            given_back: Arc::default(),
        }
    }

    /// How many events are handled at once.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `workers` is zero or over 10,000.
    pub fn concurrency(mut self, workers: usize) -> Result<Self, ConfigError> {
        if workers == 0 || workers > 10_000 {
            return Err(ConfigError::new("Workers::concurrency must be 1 to 10,000"));
        }
        self.settings.concurrency = workers;
        Ok(self)
    }

    /// How long a worker holds an event before another may take it over
    /// (default 30 s). The handler is stopped before then.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `lease` is between 10 ms and 10 years.
    pub fn lease(mut self, lease: Duration) -> Result<Self, ConfigError> {
        self.settings.lease = check("lease", lease, Duration::from_millis(10))?;
        Ok(self)
    }

    /// Stops a handler after `timeout`, counting a failed attempt; never
    /// later than nine tenths of the lease (the lease less the inbox's
    /// [call timeout](Inbox::call_timeout) where that is longer, at most
    /// half of it: its settle then lands inside the lease), counted from when its worker
    /// asked the inbox for the event (a claim slow to answer leaves the
    /// handler that much less; one that took all of it gives the event
    /// back without running the handler, the attempt not counted). What
    /// the handler does before its first `.await` counts too; a handler
    /// that blocks its thread is stopped only once it yields.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `timeout` is between 1 ms and 10 years.
    pub fn handler_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.settings.handler_timeout =
            Some(check("handler_timeout", timeout, Duration::from_millis(1))?);
        Ok(self)
    }

    /// How many attempts an event gets before it is dead (default
    /// [`DEFAULT_MAX_ATTEMPTS`], 36: about a day with the default backoff).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `attempts` is zero.
    pub fn max_attempts(mut self, attempts: u32) -> Result<Self, ConfigError> {
        if attempts == 0 {
            return Err(ConfigError::new("Workers::max_attempts must be at least 1"));
        }
        self.settings.max_attempts = attempts;
        Ok(self)
    }

    /// The wait before the second attempt, doubling for each next one up to
    /// `max`, each with up to a fifth of random jitter either way.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `first` is at least 1 ms and at most `max`.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Result<Self, ConfigError> {
        self.settings.backoff = check("backoff", first, Duration::from_millis(1))?;
        self.settings.max_backoff = check("backoff", max, first)?;
        Ok(self)
    }

    /// How long an event waits after arriving before it may run (default
    /// 1 s): deliveries about one object arriving within it are handled
    /// oldest `created` first. Zero runs events as soon as they arrive.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `delay` is over 10 years.
    pub fn reorder_window(mut self, delay: Duration) -> Result<Self, ConfigError> {
        self.settings.reorder_window = check("reorder_window", delay, Duration::ZERO)?;
        Ok(self)
    }

    /// Starts the workers on the current Tokio runtime.
    #[must_use]
    pub fn spawn(self) -> WorkerPool {
        let (lease, settle) = (self.settings.lease, self.inbox.call_timeout());
        if settle > lease / 2 {
            tracing::warn!(
                lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
                call_timeout_ms = u64::try_from(settle.as_millis()).unwrap_or(u64::MAX),
                "inbox: the inbox's call timeout is longer than half the lease, so a settle sent \
                 as a handler's time ends may land after its lease, when another worker may have \
                 run the event again; set a lease of at least twice the inbox's call timeout"
            );
        }
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(self);
        let mut tasks = JoinSet::new();
        let mut claiming = Vec::with_capacity(shared.settings.concurrency);
        for _ in 0..shared.settings.concurrency {
            let worker = Arc::clone(&shared);
            let stopped = stopped.clone();
            let flag = Arc::new(AtomicBool::new(false));
            let claims = Arc::clone(&flag);
            let task = tasks.spawn(async move { worker.run(stopped, &claims).await });
            claiming.push((task, flag));
        }
        #[cfg(feature = "metrics")]
        {
            let inbox = Arc::clone(&shared.inbox);
            let mut stopped = stopped;
            let never = Arc::new(AtomicBool::new(false));
            let task = tasks.spawn(async move {
                // There from the start, so that a rate over it sees the first.
                metrics::counter!("clink_webhook_inbox_stats_failures_total").increment(0);
                let mut failing = false;
                while !*stopped.borrow() {
                    // Not waited for past the pool's stop: an inbox that
                    // does not answer (a disk that stalls) must not hold
                    // a shutdown to its deadline.
                    tokio::select! {
                        () = record_stats(&*inbox, &mut failing) => {}
                        _ = stopped.changed() => break,
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stopped.changed() => {}
                    }
                }
            });
            claiming.push((task, never));
        }
        WorkerPool {
            stop,
            tasks,
            claiming,
            inbox: Arc::clone(&shared.inbox),
            given_back: Arc::clone(&shared.given_back),
        }
    }

    /// A worker's loop; `claiming` is set while it waits for a claim's
    /// answer, for [`WorkerPool::shutdown`] to let that answer come.
    async fn run(&self, mut stopped: watch::Receiver<bool>, claiming: &AtomicBool) {
        while !*stopped.borrow() {
            // The lease starts inside the claim's call, after this.
            let asked = tokio::time::Instant::now();
            claiming.store(true, Ordering::SeqCst);
            // A panic in an inbox of the caller's own is an error like
            // another, not the end of this worker: in the call itself too,
            // before its future (the call is made inside the guard).
            let claimed = CatchUnwind::new(async {
                self.inbox
                    .claim(self.settings.lease, self.settings.reorder_window)
                    .await
            })
            .await
            .unwrap_or_else(|panic| {
                tracing::error!(panic, "inbox: taking an event panicked");
                Err(StoreError::new(
                    StoreErrorKind::Protocol,
                    format!("the inbox's claim panicked: {panic}"),
                ))
            });
            claiming.store(false, Ordering::SeqCst);
            if claimed.is_ok() {
                self.outage.succeeded();
            }
            match claimed {
                // Stopped while the claim was under way: its event is
                // given back (by `shutdown`, which asked) and not started.
                Ok(Some(claim)) if *stopped.borrow() => drop(Held {
                    inbox: Arc::clone(&self.inbox),
                    given_back: Arc::clone(&self.given_back),
                    claim: Some(claim),
                    settling: Mutex::default(),
                    succeeded: AtomicBool::new(false),
                }),
                Ok(Some(claim)) => self.handle_guarded(claim, asked).await,
                Ok(None) => {
                    // A wait that panics is a poll's time, not the end of
                    // this worker.
                    let waited = async {
                        let waited = CatchUnwind::new(async { self.inbox.wait(IDLE_POLL).await });
                        if let Err(panic) = waited.await {
                            tracing::error!(panic, "inbox: waiting for an event panicked");
                            tokio::time::sleep(IDLE_POLL).await;
                        }
                    };
                    tokio::select! {
                        () = waited => {}
                        _ = stopped.changed() => {}
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "inbox: could not take an event; trying again shortly");
                    self.outage.failed(&error);
                    tokio::select! {
                        () = tokio::time::sleep(IDLE_POLL) => {}
                        _ = stopped.changed() => {}
                    }
                }
            }
        }
    }

    /// [`handle`](Self::handle)s a claimed event, giving it back if this
    /// worker is stopped before it is settled. A panic in the handling
    /// outside the handlers (in an inbox of the caller's own, say) is
    /// logged; when the handling had decided how to settle the event (the
    /// panic came from settling it), it is settled so once more, and
    /// otherwise (or when that panics too) the attempt is recorded as
    /// failed, counted, so that an event that panics every time ends dead,
    /// and this worker goes on.
    async fn handle_guarded(&self, claim: InboxClaim, asked: tokio::time::Instant) {
        let guard = Held {
            inbox: Arc::clone(&self.inbox),
            given_back: Arc::clone(&self.given_back),
            claim: Some(claim.clone()),
            settling: Mutex::default(),
            succeeded: AtomicBool::new(false),
        };
        let handling = self.handle(&claim, asked, &guard.settling, &guard.succeeded);
        let handled = CatchUnwind::new(handling).await;
        let Err(panic) = handled else {
            guard.settled();
            return;
        };
        let kept = &claim.entry.event;
        // What the handling had decided, if it got that far (the panic came
        // from settling it): settled so once more, since a handler that
        // succeeded must not run again, nor an event kept dead be retried.
        let noted = guard
            .settling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .or_else(|| {
                guard
                    .succeeded
                    .load(Ordering::SeqCst)
                    .then_some(Settling::Complete)
            });
        if let Some(how) = noted {
            tracing::error!(
                seq = claim.entry.seq,
                event_id = ?kept.event_id,
                event_type = ?kept.event_type,
                panic,
                "inbox: settling the event panicked; settling it again as decided"
            );
            // As the first try was: retried while the inbox is out, within
            // the settle's bound, and counted once applied.
            let retried = self.settle(&claim, how.clone(), asked, &guard.settling);
            if let Ok(result) = CatchUnwind::new(retried).await {
                how.count_if_applied(&result);
                guard.settled();
                self.settled(kept, result, false);
                return;
            }
        }
        // Recorded as failed, not given back: a given-back attempt is not
        // counted, and an event whose handling (or whose settle, twice)
        // panics every time would panic again for ever. The claim stays
        // held until then, so that a shutdown meanwhile settles it as noted.
        tracing::error!(
            seq = claim.entry.seq,
            event_id = ?kept.event_id,
            event_type = ?kept.event_type,
            panic,
            "inbox: handling the event panicked; the attempt counts as failed"
        );
        let failure = format!("handling the event panicked: {panic}");
        *guard
            .settling
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let failed = self.fail_attempt(&claim, &failure, Hopeless::No, asked, &guard.settling);
        let result = CatchUnwind::new(failed).await.unwrap_or_else(|panic| {
            Err(StoreError::new(
                StoreErrorKind::Protocol,
                format!("recording the failed attempt panicked too: {panic}"),
            ))
        });
        guard.settled();
        self.settled(kept, result, false);
    }

    /// Runs the router on a claimed event, within the handler's deadline,
    /// and settles the claim with what happened; `asked` is when the claim
    /// was asked for, before its lease started. What the claim is being
    /// settled as is noted in `settling` first, so that a worker stopped
    /// while the inbox settles it (at shutdown) leaves it to be settled so,
    /// not given back: a handler that succeeded must not run again. For
    /// the same reason `succeeded` is set once a handler succeeded, before
    /// its version is recorded.
    async fn handle(
        &self, claim: &InboxClaim, asked: tokio::time::Instant, settling: &Mutex<Option<Settling>>,
        succeeded: &AtomicBool,
    ) {
        let kept = &claim.entry.event;
        if claim.entry.attempts > self.settings.max_attempts {
            // Its last attempt ended with its lease, not settled: its worker
            // stopped, crashed or hung (a handler blocking its thread). Run
            // again, such an event would take the process down again. (Or
            // `max_attempts` was lowered below the attempts it had.)
            let had = claim.entry.attempts - 1;
            let max = self.settings.max_attempts;
            let error = if had == max {
                format!(
                    "dead: its last attempt ({max} of {max}) ended with its lease, not settled \
                     (its worker stopped, crashed or hung past the lease), or max_attempts was \
                     lowered to {max} since; replay it once the cause is fixed"
                )
            } else {
                format!(
                    "dead: it had {had} attempts, more than max_attempts ({max}): lowered since, \
                     or the settle that kept it dead at its last attempt was lost; replay it to \
                     run it again"
                )
            };
            tracing::error!(
                seq = claim.entry.seq,
                event_id = ?kept.event_id,
                event_type = ?kept.event_type,
                attempts = had,
                "inbox: the event is dead: past max_attempts, its last attempt unsettled (or max_attempts lowered)"
            );
            let how = Settling::fail(error, None);
            let result = self.settle(claim, how.clone(), asked, settling).await;
            how.count_if_applied(&result);
            self.settled(kept, result, false);
            return;
        }
        let deadline = claimed_handler_deadline(
            self.settings.lease,
            self.settings.handler_timeout,
            self.inbox.call_timeout(),
            asked.elapsed(),
        );
        // A fixed instant, not a time counted from the handler's first
        // pause: what a handler does before it (a blocking call, heavy
        // work) and the body's decode count against the lease as well.
        let ends = tokio::time::Instant::now() + deadline;
        if deadline.is_zero() {
            // The claim took the handler's whole time (a store stalled for
            // most of a lease): its handler is not started so near the end
            // of the lease, and the attempt it did not make is not counted,
            // or a slow store alone would make events dead.
            tracing::warn!(
                seq = claim.entry.seq,
                event_id = ?kept.event_id,
                "inbox: the claim took the handler's whole time; the event is given back, its \
                 attempt not counted"
            );
            let result = self.settle(claim, Settling::Release, asked, settling).await;
            self.settled(kept, result, false);
            return;
        }
        let attempt = Arc::new(InboxAttempt::new(
            claim.entry.seq,
            claim.entry.attempts,
            claim.token.as_str().to_owned(),
        ));
        // The resource is decoded for its typed handler as the envelope is read.
        let typed = self.router.decodes_typed();
        let mut permanent = false;
        let (outcome, failure) = match RawEvent::from_bytes_for(kept.body.clone(), typed) {
            Err(error) => (Outcome::InvalidEnvelope(error), Some(error.to_string())),
            // A dead letter kept for an id that does not print as itself,
            // replayed, reaches no handler, which would log it: dead again
            // at once, as the layer refused it.
            Ok(raw)
                if kept.event_id.starts_with(crate::store::INVALID_ID_LABEL)
                    && crate::events::has_invisible(raw.id()) =>
            {
                (
                    Outcome::InvalidEventId,
                    Some(
                        "the event id has a character that does not print as itself, so no \
                         handler is given it"
                            .to_owned(),
                    ),
                )
            }
            Ok(raw) => {
                let mut raw = match &kept.account {
                    Some(account) => raw.with_account(account),
                    None => raw,
                };
                raw.set_inbox_attempt(Arc::clone(&attempt));
                // Kept before the inbox recorded the key: the key is not known.
                let key = kept.signing_key.as_deref().unwrap_or("unrecorded");
                let event = VerifiedEvent::earlier(raw, kept.signed_at, key);
                // Set once a handler succeeded: stopped at the deadline
                // after that (recording its version), it was handled.
                let dispatching = self.router.dispatch_noting(event, Some(succeeded));
                match until(ends, dispatching).await {
                    Ok(dispatched) => {
                        let failure = dispatched.failure().map(str::to_owned);
                        permanent = dispatched.is_permanent();
                        (dispatched.into_outcome(), failure)
                    }
                    Err(_) if succeeded.load(Ordering::Relaxed) => {
                        tracing::error!(
                            seq = claim.entry.seq,
                            event_id = ?kept.event_id,
                            "inbox: the handler succeeded, but its version was not recorded by its \
                             deadline; done, and later stale events may look fresh"
                        );
                        (Outcome::Handled, None)
                    }
                    Err(_) => {
                        tracing::error!(
                            seq = claim.entry.seq,
                            event_id = ?kept.event_id,
                            timeout_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                            "inbox: the handler timed out; the event will be retried"
                        );
                        (Outcome::HandlerTimeout, None)
                    }
                }
            }
        };
        // The handler marked the event done in its own transaction. When it
        // then failed, that transaction may not have committed (its commit
        // failed, or a statement after the completion did): the failure is
        // recorded as any other, which changes nothing if it did commit,
        // since the event is no longer running under this claim.
        let completed_in_handler = attempt.is_completed();
        if completed_in_handler && outcome.is_acknowledged() {
            #[cfg(feature = "metrics")]
            metrics::counter!("clink_webhook_inbox_handled_total").increment(1);
            return;
        }
        if outcome == Outcome::Unhandled {
            // Acknowledged to Clink when it was queued, and done now with no
            // handler run: said where an operator looks, not at debug, so
            // that a handler missing from the workers' router shows.
            tracing::info!(
                seq = claim.entry.seq,
                event_id = ?kept.event_id,
                event_type = ?kept.event_type,
                "inbox: no handler takes this event type; done without running one"
            );
        }
        let result = if outcome.is_acknowledged() {
            let completed = self
                .settle(claim, Settling::Complete, asked, settling)
                .await;
            // Counted once it is done: a completion that did not apply runs
            // the event again, to be counted then.
            Settling::Complete.count_if_applied(&completed);
            completed
        } else {
            let failure = failure.unwrap_or_else(|| outcome.as_str().to_owned());
            // Data that does not decode (or an envelope that does not read)
            // fails the same way every time, and a handler's permanent
            // error says it will: dead at once.
            let hopeless = if matches!(outcome, Outcome::Undecodable | Outcome::InvalidEnvelope(_))
            {
                Hopeless::Undecodable
            } else if outcome == Outcome::InvalidEventId {
                Hopeless::InvalidId
            } else if permanent {
                Hopeless::Permanent
            } else {
                Hopeless::No
            };
            self.fail_attempt(claim, &failure, hopeless, asked, settling)
                .await
        };
        self.settled(kept, result, completed_in_handler);
    }

    /// Records the claimed attempt as failed with `failure`: retried after
    /// a backoff, or dead after the last attempt (or at once when
    /// `hopeless`); as [`settle`](Self::settle) does.
    async fn fail_attempt(
        &self, claim: &InboxClaim, failure: &str, hopeless: Hopeless, asked: tokio::time::Instant,
        settling: &Mutex<Option<Settling>>,
    ) -> Result<Settle, StoreError> {
        let kept = &claim.entry.event;
        let attempts = claim.entry.attempts;
        let retry_at =
            (hopeless == Hopeless::No && attempts < self.settings.max_attempts).then(|| {
                let wait = self.settings.backoff_after(attempts);
                let millis = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                Timestamp::from_millis(Timestamp::now().as_millis().saturating_add(millis))
            });
        let error = match retry_at {
            Some(at) => format!(
                "attempt {attempts} of {} failed; the next runs at {at}: {failure}",
                self.settings.max_attempts
            ),
            None if hopeless == Hopeless::Undecodable => format!(
                "dead: its data does not decode, so no retry can help; replay it after an \
                 upgrade that decodes it: {failure}"
            ),
            None if hopeless == Hopeless::Permanent => format!(
                "dead: its handler failed with a permanent error, so no retry can help; replay \
                 it once the cause is fixed: {failure}"
            ),
            None if hopeless == Hopeless::InvalidId => {
                format!("dead: {failure}; no replay changes that (its body is kept here, to read)")
            }
            None => format!(
                "dead after {attempts} attempts; the last failed: {failure}; replay it once \
                 the cause is fixed"
            ),
        };
        if retry_at.is_none() {
            tracing::error!(
                seq = claim.entry.seq,
                event_id = ?kept.event_id,
                event_type = ?kept.event_type,
                attempts,
                error = ?error,
                "inbox: the event is dead"
            );
        }
        let how = Settling::fail(error, retry_at);
        let settled = self.settle(claim, how.clone(), asked, settling).await;
        how.count_if_applied(&settled);
        settled
    }

    /// Settles `claim` as `how`, noted in `settling` first (see
    /// [`handle`](Self::handle)). A settle the inbox refuses for a moment
    /// (unavailable: all of SQLite's calls busy, a pool's connection lost;
    /// or not answering in time) is tried again after a short wait, for
    /// [`SETTLE_RETRY_LEASES`] leases counted from `asked`: given up, its
    /// event would run again, its handler's effects twice, once its lease
    /// ended. Past the lease's end too: the claim's token fences a settle,
    /// so one that lands after another worker took the event over is
    /// refused (`LeaseLost`), and one that lands before saves the second
    /// run.
    async fn settle(
        &self, claim: &InboxClaim, how: Settling, asked: tokio::time::Instant,
        settling: &Mutex<Option<Settling>>,
    ) -> Result<Settle, StoreError> {
        *settling.lock().unwrap_or_else(PoisonError::into_inner) = Some(how.clone());
        let lease_end = asked
            .checked_add(self.settings.lease.saturating_mul(SETTLE_RETRY_LEASES))
            .unwrap_or_else(|| asked + self.settings.lease);
        let mut wait = SETTLE_RETRY_FIRST;
        loop {
            let result = how.apply(&*self.inbox, claim).await;
            let passing = result.as_ref().is_err_and(|error| {
                matches!(
                    error.kind(),
                    StoreErrorKind::Unavailable | StoreErrorKind::Timeout
                )
            });
            if !passing || tokio::time::Instant::now() + wait >= lease_end {
                return result;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(SETTLE_RETRY_MAX);
        }
    }

    /// Logs what settling the event came to, unless it was applied.
    fn settled(
        &self, kept: &NewEvent, result: Result<Settle, StoreError>, completed_in_handler: bool,
    ) {
        match result {
            Ok(Settle::Applied) => {}
            Ok(Settle::LeaseLost) if completed_in_handler => tracing::warn!(
                event_id = ?kept.event_id,
                "inbox: the handler failed after marking the event done in its own transaction, \
                 which committed (or another worker took it over): the event stays as that left it"
            ),
            Ok(Settle::LeaseLost) => tracing::warn!(
                event_id = ?kept.event_id,
                "inbox: the event was not settled by this call: another worker took it over (its \
                 lease had ended), or an earlier try of this settle landed unanswered"
            ),
            Err(error)
                if matches!(
                    error.kind(),
                    StoreErrorKind::Unavailable | StoreErrorKind::Timeout
                ) =>
            {
                tracing::debug!(
                    %error,
                    event_id = ?kept.event_id,
                    "inbox: could not settle the event; it runs again when its lease ends"
                );
                self.outage.failed(&error);
            }
            Err(error) => tracing::error!(
                %error,
                event_id = ?kept.event_id,
                "inbox: could not settle the event; it runs again when its lease ends"
            ),
        }
    }
}

/// The time the handler of an event claimed `taken` ago gets, from an
/// inbox whose settle may take up to `settle` (its call timeout):
/// [`handler_deadline_settled_within`] (the handler's timeout, at most the
/// lease less the longer of a tenth of it and `settle`), and never past
/// that point of the lease counted from the claim, so that a claim slow to
/// answer (waiting for a pool's connection or for SQLite's lock) still
/// leaves the settle its time before the lease ends. Zero when the claim
/// took that long itself (the event is then given back).
fn claimed_handler_deadline(
    lease: Duration, timeout: Option<Duration>, settle: Duration, taken: Duration,
) -> Duration {
    let left = handler_deadline_settled_within(lease, None, settle).saturating_sub(taken);
    handler_deadline_settled_within(lease, timeout, settle).min(left)
}

/// Publishes the inbox's counts as gauges; a read that fails is counted
/// and logged, at `warn` the first time in a row (`failing` says whether
/// the last one failed).
#[cfg(feature = "metrics")]
async fn record_stats(inbox: &dyn Inbox, failing: &mut bool) {
    // Bounded, so that an answer that never comes leaves the gauges as
    // they were and the next round asks again.
    let stats = match crate::store::timed(STATS_TIMEOUT, inbox.stats()).await {
        Ok(stats) => stats,
        Err(error) => {
            metrics::counter!("clink_webhook_inbox_stats_failures_total").increment(1);
            if std::mem::replace(failing, true) {
                tracing::debug!(%error, "inbox: cannot read its counts; the gauges keep their last values");
            } else {
                tracing::warn!(
                    %error,
                    "inbox: cannot read its counts; the gauges keep their last values until a read answers"
                );
            }
            return;
        }
    };
    if std::mem::replace(failing, false) {
        tracing::info!("inbox: its counts are read again");
    }
    for (status, count) in [
        ("pending", stats.pending),
        ("retrying", stats.retrying),
        ("running", stats.running),
        ("dead", stats.dead),
    ] {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("clink_webhook_inbox_events", "status" => status).set(count as f64);
    }
    let waited = stats.oldest_unhandled.map_or(0.0, |oldest| {
        let millis = Timestamp::now()
            .as_millis()
            .saturating_sub(oldest.as_millis());
        #[allow(clippy::cast_precision_loss)]
        let seconds = millis.max(0) as f64 / 1000.0;
        seconds
    });
    metrics::gauge!("clink_webhook_inbox_oldest_unhandled_seconds").set(waited);
}

/// The claims of workers stopped during a [`WorkerPool::shutdown`], which
/// `shutdown` gives back itself: a release spawned as the worker is dropped
/// would be cancelled with the runtime once `shutdown` returns.
#[derive(Default)]
struct GivenBack {
    /// Set once the pool is shutting down.
    stopping: AtomicBool,
    /// The claims to give back, or to settle as their workers were
    /// settling them when stopped.
    claims: Mutex<Vec<(InboxClaim, Option<Settling>)>>,
}

impl GivenBack {
    /// The claims left so far, taken.
    fn take(&self) -> Vec<(InboxClaim, Option<Settling>)> {
        std::mem::take(&mut *self.claims.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Gives a claim back if its worker is stopped before settling it: to the
/// pool during a shutdown, else in a task of its own; or, stopped while it
/// was being settled, settles it so (see [`Settling`]).
struct Held {
    inbox: Arc<dyn Inbox>,
    given_back: Arc<GivenBack>,
    claim: Option<InboxClaim>,
    /// What the claim was being settled as, once the handling decided.
    settling: Mutex<Option<Settling>>,
    /// Set once a handler succeeded: stopped after that, before its
    /// settling was noted (its version being recorded), the claim is
    /// completed.
    succeeded: AtomicBool,
}

/// What a worker settles its claim as once its handling is over.
#[derive(Clone, Debug)]
enum Settling {
    /// The handler succeeded (or was not needed): the event is done.
    Complete,
    /// The attempt failed, recorded with `error`: run again at `retry_at`,
    /// or dead.
    Fail {
        error: String,
        retry_at: Option<Timestamp>,
    },
    /// The handler was not run (the claim took its whole time): given
    /// back, the attempt not counted.
    Release,
}

impl Settling {
    fn fail(error: String, retry_at: Option<Timestamp>) -> Self {
        Self::Fail { error, retry_at }
    }

    /// Counts the settle in the inbox's metrics once `result` says it
    /// applied (handled, retried or dead): a settle that finds the event
    /// taken over, or marked done by the handler's own transaction,
    /// recorded nothing.
    #[cfg_attr(
        not(feature = "metrics"),
        expect(clippy::unused_self, unused_variables)
    )]
    fn count_if_applied(&self, result: &Result<Settle, StoreError>) {
        #[cfg(feature = "metrics")]
        if matches!(result, Ok(Settle::Applied)) {
            match self {
                Self::Complete => metrics::counter!("clink_webhook_inbox_handled_total"),
                Self::Fail {
                    retry_at: Some(_), ..
                } => metrics::counter!("clink_webhook_inbox_retries_total"),
                Self::Fail { retry_at: None, .. } => {
                    metrics::counter!("clink_webhook_inbox_dead_total")
                }
                Self::Release => return,
            }
            .increment(1);
        }
    }

    /// Settles `claim` so in `inbox`.
    async fn apply(&self, inbox: &dyn Inbox, claim: &InboxClaim) -> Result<Settle, StoreError> {
        match self {
            Self::Complete => inbox.complete(claim).await,
            Self::Fail { error, retry_at } => inbox.fail(claim, error, *retry_at).await,
            Self::Release => inbox.release(claim).await,
        }
    }
}

/// Settles `claim` as `settling` says, or gives it back when the worker
/// stopped before its handling decided.
async fn settle_or_give_back(
    inbox: &dyn Inbox, claim: &InboxClaim, settling: Option<&Settling>,
) -> Result<Settle, StoreError> {
    match settling {
        // Counted here: the worker that noted it stopped before counting.
        Some(how) => {
            let result = how.apply(inbox, claim).await;
            how.count_if_applied(&result);
            result
        }
        None => inbox.release(claim).await,
    }
}

impl Held {
    fn settled(mut self) {
        self.claim = None;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        let settling = self
            .settling
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .or_else(|| {
                self.succeeded
                    .load(Ordering::SeqCst)
                    .then_some(Settling::Complete)
            });
        if self.given_back.stopping.load(Ordering::SeqCst) {
            self.given_back
                .claims
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((claim, settling));
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inbox = Arc::clone(&self.inbox);
        runtime.spawn(async move {
            let settled = settle_or_give_back(&*inbox, &claim, settling.as_ref()).await;
            if let Err(error) = settled {
                tracing::warn!(%error, "inbox: could not settle or give back an event; it frees itself when its lease ends");
            }
        });
    }
}

/// Running workers; see [`Workers::spawn`].
pub struct WorkerPool {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Each task, and whether it waits for a claim's answer (the pool's
    /// metrics task never does).
    claiming: Vec<(tokio::task::AbortHandle, Arc<AtomicBool>)>,
    inbox: Arc<dyn Inbox>,
    given_back: Arc<GivenBack>,
}

impl fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerPool")
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl WorkerPool {
    /// Waits until nothing in the inbox is due: no event pending, retrying
    /// with its retry's time come, or running (events kept for a later
    /// retry, dead or done do not count). For tests of an app: deliver,
    /// then `drained`, then assert on what the handlers did.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use clink_webhooks::inbox::Workers;
    /// use clink_webhooks::store::{Inbox, MemoryInbox, NewEvent};
    /// use clink_webhooks::{EventRouter, Timestamp};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let inbox = Arc::new(MemoryInbox::new());
    /// let pool = Workers::new(Arc::clone(&inbox), EventRouter::new())
    ///     .reorder_window(Duration::ZERO)?
    ///     .spawn();
    /// let body = r#"{"id":"evt_1","type":"order.succeeded","data":{}}"#;
    /// let now = Timestamp::now();
    /// let event = NewEvent::new(None, "evt_1".into(), "order.succeeded".into(), None, None, now, now, body.into());
    /// inbox.insert(&event).await?;
    /// pool.drained(Duration::from_secs(10)).await?;
    /// assert_eq!(inbox.stats().await?.due, 0);
    /// # pool.shutdown(Duration::from_secs(1)).await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`NotDrained`] when events are still due at `deadline`, or the
    /// inbox cannot be read.
    pub async fn drained(&self, deadline: Duration) -> Result<(), NotDrained> {
        // A deadline too far to be an instant (`Duration::MAX`) is none.
        let until = tokio::time::Instant::now().checked_add(deadline);
        let mut last_due = None;
        loop {
            // An inbox that does not answer (a disk that stalls) does not
            // hold this past its deadline.
            let left = until.map_or(Duration::MAX, |until| {
                until.saturating_duration_since(tokio::time::Instant::now())
            });
            let stats = crate::store::timed(left, async { self.inbox.stats().await }).await;
            let due = match stats {
                Ok(stats) if stats.due == 0 => return Ok(()),
                Ok(stats) => {
                    last_due = Some(stats.due);
                    Ok(stats.due)
                }
                // The deadline came during the call: what the last answer
                // said.
                Err(error) if error.kind() == StoreErrorKind::Timeout => last_due.ok_or(error),
                Err(error) => Err(error),
            };
            if until.is_some_and(|until| tokio::time::Instant::now() >= until) {
                return Err(NotDrained { deadline, due });
            }
            // A short poll, not the inbox's wait: a wake-up goes to one
            // waiter, and is for a worker.
            tokio::time::sleep(IDLE_POLL / 10).await;
        }
    }

    /// Stops taking events, lets the handlers running now finish for at
    /// most `deadline`, then stops them and gives their events back (they
    /// run again, from the start, on the next worker, and the stopped
    /// attempt is not counted). A worker stopped once its handler had
    /// finished, while the inbox recorded how (a slow completion), has its
    /// event settled as it was: completed after a success, never given
    /// back to run again. A worker still waiting for the inbox to answer
    /// its claim at `deadline` (a claim that may have landed: a database
    /// lock waited for, say) is let have the answer, within the same 5 s
    /// as below, and gives its event back.
    ///
    /// When it returns, the events are given back: it waits for the inbox
    /// to take them, for at most 5 s more than `deadline` (each event the
    /// inbox did not take by then, or refused, is logged, and is taken over
    /// when its lease ends, that attempt then counting as lost with its
    /// lease). The runtime may be dropped as soon as it returns.
    ///
    /// A handler that blocks its thread (a synchronous call that does not
    /// return) cannot be stopped: a stopped handler ends only at its next
    /// `.await`. One still running 5 s after `deadline` is logged as an
    /// error and left running, detached, and `shutdown` returns all the
    /// same; its event, never settled, is taken over when its lease ends
    /// (that attempt counting as lost with its lease). Dropping the runtime
    /// then waits for that thread, as Tokio always does. On a
    /// current-thread runtime such a handler blocks the only thread, and
    /// `shutdown` with it.
    pub async fn shutdown(self, deadline: Duration) {
        let Self {
            stop,
            mut tasks,
            claiming,
            inbox,
            given_back,
        } = self;
        // Set before the workers are told to stop: from here on, a worker
        // stopped (or ended by a panic) leaves its claim to this call.
        given_back.stopping.store(true, Ordering::SeqCst);
        let _ = stop.send(true);
        let finished = tokio::time::timeout(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        // One bound, from the deadline, for stopping the handlers still
        // running and for giving their events back.
        let until = tokio::time::Instant::now() + GIVE_BACK_TIMEOUT;
        // Given back side by side, each in a task awaited here, so that one
        // slow call does not hold the others back.
        let mut releases = JoinSet::new();
        if finished.is_err() {
            tracing::warn!(
                "inbox: handlers still running at the shutdown deadline; giving their events back"
            );
            // A worker waiting for a claim's answer is let have it (within
            // the same 5 s): the inbox may have given it an event already
            // (a claim that commits, then answers late), which it then gives
            // back, rather than leave it held, its attempt counted, until
            // its lease ends.
            for (task, waiting) in &claiming {
                if !waiting.load(Ordering::SeqCst) {
                    task.abort();
                }
            }
            // A stopped task has left its claim here once it has ended; its
            // event is given back while the others end.
            let stopped = tokio::time::timeout_at(until, async {
                while tasks.join_next().await.is_some() {
                    give_back(&mut releases, &inbox, given_back.take());
                }
            })
            .await;
            if stopped.is_err() {
                tracing::error!(
                    left = tasks.len(),
                    "inbox: handlers blocking their threads, or claims unanswered, were still \
                     running 5 s after the shutdown deadline; the claims are stopped, the \
                     handlers left running, and their events free themselves when their leases \
                     end"
                );
                tasks.abort_all();
                tasks.detach_all();
            }
        }
        give_back(&mut releases, &inbox, given_back.take());
        if releases.is_empty() {
            return;
        }
        let released = tokio::time::timeout_at(until, async {
            while releases.join_next().await.is_some() {}
        })
        .await;
        if released.is_err() {
            tracing::warn!(
                left = releases.len(),
                "inbox: the inbox did not take events back within 5 s of the shutdown deadline; \
                 they free themselves when their leases end"
            );
            releases.shutdown().await;
        }
    }
}

/// Gives `claims` back to `inbox`, or settles those whose workers were
/// settling them, each in a task of `releases`.
fn give_back(
    releases: &mut JoinSet<()>, inbox: &Arc<dyn Inbox>, claims: Vec<(InboxClaim, Option<Settling>)>,
) {
    for (claim, settling) in claims {
        let inbox = Arc::clone(inbox);
        releases.spawn(async move {
            let settled = settle_or_give_back(&*inbox, &claim, settling.as_ref()).await;
            if let Err(error) = settled {
                tracing::warn!(
                    %error,
                    seq = claim.entry.seq,
                    "inbox: could not settle or give back an event at shutdown; it frees itself \
                     when its lease ends"
                );
            }
        });
    }
}

/// Events were still due when [`WorkerPool::drained`] gave up.
#[derive(Debug)]
pub struct NotDrained {
    deadline: Duration,
    due: Result<u64, StoreError>,
}

impl NotDrained {
    /// How many events were still due, when the inbox could say.
    #[must_use]
    pub fn due(&self) -> Option<u64> {
        self.due.as_ref().ok().copied()
    }
}

impl fmt::Display for NotDrained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.due {
            Ok(due) => write!(
                f,
                "{due} inbox events still due after {:?}; are the workers running and the handlers finishing?",
                self.deadline
            ),
            Err(error) => write!(f, "the inbox could not say what is due: {error}"),
        }
    }
}

impl std::error::Error for NotDrained {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.due.as_ref().err().map(|e| e as _)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;

    use super::*;
    use crate::data::Order;
    use crate::events::{self, PREDECODED_TAKEN};
    use crate::store::{
        InboxEntry, InboxFilter, InboxStats, Inserted, MemoryInbox, NewEvent, Replayed,
    };
    use crate::{BoxFuture, Event};

    /// The default attempts, with the default backoff, retry an event for
    /// about a day (as Clink retries a delivery), whatever the jitter: an
    /// outage downstream of some hours leaves nothing dead.
    #[test]
    fn the_default_retries_last_about_a_day() {
        let workers = Workers::new(MemoryInbox::new(), EventRouter::new());
        let span: Duration = (1..workers.settings.max_attempts)
            .map(|attempt| workers.settings.backoff_after(attempt))
            .sum();
        let hours = span.as_secs_f64() / 3600.0;
        assert!((19.0..=29.0).contains(&hours), "{hours} h");
    }

    /// Workers decode a claimed event's resource for its typed handler as
    /// they read its envelope, in one pass, and the handler's decode takes
    /// it (the workers' tasks run on this test's one thread).
    #[tokio::test]
    async fn workers_decode_the_resource_with_the_envelope() {
        let inbox = MemoryInbox::new();
        let body =
            r#"{"id":"evt_1","type":"order.succeeded","data":{"object":{"orderId":"ord_1"}}}"#;
        let event = NewEvent::new(
            None,
            "evt_1".to_owned(),
            "order.succeeded".to_owned(),
            None,
            None,
            Timestamp::now(),
            Timestamp::now(),
            Bytes::from(body),
        );
        inbox.insert(&event).await.unwrap();
        let (ran, mut handled) = tokio::sync::mpsc::unbounded_channel();
        let router =
            EventRouter::new().on::<events::OrderSucceeded, _>(move |event: Event<Order>| {
                let _ = ran.send(event.data.order_id);
                std::future::ready(Ok::<_, Infallible>(()))
            });
        let before = PREDECODED_TAKEN.with(std::cell::Cell::get);
        let pool = Workers::new(inbox, router)
            .reorder_window(Duration::ZERO)
            .unwrap()
            .spawn();
        // A guard against a hang on a broken tree, far beyond what a slow
        // machine needs: the event is waiting before the workers start.
        let ran = tokio::time::timeout(Duration::from_secs(120), handled.recv())
            .await
            .expect("the workers ran the event's handler");
        assert_eq!(ran, Some(Some("ord_1".into())));
        assert_eq!(PREDECODED_TAKEN.with(std::cell::Cell::get), before + 1);
        pool.shutdown(Duration::from_secs(10)).await;
    }

    /// A claim that took most of the lease leaves its handler the rest of
    /// nine tenths of the lease, down to none, whatever the timeout.
    #[test]
    fn a_slow_claim_shortens_the_handlers_deadline() {
        let lease = Duration::from_secs(30);
        let s = Duration::from_secs;
        let quick = Duration::ZERO;
        assert_eq!(claimed_handler_deadline(lease, None, quick, quick), s(27));
        assert_eq!(claimed_handler_deadline(lease, None, quick, s(20)), s(7));
        assert_eq!(
            claimed_handler_deadline(lease, Some(s(5)), quick, s(20)),
            s(5)
        );
        assert_eq!(
            claimed_handler_deadline(lease, Some(s(5)), quick, s(25)),
            s(2)
        );
        assert_eq!(
            claimed_handler_deadline(lease, None, quick, s(27)),
            Duration::ZERO
        );
        assert_eq!(
            claimed_handler_deadline(lease, None, quick, s(3600)),
            Duration::ZERO
        );
        // An inbox whose settle may take 5 s leaves the handler 25 s, less
        // the claim's time; one whose settle may take longer than half the
        // lease, half of it.
        assert_eq!(claimed_handler_deadline(lease, None, s(5), quick), s(25));
        assert_eq!(claimed_handler_deadline(lease, None, s(5), s(20)), s(5));
        assert_eq!(
            claimed_handler_deadline(lease, Some(s(10)), s(5), s(20)),
            s(5)
        );
        assert_eq!(claimed_handler_deadline(lease, None, s(60), quick), s(15));
        assert_eq!(claimed_handler_deadline(lease, None, s(1), quick), s(27));
    }

    /// A memory inbox whose claims answer `delay` after they took their
    /// event (its lease running meanwhile), and which reports each failed
    /// attempt with the time it was recorded.
    struct SlowClaims {
        inner: Arc<MemoryInbox>,
        delay: Duration,
        failed: tokio::sync::mpsc::UnboundedSender<tokio::time::Instant>,
        /// When set, a claim that took an event says so on the sender,
        /// then waits for the `Notify` before answering.
        gate: Option<(
            tokio::sync::mpsc::UnboundedSender<()>,
            Arc<tokio::sync::Notify>,
        )>,
        /// Counts every claim asked for.
        claims: Arc<AtomicUsize>,
        /// How completions and failures are slowed or refused.
        settles: Arc<Settles>,
    }

    /// What [`SlowClaims`] does to completions and failures.
    #[derive(Default)]
    struct Settles {
        /// The first waits this long (on the paused clock) before it is
        /// made.
        delay: Duration,
        /// This many are refused as unavailable first.
        refusals: AtomicUsize,
        /// Counts those asked for.
        asked: AtomicUsize,
        /// Whether the inbox's `stats` never answers (a disk that stalls).
        stats_stalled: bool,
        /// When set, `stats` answers this many due the first time, then
        /// never again.
        stats_due_then_stalled: Option<u64>,
        /// Counts the `stats` asked for.
        stats_asked: AtomicUsize,
    }

    impl Settles {
        /// Waits, or refuses, as set.
        async fn hold(&self) -> Result<(), StoreError> {
            if self.asked.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(self.delay).await;
            }
            let refused = self
                .refusals
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refused {
                return Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    "every call is busy",
                ));
            }
            Ok(())
        }
    }

    impl Inbox for SlowClaims {
        fn insert<'a>(
            &'a self, event: &'a NewEvent,
        ) -> BoxFuture<'a, Result<Inserted, StoreError>> {
            self.inner.insert(event)
        }
        fn insert_dead<'a>(
            &'a self, event: &'a NewEvent, error: &'a str,
        ) -> BoxFuture<'a, Result<Inserted, StoreError>> {
            self.inner.insert_dead(event, error)
        }
        fn claim(
            &self, lease: Duration, window: Duration,
        ) -> BoxFuture<'_, Result<Option<InboxClaim>, StoreError>> {
            Box::pin(async move {
                self.claims.fetch_add(1, Ordering::SeqCst);
                let claimed = self.inner.claim(lease, window).await?;
                if claimed.is_some() {
                    if let Some((taken, go)) = &self.gate {
                        let _ = taken.send(());
                        go.notified().await;
                    }
                    // A claim slow to answer (on the paused clock).
                    tokio::time::sleep(self.delay).await;
                }
                Ok(claimed)
            })
        }
        fn complete<'a>(
            &'a self, claim: &'a InboxClaim,
        ) -> BoxFuture<'a, Result<Settle, StoreError>> {
            Box::pin(async move {
                self.settles.hold().await?;
                self.inner.complete(claim).await
            })
        }
        fn fail<'a>(
            &'a self, claim: &'a InboxClaim, error: &'a str, retry_at: Option<Timestamp>,
        ) -> BoxFuture<'a, Result<Settle, StoreError>> {
            let _ = self.failed.send(tokio::time::Instant::now());
            Box::pin(async move {
                self.settles.hold().await?;
                self.inner.fail(claim, error, retry_at).await
            })
        }
        fn release<'a>(
            &'a self, claim: &'a InboxClaim,
        ) -> BoxFuture<'a, Result<Settle, StoreError>> {
            self.inner.release(claim)
        }
        fn list<'a>(
            &'a self, filter: &'a InboxFilter, limit: usize,
        ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
            self.inner.list(filter, limit)
        }
        fn get(&self, seq: i64) -> BoxFuture<'_, Result<Option<InboxEntry>, StoreError>> {
            self.inner.get(seq)
        }
        fn replay(&self, seq: i64, force: bool) -> BoxFuture<'_, Result<Replayed, StoreError>> {
            self.inner.replay(seq, force)
        }
        fn replay_matching<'a>(
            &'a self, filter: &'a InboxFilter, force: bool,
        ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
            self.inner.replay_matching(filter, force)
        }
        fn purge(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
            self.inner.purge(before)
        }
        fn purge_dead(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
            self.inner.purge_dead(before)
        }
        fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>> {
            if self.settles.stats_stalled {
                return Box::pin(std::future::pending());
            }
            if let Some(due) = self.settles.stats_due_then_stalled {
                if self.settles.stats_asked.fetch_add(1, Ordering::SeqCst) > 0 {
                    return Box::pin(std::future::pending());
                }
                let stats = InboxStats {
                    due,
                    ..InboxStats::default()
                };
                return Box::pin(std::future::ready(Ok(stats)));
            }
            self.inner.stats()
        }
        fn check_writable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            self.inner.check_writable()
        }
        fn wait(&self, timeout: Duration) -> BoxFuture<'_, ()> {
            self.inner.wait(timeout)
        }
    }

    /// An `order.succeeded` event `evt_1` about no object, received now.
    fn evt_1() -> NewEvent {
        NewEvent::new(
            None,
            "evt_1".to_owned(),
            "order.succeeded".to_owned(),
            None,
            None,
            Timestamp::now(),
            Timestamp::now(),
            Bytes::from(r#"{"id":"evt_1","type":"order.succeeded","data":{}}"#),
        )
    }

    /// An event whose handler never finishes, claimed by `SlowClaims`
    /// answering after `delay` of a 10 s lease: when its attempt is failed,
    /// after the pool started (on the paused clock), and whether its
    /// handler ran.
    async fn timed_out_after_a_slow_claim(delay: Duration) -> (Duration, bool) {
        let inbox = MemoryInbox::new();
        let event = evt_1();
        inbox.insert(&event).await.unwrap();
        let (failed, mut failures) = tokio::sync::mpsc::unbounded_channel();
        let ran = Arc::new(AtomicBool::new(false));
        let running = Arc::clone(&ran);
        let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
            running.store(true, Ordering::SeqCst);
            async {
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(())
            }
        });
        let started = tokio::time::Instant::now();
        let pool = Workers::new(
            SlowClaims {
                inner: Arc::new(inbox),
                delay,
                failed,
                gate: None,
                claims: Arc::default(),
                settles: Arc::default(),
            },
            router,
        )
        .concurrency(1)
        .and_then(|w| w.lease(Duration::from_secs(10)))
        .and_then(|w| w.reorder_window(Duration::ZERO))
        .unwrap()
        .spawn();
        let at = failures.recv().await.expect("the attempt was failed");
        pool.shutdown(Duration::from_secs(1)).await;
        (at - started, ran.load(Ordering::SeqCst))
    }

    /// A handler is stopped nine tenths of the lease after its claim was
    /// asked for, however long the claim took to answer (a claim that took
    /// that long itself gives the event back unrun: the suite's
    /// `a_claim_that_took_the_handlers_whole_time_gives_the_event_back_uncounted`).
    #[tokio::test(start_paused = true)]
    async fn a_handler_stops_within_the_lease_counted_from_its_claim() {
        let (at, ran) = timed_out_after_a_slow_claim(Duration::from_secs(7)).await;
        assert_eq!(at, Duration::from_secs(9));
        assert!(ran);
        let (at, ran) = timed_out_after_a_slow_claim(Duration::from_millis(8_990)).await;
        assert_eq!(at, Duration::from_secs(9));
        assert!(ran);
    }

    /// The handler's time ends at a fixed instant: work it does before its
    /// first pause (here a blocking sleep of 4 s of a 5 s lease) counts,
    /// and it is stopped 4.5 s after its claim, before the lease ends and
    /// another worker could run the event beside it, not 4.5 s after that
    /// pause. On the real clock: a blocking sleep does not move a paused
    /// one.
    #[tokio::test]
    async fn a_handlers_work_before_its_first_pause_counts_against_the_lease() {
        let inbox = MemoryInbox::new();
        inbox.insert(&evt_1()).await.unwrap();
        let (failed, mut failures) = tokio::sync::mpsc::unbounded_channel();
        let started = Arc::new(Mutex::new(None));
        let starting = Arc::clone(&started);
        let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
            *starting.lock().unwrap() = Some(tokio::time::Instant::now());
            std::thread::sleep(Duration::from_secs(4));
            async {
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(())
            }
        });
        let pool = Workers::new(
            SlowClaims {
                inner: Arc::new(inbox),
                delay: Duration::ZERO,
                failed,
                gate: None,
                claims: Arc::default(),
                settles: Arc::default(),
            },
            router,
        )
        .concurrency(1)
        .and_then(|w| w.lease(Duration::from_secs(5)))
        .and_then(|w| w.reorder_window(Duration::ZERO))
        .unwrap()
        .spawn();
        let at = failures.recv().await.expect("the attempt was failed");
        pool.shutdown(Duration::from_secs(1)).await;
        let started = started.lock().unwrap().expect("the handler ran");
        // 4.5 s when counted from the claim; 8.5 s from the first pause.
        let ran = at - started;
        assert!(
            ran < Duration::from_millis(6_500),
            "stopped {ran:?} after it started, past its 5 s lease"
        );
    }

    /// An insert wakes one idle worker, not every one: the worker that
    /// takes the event wakes one more, in case another is due, and the
    /// event's completion one, for the event it may have held back.
    #[tokio::test(start_paused = true)]
    async fn an_insert_wakes_one_idle_worker_not_all() {
        const WORKERS: usize = 8;
        let inbox = Arc::new(MemoryInbox::new());
        let claims = Arc::new(AtomicUsize::new(0));
        let (handled, mut handling) = tokio::sync::mpsc::unbounded_channel();
        let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
            let _ = handled.send(());
            std::future::ready(Ok::<_, Infallible>(()))
        });
        let (failed, _failures) = tokio::sync::mpsc::unbounded_channel();
        let pool = Workers::new(
            SlowClaims {
                inner: Arc::clone(&inbox),
                delay: Duration::ZERO,
                failed,
                gate: None,
                claims: Arc::clone(&claims),
                settles: Arc::default(),
            },
            router,
        )
        .concurrency(WORKERS)
        .and_then(|w| w.reorder_window(Duration::ZERO))
        .unwrap()
        .spawn();
        // On the paused clock, a sleep shorter than the idle poll ends once
        // every task has run as far as it can without the clock.
        let settle = || tokio::time::sleep(Duration::from_millis(1));
        settle().await;
        let idle = claims.load(Ordering::SeqCst);
        assert_eq!(idle, WORKERS, "each worker looked once, found nothing");
        inbox.insert(&evt_1()).await.unwrap();
        handling.recv().await.expect("the event was handled");
        settle().await;
        let woken = claims.load(Ordering::SeqCst) - idle;
        // The worker woken, the one it woke, the one the completion woke,
        // and the first worker looking again once done.
        assert!(
            woken <= 4,
            "{woken} claims for one event with {WORKERS} idle workers"
        );
        pool.shutdown(Duration::from_secs(1)).await;
    }

    /// A claim that answers after `shutdown` asked the workers to stop
    /// does not start its handler: its event is given back, its attempt
    /// not counted.
    #[tokio::test]
    async fn a_claim_answered_once_stopping_is_given_back_unrun() {
        let inbox = Arc::new(MemoryInbox::new());
        let event = evt_1();
        inbox.insert(&event).await.unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let running = Arc::clone(&ran);
        let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
            running.store(true, Ordering::SeqCst);
            std::future::ready(Ok::<_, Infallible>(()))
        });
        let (taken, mut claimed) = tokio::sync::mpsc::unbounded_channel();
        let go = Arc::new(tokio::sync::Notify::new());
        let (failed, _failures) = tokio::sync::mpsc::unbounded_channel();
        let pool = Workers::new(
            SlowClaims {
                inner: Arc::clone(&inbox),
                delay: Duration::ZERO,
                failed,
                gate: Some((taken, Arc::clone(&go))),
                claims: Arc::default(),
                settles: Arc::default(),
            },
            router,
        )
        .concurrency(1)
        .and_then(|w| w.reorder_window(Duration::ZERO))
        .unwrap()
        .spawn();
        // A guard against a hang on a broken tree only.
        tokio::time::timeout(Duration::from_secs(120), claimed.recv())
            .await
            .expect("the worker took the event")
            .unwrap();
        // Its first poll asks the workers to stop; the claim answers after.
        let mut shutdown = Box::pin(pool.shutdown(Duration::from_secs(60)));
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::future::Future::poll(shutdown.as_mut(), &mut context).is_pending());
        go.notify_one();
        tokio::time::timeout(Duration::from_secs(120), shutdown)
            .await
            .expect("shutdown returned");
        assert!(
            !ran.load(Ordering::SeqCst),
            "the handler started after stop"
        );
        let entry = inbox.get(1).await.unwrap().unwrap();
        assert_eq!(
            entry.status,
            crate::store::InboxStatus::Pending,
            "{entry:?}"
        );
        assert_eq!(entry.attempts, 0, "{entry:?}");
    }

    /// A pool of one worker on `settles`, running `evt_1` with a handler
    /// that counts its runs and succeeds, under a lease of `lease`.
    async fn counting_pool(
        settles: &Arc<Settles>, lease: Duration,
    ) -> (Arc<MemoryInbox>, Arc<AtomicUsize>, WorkerPool) {
        counting_pool_of(&evt_1(), EventRouter::new(), settles, lease).await
    }

    /// [`counting_pool`] running `event` with `router` (its settings, its
    /// handler added).
    async fn counting_pool_of(
        event: &NewEvent, router: EventRouter, settles: &Arc<Settles>, lease: Duration,
    ) -> (Arc<MemoryInbox>, Arc<AtomicUsize>, WorkerPool) {
        let inbox = Arc::new(MemoryInbox::new());
        inbox.insert(event).await.unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let running = Arc::clone(&runs);
        let router = router.on::<events::OrderSucceeded, _>(move |_event| {
            running.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, Infallible>(()))
        });
        let (failed, _failures) = tokio::sync::mpsc::unbounded_channel();
        let pool = Workers::new(
            SlowClaims {
                inner: Arc::clone(&inbox),
                delay: Duration::ZERO,
                failed,
                gate: None,
                claims: Arc::default(),
                settles: Arc::clone(settles),
            },
            router,
        )
        .concurrency(1)
        .and_then(|w| w.lease(lease))
        .and_then(|w| w.reorder_window(Duration::ZERO))
        .unwrap()
        .spawn();
        (inbox, runs, pool)
    }

    /// A shutdown whose deadline comes while a handler's success is being
    /// recorded completes the event rather than giving it back: given
    /// back, it would run again, its effects twice.
    #[tokio::test(start_paused = true)]
    async fn a_shutdown_during_a_completion_completes_the_event() {
        let settles = Arc::new(Settles {
            delay: Duration::from_secs(60),
            ..Settles::default()
        });
        let (inbox, runs, pool) = counting_pool(&settles, Duration::from_secs(300)).await;
        // On the paused clock, the worker runs until its completion waits.
        while settles.asked.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        pool.shutdown(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let entry = inbox.get(1).await.unwrap().unwrap();
        assert_eq!(entry.status, crate::store::InboxStatus::Done, "{entry:?}");
    }

    /// A completion the inbox refuses for a moment is tried again, so the
    /// handler does not run again when the lease ends.
    #[tokio::test(start_paused = true)]
    async fn a_completion_refused_for_a_moment_is_tried_again() {
        let settles = Arc::new(Settles {
            refusals: AtomicUsize::new(3),
            ..Settles::default()
        });
        let (inbox, runs, pool) = counting_pool(&settles, Duration::from_secs(2)).await;
        // Past several leases on the paused clock.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran again");
        assert_eq!(settles.asked.load(Ordering::SeqCst), 4);
        let entry = inbox.get(1).await.unwrap().unwrap();
        assert_eq!(entry.status, crate::store::InboxStatus::Done, "{entry:?}");
        pool.shutdown(Duration::from_secs(1)).await;
    }

    /// A completion the inbox refuses for longer than the lease is still
    /// tried again past its end (the token fences it), and lands: the
    /// handler ran once. Before, it was given up when the lease ended, and
    /// the event ran again once another worker took it over.
    #[tokio::test(start_paused = true)]
    async fn a_completion_refused_past_the_lease_is_still_tried_again() {
        // Eight refusals take 3.26 s of waits, past the 2 s lease.
        let settles = Arc::new(Settles {
            refusals: AtomicUsize::new(8),
            ..Settles::default()
        });
        let (inbox, runs, pool) = counting_pool(&settles, Duration::from_secs(2)).await;
        // Past several leases on the paused clock.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran again");
        assert_eq!(settles.asked.load(Ordering::SeqCst), 9);
        let entry = inbox.get(1).await.unwrap().unwrap();
        assert_eq!(entry.status, crate::store::InboxStatus::Done, "{entry:?}");
        pool.shutdown(Duration::from_secs(1)).await;
    }

    /// `drained` ends at its deadline when the inbox does not answer (a
    /// disk that stalls). Before, it waited for the answer, for ever.
    #[tokio::test(start_paused = true)]
    async fn drained_ends_at_its_deadline_when_the_inbox_does_not_answer() {
        let settles = Arc::new(Settles {
            stats_stalled: true,
            ..Settles::default()
        });
        let (_inbox, _runs, pool) = counting_pool(&settles, Duration::from_secs(2)).await;
        let started = tokio::time::Instant::now();
        let drained = tokio::time::timeout(
            Duration::from_secs(60),
            pool.drained(Duration::from_secs(1)),
        )
        .await
        .expect("drained ended within a minute");
        let error = drained.expect_err("the inbox never said how many were due");
        assert_eq!(error.due(), None);
        assert!(started.elapsed() >= Duration::from_secs(1));
        pool.shutdown(Duration::from_secs(1)).await;
        // An inbox that answered once before it stalled: its last answer.
        let settles = Arc::new(Settles {
            stats_due_then_stalled: Some(3),
            ..Settles::default()
        });
        let (_inbox, _runs, pool) = counting_pool(&settles, Duration::from_secs(2)).await;
        let drained = tokio::time::timeout(
            Duration::from_secs(60),
            pool.drained(Duration::from_secs(1)),
        )
        .await
        .expect("drained ended within a minute");
        assert_eq!(drained.expect_err("3 were due").due(), Some(3));
        pool.shutdown(Duration::from_secs(1)).await;
    }

    /// A shutdown does not wait for the metrics' count of the inbox's
    /// events when the inbox never answers it (a disk that stalls): its
    /// worker stopped, it returns at once. Before, it waited its whole
    /// deadline, then said handlers were still running.
    #[cfg(feature = "metrics")]
    #[tokio::test(start_paused = true)]
    async fn a_shutdown_does_not_wait_for_the_inboxs_count_that_stalls() {
        let settles = Arc::new(Settles {
            stats_stalled: true,
            ..Settles::default()
        });
        let (inbox, runs, pool) = counting_pool(&settles, Duration::from_secs(2)).await;
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = tokio::time::Instant::now();
        pool.shutdown(Duration::from_secs(30)).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "the shutdown took {took:?}");
        let entry = inbox.get(1).await.unwrap().unwrap();
        assert_eq!(entry.status, crate::store::InboxStatus::Done, "{entry:?}");
    }

    /// A handler's `Permanent` error keeps its event dead at once, where
    /// another error is retried: no retry can mend it, and retried it would
    /// hold back its object's later events for every attempt.
    #[tokio::test]
    async fn a_permanent_error_keeps_the_event_dead_at_once() {
        let inbox = Arc::new(MemoryInbox::new());
        let now = Timestamp::now();
        for (id, event_type) in [("evt_p", "order.succeeded"), ("evt_r", "order.failed")] {
            let body = format!(r#"{{"id":"{id}","type":"{event_type}","data":{{}}}}"#);
            let event = NewEvent::new(
                None,
                id.to_owned(),
                event_type.to_owned(),
                None,
                None,
                now,
                now,
                Bytes::from(body),
            );
            inbox.insert(&event).await.unwrap();
        }
        let router = EventRouter::new()
            .on::<events::OrderSucceeded, _>(|_event| async {
                Err(crate::router::Permanent::new(
                    "the table takes no such order",
                ))
            })
            .on::<events::OrderFailed, _>(|_event| async {
                Err(std::io::Error::other("the database is down"))
            });
        let pool = Workers::new(Arc::clone(&inbox), router)
            .reorder_window(Duration::ZERO)
            .and_then(|w| w.backoff(Duration::from_secs(3600), Duration::from_secs(3600)))
            .unwrap()
            .spawn();
        // Nothing due once the first attempt of each is settled (the other
        // waits an hour for its retry).
        pool.drained(Duration::from_secs(120)).await.unwrap();
        pool.shutdown(Duration::from_secs(10)).await;
        let permanent = inbox.get(1).await.unwrap().unwrap();
        assert_eq!(
            permanent.status,
            crate::store::InboxStatus::Dead,
            "{permanent:?}"
        );
        assert_eq!(permanent.attempts, 1);
        let error = permanent.last_error.unwrap_or_default();
        assert!(
            error.contains("permanent error") && error.contains("no such order"),
            "{error}"
        );
        let retried = inbox.get(2).await.unwrap().unwrap();
        assert_eq!(
            retried.status,
            crate::store::InboxStatus::Retrying,
            "{retried:?}"
        );
    }

    /// A freshness store whose records never end.
    struct NeverRecords;

    impl crate::store::FreshnessStore for NeverRecords {
        fn newest<'a>(
            &'a self, _object: &'a crate::events::ObjectKey,
        ) -> BoxFuture<'a, Result<Option<crate::events::Version>, StoreError>> {
            Box::pin(std::future::ready(Ok(None)))
        }

        fn record<'a>(
            &'a self, _object: &'a crate::events::ObjectKey, _version: &'a crate::events::Version,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(std::future::pending())
        }
    }

    /// A shutdown whose deadline comes after a handler succeeded, while
    /// its version is being recorded, completes the event rather than
    /// giving it back to run again.
    #[tokio::test(start_paused = true)]
    async fn a_shutdown_while_a_success_is_recorded_completes_the_event() {
        let body =
            r#"{"id":"evt_1","type":"order.succeeded","created":1000,"data":{"orderId":"ord_1"}}"#;
        let event = NewEvent::new(
            None,
            "evt_1".to_owned(),
            "order.succeeded".to_owned(),
            Some(Timestamp::from_millis(1000)),
            Some("order:ord_1".to_owned()),
            Timestamp::now(),
            Timestamp::now(),
            Bytes::from(body),
        );
        let router = EventRouter::new().ordering(NeverRecords);
        let settles = Arc::default();
        let (inbox, runs, pool) =
            counting_pool_of(&event, router, &settles, Duration::from_secs(300)).await;
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Stopped before the record's own bound (a second) ends.
        pool.shutdown(Duration::from_millis(100)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let entry = inbox.get(1).await.unwrap().unwrap();
        assert_eq!(entry.status, crate::store::InboxStatus::Done, "{entry:?}");
    }
}
