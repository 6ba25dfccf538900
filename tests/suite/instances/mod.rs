//! Several receivers sharing one store server, over real HTTP and real
//! servers: each event's handler runs once however the deliveries spread,
//! nothing is lost when the server crashes and comes back, and a handler
//! slower than its lease never runs twice at once.
//!
//! Redis tests need `REDIS_URL`, PostgreSQL tests `DATABASE_URL`, and the
//! crash tests the control scripts `scripts/test` exports
//! (`CLINK_TEST_REDIS_KILL`, `CLINK_TEST_REDIS_START`, `CLINK_TEST_PG_KILL`,
//! `CLINK_TEST_PG_START`); a test missing one fails and says so. Tests that
//! use a server hold the servers [exclusively](crate::support::servers::exclusive):
//! they run one at a time, and beside no other test that uses a server, since
//! the crash tests take it down.

mod receivers;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clink_webhooks::store::{IdempotencyStore, MemoryStore, DEFAULT_LEASE};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::support::servers::exclusive;
use receivers::{
    deliver_until_acknowledged, is_completed, layer_key, receiver, send_once, unique_prefix,
    wait_for, Handler, Ledger, Statuses,
};

/// A fresh client of a shared store (each receiver gets its own).
type Connect = fn() -> Pin<Box<dyn Future<Output = Arc<dyn IdempotencyStore>> + Send>>;

/// A store server the tests share, crash and bring back.
struct Server {
    connect: Connect,
    /// The variable naming the script that crashes the server.
    kill: &'static str,
    /// The variable naming the script that starts it again.
    start: &'static str,
}

#[cfg(feature = "redis")]
const REDIS: Server = Server {
    connect: || Box::pin(crate::support::stores::redis()),
    kill: "CLINK_TEST_REDIS_KILL",
    start: "CLINK_TEST_REDIS_START",
};

#[cfg(feature = "postgres")]
const POSTGRES: Server = Server {
    connect: || Box::pin(crate::support::stores::postgres()),
    kill: "CLINK_TEST_PG_KILL",
    start: "CLINK_TEST_PG_START",
};

impl Server {
    async fn clients(&self) -> [Arc<dyn IdempotencyStore>; 2] {
        [(self.connect)().await, (self.connect)().await]
    }
}

/// Runs the control script named by `var` and waits for it to finish.
async fn control(var: &str) {
    let script = std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: the crash tests need the server control scripts that \
             scripts/test (or scripts/with-services) exports"
        )
    });
    let status = tokio::process::Command::new(&script)
        .status()
        .await
        .unwrap_or_else(|err| panic!("cannot run {var} ({script}): {err}"));
    assert!(status.success(), "{var} ({script}) failed: {status}");
}

/// Two receivers, each with its own client of one store: 500 deliveries of
/// 100 event ids, the copies of an id side by side and spread over both
/// receivers, 32 at a time. Each id's handler must run `runs_per_id` times.
async fn deliveries_spread_over_two_receivers(
    stores: [Arc<dyn IdempotencyStore>; 2],
    runs_per_id: u32,
) {
    const EVENTS: usize = 100;
    const COPIES: usize = 5;
    const CONCURRENCY: usize = 32;

    let ledger = Arc::new(Ledger::default());
    let prefix = unique_prefix("spread");
    let handler = Handler::reliable(&ledger, Duration::from_millis(20));
    let mut receivers = Vec::new();
    for store in stores {
        receivers.push(receiver(store, &prefix, DEFAULT_LEASE, handler.clone()).await);
    }

    let statuses = Arc::new(Statuses::default());
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let deliveries: Vec<_> = (0..EVENTS * COPIES)
        .map(|k| {
            let (statuses, permits) = (Arc::clone(&statuses), Arc::clone(&permits));
            let addr = receivers[k % receivers.len()];
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.expect("semaphore");
                send_once(addr, &format!("evt_{}", k / COPIES), &statuses).await;
            })
        })
        .collect();
    for delivery in deliveries {
        delivery.await.expect("delivery task");
    }

    let unexpected = statuses.unexpected(&[200, 409]);
    assert!(
        unexpected.is_empty(),
        "statuses other than 200/409: {unexpected:?}"
    );
    assert!(
        statuses.count(409) > 0,
        "no delivery ever met another in flight"
    );
    for i in 0..EVENTS {
        let runs = ledger.runs(&format!("evt_{i}"));
        assert_eq!(runs.started, runs_per_id, "evt_{i}: {runs:?}");
        assert_eq!(runs.succeeded, runs_per_id, "evt_{i}: {runs:?}");
    }
    let total = u32::try_from(EVENTS).expect("small") * runs_per_id;
    assert_eq!(ledger.total_started(), total);
}

/// The control: receivers with a store each (as two instances with
/// `MemoryStore` would be) run events twice, and the count above sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_memory_stores_run_events_twice() {
    let stores: [Arc<dyn IdempotencyStore>; 2] =
        [Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new())];
    deliveries_spread_over_two_receivers(stores, 2).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_receivers_sharing_redis_run_each_event_once() {
    let _servers = exclusive().await;
    deliveries_spread_over_two_receivers(REDIS.clients().await, 1).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_receivers_sharing_postgres_run_each_event_once() {
    let _servers = exclusive().await;
    deliveries_spread_over_two_receivers(POSTGRES.clients().await, 1).await;
}

/// Fails every run of a poison event, and the first run of every tenth event.
fn flaky(id: &str, attempt: u32) -> bool {
    id.starts_with("poison") || (id.ends_with('0') && attempt == 1)
}

/// Clink-like senders deliver 400 events (and 5 poison ones whose handler
/// always fails) through two receivers while the store server crashes and
/// comes back. Every event ends handled and acknowledged, the outage is
/// answered 503, no handler runs beside itself, and no poison event is
/// marked completed.
async fn crash_loses_nothing(server: &Server) {
    const EVENTS: usize = 400;
    const POISON: usize = 5;
    const CONCURRENCY: usize = 32;
    let _servers = exclusive().await;

    let ledger = Arc::new(Ledger::default());
    let prefix = unique_prefix("crash");
    let handler = Handler {
        ledger: Arc::clone(&ledger),
        work: Duration::from_millis(50),
        fails: flaky,
    };
    let lease = Duration::from_secs(2);
    let mut receivers = Vec::new();
    for store in server.clients().await {
        receivers.push(receiver(store, &prefix, lease, handler.clone()).await);
    }
    let receivers = Arc::new(receivers);

    let ids: Arc<Vec<String>> = Arc::new(
        (0..EVENTS)
            .map(|i| format!("evt_{i}"))
            .chain((0..POISON).map(|i| format!("poison_{i}")))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let statuses = Arc::new(Statuses::default());
    let deadline = Instant::now() + Duration::from_secs(90);
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (ids, next, receivers) =
                (Arc::clone(&ids), Arc::clone(&next), Arc::clone(&receivers));
            let (acknowledged, statuses) = (Arc::clone(&acknowledged), Arc::clone(&statuses));
            tokio::spawn(async move {
                while let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if deliver_until_acknowledged(&receivers, id, &statuses, 3, deadline).await {
                        acknowledged
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(id.clone());
                    }
                }
            })
        })
        .collect();

    let patience = Duration::from_secs(30);
    wait_for("a quarter of the events", patience, || {
        statuses.acknowledged() >= u32::try_from(EVENTS / 4).unwrap_or(u32::MAX)
    })
    .await;
    control(server.kill).await;
    let before = statuses.count(503);
    wait_for("deliveries answered 503", patience, || {
        statuses.count(503) >= before + 10
    })
    .await;
    control(server.start).await;
    for worker in workers {
        worker.await.expect("sender task");
    }

    let unexpected = statuses.unexpected(&[200, 409, 500, 503]);
    assert!(unexpected.is_empty(), "unexpected statuses: {unexpected:?}");
    let acknowledged = acknowledged
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for id in &ids[..EVENTS] {
        assert!(
            acknowledged.contains(id),
            "{id} was never acknowledged (lost)"
        );
        let runs = ledger.runs(id);
        assert!(
            runs.succeeded >= 1,
            "{id} acknowledged but never handled: {runs:?}"
        );
    }
    if let Some(id) = ledger.any_overlap() {
        panic!("{id}: two runs at once");
    }
    let probe = (server.connect)().await;
    for id in &ids[EVENTS..] {
        assert!(
            !acknowledged.contains(id),
            "{id} acknowledged though its handler always fails"
        );
        assert_eq!(ledger.runs(id).succeeded, 0);
        let key = layer_key(&prefix, id);
        assert!(!is_completed(&*probe, &key).await, "{id} marked completed");
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_run_loses_nothing() {
    crash_loses_nothing(&REDIS).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crashed_mid_run_loses_nothing() {
    crash_loses_nothing(&POSTGRES).await;
}

/// A handler that takes 5 s under a 1 s lease, while senders keep
/// delivering its event to two receivers for 3.5 s: the layer cuts each run
/// off inside the lease, so runs follow each other and never overlap.
async fn slow_handler_never_runs_twice_at_once(stores: [Arc<dyn IdempotencyStore>; 2]) {
    const SENDERS: usize = 8;
    let ledger = Arc::new(Ledger::default());
    let prefix = unique_prefix("slow");
    let handler = Handler::reliable(&ledger, Duration::from_secs(5));
    let lease = Duration::from_secs(1);
    let mut receivers = Vec::new();
    for store in stores {
        receivers.push(receiver(store, &prefix, lease, handler.clone()).await);
    }

    let statuses = Arc::new(Statuses::default());
    let until = Instant::now() + Duration::from_millis(3500);
    let senders: Vec<_> = (0..SENDERS)
        .map(|n| {
            let (statuses, receivers) = (Arc::clone(&statuses), receivers.clone());
            tokio::spawn(async move {
                for attempt in n.. {
                    if Instant::now() >= until {
                        break;
                    }
                    let addr = receivers[attempt % receivers.len()];
                    let (status, retry_after) = send_once(addr, "evt_slow", &statuses).await;
                    if status == 409 {
                        tokio::time::sleep(retry_after / 10).await;
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("sender task");
    }

    let runs = ledger.runs("evt_slow");
    assert!(!runs.overlapped, "two runs at once: {runs:?}");
    assert!(
        runs.started >= 3,
        "runs were not cut off and retried: {runs:?}"
    );
    assert_eq!(runs.succeeded, 0);
    let unexpected = statuses.unexpected(&[409, 500]);
    assert!(unexpected.is_empty(), "unexpected statuses: {unexpected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_handler_with_memory_store_never_runs_twice_at_once() {
    let store: Arc<dyn IdempotencyStore> = Arc::new(MemoryStore::new());
    slow_handler_never_runs_twice_at_once([Arc::clone(&store), store]).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_handler_with_redis_never_runs_twice_at_once() {
    let _servers = exclusive().await;
    slow_handler_never_runs_twice_at_once(REDIS.clients().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_handler_with_postgres_never_runs_twice_at_once() {
    let _servers = exclusive().await;
    slow_handler_never_runs_twice_at_once(POSTGRES.clients().await).await;
}
