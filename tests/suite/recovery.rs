//! Recovery, measured on real processes: the example receiver with a
//! durable inbox and transactional effects, SIGKILLed while deliveries are
//! under way and restarted on the same inbox, ends with exactly one effect
//! per event; a poison event is dead at once and runs no handler; the
//! health route follows whether the inbox can write.
//!
//! The effects are the rows the example writes into `clink_example_effects`
//! in the transaction that completes each event (`CLINK_EXAMPLE_EFFECTS=1`):
//! the table has no unique key, so an effect committed twice would be a
//! second row, and the tests count rows.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clink_webhooks::store::{Inbox, InboxFilter, InboxStats, InboxStatus};
use clink_webhooks::testing::SignedRequest;
use http_body_util::{BodyExt, Full};
use tokio::sync::watch;

use crate::support::loopback::client;
use crate::support::process::{admin_url, example_path, Process, PATIENCE};
#[cfg(feature = "postgres")]
use crate::support::stores::PrivateDatabase;

const KEY: &str = "whsec_recovery";

/// Events delivered in the crash test, and the senders delivering them.
const EVENTS: usize = 1000;
const SENDERS: usize = 16;

/// How long a sender waits before sending a refused delivery again, unless
/// the receiver restarts first: Clink's retry, made short.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The longest a delivery may go unanswered before it is sent again. It
/// only bounds a hang: a live receiver answers in milliseconds.
const REQUEST_PATIENCE: Duration = Duration::from_secs(30);

/// The workers' lease in the crash test: how long an event a killed
/// process held waits before a restarted one takes it over. Short, for a
/// short test, yet far above what one handler takes: a lease that ends
/// under a slow handler only rolls its transaction back and runs it again.
const CRASH_LEASE_MS: &str = "5000";

/// How long each handler's slow call takes in the crash test, after its
/// effect is committed.
const HANDLER_DELAY_MS: &str = "50";

fn unique() -> String {
    clink_webhooks::store::LeaseToken::generate().as_str()[..12].to_owned()
}

/// A directory of its own under the system's temporary directory.
fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clink-recovery-{what}-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The example receiver with `env` set (nothing of this process's store
/// variables unless `env` sets them), and the webhook URL it announced.
fn receiver(env: &[(&str, &str)]) -> (Process, String) {
    let mut command = std::process::Command::new(example_path("axum_receiver"));
    command
        .env("PORT", "0")
        .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
        .env_remove("CLINK_INBOX")
        .env_remove("CLINK_EXAMPLE_EFFECTS")
        .env_remove("CLINK_EXAMPLE_HANDLER_DELAY_MS")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG");
    for (name, value) in env {
        command.env(name, value);
    }
    let process = Process::start(&mut command);
    let line = Process::line_starting(&process.stderr, "listening on ");
    (process, line["listening on ".len()..].to_owned())
}

/// Sends `body`, signed now, to `url`: the status and the answer's body, or
/// `None` when no answer came (the receiver is down, or killed mid-answer).
async fn post(url: &str, body: &str) -> Option<(u16, String)> {
    let request = SignedRequest::new(KEY, body.to_owned())
        .uri(url)
        .build::<Full<Bytes>>();
    let response = tokio::time::timeout(REQUEST_PATIENCE, client().request(request))
        .await
        .ok()?
        .ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `GET url`: the status and the body.
async fn get(url: &str) -> (u16, String) {
    let request = http::Request::get(url)
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, client().request(request))
        .await
        .unwrap_or_else(|_| panic!("GET {url}: no answer within {PATIENCE:?}"))
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// splitmix64: the test's choices, all from one printed seed.
struct Choices(u64);

impl Choices {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `range`.
    fn within(&mut self, range: std::ops::Range<usize>) -> usize {
        let width = u64::try_from(range.len()).unwrap();
        range.start + usize::try_from(self.next() % width).unwrap()
    }
}

/// Event `n` of run `run`: its id, its type and its body. Orders (about
/// 100 objects, so events of one object wait on each other), refunds, and
/// a type this crate does not know.
fn event(run: &str, n: usize) -> (String, &'static str, String) {
    let id = format!("evt_{run}_{n}");
    let (event_type, data) = match n % 4 {
        0 | 1 => (
            "order.succeeded",
            format!(r#"{{"orderId":"ord_{}"}}"#, n % 100),
        ),
        2 => ("refund.succeeded", format!(r#"{{"refundId":"ref_{n}"}}"#)),
        _ => ("clink.recovery_test", "{}".to_owned()),
    };
    let body = format!(r#"{{"id":"{id}","type":"{event_type}","created":{n},"data":{data}}}"#);
    (id, event_type, body)
}

/// Effects as counted: rows per (account, event id, type).
type Rows = BTreeMap<(String, String, String), i64>;

/// Where the crash test keeps its inbox and effects.
enum Backend {
    Sqlite(PathBuf),
    #[cfg(feature = "postgres")]
    Postgres(PrivateDatabase),
}

impl Backend {
    /// The receiver's environment for this inbox, with effects on.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("CLINK_EXAMPLE_EFFECTS", "1".to_owned()),
            // Workers run events as soon as they are kept, so that kills
            // land mid-handler too.
            ("CLINK_INBOX_REORDER_MS", "0".to_owned()),
            ("CLINK_INBOX_LEASE_MS", CRASH_LEASE_MS.to_owned()),
            // Each handler makes a slow call after its effect: most kills
            // land mid-handler, after the effect. An effect committed apart
            // from the event's completion would then run twice.
            (
                "CLINK_EXAMPLE_HANDLER_DELAY_MS",
                HANDLER_DELAY_MS.to_owned(),
            ),
        ];
        match self {
            Self::Sqlite(path) => env.push(("CLINK_INBOX", format!("sqlite:{}", path.display()))),
            #[cfg(feature = "postgres")]
            Self::Postgres(database) => {
                env.push(("CLINK_INBOX", "postgres".to_owned()));
                env.push(("DATABASE_URL", database.url.clone()));
            }
        }
        env
    }

    /// The inbox, opened by the test as an operator would.
    async fn inbox(&self) -> Arc<dyn Inbox> {
        match self {
            Self::Sqlite(path) => Arc::new(clink_webhooks::store::SqliteInbox::open(path).unwrap()),
            #[cfg(feature = "postgres")]
            Self::Postgres(database) => Arc::new(
                clink_webhooks::store::PostgresInbox::new(crate::support::stores::pg_pool(
                    &database.url,
                ))
                .with_timeout(crate::support::stores::TEST_TIMEOUT)
                .unwrap(),
            ),
        }
    }

    /// Every row of `clink_example_effects`, counted.
    async fn effects(&self) -> Rows {
        const COUNT: &str = "SELECT account, event_id, event_type, count(*) \
             FROM clink_example_effects GROUP BY account, event_id, event_type";
        match self {
            Self::Sqlite(path) => {
                let connection = rusqlite::Connection::open(path).unwrap();
                let mut statement = connection.prepare(COUNT).unwrap();
                let rows = statement
                    .query_map([], |row| {
                        Ok(((row.get(0)?, row.get(1)?, row.get(2)?), row.get(3)?))
                    })
                    .unwrap();
                rows.collect::<Result<_, _>>().unwrap()
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(database) => {
                let pool = crate::support::stores::pg_pool(&database.url);
                let client = pool.get().await.unwrap();
                client
                    .query(COUNT, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| ((row.get(0), row.get(1), row.get(2)), row.get(3)))
                    .collect()
            }
        }
    }
}

/// Waits until nothing in the inbox is due, pending, retrying or running.
async fn settled(inbox: &dyn Inbox) -> InboxStats {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = inbox.stats().await.unwrap();
        let idle = stats.due == 0 && stats.pending == 0 && stats.retrying == 0;
        if idle && stats.running == 0 {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "the inbox was not settled within {PATIENCE:?}: {stats:?}"
        );
        // Woken early where the inbox can tell; a short poll otherwise.
        inbox.wait(Duration::from_millis(100)).await;
    }
}

/// Delivers every event of `bodies` not yet taken by another sender to the
/// receiver `url` names, each until it is answered `2xx`, counting each
/// acknowledged one in `acked`. Returns how many deliveries went unanswered
/// or were refused.
async fn sender(
    bodies: Arc<Vec<String>>, next: Arc<AtomicUsize>, mut url: watch::Receiver<String>,
    acked: Arc<watch::Sender<usize>>,
) -> usize {
    let mut failed = 0;
    loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        let Some(body) = bodies.get(n) else {
            return failed;
        };
        loop {
            let to = url.borrow_and_update().clone();
            if matches!(post(&to, body).await, Some((200..=299, _))) {
                acked.send_modify(|acked| *acked += 1);
                break;
            }
            failed += 1;
            // At once when the receiver has restarted, or after a pause.
            let _ = tokio::time::timeout(RETRY_PAUSE, url.changed()).await;
        }
    }
}

/// [`EVENTS`] events from [`SENDERS`] senders retrying each until `2xx`,
/// the receiver SIGKILLed three times at moments the seed picks while they
/// are under way and restarted on the same inbox each time; at the end
/// each event has exactly one effect.
async fn killed_three_times(backend: &Backend) {
    let started = Instant::now();
    let mut choices = Choices(crate::support::seed::seed());
    // Three moments, by acknowledged events, well before the last one.
    let first = choices.within(EVENTS / 20..EVENTS * 3 / 10);
    let second = choices.within(first + EVENTS / 10..EVENTS * 6 / 10);
    let third = choices.within(second + EVENTS / 10..EVENTS * 9 / 10);
    let env: Vec<(String, String)> = backend
        .env()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    // Starts a receiver on the inbox; blocking, so on a thread of its own.
    let start = move || {
        let env = env.clone();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            receiver(&env)
        })
    };

    let run = unique();
    let events: Vec<_> = (0..EVENTS).map(|n| event(&run, n)).collect();
    let bodies = Arc::new(
        events
            .iter()
            .map(|(_, _, body)| body.clone())
            .collect::<Vec<_>>(),
    );
    let (mut process, url) = start().await.unwrap();
    let (url_tx, url_rx) = watch::channel(url);
    let acked = Arc::new(watch::channel(0usize).0);
    let next = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            tokio::spawn(sender(
                Arc::clone(&bodies),
                Arc::clone(&next),
                url_rx.clone(),
                Arc::clone(&acked),
            ))
        })
        .collect();

    let mut kills = Vec::new();
    for moment in [first, second, third] {
        let mut seen = acked.subscribe();
        tokio::time::timeout(PATIENCE, seen.wait_for(|acked| *acked >= moment))
            .await
            .unwrap_or_else(|_| panic!("{moment} events not acknowledged within {PATIENCE:?}"))
            .unwrap();
        let at = *acked.borrow();
        // SIGKILL: dropping a process kills it and reaps it.
        tokio::task::spawn_blocking(move || drop(process))
            .await
            .unwrap();
        kills.push(at);
        let (restarted, url) = start().await.unwrap();
        process = restarted;
        url_tx.send(url).unwrap();
    }
    let mut refused = 0;
    for sender in senders {
        refused += sender.await.unwrap();
    }
    let delivered = started.elapsed();
    eprintln!(
        "killed at {kills:?} of {EVENTS} acknowledged (moments {first}, {second}, {third}); \
         {refused} deliveries retried; all acknowledged after {delivered:?}"
    );
    assert!(
        kills.iter().all(|&at| at < EVENTS),
        "a kill came after the last delivery: {kills:?}"
    );

    let inbox = backend.inbox().await;
    let stats = settled(&*inbox).await;
    let dead = inbox
        .list(&InboxFilter::default().status(InboxStatus::Dead), 10)
        .await
        .unwrap();
    assert_eq!(stats.dead, 0, "dead events: {dead:?}");
    let rows = backend.effects().await;
    let expected: Rows = events
        .iter()
        .map(|(id, event_type, _)| ((String::new(), id.clone(), (*event_type).to_owned()), 1))
        .collect();
    let twice: Vec<_> = rows.iter().filter(|(_, &count)| count > 1).collect();
    assert!(
        twice.is_empty(),
        "effects committed more than once: {twice:?}"
    );
    let missing: Vec<_> = expected.keys().filter(|k| !rows.contains_key(*k)).collect();
    assert!(missing.is_empty(), "events without an effect: {missing:?}");
    assert_eq!(rows, expected, "effects of events never sent");
    drop(process);
    eprintln!(
        "every event's effect exactly once; {:?} in all",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_receiver_killed_three_times_mid_delivery_has_each_effect_exactly_once() {
    let dir = temp_dir("kill");
    killed_three_times(&Backend::Sqlite(dir.join("inbox.db"))).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_receiver_killed_three_times_mid_delivery_has_each_effect_exactly_once() {
    let _servers = crate::support::servers::shared().await;
    let database = PrivateDatabase::create("recovery").await;
    let backend = Backend::Postgres(database);
    killed_three_times(&backend).await;
    let Backend::Postgres(database) = backend else {
        unreachable!("made above")
    };
    database.drop_now().await;
}

/// A signed, well-formed `order.succeeded` whose data does not decode
/// into `data::Order`: its `orderId` is a list.
fn poison(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"order.succeeded","created":1,"data":{{"orderId":["not","a","string"]}}}}"#
    )
}

fn order(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","type":"order.succeeded","created":2,"data":{{"orderId":"ord_fine"}}}}"#
    )
}

/// Reads the receiver's stdout up to `line`, failing on a line about `id`.
fn no_line_about_until(process: &Process, id: &str, line: &str) {
    loop {
        let next = process.next_stdout();
        assert!(!next.contains(id), "a handler ran for {id}: {next}");
        if next == line {
            return;
        }
    }
}

/// Runs `clink-webhook inbox --sqlite INBOX ARGS`, which must succeed: its stdout.
#[cfg(feature = "cli")]
fn cli(inbox: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_clink-webhook"))
        .arg("inbox")
        .arg("--sqlite")
        .arg(inbox)
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[cfg(feature = "cli")]
#[tokio::test]
async fn a_poison_event_through_the_inbox_is_acknowledged_dead_at_once_and_runs_no_handler() {
    let dir = temp_dir("poison");
    let path = dir.join("inbox.db");
    let spec = format!("sqlite:{}", path.display());
    let (process, url) = receiver(&[
        ("CLINK_INBOX", spec.as_str()),
        ("CLINK_INBOX_REORDER_MS", "0"),
    ]);
    let run = unique();
    let id = format!("evt_{run}_poison");
    let (status, body) = post(&url, &poison(&id)).await.expect("an answer");
    assert_eq!(status, 200, "{body}");

    // Dead at once: one attempt, no retry scheduled.
    let inbox = clink_webhooks::store::SqliteInbox::open(&path).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let dead = loop {
        let dead = inbox
            .list(&InboxFilter::default().status(InboxStatus::Dead), 10)
            .await
            .unwrap();
        if let Some(entry) = dead.into_iter().find(|e| e.event.event_id == id) {
            break entry;
        }
        assert!(Instant::now() < deadline, "not dead within {PATIENCE:?}");
        inbox.wait(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.attempts, 1);

    // The CLI shows it dead with its decode error, in JSON and in text.
    let listed = cli(&path, &["list", "--status", "dead", "--json"]);
    let lines: Vec<serde_json::Value> = listed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{listed}");
    assert_eq!(lines[0]["event_id"], id.as_str());
    assert_eq!(lines[0]["attempts"], 1);
    let error = lines[0]["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("dead: its data does not decode") && error.contains("orderId"),
        "{error}"
    );
    let text = cli(&path, &["list", "--status", "dead"]);
    assert!(
        // Quoted and escaped: the error quotes the body's values.
        text.contains(&id) && text.contains(r#"last error: "dead: its data does not decode"#),
        "{text}"
    );

    // No handler ran: nothing printed about it before a later event's line.
    let fine = format!("evt_{run}_fine");
    assert_eq!(post(&url, &order(&fine)).await.map(|a| a.0), Some(200));
    no_line_about_until(&process, &id, &format!("handled order.succeeded {fine}"));
    drop(process);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_poison_event_in_direct_mode_is_answered_500_and_runs_no_handler() {
    let (process, url) = receiver(&[]);
    let run = unique();
    let id = format!("evt_{run}_poison");
    let (status, body) = post(&url, &poison(&id)).await.expect("an answer");
    assert_eq!(status, 500, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["error"], "undecodable", "{body}");
    let fine = format!("evt_{run}_fine");
    assert_eq!(post(&url, &order(&fine)).await.map(|a| a.0), Some(200));
    no_line_about_until(&process, &id, &format!("handled order.succeeded {fine}"));
}

#[tokio::test]
async fn health_is_503_while_the_sqlite_inbox_cannot_write_and_200_again_without_a_restart() {
    let dir = temp_dir("health");
    let path = dir.join("inbox.db");
    let spec = format!("sqlite:{}", path.display());
    let (process, _url) = receiver(&[("CLINK_INBOX", spec.as_str())]);
    let health = format!("{}/health", admin_url(&process));
    assert_eq!(get(&health).await, (200, "ok\n".to_owned()));

    // Another connection holds the write lock: the inbox cannot write.
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.busy_timeout(PATIENCE).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked = Instant::now();
    let deadline = locked + PATIENCE;
    let (status, reason) = loop {
        let (status, body) = get(&health).await;
        if status != 200 {
            break (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "still 200 after {PATIENCE:?} locked"
        );
    };
    let not_ready_after = locked.elapsed();
    assert_eq!(status, 503, "{reason}");
    assert!(reason.starts_with("not ready: "), "{reason}");

    locker.execute_batch("COMMIT").unwrap();
    let released = Instant::now();
    let deadline = released + PATIENCE;
    loop {
        let (status, body) = get(&health).await;
        if status == 200 {
            assert_eq!(body, "ok\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} {PATIENCE:?} after the lock was released: {body}"
        );
        // A poll, not a wait for an event: the route is asked again.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "health: 503 {not_ready_after:?} after the lock (the store timeout is 5 s), \
         200 {:?} after its release",
        released.elapsed()
    );
    drop(process);
    std::fs::remove_dir_all(&dir).unwrap();
}
