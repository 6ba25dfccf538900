//! [`MemoryInbox`]: an [`Inbox`] in process memory, for tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::events::InboxAttempt;
use crate::store::inbox_history::{self, InboxAttemptOutcome, InboxAttemptRecord};
use crate::store::inbox_page::{on_page, page_of};
use crate::store::inbox_trait::{order_key, wait_for, wake_another};
use crate::store::{
    BoxFuture, Inbox, InboxClaim, InboxEntry, InboxFilter, InboxStats, InboxStatus, Inserted,
    LeaseToken, NewEvent, ReplayPin, Replayed, Settle, StoreError,
};
use crate::store::{InboxActivity, InboxSummary, PageStart};
use crate::Timestamp;

/// An [`Inbox`] in process memory: nothing survives a restart, so it is for
/// tests and trials. Use `SqliteInbox` or `PostgresInbox` for real
/// deliveries.
#[derive(Debug, Default)]
pub struct MemoryInbox {
    state: Mutex<State>,
    inserted: Notify,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<i64, Held>,
    by_id: HashMap<(String, String), i64>,
    next_seq: i64,
}

#[derive(Debug, Clone)]
struct Held {
    entry: InboxEntry,
    token: Option<LeaseToken>,
    lease_until: Timestamp,
    /// When the latest claim took it.
    claimed_at: Timestamp,
}

impl Held {
    /// Records the attempt of the latest claim, ended at `ended` with `outcome`.
    fn record(&mut self, ended: Timestamp, outcome: InboxAttemptOutcome) {
        let ran = ended
            .as_millis()
            .saturating_sub(self.claimed_at.as_millis())
            .max(0);
        let record = InboxAttemptRecord::new(
            self.entry.attempts,
            self.claimed_at,
            Duration::from_millis(u64::try_from(ran).unwrap_or(0)),
            outcome,
        );
        inbox_history::push(&mut self.entry.history, record);
    }
}

/// When the event in `held` last settled or changed, as
/// [`Inbox::purge`] reads it: the latest of its arrival, its last claim,
/// its handling and its last replay.
fn settled_at(held: &Held) -> Timestamp {
    [
        Some(held.entry.event.received_at),
        Some(held.claimed_at),
        held.entry.handled_at,
        held.entry.last_replayed_at,
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(held.entry.event.received_at)
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl MemoryInbox {
    /// An empty inbox.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Settles `claim` if it still holds: records its attempt as ended
    /// with `outcome`, then makes `change`.
    fn settle(
        &self, claim: &InboxClaim, outcome: InboxAttemptOutcome, change: impl FnOnce(&mut Held),
    ) -> Result<Settle, StoreError> {
        let now = Timestamp::now();
        let mut state = self.state();
        let Some(held) = state.entries.get_mut(&claim.entry.seq) else {
            return Ok(Settle::LeaseLost);
        };
        // The token alone fences: every claim makes a new one, so a claim
        // whose lease ended that nobody took over still settles.
        let holds =
            held.entry.status == InboxStatus::Running && held.token.as_ref() == Some(&claim.token);
        if !holds {
            return Ok(Settle::LeaseLost);
        }
        held.record(now, outcome);
        change(held);
        held.token = None;
        Ok(Settle::Applied)
    }

    /// Deletes the events in `status` that settled before `before`; how
    /// many.
    fn purge_status(&self, before: Timestamp, status: InboxStatus) -> u64 {
        let mut state = self.state();
        let gone: Vec<_> = state
            .entries
            .values()
            .filter(|held| held.entry.status == status && settled_at(held) < before)
            .map(|held| {
                let event = &held.entry.event;
                (
                    held.entry.seq,
                    (
                        event.account.clone().unwrap_or_default(),
                        event.event_id.clone(),
                    ),
                )
            })
            .collect();
        for (seq, key) in &gone {
            state.entries.remove(seq);
            state.by_id.remove(key);
        }
        gone.len() as u64
    }
}

impl MemoryInbox {
    /// Keeps `event` with `status` and `error` unless it is a duplicate.
    fn keep(&self, event: &NewEvent, status: InboxStatus, error: Option<&str>) -> Inserted {
        let mut state = self.state();
        let key = (
            event.account.clone().unwrap_or_default(),
            event.event_id.clone(),
        );
        if state.by_id.contains_key(&key) {
            return Inserted::Duplicate;
        }
        state.next_seq += 1;
        let seq = state.next_seq;
        state.by_id.insert(key, seq);
        state.entries.insert(
            seq,
            Held {
                entry: InboxEntry {
                    seq,
                    event: event.clone(),
                    status,
                    attempts: 0,
                    next_attempt_at: event.received_at,
                    last_error: error.map(str::to_owned),
                    handled_at: None,
                    replays: 0,
                    last_replayed_at: None,
                    receipt: None,
                    history: Vec::new(),
                },
                token: None,
                lease_until: event.received_at,
                claimed_at: event.received_at,
            },
        );
        drop(state);
        self.inserted.notify_one();
        Inserted::New
    }

    /// Replays the event in `held` as [`Inbox::replay`] says.
    fn replay_held(held: &mut Held, force: bool, now: Timestamp) -> Replayed {
        match held.entry.status {
            InboxStatus::Running => return Replayed::Running,
            InboxStatus::Done if !force => {
                return Replayed::Handled {
                    at: held.entry.handled_at,
                }
            }
            _ => {}
        }
        held.entry.status = InboxStatus::Pending;
        held.entry.attempts = 0;
        held.entry.next_attempt_at = now;
        held.entry.replays += 1;
        held.entry.last_replayed_at = Some(now);
        held.entry.receipt = None;
        Replayed::Replayed
    }
}

impl Inbox for MemoryInbox {
    fn insert<'a>(&'a self, event: &'a NewEvent) -> BoxFuture<'a, Result<Inserted, StoreError>> {
        ready(Ok(self.keep(event, InboxStatus::Pending, None)))
    }

    fn insert_dead<'a>(
        &'a self, event: &'a NewEvent, error: &'a str,
    ) -> BoxFuture<'a, Result<Inserted, StoreError>> {
        ready(Ok(self.keep(event, InboxStatus::Dead, Some(error))))
    }

    fn claim(
        &self, lease: Duration, reorder_window: Duration,
    ) -> BoxFuture<'_, Result<Option<InboxClaim>, StoreError>> {
        let now = Timestamp::now();
        let arrived_before = now.as_millis().saturating_sub(millis(reorder_window));
        let mut state = self.state();
        let runnable = |held: &Held| match held.entry.status {
            InboxStatus::Pending | InboxStatus::Retrying => {
                held.entry.next_attempt_at <= now
                    && held.entry.event.received_at.as_millis() <= arrived_before
            }
            InboxStatus::Running => held.lease_until <= now,
            InboxStatus::Done | InboxStatus::Dead => false,
        };
        let blocked = |held: &Held, entries: &BTreeMap<i64, Held>| {
            let Some(object) = &held.entry.event.object_key else {
                return false;
            };
            let mine = order_key(&held.entry.event);
            entries.values().any(|other| {
                other.entry.seq != held.entry.seq
                    && other.entry.event.object_key.as_ref() == Some(object)
                    && match other.entry.status {
                        // An older event still to finish blocks, whether
                        // it waits or its worker died holding it.
                        InboxStatus::Running => {
                            other.lease_until > now || order_key(&other.entry.event) < mine
                        }
                        InboxStatus::Pending | InboxStatus::Retrying => {
                            order_key(&other.entry.event) < mine
                        }
                        InboxStatus::Done | InboxStatus::Dead => false,
                    }
            })
        };
        let chosen = state
            .entries
            .values()
            .find(|held| runnable(held) && !blocked(held, &state.entries))
            .map(|held| held.entry.seq);
        let Some(seq) = chosen else {
            return ready(Ok(None));
        };
        let Some(held) = state.entries.get_mut(&seq) else {
            return ready(Ok(None));
        };
        let token = LeaseToken::generate();
        if held.entry.status == InboxStatus::Running {
            // Its worker's lease ended before it settled the event.
            let ended = held.lease_until;
            held.record(ended, InboxAttemptOutcome::LeaseExpired);
        }
        held.claimed_at = now;
        held.entry.status = InboxStatus::Running;
        held.entry.attempts += 1;
        held.token = Some(token.clone());
        held.lease_until = Timestamp::from_millis(now.as_millis().saturating_add(millis(lease)));
        wake_another(&self.inserted);
        ready(Ok(Some(InboxClaim {
            entry: held.entry.clone(),
            token,
        })))
    }

    fn complete<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>> {
        ready(self.settle(claim, InboxAttemptOutcome::Completed, |held| {
            held.entry.status = InboxStatus::Done;
            held.entry.handled_at = Some(Timestamp::now());
        }))
    }

    fn fail<'a>(
        &'a self, claim: &'a InboxClaim, error: &'a str, retry_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        let failed = InboxAttemptOutcome::Failed {
            error: inbox_history::bounded_error(error),
        };
        ready(self.settle(claim, failed, |held| {
            held.entry.last_error = Some(error.to_owned());
            match retry_at {
                Some(at) => {
                    held.entry.status = InboxStatus::Retrying;
                    held.entry.next_attempt_at = at;
                }
                None => held.entry.status = InboxStatus::Dead,
            }
        }))
    }

    fn release<'a>(&'a self, claim: &'a InboxClaim) -> BoxFuture<'a, Result<Settle, StoreError>> {
        let settled = self.settle(claim, InboxAttemptOutcome::Released, |held| {
            held.entry.attempts = held.entry.attempts.saturating_sub(1);
            held.entry.status = if held.entry.attempts == 0 {
                InboxStatus::Pending
            } else {
                InboxStatus::Retrying
            };
        });
        self.inserted.notify_one();
        ready(settled)
    }

    fn list<'a>(
        &'a self, filter: &'a InboxFilter, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
        let state = self.state();
        let entries = state
            .entries
            .values()
            .filter(|held| filter.matches(&held.entry))
            .take(limit)
            .map(|held| held.entry.clone())
            .collect();
        ready(Ok(entries))
    }

    fn get(&self, seq: i64) -> BoxFuture<'_, Result<Option<InboxEntry>, StoreError>> {
        let entry = self
            .state()
            .entries
            .get(&seq)
            .map(|held| held.entry.clone());
        ready(Ok(entry))
    }

    fn replay(&self, seq: i64, force: bool) -> BoxFuture<'_, Result<Replayed, StoreError>> {
        let now = Timestamp::now();
        let mut state = self.state();
        let replayed = match state.entries.get_mut(&seq) {
            Some(held) => Self::replay_held(held, force, now),
            None => Replayed::Missing,
        };
        drop(state);
        self.inserted.notify_one();
        ready(Ok(replayed))
    }

    fn replay_if<'a>(
        &'a self, seq: i64, pin: &'a ReplayPin,
    ) -> BoxFuture<'a, Result<Replayed, StoreError>> {
        let now = Timestamp::now();
        // Checked and replayed under one hold of the lock.
        let mut state = self.state();
        let replayed = match state.entries.get_mut(&seq) {
            None => Replayed::Missing,
            Some(held) if !pin.holds_for(&held.entry) => Replayed::Changed,
            Some(held) => Self::replay_held(held, true, now),
        };
        drop(state);
        self.inserted.notify_one();
        ready(Ok(replayed))
    }

    fn replay_matching<'a>(
        &'a self, filter: &'a InboxFilter, force: bool,
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        let now = Timestamp::now();
        let mut state = self.state();
        let mut replayed = Vec::new();
        for held in state.entries.values_mut() {
            if filter.matches(&held.entry)
                && Self::replay_held(held, force, now) == Replayed::Replayed
            {
                replayed.push(held.entry.seq);
            }
        }
        drop(state);
        self.inserted.notify_one();
        ready(Ok(replayed))
    }

    fn check_writable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(Ok(()))
    }

    fn purge(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
        ready(Ok(self.purge_status(before, InboxStatus::Done)))
    }

    fn purge_dead(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
        ready(Ok(self.purge_status(before, InboxStatus::Dead)))
    }

    fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>> {
        let now = Timestamp::now();
        let state = self.state();
        let mut stats = InboxStats::default();
        for held in state.entries.values() {
            let arrived = held.entry.event.received_at;
            let due = u64::from(
                held.entry.status == InboxStatus::Running || held.entry.next_attempt_at <= now,
            );
            stats.add(held.entry.status, 1, due, Some(arrived));
        }
        ready(Ok(stats))
    }

    fn wait(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        wait_for(&self.inserted, timeout)
    }

    fn record_receipt<'a>(
        &'a self, attempt: &'a InboxAttempt, receipt: &'a str,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        let mut state = self.state();
        let holds = state.entries.get_mut(&attempt.seq()).filter(|held| {
            held.entry.status == InboxStatus::Running
                && held.token.as_ref().map(LeaseToken::as_str) == Some(attempt.token())
        });
        let settled = match holds {
            Some(held) => {
                held.entry.receipt = Some(receipt.to_owned());
                Settle::Applied
            }
            None => Settle::LeaseLost,
        };
        ready(Ok(settled))
    }

    fn page<'a>(
        &'a self, filter: &'a InboxFilter, start: PageStart, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
        let state = self.state();
        let matching = state
            .entries
            .values()
            .filter(|held| on_page(filter, start, &held.entry))
            .map(|held| held.entry.clone());
        ready(Ok(page_of(matching, start, limit)))
    }

    fn page_summaries<'a>(
        &'a self, filter: &'a InboxFilter, start: PageStart, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxSummary>, StoreError>> {
        let state = self.state();
        // By reference: no body is copied, not even its handle, and of
        // the last error only its start (`InboxSummary::from` cuts it).
        let matching = state
            .entries
            .values()
            .filter(|held| on_page(filter, start, &held.entry))
            .map(|held| &held.entry);
        let page = page_of(matching, start, limit)
            .into_iter()
            .map(InboxSummary::from)
            .collect();
        ready(Ok(page))
    }

    fn count<'a>(&'a self, filter: &'a InboxFilter) -> BoxFuture<'a, Result<u64, StoreError>> {
        let state = self.state();
        let count = state
            .entries
            .values()
            .filter(|held| filter.matches(&held.entry))
            .count();
        ready(Ok(count as u64))
    }

    fn activity(
        &self, since: Timestamp, interval: Duration, intervals: usize,
    ) -> BoxFuture<'_, Result<InboxActivity, StoreError>> {
        let mut activity = InboxActivity::new(since, interval, intervals);
        for held in self.state().entries.values() {
            activity.tally(&held.entry);
        }
        ready(Ok(activity))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::NewEvent;

    fn event(id: &str, object: &str, created: i64) -> NewEvent {
        let now = Timestamp::now();
        NewEvent::new(
            None,
            id.to_owned(),
            "order.succeeded".to_owned(),
            Some(Timestamp::from_millis(created)),
            Some(object.to_owned()),
            now,
            now,
            Bytes::from_static(b"{}"),
        )
    }

    async fn next(inbox: &MemoryInbox) -> Option<String> {
        let claim = inbox
            .claim(Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap();
        claim.map(|claim| claim.entry.event.event_id)
    }

    /// Per object, one event runs at a time, oldest first: a running event
    /// with a live lease blocks every other of its object (even an older
    /// one that arrived after it), a waiting older one blocks a newer one,
    /// and other objects go on.
    #[tokio::test]
    async fn one_event_per_object_runs_at_a_time_oldest_first() {
        let inbox = MemoryInbox::new();
        inbox.insert(&event("b", "o", 2_000)).await.unwrap();
        assert_eq!(next(&inbox).await.as_deref(), Some("b"));
        // Older than the running `b`, but `b` holds its object.
        inbox.insert(&event("a", "o", 1_000)).await.unwrap();
        inbox.insert(&event("c", "p", 3_000)).await.unwrap();
        assert_eq!(next(&inbox).await.as_deref(), Some("c"));
        assert_eq!(next(&inbox).await, None);

        // A waiting older event blocks a newer one of its object.
        let other = MemoryInbox::new();
        other.insert(&event("new", "q", 2_000)).await.unwrap();
        other.insert(&event("old", "q", 1_000)).await.unwrap();
        assert_eq!(next(&other).await.as_deref(), Some("old"));
        assert_eq!(next(&other).await, None);
    }

    /// Purging takes only finished events settled strictly before the
    /// given time, however long ago they arrived; a waiting event stays
    /// whatever its age.
    #[tokio::test]
    async fn purge_takes_only_finished_events_settled_before() {
        let inbox = MemoryInbox::new();
        let at = Timestamp::from_millis(1_000_000);
        let received = |id: &str| {
            let mut kept = event(id, id, 1_000);
            kept.received_at = at;
            kept
        };
        // Claimed in the order kept: `done` first.
        inbox.insert(&received("done")).await.unwrap();
        inbox.insert(&received("waiting")).await.unwrap();
        let claim = inbox
            .claim(Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap()
            .expect("two events wait");
        assert_eq!(claim.entry.event.event_id, "done");
        assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
        let handled = inbox
            .get(claim.entry.seq)
            .await
            .unwrap()
            .and_then(|entry| entry.handled_at)
            .expect("a completed event was handled");

        assert_eq!(inbox.purge(at).await.unwrap(), 0);
        // Arrived before, handled since: kept.
        assert_eq!(
            inbox
                .purge(Timestamp::from_millis(1_000_001))
                .await
                .unwrap(),
            0
        );
        assert_eq!(inbox.purge(handled).await.unwrap(), 0);
        assert_eq!(
            inbox
                .purge(Timestamp::from_millis(handled.as_millis() + 1))
                .await
                .unwrap(),
            1
        );
        let left = inbox.list(&InboxFilter::default(), 10).await.unwrap();
        let ids: Vec<_> = left.iter().map(|e| e.event.event_id.as_str()).collect();
        assert_eq!(ids, ["waiting"]);
    }

    async fn claim_for(inbox: &MemoryInbox, lease: Duration) -> InboxClaim {
        inbox
            .claim(lease, Duration::ZERO)
            .await
            .unwrap()
            .expect("an event waits")
    }

    async fn status_of(inbox: &MemoryInbox, seq: i64) -> InboxEntry {
        inbox.get(seq).await.unwrap().expect("the event is kept")
    }

    /// The event's status, attempts and replays.
    fn progress(entry: &InboxEntry) -> (InboxStatus, u32, u32) {
        (entry.status, entry.attempts, entry.replays)
    }

    /// A claim settles only while it holds: its own token, the event still
    /// running and not taken over by another claim, whether or not its
    /// lease is over.
    #[tokio::test]
    async fn a_claim_settles_only_with_its_token_until_taken_over() {
        let inbox = MemoryInbox::new();
        inbox.insert(&event("a", "o", 1_000)).await.unwrap();
        let claim = claim_for(&inbox, Duration::from_secs(60)).await;
        let mut forged = claim.clone();
        forged.token = LeaseToken::generate();
        assert_eq!(inbox.complete(&forged).await.unwrap(), Settle::LeaseLost);
        assert_eq!(
            inbox.fail(&forged, "x", None).await.unwrap(),
            Settle::LeaseLost
        );
        assert_eq!(inbox.release(&forged).await.unwrap(), Settle::LeaseLost);
        assert_eq!(
            status_of(&inbox, claim.entry.seq).await.status,
            InboxStatus::Running
        );
        assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
        // Settled once: the event is no longer running.
        assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::LeaseLost);
        assert_eq!(inbox.release(&claim).await.unwrap(), Settle::LeaseLost);
        assert_eq!(
            status_of(&inbox, claim.entry.seq).await.status,
            InboxStatus::Done
        );

        // A lease of zero ends as it is taken: the claim still settles
        // while nobody took the event over (its handler ran: running it
        // again would repeat its effects), and nothing once another did.
        inbox.insert(&event("b", "p", 1_000)).await.unwrap();
        let expired = claim_for(&inbox, Duration::ZERO).await;
        assert_eq!(expired.entry.event.event_id, "b");
        assert_eq!(inbox.release(&expired).await.unwrap(), Settle::Applied);
        let expired = claim_for(&inbox, Duration::ZERO).await;
        let taken_over = claim_for(&inbox, Duration::from_secs(60)).await;
        assert_eq!(taken_over.entry.seq, expired.entry.seq);
        assert_eq!(inbox.complete(&expired).await.unwrap(), Settle::LeaseLost);
        assert_eq!(
            inbox.fail(&expired, "x", None).await.unwrap(),
            Settle::LeaseLost
        );
        assert_eq!(inbox.release(&expired).await.unwrap(), Settle::LeaseLost);
        assert_eq!(
            status_of(&inbox, expired.entry.seq).await.status,
            InboxStatus::Running
        );
        assert_eq!(inbox.complete(&taken_over).await.unwrap(), Settle::Applied);
        // An event missing altogether settles nothing either.
        let mut gone = expired.clone();
        gone.entry.seq += 100;
        assert_eq!(inbox.complete(&gone).await.unwrap(), Settle::LeaseLost);
    }

    /// A receipt is kept only under a claim that holds, as a settle is.
    #[tokio::test]
    async fn a_receipt_is_kept_only_under_a_claim_that_holds() {
        let inbox = MemoryInbox::new();
        inbox.insert(&event("a", "o", 1_000)).await.unwrap();
        let claim = claim_for(&inbox, Duration::from_secs(60)).await;
        let attempt = |claim: &InboxClaim, token: &str| {
            InboxAttempt::new(claim.entry.seq, claim.entry.attempts, token.to_owned())
        };
        let forged = LeaseToken::generate();
        assert_eq!(
            inbox
                .record_receipt(&attempt(&claim, forged.as_str()), "r0")
                .await
                .unwrap(),
            Settle::LeaseLost
        );
        assert_eq!(status_of(&inbox, claim.entry.seq).await.receipt, None);
        let own = attempt(&claim, claim.token.as_str());
        assert_eq!(
            inbox.record_receipt(&own, "r1").await.unwrap(),
            Settle::Applied
        );
        assert_eq!(
            status_of(&inbox, claim.entry.seq).await.receipt.as_deref(),
            Some("r1")
        );
        assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
        assert_eq!(
            inbox.record_receipt(&own, "r2").await.unwrap(),
            Settle::LeaseLost
        );
        assert_eq!(
            status_of(&inbox, claim.entry.seq).await.receipt.as_deref(),
            Some("r1")
        );

        // A claim whose lease ended keeps its receipt until another takes
        // the event over.
        inbox.insert(&event("b", "p", 1_000)).await.unwrap();
        let expired = claim_for(&inbox, Duration::ZERO).await;
        let own = attempt(&expired, expired.token.as_str());
        assert_eq!(
            inbox.record_receipt(&own, "r3").await.unwrap(),
            Settle::Applied
        );
        let taken_over = claim_for(&inbox, Duration::from_secs(60)).await;
        assert_eq!(taken_over.entry.seq, expired.entry.seq);
        assert_eq!(
            inbox.record_receipt(&own, "r4").await.unwrap(),
            Settle::LeaseLost
        );
        assert_eq!(
            status_of(&inbox, expired.entry.seq)
                .await
                .receipt
                .as_deref(),
            Some("r3")
        );
    }

    /// Replaying leaves a running event alone, a handled one unless forced,
    /// and makes any other pending again with its attempts reset.
    #[tokio::test]
    async fn replay_spares_running_events_and_handled_ones_unless_forced() {
        let inbox = MemoryInbox::new();
        inbox.insert(&event("done", "o", 1_000)).await.unwrap();
        inbox.insert(&event("running", "p", 1_000)).await.unwrap();
        inbox
            .insert_dead(&event("dead", "q", 1_000), "undecodable")
            .await
            .unwrap();
        let done = claim_for(&inbox, Duration::from_secs(60)).await;
        assert_eq!(inbox.complete(&done).await.unwrap(), Settle::Applied);
        let running = claim_for(&inbox, Duration::from_secs(60)).await;
        assert_eq!(running.entry.event.event_id, "running");
        let handled_at = status_of(&inbox, done.entry.seq).await.handled_at;
        assert!(handled_at.is_some());

        assert_eq!(
            inbox.replay(running.entry.seq, true).await.unwrap(),
            Replayed::Running
        );
        let still = status_of(&inbox, running.entry.seq).await;
        assert_eq!(progress(&still), (InboxStatus::Running, 1, 0));
        assert_eq!(
            inbox.replay(done.entry.seq, false).await.unwrap(),
            Replayed::Handled { at: handled_at }
        );
        assert_eq!(
            status_of(&inbox, done.entry.seq).await.status,
            InboxStatus::Done
        );
        assert_eq!(inbox.replay(999, true).await.unwrap(), Replayed::Missing);

        // Without force, of the three only the dead one goes back.
        let all = InboxFilter::default();
        let replayed = inbox.replay_matching(&all, false).await.unwrap();
        assert_eq!(replayed.len(), 1);
        let dead = status_of(&inbox, replayed[0]).await;
        assert_eq!(dead.event.event_id, "dead");
        assert_eq!(progress(&dead), (InboxStatus::Pending, 0, 1));
        assert!(dead.last_replayed_at.is_some());

        // Forced, the handled one runs again; the running one is still spared.
        assert_eq!(
            inbox.replay(done.entry.seq, true).await.unwrap(),
            Replayed::Replayed
        );
        let again = status_of(&inbox, done.entry.seq).await;
        assert_eq!(progress(&again), (InboxStatus::Pending, 0, 1));
        assert_eq!(
            inbox.replay_matching(&all, true).await.unwrap(),
            [done.entry.seq, dead.seq]
        );
    }

    /// The counts per status, and which events are due: pending and
    /// running ones are, a retry only once its time has come.
    #[tokio::test]
    async fn stats_count_each_status_and_what_is_due() {
        let inbox = MemoryInbox::new();
        for (id, object) in [("done", "o"), ("later", "p"), ("running", "q")] {
            inbox.insert(&event(id, object, 1_000)).await.unwrap();
        }
        inbox.insert(&event("pending", "r", 1_000)).await.unwrap();
        inbox
            .insert(&event("pending too", "t", 1_000))
            .await
            .unwrap();
        inbox
            .insert_dead(&event("dead", "s", 1_000), "undecodable")
            .await
            .unwrap();
        let done = claim_for(&inbox, Duration::from_secs(60)).await;
        assert_eq!(inbox.complete(&done).await.unwrap(), Settle::Applied);
        let later = claim_for(&inbox, Duration::from_secs(60)).await;
        let tomorrow = Timestamp::from_millis(Timestamp::now().as_millis() + 86_400_000);
        assert_eq!(
            inbox.fail(&later, "busy", Some(tomorrow)).await.unwrap(),
            Settle::Applied
        );
        let running = claim_for(&inbox, Duration::from_secs(60)).await;
        assert_eq!(running.entry.event.event_id, "running");

        let stats = inbox.stats().await.unwrap();
        assert_eq!(
            (
                stats.pending,
                stats.retrying,
                stats.running,
                stats.dead,
                stats.due
            ),
            (2, 1, 1, 1, 3)
        );
    }

    /// Every attempt is recorded when it ends: a lease that ran out when
    /// the event is next taken, a failure, a release (which gives the
    /// attempt back) and the completion.
    #[tokio::test]
    async fn each_attempt_is_recorded_with_how_it_ended() {
        let inbox = MemoryInbox::new();
        inbox.insert(&event("a", "o", 1_000)).await.unwrap();
        let lost = claim_for(&inbox, Duration::ZERO).await;
        assert_eq!(lost.entry.attempts, 1);
        let failed = claim_for(&inbox, Duration::from_secs(60)).await;
        assert_eq!(failed.entry.attempts, 2);
        let settled = inbox.fail(&failed, "boom", Some(Timestamp::now())).await;
        assert_eq!(settled.unwrap(), Settle::Applied);
        let released = claim_for(&inbox, Duration::from_secs(60)).await;
        assert_eq!(inbox.release(&released).await.unwrap(), Settle::Applied);
        let entry = status_of(&inbox, released.entry.seq).await;
        // Given back: the attempt does not count, and it had run before.
        assert_eq!((entry.status, entry.attempts), (InboxStatus::Retrying, 2));
        let completed = claim_for(&inbox, Duration::from_secs(60)).await;
        assert_eq!(completed.entry.attempts, 3);
        assert_eq!(inbox.complete(&completed).await.unwrap(), Settle::Applied);

        let history = status_of(&inbox, completed.entry.seq).await.history;
        let seen: Vec<_> = history
            .iter()
            .map(|record| (record.attempt, record.outcome.clone()))
            .collect();
        assert_eq!(
            seen,
            [
                (1, InboxAttemptOutcome::LeaseExpired),
                (
                    2,
                    InboxAttemptOutcome::Failed {
                        error: "boom".to_owned()
                    }
                ),
                (3, InboxAttemptOutcome::Released),
                (3, InboxAttemptOutcome::Completed),
            ]
        );
        // The lost attempt ran from its claim to its lease's end: no time.
        assert_eq!(history[0].duration, Duration::ZERO);
        assert!(history[0].started_at <= history[1].started_at);

        // A first attempt given back leaves the event pending, as new.
        inbox.insert(&event("b", "p", 1_000)).await.unwrap();
        let first = claim_for(&inbox, Duration::from_secs(60)).await;
        assert_eq!(inbox.release(&first).await.unwrap(), Settle::Applied);
        let entry = status_of(&inbox, first.entry.seq).await;
        assert_eq!((entry.status, entry.attempts), (InboxStatus::Pending, 0));
    }

    /// A worker that died holding an older event still blocks the newer
    /// ones of its object: the older event is taken again first. A newer
    /// running event blocks only while its lease lasts, which ends at its
    /// end exclusive.
    #[tokio::test]
    async fn a_lapsed_lease_blocks_newer_events_only_for_an_older_event() {
        let inbox = MemoryInbox::new();
        inbox.insert(&event("new", "o", 2_000)).await.unwrap();
        inbox.insert(&event("old", "o", 1_000)).await.unwrap();
        let lapsed = claim_for(&inbox, Duration::ZERO).await;
        assert_eq!(lapsed.entry.event.event_id, "old");
        let again = claim_for(&inbox, Duration::ZERO).await;
        assert_eq!(again.entry.event.event_id, "old");
        assert_eq!(again.entry.attempts, 2);

        let other = MemoryInbox::new();
        other.insert(&event("b", "p", 2_000)).await.unwrap();
        let newer = claim_for(&other, Duration::ZERO).await;
        assert_eq!(newer.entry.event.event_id, "b");
        // Older, arrived while `b` ran; `b`'s lease is over.
        other.insert(&event("a", "p", 1_000)).await.unwrap();
        assert_eq!(next(&other).await.as_deref(), Some("a"));
    }

    /// Two events of one object in the same place of its order (the same
    /// id and time, from two accounts) do not block each other: neither
    /// waits for the other forever.
    #[tokio::test]
    async fn events_in_the_same_place_of_an_order_do_not_block_each_other() {
        let of = |account: &str| {
            let mut kept = event("evt", "o", 1_000);
            kept.account = Some(account.to_owned());
            kept
        };
        let inbox = MemoryInbox::new();
        inbox.insert(&of("a")).await.unwrap();
        inbox.insert(&of("b")).await.unwrap();
        assert_eq!(inbox.stats().await.unwrap().pending, 2);
        let first = claim_for(&inbox, Duration::from_secs(60)).await;
        assert_eq!(first.entry.event.account.as_deref(), Some("a"));
        // `a` waits for a retry far ahead; `b` runs, and its worker dies.
        let far = Timestamp::from_millis(Timestamp::now().as_millis() + 86_400_000);
        assert_eq!(
            inbox.fail(&first, "busy", Some(far)).await.unwrap(),
            Settle::Applied
        );
        let lapsed = claim_for(&inbox, Duration::ZERO).await;
        assert_eq!(lapsed.entry.event.account.as_deref(), Some("b"));
        // `a` replayed is due now and is not behind `b`.
        let replayed = inbox.replay(first.entry.seq, false).await.unwrap();
        assert_eq!(replayed, Replayed::Replayed);
        let taken = claim_for(&inbox, Duration::from_secs(60)).await;
        assert_eq!(taken.entry.event.account.as_deref(), Some("a"));
    }
}
