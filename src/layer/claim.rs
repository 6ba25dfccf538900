//! Steps 6 and 8: claim the event id before the handler runs, and settle
//! the claim after it (complete on success, release otherwise), even when
//! the delivery is dropped half-way, or while the store has not answered
//! the claim (a claim it makes later is released in the background).
//!
//! A completion the store could not take (unreachable, or no answer in
//! time) is tried again in the background until the lease ends: the claim
//! is still this delivery's until then, so a store that comes back within
//! the lease still learns that the event was handled, and no retry runs the
//! handler again.
//!
//! A store that cannot be reached is an outage, logged as one (see
//! [`OutageLog`]): a line when it starts, a summary per interval, a line
//! when a call succeeds again; never a line per delivery.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::Config;
use super::Metrics;
use crate::guard::cold;
use crate::outage::OutageLog;
use crate::store::{
    timed, Claim, IdempotencyStore, LeaseToken, MemoryKey, MemoryStore, Settle, StoreError,
    StoreErrorKind,
};
use crate::{Outcome, VerifiedEvent};

/// The first pause before a completion is tried again; it doubles up to
/// [`COMPLETE_RETRY_MAX`].
const COMPLETE_RETRY_FIRST: Duration = Duration::from_millis(50);
const COMPLETE_RETRY_MAX: Duration = Duration::from_secs(1);
/// Less of the lease than this left, a completion is no longer tried.
const COMPLETE_RETRY_LAST: Duration = Duration::from_millis(10);

/// The longest key kept inline; a longer one (a long prefix or event id)
/// goes to the heap.
const INLINE_KEY: usize = 96;

/// An idempotency key, written into a buffer of its own rather than
/// formatted into a new `String` per delivery.
pub(super) enum StoreKey {
    Inline { bytes: [u8; INLINE_KEY], len: u8 },
    Heap(String),
}

impl StoreKey {
    /// The key made of `parts`, one after the other.
    fn concat(parts: &[&str]) -> Self {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        match u8::try_from(len) {
            Ok(short) if len <= INLINE_KEY => {
                let mut bytes = [0; INLINE_KEY];
                let mut at = 0;
                for part in parts {
                    bytes[at..at + part.len()].copy_from_slice(part.as_bytes());
                    at += part.len();
                }
                Self::Inline { bytes, len: short }
            }
            _ => Self::Heap(parts.concat()),
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            // Whole `str`s, one after the other: UTF-8.
            Self::Inline { bytes, len } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Self::Heap(key) => key,
        }
    }

    /// The key, leaving an empty one in its place.
    fn take(&mut self) -> Self {
        std::mem::replace(self, Self::Heap(String::new()))
    }
}

/// The idempotency key of an event: `{prefix}:{account}:{id}`, the account
/// empty with a single verifier. Only what cannot differ between two
/// deliveries of one event goes in: the account whose key verified it and
/// the event id, never a field of the body such as `livemode`. An account
/// id holds no `:`, so two keys never collide.
fn key_of(config: &Config, verified: &VerifiedEvent) -> StoreKey {
    let account = verified.account().unwrap_or("");
    StoreKey::concat(&[
        &config.settings.key_prefix,
        ":",
        account,
        ":",
        verified.event().id(),
    ])
}

/// Claims the event, as of `now`, read just before; anything but a fresh
/// claim is the delivery's outcome.
pub(super) async fn claim<'a>(
    config: &'a Config, verified: &VerifiedEvent, now: Instant,
) -> Result<ClaimGuard<'a>, Outcome> {
    let key = key_of(config, verified);
    // The lease starts somewhere during the call: count it from before. A
    // memory store counts it from that same instant.
    let lease_ends = now + config.settings.lease;
    let mut memory_key = None;
    let claimed = match &config.memory {
        Some(memory) => MemoryStore::key(key.as_str()).and_then(|checked| {
            memory_key = Some(checked);
            memory.claim_at(&checked, config.settings.lease, now)
        }),
        None => {
            let call = ClaimCall::new(config, key.as_str());
            timed(config.settings.store_timeout, call).await
        }
    };
    if claimed.is_ok() {
        config.outages.store.succeeded();
    }
    match claimed {
        Ok(Claim::Claimed(token)) => Ok(ClaimGuard {
            config,
            memory_key,
            key,
            token: Some(token),
            completes_with: None,
            lease_ends,
            succeeded: None,
        }),
        Ok(Claim::Completed) => {
            cold();
            Err(Outcome::Duplicate)
        }
        Ok(Claim::InFlight { retry_after }) => {
            cold();
            Err(Outcome::InFlight { retry_after })
        }
        Err(error) if error.kind() == StoreErrorKind::InvalidInput => {
            cold();
            tracing::warn!(%error, "clink delivery: the event id cannot be stored; answering 400");
            Err(Outcome::InvalidEventId)
        }
        Err(error) => {
            cold();
            config.outages.store.failed(&error);
            Err(Outcome::StoreUnavailable(error.kind()))
        }
    }
}

/// A networked store's claim call. Dropped unanswered (the store did not
/// answer within `store_timeout`, or the delivery was dropped), it goes on
/// in the background, and a claim it makes is released there: otherwise
/// it would hold the event until its lease ends, and Clink's retries would
/// be told it is in flight (`409`) all that time, though nothing runs it.
/// A store that answers an error of its own (its call timeout) has ended
/// the call: what its server does after that is the store's.
struct ClaimCall {
    /// The call, until it answers.
    call: Option<crate::BoxFuture<'static, Result<Claim, StoreError>>>,
    store: Arc<dyn IdempotencyStore>,
    key: Arc<str>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    outage: Arc<OutageLog>,
}

impl ClaimCall {
    fn new(config: &Config, key: &str) -> Self {
        let store = Arc::clone(&config.store);
        let key: Arc<str> = Arc::from(key);
        let lease = config.settings.lease;
        let call = {
            let (store, key) = (Arc::clone(&store), Arc::clone(&key));
            Box::pin(async move { store.claim(&key, lease).await })
        };
        Self {
            call: Some(call),
            store,
            key,
            timeout: config.settings.store_timeout,
            metrics: Arc::clone(&config.metrics),
            outage: Arc::clone(&config.outages.store),
        }
    }
}

impl Future for ClaimCall {
    type Output = Result<Claim, StoreError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(call) = self.call.as_mut() else {
            return std::task::Poll::Pending;
        };
        // A call that panics is not polled again, here or in the background.
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.as_mut().poll(cx)));
        match polled {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(ready) => {
                self.call = None;
                ready
            }
            Err(panic) => {
                self.call = None;
                std::panic::resume_unwind(panic)
            }
        }
    }
}

impl Drop for ClaimCall {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, key, timeout) = (Arc::clone(&self.store), Arc::clone(&self.key), self.timeout);
        let (metrics, outage) = (Arc::clone(&self.metrics), Arc::clone(&self.outage));
        settle_in_background(&runtime, async move {
            // As long again for its answer as the delivery waited.
            let Ok(Claim::Claimed(token)) = timed(timeout, call).await else {
                return;
            };
            tracing::debug!(
                key = ?&*key,
                "clink claim answered after the delivery stopped waiting for it: released"
            );
            let released = logged(timed(timeout, store.release(&key, &token)).await, &outage);
            if !released {
                metrics.settle_failed();
            }
        });
    }
}

/// Holds a claim until it is settled. If the delivery is dropped first (the
/// sender hung up, the server is shutting down), the settle it was about to
/// make (release, or complete once the handler succeeded) runs in the
/// background, so the next retry does not wait out the lease and a handled
/// event is not handled again.
pub(super) struct ClaimGuard<'a> {
    /// The layer's settings, lent by the delivery: its store (and the store
    /// itself when it is a memory store, called directly), metrics and the
    /// store's outage log.
    config: &'a Config,
    /// The key as a memory store keeps it, when the store is one.
    memory_key: Option<MemoryKey>,
    key: StoreKey,
    token: Option<LeaseToken>,
    /// What a drop does with an unsettled claim: `None` releases it,
    /// `Some(retention)` completes it (the handler succeeded).
    completes_with: Option<Duration>,
    /// When the lease ends at the latest, by this process's clock (counted
    /// from before the claim call, so never later than the store's).
    lease_ends: Instant,
    /// Set once the handler succeeded: a drop before the settle then
    /// completes the claim, as `completes_with` does.
    succeeded: Option<&'a AtomicBool>,
}

impl<'a> ClaimGuard<'a> {
    /// The guard, completing the claim when dropped unsettled once
    /// `succeeded` is set (a handler succeeded, and the delivery was dropped
    /// before it settled: while the handler's version was being recorded,
    /// say), so that no retry runs the handler again.
    pub(super) fn completing_once(mut self, succeeded: &'a AtomicBool) -> Self {
        self.succeeded = Some(succeeded);
        self
    }

    /// Settles the claim as `outcome` says: completed when acknowledged,
    /// released otherwise. A memory store settles at once, and the reading
    /// of the clock it settled as of is returned: the delivery's end, for
    /// the layer to time it without reading the clock again.
    ///
    /// The guard is borrowed, not moved: it stays where the delivery keeps
    /// it, and a delivery dropped while it settles drops it there.
    pub(super) async fn settle(&mut self, outcome: &Outcome) -> Option<Instant> {
        let at = self.memory_key.is_some().then(Instant::now);
        if outcome.is_acknowledged() {
            self.complete(at).await;
        } else {
            self.release(at).await;
        }
        at
    }

    async fn complete(&mut self, at: Option<Instant>) {
        let config = self.config;
        let retention = config.settings.retention;
        self.completes_with = Some(retention);
        let Some(token) = &self.token else {
            return;
        };
        let result = match (&config.memory, &self.memory_key, at) {
            (Some(memory), Some(key), Some(at)) => memory.complete_at(key, token, retention, at),
            _ => {
                let call = async {
                    config
                        .store
                        .complete(self.key.as_str(), token, retention)
                        .await
                };
                timed(config.settings.store_timeout, call).await
            }
        };
        // Only now is the claim settled or handed on; a drop before this
        // point completes it.
        let Some(token) = self.token.take() else {
            return;
        };
        match result {
            Ok(settle) => {
                config.outages.store.succeeded();
                completed(&config.metrics, settle, false);
            }
            Err(error) if worth_retrying(&error) => {
                cold();
                tracing::debug!(
                    %error,
                    "clink event handled, but the store did not take its completed mark; \
                     trying again until the lease ends"
                );
                config.outages.store.failed(&error);
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    config.metrics.settle_failed();
                    return;
                };
                settle_in_background(
                    &runtime,
                    complete_until_lease_ends(
                        Arc::clone(&config.store),
                        self.key.take(),
                        token,
                        retention,
                        config.settings.store_timeout,
                        self.lease_ends,
                        Arc::clone(&config.metrics),
                        Arc::clone(&config.outages.store),
                    ),
                );
            }
            Err(error) => completion_failed(&config.metrics, &config.outages.store, &error),
        }
    }

    async fn release(&mut self, at: Option<Instant>) {
        let config = self.config;
        let outage = &config.outages.store;
        let Some(token) = &self.token else {
            return;
        };
        let released = match (&config.memory, &self.memory_key, at) {
            (Some(memory), Some(key), Some(at)) => {
                logged(memory.release_at(key, token, at), outage)
            }
            _ => {
                let call = async { config.store.release(self.key.as_str(), token).await };
                logged(timed(config.settings.store_timeout, call).await, outage)
            }
        };
        if !released {
            config.metrics.settle_failed();
        }
        self.token = None;
    }
}

/// Whether a failed completion may succeed if tried again: the store could
/// not be reached or did not answer, as opposed to refusing the call.
fn worth_retrying(error: &StoreError) -> bool {
    matches!(
        error.kind(),
        StoreErrorKind::Unavailable | StoreErrorKind::Timeout
    )
}

/// Counts and logs the store's answer to a completion; `retried` when an
/// earlier try failed, which may have been applied without its answer
/// arriving.
fn completed(metrics: &Metrics, settle: Settle, retried: bool) {
    match settle {
        Settle::Applied => {}
        Settle::LeaseLost if retried => {
            metrics.settle_failed();
            tracing::warn!(
                "clink event handled; after a failed try, the store no longer holds its claim: \
                 either that try was applied, or the lease had ended and another delivery may \
                 run the handler again"
            );
        }
        Settle::LeaseLost => {
            metrics.lease_was_lost();
            tracing::warn!(
                "clink event handled, but its lease had expired before it was marked \
                 completed; another delivery may run (or be running) the handler again"
            );
        }
    }
}

/// Counts a completion that failed for good, and logs it: as part of the
/// store's outage when it could not be reached, on a line of its own when
/// it refused the call.
fn completion_failed(metrics: &Metrics, outage: &Arc<OutageLog>, error: &StoreError) {
    metrics.settle_failed();
    if worth_retrying(error) {
        tracing::debug!(
            %error,
            "clink event handled, but could not be marked completed before its lease ended; \
             a retry after the lease expires may run the handler again"
        );
        outage.failed(error);
        return;
    }
    tracing::error!(
        %error,
        "clink event handled, but could not be marked completed; \
         a retry after the lease expires may run the handler again"
    );
}

/// Tries to complete a claim until the store answers or the lease ends,
/// pausing between tries (50 ms, doubling up to 1 s, and never more than
/// half of what is left of the lease, so that the last try comes just
/// before it ends).
#[allow(
    clippy::too_many_arguments,
    reason = "what a claim guard hands on when it lets go of a completion"
)]
async fn complete_until_lease_ends(
    store: Arc<dyn IdempotencyStore>, key: StoreKey, token: LeaseToken, retention: Duration,
    timeout: Duration, lease_ends: Instant, metrics: Arc<Metrics>, outage: Arc<OutageLog>,
) {
    let mut pause = COMPLETE_RETRY_FIRST;
    let mut last_error = None;
    loop {
        let left = lease_ends.saturating_duration_since(Instant::now());
        if left < COMPLETE_RETRY_LAST {
            break;
        }
        tokio::time::sleep(pause.min(left / 2)).await;
        let timeout = timeout.min(lease_ends.saturating_duration_since(Instant::now()));
        match timed(timeout, async {
            store.complete(key.as_str(), &token, retention).await
        })
        .await
        {
            Ok(settle) => {
                outage.succeeded();
                return completed(&metrics, settle, true);
            }
            Err(error) if worth_retrying(&error) => last_error = Some(error),
            Err(error) => return completion_failed(&metrics, &outage, &error),
        }
        pause = (pause * 2).min(COMPLETE_RETRY_MAX);
    }
    let error = last_error.unwrap_or_else(|| {
        StoreError::new(
            StoreErrorKind::Timeout,
            "the lease ended before the completion could be tried again",
        )
    });
    completion_failed(&metrics, &outage, &error);
}

/// Logs a release that failed; whether it was released.
fn logged(released: Result<Settle, StoreError>, outage: &Arc<OutageLog>) -> bool {
    match released {
        Ok(_) => {
            outage.succeeded();
            true
        }
        Err(error) if worth_retrying(&error) => {
            tracing::debug!(%error, "clink claim could not be released; it frees itself when the lease expires");
            outage.failed(&error);
            false
        }
        Err(error) => {
            tracing::warn!(%error, "clink claim could not be released; it frees itself when the lease expires");
            false
        }
    }
}

/// How many claims are being settled on tasks of their own (a delivery
/// dropped, a completion tried again), and a wake-up when none is.
struct Settling {
    pending: AtomicUsize,
    idle: Notify,
}

static SETTLING: Settling = Settling {
    pending: AtomicUsize::new(0),
    idle: Notify::const_new(),
};

/// One settle counted in [`SETTLING`] until dropped (its task ended, or
/// was dropped with its runtime).
struct Pending;

impl Drop for Pending {
    fn drop(&mut self) {
        if SETTLING.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            SETTLING.idle.notify_waiters();
        }
    }
}

/// Settles a claim on a task of its own on `runtime`, counted until it
/// ends, so that [`settled`] can wait for it.
fn settle_in_background(
    runtime: &tokio::runtime::Handle, settle: impl Future<Output = ()> + Send + 'static,
) {
    SETTLING.pending.fetch_add(1, Ordering::AcqRel);
    let pending = Pending;
    runtime.spawn(async move {
        let _pending = pending;
        settle.await;
    });
}

/// Waits until no claim is being settled on a task of its own in this
/// process, at most `within`: whether none is.
pub(crate) async fn settled(within: Duration) -> bool {
    let none = async {
        loop {
            let idle = SETTLING.idle.notified();
            let mut idle = std::pin::pin!(idle);
            idle.as_mut().enable();
            if SETTLING.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    };
    tokio::time::timeout(within, none).await.is_ok()
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let config = self.config;
        let succeeded = self
            .succeeded
            .is_some_and(|succeeded| succeeded.load(Ordering::Relaxed));
        // A completion of its own was sent and dropped on the way: it may
        // have been applied, and this one then finds the claim gone.
        let sent_before = self.completes_with.is_some();
        let completes_with = self
            .completes_with
            .or_else(|| succeeded.then_some(config.settings.retention));
        // A verified delivery that ends without an answer is said, never
        // silent: its outcome is counted nowhere else. (One unwinding from
        // a panic is said by whatever catches the panic.)
        cold();
        if !std::thread::panicking() {
            config.metrics.abandoned_delivery();
            tracing::warn!(
                key = ?self.key.as_str(),
                claim = if completes_with.is_some() { "completed" } else { "released" },
                "clink delivery dropped before it answered (the sender hung up, or a timeout \
                 outside the layer): its claim is completed when the handler succeeded, released \
                 otherwise so that Clink's retry runs it"
            );
        }
        // A memory store settles here and now, runtime or not.
        if let (Some(memory), Some(key)) = (&config.memory, &self.memory_key) {
            match completes_with {
                Some(retention) => match memory.complete_now(key, &token, retention) {
                    Ok(settle) => completed(&config.metrics, settle, sent_before),
                    Err(error) => completion_failed(&config.metrics, &config.outages.store, &error),
                },
                None => {
                    if !logged(memory.release_now(key, &token), &config.outages.store) {
                        config.metrics.settle_failed();
                    }
                }
            }
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Dropped where no runtime runs: nothing can settle the claim
            // with this store, and it frees itself when its lease ends.
            config.metrics.settle_failed();
            tracing::warn!(
                "clink claim dropped outside a Tokio runtime, unsettled; it frees itself when \
                 the lease ends, and a delivery after that runs the handler again"
            );
            return;
        };
        let store = Arc::clone(&config.store);
        let key = self.key.take();
        let timeout = config.settings.store_timeout;
        let outage = Arc::clone(&config.outages.store);
        match completes_with {
            Some(retention) => {
                let metrics = Arc::clone(&config.metrics);
                let lease_ends = self.lease_ends;
                settle_in_background(&runtime, async move {
                    match timed(timeout, async {
                        store.complete(key.as_str(), &token, retention).await
                    })
                    .await
                    {
                        Ok(settle) => {
                            outage.succeeded();
                            completed(&metrics, settle, sent_before);
                        }
                        Err(error) if worth_retrying(&error) => {
                            outage.failed(&error);
                            complete_until_lease_ends(
                                store, key, token, retention, timeout, lease_ends, metrics, outage,
                            )
                            .await;
                        }
                        Err(error) => completion_failed(&metrics, &outage, &error),
                    }
                });
            }
            None => {
                let metrics = Arc::clone(&config.metrics);
                settle_in_background(&runtime, async move {
                    let released = logged(
                        timed(timeout, async { store.release(key.as_str(), &token).await }).await,
                        &outage,
                    );
                    if !released {
                        metrics.settle_failed();
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;
    use crate::store::{MemoryStore, DEFAULT_LEASE, DEFAULT_RETENTION};

    async fn claim_state(store: &dyn IdempotencyStore) -> Claim {
        // The guard settles on a spawned task: yield to it, within a bound.
        for _ in 0..1000 {
            match store.claim("k", DEFAULT_LEASE).await.unwrap() {
                Claim::InFlight { .. } => tokio::task::yield_now().await,
                settled => return settled,
            }
        }
        panic!("the dropped guard never settled its claim");
    }

    /// A guard of the claim of `k` under `token`, made by hand, as the
    /// layer made with `config` holds it, through its store's trait.
    fn held(config: &Config, token: LeaseToken, lease_ends: Instant) -> ClaimGuard<'_> {
        ClaimGuard {
            config,
            memory_key: None,
            key: StoreKey::concat(&["k"]),
            token: Some(token),
            completes_with: None,
            lease_ends,
            succeeded: None,
        }
    }

    async fn dropped_guard(completes_with: Option<Duration>) -> Claim {
        let store: Arc<dyn IdempotencyStore> = Arc::new(MemoryStore::new());
        let Claim::Claimed(token) = store.claim("k", DEFAULT_LEASE).await.unwrap() else {
            panic!("a fresh key is claimed");
        };
        let layer = crate::ClinkLayer::new(crate::Verifier::new("whsec_test").unwrap())
            .store(Arc::clone(&store));
        let mut guard = held(&layer.config, token, Instant::now() + DEFAULT_LEASE);
        guard.completes_with = completes_with;
        drop(guard);
        claim_state(&*store).await
    }

    #[test]
    fn keys_are_their_parts_one_after_the_other() {
        assert_eq!(
            StoreKey::concat(&["clink", ":", "", ":", "evt_1"]).as_str(),
            "clink::evt_1"
        );
        let long = "é".repeat(60);
        let key = StoreKey::concat(&["p:", &long]);
        assert!(matches!(key, StoreKey::Heap(_)));
        assert_eq!(key.as_str(), format!("p:{long}"));
        let exact = "k".repeat(INLINE_KEY);
        assert!(matches!(
            StoreKey::concat(&[&exact]),
            StoreKey::Inline { .. }
        ));
        assert_eq!(StoreKey::concat(&[&exact]).as_str(), exact);
    }

    /// A guard of a memory store's claim dropped where no runtime runs
    /// settles it all the same, there and then: released, or completed
    /// once its handler succeeded.
    #[test]
    fn a_memory_claim_dropped_outside_a_runtime_is_settled_at_once() {
        let layer = crate::ClinkLayer::new(crate::Verifier::new("whsec_test").unwrap());
        let config = &layer.config;
        let memory = config.memory.as_ref().expect("a memory store by default");
        let key = MemoryStore::key("k").unwrap();
        for succeeded in [false, true] {
            let Claim::Claimed(token) = memory.claim_now(&key, DEFAULT_LEASE).unwrap() else {
                panic!("a free key is claimed");
            };
            let flag = std::sync::atomic::AtomicBool::new(succeeded);
            let mut guard = held(config, token, Instant::now() + DEFAULT_LEASE);
            guard.memory_key = Some(key);
            guard.succeeded = Some(&flag);
            drop(guard);
            let again = memory.claim_now(&key, DEFAULT_LEASE).unwrap();
            if succeeded {
                assert!(matches!(again, Claim::Completed), "{again:?}");
            } else {
                let Claim::Claimed(token) = again else {
                    panic!("released: {again:?}");
                };
                assert_eq!(memory.release_now(&key, &token).unwrap(), Settle::Applied);
            }
        }
        assert_eq!(config.metrics.settle_errors(), 0);
    }

    /// A guard of another store's claim dropped where no runtime runs
    /// cannot settle it: it says so, in the settle errors and the log.
    #[test]
    fn a_guard_dropped_outside_a_runtime_counts_a_settle_error() {
        let layer = crate::ClinkLayer::new(crate::Verifier::new("whsec_test").unwrap());
        let guard = held(
            &layer.config,
            LeaseToken::from_halves(1, 2),
            Instant::now() + DEFAULT_LEASE,
        );
        assert_eq!(layer.config.metrics.settle_errors(), 0);
        drop(guard);
        assert_eq!(layer.config.metrics.settle_errors(), 1);
    }

    #[tokio::test]
    async fn a_dropped_delivery_releases_its_claim() {
        assert!(matches!(dropped_guard(None).await, Claim::Claimed(_)));
    }

    #[tokio::test]
    async fn a_delivery_dropped_after_its_handler_succeeded_still_completes() {
        let retention = Some(DEFAULT_RETENTION);
        assert_eq!(dropped_guard(retention).await, Claim::Completed);
    }

    /// A memory store whose releases all fail as if its server were down.
    struct RefusesRelease(MemoryStore);

    impl IdempotencyStore for RefusesRelease {
        fn claim<'a>(
            &'a self, key: &'a str, lease: Duration,
        ) -> crate::BoxFuture<'a, Result<Claim, StoreError>> {
            self.0.claim(key, lease)
        }

        fn complete<'a>(
            &'a self, key: &'a str, token: &'a LeaseToken, retention: Duration,
        ) -> crate::BoxFuture<'a, Result<Settle, StoreError>> {
            self.0.complete(key, token, retention)
        }

        fn release<'a>(
            &'a self, _key: &'a str, _token: &'a LeaseToken,
        ) -> crate::BoxFuture<'a, Result<Settle, StoreError>> {
            Box::pin(std::future::ready(Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "connection refused",
            ))))
        }
    }

    /// A dropped delivery whose release fails counts a settle error, as a
    /// release that fails in the delivery does.
    #[tokio::test]
    async fn a_dropped_deliverys_failed_release_counts_a_settle_error() {
        let store = Arc::new(RefusesRelease(MemoryStore::new()));
        let layer = crate::ClinkLayer::new(crate::Verifier::new("whsec_test").unwrap())
            .store(Arc::clone(&store));
        let Claim::Claimed(token) = store.claim("k", DEFAULT_LEASE).await.unwrap() else {
            panic!("a fresh key is claimed");
        };
        drop(held(&layer.config, token, Instant::now() + DEFAULT_LEASE));
        assert!(settled(Duration::from_secs(60)).await);
        assert_eq!(layer.config.metrics.settle_errors(), 1);
        assert_eq!(layer.config.metrics.abandoned(), 1);
    }

    /// A memory store whose first `failures` completions fail as if its
    /// server were down.
    struct Unreachable {
        inner: MemoryStore,
        failures: std::sync::atomic::AtomicU32,
    }

    impl IdempotencyStore for Unreachable {
        fn claim<'a>(
            &'a self, key: &'a str, lease: Duration,
        ) -> crate::BoxFuture<'a, Result<Claim, StoreError>> {
            self.inner.claim(key, lease)
        }

        fn complete<'a>(
            &'a self, key: &'a str, token: &'a LeaseToken, retention: Duration,
        ) -> crate::BoxFuture<'a, Result<Settle, StoreError>> {
            let down = self
                .failures
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |left| left.checked_sub(1),
                )
                .is_ok();
            if down {
                return Box::pin(std::future::ready(Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    "connection refused",
                ))));
            }
            self.inner.complete(key, token, retention)
        }

        fn release<'a>(
            &'a self, key: &'a str, token: &'a LeaseToken,
        ) -> crate::BoxFuture<'a, Result<Settle, StoreError>> {
            self.inner.release(key, token)
        }
    }

    /// Settles a handled delivery of `k` under a 2 s lease while the
    /// store's first `failures` completions fail; the layer's metrics.
    async fn handled_while_unreachable(failures: u32) -> (Arc<Unreachable>, Arc<Metrics>) {
        let lease = Duration::from_secs(2);
        let store = Arc::new(Unreachable {
            inner: MemoryStore::new(),
            failures: failures.into(),
        });
        let layer = crate::ClinkLayer::new(crate::Verifier::new("whsec_test").unwrap())
            .store(Arc::clone(&store))
            .lease(lease)
            .unwrap();
        let lease_ends = Instant::now() + lease;
        let Claim::Claimed(token) = store.claim("k", lease).await.unwrap() else {
            panic!("a fresh key is claimed");
        };
        let mut guard = held(&layer.config, token, lease_ends);
        guard.settle(&Outcome::Handled).await;
        (store, layer.metrics())
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_the_store_could_not_take_is_tried_again_within_the_lease() {
        let (store, metrics) = handled_while_unreachable(3).await;
        // 50 + 100 + 200 ms of pauses, then the fourth try gets through.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            store.inner.claim("k", DEFAULT_LEASE).await.unwrap(),
            Claim::Completed
        );
        assert_eq!(metrics.settle_errors(), 0);
        assert_eq!(metrics.lease_lost(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_is_given_up_when_the_lease_ends() {
        let (store, metrics) = handled_while_unreachable(u32::MAX).await;
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert_eq!(metrics.settle_errors(), 0, "still trying inside the lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(metrics.settle_errors(), 1);
        // The lease has ended: the next delivery runs the handler again.
        assert!(matches!(
            store.inner.claim("k", DEFAULT_LEASE).await.unwrap(),
            Claim::Claimed(_)
        ));
    }

    /// What a [`Scripted`] store does with a completion.
    #[derive(Clone, Copy)]
    enum Step {
        /// Fails at once, as if the store's server were down.
        Down,
        /// Never answers.
        Hang,
        /// Refuses the call: an error no retry can help.
        Refused,
        /// Answers that the lease was lost.
        Lost,
    }

    /// A memory store whose completions follow `script`, one step each,
    /// and then reach the memory store; it notes when each completion was
    /// asked for, and notifies `landed` when one is applied.
    struct Scripted {
        inner: MemoryStore,
        script: std::sync::Mutex<std::collections::VecDeque<Step>>,
        asked: std::sync::Mutex<Vec<Instant>>,
        landed: tokio::sync::Notify,
    }

    impl IdempotencyStore for Scripted {
        fn claim<'a>(
            &'a self, key: &'a str, lease: Duration,
        ) -> crate::BoxFuture<'a, Result<Claim, StoreError>> {
            self.inner.claim(key, lease)
        }

        fn complete<'a>(
            &'a self, key: &'a str, token: &'a LeaseToken, retention: Duration,
        ) -> crate::BoxFuture<'a, Result<Settle, StoreError>> {
            self.asked.lock().unwrap().push(Instant::now());
            match self.script.lock().unwrap().pop_front() {
                Some(Step::Down) => Box::pin(std::future::ready(Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    "connection refused",
                )))),
                Some(Step::Hang) => Box::pin(std::future::pending()),
                Some(Step::Refused) => Box::pin(std::future::ready(Err(StoreError::new(
                    StoreErrorKind::Protocol,
                    "unexpected answer",
                )))),
                Some(Step::Lost) => Box::pin(std::future::ready(Ok(Settle::LeaseLost))),
                None => Box::pin(async move {
                    let settled = self.inner.complete(key, token, retention).await;
                    if matches!(settled, Ok(Settle::Applied)) {
                        self.landed.notify_one();
                    }
                    settled
                }),
            }
        }

        /// Follows the script too, with the steps that answer.
        fn release<'a>(
            &'a self, key: &'a str, token: &'a LeaseToken,
        ) -> crate::BoxFuture<'a, Result<Settle, StoreError>> {
            match self.script.lock().unwrap().pop_front() {
                Some(Step::Down) => Box::pin(std::future::ready(Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    "connection refused",
                )))),
                Some(Step::Refused) => Box::pin(std::future::ready(Err(StoreError::new(
                    StoreErrorKind::Protocol,
                    "unexpected answer",
                )))),
                _ => self.inner.release(key, token),
            }
        }
    }

    const LEASE: Duration = Duration::from_secs(2);

    /// A layer over a [`Scripted`] store, and a verified event `evt_1` for it.
    fn scripted(script: &[Step]) -> (crate::ClinkLayer, Arc<Scripted>, VerifiedEvent) {
        scripted_with_lease(script, LEASE)
    }

    /// [`scripted`] with a lease of `lease`.
    fn scripted_with_lease(
        script: &[Step], lease: Duration,
    ) -> (crate::ClinkLayer, Arc<Scripted>, VerifiedEvent) {
        let store = Arc::new(Scripted {
            inner: MemoryStore::new(),
            script: std::sync::Mutex::new(script.iter().copied().collect()),
            asked: std::sync::Mutex::default(),
            landed: tokio::sync::Notify::new(),
        });
        let layer = crate::ClinkLayer::new(crate::Verifier::new("whsec_test").unwrap())
            .store(Arc::clone(&store))
            .lease(lease)
            .unwrap();
        let body =
            bytes::Bytes::from_static(br#"{"id":"evt_1","type":"order.succeeded","data":{}}"#);
        let event = crate::RawEvent::from_bytes(body).unwrap();
        let verified = VerifiedEvent::earlier(event, crate::Timestamp::from_millis(1), "k");
        (layer, store, verified)
    }

    /// Waits for a completion to be applied, by notification; a lease's
    /// worth of (paused, so virtual) time without one fails the test.
    async fn landed(store: &Scripted) {
        tokio::time::timeout(LEASE, store.landed.notified())
            .await
            .expect("the completion was retried and applied within the lease");
    }

    /// When each completion was asked for, in ms after `start`.
    fn asked(store: &Scripted, start: Instant) -> Vec<u128> {
        let asked = store.asked.lock().unwrap();
        asked.iter().map(|at| (*at - start).as_millis()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_that_failed_after_claim_is_retried_in_the_background_until_it_lands() {
        let (layer, store, verified) = scripted(&[Step::Down; 3]);
        let config = &layer.config;
        let key = key_of(config, &verified);
        let start = Instant::now();
        let Ok(mut guard) = claim(config, &verified, Instant::now()).await else {
            panic!("a fresh event is claimed");
        };
        guard.settle(&Outcome::Handled).await;
        // The delivery is over; its claim is still held, not yet completed.
        assert!(matches!(
            store
                .inner
                .claim(key.as_str(), DEFAULT_LEASE)
                .await
                .unwrap(),
            Claim::InFlight { .. }
        ));
        landed(&store).await;
        assert_eq!(
            store
                .inner
                .claim(key.as_str(), DEFAULT_LEASE)
                .await
                .unwrap(),
            Claim::Completed
        );
        // The first try at once, then after pauses of 50, 100 and 200 ms.
        assert_eq!(asked(&store, start), [0, 50, 150, 350]);
        assert_eq!(layer.metrics().settle_errors(), 0);
        assert_eq!(layer.metrics().lease_lost(), 0);
    }

    /// A memory store whose claims wait until `open` is notified, and
    /// that notifies `released` when a release is applied.
    struct GatedClaims {
        inner: MemoryStore,
        open: tokio::sync::Notify,
        released: tokio::sync::Notify,
    }

    impl IdempotencyStore for GatedClaims {
        fn claim<'a>(
            &'a self, key: &'a str, lease: Duration,
        ) -> crate::BoxFuture<'a, Result<Claim, StoreError>> {
            Box::pin(async move {
                self.open.notified().await;
                self.inner.claim(key, lease).await
            })
        }

        fn complete<'a>(
            &'a self, key: &'a str, token: &'a LeaseToken, retention: Duration,
        ) -> crate::BoxFuture<'a, Result<Settle, StoreError>> {
            self.inner.complete(key, token, retention)
        }

        fn release<'a>(
            &'a self, key: &'a str, token: &'a LeaseToken,
        ) -> crate::BoxFuture<'a, Result<Settle, StoreError>> {
            Box::pin(async move {
                let released = self.inner.release(key, token).await;
                if matches!(released, Ok(Settle::Applied)) {
                    self.released.notify_one();
                }
                released
            })
        }
    }

    /// A claim the store makes after the delivery stopped waiting for it
    /// (its `store_timeout` passed; a dropped delivery likewise) is
    /// released in the background: Clink's retry claims the event at once,
    /// where it was told `409` until the lease ended, though nothing ran it.
    #[tokio::test(start_paused = true)]
    async fn a_claim_that_lands_after_the_delivery_stopped_waiting_is_released() {
        let store = Arc::new(GatedClaims {
            inner: MemoryStore::new(),
            open: tokio::sync::Notify::new(),
            released: tokio::sync::Notify::new(),
        });
        let (_, _, verified) = scripted(&[]);
        let layer = crate::ClinkLayer::new(crate::Verifier::new("whsec_test").unwrap())
            .store(Arc::clone(&store))
            .lease(LEASE)
            .unwrap()
            .store_timeout(Duration::from_millis(100))
            .unwrap();
        let config = &layer.config;
        let key = key_of(config, &verified);
        let waited = claim(config, &verified, Instant::now()).await;
        assert!(
            matches!(
                waited,
                Err(Outcome::StoreUnavailable(StoreErrorKind::Timeout))
            ),
            "the claim is not answered within store_timeout"
        );
        // The store makes the claim now.
        store.open.notify_one();
        tokio::time::timeout(LEASE / 2, store.released.notified())
            .await
            .expect("the claim made after the delivery stopped waiting was released");
        assert!(matches!(
            store
                .inner
                .claim(key.as_str(), DEFAULT_LEASE)
                .await
                .unwrap(),
            Claim::Claimed(_)
        ));
        assert_eq!(layer.metrics().settle_errors(), 0);
    }

    /// Claims `verified`, starts settling it as handled, and drops the
    /// delivery while the store has not answered that first completion.
    async fn dropped_while_completing(config: &Config, verified: &VerifiedEvent) {
        let Ok(mut guard) = claim(config, verified, Instant::now()).await else {
            panic!("a fresh event is claimed");
        };
        let mut settling = Box::pin(guard.settle(&Outcome::Handled));
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(settling.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the store does not answer");
        // The delivery goes: the settle under way, and the guard it borrowed.
        drop(settling);
        drop(guard);
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_a_dropped_delivery_could_not_make_is_retried_in_the_background() {
        // The delivery is dropped while the store does not answer its
        // completion; the drop's own try fails; the retries land.
        let (layer, store, verified) = scripted(&[Step::Hang, Step::Down, Step::Down]);
        let config = &layer.config;
        let key = key_of(config, &verified);
        let start = Instant::now();
        dropped_while_completing(config, &verified).await;
        landed(&store).await;
        assert_eq!(
            store
                .inner
                .claim(key.as_str(), DEFAULT_LEASE)
                .await
                .unwrap(),
            Claim::Completed
        );
        // The hung try, the drop's at once, then after 50 and 100 ms.
        assert_eq!(asked(&store, start), [0, 0, 50, 150]);
        assert_eq!(layer.metrics().settle_errors(), 0);
    }

    /// Settles a fresh claim of the scripted store's event as handled, then
    /// lets a lease's worth of (paused) time pass; when each completion was
    /// asked for, and the layer's metrics.
    async fn handled_then_a_lease(script: &[Step]) -> (Vec<u128>, Arc<Metrics>) {
        let (layer, store, verified) = scripted(script);
        let config = &layer.config;
        let start = Instant::now();
        let Ok(mut guard) = claim(config, &verified, Instant::now()).await else {
            panic!("a fresh event is claimed");
        };
        guard.settle(&Outcome::Handled).await;
        tokio::time::sleep(LEASE).await;
        (asked(&store, start), layer.metrics())
    }

    /// A memory store is claimed and settled as of the layer's own readings
    /// of the clock: the settle hands its reading back, for the delivery's
    /// timing, and the retention counts from it. A store of another kind
    /// hands nothing back.
    #[tokio::test(start_paused = true)]
    async fn a_memory_store_settles_as_of_the_reading_it_hands_back() {
        let store = Arc::new(MemoryStore::new());
        let retention = Duration::from_secs(10);
        let layer = crate::ClinkLayer::new(crate::Verifier::new("whsec_test").unwrap())
            .store(Arc::clone(&store))
            .retention(retention)
            .unwrap();
        let config = &layer.config;
        assert!(
            config.memory.is_some(),
            "the memory store is called directly"
        );
        let (_, _, verified) = scripted(&[]);
        let key = key_of(config, &verified);
        let Ok(mut guard) = claim(config, &verified, Instant::now()).await else {
            panic!("a fresh event is claimed");
        };
        tokio::time::advance(Duration::from_millis(300)).await;
        let settled_at = guard.settle(&Outcome::Handled).await;
        assert_eq!(settled_at, Some(Instant::now()));
        tokio::time::advance(retention - Duration::from_millis(1)).await;
        assert_eq!(
            store.claim(key.as_str(), LEASE).await.ok(),
            Some(Claim::Completed)
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        let again = store.claim(key.as_str(), LEASE).await.ok();
        assert!(matches!(again, Some(Claim::Claimed(_))), "{again:?}");

        let (layer, _, verified) = scripted(&[]);
        let Ok(mut guard) = claim(&layer.config, &verified, Instant::now()).await else {
            panic!("a fresh event is claimed");
        };
        assert_eq!(guard.settle(&Outcome::Handled).await, None);
    }

    /// A completion the store refuses outright is not tried again, in the
    /// background either: it is counted as failed at once.
    #[tokio::test(start_paused = true)]
    async fn a_refused_completion_is_not_tried_again() {
        let (asked, metrics) = handled_then_a_lease(&[Step::Refused]).await;
        assert_eq!(asked, [0]);
        assert_eq!(metrics.settle_errors(), 1);
        let (asked, metrics) = handled_then_a_lease(&[Step::Down, Step::Refused]).await;
        assert_eq!(asked, [0, 50], "the background retry stops at the refusal");
        assert_eq!(metrics.settle_errors(), 1);
    }

    /// A lost lease at the first try is a lease that ran out (counted as
    /// such); at a retry it may be the earlier try's own doing, so it is
    /// counted as a failed completion instead.
    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_is_counted_by_whether_an_earlier_try_failed() {
        let (asked, metrics) = handled_then_a_lease(&[Step::Lost]).await;
        assert_eq!(asked, [0]);
        assert_eq!((metrics.lease_lost(), metrics.settle_errors()), (1, 0));
        let (asked, metrics) = handled_then_a_lease(&[Step::Down, Step::Lost]).await;
        assert_eq!(asked, [0, 50]);
        assert_eq!((metrics.lease_lost(), metrics.settle_errors()), (0, 1));
    }

    /// The background retries go on while 10 ms or more of the lease is
    /// left, and stop below. With a 990 ms lease the paused clock lands on
    /// exactly 10 ms left (pauses of 50, 100, 200, then halves of what is
    /// left: 320, 160, 80, 40, 20, 10), so one more try is made, 5 ms later.
    #[tokio::test(start_paused = true)]
    async fn the_background_retries_go_on_while_ten_ms_of_the_lease_are_left() {
        let (layer, store, verified) =
            scripted_with_lease(&[Step::Down; 20], Duration::from_millis(990));
        let config = &layer.config;
        let start = Instant::now();
        let Ok(mut guard) = claim(config, &verified, Instant::now()).await else {
            panic!("a fresh event is claimed");
        };
        guard.settle(&Outcome::Handled).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            asked(&store, start),
            [0, 50, 150, 350, 670, 830, 910, 950, 970, 980, 985]
        );
        assert_eq!(layer.metrics().settle_errors(), 1);
    }

    /// A release the store could not take because it is down is part of
    /// the store's outage; one it refused is not (it is logged on its own).
    /// Both count as failed settles.
    #[tokio::test]
    async fn a_failed_release_is_an_outage_only_when_the_store_is_down() {
        for (step, down) in [(Step::Down, true), (Step::Refused, false)] {
            let (layer, _store, verified) = scripted(&[step]);
            let config = &layer.config;
            let Ok(mut guard) = claim(config, &verified, Instant::now()).await else {
                panic!("a fresh event is claimed");
            };
            guard.settle(&Outcome::HandlerFailed).await;
            assert_eq!(config.outages.store.is_down(), down);
            assert_eq!(layer.metrics().settle_errors(), 1);
        }
    }

    /// A dropped delivery's own try at completing, refused outright, is
    /// not tried again in the background.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_deliverys_refused_completion_is_not_tried_again() {
        let (layer, store, verified) = scripted(&[Step::Hang, Step::Refused]);
        let config = &layer.config;
        let start = Instant::now();
        dropped_while_completing(config, &verified).await;
        tokio::time::sleep(LEASE).await;
        assert_eq!(asked(&store, start), [0, 0]);
        assert_eq!(layer.metrics().settle_errors(), 1);
    }
}
