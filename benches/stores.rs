//! Deliveries per second through each idempotency store (a `claim` then a
//! `complete`, as the layer does for one delivery), at 1 and 16 concurrent
//! tasks, against a raw single-command baseline on the same server in the
//! same run. Also measures the memory store's bytes per remembered key.
//!
//! Needs `REDIS_URL`, `VALKEY_URL` (a server whose `SET` takes `IFEQ`, where
//! the Redis store completes with that one native command instead of a
//! script: Valkey 8.1, or Redis 8.4) and `DATABASE_URL`;
//! `scripts/with-services` starts private servers for it:
//!
//! ```text
//! scripts/with-services cargo bench -p clink-webhooks-benches --bench stores --all-features
//! ```
//!
//! After criterion's runs, an interleaved pass times each networked store
//! and its baseline in alternating batches of about 50 ms, the order turned
//! each round, and reports the median of the per-round ratios with its
//! quartiles. On a shared machine a store's rate and its baseline's, timed
//! minutes apart, drift more than the ratio being measured; timed in the
//! same moment they drift together.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use clink_webhooks::store::{
    Claim, IdempotencyStore, MemoryStore, PostgresStore, RedisStore, Settle, DEFAULT_LEASE,
};
use criterion::{BenchmarkId, Criterion, Throughput};
use tokio::runtime::Runtime;

/// Kept short so that the bench's keys leave Redis soon after the run.
const RETENTION: Duration = Duration::from_secs(120);
const BENCH_TABLE: &str = "clink_bench";
const RAW_TABLE: &str = "clink_bench_raw";
const CONCURRENCY: [usize; 2] = [1, 16];

/// A unique key per operation, across iterations and runs.
fn next_key() -> String {
    static RUN: LazyLock<u128> = LazyLock::new(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    });
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("bench:{}:{}", *RUN, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Seconds per operation of every timed batch, per bench id, for the ratio
/// table. The median leaves out criterion's warm-up batches and outliers.
static SAMPLES: LazyLock<Mutex<BTreeMap<String, Vec<f64>>>> = LazyLock::new(Mutex::default);

fn record(id: &str, ops: u64, took: Duration) {
    let mut samples = SAMPLES.lock().unwrap_or_else(PoisonError::into_inner);
    let per_op = took.as_secs_f64() / ops.max(1) as f64;
    samples.entry(id.to_owned()).or_default().push(per_op);
}

/// Operations per second at the median batch of `id`.
fn median_rate(id: &str) -> Option<f64> {
    let mut samples = SAMPLES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(id)?
        .clone();
    samples.sort_by(f64::total_cmp);
    Some(1.0 / samples.get(samples.len() / 2)?)
}

/// Runs `ops` operations spread over `tasks` tasks and returns the wall time.
fn drive<F, Fut>(runtime: &Runtime, tasks: usize, ops: u64, op: F) -> Duration
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    runtime.block_on(async {
        let start = Instant::now();
        let workers: Vec<_> = (0..tasks as u64)
            .map(|task| {
                let share = ops / tasks as u64 + u64::from(task < ops % tasks as u64);
                let op = op.clone();
                tokio::spawn(async move {
                    for _ in 0..share {
                        op(next_key()).await;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("bench task");
        }
        start.elapsed()
    })
}

/// One delivery: claim a fresh key, then mark it completed.
async fn deliver(store: &dyn IdempotencyStore, key: String) {
    let token = match store.claim(&key, DEFAULT_LEASE).await {
        Ok(Claim::Claimed(token)) => token,
        other => panic!("claim of a fresh key answered {other:?}"),
    };
    match store.complete(&key, &token, RETENTION).await {
        Ok(Settle::Applied) => {}
        other => panic!("complete answered {other:?}"),
    }
}

/// Benchmarks `op` as `{group}/{name}` at each concurrency.
fn bench_op<F, Fut>(c: &mut Criterion, runtime: &Runtime, group: &str, name: &str, op: F)
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut benches = c.benchmark_group(group);
    benches
        .throughput(Throughput::Elements(1))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for tasks in CONCURRENCY {
        let id = format!("{group}/{name}/{tasks}");
        benches.bench_with_input(BenchmarkId::new(name, tasks), &tasks, |b, &tasks| {
            b.iter_custom(|ops| {
                let took = drive(runtime, tasks, ops, op.clone());
                record(&id, ops, took);
                took
            });
        });
    }
    benches.finish();
}

/// One delivery through `store`, as an operation for [`drive`].
fn delivery(
    store: Arc<dyn IdempotencyStore>,
) -> impl Fn(String) -> BoxFuture + Clone + Send + 'static {
    move |key| {
        let store = Arc::clone(&store);
        Box::pin(async move { deliver(&*store, key).await })
    }
}

/// An operation's future, boxed so that a store and its baseline have one type.
type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The median and quartiles of the per-round ratios of a store's time per
/// delivery to its baseline's time per operation, with the median times.
struct Interleaved {
    ratios: [f64; 3],
    store_per_op: Duration,
    raw_per_op: Duration,
    rounds: usize,
}

/// Times `store` and `raw` in alternating batches at `tasks` concurrent
/// tasks for about `budget` (and at least 20 rounds), turning the order
/// each round.
fn interleave<S, R, SF, RF>(
    runtime: &Runtime, tasks: usize, budget: Duration, store: S, raw: R,
) -> Interleaved
where
    S: Fn(String) -> SF + Clone + Send + 'static,
    SF: Future<Output = ()> + Send,
    R: Fn(String) -> RF + Clone + Send + 'static,
    RF: Future<Output = ()> + Send,
{
    // A batch of about 50 ms of the slower of the two.
    let probe = 20 * tasks as u64;
    let took =
        drive(runtime, tasks, probe, raw.clone()).max(drive(runtime, tasks, probe, store.clone()));
    let per_op = took.as_secs_f64() / probe as f64;
    let batch = ((0.05 / per_op) as u64).clamp(tasks as u64, 100_000);
    let (mut ratios, mut store_times, mut raw_times) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    while ratios.len() < 20 || start.elapsed() < budget {
        let (store_took, raw_took) = if ratios.len() % 2 == 0 {
            let s = drive(runtime, tasks, batch, store.clone());
            (s, drive(runtime, tasks, batch, raw.clone()))
        } else {
            let r = drive(runtime, tasks, batch, raw.clone());
            (drive(runtime, tasks, batch, store.clone()), r)
        };
        ratios.push(store_took.as_secs_f64() / raw_took.as_secs_f64());
        store_times.push(store_took / u32::try_from(batch).unwrap_or(u32::MAX));
        raw_times.push(raw_took / u32::try_from(batch).unwrap_or(u32::MAX));
    }
    let rounds = ratios.len();
    ratios.sort_by(f64::total_cmp);
    store_times.sort();
    raw_times.sort();
    Interleaved {
        ratios: [
            ratios[rounds / 4],
            ratios[rounds / 2],
            ratios[rounds * 3 / 4],
        ],
        store_per_op: store_times[rounds / 2],
        raw_per_op: raw_times[rounds / 2],
        rounds,
    }
}

/// The interleaved pass over one networked store and its baseline, as rows
/// of the table [`print_interleaved`] prints.
fn interleaved_rows<S, R, SF, RF>(
    runtime: &Runtime, group: &str, baseline: &str, store: S, raw: R,
) -> Vec<String>
where
    S: Fn(String) -> SF + Clone + Send + 'static,
    SF: Future<Output = ()> + Send,
    R: Fn(String) -> RF + Clone + Send + 'static,
    RF: Future<Output = ()> + Send,
{
    let mut rows = Vec::new();
    for tasks in CONCURRENCY {
        let run = interleave(
            runtime,
            tasks,
            Duration::from_secs(6),
            store.clone(),
            raw.clone(),
        );
        let [low, median, high] = run.ratios;
        rows.push(format!(
            "| {group} | {tasks} | {:.1} µs | `{baseline}` | {:.1} µs | {median:.2} ({low:.2}–{high:.2}) | {} |",
            run.store_per_op.as_secs_f64() * 1e6,
            run.raw_per_op.as_secs_f64() * 1e6,
            run.rounds,
        ));
    }
    rows
}

fn print_interleaved(rows: &[String]) {
    if rows.is_empty() {
        return;
    }
    println!("\nInterleaved: each store's delivery and its baseline in alternating batches");
    println!("| store | tasks | time per delivery (median batch) | baseline | time per baseline op | ratio, median (quartiles) of the rounds | rounds |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

/// Criterion's filter on the command line: the first argument that is
/// neither an option nor the value of one.
fn filter() -> Option<String> {
    const TAKES_A_VALUE: &[&str] = &[
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--baseline-lenient",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--profile-time",
        "--output-format",
        "--color",
        "-c",
        "--plotting-backend",
        "--format",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if TAKES_A_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

/// Whether criterion's filter selects any of the bench ids `ids` (it reads
/// the filter as a regular expression; one that is not is matched as text).
fn selected(ids: &[String]) -> bool {
    let Some(filter) = filter() else {
        return true;
    };
    match regex::Regex::new(&filter) {
        Ok(pattern) => ids.iter().any(|id| pattern.is_match(id)),
        Err(_) => ids.iter().any(|id| id.contains(&filter)),
    }
}

/// The ids criterion gives `group`'s store and baseline benches.
fn ids(group: &str, baseline: &str) -> Vec<String> {
    CONCURRENCY
        .iter()
        .flat_map(|tasks| {
            [
                format!("{group}/store/{tasks}"),
                format!("{group}/{baseline}/{tasks}"),
            ]
        })
        .collect()
}

/// Whether criterion is measuring (`cargo bench` passes `--bench`), rather
/// than running each bench once as a test, listing them or profiling.
fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|arg| arg == "--bench")
        && !args
            .iter()
            .any(|arg| arg == "--list" || arg.starts_with("--profile-time"))
}

fn url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run `scripts/with-services cargo bench -p clink-webhooks-benches --bench stores --all-features`")
    })
}

fn pg_pool() -> deadpool_postgres::Pool {
    let config: tokio_postgres::Config = url("DATABASE_URL").parse().expect("DATABASE_URL parses");
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    deadpool_postgres::Pool::builder(manager)
        .max_size(16)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .expect("pool")
}

async fn reset_pg_tables(pool: &deadpool_postgres::Pool) {
    let client = pool.get().await.expect("connection");
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {RAW_TABLE} (key text PRIMARY KEY);
             TRUNCATE {RAW_TABLE}; TRUNCATE {BENCH_TABLE};"
        ))
        .await
        .expect("bench tables");
}

/// Runs criterion over every store and baseline, and returns the rows of
/// the interleaved pass (when measuring).
fn benches(c: &mut Criterion, runtime: &Runtime) -> Vec<String> {
    let mut interleaved = Vec::new();
    let measure = measuring();

    // In process.
    bench_op(
        c,
        runtime,
        "memory",
        "store",
        delivery(Arc::new(MemoryStore::new())),
    );

    // Redis 7 (the completion a script), and a server whose `SET` takes
    // `IFEQ` (the completion one native command).
    redis_benches(c, runtime, "redis", "REDIS_URL", &mut interleaved);
    redis_benches(c, runtime, "valkey", "VALKEY_URL", &mut interleaved);

    // PostgreSQL.
    let pool = pg_pool();
    let store = PostgresStore::new(pool.clone())
        .with_table(BENCH_TABLE)
        .expect("valid table");
    runtime.block_on(store.migrate()).expect("migrate");
    runtime.block_on(reset_pg_tables(&pool));
    let store = delivery(Arc::new(store));
    bench_op(c, runtime, "postgres", "store", store.clone());
    let insert = format!("INSERT INTO {RAW_TABLE} (key) VALUES ($1) ON CONFLICT DO NOTHING");
    let raw_pool = pool.clone();
    let raw = move |key: String| {
        let (pool, insert) = (raw_pool.clone(), insert.clone());
        async move {
            let client = pool.get().await.expect("connection");
            client
                .execute_typed(&insert, &[(&key, tokio_postgres::types::Type::TEXT)])
                .await
                .expect("raw insert");
        }
    };
    bench_op(
        c,
        runtime,
        "postgres",
        "raw_insert_on_conflict",
        raw.clone(),
    );
    if measure && selected(&ids("postgres", "raw_insert_on_conflict")) {
        interleaved.extend(interleaved_rows(
            runtime,
            "postgres",
            "INSERT .. ON CONFLICT DO NOTHING",
            store,
            raw,
        ));
    }
    runtime.block_on(reset_pg_tables(&pool));
    interleaved
}

/// The Redis store and its baseline, `SET NX PX`, on the server at `var`
/// as bench group `group`.
fn redis_benches(
    c: &mut Criterion, runtime: &Runtime, group: &str, var: &str, interleaved: &mut Vec<String>,
) {
    let server_url = url(var);
    let store = runtime
        .block_on(RedisStore::connect(&server_url))
        .unwrap_or_else(|err| panic!("connect to {var}: {err}"));
    let store = delivery(Arc::new(store));
    bench_op(c, runtime, group, "store", store.clone());
    let client = redis::Client::open(server_url).expect("the server URL parses");
    let raw = runtime
        .block_on(redis::aio::ConnectionManager::new(client))
        .unwrap_or_else(|err| panic!("connect to {var}: {err}"));
    let raw = move |key: String| {
        let mut raw = raw.clone();
        async move {
            let _: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg("1")
                .arg("NX")
                .arg("PX")
                .arg(RETENTION.as_millis().to_string())
                .query_async(&mut raw)
                .await
                .expect("SET NX PX");
        }
    };
    bench_op(c, runtime, group, "raw_set_nx_px", raw.clone());
    if measuring() && selected(&ids(group, "raw_set_nx_px")) {
        interleaved.extend(interleaved_rows(runtime, group, "SET NX PX", store, raw));
    }
}

/// Resident memory of this process, from /proc/self/status.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Growth of resident memory while a `MemoryStore` remembers one million
/// completed keys shaped like the layer's (`clink:live:evt_` + 24 characters).
fn memory_per_key(runtime: &Runtime) {
    const KEYS: u64 = 1_000_000;
    let before = resident_bytes();
    let store = MemoryStore::new();
    runtime.block_on(async {
        for i in 0..KEYS {
            deliver(&store, format!("clink:live:evt_{i:024}")).await;
        }
    });
    let after = resident_bytes();
    match (before, after) {
        (Some(before), Some(after)) => println!(
            "\nmemory: {KEYS} completed keys in a MemoryStore grew resident memory by {} MiB, \
             {} bytes per key",
            after.saturating_sub(before) >> 20,
            after.saturating_sub(before) / KEYS
        ),
        _ => println!("\nmemory: /proc/self/status is not readable here"),
    }
    drop(store);
}

/// The table for BENCHMARKS.md: each store against its baseline, by the
/// median batch of each bench.
fn print_ratios() {
    println!("\n| store | tasks | deliveries/s (claim + complete) | baseline | baseline ops/s | time per delivery / per baseline op |");
    println!("|---|---|---|---|---|---|");
    for (group, baseline) in [
        ("memory", None),
        ("redis", Some("raw_set_nx_px")),
        ("valkey", Some("raw_set_nx_px")),
        ("postgres", Some("raw_insert_on_conflict")),
    ] {
        for tasks in CONCURRENCY {
            let Some(store) = median_rate(&format!("{group}/store/{tasks}")) else {
                continue;
            };
            let raw = baseline.and_then(|name| median_rate(&format!("{group}/{name}/{tasks}")));
            match (baseline, raw) {
                (Some(name), Some(raw)) => println!(
                    "| {group} | {tasks} | {store:.0} | `{name}` | {raw:.0} | {:.2} |",
                    raw / store
                ),
                _ => println!("| {group} | {tasks} | {store:.0} | none | | |"),
            }
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut c = Criterion::default().configure_from_args();
    memory_per_key(&runtime);
    let interleaved = benches(&mut c, &runtime);
    c.final_summary();
    print_ratios();
    print_interleaved(&interleaved);
}
