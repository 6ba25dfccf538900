//! The durable inbox: one conformance suite run against every backend, the
//! workers (retries, dead letters, replay, order per object), and the
//! layer's inbox mode.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clink_webhooks::inbox::Workers;
use clink_webhooks::store::{Inbox, Inserted, MemoryInbox, NewEvent, Settle};
use clink_webhooks::store::{
    InboxAttemptOutcome, InboxAttemptRecord, InboxClaim, InboxEntry, InboxFilter, InboxStatus,
    PageStart, ReplayPin, Replayed, StoreErrorKind,
};
use clink_webhooks::testing::SignedRequest;
use clink_webhooks::{events, ClinkLayer, EventRouter, Outcome, Timestamp, Verifier};
use http_body_util::Full;
use tower::ServiceExt;

use crate::support::inbox_delegate::delegate_inbox;

const NO_REORDER_WINDOW: Duration = Duration::ZERO;
const LEASE: Duration = Duration::from_secs(30);
/// How long workers may take to drain what a test gave them: it only bounds
/// a hang, so it is the patience of every other wait in the suite.
const DRAIN_PATIENCE: Duration = crate::support::process::PATIENCE;

fn unique() -> String {
    clink_webhooks::store::LeaseToken::generate().as_str()[..12].to_owned()
}

fn event(id: &str, object: Option<&str>, created_ms: i64) -> NewEvent {
    let body = format!(
        r#"{{"id":"{id}","type":"order.succeeded","created":{created_ms},"data":{{"orderId":"{}"}}}}"#,
        object.unwrap_or("")
    );
    NewEvent::new(
        None,
        id.to_owned(),
        "order.succeeded".to_owned(),
        Some(Timestamp::from_millis(created_ms)),
        object.map(|o| format!("order:{o}")),
        Timestamp::now(),
        Timestamp::now(),
        Bytes::from(body),
    )
}

/// Waits, within a bound, until `done` holds.
async fn within<F: FnMut() -> bool>(what: &str, mut done: F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "not within 20 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The conformance suite: what every [`Inbox`] must do.
async fn conformance(inbox: Arc<dyn Inbox>) {
    let run = unique();
    let id = |n: &str| format!("evt_{run}_{n}");
    let object = |n: &str| format!("{run}_{n}");

    // One write per event; the same id again is a duplicate, another account not.
    let a = event(&id("a"), None, 1_000);
    assert_eq!(inbox.insert(&a).await.unwrap(), Inserted::New);
    assert_eq!(inbox.insert(&a).await.unwrap(), Inserted::Duplicate);
    let mut other_account = a.clone();
    other_account.account = Some("acct_2".to_owned());
    assert_eq!(inbox.insert(&other_account).await.unwrap(), Inserted::New);

    // A reorder window holds new events back.
    assert!(inbox
        .claim(LEASE, Duration::from_secs(3600))
        .await
        .unwrap()
        .is_none());

    // Events about no object run in arrival order, without waiting on each other.
    let first = inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .unwrap();
    let second = inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.entry.event, a);
    assert_eq!(second.entry.event, other_account);
    assert_eq!(first.entry.attempts, 1);
    assert_eq!(inbox.complete(&first).await.unwrap(), Settle::Applied);
    // A spent token settles nothing.
    assert_eq!(inbox.complete(&first).await.unwrap(), Settle::LeaseLost);
    assert_eq!(inbox.complete(&second).await.unwrap(), Settle::Applied);
    assert_eq!(
        inbox.get(first.entry.seq).await.unwrap().unwrap().status,
        InboxStatus::Done
    );

    // One object: oldest created first, one at a time, whatever the arrival order.
    let o = object("o");
    let newer = event(&id("newer"), Some(&o), 2_000);
    let older = event(&id("older"), Some(&o), 1_000);
    inbox.insert(&newer).await.unwrap();
    inbox.insert(&older).await.unwrap();
    let taken = inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.entry.event.event_id, older.event_id);
    assert!(
        inbox
            .claim(LEASE, NO_REORDER_WINDOW)
            .await
            .unwrap()
            .is_none(),
        "the newer event waits while the older one runs"
    );

    // A failure with a retry time: retrying, and it blocks its object until done.
    let later = Timestamp::from_millis(Timestamp::now().as_millis() + 3_600_000);
    assert_eq!(
        inbox.fail(&taken, "boom", Some(later)).await.unwrap(),
        Settle::Applied
    );
    let kept = inbox.get(taken.entry.seq).await.unwrap().unwrap();
    assert_eq!(kept.status, InboxStatus::Retrying);
    assert_eq!(kept.last_error.as_deref(), Some("boom"));
    assert!(inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .is_none());
    let retrying = inbox
        .list(&InboxFilter::default().status(InboxStatus::Retrying), 100)
        .await
        .unwrap();
    assert!(retrying.iter().any(|e| e.seq == taken.entry.seq));

    // Replayed now, it runs; failed with no retry time, it is dead and no
    // longer blocks the newer event.
    assert_eq!(
        inbox.replay(taken.entry.seq, false).await.unwrap(),
        Replayed::Replayed
    );
    let again = inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.entry.seq, taken.entry.seq);
    assert_eq!(again.entry.attempts, 1, "a replay starts the count again");
    assert_eq!(
        inbox.fail(&again, "still broken", None).await.unwrap(),
        Settle::Applied
    );
    assert_eq!(
        inbox.get(again.entry.seq).await.unwrap().unwrap().status,
        InboxStatus::Dead
    );
    let next = inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.entry.event.event_id, newer.event_id);

    // A worker that dies: its lease ends and another takes the event over;
    // the dead worker's token no longer settles it.
    assert_eq!(inbox.release(&next).await.unwrap(), Settle::Applied);
    let short = inbox
        .claim(Duration::from_millis(50), NO_REORDER_WINDOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(short.entry.seq, next.entry.seq);
    assert_eq!(
        short.entry.attempts, 1,
        "a release does not count an attempt"
    );
    let mut taken_over = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while taken_over.is_none() {
        assert!(Instant::now() < deadline, "the lease never ended");
        taken_over = inbox.claim(LEASE, NO_REORDER_WINDOW).await.unwrap();
    }
    let taken_over = taken_over.unwrap();
    assert_eq!(taken_over.entry.seq, short.entry.seq);
    assert_eq!(inbox.complete(&short).await.unwrap(), Settle::LeaseLost);
    assert_eq!(inbox.complete(&taken_over).await.unwrap(), Settle::Applied);

    // A handler that outlived its lease while nobody took the event over:
    // the token fences, not the clock, so its completion counts and the
    // event does not run (and repeat its effects) a second time.
    inbox
        .insert(&event(&id("outlived"), None, 1_000))
        .await
        .unwrap();
    let lease = Duration::from_millis(20);
    let outlived = inbox
        .claim(lease, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .expect("the event is due");
    // The lease has ended by any clock of this machine once this much
    // more than it has passed since the claim.
    let ended = Instant::now() + lease * 5;
    while Instant::now() < ended {
        tokio::time::sleep(lease).await;
    }
    assert_eq!(inbox.complete(&outlived).await.unwrap(), Settle::Applied);
    let entry = inbox.get(outlived.entry.seq).await.unwrap().unwrap();
    assert_eq!(entry.status, InboxStatus::Done);
    assert!(inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .is_none());

    // Dead events are replayed together; done ones are purged.
    assert!(!inbox
        .replay_matching(&InboxFilter::default().status(InboxStatus::Dead), false)
        .await
        .unwrap()
        .is_empty());
    let replayed = inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inbox.complete(&replayed).await.unwrap(), Settle::Applied);
    let stats = inbox.stats().await.unwrap();
    assert_eq!(stats.running, 0);
    let future = Timestamp::from_millis(Timestamp::now().as_millis() + 1);
    assert!(inbox.purge(future).await.unwrap() >= 4);
    assert!(inbox.get(replayed.entry.seq).await.unwrap().is_none());
}

/// What the SQLite and PostgreSQL inboxes do with the events an older
/// event of their object holds back: a claim that reads them sets them
/// aside until that one is due (so that the claims after it do not read
/// them again while they cannot run), and they are due again as soon as it
/// settles. `inbox` must be empty.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn held_back_conformance(inbox: Arc<dyn Inbox>) {
    let run = unique();
    let id = |n: &str| format!("evt_{run}_{n}");
    let o = format!("{run}_o");
    let (head, first, second) = (
        event(&id("head"), Some(&o), 1_000),
        event(&id("first"), Some(&o), 2_000),
        event(&id("second"), Some(&o), 3_000),
    );
    for event in [&head, &first, &second] {
        assert_eq!(inbox.insert(event).await.unwrap(), Inserted::New);
    }
    let (head_seq, first_seq, second_seq) = (
        seq_of(&*inbox, &head.event_id).await,
        seq_of(&*inbox, &first.event_id).await,
        seq_of(&*inbox, &second.event_id).await,
    );
    let entry = |seq| {
        let inbox = Arc::clone(&inbox);
        async move { inbox.get(seq).await.unwrap().unwrap() }
    };

    // The oldest fails, its retry an hour away: the claim after reads the
    // two behind it and sets them aside until that retry.
    let claim = claim_only(&*inbox, head_seq).await;
    let retry = Timestamp::from_millis(Timestamp::now().as_millis() + 3_600_000);
    assert_eq!(
        inbox.fail(&claim, "down", Some(retry)).await.unwrap(),
        Settle::Applied
    );
    assert!(inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .is_none());
    let retry_at = entry(head_seq).await.next_attempt_at;
    assert!(retry_at.as_millis() > Timestamp::now().as_millis() + 3_000_000);
    for seq in [first_seq, second_seq] {
        let held = entry(seq).await;
        assert_eq!(held.status, InboxStatus::Pending);
        assert_eq!(held.attempts, 0);
        assert_eq!(held.next_attempt_at, retry_at, "set aside until the retry");
    }
    let stats = inbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.retrying, stats.due), (2, 1, 0));

    // Replayed, the oldest runs at once; once it is dead, the next is due
    // at once, not at the retry's time (the one after it still waits: it
    // cannot run before the next).
    assert_eq!(
        inbox.replay(head_seq, false).await.unwrap(),
        Replayed::Replayed
    );
    let claim = claim_only(&*inbox, head_seq).await;
    assert_eq!(
        inbox.fail(&claim, "given up", None).await.unwrap(),
        Settle::Applied
    );
    assert_eq!(entry(head_seq).await.status, InboxStatus::Dead);
    assert!(entry(first_seq).await.next_attempt_at <= Timestamp::now());
    assert_eq!(entry(second_seq).await.next_attempt_at, retry_at);
    let claim = claim_only(&*inbox, first_seq).await;
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
    assert!(entry(second_seq).await.next_attempt_at <= Timestamp::now());
    let claim = claim_only(&*inbox, second_seq).await;

    // Behind a running event, a new one is set aside until the lease ends,
    // and due again as soon as that event is done.
    let third = event(&id("third"), Some(&o), 4_000);
    assert_eq!(inbox.insert(&third).await.unwrap(), Inserted::New);
    let third_seq = seq_of(&*inbox, &third.event_id).await;
    assert!(inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .is_none());
    let held = entry(third_seq).await;
    assert!(
        held.next_attempt_at.as_millis() > Timestamp::now().as_millis() + 15_000, // half the lease
        "set aside until the lease ends: {held:?}"
    );
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
    assert!(entry(third_seq).await.next_attempt_at <= Timestamp::now());
    let claim = claim_only(&*inbox, third_seq).await;
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
}

/// Claims the one event due in `inbox`, which must be `seq`.
async fn claim_only(inbox: &dyn Inbox, seq: i64) -> InboxClaim {
    let claim = inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .expect("an event is due");
    assert_eq!(claim.entry.seq, seq);
    claim
}

/// The number of the event `id` in `inbox`.
async fn seq_of(inbox: &dyn Inbox, id: &str) -> i64 {
    let all = inbox.list(&InboxFilter::default(), 1000).await.unwrap();
    all.iter()
        .find(|entry| entry.event.event_id == id)
        .map(|entry| entry.seq)
        .unwrap_or_else(|| panic!("{id} is not in the inbox"))
}

/// Each attempt's number and outcome.
fn outcomes(entry: &InboxEntry) -> Vec<(u32, InboxAttemptOutcome)> {
    entry
        .history
        .iter()
        .map(|record| (record.attempt, record.outcome.clone()))
        .collect()
}

fn failed(error: &str) -> InboxAttemptOutcome {
    InboxAttemptOutcome::Failed {
        error: error.to_owned(),
    }
}

/// Each attempt starts after the one before it ended, and ends by `now`.
fn in_order(history: &[InboxAttemptRecord], since: Timestamp) {
    let mut previous_end = since;
    for record in history {
        assert!(
            record.started_at >= previous_end,
            "an attempt started before the one before it ended: {history:?}"
        );
        previous_end = record.ended_at();
    }
    assert!(previous_end <= Timestamp::now(), "{history:?}");
}

/// The conformance suite's part about each event's attempts: what every
/// [`Inbox`] records of them. `inbox` must start empty.
async fn attempts_conformance(inbox: Arc<dyn Inbox>) {
    let run = unique();
    let id = |n: &str| format!("evt_{run}_{n}");
    let since = Timestamp::now();
    let retry_now = || Some(Timestamp::now());

    // Failed twice, then completed: three attempts in order, with the errors.
    inbox.insert(&event(&id("flaky"), None, 1)).await.unwrap();
    let seq = seq_of(&*inbox, &id("flaky")).await;
    let first = claim_only(&*inbox, seq).await;
    assert!(first.entry.history.is_empty(), "no attempt ended yet");
    let settled = inbox
        .fail(&first, "provider <down>\nfirst", retry_now())
        .await;
    assert_eq!(settled.unwrap(), Settle::Applied);
    let second = claim_only(&*inbox, seq).await;
    assert_eq!(
        outcomes(&second.entry),
        [(1, failed("provider <down>\nfirst"))],
        "a claim returns the history so far"
    );
    assert_eq!(
        inbox.fail(&second, "second", retry_now()).await.unwrap(),
        Settle::Applied
    );
    let third = claim_only(&*inbox, seq).await;
    assert_eq!(inbox.complete(&third).await.unwrap(), Settle::Applied);
    let entry = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(
        outcomes(&entry),
        [
            (1, failed("provider <down>\nfirst")),
            (2, failed("second")),
            (3, InboxAttemptOutcome::Completed),
        ]
    );
    in_order(&entry.history, since);
    // A settle that no longer holds records nothing.
    assert_eq!(inbox.complete(&third).await.unwrap(), Settle::LeaseLost);
    assert_eq!(inbox.get(seq).await.unwrap().unwrap().history.len(), 3);

    // A replay starts the count again and keeps the history.
    assert_eq!(inbox.replay(seq, true).await.unwrap(), Replayed::Replayed);
    let replayed = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!((replayed.replays, replayed.history.len()), (1, 3));
    let again = claim_only(&*inbox, seq).await;
    assert_eq!(inbox.complete(&again).await.unwrap(), Settle::Applied);
    let entry = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(entry.history.len(), 4);
    assert_eq!(
        outcomes(&entry)[3],
        (1, InboxAttemptOutcome::Completed),
        "the first attempt since the replay"
    );
    in_order(&entry.history, since);

    // A worker whose lease ends without settling: the next claim records
    // the lost attempt, which ran until its lease's end.
    inbox.insert(&event(&id("hung"), None, 2)).await.unwrap();
    let seq = seq_of(&*inbox, &id("hung")).await;
    let lease = Duration::from_millis(50);
    let before_claim = Timestamp::now();
    let lost = inbox
        .claim(lease, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .unwrap();
    let after_claim = Timestamp::now();
    assert_eq!(lost.entry.seq, seq);
    // Waiting for the lease's deadline to pass: time, not another task.
    tokio::time::sleep(lease).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let taken_over = loop {
        if let Some(claim) = inbox.claim(LEASE, NO_REORDER_WINDOW).await.unwrap() {
            break claim;
        }
        assert!(Instant::now() < deadline, "the lease never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(taken_over.entry.seq, seq);
    assert_eq!(
        outcomes(&taken_over.entry),
        [(1, InboxAttemptOutcome::LeaseExpired)]
    );
    let expired = &taken_over.entry.history[0];
    assert!(
        expired.started_at >= before_claim && expired.started_at <= after_claim,
        "it started with the lost claim: {expired:?}"
    );
    assert_eq!(expired.duration, lease, "it ran until its lease ended");
    // The lost worker's late settle changes nothing.
    assert_eq!(
        inbox.fail(&lost, "too late", retry_now()).await.unwrap(),
        Settle::LeaseLost
    );
    assert_eq!(inbox.complete(&taken_over).await.unwrap(), Settle::Applied);
    let entry = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(
        outcomes(&entry),
        [
            (1, InboxAttemptOutcome::LeaseExpired),
            (2, InboxAttemptOutcome::Completed),
        ]
    );
    in_order(&entry.history, since);

    // Given back at shutdown: a released attempt, not counted.
    inbox
        .insert(&event(&id("released"), None, 3))
        .await
        .unwrap();
    let seq = seq_of(&*inbox, &id("released")).await;
    let claim = claim_only(&*inbox, seq).await;
    assert_eq!(inbox.release(&claim).await.unwrap(), Settle::Applied);
    let entry = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(entry.status, InboxStatus::Pending);
    assert_eq!(outcomes(&entry), [(1, InboxAttemptOutcome::Released)]);
    let claim = claim_only(&*inbox, seq).await;
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
    let entry = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(
        outcomes(&entry),
        [
            (1, InboxAttemptOutcome::Released),
            (1, InboxAttemptOutcome::Completed),
        ],
        "the attempt after a release has the released one's number"
    );
    in_order(&entry.history, since);

    // A poison event failing 25 times keeps its newest 20 attempts, and
    // each error cut to 2 KiB.
    inbox.insert(&event(&id("poison"), None, 4)).await.unwrap();
    let seq = seq_of(&*inbox, &id("poison")).await;
    let long = format!("failure 25 {}", "é".repeat(3_000));
    for n in 1..=25 {
        let claim = claim_only(&*inbox, seq).await;
        let error = if n == 25 {
            long.clone()
        } else {
            format!("failure {n}")
        };
        let retry = (n < 25).then(Timestamp::now);
        assert_eq!(
            inbox.fail(&claim, &error, retry).await.unwrap(),
            Settle::Applied
        );
    }
    let entry = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(entry.status, InboxStatus::Dead);
    assert_eq!(entry.history.len(), 20);
    let numbers: Vec<u32> = entry.history.iter().map(|r| r.attempt).collect();
    assert_eq!(numbers, (6..=25).collect::<Vec<_>>());
    for record in &entry.history[..19] {
        assert_eq!(
            record.outcome,
            failed(&format!("failure {}", record.attempt))
        );
    }
    let kept = entry.history[19].outcome.error().unwrap();
    assert!(kept.len() <= 2048, "{} bytes kept", kept.len());
    assert!(
        kept.starts_with("failure 25 éé") && kept.ends_with("é…"),
        "{kept}"
    );
    in_order(&entry.history, since);
}

/// NUL characters, which a verified body can carry in its type or its
/// object's id (as `\u0000`) and a handler's error can quote: every inbox
/// keeps such an event (answering 503 to every retry would lose it) and
/// records such an error (failing to would leave the event running).
async fn nul_conformance(inbox: Arc<dyn Inbox>) {
    let run = unique();
    let mut kept = event(&format!("evt_{run}_nul"), Some(&format!("{run}\0o")), 1);
    kept.event_type = "order.\0succeeded".to_owned();
    assert_eq!(inbox.insert(&kept).await.unwrap(), Inserted::New);
    let mut dead = event(&format!("evt_{run}_nul_dead"), None, 1);
    dead.event_type = "order.\0succeeded".to_owned();
    assert_eq!(
        inbox
            .insert_dead(&dead, "dead: \0 in its data")
            .await
            .unwrap(),
        Inserted::New
    );
    let claim = inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .expect("the event is due");
    assert_eq!(claim.entry.event.event_id, kept.event_id);
    assert_eq!(
        inbox.fail(&claim, "refused: a\0b", None).await.unwrap(),
        Settle::Applied
    );
    let entry = inbox.get(claim.entry.seq).await.unwrap().unwrap();
    assert_eq!(entry.status, InboxStatus::Dead);
    let error = entry.last_error.clone().unwrap_or_default();
    assert!(
        error.starts_with("refused: a") && error.ends_with('b'),
        "{error:?}"
    );
    // A summary carries the same error whole (it is short), not cut at the
    // NUL.
    let dead = inbox
        .page_summaries(
            &InboxFilter::default().status(InboxStatus::Dead),
            clink_webhooks::store::PageStart::Newest,
            10,
        )
        .await
        .unwrap();
    let summary = dead
        .iter()
        .find(|summary| summary.seq == claim.entry.seq)
        .expect("the dead event is listed");
    assert_eq!(summary.last_error, entry.last_error);
    assert!(!summary.last_error_cut);
    assert_eq!(
        entry.event.body, kept.body,
        "the body is kept byte for byte"
    );
}

/// The conformance suite's part about purging: a finished event is kept
/// until it settled (was last handled, failed or replayed) before the
/// time given, however long ago it arrived; an event still to run is
/// never purged. `inbox` must have no event due.
async fn purge_conformance(inbox: Arc<dyn Inbox>) {
    let run = unique();
    let id = |n: &str| format!("evt_{run}_{n}");
    let hours = |h: i64| h * 3_600_000;
    let start = Timestamp::now();
    // Arrived 300 h ago; the retention is 168 h.
    let long_ago = Timestamp::from_millis(start.as_millis() - hours(300));
    let retention_ago = Timestamp::from_millis(start.as_millis() - hours(168));
    let old = |n: &str| {
        let mut kept = event(&id(n), None, 1);
        kept.received_at = long_ago;
        kept.signed_at = long_ago;
        kept
    };

    // Dead at arrival and left so: it settled when it arrived.
    inbox
        .insert_dead(&old("dead_long_ago"), "undecodable")
        .await
        .unwrap();
    let dead_long_ago = seq_of(&*inbox, &id("dead_long_ago")).await;
    // Dead at arrival, replayed now and dead again.
    inbox
        .insert_dead(&old("failed_again"), "undecodable")
        .await
        .unwrap();
    let failed_again = seq_of(&*inbox, &id("failed_again")).await;
    assert_eq!(
        inbox.replay(failed_again, false).await.unwrap(),
        Replayed::Replayed
    );
    let claim = claim_only(&*inbox, failed_again).await;
    assert_eq!(
        inbox.fail(&claim, "still broken", None).await.unwrap(),
        Settle::Applied
    );
    // Waiting since long ago, handled now.
    inbox.insert(&old("handled_now")).await.unwrap();
    let handled_now = seq_of(&*inbox, &id("handled_now")).await;
    let claim = claim_only(&*inbox, handled_now).await;
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
    // Dead at arrival and replayed now: waiting to run again.
    inbox
        .insert_dead(&old("replayed_now"), "undecodable")
        .await
        .unwrap();
    let replayed_now = seq_of(&*inbox, &id("replayed_now")).await;
    assert_eq!(
        inbox.replay(replayed_now, false).await.unwrap(),
        Replayed::Replayed
    );
    // Waiting since long ago, never taken.
    inbox.insert(&old("waiting")).await.unwrap();
    let waiting = seq_of(&*inbox, &id("waiting")).await;
    let status = async |seq: i64| inbox.get(seq).await.unwrap().map(|entry| entry.status);
    assert_eq!(status(failed_again).await, Some(InboxStatus::Dead));
    assert_eq!(status(handled_now).await, Some(InboxStatus::Done));

    // The retention ago: after every arrival, before the settles of today.
    // A purge keeps the dead: only purge_dead deletes them.
    assert_eq!(inbox.purge(retention_ago).await.unwrap(), 0);
    assert_eq!(status(dead_long_ago).await, Some(InboxStatus::Dead));
    assert_eq!(inbox.purge_dead(retention_ago).await.unwrap(), 1);
    assert_eq!(status(dead_long_ago).await, None);
    assert_eq!(status(failed_again).await, Some(InboxStatus::Dead));
    assert_eq!(status(handled_now).await, Some(InboxStatus::Done));
    assert_eq!(status(replayed_now).await, Some(InboxStatus::Pending));
    assert_eq!(status(waiting).await, Some(InboxStatus::Pending));

    // Once they settled before it, the done ones go, and the dead ones
    // with purge_dead; the waiting ones stay whatever the time.
    let settled = Timestamp::from_millis(Timestamp::now().as_millis() + 1);
    assert_eq!(inbox.purge(settled).await.unwrap(), 1);
    assert_eq!(status(handled_now).await, None);
    assert_eq!(status(failed_again).await, Some(InboxStatus::Dead));
    assert_eq!(inbox.purge_dead(settled).await.unwrap(), 1);
    assert_eq!(status(failed_again).await, None);
    let far = Timestamp::from_millis(start.as_millis() + hours(10_000));
    assert_eq!(inbox.purge(far).await.unwrap(), 0);
    assert_eq!(inbox.purge_dead(far).await.unwrap(), 0);
    assert_eq!(status(replayed_now).await, Some(InboxStatus::Pending));
    assert_eq!(status(waiting).await, Some(InboxStatus::Pending));
}

/// The conformance suite's part about conditional replays
/// ([`Inbox::replay_if`]): an event is replayed only while it is as
/// pinned, and a pin that no longer holds changes nothing and says so.
/// `inbox` must have no event due.
pub(crate) async fn replay_if_conformance(inbox: Arc<dyn Inbox>) {
    let run = unique();
    let id = |n: &str| format!("evt_{run}_{n}");

    // Handled once: replays 0, handled at some time.
    inbox.insert(&event(&id("pinned"), None, 1)).await.unwrap();
    let seq = seq_of(&*inbox, &id("pinned")).await;
    let claim = claim_only(&*inbox, seq).await;
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
    let handled = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(handled.status, InboxStatus::Done);
    let at = handled.handled_at.expect("a completed event was handled");
    let pin = ReplayPin::of(&handled);
    assert_eq!(pin, ReplayPin::new(InboxStatus::Done, 0, Some(at)));

    // A pin that differs in any part: nothing done, and said so.
    let earlier = Timestamp::from_millis(at.as_millis() - 1);
    for wrong in [
        ReplayPin::new(InboxStatus::Done, 1, Some(at)),
        ReplayPin::new(InboxStatus::Done, 0, Some(earlier)),
        ReplayPin::new(InboxStatus::Done, 0, None),
        ReplayPin::new(InboxStatus::Dead, 0, Some(at)),
        ReplayPin::new(InboxStatus::Pending, 0, Some(at)),
    ] {
        assert_eq!(
            inbox.replay_if(seq, &wrong).await.unwrap(),
            Replayed::Changed,
            "{wrong:?}"
        );
        assert_eq!(inbox.get(seq).await.unwrap().unwrap(), handled, "{wrong:?}");
    }
    assert_eq!(
        inbox.replay_if(seq + 1_000_000, &pin).await.unwrap(),
        Replayed::Missing
    );

    // The pin as it is: replayed, handled or not, as a forced replay is.
    assert_eq!(
        inbox.replay_if(seq, &pin).await.unwrap(),
        Replayed::Replayed
    );
    let replayed = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(
        (
            replayed.status,
            replayed.replays,
            replayed.attempts,
            replayed.handled_at
        ),
        (InboxStatus::Pending, 1, 0, Some(at))
    );
    // The same confirmation again: the event changed, nothing more is done.
    assert_eq!(inbox.replay_if(seq, &pin).await.unwrap(), Replayed::Changed);
    assert_eq!(inbox.get(seq).await.unwrap().unwrap(), replayed);

    // Running as pinned: left alone, as every replay leaves it.
    let claim = claim_only(&*inbox, seq).await;
    let running = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(
        inbox
            .replay_if(seq, &ReplayPin::of(&running))
            .await
            .unwrap(),
        Replayed::Running
    );
    assert_eq!(inbox.get(seq).await.unwrap().unwrap(), running);
    // A worker handles it again: the first pin still replays nothing, the
    // one of the event as it is now does.
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
    let again = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(inbox.replay_if(seq, &pin).await.unwrap(), Replayed::Changed);
    assert_eq!(inbox.get(seq).await.unwrap().unwrap(), again);
    assert_eq!(
        inbox.replay_if(seq, &ReplayPin::of(&again)).await.unwrap(),
        Replayed::Replayed
    );
    assert_eq!(inbox.get(seq).await.unwrap().unwrap().replays, 2);
    let claim = claim_only(&*inbox, seq).await;
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);

    // Never handled: a pin without a handling time matches it.
    inbox
        .insert_dead(&event(&id("dead"), None, 1), "boom")
        .await
        .unwrap();
    let dead_seq = seq_of(&*inbox, &id("dead")).await;
    let dead = inbox.get(dead_seq).await.unwrap().unwrap();
    assert_eq!(dead.handled_at, None);
    assert_eq!(
        inbox
            .replay_if(dead_seq, &ReplayPin::new(InboxStatus::Dead, 0, Some(at)))
            .await
            .unwrap(),
        Replayed::Changed
    );
    assert_eq!(inbox.get(dead_seq).await.unwrap().unwrap(), dead);
    assert_eq!(
        inbox
            .replay_if(dead_seq, &ReplayPin::of(&dead))
            .await
            .unwrap(),
        Replayed::Replayed
    );
    assert_eq!(
        inbox.get(dead_seq).await.unwrap().unwrap().status,
        InboxStatus::Pending
    );
}

/// The conformance suite's part about a bound on the number
/// ([`InboxFilter::seq_through`]): every read honours it, and a replay of
/// what a filter matches leaves the events numbered past it as they are,
/// dead ones too, and replays those at or below it.
async fn replay_through_conformance(inbox: Arc<dyn Inbox>) {
    let run = unique();
    let id = |n: &str| format!("evt_{run}_{n}");
    let dead = |n: &'static str| {
        let inbox = Arc::clone(&inbox);
        let id = id(n);
        async move {
            inbox
                .insert_dead(&event(&id, None, 1), "boom")
                .await
                .unwrap();
            seq_of(&*inbox, &id).await
        }
    };
    // Dead, pending, dead (the bound), dead past it, dead past it.
    let first = dead("first").await;
    inbox.insert(&event(&id("pending"), None, 1)).await.unwrap();
    let pending = seq_of(&*inbox, &id("pending")).await;
    let pinned = dead("pinned").await;
    let past = dead("past").await;
    let further = dead("further").await;
    assert!(first < pending && pending < pinned && pinned < past && past < further);

    let through = InboxFilter::default()
        .status(InboxStatus::Dead)
        .seq_through(pinned);
    assert!(through.matches(&inbox.get(pinned).await.unwrap().unwrap()));
    assert!(!through.matches(&inbox.get(past).await.unwrap().unwrap()));
    assert_eq!(inbox.count(&through).await.unwrap(), 2);
    let listed: Vec<i64> = inbox
        .list(&through, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(listed, [first, pinned]);
    let paged: Vec<i64> = inbox
        .page_summaries(&through, PageStart::Newest, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(paged, [pinned, first]);
    let paged: Vec<i64> = inbox
        .page(&through, PageStart::Before(further), 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(paged, [pinned, first]);
    assert!(inbox
        .page_summaries(&through, PageStart::After(pinned), 100)
        .await
        .unwrap()
        .is_empty());

    // Below every dead event: nothing replayed.
    let none = InboxFilter::default()
        .status(InboxStatus::Dead)
        .seq_through(first - 1);
    assert!(inbox
        .replay_matching(&none, false)
        .await
        .unwrap()
        .is_empty());

    // Up to the bound: those at or below it replayed, those past it dead.
    let mut replayed = inbox.replay_matching(&through, false).await.unwrap();
    replayed.sort_unstable();
    assert_eq!(replayed, [first, pinned]);
    let status = |seq| {
        let inbox = Arc::clone(&inbox);
        async move {
            let entry = inbox.get(seq).await.unwrap().unwrap();
            (entry.status, entry.replays)
        }
    };
    assert_eq!(status(first).await, (InboxStatus::Pending, 1));
    assert_eq!(status(pending).await, (InboxStatus::Pending, 0));
    assert_eq!(status(pinned).await, (InboxStatus::Pending, 1));
    assert_eq!(status(past).await, (InboxStatus::Dead, 0));
    assert_eq!(status(further).await, (InboxStatus::Dead, 0));

    // A bound at the newest: the rest of the dead.
    let rest = InboxFilter::default()
        .status(InboxStatus::Dead)
        .seq_through(further);
    let mut replayed = inbox.replay_matching(&rest, false).await.unwrap();
    replayed.sort_unstable();
    assert_eq!(replayed, [past, further]);
}

#[tokio::test]
async fn the_memory_inbox_conforms() {
    conformance(Arc::new(MemoryInbox::new())).await;
    attempts_conformance(Arc::new(MemoryInbox::new())).await;
    nul_conformance(Arc::new(MemoryInbox::new())).await;
    replay_if_conformance(Arc::new(MemoryInbox::new())).await;
    purge_conformance(Arc::new(MemoryInbox::new())).await;
    replay_through_conformance(Arc::new(MemoryInbox::new())).await;
}

type Seen = Arc<Mutex<Vec<String>>>;

fn recording_router(seen: &Seen, fail_first: usize) -> EventRouter {
    let seen = Arc::clone(seen);
    let failures = Arc::new(Mutex::new(fail_first));
    EventRouter::new().on::<events::OrderSucceeded, _>(move |event| {
        let (seen, failures) = (Arc::clone(&seen), Arc::clone(&failures));
        async move {
            seen.lock().unwrap().push(event.id.clone());
            let mut left = failures.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(std::io::Error::other("payment provider down"));
            }
            Ok(())
        }
    })
}

#[tokio::test]
async fn a_handler_that_always_fails_ends_dead_and_replay_brings_it_back() {
    let inbox = Arc::new(MemoryInbox::new());
    let seen = Seen::default();
    let pool = Workers::new(Arc::clone(&inbox), recording_router(&seen, 3))
        .max_attempts(3)
        .and_then(|w| w.backoff(Duration::from_millis(1), Duration::from_millis(5)))
        .and_then(|w| w.reorder_window(NO_REORDER_WINDOW))
        .unwrap()
        .spawn();
    inbox.insert(&event("evt_dead", None, 1)).await.unwrap();
    let dead = || {
        let inbox = Arc::clone(&inbox);
        async move {
            inbox
                .list(&InboxFilter::default().status(InboxStatus::Dead), 10)
                .await
                .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let entry = loop {
        if let Some(entry) = dead().await.pop() {
            break entry;
        }
        assert!(Instant::now() < deadline, "never dead");
        inbox.wait(Duration::from_millis(20)).await;
    };
    assert_eq!(entry.attempts, 3);
    // The last error says it is dead and why, not that it runs again.
    assert_eq!(
        entry.last_error.as_deref(),
        Some(
            "dead after 3 attempts; the last failed: payment provider down; replay it once \
             the cause is fixed"
        )
    );
    assert_eq!(seen.lock().unwrap().len(), 3);

    // Fixed now (the router fails three times only): replay runs it once more.
    assert_eq!(
        inbox
            .replay_matching(&InboxFilter::default().status(InboxStatus::Dead), false)
            .await
            .unwrap()
            .len(),
        1
    );
    pool.drained(DRAIN_PATIENCE).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 4);
    assert_eq!(
        inbox.get(entry.seq).await.unwrap().unwrap().status,
        InboxStatus::Done
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn events_of_one_object_sent_newest_first_run_oldest_first() {
    let inbox = Arc::new(MemoryInbox::new());
    let seen = Seen::default();
    // Many workers, so only the inbox's order can keep them in line.
    let pool = Workers::new(Arc::clone(&inbox), recording_router(&seen, 0))
        .concurrency(8)
        .and_then(|w| w.reorder_window(Duration::from_millis(300)))
        .unwrap()
        .spawn();
    for n in (1..=5).rev() {
        inbox
            .insert(&event(&format!("evt_{n}"), Some("ord_1"), n))
            .await
            .unwrap();
    }
    pool.drained(DRAIN_PATIENCE).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        ["evt_1", "evt_2", "evt_3", "evt_4", "evt_5"]
    );
    pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_panicking_handler_is_retried_and_shutdown_gives_events_back() {
    let inbox = Arc::new(MemoryInbox::new());
    let panics = Arc::new(Mutex::new(1));
    let handled = Arc::new(Mutex::new(0));
    let (p, h) = (Arc::clone(&panics), Arc::clone(&handled));
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
        let (p, h) = (Arc::clone(&p), Arc::clone(&h));
        async move {
            if std::mem::take(&mut *p.lock().unwrap()) > 0 {
                panic!("handler bug");
            }
            *h.lock().unwrap() += 1;
            Ok::<_, std::io::Error>(())
        }
    });
    let pool = Workers::new(Arc::clone(&inbox), router)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .and_then(|w| w.reorder_window(NO_REORDER_WINDOW))
        .unwrap()
        .spawn();
    inbox.insert(&event("evt_panic", None, 1)).await.unwrap();
    within("handled after the panic", || *handled.lock().unwrap() == 1).await;
    pool.shutdown(Duration::from_secs(5)).await;

    // A handler still running at the shutdown deadline gives its event back.
    let slow = EventRouter::new().on::<events::OrderSucceeded, _>(|_event| async {
        std::future::pending::<()>().await;
        Ok::<_, std::io::Error>(())
    });
    let pool = Workers::new(Arc::clone(&inbox), slow)
        .reorder_window(NO_REORDER_WINDOW)
        .unwrap()
        .spawn();
    inbox.insert(&event("evt_slow", None, 2)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while inbox.stats().await.unwrap().running == 0 {
        assert!(Instant::now() < deadline, "never running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pool.shutdown(Duration::from_millis(100)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let back = inbox
            .list(&InboxFilter::default().status(InboxStatus::Pending), 10)
            .await
            .unwrap();
        if back.iter().any(|e| e.event.event_id == "evt_slow") {
            break;
        }
        assert!(Instant::now() < deadline, "the event was not given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A handler that blocks its thread cannot be stopped: `shutdown` stops
/// waiting for it 5 s after its deadline, leaves it running, detached, and
/// returns; its event is not done (it frees itself when its lease ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_while_a_handler_blocks_its_thread() {
    let inbox = Arc::new(MemoryInbox::new());
    // The handler waits on this until the test ends: dropped at the end of
    // the test, or as a failed assert unwinds, it frees the handler's thread.
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let blocked = Arc::new(Mutex::new(blocked));
    let (started, mut running) = tokio::sync::mpsc::unbounded_channel();
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
        let _ = started.send(());
        // Blocks this worker's thread, not at an `.await`.
        let _ = blocked.lock().unwrap().recv();
        std::future::ready(Ok::<_, std::io::Error>(()))
    });
    let pool = Workers::new(Arc::clone(&inbox), router)
        .concurrency(1)
        .and_then(|w| w.reorder_window(NO_REORDER_WINDOW))
        .unwrap()
        .spawn();
    inbox.insert(&event("evt_blocking", None, 1)).await.unwrap();
    let seq = seq_of(&*inbox, "evt_blocking").await;
    tokio::time::timeout(DRAIN_PATIENCE, running.recv())
        .await
        .expect("the handler started")
        .unwrap();
    // Returns after the deadline and the 5 s given to stopped handlers; the
    // guard only bounds a hang (it used to wait for ever).
    tokio::time::timeout(
        Duration::from_secs(60),
        pool.shutdown(Duration::from_millis(100)),
    )
    .await
    .expect("shutdown returned while a handler blocked its thread");
    let entry = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(entry.status, InboxStatus::Running, "{entry:?}");
    drop(release);
}

/// An inbox whose [`release`](Inbox::release) answers only after
/// [`SLOW_RELEASE`], as a store under load does; all else is `I`'s.
#[derive(Clone)]
struct SlowRelease<I>(I);

/// How long [`SlowRelease`] takes to give an event back: long enough that a
/// release nobody waits for is cancelled with its runtime, whatever the
/// machine's load.
const SLOW_RELEASE: Duration = Duration::from_millis(500);

impl<I: Inbox> Inbox for SlowRelease<I> {
    delegate_inbox!(0: insert, insert_dead, claim, complete, fail, list, get, replay, replay_matching, purge, stats, check_writable, wait);
    fn release<'a>(
        &'a self, claim: &'a InboxClaim,
    ) -> clink_webhooks::BoxFuture<'a, Result<Settle, clink_webhooks::store::StoreError>> {
        Box::pin(async move {
            // A store slow to answer, not a wait for another task.
            tokio::time::sleep(SLOW_RELEASE).await;
            self.0.release(claim).await
        })
    }
}

/// An inbox of a caller's own, a [`MemoryInbox`] whose `complete` panics
/// for the event `poisoned`, the first `panics` times.
struct PanicsOnComplete {
    inner: MemoryInbox,
    poisoned: String,
    panics: std::sync::atomic::AtomicUsize,
}

impl PanicsOnComplete {
    fn new(poisoned: &str, panics: usize) -> Self {
        Self {
            inner: MemoryInbox::new(),
            poisoned: poisoned.to_owned(),
            panics: std::sync::atomic::AtomicUsize::new(panics),
        }
    }
}

impl Inbox for PanicsOnComplete {
    delegate_inbox!(inner: insert, insert_dead, claim, fail, release, list, get, replay, replay_matching, purge, stats, check_writable, wait);
    fn complete<'a>(
        &'a self, claim: &'a InboxClaim,
    ) -> clink_webhooks::BoxFuture<'a, Result<Settle, clink_webhooks::store::StoreError>> {
        let poisoned = claim.entry.event.event_id == self.poisoned
            && self
                .panics
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |left| left.checked_sub(1),
                )
                .is_ok();
        if poisoned {
            panic!("an inbox bug completing {}", self.poisoned);
        }
        self.inner.complete(claim)
    }
}

/// A [`MemoryInbox`] whose claim lands at once and answers a second later
/// (a claim that commits, then waits: a database's lock, say).
struct LateClaimAnswer(MemoryInbox);

impl Inbox for LateClaimAnswer {
    delegate_inbox!(0: insert, insert_dead, complete, fail, release, list, get, replay, replay_matching, purge, stats, check_writable, wait);
    fn claim(
        &self, lease: Duration, reorder_window: Duration,
    ) -> clink_webhooks::BoxFuture<'_, Result<Option<InboxClaim>, clink_webhooks::store::StoreError>>
    {
        Box::pin(async move {
            let claimed = self.0.claim(lease, reorder_window).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            claimed
        })
    }
}

/// A worker whose claim has landed and not yet answered at the shutdown
/// deadline is let have the answer (within the 5 s that follow), and gives
/// the event back: pending, the attempt not counted, rather than held
/// until its lease ends with the attempt counted. On Tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn a_claim_answering_after_the_shutdown_deadline_gives_its_event_back() {
    let inbox = Arc::new(LateClaimAnswer(MemoryInbox::new()));
    inbox.insert(&event("evt_late", None, 1)).await.unwrap();
    let seq = seq_of(&*inbox, "evt_late").await;
    let router = EventRouter::new()
        .on::<events::OrderSucceeded, _>(|_event| std::future::ready(Ok::<_, std::io::Error>(())));
    let pool = Workers::new(Arc::clone(&inbox), router)
        .concurrency(1)
        .and_then(|w| w.reorder_window(NO_REORDER_WINDOW))
        .unwrap()
        .spawn();
    // Until the claim has landed (its answer then waits a second).
    let deadline = Instant::now() + DRAIN_PATIENCE;
    while inbox.get(seq).await.unwrap().unwrap().status != InboxStatus::Running {
        assert!(Instant::now() < deadline, "the claim did not land");
        tokio::task::yield_now().await;
    }
    pool.shutdown(Duration::from_millis(100)).await;
    let entry = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(
        (entry.status, entry.attempts),
        (InboxStatus::Pending, 0),
        "{entry:?}"
    );
    assert_eq!(
        outcomes(&entry),
        [(1, InboxAttemptOutcome::Released)],
        "{entry:?}"
    );
}

/// A [`MemoryInbox`] that says its calls may take up to 400 ms, as a
/// networked inbox's per-call timeout does.
struct NetworkedInbox(MemoryInbox);

impl Inbox for NetworkedInbox {
    delegate_inbox!(0: insert, insert_dead, claim, complete, fail, release, list, get, replay, replay_matching, purge, stats, check_writable, wait);
    fn call_timeout(&self) -> Duration {
        Duration::from_millis(400)
    }
}

/// Workers over an inbox whose settle may take 400 ms stop a handler 400
/// ms before its 1 s lease ends, not a tenth of it: a completion sent at
/// the deadline then lands inside the lease, before another worker may
/// take the event over and run it again. On Tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn workers_leave_the_settle_the_inboxs_call_time_before_the_lease_ends() {
    let inbox = Arc::new(NetworkedInbox(MemoryInbox::new()));
    inbox.insert(&event("evt_settle", None, 1)).await.unwrap();
    let (times, mut timing) = tokio::sync::mpsc::unbounded_channel();
    /// Says when it is dropped: when the workers stopped the handler.
    struct Stopped(tokio::sync::mpsc::UnboundedSender<(&'static str, tokio::time::Instant)>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = self.0.send(("stopped", tokio::time::Instant::now()));
        }
    }
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
        let _ = times.send(("started", tokio::time::Instant::now()));
        let stopped = Stopped(times.clone());
        async move {
            let _stopped = stopped;
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        }
    });
    let pool = Workers::new(Arc::clone(&inbox), router)
        .concurrency(1)
        .and_then(|w| w.lease(Duration::from_secs(1)))
        .and_then(|w| w.reorder_window(NO_REORDER_WINDOW))
        .unwrap()
        .spawn();
    let (what, started) = timing.recv().await.unwrap();
    assert_eq!(what, "started");
    let (what, stopped) = timing.recv().await.unwrap();
    assert_eq!(what, "stopped");
    pool.shutdown(Duration::from_secs(1)).await;
    // 900 ms when only a tenth of the lease was kept.
    let ran = stopped - started;
    assert!(
        (Duration::from_millis(600)..Duration::from_millis(610)).contains(&ran),
        "stopped {ran:?} after it started"
    );
}

/// A [`MemoryInbox`] whose first claim lands at once and answers after
/// `late` (a store stalled for most of a lease), and every later claim at
/// once.
struct SlowFirstClaim {
    inner: MemoryInbox,
    late: Duration,
    slowed: std::sync::atomic::AtomicBool,
}

impl Inbox for SlowFirstClaim {
    delegate_inbox!(inner: insert, insert_dead, complete, fail, release, list, get, replay, replay_matching, purge, stats, check_writable, wait);
    fn claim(
        &self, lease: Duration, reorder_window: Duration,
    ) -> clink_webhooks::BoxFuture<'_, Result<Option<InboxClaim>, clink_webhooks::store::StoreError>>
    {
        Box::pin(async move {
            let claimed = self.inner.claim(lease, reorder_window).await;
            if matches!(claimed, Ok(Some(_)))
                && !self.slowed.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                tokio::time::sleep(self.late).await;
            }
            claimed
        })
    }
}

/// A claim that took the handler's whole time (answered at 95 % of a 10 s
/// lease) gives its event back without running the handler and without
/// counting the attempt: the next claim runs it, done after one attempt,
/// its history a release and a completion. A slow store alone makes no
/// event dead. On Tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn a_claim_that_took_the_handlers_whole_time_gives_the_event_back_uncounted() {
    let inbox = Arc::new(SlowFirstClaim {
        inner: MemoryInbox::new(),
        late: Duration::from_millis(9_500),
        slowed: std::sync::atomic::AtomicBool::new(false),
    });
    inbox.insert(&event("evt_slow", None, 1)).await.unwrap();
    let seq = seq_of(&*inbox, "evt_slow").await;
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Ok::<_, std::io::Error>(()))
    });
    let pool = Workers::new(Arc::clone(&inbox), router)
        .concurrency(1)
        .and_then(|w| w.lease(Duration::from_secs(10)))
        .and_then(|w| w.max_attempts(1))
        .and_then(|w| w.reorder_window(NO_REORDER_WINDOW))
        .unwrap()
        .spawn();
    tokio::time::timeout(DRAIN_PATIENCE, pool.drained(Duration::MAX))
        .await
        .expect("drained")
        .unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
    let entry = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(
        (entry.status, entry.attempts),
        (InboxStatus::Done, 1),
        "{entry:?}"
    );
    assert_eq!(
        outcomes(&entry),
        [
            (1, InboxAttemptOutcome::Released),
            (1, InboxAttemptOutcome::Completed)
        ],
        "{entry:?}"
    );
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A panic completing an event whose handler succeeded (a bug in an inbox
/// of the caller's own that strikes once) does not run the handler again:
/// the event is completed once more, done after one attempt.
#[tokio::test]
async fn a_panic_completing_a_handled_event_does_not_run_it_again() {
    // A recorder of this thread's own: the test's runtime runs the workers
    // on this thread.
    #[cfg(feature = "metrics")]
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    #[cfg(feature = "metrics")]
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let inbox = Arc::new(PanicsOnComplete::new("evt_once", 1));
    inbox.insert(&event("evt_once", None, 1)).await.unwrap();
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Ok::<_, std::io::Error>(()))
    });
    let pool = Workers::new(Arc::clone(&inbox), router)
        .concurrency(1)
        .and_then(|w| w.backoff(Duration::from_millis(1), Duration::from_millis(1)))
        .and_then(|w| w.reorder_window(NO_REORDER_WINDOW))
        .unwrap()
        .spawn();
    // No deadline (one too far to be an instant) waits as long as it takes.
    tokio::time::timeout(DRAIN_PATIENCE, pool.drained(Duration::MAX))
        .await
        .expect("drained")
        .unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
    let entry = inbox
        .get(seq_of(&*inbox, "evt_once").await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (entry.status, entry.attempts),
        (InboxStatus::Done, 1),
        "{entry:?}"
    );
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Counted handled once, by the settle that applied.
    #[cfg(feature = "metrics")]
    {
        let text = recorder.handle().render();
        let handled = text
            .lines()
            .find_map(|line| line.strip_prefix("clink_webhook_inbox_handled_total "))
            .and_then(|value| value.trim().parse::<f64>().ok());
        assert_eq!(handled, Some(1.0), "{text}");
    }
}

/// A [`MemoryInbox`] whose `claim` and `wait` panic in the call itself
/// (before any future is made, as an inbox doing its work in the method's
/// body would), the first `claims` and `waits` times.
struct PanicsInTheCall {
    inner: MemoryInbox,
    claims: std::sync::atomic::AtomicUsize,
    waits: std::sync::atomic::AtomicUsize,
}

/// Takes one from `left`, if any is left: whether one was.
fn one_less(left: &std::sync::atomic::AtomicUsize) -> bool {
    left.fetch_update(
        std::sync::atomic::Ordering::SeqCst,
        std::sync::atomic::Ordering::SeqCst,
        |left| left.checked_sub(1),
    )
    .is_ok()
}

impl Inbox for PanicsInTheCall {
    delegate_inbox!(inner: insert, insert_dead, complete, fail, release, list, get, replay, replay_matching, purge, stats, check_writable);
    fn claim(
        &self, lease: Duration, reorder_window: Duration,
    ) -> clink_webhooks::BoxFuture<
        '_,
        Result<Option<clink_webhooks::store::InboxClaim>, clink_webhooks::store::StoreError>,
    > {
        assert!(!one_less(&self.claims), "an inbox bug in claim");
        self.inner.claim(lease, reorder_window)
    }
    fn wait(&self, timeout: Duration) -> clink_webhooks::BoxFuture<'_, ()> {
        // Only once the claims have stopped panicking: each wait follows
        // a claim that found nothing.
        assert!(!one_less(&self.waits), "an inbox bug in wait");
        self.inner.wait(timeout)
    }
}

/// A panic in the inbox's `claim` or `wait` call itself, before its
/// future, is an error like another: the one worker goes on and handles
/// the event inserted after them. Before, such a panic ended the worker
/// task, and nothing handled the events the intake went on acknowledging.
#[tokio::test]
async fn a_panic_in_the_inboxs_claim_or_wait_call_does_not_end_the_worker() {
    let inbox = Arc::new(PanicsInTheCall {
        inner: MemoryInbox::new(),
        claims: std::sync::atomic::AtomicUsize::new(2),
        waits: std::sync::atomic::AtomicUsize::new(2),
    });
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Ok::<_, std::io::Error>(()))
    });
    let pool = Workers::new(Arc::clone(&inbox), router)
        .concurrency(1)
        .and_then(|w| w.reorder_window(NO_REORDER_WINDOW))
        .unwrap()
        .spawn();
    let deadline = Instant::now() + DRAIN_PATIENCE;
    let panicked =
        |left: &std::sync::atomic::AtomicUsize| left.load(std::sync::atomic::Ordering::SeqCst) == 0;
    while !(panicked(&inbox.claims) && panicked(&inbox.waits)) {
        assert!(Instant::now() < deadline, "the worker stopped calling");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    inbox.insert(&event("evt_after", None, 1)).await.unwrap();
    tokio::time::timeout(DRAIN_PATIENCE, pool.drained(Duration::MAX))
        .await
        .expect("drained")
        .unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
    let entry = inbox
        .get(seq_of(&*inbox, "evt_after").await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.status, InboxStatus::Done, "{entry:?}");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// An event whose id does not print as itself (a dead letter kept for
/// it, replayed) reaches no handler, which would log it: it is dead again
/// at once, saying why. Before, the workers handed it to the handlers.
#[tokio::test]
async fn an_event_whose_id_does_not_print_as_itself_reaches_no_handler() {
    let inbox = Arc::new(MemoryInbox::new());
    let body = r#"{"id":"evt_1\u202eforged","type":"order.succeeded","data":{}}"#;
    let kept = NewEvent::new(
        None,
        "invalid-event-id:0123".to_owned(),
        String::new(),
        None,
        None,
        Timestamp::now(),
        Timestamp::now(),
        Bytes::from(body),
    );
    inbox.insert(&kept).await.unwrap();
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Ok::<_, std::io::Error>(()))
    });
    let pool = Workers::new(Arc::clone(&inbox), router)
        .concurrency(1)
        .and_then(|w| w.max_attempts(5))
        .and_then(|w| w.reorder_window(NO_REORDER_WINDOW))
        .unwrap()
        .spawn();
    tokio::time::timeout(DRAIN_PATIENCE, pool.drained(Duration::MAX))
        .await
        .expect("drained")
        .unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
    let entry = inbox
        .get(seq_of(&*inbox, "invalid-event-id:0123").await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (entry.status, entry.attempts),
        (InboxStatus::Dead, 1),
        "{entry:?}"
    );
    let error = entry.last_error.unwrap_or_default();
    assert!(error.contains("does not print as itself"), "{error}");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A panic in a worker outside the handlers (here in the inbox's
/// `complete`) neither ends the worker nor gives the event back: with one
/// worker, the events after it are handled, and each of its attempts is
/// counted as failed until it is dead.
#[tokio::test]
async fn a_panic_settling_an_event_counts_its_attempts_and_the_worker_goes_on() {
    let inbox = Arc::new(PanicsOnComplete::new("evt_poisoned", usize::MAX));
    inbox.insert(&event("evt_poisoned", None, 1)).await.unwrap();
    for n in 2..5 {
        inbox
            .insert(&event(&format!("evt_{n}"), None, n))
            .await
            .unwrap();
    }
    let router = EventRouter::new()
        .on::<events::OrderSucceeded, _>(|_event| std::future::ready(Ok::<_, std::io::Error>(())));
    let pool = Workers::new(Arc::clone(&inbox), router)
        .concurrency(1)
        .and_then(|w| w.max_attempts(3))
        .and_then(|w| w.backoff(Duration::from_millis(1), Duration::from_millis(1)))
        .and_then(|w| w.reorder_window(NO_REORDER_WINDOW))
        .unwrap()
        .spawn();
    let poisoned = seq_of(&*inbox, "evt_poisoned").await;
    let deadline = Instant::now() + DRAIN_PATIENCE;
    loop {
        let dead = inbox.get(poisoned).await.unwrap().unwrap().status == InboxStatus::Dead;
        let done = inbox
            .list(&InboxFilter::default().status(InboxStatus::Done), 10)
            .await
            .unwrap()
            .len();
        if dead && done == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not handled: dead {dead}, {done} of 3 others done"
        );
        inbox.wait(Duration::from_millis(100)).await;
    }
    pool.shutdown(Duration::from_secs(5)).await;
    let entry = inbox.get(poisoned).await.unwrap().unwrap();
    assert_eq!(entry.attempts, 3, "{entry:?}");
    assert!(
        entry
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("panicked")),
        "{entry:?}"
    );
}

/// Stops a pool at its shutdown deadline while its handler still runs the
/// one event of the inbox `open` opens (which is [slow to give an event
/// back](SlowRelease)), drops the runtime at once (as a process ends once
/// `shutdown` returns), and checks in a new runtime that
/// the event was given back: pending, its stopped attempt not counted, and
/// run by a new pool allowing one attempt (not dead, as after an attempt
/// lost with its lease). The pool runs on a runtime of two threads
/// (`threads`) or on the test's own thread alone.
fn shutdown_gives_back_before_it_returns<I, F, Fut>(threads: bool, open: F)
where
    I: Inbox + Clone,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = I>,
{
    let runtime = || {
        let mut builder = if threads {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(2);
            builder
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        builder.enable_all().build().unwrap()
    };
    let first = runtime();
    let seq = first.block_on(async {
        let inbox = open().await;
        inbox.insert(&event("evt_stopped", None, 1)).await.unwrap();
        let seq = seq_of(&inbox, "evt_stopped").await;
        let (started, mut running) = tokio::sync::mpsc::unbounded_channel();
        let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
            let _ = started.send(());
            async {
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(())
            }
        });
        let pool = Workers::new(SlowRelease(inbox.clone()), router)
            .reorder_window(NO_REORDER_WINDOW)
            .and_then(|w| w.max_attempts(1))
            .unwrap()
            .spawn();
        tokio::time::timeout(DRAIN_PATIENCE, running.recv())
            .await
            .expect("the handler started")
            .unwrap();
        pool.shutdown(Duration::from_millis(50)).await;
        seq
    });
    drop(first);

    runtime().block_on(async {
        let inbox = open().await;
        let entry = inbox.get(seq).await.unwrap().unwrap();
        assert_eq!(entry.status, InboxStatus::Pending, "{entry:?}");
        assert_eq!(entry.attempts, 0, "{entry:?}");
        assert_eq!(
            outcomes(&entry),
            [(1, InboxAttemptOutcome::Released)],
            "{entry:?}"
        );
        let (ran, mut handled) = tokio::sync::mpsc::unbounded_channel();
        let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
            let _ = ran.send(());
            std::future::ready(Ok::<_, std::io::Error>(()))
        });
        let pool = Workers::new(inbox.clone(), router)
            .reorder_window(NO_REORDER_WINDOW)
            .and_then(|w| w.max_attempts(1))
            .unwrap()
            .spawn();
        pool.drained(DRAIN_PATIENCE).await.unwrap();
        pool.shutdown(Duration::from_secs(5)).await;
        assert!(handled.try_recv().is_ok(), "the handler ran again");
        let entry = inbox.get(seq).await.unwrap().unwrap();
        assert_eq!(entry.status, InboxStatus::Done, "{entry:?}");
    });
}

#[cfg(feature = "sqlite")]
#[test]
fn shutdown_gives_back_to_a_sqlite_inbox_before_it_returns() {
    for threads in [true, false] {
        let dir = temp_dir();
        let path = dir.join("inbox.db");
        shutdown_gives_back_before_it_returns(threads, || {
            let path = path.clone();
            async move { clink_webhooks::store::SqliteInbox::open(path).unwrap() }
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(feature = "postgres")]
#[test]
fn shutdown_gives_back_to_a_postgres_inbox_before_it_returns() {
    let _servers = crate::support::servers::shared_blocking();
    for threads in [true, false] {
        let table = format!("inbox_{}", unique());
        // A pool of each runtime's own: its connections end with the runtime.
        shutdown_gives_back_before_it_returns(threads, || {
            let table = table.clone();
            async move {
                let inbox = clink_webhooks::store::PostgresInbox::new(pg_pool())
                    .with_table(&table)
                    .unwrap()
                    .with_timeout(Duration::from_secs(10))
                    .unwrap();
                inbox.migrate().await.unwrap();
                inbox
            }
        });
    }
}

#[tokio::test]
async fn the_layer_acknowledges_after_one_write_and_never_twice() {
    const KEY: &str = "whsec_inbox";
    let inbox = Arc::new(MemoryInbox::new());
    let seen = Seen::default();
    let service = ClinkLayer::new(Verifier::new(KEY).unwrap()).intake(Arc::clone(&inbox));
    let body = r#"{"id":"evt_in","type":"order.succeeded","created":5,"data":{"orderId":"ord_9"}}"#;
    let request = SignedRequest::new(KEY, body).build::<Full<Bytes>>();
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(Outcome::of(&response), Some(&Outcome::Queued));
    // Kept, not handled: the router runs in the workers.
    assert!(seen.lock().unwrap().is_empty());
    let kept = inbox.list(&InboxFilter::default(), 10).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].event.event_id, "evt_in");
    assert_eq!(kept[0].event.object_key.as_deref(), Some("order:ord_9"));
    assert_eq!(kept[0].event.created, Some(Timestamp::from_millis(5)));
    assert_eq!(&kept[0].event.body[..], body.as_bytes());

    let request = SignedRequest::new(KEY, body).build::<Full<Bytes>>();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(Outcome::of(&response), Some(&Outcome::Duplicate));
    assert_eq!(
        inbox.list(&InboxFilter::default(), 10).await.unwrap().len(),
        1
    );
}

/// The handled and retried counters, under a lost settle; the counts'
/// gauges under reads that fail.
#[cfg(feature = "metrics")]
mod handled_counter {
    use super::*;
    use clink_webhooks::store::StoreError;

    /// A memory inbox whose counts can be read once: every later read
    /// fails. Each read is counted, and wakes `read`.
    struct CountsReadOnce {
        inner: MemoryInbox,
        reads: std::sync::atomic::AtomicUsize,
        read: tokio::sync::Notify,
    }

    impl Inbox for CountsReadOnce {
        delegate_inbox!(inner: insert, insert_dead, claim, complete, fail, release, list, get, replay, replay_matching, purge, check_writable, wait);
        fn stats(
            &self,
        ) -> clink_webhooks::BoxFuture<'_, Result<clink_webhooks::store::InboxStats, StoreError>>
        {
            let first = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            self.read.notify_one();
            if first {
                self.inner.stats()
            } else {
                Box::pin(std::future::ready(Err(StoreError::new(
                    clink_webhooks::store::StoreErrorKind::Unavailable,
                    "the disk went away",
                ))))
            }
        }
    }

    /// Reads of the inbox's counts that fail are counted: the gauges keep
    /// the last values read, which an alert on them alone would take for a
    /// quiet inbox.
    #[tokio::test(start_paused = true)]
    async fn counts_that_cannot_be_read_are_counted() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let scrape = recorder.handle();
        let _metrics = metrics::set_default_local_recorder(&recorder);
        let inbox = Arc::new(CountsReadOnce {
            inner: MemoryInbox::new(),
            reads: std::sync::atomic::AtomicUsize::new(0),
            read: tokio::sync::Notify::new(),
        });
        inbox
            .insert_dead(&event("evt_dead", None, 1), "refused")
            .await
            .unwrap();
        let seen = Seen::default();
        let pool = Workers::new(Arc::clone(&inbox), recording_router(&seen, 0))
            .reorder_window(NO_REORDER_WINDOW)
            .unwrap()
            .spawn();
        // Reads every 5 s: the first answers, the next two fail. (Each read
        // is ready at once, so the pool has recorded it by the time this
        // task runs again.)
        while inbox.reads.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            inbox.read.notified().await;
        }
        let reads = inbox.reads.load(std::sync::atomic::Ordering::SeqCst);
        let text = scrape.render();
        pool.shutdown(DRAIN_PATIENCE).await;
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().parse::<f64>().ok())
        };
        assert_eq!(
            value("clink_webhook_inbox_stats_failures_total "),
            Some(f64::from(u32::try_from(reads - 1).unwrap())),
            "{text}"
        );
        // The last values read, kept.
        assert_eq!(
            value("clink_webhook_inbox_events{status=\"dead\"} "),
            Some(1.0),
            "{text}"
        );
        assert!(seen.lock().unwrap().is_empty());
    }

    /// A memory inbox that answers its first completion as one whose lease
    /// ended first: the completion changes nothing and the event is free to
    /// run again (given back at once, so that no test waits a lease out).
    struct FirstCompletionLost {
        inner: MemoryInbox,
        lost: std::sync::atomic::AtomicBool,
    }

    impl Inbox for FirstCompletionLost {
        delegate_inbox!(inner: insert, insert_dead, claim, fail, release, list, get, replay, replay_matching, purge, stats, check_writable, wait);
        fn complete<'a>(
            &'a self, claim: &'a InboxClaim,
        ) -> clink_webhooks::BoxFuture<'a, Result<Settle, StoreError>> {
            Box::pin(async move {
                if self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return self.inner.complete(claim).await;
                }
                // Given back, and told as a lease that ended.
                let _given_back = self.inner.release(claim).await?;
                Ok(Settle::LeaseLost)
            })
        }
    }

    /// A memory inbox whose completions take a second (on a paused clock).
    struct SlowCompletion(MemoryInbox);

    impl Inbox for SlowCompletion {
        delegate_inbox!(0: insert, insert_dead, claim, fail, release, list, get, replay, replay_matching, purge, stats, check_writable, wait);
        fn complete<'a>(
            &'a self, claim: &'a InboxClaim,
        ) -> clink_webhooks::BoxFuture<'a, Result<Settle, StoreError>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.0.complete(claim).await
            })
        }
    }

    /// A completion cut off by the shutdown's deadline, and applied by the
    /// shutdown after it, is counted handled: once.
    #[tokio::test(start_paused = true)]
    async fn a_completion_the_shutdown_applies_is_counted_handled() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let scrape = recorder.handle();
        let _metrics = metrics::set_default_local_recorder(&recorder);
        let inbox = Arc::new(SlowCompletion(MemoryInbox::new()));
        inbox.insert(&event("evt_cut", None, 1)).await.unwrap();
        let seq = seq_of(&*inbox, "evt_cut").await;
        let seen = Seen::default();
        let pool = Workers::new(Arc::clone(&inbox), recording_router(&seen, 0))
            .concurrency(1)
            .and_then(|w| w.reorder_window(NO_REORDER_WINDOW))
            .unwrap()
            .spawn();
        let deadline = Instant::now() + DRAIN_PATIENCE;
        while seen.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the handler did not run");
            tokio::task::yield_now().await;
        }
        pool.shutdown(Duration::from_millis(100)).await;
        let entry = inbox.get(seq).await.unwrap().unwrap();
        assert_eq!(entry.status, InboxStatus::Done, "{entry:?}");
        let text = scrape.render();
        let handled = text
            .lines()
            .find_map(|line| line.strip_prefix("clink_webhook_inbox_handled_total "))
            .and_then(|value| value.trim().parse::<f64>().ok());
        assert_eq!(handled, Some(1.0), "{text}");
    }

    /// A memory inbox that answers its first failed attempt as one whose
    /// lease ended first: nothing is recorded, and the event is free to run
    /// again (given back at once).
    struct FirstFailureLost {
        inner: MemoryInbox,
        lost: std::sync::atomic::AtomicBool,
    }

    impl Inbox for FirstFailureLost {
        delegate_inbox!(inner: insert, insert_dead, claim, complete, release, list, get, replay, replay_matching, purge, stats, check_writable, wait);
        fn fail<'a>(
            &'a self, claim: &'a InboxClaim, error: &'a str, retry_at: Option<Timestamp>,
        ) -> clink_webhooks::BoxFuture<'a, Result<Settle, StoreError>> {
            Box::pin(async move {
                if self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return self.inner.fail(claim, error, retry_at).await;
                }
                let _given_back = self.inner.release(claim).await?;
                Ok(Settle::LeaseLost)
            })
        }
    }

    /// `clink_webhook_inbox_retries_total` counts a failed attempt once it
    /// is recorded: one whose record found the lease lost retried nothing.
    /// Here the first attempt fails and is not recorded, the second fails
    /// and is, the third succeeds: one retry counted.
    #[tokio::test]
    async fn a_failed_attempt_whose_lease_was_lost_is_not_counted_retried() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let scrape = recorder.handle();
        let _metrics = metrics::set_default_local_recorder(&recorder);
        let inbox = Arc::new(FirstFailureLost {
            inner: MemoryInbox::new(),
            lost: std::sync::atomic::AtomicBool::new(false),
        });
        inbox.insert(&event("evt_retried", None, 1)).await.unwrap();
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
            let run = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(if run < 2 {
                Err(std::io::Error::other("not yet"))
            } else {
                Ok(())
            })
        });
        let pool = Workers::new(Arc::clone(&inbox), router)
            .reorder_window(NO_REORDER_WINDOW)
            .and_then(|w| w.backoff(Duration::from_millis(1), Duration::from_millis(1)))
            .unwrap()
            .spawn();
        // Until the event is done (a retry not yet due is not waited for by
        // `drained`): a bounded wait on what the inbox says.
        let seq = seq_of(&*inbox, "evt_retried").await;
        let deadline = Instant::now() + DRAIN_PATIENCE;
        while inbox.get(seq).await.unwrap().unwrap().status != InboxStatus::Done {
            assert!(Instant::now() < deadline, "the event was not handled");
            inbox.wait(Duration::from_millis(10)).await;
        }
        pool.shutdown(DRAIN_PATIENCE).await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3);

        let text = scrape.render();
        let retried = text
            .lines()
            .find_map(|line| line.strip_prefix("clink_webhook_inbox_retries_total "))
            .and_then(|value| value.trim().parse::<f64>().ok());
        assert_eq!(retried, Some(1.0), "{text}");
    }

    /// `clink_webhook_inbox_handled_total` counts each event once, when its
    /// completion applied: an event whose first completion lost its lease runs
    /// again and is counted then, not twice.
    #[tokio::test]
    async fn an_event_whose_completion_lost_its_lease_is_counted_handled_once() {
        // A recorder of this thread's own: the test's runtime runs the workers
        // on this thread.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let scrape = recorder.handle();
        let _metrics = metrics::set_default_local_recorder(&recorder);
        let inbox = Arc::new(FirstCompletionLost {
            inner: MemoryInbox::new(),
            lost: std::sync::atomic::AtomicBool::new(false),
        });
        let seen = Seen::default();
        let ids = ["evt_counted_1", "evt_counted_2", "evt_counted_3"];
        for (n, id) in (1..).zip(ids) {
            inbox.insert(&event(id, None, n)).await.unwrap();
        }
        let pool = Workers::new(Arc::clone(&inbox), recording_router(&seen, 0))
            .reorder_window(NO_REORDER_WINDOW)
            .unwrap()
            .spawn();
        pool.drained(DRAIN_PATIENCE).await.unwrap();
        // Every worker has finished what it held: nothing is left to count.
        pool.shutdown(DRAIN_PATIENCE).await;

        // One event ran twice, its first completion lost; each is done once.
        let mut ran = seen.lock().unwrap().clone();
        assert_eq!(ran.len(), ids.len() + 1, "{ran:?}");
        ran.sort();
        ran.dedup();
        assert_eq!(ran, ids);
        let done = inbox
            .list(&InboxFilter::default().status(InboxStatus::Done), 10)
            .await
            .unwrap();
        assert_eq!(done.len(), ids.len());

        let text = scrape.render();
        let handled = text
            .lines()
            .find_map(|line| line.strip_prefix("clink_webhook_inbox_handled_total "))
            .and_then(|value| value.trim().parse::<f64>().ok());
        assert_eq!(handled, Some(3.0), "{text}");
    }
}

#[cfg(feature = "postgres")]
fn pg_pool() -> deadpool_postgres::Pool {
    let url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run scripts/test, which starts PostgreSQL");
    let config: tokio_postgres::Config = url.parse().unwrap();
    deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
        config,
        tokio_postgres::NoTls,
    ))
    .max_size(8)
    .runtime(deadpool_postgres::Runtime::Tokio1)
    .build()
    .unwrap()
}

/// A PostgreSQL inbox in a table of its own, so runs never meet.
#[cfg(feature = "postgres")]
async fn postgres_inbox() -> clink_webhooks::store::PostgresInbox {
    postgres_inbox_in(&format!("inbox_{}", unique()), Duration::from_secs(10)).await
}

/// A PostgreSQL inbox in `table`, each call bounded by `timeout`.
#[cfg(feature = "postgres")]
async fn postgres_inbox_in(table: &str, timeout: Duration) -> clink_webhooks::store::PostgresInbox {
    let inbox = clink_webhooks::store::PostgresInbox::new(pg_pool())
        .with_table(table)
        .unwrap()
        .with_timeout(timeout)
        .unwrap();
    inbox.migrate().await.unwrap();
    inbox
}

/// A delivery about an object whose id is 5,000 bytes (past what a
/// PostgreSQL B-tree index entry holds) is kept, keyed by the id's digest,
/// and claimed.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_postgres_inbox_keeps_and_claims_an_event_with_a_very_long_object_id() {
    const KEY: &str = "whsec_inbox";
    let _servers = crate::support::servers::shared().await;
    let inbox = Arc::new(postgres_inbox().await);
    let service = ClinkLayer::new(Verifier::new(KEY).unwrap()).intake(Arc::clone(&inbox));
    // Random, so that PostgreSQL cannot compress it into an index entry.
    let mut long = String::new();
    while long.len() < 5_000 {
        long.push_str(clink_webhooks::store::LeaseToken::generate().as_str());
    }
    long.truncate(5_000);
    let body = format!(
        r#"{{"id":"evt_long","type":"order.succeeded","created":5,"data":{{"orderId":"{long}"}}}}"#
    );
    let request = SignedRequest::new(KEY, body).build::<Full<Bytes>>();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200, "{:?}", Outcome::of(&response));
    assert_eq!(Outcome::of(&response), Some(&Outcome::Queued));
    let claim = inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .expect("the event was kept");
    assert_eq!(claim.entry.event.event_id, "evt_long");
    let key = claim.entry.event.object_key.clone().unwrap();
    assert!(key.starts_with("order:sha256:"), "{key}");
    assert_eq!(key.len(), "order:sha256:".len() + 64, "{key}");
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn the_postgres_inbox_conforms() {
    let _servers = crate::support::servers::shared().await;
    conformance(Arc::new(postgres_inbox().await)).await;
    attempts_conformance(Arc::new(postgres_inbox().await)).await;
    nul_conformance(Arc::new(postgres_inbox().await)).await;
    replay_if_conformance(Arc::new(postgres_inbox().await)).await;
    purge_conformance(Arc::new(postgres_inbox().await)).await;
    replay_through_conformance(Arc::new(postgres_inbox().await)).await;
    held_back_conformance(Arc::new(postgres_inbox().await)).await;
}

/// An old dead event, and `copies` more of it (new ids, numbered right
/// after it) made in SQL by `copy`, which gets the statement's column list
/// (every column but `seq` and `event_id`) and the number of copies; then
/// one event still to run, numbered last. Returns the number of events.
async fn old_events_and_one_to_run<F, Fut>(inbox: &dyn Inbox, copies: i64, copy: F) -> i64
where
    F: FnOnce(i64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let run = unique();
    let long_ago = Timestamp::from_millis(Timestamp::now().as_millis() - 300 * 3_600_000);
    let mut old = event(&format!("evt_{run}_old"), None, 1);
    old.received_at = long_ago;
    old.signed_at = long_ago;
    inbox.insert_dead(&old, "undecodable").await.unwrap();
    copy(copies).await;
    inbox
        .insert(&event(&format!("evt_{run}_waiting"), None, 2))
        .await
        .unwrap();
    copies + 2
}

/// The columns of the PostgreSQL inbox's `table` but `seq` and
/// `event_id`, quoted.
#[cfg(feature = "postgres")]
async fn postgres_columns(client: &tokio_postgres::Client, table: &str) -> String {
    let columns: Vec<String> = client
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_name = $1 AND column_name NOT IN ('seq', 'event_id')",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| format!("\"{}\"", row.get::<_, String>(0)))
        .collect();
    columns.join(", ")
}

/// A PostgreSQL inbox in a table of its own holding two and a half steps
/// ([`PURGE_STEP`](clink_webhooks::store::PURGE_STEP)) of old dead events
/// and one still to run (see [`old_events_and_one_to_run`]); a client of
/// the suite's pool, the table, and the number of events.
#[cfg(feature = "postgres")]
async fn postgres_dead_backlog() -> (
    clink_webhooks::store::PostgresInbox,
    deadpool_postgres::Object,
    String,
    i64,
) {
    use clink_webhooks::store::PURGE_STEP;

    let table = format!("inbox_{}", unique());
    let inbox = postgres_inbox_in(&table, Duration::from_secs(60)).await;
    let client = pg_pool().get().await.unwrap();
    let copies = 2 * PURGE_STEP + PURGE_STEP / 2;
    let total = old_events_and_one_to_run(&inbox, copies, async |copies| {
        let columns = postgres_columns(&client, &table).await;
        client
            .execute(
                &format!(
                    "INSERT INTO \"{table}\" (event_id, {columns})
                     SELECT 'copy_' || g, {columns} FROM \"{table}\", generate_series(1, $1::bigint) AS g
                     WHERE seq = (SELECT min(seq) FROM \"{table}\")"
                ),
                &[&copies],
            )
            .await
            .unwrap();
    })
    .await;
    (inbox, client, table, total)
}

/// A PostgreSQL purge (here of the dead events, which goes in the same
/// steps as the done ones') goes step by step, each step committed on its own:
/// while another transaction holds an old event of its last step, the
/// steps before it are purged already (in one statement over the table,
/// nothing was until everything could be, and on a large inbox the
/// statement ran past the store's timeout every time, so the inbox grew
/// for good); once that transaction lets go, the purge ends with every
/// old event gone and the one still to run kept.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_postgres_purge_goes_step_by_step() {
    use clink_webhooks::store::PURGE_STEP;

    let _servers = crate::support::servers::shared().await;
    let (inbox, client, table, total) = postgres_dead_backlog().await;
    let count = async || -> i64 {
        client
            .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!(count().await, total);

    // Another transaction holds the newest old event, in the last step.
    let mut holder = pg_pool().get().await.unwrap();
    let held = holder.transaction().await.unwrap();
    held.execute(
        &format!(
            "SELECT seq FROM \"{table}\" WHERE event_id LIKE 'copy_%'
             ORDER BY seq DESC LIMIT 1 FOR UPDATE"
        ),
        &[],
    )
    .await
    .unwrap();
    let purging = tokio::spawn({
        let inbox = inbox.clone();
        async move { inbox.purge_dead(Timestamp::now()).await }
    });
    let deadline = Instant::now() + DRAIN_PATIENCE;
    while count().await > total - 2 * PURGE_STEP {
        assert!(
            Instant::now() < deadline && !purging.is_finished(),
            "the steps before the held event were not purged while it was held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!purging.is_finished(), "the purge went past the held event");
    held.rollback().await.unwrap();
    assert_eq!(
        purging.await.unwrap().unwrap(),
        u64::try_from(total - 1).unwrap()
    );
    assert_eq!(count().await, 1, "the event still to run is kept");
}

/// Replays the dead events of `inbox`, `total` events of which all but
/// the last (still to run) are dead, two and a half steps of them (see
/// [`old_events_and_one_to_run`]): each is replayed once, in three steps,
/// and every event is then pending.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn replay_backlog_in_three_steps(inbox: &dyn Inbox, total: i64) {
    use clink_webhooks::store::PURGE_STEP;

    let dead = InboxFilter::default().status(InboxStatus::Dead);
    let (captured, _guard) = crate::support::capture::capture();
    let replayed = inbox.replay_matching(&dead, false).await.unwrap();
    assert_eq!(replayed.len(), usize::try_from(total - 1).unwrap());
    assert_eq!(
        replay_steps(&captured),
        ["3"],
        "three steps of at most {PURGE_STEP} events"
    );
    let mut distinct = replayed.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), replayed.len(), "each replayed once");
    assert_eq!(inbox.count(&dead).await.unwrap(), 0);
    let pending = InboxFilter::default().status(InboxStatus::Pending);
    assert_eq!(
        inbox.count(&pending).await.unwrap(),
        u64::try_from(total).unwrap()
    );
}

/// The count of steps of each replay by filter `captured` logged.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn replay_steps(captured: &crate::support::capture::Captured) -> Vec<String> {
    captured
        .events()
        .into_iter()
        .filter(|event| event.message == "inbox: replayed the events a filter matches")
        .map(|event| event.fields["steps"].clone())
        .collect()
}

/// A PostgreSQL replay by filter of more dead events than one step holds
/// replays every one of them, at the steps' edges too, once each, and
/// leaves the event still to run as it was: it goes in steps of its own
/// statements, as a purge does (one statement over a large backlog ran
/// past the store's timeout every time).
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_postgres_replay_of_a_large_dead_backlog_replays_every_event() {
    let _servers = crate::support::servers::shared().await;
    let (inbox, client, table, total) = postgres_dead_backlog().await;
    replay_backlog_in_three_steps(&inbox, total).await;
    let replays: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{table}\" WHERE replays = 1"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(replays, total - 1, "the waiting event was not replayed");
}

/// A SQLite inbox at `path` holding two and a half steps
/// ([`PURGE_STEP`](clink_webhooks::store::PURGE_STEP)) of old dead events
/// and one still to run (see [`old_events_and_one_to_run`]); the number
/// of events.
#[cfg(feature = "sqlite")]
async fn sqlite_dead_backlog(path: &std::path::Path) -> (clink_webhooks::store::SqliteInbox, i64) {
    use clink_webhooks::store::PURGE_STEP;

    let inbox = clink_webhooks::store::SqliteInbox::open(path).unwrap();
    let copies = 2 * PURGE_STEP + PURGE_STEP / 2;
    let total = old_events_and_one_to_run(&inbox, copies, async |copies| {
        let connection = rusqlite::Connection::open(path).unwrap();
        let columns = sqlite_columns(&connection);
        connection
            .execute(
                &format!(
                    "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?1)
                     INSERT INTO clink_webhook_inbox (event_id, {columns})
                     SELECT 'copy_' || n, {columns} FROM clink_webhook_inbox, g
                     WHERE seq = (SELECT min(seq) FROM clink_webhook_inbox)"
                ),
                [copies],
            )
            .unwrap();
    })
    .await;
    let all = InboxFilter::default();
    assert_eq!(
        inbox.count(&all).await.unwrap(),
        u64::try_from(total).unwrap()
    );
    (inbox, total)
}

/// A SQLite purge (here of the dead events, in the same steps as the done
/// ones') over more than two steps deletes every old event, at
/// the steps' edges too, and keeps the one still to run.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_sqlite_purge_over_several_steps_deletes_every_old_event() {
    let dir = temp_dir();
    let (inbox, total) = sqlite_dead_backlog(&dir.join("purge.db")).await;
    assert_eq!(
        inbox.purge_dead(Timestamp::now()).await.unwrap(),
        u64::try_from(total - 1).unwrap()
    );
    let left = inbox.list(&InboxFilter::default(), 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].status, InboxStatus::Pending);
    drop(inbox);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A SQLite replay by filter of more dead events than one step holds
/// replays every one of them, at the steps' edges too, once each, and
/// leaves the event still to run as it was: it goes in steps of its own,
/// as a purge does, so that a caller that stops waiting (the console at
/// its deadline) stops it after the step under way, where one `UPDATE`
/// over the whole backlog ran on to its end.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_sqlite_replay_of_a_large_dead_backlog_goes_in_steps() {
    let dir = temp_dir();
    let path = dir.join("replay.db");
    let (inbox, total) = sqlite_dead_backlog(&path).await;
    replay_backlog_in_three_steps(&inbox, total).await;
    let connection = rusqlite::Connection::open(&path).unwrap();
    let replays: i64 = connection
        .query_row(
            "SELECT count(*) FROM clink_webhook_inbox WHERE replays = 1",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(replays, total - 1, "the waiting event was not replayed");
    // A filter that matches nothing takes no step.
    let dead = InboxFilter::default().status(InboxStatus::Dead);
    let (captured, _guard) = crate::support::capture::capture();
    assert!(inbox
        .replay_matching(&dead, false)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(replay_steps(&captured), ["0"]);
    drop((inbox, connection));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A purge of `inbox`'s dead events (which goes in the same steps as a
/// purge of the done ones), holding `total` events numbered far apart
/// (every one but the last still to run old and dead), reads them in one step:
/// a step is so many events, not so many numbers (PostgreSQL spends a
/// number on every duplicate delivery, so numbers can be sparse, and a
/// purge stepping through them made one statement for each empty run).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn a_purge_over_sparse_numbers_takes_one_step(inbox: &dyn Inbox, total: i64) {
    let (captured, _guard) = crate::support::capture::capture();
    assert_eq!(
        inbox.purge_dead(Timestamp::now()).await.unwrap(),
        u64::try_from(total - 1).unwrap()
    );
    let purged: Vec<_> = captured
        .events()
        .into_iter()
        .filter(|event| event.message == "inbox: purged the old events")
        .collect();
    assert_eq!(purged.len(), 1, "{purged:?}");
    assert_eq!(purged[0].fields["steps"], "1", "{purged:?}");
    assert_eq!(purged[0].fields["purged"], (total - 1).to_string());
    let left = inbox.list(&InboxFilter::default(), 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].status, InboxStatus::Pending);
}

/// The columns of the SQLite inbox's table but `seq` and `event_id`.
#[cfg(feature = "sqlite")]
fn sqlite_columns(connection: &rusqlite::Connection) -> String {
    let columns: Vec<String> = connection
        .prepare("SELECT name FROM pragma_table_info('clink_webhook_inbox')")
        .unwrap()
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .filter(|name| name != "seq" && name != "event_id")
        .collect();
    columns.join(", ")
}

/// [`a_purge_over_sparse_numbers_takes_one_step`] on SQLite.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_sqlite_purge_steps_over_events_not_numbers() {
    use clink_webhooks::store::PURGE_STEP;

    let dir = temp_dir();
    let path = dir.join("sparse.db");
    let inbox = clink_webhooks::store::SqliteInbox::open(&path).unwrap();
    let total = old_events_and_one_to_run(&inbox, 3, async |copies| {
        let connection = rusqlite::Connection::open(&path).unwrap();
        let columns = sqlite_columns(&connection);
        connection
            .execute(
                &format!(
                    "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?1)
                     INSERT INTO clink_webhook_inbox (seq, event_id, {columns})
                     SELECT seq + n * 2 * ?2, 'copy_' || n, {columns} FROM clink_webhook_inbox, g
                     WHERE seq = (SELECT min(seq) FROM clink_webhook_inbox)"
                ),
                [copies, PURGE_STEP],
            )
            .unwrap();
    })
    .await;
    a_purge_over_sparse_numbers_takes_one_step(&inbox, total).await;
    drop(inbox);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// [`a_purge_over_sparse_numbers_takes_one_step`] on PostgreSQL.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_postgres_purge_steps_over_events_not_numbers() {
    use clink_webhooks::store::PURGE_STEP;

    let _servers = crate::support::servers::shared().await;
    let table = format!("inbox_{}", unique());
    let inbox = postgres_inbox_in(&table, Duration::from_secs(60)).await;
    let client = pg_pool().get().await.unwrap();
    let total = old_events_and_one_to_run(&inbox, 3, async |copies| {
        let columns = postgres_columns(&client, &table).await;
        client
            .execute(
                &format!(
                    "INSERT INTO \"{table}\" (seq, event_id, {columns})
                     SELECT seq + g * 2 * $2::bigint, 'copy_' || g, {columns}
                     FROM \"{table}\", generate_series(1, $1::bigint) AS g
                     WHERE seq = (SELECT min(seq) FROM \"{table}\")"
                ),
                &[&copies, &PURGE_STEP],
            )
            .await
            .unwrap();
        // The next event numbered after them, as deliveries would be.
        client
            .execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('\"{table}\"', 'seq'),
                                   (SELECT max(seq) FROM \"{table}\"))"
                ),
                &[],
            )
            .await
            .unwrap();
    })
    .await;
    a_purge_over_sparse_numbers_takes_one_step(&inbox, total).await;
}

/// A conditional replay that waits on a row another transaction is
/// changing checks the pinned state again against what that transaction
/// committed: the event was replayed meanwhile, so the confirmation no
/// longer holds and nothing more is done (PostgreSQL re-reads the row an
/// `UPDATE` waited for, and its `WHERE` holds the pin).
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_postgres_replay_if_that_waits_on_a_change_checks_the_pin_again() {
    let _servers = crate::support::servers::shared().await;
    let table = format!("inbox_{}", unique());
    let inbox = postgres_inbox_in(&table, Duration::from_secs(60)).await;
    let inbox = Arc::new(inbox);
    inbox.insert(&event("evt_pinned", None, 1)).await.unwrap();
    let seq = seq_of(&*inbox, "evt_pinned").await;
    let claim = claim_only(&*inbox, seq).await;
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
    let shown = inbox.get(seq).await.unwrap().unwrap();
    let pin = ReplayPin::of(&shown);

    // Another session replays the event and has not committed yet.
    let pool = pg_pool();
    let mut other = pool.get().await.unwrap();
    let changing = other.transaction().await.unwrap();
    changing
        .execute(
            &format!("UPDATE {table} SET replays = replays + 1, status = 'pending' WHERE seq = $1"),
            &[&seq],
        )
        .await
        .unwrap();
    let replaying = tokio::spawn({
        let inbox = Arc::clone(&inbox);
        async move { inbox.replay_if(seq, &pin).await }
    });
    // Until the replay waits on that row: a bounded wait on what the
    // server says, not on time.
    let watcher = pool.get().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            !replaying.is_finished() && Instant::now() < deadline,
            "the conditional replay did not wait for the uncommitted change"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    changing.commit().await.unwrap();
    assert_eq!(replaying.await.unwrap().unwrap(), Replayed::Changed);
    let after = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!((after.status, after.replays), (InboxStatus::Pending, 1));
}

/// Two claims of one object's events never run them side by side, even
/// when the second began before the first committed: the first claim takes
/// the newer event B (the older A being done) and has not committed when A
/// is replayed, so the second, reading a snapshot where B is still pending,
/// finds A the oldest of its object and not blocked, and the first due (C,
/// of another object, arriving after the replay). It waits for the first
/// claim's turn on the object to end, sees B running then, and takes the
/// next event due (C) instead of A.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_postgres_claim_racing_another_of_its_object_skips_the_event_it_would_run_beside() {
    let _servers = crate::support::servers::shared().await;
    let table = format!("inbox_{}", unique());
    let inbox = postgres_inbox_in(&table, Duration::from_secs(60)).await;
    let inbox = Arc::new(inbox);
    inbox.insert(&event("evt_a", Some("o"), 1)).await.unwrap();
    inbox.insert(&event("evt_b", Some("o"), 2)).await.unwrap();
    let (a, b) = (
        seq_of(&*inbox, "evt_a").await,
        seq_of(&*inbox, "evt_b").await,
    );
    let first = claim_only(&*inbox, a).await;
    assert_eq!(inbox.complete(&first).await.unwrap(), Settle::Applied);

    // Another instance claims B in a transaction it has not committed yet.
    let pool = pg_pool();
    let mut other = pool.get().await.unwrap();
    let claiming_b = other.transaction().await.unwrap();
    let lease_ms = i64::try_from(LEASE.as_millis()).unwrap();
    let taken: i64 = claiming_b
        .query_one(
            &format!("SELECT seq FROM \"{table}_claim\"($1, 0, 'held')"),
            &[&lease_ms],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(taken, b);
    // Meanwhile A is replayed, and that commits; then C arrives, due after
    // A (a replay is due as it is made, a new event as it is kept).
    assert_eq!(inbox.replay(a, true).await.unwrap(), Replayed::Replayed);
    inbox.insert(&event("evt_c", Some("p"), 3)).await.unwrap();
    let c = seq_of(&*inbox, "evt_c").await;

    let claiming = tokio::spawn({
        let inbox = Arc::clone(&inbox);
        async move { inbox.claim(LEASE, NO_REORDER_WINDOW).await }
    });
    // Until the second claim waits for the object's turn: a bounded wait on
    // what the server says, not on time.
    let watcher = pool.get().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'
                   AND query LIKE '%' || $1 || '%'",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        if claiming.is_finished() {
            let took = claiming
                .await
                .unwrap()
                .unwrap()
                .map(|claim| claim.entry.seq);
            panic!("the second claim did not wait for the first to commit: it took {took:?} (A is {a}, B {b})");
        }
        assert!(
            Instant::now() < deadline,
            "the second claim did not wait for the first to commit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    claiming_b.commit().await.unwrap();
    let second = claiming
        .await
        .unwrap()
        .unwrap()
        .expect("the event of another object is due");
    assert_eq!(second.entry.seq, c, "A ran beside B: {second:?}");
    assert_eq!(
        inbox.get(a).await.unwrap().unwrap().status,
        InboxStatus::Pending
    );

    // Once B is done, A is next.
    let completed: i64 = other
        .query_one(
            &format!("SELECT \"{table}_settle_complete\"($1, 'held')"),
            &[&b],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(completed, 1);
    claim_only(&*inbox, a).await;
}

/// Migrated again, as every instance does at startup, while another session
/// holds a transaction that read the table: the migration takes no lock on
/// the table (which would wait for that transaction, and hold every insert
/// and claim up behind it), so it and an insert after it go through.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_postgres_inbox_migrates_again_while_a_transaction_reads_its_table() {
    let _servers = crate::support::servers::shared().await;
    let table = format!("inbox_{}", unique());
    let open = || {
        clink_webhooks::store::PostgresInbox::new(pg_pool())
            .with_table(&table)
            .unwrap()
            .with_timeout(Duration::from_secs(2))
            .unwrap()
    };
    let inbox = open();
    inbox.migrate().await.unwrap();
    let pool = pg_pool();
    let mut reader = pool.get().await.unwrap();
    let reading = reader.transaction().await.unwrap();
    reading
        .query(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap();
    // The reader's transaction is open (holding its lock on the table)
    // until the end of this test.
    let again = open();
    again
        .migrate()
        .await
        .expect("a migration with nothing to change waits for no lock on the table");
    again.insert(&event("evt_migrated", None, 1)).await.unwrap();
    assert_eq!(seq_of(&again, "evt_migrated").await, 1);
    reading.rollback().await.unwrap();
}

/// A statement that times out is cancelled on the server, not left waiting
/// to land later: an insert stuck behind a lock and given up on (answered
/// 503, so Clink retries it) must not be written once the lock is gone, by
/// a connection handed back to the pool with it still waiting.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_timed_out_postgres_inbox_statement_is_cancelled_not_left_to_land() {
    let _servers = crate::support::servers::shared().await;
    let inbox = clink_webhooks::store::PostgresInbox::new(pg_pool());
    a_timed_out_statement_is_cancelled(inbox).await;
}

/// The same over TLS: the cancel goes with the pool's connector
/// (`cancel_with`), where one sent plain to a connection that requires
/// TLS fails and leaves the statement waiting.
#[cfg(feature = "postgres-tls")]
#[tokio::test]
async fn a_timed_out_statement_over_tls_is_cancelled_too() {
    let _servers = crate::support::servers::shared().await;
    let url = std::env::var("DATABASE_URL").unwrap();
    let joined = if url.contains('?') { '&' } else { '?' };
    let mut config: tokio_postgres::Config =
        format!("{url}{joined}sslmode=require").parse().unwrap();
    let ca = std::env::var("DATABASE_TLS_CA").expect("DATABASE_TLS_CA: run scripts/test");
    let tls = clink_webhooks::store::postgres_tls(&mut config, Some(std::path::Path::new(&ca)))
        .unwrap()
        .expect("TLS asked for");
    let pool =
        deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(config, tls.clone()))
            .max_size(4)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .unwrap();
    let inbox = clink_webhooks::store::PostgresInbox::new(pool).cancel_with(tls);
    a_timed_out_statement_is_cancelled(inbox).await;
}

/// Inserts into `inbox`, given up on behind a lock, are cancelled on the
/// server and never land.
#[cfg(feature = "postgres")]
async fn a_timed_out_statement_is_cancelled(inbox: clink_webhooks::store::PostgresInbox) {
    let table = format!("inbox_{}", unique());
    let patient = inbox.with_table(&table).unwrap();
    patient.migrate().await.unwrap();
    let hasty = patient
        .clone()
        .with_timeout(Duration::from_millis(300))
        .unwrap();
    let pool = pg_pool();
    let mut holder = pool.get().await.unwrap();
    let locking = holder.transaction().await.unwrap();
    locking
        .batch_execute(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .await
        .unwrap();
    for n in 0..2 {
        let answer = hasty
            .insert(&event(&format!("evt_stuck_{n}"), None, 1))
            .await;
        assert_eq!(answer.unwrap_err().kind(), StoreErrorKind::Timeout);
    }
    // The inserts given up on stop waiting on the server: cancelled. A
    // bounded wait on what the server says, not on time.
    let watcher = pool.get().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} abandoned statements still wait for the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    locking.rollback().await.unwrap();
    let kept = patient.list(&InboxFilter::default(), 10).await.unwrap();
    assert!(kept.is_empty(), "{kept:?}");
}

/// In a table of another schema, migrated again as every instance does at
/// startup: the functions that claim and settle are created beside the
/// table and replaced, take the events oldest first and settle only a claim
/// that holds.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_postgres_inbox_in_another_schema_migrates_twice_and_claims_oldest_first() {
    let _servers = crate::support::servers::shared().await;
    let schema = format!("s_{}", unique());
    pg_pool()
        .get()
        .await
        .unwrap()
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let open = || {
        clink_webhooks::store::PostgresInbox::new(pg_pool())
            .with_table(&format!("{schema}.inbox"))
            .unwrap()
            .with_timeout(Duration::from_secs(10))
            .unwrap()
    };
    let inbox = open();
    inbox.migrate().await.unwrap();
    open().migrate().await.unwrap();
    for n in 0..3 {
        inbox
            .insert(&event(&format!("evt_{n}"), None, n))
            .await
            .unwrap();
    }
    let lease = Duration::from_secs(60);
    let take = async || {
        inbox
            .claim(lease, Duration::ZERO)
            .await
            .unwrap()
            .expect("an event waits")
    };
    // Each settle through its function: a release gives the event back, a
    // settle of a claim that no longer holds changes nothing.
    let first = take().await;
    assert_eq!(first.entry.event.event_id, "evt_0");
    assert_eq!(inbox.release(&first).await.unwrap(), Settle::Applied);
    assert_eq!(inbox.complete(&first).await.unwrap(), Settle::LeaseLost);
    for n in 0..2 {
        let claim = take().await;
        assert_eq!(claim.entry.event.event_id, format!("evt_{n}"));
        assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
        assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::LeaseLost);
    }
    let last = take().await;
    assert_eq!(last.entry.event.event_id, "evt_2");
    assert_eq!(
        inbox.fail(&last, "refused", None).await.unwrap(),
        Settle::Applied
    );
    assert_eq!(
        inbox.fail(&last, "refused", None).await.unwrap(),
        Settle::LeaseLost
    );
    let dead = inbox.get(last.entry.seq).await.unwrap().expect("kept");
    assert_eq!(dead.status, InboxStatus::Dead);
    assert!(inbox.claim(lease, Duration::ZERO).await.unwrap().is_none());
    let functions: Vec<String> = pg_pool()
        .get()
        .await
        .unwrap()
        .query(
            "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = $1 ORDER BY p.proname",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        functions,
        [
            "inbox_claim",
            "inbox_settle_complete",
            "inbox_settle_fail",
            "inbox_settle_release",
            "inbox_unpark"
        ]
    );
}

/// The connection that listens for inserts, ended by the server, is made
/// again: an insert by another instance after that still wakes an idle
/// worker's wait, which would otherwise sleep its whole time.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_listening_connection_the_server_ends_is_made_again() {
    let _servers = crate::support::servers::shared().await;
    let table = format!("inbox_{}", unique());
    let inbox = postgres_inbox_in(&table, Duration::from_secs(10)).await;
    // Another instance of the app, with its own wake-ups, inserts.
    let other = postgres_inbox_in(&table, Duration::from_secs(10)).await;
    let name = format!("clink_listen_{}", unique());
    let mut config: tokio_postgres::Config =
        std::env::var("DATABASE_URL").unwrap().parse().unwrap();
    config.application_name(&name);
    inbox.listen(config.clone()).await.unwrap();
    // Once per inbox: a second call, on a clone too, makes no second one.
    inbox.clone().listen(config).await.unwrap();
    let client = pg_pool().get().await.unwrap();
    // The backend that has run its `LISTEN` and waits, other than `not`.
    let listening = async |not: i32| -> Option<i32> {
        client
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid <> $2 \
                 AND state = 'idle' AND query LIKE 'LISTEN%'",
                &[&name, &not],
            )
            .await
            .unwrap()
            .map(|row| row.get(0))
    };
    let first = listening(0).await.expect("listening");
    assert_eq!(connections_named(&client, &name).await, 1);
    let woken = async |n: i64| {
        // A wake-up left from before is taken first.
        inbox.wait(Duration::ZERO).await;
        let waiting = inbox.wait(Duration::from_secs(600));
        other
            .insert(&event(&format!("evt_listen_{n}"), None, n))
            .await
            .unwrap();
        tokio::time::timeout(DRAIN_PATIENCE, waiting).await.is_ok()
    };
    assert!(woken(1).await, "an insert wakes the wait");

    let ended: bool = client
        .query_one("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .unwrap()
        .get(0);
    assert!(ended);
    polled_until("made again", async || listening(first).await.is_some()).await;
    assert!(
        woken(2).await,
        "an insert wakes the wait once listening again"
    );

    // The inbox dropped, its listening connection ends with it.
    drop(inbox);
    polled_until("the connection of a dropped inbox ended", async || {
        connections_named(&client, &name).await == 0
    })
    .await;
}

/// How many of the server's connections are `application_name`'s.
#[cfg(feature = "postgres")]
async fn connections_named(client: &tokio_postgres::Client, application_name: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .get(0)
}

/// Asks `ready` every 50 ms until it says yes, failing with `what` (what
/// did not come) after [`DRAIN_PATIENCE`].
#[cfg(feature = "postgres")]
async fn polled_until(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DRAIN_PATIENCE;
    while !ready().await {
        assert!(Instant::now() < deadline, "not {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A first `listen` that fails (here a role not yet allowed to log in) is
/// an error, and is tried again in the background: once it gets in, an
/// insert by another instance wakes an idle worker's wait.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_first_listen_that_fails_is_tried_again() {
    let _servers = crate::support::servers::shared().await;
    let table = format!("inbox_{}", unique());
    let inbox = postgres_inbox_in(&table, Duration::from_secs(10)).await;
    let other = postgres_inbox_in(&table, Duration::from_secs(10)).await;
    let client = pg_pool().get().await.unwrap();
    let role = format!("clink_listener_{}", unique());
    let mut config: tokio_postgres::Config =
        std::env::var("DATABASE_URL").unwrap().parse().unwrap();
    // The URL's password, if it has one, is the role's too.
    let password = config
        .get_password()
        .map(|password| String::from_utf8_lossy(password).replace('\'', "''"))
        .map(|password| format!(" PASSWORD '{password}'"))
        .unwrap_or_default();
    client
        .batch_execute(&format!("CREATE ROLE {role} NOLOGIN{password}"))
        .await
        .unwrap();
    config.user(&role).application_name(&role);
    let refused = inbox.listen(config).await.unwrap_err();
    assert!(
        refused.to_string().contains("cannot connect to listen"),
        "{refused}"
    );
    client
        .batch_execute(&format!("ALTER ROLE {role} LOGIN"))
        .await
        .unwrap();
    polled_until("listening", async || {
        client
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
                 AND state = 'idle' AND query LIKE 'LISTEN%'",
                &[&role],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    inbox.wait(Duration::ZERO).await;
    let waiting = inbox.wait(Duration::from_secs(600));
    other
        .insert(&event("evt_listened_late", None, 1))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(DRAIN_PATIENCE, waiting).await.is_ok(),
        "the insert woke the wait"
    );
    // The role goes once its connection has.
    drop(inbox);
    polled_until("the connection of a dropped inbox ended", async || {
        connections_named(&client, &role).await == 0
    })
    .await;
    client
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn two_pools_draining_one_postgres_inbox_handle_each_event_once() {
    let _servers = crate::support::servers::shared().await;
    let inbox = postgres_inbox().await;
    let url = std::env::var("DATABASE_URL").unwrap();
    inbox.listen(url.parse().unwrap()).await.unwrap();
    let seen = Seen::default();
    let pools: Vec<_> = (0..2)
        .map(|_| {
            Workers::new(inbox.clone(), recording_router(&seen, 0))
                .concurrency(4)
                .and_then(|w| w.reorder_window(NO_REORDER_WINDOW))
                .unwrap()
                .spawn()
        })
        .collect();
    // Ten objects with five events each, and twenty about no object.
    let mut ids = Vec::new();
    for n in 0..70 {
        let object = (n < 50).then(|| format!("ord_{}", n % 10));
        let id = format!("evt_{n}");
        inbox
            .insert(&event(&id, object.as_deref(), n))
            .await
            .unwrap();
        ids.push(id);
    }
    // Either pool sees the whole inbox: drained means both are idle.
    pools[0].drained(DRAIN_PATIENCE).await.unwrap();
    for pool in pools {
        pool.shutdown(Duration::from_secs(5)).await;
    }
    let mut handled = seen.lock().unwrap().clone();
    // Per object, in created order.
    for object in 0..10 {
        let order: Vec<_> = handled
            .iter()
            .filter(|id| {
                let n: i64 = id.trim_start_matches("evt_").parse().unwrap();
                n < 50 && n % 10 == object
            })
            .cloned()
            .collect();
        let mut sorted = order.clone();
        sorted.sort_by_key(|id| id.trim_start_matches("evt_").parse::<i64>().unwrap());
        assert_eq!(order, sorted, "object {object}");
    }
    handled.sort();
    ids.sort();
    assert_eq!(handled, ids, "each event exactly once");
}

/// An event no handler of the workers' router takes is done without a
/// handler run (Clink had its `200` when it was queued), and said so at
/// `info`, with its id: a handler missing from the router shows.
#[tokio::test]
async fn an_event_no_handler_takes_is_done_and_said_so() {
    let (logs, _guard) = crate::support::capture::capture();
    let inbox = Arc::new(MemoryInbox::new());
    inbox.insert(&event("evt_nobody", None, 1)).await.unwrap();
    let pool = Workers::new(Arc::clone(&inbox), EventRouter::new())
        .reorder_window(Duration::ZERO)
        .unwrap()
        .spawn();
    pool.drained(DRAIN_PATIENCE).await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        inbox.get(1).await.unwrap().unwrap().status,
        InboxStatus::Done
    );
    let said = logs.events().into_iter().any(|seen| {
        seen.level == tracing::Level::INFO
            && seen.message.contains("no handler takes this event type")
            && seen
                .fields
                .get("event_id")
                .is_some_and(|id| id.contains("evt_nobody"))
    });
    assert!(said, "{}", logs.text());
}

/// A row of the SQLite inbox that no worker can read (a value of the wrong
/// type, set by hand in the sqlite3 shell) does not hold back every event
/// behind it: the claim that meets it makes it dead, saying why, and the
/// next claim takes the next event. A body set as text is read as its
/// bytes.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn an_unreadable_sqlite_row_is_dead_and_holds_nothing_back() {
    // Counted dead as the workers count theirs, on this thread's recorder.
    #[cfg(feature = "metrics")]
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    #[cfg(feature = "metrics")]
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let dir = std::env::temp_dir().join(format!("clink-inbox-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inbox.db");
    let inbox = clink_webhooks::store::SqliteInbox::open(&path).unwrap();
    for id in ["evt_a", "evt_b", "evt_c"] {
        inbox.insert(&event(id, None, 1)).await.unwrap();
    }
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute(
            "UPDATE clink_webhook_inbox SET signed_at_ms = 'yesterday' WHERE event_id = 'evt_a'",
            [],
        )
        .unwrap();
    let mended = r#"{"id":"evt_b","type":"order.succeeded","data":{"mended":true}}"#;
    connection
        .execute(
            "UPDATE clink_webhook_inbox SET body = ?1 WHERE event_id = 'evt_b'",
            [mended],
        )
        .unwrap();
    let mut claimed = Vec::new();
    for _ in 0..4 {
        if let Some(claim) = inbox
            .claim(Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
        {
            claimed.push((
                claim.entry.event.event_id.clone(),
                claim.entry.event.body.clone(),
            ));
        }
    }
    assert_eq!(
        claimed,
        [
            ("evt_b".to_owned(), bytes::Bytes::from(mended)),
            ("evt_c".to_owned(), event("evt_c", None, 1).body),
        ]
    );
    let (status, error): (String, String) = connection
        .query_row(
            "SELECT status, coalesce(last_error, '') FROM clink_webhook_inbox WHERE event_id = 'evt_a'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "dead");
    assert!(error.contains("cannot be read"), "{error}");
    #[cfg(feature = "metrics")]
    assert_eq!(
        counted(&recorder, "clink_webhook_inbox_dead_total"),
        Some(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The events `tries` claims take, in turn, each completed at once.
async fn claimed_and_completed(inbox: &impl Inbox, tries: usize) -> Vec<String> {
    let mut claimed = Vec::new();
    for _ in 0..tries {
        if let Some(claim) = inbox
            .claim(Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
        {
            claimed.push(claim.entry.event.event_id.clone());
            assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
        }
    }
    claimed
}

/// The value of the counter `name` that `recorder` holds, if any.
#[cfg(feature = "metrics")]
fn counted(recorder: &metrics_exporter_prometheus::PrometheusRecorder, name: &str) -> Option<f64> {
    let text = recorder.handle().render();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse::<f64>().ok())
}

/// A due time set by hand as a real number (`unixepoch('subsec') * 1000`,
/// "retry now" in the sqlite3 shell) is read to the millisecond below: the
/// event is claimed, and every claim after it goes on; a lease's end set so
/// on a running event is taken over the same way.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_sqlite_time_set_as_a_real_number_is_read_and_claimed() {
    let dir = std::env::temp_dir().join(format!("clink-inbox-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inbox.db");
    let inbox = clink_webhooks::store::SqliteInbox::open(&path).unwrap();
    for id in ["evt_a", "evt_b", "evt_c"] {
        inbox.insert(&event(id, None, 1)).await.unwrap();
    }
    let running = inbox
        .claim(Duration::from_secs(3600), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.entry.event.event_id, "evt_a");
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute_batch(
            "UPDATE clink_webhook_inbox SET next_attempt_ms = next_attempt_ms - 1000.5 \
             WHERE event_id = 'evt_c';
             UPDATE clink_webhook_inbox SET lease_until_ms = unixepoch('subsec') * 1000 - 0.5 \
             WHERE event_id = 'evt_a';",
        )
        .unwrap();
    let claimed = claimed_and_completed(&inbox, 4).await;
    assert_eq!(claimed, ["evt_c", "evt_b", "evt_a"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A PostgreSQL row a claim takes that cannot be read (a value where the
/// schema had none, after a hand edit) is dead at that claim, saying why,
/// instead of being taken over at each lease's end for ever; the next
/// claims take the events of its object behind it.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn an_unreadable_postgres_row_is_dead_and_holds_nothing_back() {
    #[cfg(feature = "metrics")]
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    #[cfg(feature = "metrics")]
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let _servers = crate::support::servers::shared().await;
    let table = format!("inbox_{}", unique());
    let inbox = postgres_inbox_in(&table, Duration::from_secs(10)).await;
    for (i, id) in ["evt_a", "evt_b", "evt_c"].into_iter().enumerate() {
        let created = i64::try_from(i).unwrap() + 1;
        inbox
            .insert(&event(id, Some("ord_1"), created))
            .await
            .unwrap();
    }
    let url = std::env::var("DATABASE_URL").unwrap();
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "ALTER TABLE {table} ALTER COLUMN event_type DROP NOT NULL;
             UPDATE {table} SET event_type = NULL WHERE event_id = 'evt_a'"
        ))
        .await
        .unwrap();
    let claimed = claimed_and_completed(&inbox, 4).await;
    assert_eq!(claimed, ["evt_b", "evt_c"]);
    let row = admin
        .query_one(
            &format!(
                "SELECT status, coalesce(last_error, ''), token IS NULL, attempts FROM {table} \
                 WHERE event_id = 'evt_a'"
            ),
            &[],
        )
        .await
        .unwrap();
    let (status, error, no_token, attempts): (String, String, bool, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((status.as_str(), no_token, attempts), ("dead", true, 1));
    assert!(error.contains("cannot be read"), "{error}");
    #[cfg(feature = "metrics")]
    assert_eq!(
        counted(&recorder, "clink_webhook_inbox_dead_total"),
        Some(1.0)
    );
    let _ = admin.batch_execute(&format!("DROP TABLE {table}")).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn the_sqlite_inbox_conforms_and_keeps_events_across_reopening() {
    let dir = std::env::temp_dir().join(format!("clink-inbox-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inbox.db");
    conformance(Arc::new(
        clink_webhooks::store::SqliteInbox::open(&path).unwrap(),
    ))
    .await;
    attempts_conformance(Arc::new(
        clink_webhooks::store::SqliteInbox::open(dir.join("attempts.db")).unwrap(),
    ))
    .await;
    nul_conformance(Arc::new(
        clink_webhooks::store::SqliteInbox::open(dir.join("nul.db")).unwrap(),
    ))
    .await;
    replay_if_conformance(Arc::new(
        clink_webhooks::store::SqliteInbox::open(dir.join("replay_if.db")).unwrap(),
    ))
    .await;
    purge_conformance(Arc::new(
        clink_webhooks::store::SqliteInbox::open(dir.join("purge.db")).unwrap(),
    ))
    .await;
    replay_through_conformance(Arc::new(
        clink_webhooks::store::SqliteInbox::open(dir.join("replay_through.db")).unwrap(),
    ))
    .await;
    held_back_conformance(Arc::new(
        clink_webhooks::store::SqliteInbox::open(dir.join("held_back.db")).unwrap(),
    ))
    .await;

    // What was written is there when the file is opened again.
    let inbox = clink_webhooks::store::SqliteInbox::open(&path).unwrap();
    inbox
        .insert(&event("evt_kept", Some("ord_k"), 7))
        .await
        .unwrap();
    drop(inbox);
    let inbox = clink_webhooks::store::SqliteInbox::open(&path).unwrap();
    let kept = inbox
        .list(&InboxFilter::default().status(InboxStatus::Pending), 10)
        .await
        .unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].event.event_id, "evt_kept");
    assert_eq!(kept[0].event.object_key.as_deref(), Some("order:ord_k"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A test's own directory under the system's temporary one.
fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("clink-inbox-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A file made by the version before attempts were recorded (its table as
/// that version left it, created by hand here) opens, and the attempts run
/// from then on are recorded; an event its workers held when they stopped
/// is taken over without a history of what ran before.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_sqlite_inbox_made_before_attempts_were_recorded_opens_and_records_them() {
    use clink_webhooks::store::SqliteInbox;

    let dir = temp_dir();
    let path = dir.join("inbox.db");
    let now = Timestamp::now().as_millis();
    {
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE clink_webhook_inbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                account TEXT NOT NULL,
                event_id TEXT NOT NULL,
                event_type TEXT NOT NULL,
                created_ms INTEGER,
                order_ms INTEGER NOT NULL,
                object_key TEXT,
                signed_at_ms INTEGER NOT NULL,
                received_at_ms INTEGER NOT NULL,
                body BLOB NOT NULL,
                status TEXT NOT NULL DEFAULT 'pending',
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_ms INTEGER NOT NULL,
                lease_until_ms INTEGER NOT NULL DEFAULT 0,
                token TEXT,
                last_error TEXT,
                signing_key TEXT,
                handled_at_ms INTEGER,
                replays INTEGER NOT NULL DEFAULT 0,
                last_replay_ms INTEGER,
                receipt TEXT,
                header_timestamp TEXT,
                header_signature TEXT,
                UNIQUE (account, event_id)
            );
            CREATE TABLE clink_webhook_inbox_health (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                at_ms INTEGER NOT NULL
            );
            CREATE INDEX clink_webhook_inbox_object
                ON clink_webhook_inbox (object_key, order_ms, event_id)
                WHERE status IN ('pending', 'retrying', 'running');",
        )
        .unwrap();
        for (id, status, attempts, lease_until) in [
            ("evt_done", "done", 1, 0),
            ("evt_pending", "pending", 0, 0),
            ("evt_running", "running", 1, now - 1_000),
        ] {
            old.execute(
                "INSERT INTO clink_webhook_inbox (account, event_id, event_type, order_ms,
                     signed_at_ms, received_at_ms, body, next_attempt_ms, status, attempts,
                     lease_until_ms, token)
                 VALUES ('', ?1, 'order.succeeded', 1, ?2, ?2, X'7B7D', ?2, ?3, ?4, ?5, 'old')",
                rusqlite::params![id, now - 5_000, status, attempts, lease_until],
            )
            .unwrap();
        }
    }

    let inbox = SqliteInbox::open(&path).unwrap();
    let before = inbox.list(&InboxFilter::default(), 10).await.unwrap();
    assert_eq!(before.len(), 3);
    assert!(before.iter().all(|entry| entry.history.is_empty()));
    let pending = claim_only(&inbox, 2).await;
    assert_eq!(inbox.complete(&pending).await.unwrap(), Settle::Applied);
    assert_eq!(
        outcomes(&inbox.get(2).await.unwrap().unwrap()),
        [(1, InboxAttemptOutcome::Completed)]
    );
    // Its worker's claim time was not recorded: the lost attempt is not
    // in the history, the ones after it are.
    let taken_over = claim_only(&inbox, 3).await;
    assert_eq!(taken_over.entry.attempts, 2);
    assert!(taken_over.entry.history.is_empty());
    assert_eq!(
        inbox.fail(&taken_over, "still down", None).await.unwrap(),
        Settle::Applied
    );
    drop(inbox);

    // Opened again: nothing to add, everything kept.
    let inbox = SqliteInbox::open(&path).unwrap();
    let entry = inbox.get(3).await.unwrap().unwrap();
    assert_eq!(entry.status, InboxStatus::Dead);
    assert_eq!(outcomes(&entry), [(2, failed("still down"))]);
    assert!(inbox.get(1).await.unwrap().unwrap().history.is_empty());
    inbox.check_writable().await.unwrap();
    drop(inbox);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A handler that completes its event in its own transaction
/// ([`SqliteInbox::complete_with`]) records the attempt as completed.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_handler_completing_in_the_sqlite_inbox_records_its_attempt() {
    use clink_webhooks::store::SqliteInbox;

    let dir = temp_dir();
    let path = dir.join("inbox.db");
    let inbox = SqliteInbox::open(&path).unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE paid (order_id TEXT NOT NULL)")
        .unwrap();
    let handler_inbox = inbox.clone();
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |event| {
        let inbox = handler_inbox.clone();
        async move {
            let attempt = event.inbox_attempt().expect("run by the workers");
            let order = event.data.order_id.clone().unwrap_or_default();
            inbox
                .complete_with(attempt, move |tx| {
                    tx.execute("INSERT INTO paid (order_id) VALUES (?1)", [order])?;
                    Ok(())
                })
                .await
        }
    });
    let pool = Workers::new(inbox.clone(), router)
        .reorder_window(NO_REORDER_WINDOW)
        .unwrap()
        .spawn();
    inbox
        .insert(&event("evt_with", Some("ord_with"), 1))
        .await
        .unwrap();
    pool.drained(DRAIN_PATIENCE).await.unwrap();
    pool.shutdown(Duration::from_secs(5)).await;
    let entry = inbox.get(1).await.unwrap().unwrap();
    assert_eq!(entry.status, InboxStatus::Done);
    assert_eq!(outcomes(&entry), [(1, InboxAttemptOutcome::Completed)]);
    drop(inbox);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A PostgreSQL table made by the version before attempts were recorded
/// (created by hand here as that version left it) is migrated, and the
/// attempts run from then on are recorded.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_postgres_inbox_made_before_attempts_were_recorded_migrates_and_records_them() {
    let _servers = crate::support::servers::shared().await;
    let table = format!("inbox_{}", unique());
    let now = Timestamp::now().as_millis();
    let client = pg_pool().get().await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{table}\" (
                seq bigserial PRIMARY KEY,
                account text NOT NULL,
                event_id text NOT NULL,
                event_type text NOT NULL,
                created_ms bigint,
                order_ms bigint NOT NULL,
                object_key text COLLATE \"C\",
                signed_at_ms bigint NOT NULL,
                received_at_ms bigint NOT NULL,
                body bytea NOT NULL,
                status text NOT NULL DEFAULT 'pending',
                attempts integer NOT NULL DEFAULT 0,
                next_attempt_ms bigint NOT NULL,
                lease_until_ms bigint NOT NULL DEFAULT 0,
                token text,
                last_error text,
                signing_key text,
                handled_at_ms bigint,
                replays integer NOT NULL DEFAULT 0,
                last_replay_ms bigint,
                receipt text,
                header_timestamp text,
                header_signature text,
                UNIQUE (account, event_id)
            );
            INSERT INTO \"{table}\" (account, event_id, event_type, order_ms, signed_at_ms,
                received_at_ms, body, next_attempt_ms, status, attempts, lease_until_ms, token)
            VALUES ('', 'evt_pending', 'order.succeeded', 1, {old}, {old}, '\\x7b7d', {old},
                    'pending', 0, 0, NULL),
                   ('', 'evt_running', 'order.succeeded', 1, {old}, {old}, '\\x7b7d', {old},
                    'running', 1, {expired}, 'old');",
            old = now - 5_000,
            expired = now - 1_000,
        ))
        .await
        .unwrap();
    drop(client);
    let inbox = clink_webhooks::store::PostgresInbox::new(pg_pool())
        .with_table(&table)
        .unwrap()
        .with_timeout(Duration::from_secs(10))
        .unwrap();
    inbox.migrate().await.unwrap();
    // A second migration finds nothing to add.
    inbox.migrate().await.unwrap();
    let before = inbox.list(&InboxFilter::default(), 10).await.unwrap();
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|entry| entry.history.is_empty()));
    let pending = claim_only(&inbox, 1).await;
    assert_eq!(inbox.complete(&pending).await.unwrap(), Settle::Applied);
    assert_eq!(
        outcomes(&inbox.get(1).await.unwrap().unwrap()),
        [(1, InboxAttemptOutcome::Completed)]
    );
    let taken_over = claim_only(&inbox, 2).await;
    assert!(taken_over.entry.history.is_empty());
    assert_eq!(inbox.release(&taken_over).await.unwrap(), Settle::Applied);
    assert_eq!(
        outcomes(&inbox.get(2).await.unwrap().unwrap()),
        [(2, InboxAttemptOutcome::Released)]
    );
}

/// The example receiver with its inbox where `inbox` says, and `env` set.
fn receiver_with_inbox(
    inbox: &str, env: &[(&str, &str)],
) -> (crate::support::process::Process, String) {
    use crate::support::process::{example_path, Process};
    let mut command = std::process::Command::new(example_path("axum_receiver"));
    command
        .env("PORT", "0")
        .env("CLINK_WEBHOOK_SIGNING_KEY", RECEIVER_KEY)
        .env("CLINK_INBOX", inbox)
        .env_remove("REDIS_URL")
        .env_remove("RUST_LOG");
    if !inbox.starts_with("postgres") {
        command.env_remove("DATABASE_URL");
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let process = Process::start(&mut command);
    let line = Process::line_starting(&process.stderr, "listening on ");
    (process, line["listening on ".len()..].to_owned())
}

const RECEIVER_KEY: &str = "whsec_inbox_process";

async fn post(url: &str, body: String) -> (u16, String) {
    use http_body_util::BodyExt;
    let request = SignedRequest::new(RECEIVER_KEY, body)
        .uri(url)
        .build::<Full<Bytes>>();
    let response =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http()
            .request(request)
            .await
            .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn order(id: &str, object: &str, created: i64) -> String {
    format!(
        r#"{{"id":"{id}","type":"order.succeeded","created":{created},"data":{{"orderId":"{object}"}}}}"#
    )
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn events_acknowledged_before_a_sigkill_are_handled_once_after_the_restart() {
    let dir = std::env::temp_dir().join(format!("clink-inbox-kill-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = format!("sqlite:{}", dir.join("inbox.db").display());
    // A long reorder window: acknowledged, and not yet handled, when killed.
    let (receiver, url) = receiver_with_inbox(&spec, &[("CLINK_INBOX_REORDER_MS", "600000")]);
    let run = unique();
    let ids: Vec<String> = (0..10).map(|n| format!("evt_{run}_{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let (status, body) = post(&url, order(id, &format!("ord_{n}"), 1)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("queued"), "{body}");
    }
    drop(receiver); // SIGKILL

    let (receiver, url) = receiver_with_inbox(&spec, &[("CLINK_INBOX_REORDER_MS", "0")]);
    let mut handled: Vec<String> = (0..10).map(|_| receiver.next_stdout()).collect();
    handled.sort();
    let mut expected: Vec<_> = ids
        .iter()
        .map(|id| format!("handled order.succeeded {id}"))
        .collect();
    expected.sort();
    assert_eq!(handled, expected);
    // Nothing ran twice: the next line is a new event's.
    let marker = format!("evt_{run}_marker");
    assert_eq!(post(&url, order(&marker, "ord_m", 1)).await.0, 200);
    assert_eq!(
        receiver.next_stdout(),
        format!("handled order.succeeded {marker}")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An example receiver on a SQLite inbox of its own in a new directory,
/// with a lease of `lease_ms`, whose handler (600 s long) has started on one
/// delivered event: the receiver, the directory, the inbox's spec and the
/// event's id.
#[cfg(feature = "sqlite")]
async fn receiver_mid_handler(
    name: &str, lease_ms: &str,
) -> (
    crate::support::process::Process,
    std::path::PathBuf,
    String,
    String,
) {
    use crate::support::process::Process;
    let dir = std::env::temp_dir().join(format!("clink-inbox-{name}-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = format!("sqlite:{}", dir.join("inbox.db").display());
    let (receiver, url) = receiver_with_inbox(
        &spec,
        &[
            ("CLINK_INBOX_REORDER_MS", "0"),
            ("CLINK_INBOX_LEASE_MS", lease_ms),
            ("CLINK_EXAMPLE_HANDLER_DELAY_MS", "600000"),
        ],
    );
    let id = format!("evt_{}_{name}", unique());
    assert_eq!(
        post(&url, order(&id, &format!("ord_{name}"), 1)).await.0,
        200
    );
    let handling = Process::line_starting(&receiver.stderr, "handling ");
    assert_eq!(handling, format!("handling order.succeeded {id}"));
    (receiver, dir, spec, id)
}

/// Another example receiver on the inbox `spec` runs the event `id` to
/// its end.
#[cfg(feature = "sqlite")]
fn another_receiver_runs_it(spec: &str, id: &str) {
    let (receiver, _url) = receiver_with_inbox(spec, &[("CLINK_INBOX_REORDER_MS", "0")]);
    assert_eq!(
        receiver.next_stdout(),
        format!("handled order.succeeded {id}")
    );
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_worker_killed_mid_handler_means_the_event_runs_again() {
    let (first, dir, spec, id) = receiver_mid_handler("mid", "1000").await;
    drop(first); // SIGKILL, mid-handler

    // Another receiver on the same inbox takes the event over once the
    // dead worker's lease has ended, and runs it to the end.
    another_receiver_runs_it(&spec, &id);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SIGTERM while a handler runs past the example's stop deadline: it stops
/// inside the 10 s Docker gives a container, and the handler's
/// event is given back to the inbox (pending, the stopped attempt not
/// counted), not left to wait out its lease; the next receiver on the
/// inbox runs it.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sigterm_mid_handler_stops_within_ten_seconds_and_gives_the_event_back() {
    let (first, dir, spec, id) = receiver_mid_handler("term", "600000").await;
    let signalled = Instant::now();
    let finished = tokio::task::spawn_blocking(move || first.terminate())
        .await
        .unwrap();
    let took = signalled.elapsed();
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert!(
        took < Duration::from_secs(10),
        "stopped {took:?} after SIGTERM: {}",
        finished.stderr
    );
    let (status, attempts): (String, i64) = rusqlite::Connection::open(dir.join("inbox.db"))
        .unwrap()
        .query_row(
            "SELECT status, attempts FROM clink_webhook_inbox WHERE event_id = ?1",
            [&id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), attempts), ("pending", 0));

    another_receiver_runs_it(&spec, &id);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn one_object_sent_in_reverse_created_order_within_the_reorder_window_is_handled_oldest_first(
) {
    let dir = std::env::temp_dir().join(format!("clink-inbox-order-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = format!("sqlite:{}", dir.join("inbox.db").display());
    let (receiver, url) = receiver_with_inbox(&spec, &[("CLINK_INBOX_REORDER_MS", "1500")]);
    let run = unique();
    for n in (1..=4).rev() {
        assert_eq!(
            post(&url, order(&format!("evt_{run}_{n}"), "ord_rev", n))
                .await
                .0,
            200
        );
    }
    for n in 1..=4 {
        assert_eq!(
            receiver.next_stdout(),
            format!("handled order.succeeded evt_{run}_{n}")
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn two_processes_draining_one_postgres_inbox_handle_each_event_once() {
    let _servers = crate::support::servers::shared().await;
    let settle = [("CLINK_INBOX_REORDER_MS", "0")];
    let (a, url_a) = receiver_with_inbox("postgres", &settle);
    let (b, url_b) = receiver_with_inbox("postgres", &settle);
    let run = unique();
    let ids: Vec<String> = (0..30).map(|n| format!("evt_{run}_{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        // Every event to both receivers: duplicates are acknowledged, not kept twice.
        let body = order(
            id,
            &format!("ord_{run}_{}", n % 5),
            i64::try_from(n).unwrap(),
        );
        assert_eq!(post(&url_a, body.clone()).await.0, 200);
        assert_eq!(post(&url_b, body).await.0, 200);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for receiver in [&a, &b] {
        let tx = tx.clone();
        let lines = &receiver.stdout;
        while let Ok(line) = lines.try_recv() {
            tx.send(line).unwrap();
        }
    }
    drop(tx);
    let mut handled: Vec<String> = rx.into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while handled.len() < ids.len() {
        assert!(Instant::now() < deadline, "only {} handled", handled.len());
        for receiver in [&a, &b] {
            if let Ok(line) = receiver.stdout.recv_timeout(Duration::from_millis(50)) {
                handled.push(line);
            }
        }
    }
    // Markers through both: whatever is printed before both markers were
    // handled is kept, so an event run twice would show up.
    let markers: Vec<String> = (0..2).map(|n| format!("evt_{run}_marker_{n}")).collect();
    assert_eq!(post(&url_a, order(&markers[0], "ord_m0", 1)).await.0, 200);
    assert_eq!(post(&url_b, order(&markers[1], "ord_m1", 1)).await.0, 200);
    let mut seen_markers = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen_markers < 2 {
        assert!(Instant::now() < deadline, "the markers were not handled");
        for receiver in [&a, &b] {
            if let Ok(line) = receiver.stdout.recv_timeout(Duration::from_millis(50)) {
                if line.contains("marker") {
                    seen_markers += 1;
                } else {
                    handled.push(line);
                }
            }
        }
    }
    let mut handled: Vec<_> = handled
        .into_iter()
        .filter(|l| !l.contains("marker"))
        .collect();
    handled.sort();
    let mut expected: Vec<_> = ids
        .iter()
        .map(|id| format!("handled order.succeeded {id}"))
        .collect();
    expected.sort();
    assert_eq!(
        handled, expected,
        "each event exactly once across both processes"
    );
}

#[cfg(all(feature = "sqlite", feature = "cli"))]
#[tokio::test]
async fn the_cli_lists_shows_replays_and_purges_an_inbox() {
    let dir = std::env::temp_dir().join(format!("clink-inbox-cli-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inbox.db");
    let inbox = clink_webhooks::store::SqliteInbox::open(&path).unwrap();
    inbox.insert(&event("evt_ok", None, 1)).await.unwrap();
    inbox
        .insert(&event("evt_bad\u{1b}[31m", None, 2))
        .await
        .unwrap();
    let first = inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inbox.complete(&first).await.unwrap(), Settle::Applied);
    let second = inbox
        .claim(LEASE, NO_REORDER_WINDOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        inbox.fail(&second, "provider\ndown", None).await.unwrap(),
        Settle::Applied
    );

    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_clink-webhook"))
            .arg("inbox")
            .arg("--sqlite")
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let dead = cli(&["list", "--status", "dead", "--json"]);
    let lines: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{dead}");
    assert_eq!(lines[0]["last_error"], "provider\ndown");
    assert_eq!(lines[0]["attempts"], 1);
    // Text output escapes what came from the body and the handler.
    let text = cli(&["list"]);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        !text.contains('\u{1b}') && text.contains(r"provider\ndown"),
        "{text}"
    );
    let shown = cli(&["show", &second.entry.seq.to_string(), "--json"]);
    assert!(shown.contains("evt_bad"), "{shown}");
    // Its attempt: failed, with the handler's error.
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let history = shown["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{shown}");
    assert_eq!(history[0]["attempt"], 1);
    assert_eq!(history[0]["outcome"], "failed");
    assert_eq!(history[0]["error"], "provider\ndown");
    let text = cli(&["show", &second.entry.seq.to_string()]);
    let attempt = text
        .lines()
        .find(|line| line.trim_start().starts_with("attempt 1 at "))
        .unwrap_or_else(|| panic!("no attempt line in {text}"));
    assert!(
        attempt.ends_with(r#": failed: "provider\ndown""#),
        "{attempt}"
    );

    assert_eq!(cli(&["replay", "--dead"]).trim(), "replayed 1");
    assert_eq!(
        inbox.get(second.entry.seq).await.unwrap().unwrap().status,
        InboxStatus::Pending
    );
    assert!(cli(&["stats"]).starts_with("pending 1, retrying 0, running 0, dead 0"));
    // Purge keeps what is younger than the retention.
    assert_eq!(cli(&["purge"]).trim(), "purged 0");
    assert_eq!(
        cli(&["purge", "--older-than-hours", "0"]).trim(),
        "purged 1"
    );
    // A dead event is kept by a purge, and deleted by one with --dead.
    inbox
        .insert_dead(&event("evt_dead", None, 3), "undecodable")
        .await
        .unwrap();
    assert_eq!(
        cli(&["purge", "--older-than-hours", "0"]).trim(),
        "purged 0"
    );
    assert!(cli(&["stats"]).contains("dead 1"));
    assert_eq!(
        cli(&["purge", "--older-than-hours", "0", "--dead"]).trim(),
        "purged 0, dead 1"
    );
    assert!(cli(&["stats"]).contains("dead 0"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `inbox --postgres` reads `DATABASE_URL` as the gateway does: a
/// password holding `@` or `/` runs to the last `@`, so the command opens
/// the inbox a gateway with that URL keeps (the PostgreSQL client alone
/// would end the password at the first `@` and look for a host `ss`).
#[cfg(all(feature = "postgres", feature = "cli"))]
#[tokio::test]
async fn the_cli_reads_a_database_password_up_to_the_last_at() {
    let _servers = crate::support::servers::shared().await;
    let table = format!("inbox_{}", unique());
    let inbox = clink_webhooks::store::PostgresInbox::new(pg_pool())
        .with_table(&table)
        .unwrap();
    inbox.migrate().await.unwrap();
    inbox.insert(&event("evt_pg_cli", None, 1)).await.unwrap();
    let url = std::env::var("DATABASE_URL").unwrap();
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user_info, hosts) = rest.rsplit_once('@').unwrap();
    let user = user_info.split(':').next().unwrap();
    // The test servers trust their clients: any password is taken.
    let with_password = format!("{scheme}://{user}:p@ss/word@{hosts}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_clink-webhook"))
        .args(["inbox", "--postgres", "--table", &table, "stats"])
        .env("DATABASE_URL", &with_password)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("pending 1, retrying 0, running 0, dead 0"),
        "{stdout}"
    );
    assert!(!stdout.contains("p@ss/word") && !stderr.contains("p@ss/word"));
}

/// `inbox --postgres` with `sslmode=require` reaches the server over TLS,
/// its certificate verified against `CLINK_DATABASE_CA_FILE`; without that
/// file the test CA's certificate is refused, and the command says so.
#[cfg(all(feature = "postgres-tls", feature = "cli"))]
#[tokio::test]
async fn the_cli_reaches_the_database_over_verified_tls() {
    let _servers = crate::support::servers::shared().await;
    let table = format!("inbox_{}", unique());
    let inbox = clink_webhooks::store::PostgresInbox::new(pg_pool())
        .with_table(&table)
        .unwrap();
    inbox.migrate().await.unwrap();
    inbox.insert(&event("evt_pg_tls", None, 1)).await.unwrap();
    let url = std::env::var("DATABASE_URL").unwrap();
    let joined = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{joined}sslmode=require");
    let ca = std::env::var("DATABASE_TLS_CA").expect("DATABASE_TLS_CA: run scripts/test");
    let stats = |ca: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_clink-webhook"));
        command
            .args(["inbox", "--postgres", "--table", &table, "stats"])
            .env("DATABASE_URL", &url)
            .env_remove("CLINK_DATABASE_CA_FILE");
        if let Some(ca) = ca {
            command.env("CLINK_DATABASE_CA_FILE", ca);
        }
        let output = command.output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, said) = stats(Some(&ca));
    assert!(ok, "{said}");
    assert!(said.starts_with("pending 1,"), "{said}");
    let (ok, said) = stats(None);
    assert!(!ok, "{said}");
    assert!(said.to_ascii_lowercase().contains("certificate"), "{said}");
}

/// An event of `event_type` for `account` about `object`, received at
/// `received` and signed with the key named `key`, as the CLI filters see it.
#[cfg(all(feature = "sqlite", feature = "cli"))]
fn kept(
    id: &str, event_type: &str, account: Option<&str>, object: Option<&str>, received: &str,
) -> NewEvent {
    let body = format!(r#"{{"id":"{id}","type":"{event_type}","created":1,"data":{{}}}}"#);
    let received: Timestamp = received.parse().unwrap();
    NewEvent::new(
        account.map(str::to_owned),
        id.to_owned(),
        event_type.to_owned(),
        Some(Timestamp::from_millis(1)),
        object.map(str::to_owned),
        received,
        received,
        Bytes::from(body),
    )
    .with_signing_key("key_2025")
}

/// `inbox --sqlite` given a path where no file is refuses it and leaves
/// nothing there: it does not make an empty inbox of a mistyped path.
/// Before, every command made the file and its table, and `list` and
/// `stats` answered as for an empty inbox.
#[cfg(all(feature = "sqlite", feature = "cli"))]
#[test]
fn the_cli_refuses_an_sqlite_inbox_that_is_not_there() {
    let dir = std::env::temp_dir().join(format!("clink-inbox-missing-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inbxo.db");
    for args in [&["stats"][..], &["list"], &["replay", "5"]] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_clink-webhook"))
            .args(["inbox", "--sqlite"])
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("no such file"), "{args:?}: {stderr}");
        assert!(!path.exists(), "{args:?} made the file");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `inbox --sqlite` given another app's SQLite file (or a file that is no
/// database) refuses it and leaves it as it was: no inbox table added, its
/// journal mode not switched to WAL.
#[cfg(all(feature = "sqlite", feature = "cli"))]
#[test]
fn the_cli_leaves_an_sqlite_file_that_is_no_inbox_as_it_was() {
    let dir = std::env::temp_dir().join(format!("clink-inbox-other-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.db");
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY);")
            .unwrap();
    }
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a database").unwrap();
    for file in [&path, &text] {
        for args in [&["stats"][..], &["list"], &["replay", "5"]] {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_clink-webhook"))
                .args(["inbox", "--sqlite"])
                .arg(file)
                .args(args)
                .output()
                .unwrap();
            assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains("not an inbox file"), "{args:?}: {stderr}");
        }
    }
    let db = rusqlite::Connection::open(&path).unwrap();
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["orders"]);
    let mode: String = db
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "not a database");
    drop(db);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A dry run of `replay` by filter reads the matching events a page at a
/// time (a dead backlog can be of any size) and still lists every one, in
/// order, leaving a pending one out.
#[cfg(all(feature = "sqlite", feature = "cli"))]
#[tokio::test]
async fn the_cli_dry_run_of_a_replay_by_filter_lists_a_backlog_of_several_pages() {
    let dir = std::env::temp_dir().join(format!("clink-inbox-pages-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inbox.db");
    let inbox = clink_webhooks::store::SqliteInbox::open(&path).unwrap();
    // Past two pages of the dry run's reading.
    let dead: u64 = 2_345;
    for n in 0..dead {
        let kept = event(&format!("evt_{n:05}"), None, 1);
        inbox.insert_dead(&kept, "provider down").await.unwrap();
    }
    inbox.insert(&event("evt_pending", None, 1)).await.unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_clink-webhook"))
        .args(["inbox", "--sqlite"])
        .arg(&path)
        .args(["replay", "--dry-run", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let listed: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["event_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..dead).map(|n| format!("evt_{n:05}")).collect();
    assert_eq!(listed, expected);
    let stats = inbox.stats().await.unwrap();
    assert_eq!(
        (stats.dead, stats.pending),
        (dead, 1),
        "a dry run changes nothing"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(all(feature = "sqlite", feature = "cli"))]
#[tokio::test]
async fn the_cli_replays_by_filter_refuses_handled_events_without_force_and_dry_runs_change_nothing(
) {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = std::env::temp_dir().join(format!("clink-inbox-replay-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inbox.db");
    let inbox = Arc::new(clink_webhooks::store::SqliteInbox::open(&path).unwrap());

    // Real workers over the file, counting each event's handler runs; while
    // the provider is down every handler but `evt_ok`'s fails, and one
    // attempt is all an event gets.
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let provider_down = Arc::new(AtomicBool::new(true));
    let (counted, down) = (Arc::clone(&runs), Arc::clone(&provider_down));
    let router = EventRouter::new().on_unhandled(move |event| {
        *counted
            .lock()
            .unwrap()
            .entry(event.id().to_owned())
            .or_default() += 1;
        let failed = event.id() != "evt_ok" && down.load(Ordering::SeqCst);
        std::future::ready(if failed {
            Err(std::io::Error::other("provider down"))
        } else {
            Ok(())
        })
    });
    let pool = Workers::new(Arc::clone(&inbox), router)
        .max_attempts(1)
        .and_then(|w| w.reorder_window(NO_REORDER_WINDOW))
        .unwrap()
        .spawn();
    let events = [
        kept(
            "evt_ok",
            "order.succeeded",
            None,
            Some("order:ord_ok"),
            "2025-01-05T00:00:00Z",
        ),
        kept(
            "evt_a1",
            "order.succeeded",
            Some("acct_a"),
            Some("acct_a/order:ord_1"),
            "2025-01-10T00:00:00Z",
        ),
        kept(
            "evt_a2",
            "refund.succeeded",
            Some("acct_a"),
            None,
            "2025-01-20T00:00:00Z",
        ),
        kept(
            "evt_b3",
            "order.succeeded",
            Some("acct_b"),
            Some("acct_b/order:ord_3"),
            "2025-02-10T00:00:00Z",
        ),
        kept(
            "evt_n4",
            "order.succeeded",
            None,
            Some("order:ord_4"),
            "2025-02-20T00:00:00Z",
        ),
    ];
    for event in &events {
        assert_eq!(inbox.insert(event).await.unwrap(), Inserted::New);
    }
    pool.drained(DRAIN_PATIENCE).await.unwrap();
    let all = inbox.list(&InboxFilter::default(), 10).await.unwrap();
    let seq = |id: &str| {
        all.iter()
            .find(|e| e.event.event_id == id)
            .map(|e| e.seq)
            .unwrap()
    };
    let ok = seq("evt_ok");
    assert_eq!(
        inbox.get(ok).await.unwrap().unwrap().status,
        InboxStatus::Done
    );
    assert_eq!(
        inbox
            .list(&InboxFilter::default().status(InboxStatus::Dead), 10)
            .await
            .unwrap()
            .len(),
        4
    );
    let runs_of = |id: &str| runs.lock().unwrap().get(id).copied().unwrap_or(0);
    for event in &events {
        assert_eq!(runs_of(&event.event_id), 1, "{}", event.event_id);
    }

    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_clink-webhook"))
            .arg("inbox")
            .arg("--sqlite")
            .arg(&path)
            .args(args)
            .output()
            .unwrap()
    };
    let ok_cli = |args: &[&str]| {
        let output = cli(args);
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    // The events a command printed as JSON lines, by id.
    let ids = |stdout: &str| -> Vec<String> {
        stdout
            .lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                value["event_id"].as_str().unwrap().to_owned()
            })
            .collect()
    };

    // A handled event is refused without --force, by number or by filter,
    // saying when it was handled; nothing changes and its handler does not run.
    let handled_at = inbox.get(ok).await.unwrap().unwrap().handled_at.unwrap();
    for args in [
        vec!["replay", &*ok.to_string(), "--json"],
        vec!["replay", "--status", "done", "--json"],
        vec!["replay", &*ok.to_string(), "--dry-run", "--json"],
    ] {
        let refused = cli(&args);
        assert_eq!(refused.status.code(), Some(1), "{args:?}: {refused:?}");
        let error: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&refused.stderr).trim()).unwrap();
        assert_eq!(error["error"], "refused", "{args:?}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("was handled at {handled_at}"))
                && message.contains("--force"),
            "{message}"
        );
    }
    pool.drained(DRAIN_PATIENCE).await.unwrap();
    let kept_ok = inbox.get(ok).await.unwrap().unwrap();
    assert_eq!((kept_ok.status, kept_ok.replays), (InboxStatus::Done, 0));
    assert_eq!(runs_of("evt_ok"), 1, "a refused replay ran the handler");
    // Neither a SEQ with filters nor --dead with another status makes sense.
    assert_eq!(cli(&["replay", "1", "--type", "x"]).status.code(), Some(2));
    assert_eq!(
        cli(&["replay", "--dead", "--status", "done"]).status.code(),
        Some(2)
    );
    assert_eq!(cli(&["list", "--from", "yesterday"]).status.code(), Some(2));
    // A table is a PostgreSQL inbox's: with --sqlite it is refused, not
    // ignored (a purge would act on the file's one table).
    let table = cli(&["--table", "other_inbox", "stats"]);
    assert_eq!(table.status.code(), Some(2), "{table:?}");
    assert!(
        String::from_utf8_lossy(&table.stderr).contains("--postgres"),
        "{table:?}"
    );
    // Epoch seconds, which as milliseconds would be January 1970 (and
    // replay nearly every dead event), are refused, saying so.
    let seconds = cli(&["replay", "--from", "1738368000"]);
    assert_eq!(seconds.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&seconds.stderr).contains("most likely epoch seconds"),
        "{seconds:?}"
    );

    // Each filter, on `list` and on a dry run (dead events by default),
    // picks the same events.
    let before = inbox.list(&InboxFilter::default(), 10).await.unwrap();
    let cases: [(&[&str], &[&str]); 9] = [
        (&[], &["evt_a1", "evt_a2", "evt_b3", "evt_n4"]),
        (&["--account", "acct_a"], &["evt_a1", "evt_a2"]),
        (&["--account", ""], &["evt_n4"]),
        (&["--type", "refund.succeeded"], &["evt_a2"]),
        (&["--object", "acct_a/order:ord_1"], &["evt_a1"]),
        (&["--from", "2025-02-01T00:00:00Z"], &["evt_b3", "evt_n4"]),
        (&["--from", "1738368000000"], &["evt_b3", "evt_n4"]),
        (&["--until", "2025-02-01T00:00:00Z"], &["evt_a1", "evt_a2"]),
        (
            &[
                "--from",
                "2025-01-15T00:00:00Z",
                "--until",
                "2025-02-15T00:00:00Z",
            ],
            &["evt_a2", "evt_b3"],
        ),
    ];
    for (filter, expected) in cases {
        let dry = [&["replay", "--dry-run", "--json"], filter].concat();
        assert_eq!(ids(&ok_cli(&dry)), expected, "{dry:?}");
        let dead = [&["list", "--status", "dead", "--json"], filter].concat();
        assert_eq!(ids(&ok_cli(&dead)), expected, "{dead:?}");
    }
    // `list` without a status takes every status; a dry run's text lines are
    // `list`'s.
    assert_eq!(
        ids(&ok_cli(&[
            "list",
            "--json",
            "--until",
            "2025-01-15T00:00:00Z"
        ])),
        ["evt_ok", "evt_a1"]
    );
    assert_eq!(
        ok_cli(&["replay", "--dry-run", "--account", "acct_b"]),
        ok_cli(&["list", "--status", "dead", "--account", "acct_b"])
    );
    // With --force a dry run lists handled events too.
    assert_eq!(
        ids(&ok_cli(&[
            "replay",
            "--status",
            "done",
            "--force",
            "--dry-run",
            "--json"
        ])),
        ["evt_ok"]
    );
    pool.drained(DRAIN_PATIENCE).await.unwrap();
    assert_eq!(
        inbox.list(&InboxFilter::default(), 10).await.unwrap(),
        before,
        "a dry run changed the inbox"
    );
    for event in &events {
        assert_eq!(runs_of(&event.event_id), 1, "{}", event.event_id);
    }

    // The provider is back: replays by filter run exactly the events matched.
    provider_down.store(false, Ordering::SeqCst);
    assert_eq!(
        ok_cli(&["replay", "--type", "refund.succeeded"]).trim(),
        "replayed 1"
    );
    pool.drained(DRAIN_PATIENCE).await.unwrap();
    assert_eq!(runs_of("evt_a2"), 2);
    // Only acct_a's dead event: its refund is done now.
    let replayed: serde_json::Value =
        serde_json::from_str(&ok_cli(&["replay", "--account", "acct_a", "--json"])).unwrap();
    assert_eq!(replayed["replayed"], 1);
    assert_eq!(replayed["seqs"], serde_json::json!([seq("evt_a1")]));
    assert_eq!(replayed["running_skipped"], 0);
    pool.drained(DRAIN_PATIENCE).await.unwrap();
    assert_eq!(ok_cli(&["replay", "--dead"]).trim(), "replayed 2");
    pool.drained(DRAIN_PATIENCE).await.unwrap();
    for id in ["evt_a1", "evt_a2", "evt_b3", "evt_n4"] {
        assert_eq!(runs_of(id), 2, "{id}");
    }
    assert_eq!(ok_cli(&["replay", "--dead"]).trim(), "replayed 0");

    // --force replays a handled event, and its handler runs once more.
    assert_eq!(
        ok_cli(&["replay", &ok.to_string(), "--force"]).trim(),
        "replayed 1"
    );
    pool.drained(DRAIN_PATIENCE).await.unwrap();
    assert_eq!(runs_of("evt_ok"), 2);
    pool.shutdown(Duration::from_secs(5)).await;

    // `show` says when it was handled and replayed, and the signing key.
    let shown = inbox.get(ok).await.unwrap().unwrap();
    let (handled_at, replayed_at) = (shown.handled_at.unwrap(), shown.last_replayed_at.unwrap());
    assert_eq!(shown.replays, 1);
    let json: serde_json::Value =
        serde_json::from_str(&ok_cli(&["show", &ok.to_string(), "--json"])).unwrap();
    assert_eq!(json["handled_at"], handled_at.to_string());
    assert_eq!(json["replays"], 1);
    assert_eq!(json["last_replayed_at"], replayed_at.to_string());
    assert_eq!(json["signing_key"], "key_2025");
    let text = ok_cli(&["show", &ok.to_string()]);
    assert!(
        text.contains(&format!("handled at {handled_at}"))
            && text.contains(&format!("replayed once, at {replayed_at}"))
            && text.contains("signing key key_2025"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An event whose every attempt ends with its lease (its worker crashed,
/// or its handler blocked the thread past the lease) is dead after the last
/// one, not run again and again; one that had more attempts than
/// `max_attempts` allows (it was lowered since) is dead too, and says so.
async fn attempts_lost_with_their_lease_count(inbox: impl Inbox + Clone) {
    for (id, lost_leases, says) in [
        ("evt_lost", 2, "ended with its lease"),
        (
            "evt_lowered",
            3,
            "it had 3 attempts, more than max_attempts (2)",
        ),
    ] {
        inbox.insert(&event(id, None, 1)).await.unwrap();
        let seq = seq_of(&inbox, id).await;
        // Attempts whose workers "crash": each claim lapses unsettled.
        let lease = Duration::from_millis(20);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut lost = 0;
        while lost < lost_leases {
            if inbox
                .claim(lease, NO_REORDER_WINDOW)
                .await
                .unwrap()
                .is_some()
            {
                lost += 1;
            }
            assert!(Instant::now() < deadline, "the lease never ended");
            // Waiting for the lease's deadline to pass: time, not another task.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let runs = Arc::new(Mutex::new(0));
        let seen = Arc::clone(&runs);
        let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |_event| {
            *seen.lock().unwrap() += 1;
            std::future::ready(Ok::<_, std::io::Error>(()))
        });
        let workers = Workers::new(inbox.clone(), router)
            .reorder_window(NO_REORDER_WINDOW)
            .and_then(|w| w.max_attempts(2))
            .unwrap()
            .spawn();
        workers.drained(DRAIN_PATIENCE).await.unwrap();
        workers.shutdown(Duration::from_secs(5)).await;
        let entry = inbox.get(seq).await.unwrap().unwrap();
        assert_eq!(entry.status, InboxStatus::Dead, "{entry:?}");
        assert_eq!(*runs.lock().unwrap(), 0, "not run after its last attempt");
        let error = entry.last_error.as_deref().unwrap_or_default();
        assert!(error.contains(says), "{error}");
        assert_eq!(
            outcomes(&entry)[..2],
            [
                (1, InboxAttemptOutcome::LeaseExpired),
                (2, InboxAttemptOutcome::LeaseExpired)
            ]
        );
    }
}

#[tokio::test]
async fn attempts_lost_with_their_lease_count_in_memory() {
    attempts_lost_with_their_lease_count(Arc::new(MemoryInbox::new())).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn attempts_lost_with_their_lease_count_on_postgres() {
    let _servers = crate::support::servers::shared().await;
    attempts_lost_with_their_lease_count(postgres_inbox().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_handler_whose_commit_fails_after_complete_in_has_its_attempts_counted_and_dies() {
    let _servers = crate::support::servers::shared().await;
    let inbox = postgres_inbox().await;
    let pool = pg_pool();
    let (parent, child) = (
        format!("parent_{}", unique()),
        format!("child_{}", unique()),
    );
    pool.get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE TABLE {parent} (id text PRIMARY KEY);
             CREATE TABLE {child} (parent_id text NOT NULL
                 REFERENCES {parent} (id) DEFERRABLE INITIALLY DEFERRED)"
        ))
        .await
        .unwrap();
    let (handler_inbox, handler_pool) = (inbox.clone(), pool.clone());
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |event| {
        let (inbox, pool, child) = (handler_inbox.clone(), handler_pool.clone(), child.clone());
        async move {
            let attempt = event.inbox_attempt().expect("run by the workers");
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            // No parent row: the deferred key fails at the commit, after
            // the completion was written in the same transaction.
            tx.execute(
                &format!("INSERT INTO {child} (parent_id) VALUES ('missing')"),
                &[],
            )
            .await?;
            assert_eq!(inbox.complete_in(&tx, attempt).await?, Settle::Applied);
            tx.commit().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }
    });
    let workers = Workers::new(inbox.clone(), router)
        .reorder_window(NO_REORDER_WINDOW)
        .and_then(|w| w.max_attempts(2))
        .and_then(|w| w.backoff(Duration::from_millis(1), Duration::from_millis(1)))
        .unwrap()
        .spawn();
    inbox
        .insert(&event("evt_fk", Some("ord_fk"), 1))
        .await
        .unwrap();
    let seq = seq_of(&inbox, "evt_fk").await;
    // Before, the failed commit was taken for a completion: the event sat
    // `running` until its lease (30 s) ended, with no error, and ran again
    // forever. `drained` returns once nothing is left to run.
    workers.drained(DRAIN_PATIENCE).await.unwrap();
    workers.shutdown(Duration::from_secs(5)).await;
    let entry = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(entry.status, InboxStatus::Dead, "{entry:?}");
    assert_eq!(entry.attempts, 2, "{entry:?}");
    let error = entry.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("foreign key"), "{error}");
    let kinds: Vec<_> = outcomes(&entry)
        .into_iter()
        .map(|(n, outcome)| (n, matches!(outcome, InboxAttemptOutcome::Failed { .. })))
        .collect();
    assert_eq!(kinds, [(1, true), (2, true)], "{entry:?}");
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_handler_committing_with_the_event_has_its_effects_once_even_if_it_then_crashes() {
    let _servers = crate::support::servers::shared().await;
    let inbox = postgres_inbox().await;
    let pool = pg_pool();
    let table = format!("paid_{}", unique());
    pool.get()
        .await
        .unwrap()
        .batch_execute(&format!("CREATE TABLE {table} (order_id text NOT NULL)"))
        .await
        .unwrap();
    let runs = Arc::new(Mutex::new(0));
    let (runs_seen, handler_inbox, handler_pool, handler_table) = (
        Arc::clone(&runs),
        inbox.clone(),
        pool.clone(),
        table.clone(),
    );
    let router = EventRouter::new().on::<events::OrderSucceeded, _>(move |event| {
        let (inbox, pool, table, runs) = (
            handler_inbox.clone(),
            handler_pool.clone(),
            handler_table.clone(),
            Arc::clone(&runs_seen),
        );
        async move {
            *runs.lock().unwrap() += 1;
            let mut client = pool.get().await.unwrap();
            let tx = client.transaction().await.unwrap();
            let order = event.data.order_id.clone().unwrap_or_default();
            tx.execute(
                &format!("INSERT INTO {table} (order_id) VALUES ($1)"),
                &[&order],
            )
            .await
            .unwrap();
            let attempt = event.inbox_attempt().expect("run by the workers");
            assert_eq!(
                inbox.complete_in(&tx, attempt).await.unwrap(),
                Settle::Applied
            );
            tx.commit().await.unwrap();
            // Committed, then the process "crashes" before answering.
            panic!("after the commit");
            #[allow(unreachable_code)]
            Ok::<_, std::io::Error>(())
        }
    });
    let pool_handle = Workers::new(inbox.clone(), router)
        .reorder_window(NO_REORDER_WINDOW)
        .and_then(|w| w.backoff(Duration::from_millis(1), Duration::from_millis(1)))
        .unwrap()
        .spawn();
    inbox
        .insert(&event("evt_tx", Some("ord_tx"), 1))
        .await
        .unwrap();
    pool_handle.drained(DRAIN_PATIENCE).await.unwrap();
    let done = inbox
        .list(&InboxFilter::default().status(InboxStatus::Done), 10)
        .await
        .unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    let seq = done[0].seq;
    pool_handle.shutdown(Duration::from_secs(5)).await;
    let entry = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(entry.attempts, 1);
    assert_eq!(
        outcomes(&entry),
        [(1, InboxAttemptOutcome::Completed)],
        "completed in the handler's transaction, recorded with it"
    );
    assert_eq!(
        *runs.lock().unwrap(),
        1,
        "the panic after the commit did not run it again"
    );
    let rows: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

/// A replay (one event, a pinned one, or a filter's) wakes a worker of
/// this process waiting for work: the event runs at once, not at the
/// worker's next look. PostgreSQL's did not (memory's and SQLite's did).
async fn a_replay_wakes_a_waiting_worker(inbox: impl Inbox + Clone + 'static) {
    let dead = |id: &str| event(id, Some(id), 1);
    for (n, id) in ["evt_wake_one", "evt_wake_pinned", "evt_wake_filter"]
        .into_iter()
        .enumerate()
    {
        inbox.insert_dead(&dead(id), "dead: a test").await.unwrap();
        let seq = seq_of(&inbox, id).await;
        // A wake-up left by the insert is taken first.
        inbox.wait(Duration::ZERO).await;
        let waiting = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.wait(Duration::from_secs(3600)).await }
        });
        match n {
            0 => assert_eq!(inbox.replay(seq, false).await.unwrap(), Replayed::Replayed),
            1 => {
                let entry = inbox.get(seq).await.unwrap().unwrap();
                let pin = ReplayPin::of(&entry);
                assert_eq!(
                    inbox.replay_if(seq, &pin).await.unwrap(),
                    Replayed::Replayed
                );
            }
            _ => {
                let filter = InboxFilter::default().status(InboxStatus::Dead);
                assert_eq!(inbox.replay_matching(&filter, false).await.unwrap(), [seq]);
            }
        }
        tokio::time::timeout(crate::support::process::PATIENCE, waiting)
            .await
            .unwrap_or_else(|_| panic!("{id}: the replay woke no waiting worker"))
            .unwrap();
    }
}

#[tokio::test]
async fn a_replay_wakes_a_waiting_worker_in_memory() {
    a_replay_wakes_a_waiting_worker(Arc::new(MemoryInbox::new())).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_replay_wakes_a_waiting_worker_in_sqlite() {
    let dir = temp_dir();
    let inbox = clink_webhooks::store::SqliteInbox::open(dir.join("inbox.db")).unwrap();
    a_replay_wakes_a_waiting_worker(inbox).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_replay_wakes_a_waiting_worker_on_postgres() {
    let _servers = crate::support::servers::shared().await;
    a_replay_wakes_a_waiting_worker(postgres_inbox().await).await;
}
