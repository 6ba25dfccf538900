//! One conformance suite, run with the same code against every store:
//! `MemoryStore` and `MemoryStore`, and with their features
//! `RedisStore` (needs `REDIS_URL`, Redis 7, and `VALKEY_URL`, a server
//! whose `SET` takes `IFEQ`) and `PostgresStore` (needs
//! `DATABASE_URL`), each as an idempotency store and as a freshness store
//! (the cases in `freshness.rs`). A test whose server URL is missing fails;
//! it never passes without its server. Tests on a server hold it
//! [shared](crate::support::servers::shared).
//!
//! Waiting in these tests is for a store's deadline (a lease or retention
//! ending), polled or led by the store's own `retry_after`, never a sleep
//! standing in for synchronisation.

mod freshness;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis-cluster")]
mod redis_cluster;
#[cfg(feature = "redis-tls")]
mod redis_tls;

use std::sync::Arc;
use std::time::Duration;

use clink_webhooks::store::{
    Claim, IdempotencyStore, LeaseToken, Settle, StoreErrorKind, DEFAULT_LEASE, DEFAULT_RETENTION,
    MAX_KEY_LEN,
};
use tokio::time::Instant;

use crate::support::stores::{claimed, in_flight, Keys};
use freshness::{
    an_older_version_never_replaces_a_newer, concurrent_records_keep_the_newest,
    equal_created_times_compare_ids_byte_wise, out_of_range_input_is_refused,
    records_expire_after_their_retention, records_keep_the_newest_per_object,
};

/// Short enough to wait for, long enough to outlast a few calls on a busy machine.
const SHORT: Duration = Duration::from_millis(300);

/// What the stores' millisecond clocks may differ from the test's by.
const CLOCK_SLACK: Duration = Duration::from_millis(5);

/// How long a test waits for a deadline before failing. It only bounds a
/// hang (a deadline that never ends), so it is far longer than the
/// deadlines waited for, however slow the machine.
const PATIENCE: Duration = Duration::from_secs(300);

/// Instantiates every case for one store: the idempotency cases, where
/// `$open` makes a fresh store, or with `freshness` the freshness cases,
/// where `$open` makes a fresh store with the retention it is given.
/// `$servers` is `memory` for a store in memory, or `servers` for one on a
/// server, whose tests hold the servers shared.
macro_rules! conformance {
    (freshness $open:path, $servers:ident) => {
        conformance!(@cases $open, $servers;
            records_keep_the_newest_per_object,
            an_older_version_never_replaces_a_newer,
            equal_created_times_compare_ids_byte_wise,
            concurrent_records_keep_the_newest,
            records_expire_after_their_retention,
            out_of_range_input_is_refused,
        );
    };
    ($open:path, $servers:ident) => {
        conformance!(@cases $open().await, $servers;
            state_machine,
            concurrent_claims_have_one_winner,
            expired_lease_is_taken_over,
            ended_lease_cannot_be_settled,
            released_key_is_claimed_again,
            completed_stays_completed_until_retention_ends,
            stale_tokens_are_refused,
            keys_are_opaque,
            bad_arguments_are_refused,
        );
    };
    (@cases $subject:expr, $servers:ident; $($case:ident,)+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                // Keys unique per store too: two stores may share a server.
                let keys = Keys::new(concat!(module_path!(), "::", stringify!($case)));
                conformance!(@run $servers, super::$case($subject, keys));
            }
        )+
    };
    (@run memory, $case:expr) => {
        $case.await
    };
    (@run servers, $case:expr) => {
        let _servers = crate::support::servers::shared().await;
        $case.await
    };
}

mod memory {
    use crate::support::stores::{memory, memory_freshness, Keys};

    conformance!(memory, memory);
    conformance!(freshness memory_freshness, memory);
}

#[cfg(feature = "redis")]
mod redis_conformance {
    use crate::support::stores::{redis, redis_freshness, Keys};

    conformance!(redis, servers);
    conformance!(freshness redis_freshness, servers);
}

/// The same store on a server whose `SET` takes `IFEQ`, where it completes
/// with that native command instead of a script.
#[cfg(feature = "redis")]
mod valkey_conformance {
    use crate::support::stores::{valkey, valkey_freshness, Keys};

    conformance!(valkey, servers);
    conformance!(freshness valkey_freshness, servers);
}

#[cfg(feature = "postgres")]
mod postgres_conformance {
    use crate::support::stores::{postgres, postgres_freshness, Keys};

    conformance!(postgres, servers);
    conformance!(freshness postgres_freshness, servers);
}

#[cfg(feature = "redis-tls")]
mod redis_tls_conformance {
    use super::redis_tls::{freshness_store, store};
    use crate::support::stores::Keys;

    conformance!(store, servers);
    conformance!(freshness freshness_store, servers);
}

#[cfg(feature = "redis-cluster")]
mod redis_cluster_conformance {
    use super::redis_cluster::{freshness_store, store};
    use crate::support::stores::Keys;

    conformance!(store, servers);
    conformance!(freshness freshness_store, servers);
}

#[cfg(all(feature = "redis-cluster", feature = "redis-tls"))]
mod redis_cluster_tls_conformance {
    use super::redis_cluster::{tls_freshness_store, tls_store};
    use crate::support::stores::Keys;

    conformance!(tls_store, servers);
    conformance!(freshness tls_freshness_store, servers);
}

/// Every transition of the state machine in the module docs, one at a time.
async fn state_machine(store: Arc<dyn IdempotencyStore>, keys: Keys) {
    let key = keys.key("event");

    // absent -> claimed
    let token = claimed(store.claim(&key, DEFAULT_LEASE).await);
    // claimed, lease live -> InFlight with the lease's time left
    let left = in_flight(store.claim(&key, DEFAULT_LEASE).await);
    assert!(left > Duration::ZERO && left <= DEFAULT_LEASE, "{left:?}");
    // claimed -> completed
    let done = store.complete(&key, &token, DEFAULT_RETENTION).await;
    assert_eq!(done.ok(), Some(Settle::Applied));
    // completed, retention live -> Completed, again and again
    for _ in 0..3 {
        assert_eq!(
            store.claim(&key, DEFAULT_LEASE).await.ok(),
            Some(Claim::Completed)
        );
    }
    // A spent token settles nothing, and the key stays completed.
    let again = store.complete(&key, &token, DEFAULT_RETENTION).await;
    assert_eq!(again.ok(), Some(Settle::LeaseLost));
    assert_eq!(
        store.release(&key, &token).await.ok(),
        Some(Settle::LeaseLost)
    );
    assert_eq!(
        store.claim(&key, DEFAULT_LEASE).await.ok(),
        Some(Claim::Completed)
    );

    // claimed -> released -> absent: the retry runs the handler.
    let failing = keys.key("failing");
    let first = claimed(store.claim(&failing, DEFAULT_LEASE).await);
    assert_eq!(
        store.release(&failing, &first).await.ok(),
        Some(Settle::Applied)
    );
    let retry = claimed(store.claim(&failing, DEFAULT_LEASE).await);
    assert_ne!(first, retry);

    // Settling a key nobody claimed changes nothing.
    let never = keys.key("never claimed");
    let complete = store.complete(&never, &retry, DEFAULT_RETENTION).await;
    assert_eq!(complete.ok(), Some(Settle::LeaseLost));
    assert_eq!(
        store.release(&never, &retry).await.ok(),
        Some(Settle::LeaseLost)
    );
    claimed(store.claim(&never, DEFAULT_LEASE).await);
}

/// 1,000 simultaneous claims of one key: exactly one wins, the rest are told
/// it is in flight, and none fails.
async fn concurrent_claims_have_one_winner(store: Arc<dyn IdempotencyStore>, keys: Keys) {
    const CLAIMS: usize = 1000;
    let key: Arc<str> = keys.key("contended").into();
    let start = Arc::new(tokio::sync::Barrier::new(CLAIMS));
    let tasks: Vec<_> = (0..CLAIMS)
        .map(|_| {
            let (store, key, start) = (Arc::clone(&store), Arc::clone(&key), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                store.claim(&key, DEFAULT_LEASE).await
            })
        })
        .collect();

    let mut winners = Vec::new();
    let mut busy = 0;
    for task in tasks {
        match task.await.expect("claim task") {
            Ok(Claim::Claimed(token)) => winners.push(token),
            Ok(Claim::InFlight { .. }) => busy += 1,
            other => panic!("unexpected answer under contention: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{} winners", winners.len());
    assert_eq!(busy, CLAIMS - 1);
    // The winner really holds the key.
    let done = store.complete(&key, &winners[0], DEFAULT_RETENTION).await;
    assert_eq!(done.ok(), Some(Settle::Applied));
}

/// A claim whose holder went silent is taken over when its lease ends, not
/// before, and the old holder's token is then stale.
async fn expired_lease_is_taken_over(store: Arc<dyn IdempotencyStore>, keys: Keys) {
    let key = keys.key("abandoned");
    let start = Instant::now();
    let old = claimed(store.claim(&key, SHORT).await);

    // Follow the store's retry_after, as a retrying sender would.
    let new = loop {
        assert!(start.elapsed() < PATIENCE, "the lease never ended");
        match store.claim(&key, DEFAULT_LEASE).await {
            Ok(Claim::InFlight { retry_after }) => {
                assert!(retry_after <= SHORT, "{retry_after:?}");
                tokio::time::sleep(retry_after.max(Duration::from_millis(1))).await;
            }
            Ok(Claim::Claimed(token)) => break token,
            other => panic!("expected InFlight or Claimed, got {other:?}"),
        }
    };
    let taken_after = start.elapsed();
    assert!(
        taken_after + CLOCK_SLACK >= SHORT,
        "taken over after {taken_after:?}"
    );
    assert_ne!(old, new);

    // The old holder can neither complete nor release the new claim.
    let late = store.complete(&key, &old, DEFAULT_RETENTION).await;
    assert_eq!(late.ok(), Some(Settle::LeaseLost));
    assert_eq!(
        store.release(&key, &old).await.ok(),
        Some(Settle::LeaseLost)
    );
    in_flight(store.claim(&key, DEFAULT_LEASE).await);
    let done = store.complete(&key, &new, DEFAULT_RETENTION).await;
    assert_eq!(done.ok(), Some(Settle::Applied));
    assert_eq!(
        store.claim(&key, DEFAULT_LEASE).await.ok(),
        Some(Claim::Completed)
    );
}

/// Once its lease has ended, a token is stale even if nobody took the key
/// over: it can neither complete nor release, and the key reads as absent.
async fn ended_lease_cannot_be_settled(store: Arc<dyn IdempotencyStore>, keys: Keys) {
    let completing = keys.key("completed late");
    let releasing = keys.key("released late");
    let late_complete = claimed(store.claim(&completing, SHORT).await);
    let late_release = claimed(store.claim(&releasing, SHORT).await);
    // Nothing to poll without claiming (which would take the key over), so
    // wait out the deadline itself.
    tokio::time::sleep(SHORT + 2 * CLOCK_SLACK).await;

    let done = store
        .complete(&completing, &late_complete, DEFAULT_RETENTION)
        .await;
    assert_eq!(done.ok(), Some(Settle::LeaseLost));
    let released = store.release(&releasing, &late_release).await;
    assert_eq!(released.ok(), Some(Settle::LeaseLost));
    claimed(store.claim(&completing, DEFAULT_LEASE).await);
    claimed(store.claim(&releasing, DEFAULT_LEASE).await);
}

/// A released key is claimable at once by the next delivery.
async fn released_key_is_claimed_again(store: Arc<dyn IdempotencyStore>, keys: Keys) {
    let key = keys.key("handler failed");
    let first = claimed(store.claim(&key, DEFAULT_LEASE).await);
    assert_eq!(
        store.release(&key, &first).await.ok(),
        Some(Settle::Applied)
    );

    let second = claimed(store.claim(&key, DEFAULT_LEASE).await);
    assert_ne!(first, second);
    // The first token does not reach the second claim.
    assert_eq!(
        store.release(&key, &first).await.ok(),
        Some(Settle::LeaseLost)
    );
    in_flight(store.claim(&key, DEFAULT_LEASE).await);
    let done = store.complete(&key, &second, DEFAULT_RETENTION).await;
    assert_eq!(done.ok(), Some(Settle::Applied));
}

/// A completed key answers `Completed` for its whole retention, then is
/// claimable again.
async fn completed_stays_completed_until_retention_ends(
    store: Arc<dyn IdempotencyStore>, keys: Keys,
) {
    let key = keys.key("done");
    let token = claimed(store.claim(&key, DEFAULT_LEASE).await);
    let start = Instant::now();
    assert_eq!(
        store.complete(&key, &token, SHORT).await.ok(),
        Some(Settle::Applied)
    );

    loop {
        let answer = store.claim(&key, DEFAULT_LEASE).await;
        let at = start.elapsed();
        assert!(at < PATIENCE, "the retention never ended");
        match answer {
            Ok(Claim::Completed) => tokio::time::sleep(Duration::from_millis(10)).await,
            Ok(Claim::Claimed(_)) => {
                assert!(at + CLOCK_SLACK >= SHORT, "forgotten after {at:?}");
                break;
            }
            other => panic!("expected Completed or Claimed, got {other:?}"),
        }
    }
}

/// Tokens that do not hold a live lease on the key are refused with
/// `LeaseLost` and change nothing.
async fn stale_tokens_are_refused(store: Arc<dyn IdempotencyStore>, keys: Keys) {
    let key = keys.key("held");
    let other_key = keys.key("other");
    let holder = claimed(store.claim(&key, DEFAULT_LEASE).await);
    let other = claimed(store.claim(&other_key, DEFAULT_LEASE).await);
    let forged = LeaseToken::generate();

    for stale in [&forged, &other] {
        let complete = store.complete(&key, stale, DEFAULT_RETENTION).await;
        assert_eq!(complete.ok(), Some(Settle::LeaseLost));
        assert_eq!(
            store.release(&key, stale).await.ok(),
            Some(Settle::LeaseLost)
        );
    }
    // Still claimed by the holder, who can still settle.
    in_flight(store.claim(&key, DEFAULT_LEASE).await);
    assert_eq!(
        store.release(&key, &holder).await.ok(),
        Some(Settle::Applied)
    );
    // The other key was not touched either.
    in_flight(store.claim(&other_key, DEFAULT_LEASE).await);
    let done = store.complete(&other_key, &other, DEFAULT_RETENTION).await;
    assert_eq!(done.ok(), Some(Settle::Applied));
}

/// Keys are opaque text: no character is special and near-identical keys are
/// distinct; keys out of range are refused alike by every store.
async fn keys_are_opaque(store: Arc<dyn IdempotencyStore>, keys: Keys) {
    let base = keys.key("");
    let fill = MAX_KEY_LEN - base.len();
    let odd = [
        keys.key("a"),
        keys.key("A"),
        keys.key("a "),
        keys.key("évènement ✓ 事件"),
        keys.key("quote ' \" ; -- drop table x"),
        keys.key("glob * ? [a-z] % _ \\"),
        keys.key("line\nbreak\ttab"),
        keys.key(&"x".repeat(fill)),
    ];
    for key in &odd {
        let token = claimed(store.claim(key, DEFAULT_LEASE).await);
        assert_eq!(
            store.complete(key, &token, DEFAULT_RETENTION).await.ok(),
            Some(Settle::Applied)
        );
    }
    for key in &odd {
        assert_eq!(
            store.claim(key, DEFAULT_LEASE).await.ok(),
            Some(Claim::Completed),
            "{key:?}"
        );
    }

    for bad in [keys.key(&"x".repeat(fill + 1)), keys.key("nul\0byte")] {
        let err = store
            .claim(&bad, DEFAULT_LEASE)
            .await
            .expect_err("out of range key");
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    }
}

/// Durations out of range are refused and leave the key as it was.
async fn bad_arguments_are_refused(store: Arc<dyn IdempotencyStore>, keys: Keys) {
    let key = keys.key("event");
    let err = store
        .claim(&key, Duration::ZERO)
        .await
        .expect_err("zero lease");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("lease"), "{err}");

    let token = claimed(store.claim(&key, DEFAULT_LEASE).await);
    let forever = Duration::from_secs(100 * 365 * 24 * 3600);
    let err = store
        .complete(&key, &token, forever)
        .await
        .expect_err("endless retention");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    in_flight(store.claim(&key, DEFAULT_LEASE).await);
    assert_eq!(
        store.complete(&key, &token, SHORT).await.ok(),
        Some(Settle::Applied)
    );
}

/// A full memory store that makes room by forgetting a handled event
/// before its retention ended (a retry of it would run its handler again)
/// says so at `warn`, with how many it forgot and its capacity; at most
/// once a minute, however many follow.
#[tokio::test]
async fn a_full_memory_store_says_it_forgot_handled_events_early() {
    let (captured, _guard) = crate::support::capture::capture();
    let store = clink_webhooks::MemoryStore::new().with_capacity(1).unwrap();
    let warned = || {
        captured
            .events()
            .into_iter()
            .filter(|event| event.message.contains("forgot handled events"))
            .collect::<Vec<_>>()
    };
    let token = claimed(store.claim("evt_1", DEFAULT_LEASE).await);
    assert_eq!(
        store
            .complete("evt_1", &token, DEFAULT_RETENTION)
            .await
            .ok(),
        Some(Settle::Applied)
    );
    assert!(warned().is_empty(), "nothing forgotten yet");
    // The second key takes the first's place, its retention running.
    let token = claimed(store.claim("evt_2", DEFAULT_LEASE).await);
    let said = warned();
    assert_eq!(said.len(), 1, "{said:?}");
    assert_eq!(said[0].fields["forgotten"], "1");
    assert_eq!(said[0].fields["capacity"], "1");
    // Forgotten indeed: a retry of evt_1 would be claimed anew.
    assert_eq!(
        store
            .complete("evt_2", &token, DEFAULT_RETENTION)
            .await
            .ok(),
        Some(Settle::Applied)
    );
    claimed(store.claim("evt_1", DEFAULT_LEASE).await);
    assert_eq!(warned().len(), 1, "told once a minute at most");
}
