//! Several receivers sharing one store server, over real HTTP and real
//! servers: each event's handler runs once however the deliveries spread;
//! when the server crashes mid-run and comes back, nothing is lost, and on a
//! durable server (Redis with `appendonly yes` and `appendfsync always`,
//! PostgreSQL with fsync on) each event's handler still runs exactly once;
//! and a handler slower than its lease never runs twice at once.
//!
//! Redis tests need `REDIS_URL`, PostgreSQL tests `DATABASE_URL`, the
//! durable crash tests `REDIS_DURABLE_URL` and `DATABASE_DURABLE_URL`, and
//! the crash tests the control scripts `scripts/test` exports
//! (`CLINK_TEST_REDIS_KILL`, `CLINK_TEST_REDIS_START`, and the
//! `CLINK_TEST_REDIS_DURABLE_*` and `CLINK_TEST_PG_DURABLE_*` pairs); a test
//! missing one fails and says so. Tests that use the shared servers hold
//! them [exclusively](crate::support::servers::exclusive): they run one at a
//! time, and beside no other test that uses a server, since a crash test
//! takes one down. The durable servers serve these tests alone, each held
//! by one test at a time.

mod receivers;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use clink_webhooks::store::{IdempotencyStore, MemoryStore, DEFAULT_LEASE};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

#[cfg(feature = "postgres")]
use crate::support::servers::durable_postgres;
#[cfg(feature = "redis")]
use crate::support::servers::durable_redis;
use crate::support::servers::exclusive;
use receivers::{
    clink_sender, is_completed, layer_key, receiver, send_noting_outcome, send_once, unique_prefix,
    wait_for, Handler, Ledger, Statuses,
};

/// A fresh client of a shared store (each receiver gets its own).
type Connect = fn() -> Pin<Box<dyn Future<Output = Arc<dyn IdempotencyStore>> + Send>>;

/// A store server the tests share, crash and bring back.
struct Server {
    /// What the server is, for messages.
    name: &'static str,
    connect: Connect,
    /// The variable naming the script that crashes the server.
    kill: &'static str,
    /// The variable naming the script that starts it again.
    start: &'static str,
}

#[cfg(feature = "redis")]
const REDIS: Server = Server {
    name: "the redis-server",
    connect: || Box::pin(crate::support::stores::redis()),
    kill: "CLINK_TEST_REDIS_KILL",
    start: "CLINK_TEST_REDIS_START",
};

#[cfg(feature = "postgres")]
const POSTGRES: Server = Server {
    name: "the PostgreSQL cluster",
    connect: || Box::pin(crate::support::stores::postgres()),
    kill: "CLINK_TEST_PG_KILL",
    start: "CLINK_TEST_PG_START",
};

/// The redis-server that appends every write to its append-only file and
/// flushes it before answering (`appendonly yes`, `appendfsync always`).
#[cfg(feature = "redis")]
const REDIS_DURABLE: Server = Server {
    name: "the durable redis-server",
    connect: || {
        Box::pin(async {
            let store = crate::support::stores::redis_store_at("REDIS_DURABLE_URL").await;
            Arc::new(store) as Arc<dyn IdempotencyStore>
        })
    },
    kill: "CLINK_TEST_REDIS_DURABLE_KILL",
    start: "CLINK_TEST_REDIS_DURABLE_START",
};

/// The PostgreSQL cluster with fsync and synchronous commits on.
#[cfg(feature = "postgres")]
const POSTGRES_DURABLE: Server = Server {
    name: "the durable PostgreSQL cluster",
    connect: || {
        Box::pin(async {
            let store = crate::support::stores::postgres_store_at("DATABASE_DURABLE_URL").await;
            Arc::new(store) as Arc<dyn IdempotencyStore>
        })
    },
    kill: "CLINK_TEST_PG_DURABLE_KILL",
    start: "CLINK_TEST_PG_DURABLE_START",
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
    stores: [Arc<dyn IdempotencyStore>; 2], runs_per_id: u32,
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

/// How many runs of `id` the handler fails on purpose before one succeeds.
fn planned_failures(id: &str) -> u32 {
    u32::from(flaky(id, 1))
}

/// What one crash run saw.
struct CrashRun {
    ledger: Arc<Ledger>,
    statuses: Arc<Statuses>,
    prefix: String,
    /// The events that can be handled; [`POISON_IDS`] more always fail.
    events: Vec<String>,
    poison: Vec<String>,
    /// The ids some sender got a `2xx` for.
    acknowledged: BTreeSet<String>,
    /// Status and outcome of one more delivery of each acknowledged id,
    /// sent once its lease had passed.
    redelivered: BTreeMap<String, (u16, String)>,
}

const CRASH_EVENTS: usize = 200;
const POISON_IDS: usize = 5;
/// Copies of each event delivered side by side, as Clink does when a retry
/// overlaps a delivery still in progress.
const DUPLICATES: usize = 3;
/// Events whose copies are being delivered at once.
const EVENTS_AT_ONCE: usize = 16;

/// How long a wait for something that must happen may last before the test
/// fails: it only bounds a hang, so it is far longer than any machine needs.
const PATIENCE: Duration = Duration::from_secs(300);

/// What a crash run's lease must leave beside the outage: the pause between
/// two tries of a completion (1 s at most), the try itself, and the time
/// from a claim to its completion.
const LEASE_SLACK: Duration = Duration::from_secs(2);

/// Crash runs a test makes, each under a longer lease than the one before,
/// before an outage too long for the lease fails it.
const CRASH_TRIES: usize = 3;

/// The lease a crash run needs for an outage of `outage`. A completion the
/// store could not take is tried again only while its lease lasts, so the
/// lease must outlast the outage: twice it, and [`LEASE_SLACK`].
fn lease_for(outage: Duration) -> Duration {
    2 * outage + LEASE_SLACK
}

/// The longest outage a crash run under `lease` can take ([`lease_for`]
/// inverted).
fn longest_outage(lease: Duration) -> Duration {
    lease.saturating_sub(LEASE_SLACK) / 2
}

/// Waits until each of `stores` answers a call (a claim of a fresh key under
/// `prefix`): a client that has met an outage has reconnected.
async fn answering(stores: &[Arc<dyn IdempotencyStore>], prefix: &str) {
    let start = Instant::now();
    let mut probes = 0_u32;
    for store in stores {
        loop {
            probes += 1;
            let key = format!("{prefix}:probe_{probes}");
            match store.claim(&key, Duration::from_secs(1)).await {
                Ok(_) => break,
                Err(error) => assert!(
                    start.elapsed() < PATIENCE,
                    "the store did not answer within {PATIENCE:?}: {error}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How long `server` is out of reach, on this machine as loaded now, when
/// crashed and started again: from the kill until a client made before it
/// answers again, the longer of two such cycles.
async fn restart_cycle(server: &Server) -> Duration {
    let probe = [(server.connect)().await];
    let prefix = unique_prefix("restart");
    answering(&probe, &prefix).await;
    let mut longest = Duration::ZERO;
    for _ in 0..2 {
        let killed = Instant::now();
        control(server.kill).await;
        let down = killed.elapsed();
        control(server.start).await;
        let up = killed.elapsed();
        answering(&probe, &prefix).await;
        let cycle = killed.elapsed();
        eprintln!(
            "{}: killed in {down:?}, started again by {up:?}, answering by {cycle:?}",
            server.name
        );
        longest = longest.max(cycle);
    }
    longest
}

/// A crash run of `server` (see [`crash_run`]) under a lease derived from
/// how long the server takes to come back here: a kill-and-start cycle is
/// timed first, and the run's outage, which also waits for deliveries to
/// meet it beside the run's own load, is taken as half as long again and a
/// second.
/// When the outage in the run still exceeds what its lease allows, the run
/// is abandoned and made again under a lease for twice the outage seen, up
/// to [`CRASH_TRIES`] runs; only then does the test fail.
async fn crash_test(server: &Server) -> CrashRun {
    let cycle = restart_cycle(server).await;
    let mut lease = lease_for(cycle * 3 / 2 + Duration::from_secs(1));
    eprintln!(
        "{}: a kill-and-start cycle took {cycle:?}; crash run under a lease of {lease:?}",
        server.name
    );
    let mut tried = Vec::new();
    for _ in 0..CRASH_TRIES {
        match crash_run(server, lease).await {
            Ok(run) => return run,
            Err(outage) => {
                tried.push(format!("down {outage:?} under a {lease:?} lease"));
                let allowed = longest_outage(lease);
                lease = lease_for(2 * outage);
                eprintln!(
                    "{}: down {outage:?}, longer than the {allowed:?} the lease allows; \
                     running again under a lease of {lease:?}",
                    server.name
                );
            }
        }
    }
    panic!(
        "{} was down too long for the lease in each of {CRASH_TRIES} crash runs ({}), \
         though a kill-and-start cycle measured first took {cycle:?}: a completion is \
         tried again only while its lease lasts, so the runs could not tell whether \
         anything was handled twice",
        server.name,
        tried.join(", ")
    );
}

/// Two receivers with a client each of `server`'s store, under `lease`;
/// Clink-like senders deliver 200 events (and 5 poison ones whose handler
/// always fails), three copies of each side by side, each copy retried with
/// backoff until answered `2xx`. The server is crashed once a quarter of
/// the deliveries are acknowledged, kept down until deliveries meet the
/// outage, and started again. Once every sender is done and the leases
/// have passed, each acknowledged event is delivered once more.
///
/// The outage lasts from the kill until both receivers' clients answer
/// again; when it is longer than [`longest_outage`] of `lease`, the run
/// stops there and is an `Err` of the outage.
async fn crash_run(server: &Server, lease: Duration) -> Result<CrashRun, Duration> {
    let ledger = Arc::new(Ledger::default());
    let prefix = unique_prefix("crash");
    let handler = Handler {
        ledger: Arc::clone(&ledger),
        work: Duration::from_millis(30),
        fails: flaky,
    };
    let stores = server.clients().await;
    let mut receivers = Vec::new();
    for store in &stores {
        receivers.push(receiver(Arc::clone(store), &prefix, lease, handler.clone()).await);
    }
    let receivers = Arc::new(receivers);

    let events: Vec<String> = (0..CRASH_EVENTS).map(|i| format!("evt_{i}")).collect();
    let poison: Vec<String> = (0..POISON_IDS).map(|i| format!("poison_{i}")).collect();
    let statuses = Arc::new(Statuses::default());
    let permits = Arc::new(Semaphore::new(EVENTS_AT_ONCE));
    // Only bounds a hang: a claim the crash left behind holds its event
    // for a lease, and the outage may take a few.
    let deadline = Instant::now() + 4 * lease + PATIENCE;
    let mut senders = JoinSet::new();
    for id in events.iter().chain(&poison) {
        let (id, permits) = (id.clone(), Arc::clone(&permits));
        let (receivers, statuses) = (Arc::clone(&receivers), Arc::clone(&statuses));
        senders.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore");
            let mut copies = JoinSet::new();
            for copy in 0..DUPLICATES {
                let (id, receivers, statuses) =
                    (id.clone(), Arc::clone(&receivers), Arc::clone(&statuses));
                copies.spawn(async move {
                    clink_sender(&receivers, copy, &id, &statuses, 3, deadline).await
                });
            }
            let mut acknowledged = false;
            while let Some(copy) = copies.join_next().await {
                acknowledged |= copy.expect("sender task");
            }
            (id, acknowledged)
        });
    }

    let quarter = u32::try_from(CRASH_EVENTS * DUPLICATES / 4).expect("small");
    wait_for("a quarter of the deliveries", PATIENCE, || {
        statuses.acknowledged() >= quarter
    })
    .await;
    let killed = Instant::now();
    control(server.kill).await;
    let before = statuses.count(503);
    wait_for("deliveries answered 503", PATIENCE, || {
        statuses.count(503) >= before + 10
    })
    .await;
    control(server.start).await;
    answering(&stores, &prefix).await;
    let outage = killed.elapsed();
    eprintln!(
        "{}: down {outage:?} in the run; its {lease:?} lease allows {:?}",
        server.name,
        longest_outage(lease)
    );
    if outage > longest_outage(lease) {
        senders.shutdown().await;
        return Err(outage);
    }

    let mut acknowledged = BTreeSet::new();
    while let Some(sent) = senders.join_next().await {
        let (id, ok) = sent.expect("sender task");
        if ok {
            acknowledged.insert(id);
        }
    }

    // Every lease taken before the last answer has ended by now.
    tokio::time::sleep(lease + Duration::from_millis(500)).await;
    let mut redelivered = BTreeMap::new();
    for (k, id) in acknowledged.iter().enumerate() {
        let (status, _, outcome) =
            send_noting_outcome(receivers[k % receivers.len()], id, &statuses).await;
        redelivered.insert(id.clone(), (status, outcome));
    }

    Ok(CrashRun {
        ledger,
        statuses,
        prefix,
        events,
        poison,
        acknowledged,
        redelivered,
    })
}

impl CrashRun {
    /// Every event was acknowledged and handled at least once, acknowledged
    /// again when delivered after its lease, and every 5xx but the 503s came
    /// from the handler; no poison event was acknowledged or marked completed.
    async fn assert_nothing_lost(&self, server: &Server) {
        let unexpected = self.statuses.unexpected(&[200, 409, 500, 503]);
        assert!(unexpected.is_empty(), "unexpected statuses: {unexpected:?}");
        assert!(self.statuses.count(503) >= 10, "no delivery met the outage");
        let layer_failures = self.statuses.layer_failures();
        assert!(
            layer_failures.is_empty(),
            "5xx answers the handler did not give: {layer_failures:?}"
        );
        assert_eq!(
            self.statuses.count(500),
            self.ledger.total_failed(),
            "every 500 is a run the handler failed on purpose"
        );
        for id in &self.events {
            assert!(
                self.acknowledged.contains(id),
                "{id} was never acknowledged (lost)"
            );
            let runs = self.ledger.runs(id);
            assert!(
                runs.succeeded >= 1,
                "{id} acknowledged but never handled: {runs:?}"
            );
            let (status, outcome) = &self.redelivered[id];
            assert_eq!(*status, 200, "{id} delivered after its lease: {outcome}");
        }
        let probe = (server.connect)().await;
        for id in &self.poison {
            assert!(
                !self.acknowledged.contains(id),
                "{id} acknowledged though its handler always fails"
            );
            assert_eq!(self.ledger.runs(id).succeeded, 0);
            let key = layer_key(&self.prefix, id);
            assert!(!is_completed(&*probe, &key).await, "{id} marked completed");
        }
    }

    /// On top of [`assert_nothing_lost`](Self::assert_nothing_lost): each
    /// event's handler succeeded exactly once, ran only as often as the
    /// handler failed on purpose before that, never beside itself, and the
    /// delivery after the lease was a duplicate.
    fn assert_each_event_handled_once(&self) {
        let mut twice = Vec::new();
        for id in &self.events {
            let runs = self.ledger.runs(id);
            let failures = planned_failures(id);
            if runs.succeeded != 1 || runs.started != failures + 1 || runs.failed != failures {
                twice.push(format!("{id}: {runs:?}"));
            }
            let (status, outcome) = &self.redelivered[id];
            assert_eq!(
                (*status, outcome.as_str()),
                (200, "duplicate"),
                "{id} delivered after its lease"
            );
        }
        assert!(
            twice.is_empty(),
            "{} of {} events did not run exactly as planned: {twice:?}",
            twice.len(),
            self.events.len()
        );
        if let Some(id) = self.ledger.any_overlap() {
            panic!("{id}: two runs at once");
        }
    }
}

/// Redis without persistence, as the fast test server runs: a crash forgets
/// claims and completed marks, so the `RedisStore` docs promise only that
/// nothing is lost (a retry after the crash may run a handler again).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_without_persistence_killed_mid_run_loses_nothing() {
    let _servers = exclusive().await;
    let run = crash_test(&REDIS).await;
    run.assert_nothing_lost(&REDIS).await;
}

/// Redis writing every change to its append-only file before answering,
/// killed with SIGKILL mid-run: every event is handled exactly once.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_redis_killed_mid_run_handles_each_event_once() {
    let _server = durable_redis().await;
    let run = crash_test(&REDIS_DURABLE).await;
    run.assert_nothing_lost(&REDIS_DURABLE).await;
    run.assert_each_event_handled_once();
}

/// PostgreSQL with fsync on, stopped with `pg_ctl stop -m immediate`
/// mid-run: every event is handled exactly once.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_postgres_crashed_mid_run_handles_each_event_once() {
    let _server = durable_postgres().await;
    let run = crash_test(&POSTGRES_DURABLE).await;
    run.assert_nothing_lost(&POSTGRES_DURABLE).await;
    run.assert_each_event_handled_once();
}

/// A handler that takes 5 s under a 1 s lease, while senders keep
/// delivering its event to two receivers until three runs have started
/// (however long that takes here): the layer cuts each run off inside the
/// lease, so runs follow each other and never overlap, and none finishes.
async fn slow_handler_never_runs_twice_at_once(stores: [Arc<dyn IdempotencyStore>; 2]) {
    const SENDERS: usize = 8;
    const RUNS: u32 = 3;
    let ledger = Arc::new(Ledger::default());
    let prefix = unique_prefix("slow");
    let handler = Handler::reliable(&ledger, Duration::from_secs(5));
    let lease = Duration::from_secs(1);
    let mut receivers = Vec::new();
    for store in stores {
        receivers.push(receiver(store, &prefix, lease, handler.clone()).await);
    }

    let statuses = Arc::new(Statuses::default());
    // Enough seen: the runs wanted, or one that finished or overlapped
    // another, which the asserts below refuse.
    let seen = {
        let ledger = Arc::clone(&ledger);
        move || {
            let runs = ledger.runs("evt_slow");
            runs.started >= RUNS || runs.succeeded > 0 || runs.overlapped
        }
    };
    let started = Instant::now();
    let senders: Vec<_> = (0..SENDERS)
        .map(|n| {
            let (statuses, receivers, seen) =
                (Arc::clone(&statuses), receivers.clone(), seen.clone());
            tokio::spawn(async move {
                for attempt in n.. {
                    if seen() || started.elapsed() >= PATIENCE {
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
        runs.started >= RUNS,
        "runs were not cut off and retried within {PATIENCE:?}: {runs:?}"
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
