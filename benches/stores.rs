//! Deliveries per second through each idempotency store (a `claim` then a
//! `complete`, as the layer does for one delivery), at 1 and 16 concurrent
//! tasks, against a raw single-command baseline on the same server in the
//! same run. Also measures the memory store's bytes per remembered key.
//!
//! Needs `REDIS_URL` and `DATABASE_URL`; `scripts/with-services` starts
//! private servers for it:
//!
//! ```text
//! scripts/with-services cargo bench -p clink-webhooks-benches --bench stores --all-features
//! ```

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

fn bench_store(
    c: &mut Criterion, runtime: &Runtime, group: &str, store: Arc<dyn IdempotencyStore>,
) {
    bench_op(c, runtime, group, "store", move |key| {
        let store = Arc::clone(&store);
        async move { deliver(&*store, key).await }
    });
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

fn benches(c: &mut Criterion, runtime: &Runtime) {
    // In process.
    bench_store(c, runtime, "memory", Arc::new(MemoryStore::new()));

    // Redis.
    let redis_url = url("REDIS_URL");
    let store = runtime
        .block_on(RedisStore::connect(&redis_url))
        .expect("connect to REDIS_URL");
    bench_store(c, runtime, "redis", Arc::new(store));
    let client = redis::Client::open(redis_url).expect("REDIS_URL parses");
    let raw = runtime
        .block_on(redis::aio::ConnectionManager::new(client))
        .expect("connect to REDIS_URL");
    bench_op(c, runtime, "redis", "raw_set_nx_px", move |key| {
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
    });

    // PostgreSQL.
    let pool = pg_pool();
    let store = PostgresStore::new(pool.clone())
        .with_table(BENCH_TABLE)
        .expect("valid table");
    runtime.block_on(store.migrate()).expect("migrate");
    runtime.block_on(reset_pg_tables(&pool));
    bench_store(c, runtime, "postgres", Arc::new(store));
    let insert = format!("INSERT INTO {RAW_TABLE} (key) VALUES ($1) ON CONFLICT DO NOTHING");
    let raw_pool = pool.clone();
    bench_op(
        c,
        runtime,
        "postgres",
        "raw_insert_on_conflict",
        move |key| {
            let (pool, insert) = (raw_pool.clone(), insert.clone());
            async move {
                let client = pool.get().await.expect("connection");
                client
                    .execute_typed(&insert, &[(&key, tokio_postgres::types::Type::TEXT)])
                    .await
                    .expect("raw insert");
            }
        },
    );
    runtime.block_on(reset_pg_tables(&pool));
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
    benches(&mut c, &runtime);
    c.final_summary();
    print_ratios();
}
