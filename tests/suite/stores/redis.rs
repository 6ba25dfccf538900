//! What only `RedisStore` has: its errors, timeout, the values it reads,
//! and where it keeps freshness records.

use std::time::Duration;

use clink_webhooks::events::ObjectKey;
use clink_webhooks::events::Version;
use clink_webhooks::store::FreshnessStore;
use clink_webhooks::store::{
    Claim, IdempotencyStore, RedisStore, Settle, StoreErrorKind, DEFAULT_LEASE, DEFAULT_RETENTION,
    MAX_TTL,
};
use clink_webhooks::Timestamp;

use crate::support::servers::{exclusive, shared};
use crate::support::stores::{claimed, in_flight, redis_store, redis_store_at, server_url, Keys};

async fn raw_connection() -> redis::aio::MultiplexedConnection {
    raw_connection_at("REDIS_URL").await
}

async fn raw_connection_at(var: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server_url(var)).expect("the server URL parses");
    crate::support::stores::redis_connection(&client)
        .await
        .unwrap_or_else(|err| panic!("raw connection to {var}: {err}"))
}

/// How many calls of `command` the server has run (`INFO commandstats`).
async fn calls(raw: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(raw)
        .await
        .expect("INFO");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a count"))
}

/// Completes `count` claimed keys, and one more with another key's token,
/// on the server at `var`; answers how many `EVALSHA` and `SET` calls the
/// server ran for those completions.
async fn complete_keys(var: &str, count: usize) -> (u64, u64) {
    let keys = Keys::new(&format!("redis_native_complete_{var}"));
    let store = redis_store_at(var).await;
    let mut raw = raw_connection_at(var).await;
    let mut claims = Vec::new();
    for i in 0..count {
        let key = keys.key(&i.to_string());
        let token = claimed(store.claim(&key, DEFAULT_LEASE).await);
        claims.push((key, token));
    }
    let stale = keys.key("stale");
    claimed(store.claim(&stale, DEFAULT_LEASE).await);

    let before = (
        calls(&mut raw, "evalsha").await,
        calls(&mut raw, "set").await,
    );
    for (key, token) in &claims {
        let completed = store.complete(key, token, DEFAULT_RETENTION).await;
        assert_eq!(completed.ok(), Some(Settle::Applied), "{var}: {key}");
    }
    let refused = store
        .complete(&stale, &claims[0].1, DEFAULT_RETENTION)
        .await;
    assert_eq!(refused.ok(), Some(Settle::LeaseLost), "{var}");
    let after = (
        calls(&mut raw, "evalsha").await,
        calls(&mut raw, "set").await,
    );

    for (key, _) in &claims {
        let again = store.claim(key, DEFAULT_LEASE).await;
        assert!(
            matches!(again, Ok(Claim::Completed)),
            "{var}: {key}: {again:?}"
        );
    }
    // The refused completion left the key's lease alone.
    let retry_after = in_flight(store.claim(&stale, DEFAULT_LEASE).await);
    assert!(retry_after > DEFAULT_LEASE / 2, "{var}: {retry_after:?}");
    (after.0 - before.0, after.1 - before.1)
}

#[tokio::test]
async fn completion_is_one_native_set_where_the_server_has_ifeq() {
    // The servers' counts are the whole server's: no other test meanwhile.
    let _servers = exclusive().await;
    // Valkey 8.1: each completion is one `SET .. IFEQ`, no script.
    let (scripts, sets) = complete_keys("VALKEY_URL", 5).await;
    assert_eq!(scripts, 0, "no script on a server with IFEQ");
    assert_eq!(sets, 6, "one native SET a completion");

    // Redis 7: `SET .. IFEQ` refused once, then the script for each (and
    // once more if the server had not loaded it yet).
    let (scripts, sets) = complete_keys("REDIS_URL", 5).await;
    assert!(
        (6..=7).contains(&scripts),
        "{scripts} scripts for 6 completions (REDIS_URL must be a server without IFEQ)"
    );
    // The refusal is remembered: one native try, then scripts only, whose
    // own `SET`s (one for each of the five applied) the server counts too.
    assert_eq!(sets, 1 + 5, "SET .. IFEQ tried once");
}

#[tokio::test]
async fn unreachable_server_is_unavailable_and_the_password_stays_secret() {
    // Nothing listens on port 1 of the loopback interface.
    let err = RedisStore::connect("redis://:hunter2-secret@127.0.0.1:1/")
        .await
        .expect_err("nothing listens there");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");

    let err = RedisStore::connect("redis://:hunter2-secret@[::1")
        .await
        .expect_err("not a URL");
    assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

#[tokio::test]
async fn a_stalled_server_times_out() {
    // The pause stalls every client of the server: no other test may use
    // it meanwhile.
    let _servers = exclusive().await;
    let keys = Keys::new("redis_timeout");
    let key = keys.key("stalled");
    // The calls that must answer go through `patient` (the tests' generous
    // timeout); `store` shares its connection and gives up after 100 ms.
    let patient = redis_store().await;
    let store = patient
        .clone()
        .with_timeout(Duration::from_millis(100))
        .expect("valid timeout");
    // Load the script first so that the stalled call is the claim itself.
    patient
        .claim(&keys.key("warm up"), DEFAULT_LEASE)
        .await
        .expect("claim");

    // Paused far longer than the claim needs to reach the server on any
    // machine; unpaused as soon as the claim has given up.
    let mut raw = raw_connection().await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query_async(&mut raw)
        .await
        .expect("CLIENT PAUSE");
    let stalled = store.claim(&key, DEFAULT_LEASE).await;
    let () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut raw)
        .await
        .expect("CLIENT UNPAUSE");
    let err = stalled.expect_err("stalled");
    assert_eq!(err.kind(), StoreErrorKind::Timeout, "{err}");

    // The call reached the server before the client gave up, so the key is
    // claimed by a token nobody holds: it waits for its lease to end.
    in_flight(patient.claim(&key, DEFAULT_LEASE).await);
}

#[tokio::test]
async fn values_the_store_did_not_write_are_protocol_errors() {
    let _servers = shared().await;
    let keys = Keys::new("redis_foreign");
    let mut raw = raw_connection().await;
    let foreign = keys.key("foreign");
    let endless = keys.key("claimed forever");
    let () = redis::cmd("SET")
        .arg(&foreign)
        .arg("something else")
        .arg("EX")
        .arg(60)
        .query_async(&mut raw)
        .await
        .expect("SET");
    let () = redis::cmd("SET")
        .arg(&endless)
        .arg("claimed:0123")
        .query_async(&mut raw)
        .await
        .expect("SET");

    let store = redis_store().await;
    for key in [&foreign, &endless] {
        let err = store
            .claim(key, DEFAULT_LEASE)
            .await
            .expect_err("foreign value");
        assert_eq!(err.kind(), StoreErrorKind::Protocol, "{err}");
    }
    // The script's own words, not a code the client does not know.
    let err = store.claim(&foreign, DEFAULT_LEASE).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("holds a value the idempotency store did not write"),
        "{err}"
    );
    let () = redis::cmd("DEL")
        .arg(&endless)
        .query_async(&mut raw)
        .await
        .expect("DEL");
    assert!(matches!(
        store.claim(&endless, DEFAULT_LEASE).await,
        Ok(Claim::Claimed(_))
    ));
}

#[tokio::test]
async fn a_zero_timeout_is_refused() {
    let _servers = shared().await;
    let store = redis_store().await;
    // Zero, and past an hour (a call's deadline is an instant: a longer
    // one could not be added to the clock's reading).
    for bad in [
        Duration::ZERO,
        Duration::from_secs(3_600) + Duration::from_millis(1),
        Duration::MAX,
    ] {
        let err = store.clone().with_timeout(bad).expect_err("out of range");
        assert!(err.to_string().contains("timeout"), "{err}");
    }
    assert!(store.with_timeout(Duration::from_secs(3_600)).is_ok());
}

#[tokio::test]
async fn freshness_records_live_under_the_prefix_with_their_retention() {
    let _servers = shared().await;
    let keys = Keys::new("redis_freshness_layout");
    let retention = Duration::from_secs(60);
    let prefix = keys.key("app:freshness");
    let store = redis_store()
        .await
        .with_freshness_prefix(prefix.clone())
        .with_freshness_retention(retention)
        .expect("valid retention");
    assert_eq!(store.freshness_prefix(), prefix);
    assert_eq!(store.freshness_retention(), retention);

    let object = ObjectKey::new("order", "ord_1");
    let version = Version::new(Timestamp::from_millis(1_736_942_400_000), "evt_1|a");
    store.record(&object, &version).await.expect("record");

    let key = format!("{prefix}:order:ord_1");
    let mut raw = raw_connection().await;
    let held: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .expect("GET");
    assert_eq!(held.as_deref(), Some("1736942400000|evt_1|a"));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .expect("PTTL");
    let retention_ms = i64::try_from(retention.as_millis()).expect("small");
    assert!(pttl > 0 && pttl <= retention_ms, "{pttl}");

    // The default prefix is another namespace.
    let default = redis_store().await;
    assert_eq!(
        default.freshness_prefix(),
        RedisStore::DEFAULT_FRESHNESS_PREFIX
    );
    assert_eq!(default.newest(&object).await.ok(), Some(None));
}

#[tokio::test]
async fn freshness_values_the_store_did_not_write_are_protocol_errors() {
    let _servers = shared().await;
    let keys = Keys::new("redis_freshness_foreign");
    let prefix = keys.key("freshness");
    let store = redis_store().await.with_freshness_prefix(prefix.clone());
    let mut raw = raw_connection().await;
    let newer = Version::new(Timestamp::from_millis(i64::MAX), "evt_z");

    let foreign = [
        "",
        "no separator",
        "|evt_1",
        "abc|evt_1",
        "007|evt_1",
        "-0|evt_1",
        "1.5|evt_1",
        "1e3|evt_1",
    ];
    for (i, value) in foreign.iter().enumerate() {
        let object = ObjectKey::new("order", format!("ord_{i}"));
        let key = format!("{prefix}:order:ord_{i}");
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(*value)
            .arg("EX")
            .arg(60)
            .query_async(&mut raw)
            .await
            .expect("SET");

        let read = store.newest(&object).await.expect_err(value);
        assert_eq!(read.kind(), StoreErrorKind::Protocol, "{value:?}: {read}");
        let write = store.record(&object, &newer).await.expect_err(value);
        assert_eq!(write.kind(), StoreErrorKind::Protocol, "{value:?}: {write}");
        let held: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .expect("GET");
        assert_eq!(held, *value, "a refused record changes nothing");
    }

    // A key of another type is refused the same way.
    let object = ObjectKey::new("order", "a list");
    let () = redis::cmd("RPUSH")
        .arg(format!("{prefix}:order:a list"))
        .arg("x")
        .query_async(&mut raw)
        .await
        .map(|_: i64| ())
        .expect("RPUSH");
    let read = store.newest(&object).await.expect_err("a list");
    assert_eq!(read.kind(), StoreErrorKind::Protocol, "{read}");
    let write = store.record(&object, &newer).await.expect_err("a list");
    assert_eq!(write.kind(), StoreErrorKind::Protocol, "{write}");
}

#[tokio::test]
async fn a_freshness_retention_out_of_range_is_refused() {
    let _servers = shared().await;
    for bad in [Duration::ZERO, MAX_TTL + Duration::from_millis(1)] {
        let err = redis_store()
            .await
            .with_freshness_retention(bad)
            .expect_err("out of range");
        assert!(err.to_string().contains("retention"), "{err}");
    }
}

/// Sets one of the server's parameters (`CONFIG SET`) until dropped, then
/// puts back the value it had (also when the test fails).
struct ServerSetting {
    url: String,
    parameter: &'static str,
    previous: String,
}

impl ServerSetting {
    fn set(url: &str, parameter: &'static str, value: &str) -> Self {
        let mut connection = redis::Client::open(url)
            .expect("REDIS_URL parses")
            .get_connection()
            .expect("a connection to REDIS_URL");
        let current: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(parameter)
            .query(&mut connection)
            .expect("CONFIG GET");
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(parameter)
            .arg(value)
            .query(&mut connection)
            .expect("CONFIG SET");
        Self {
            url: url.to_owned(),
            parameter,
            previous: current[1].clone(),
        }
    }
}

impl Drop for ServerSetting {
    fn drop(&mut self) {
        let restored = redis::Client::open(self.url.as_str())
            .and_then(|client| client.get_connection())
            .and_then(|mut connection| {
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg(self.parameter)
                    .arg(&self.previous)
                    .query::<()>(&mut connection)
            });
        if let Err(error) = restored {
            eprintln!(
                "could not restore {} {}: {error}",
                self.parameter, self.previous
            );
        }
    }
}

/// The eviction warnings `connect` logged.
fn eviction_warnings(captured: &crate::support::capture::Captured) -> Vec<String> {
    captured
        .events()
        .into_iter()
        .filter(|event| {
            event.level == tracing::Level::WARN
                && event.target.starts_with("clink_webhooks::store::redis")
                && event.message.contains("evict")
        })
        .map(|event| format!("{} policy={:?}", event.message, event.fields.get("policy")))
        .collect()
}

#[tokio::test]
async fn connect_warns_when_the_server_may_evict_keys() {
    // Another policy on the shared server: no other test may connect meanwhile.
    let _servers = crate::support::servers::exclusive().await;
    let url = server_url("REDIS_URL");
    {
        let (captured, _guard) = crate::support::capture::capture();
        let _policy = ServerSetting::set(&url, "maxmemory-policy", "allkeys-lru");
        RedisStore::connect(&url).await.expect("connects");
        let warnings = eviction_warnings(&captured);
        assert_eq!(warnings.len(), 1, "{:#?}", captured.events());
        assert!(
            warnings[0].contains(r#"policy=Some("allkeys-lru")"#),
            "{warnings:?}"
        );
    }
    {
        let (captured, _guard) = crate::support::capture::capture();
        let _policy = ServerSetting::set(&url, "maxmemory-policy", "noeviction");
        RedisStore::connect(&url).await.expect("connects");
        assert_eq!(eviction_warnings(&captured), Vec::<String>::new());
    }
}

#[tokio::test]
async fn a_pause_shorter_than_the_store_timeout_is_waited_out() {
    // The pause stalls every client of the server: no other test may use
    // it meanwhile.
    let _servers = exclusive().await;
    let keys = Keys::new("redis_long_timeout");
    let store = RedisStore::connect(&server_url("REDIS_URL"))
        .await
        .expect("connects")
        .with_timeout(Duration::from_secs(5))
        .expect("valid timeout");
    // Load the script and open the connection before the pause.
    claimed(store.claim(&keys.key("warm up"), DEFAULT_LEASE).await);

    // Writes wait 1.5 s: longer than the redis crate's own default response
    // timeout (500 ms), well within the store's 5 s.
    let mut raw = raw_connection().await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1_500)
        .arg("WRITE")
        .query_async(&mut raw)
        .await
        .expect("CLIENT PAUSE");
    let answer = store.claim(&keys.key("paused"), DEFAULT_LEASE).await;
    let () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut raw)
        .await
        .expect("CLIENT UNPAUSE");
    claimed(answer);
}

#[tokio::test]
async fn a_server_out_of_memory_is_unavailable() {
    // No other test may write to the server while it refuses writes.
    let _servers = exclusive().await;
    let url = server_url("REDIS_URL");
    let keys = Keys::new("redis_oom");
    let key = keys.key("completed under OOM");
    let store = redis_store().await;
    let token = claimed(store.claim(&key, DEFAULT_LEASE).await);
    let err = {
        let _policy = ServerSetting::set(&url, "maxmemory-policy", "noeviction");
        let _limit = ServerSetting::set(&url, "maxmemory", "1");
        store
            .complete(&key, &token, DEFAULT_RETENTION)
            .await
            .expect_err("refused while out of memory")
    };
    // A refusal that passes: worth retrying, like a lost connection.
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("OOM"), "{err}");
    // Once memory is back, the same completion goes through.
    assert_eq!(
        store
            .complete(&key, &token, DEFAULT_RETENTION)
            .await
            .expect("completes"),
        Settle::Applied
    );
}

/// Two redis-servers of a test's own, each on a socket file, and the path
/// a store connects to: a link to the first, until the test points it at
/// the second, as a failover points a name at the new primary. Connections
/// already open stay with the first.
struct Failover {
    dir: std::path::PathBuf,
    servers: [std::process::Child; 2],
}

impl Failover {
    async fn start(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "clink-{test}-{}-{}",
            std::process::id(),
            Timestamp::now().as_millis()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let spawn = |name: &str| {
            std::process::Command::new("redis-server")
                .args(["--port", "0", "--save", "", "--appendonly", "no"])
                .arg("--unixsocket")
                .arg(dir.join(name))
                .args(["--unixsocketperm", "700"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is installed by scripts/test")
        };
        let servers = Self {
            servers: [spawn("first.sock"), spawn("second.sock")],
            dir,
        };
        std::os::unix::fs::symlink(servers.dir.join("first.sock"), servers.address()).unwrap();
        for name in ["first.sock", "second.sock"] {
            drop(servers.raw(name).await);
        }
        servers
    }

    /// Where the store connects.
    fn address(&self) -> std::path::PathBuf {
        self.dir.join("redis.sock")
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.address().display())
    }

    /// A connection of the test's own to the server on socket `name`,
    /// waiting for it to start.
    async fn raw(&self, name: &str) -> redis::aio::MultiplexedConnection {
        let url = format!("redis+unix://{}", self.dir.join(name).display());
        let client = redis::Client::open(url).unwrap();
        let deadline = tokio::time::Instant::now() + crate::support::process::PATIENCE;
        loop {
            let error = match client.get_multiplexed_async_connection().await {
                Ok(mut connection) => {
                    match redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                    {
                        Ok(_) => return connection,
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never answered: {error}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Points the store's address at the second server.
    fn fail_over(&self) {
        let next = self.dir.join("next.sock");
        std::os::unix::fs::symlink(self.dir.join("second.sock"), &next).unwrap();
        std::fs::rename(&next, self.address()).unwrap();
    }

    /// Makes the first server a replica, its clients left connected: it
    /// answers `READONLY` to every write.
    async fn demote_first(&self) {
        let mut first = self.raw("first.sock").await;
        // Port 1 of the loopback interface: nothing listens, nothing is copied.
        redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(1)
            .query_async::<()>(&mut first)
            .await
            .unwrap();
    }

    /// Stops the first server without closing anything: its connections
    /// stay open and answer nothing, as a host gone without a word leaves
    /// them.
    fn freeze_first(&self) {
        let status = std::process::Command::new("kill")
            .args(["-STOP", &self.servers[0].id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Claims `key` through `store` until a claim lands, within the
    /// patience of the suite; answers the errors met on the way.
    async fn claim_until_claimed(store: &RedisStore, key: &str) -> Vec<StoreErrorKind> {
        let deadline = tokio::time::Instant::now() + crate::support::process::PATIENCE;
        let mut errors = Vec::new();
        loop {
            match store.claim(key, DEFAULT_LEASE).await {
                Ok(Claim::Claimed(_)) => return errors,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no claim landed; the last error: {error}"
                    );
                    errors.push(error.kind());
                }
                Ok(other) => panic!("a fresh key answered {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the second server holds at `key`.
    async fn second_holds(&self, key: &str) -> Option<String> {
        let mut second = self.raw("second.sock").await;
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut second)
            .await
            .unwrap()
    }
}

impl Drop for Failover {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A failover that demotes the primary under a store without closing its
/// clients' connections (the address now leads to the new primary): the
/// old connection answers `READONLY` to every write, for as long as it
/// lives. The store makes its connection anew, and claims land on the new
/// primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_demoted_under_the_store_has_its_connection_made_anew() {
    let servers = Failover::start("demoted").await;
    let store = RedisStore::connect(&servers.url()).await.unwrap();
    let keys = Keys::new("redis_demoted");
    claimed(store.claim(&keys.key("before"), DEFAULT_LEASE).await);
    servers.fail_over();
    servers.demote_first().await;
    let err = store
        .claim(&keys.key("demoted"), DEFAULT_LEASE)
        .await
        .expect_err("a replica takes no writes");
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("read-only"), "{err}");

    let key = keys.key("after");
    let errors = Failover::claim_until_claimed(&store, &key).await;
    assert!(
        errors
            .iter()
            .all(|kind| *kind == StoreErrorKind::Unavailable),
        "{errors:?}"
    );
    let held = servers.second_holds(&key).await;
    assert!(
        held.as_deref()
            .is_some_and(|value| value.starts_with("claimed:")),
        "{held:?}"
    );
}

/// A connection that stops answering without being closed (the server's
/// host gone without a word, until the kernel gives up on the connection
/// a quarter of an hour later; here the first server frozen, with the
/// address leading to the second): the store makes its connection anew
/// once a call got no answer in time, and claims land again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_answering_is_made_anew() {
    let servers = Failover::start("silent").await;
    let store = RedisStore::connect(&servers.url()).await.unwrap();
    let keys = Keys::new("redis_silent");
    claimed(store.claim(&keys.key("before"), DEFAULT_LEASE).await);
    let store = store.with_timeout(Duration::from_millis(500)).unwrap();
    servers.fail_over();
    servers.freeze_first();
    let err = store
        .claim(&keys.key("unanswered"), DEFAULT_LEASE)
        .await
        .expect_err("a frozen server answers nothing");
    assert_eq!(err.kind(), StoreErrorKind::Timeout, "{err}");

    let key = keys.key("after");
    Failover::claim_until_claimed(&store, &key).await;
    let held = servers.second_holds(&key).await;
    assert!(
        held.as_deref()
            .is_some_and(|value| value.starts_with("claimed:")),
        "{held:?}"
    );
}

/// As `a_connection_that_stops_answering_is_made_anew`, with every claim
/// stopped by a bound shorter than the store's own timeout (the layer's
/// store timeout, the end of a lease): a call given up on by its caller
/// counts as one that got no answer, so the connection is made anew all
/// the same. Before, only the store's own timeout did, and with a
/// shorter bound around every call the store stayed on the silent
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_made_anew_when_a_shorter_bound_stops_the_calls() {
    let servers = Failover::start("silent_bounded").await;
    let store = RedisStore::connect(&servers.url()).await.unwrap();
    let keys = Keys::new("redis_silent_bounded");
    claimed(store.claim(&keys.key("before"), DEFAULT_LEASE).await);
    let store = store.with_timeout(Duration::from_secs(60)).unwrap();
    servers.fail_over();
    servers.freeze_first();

    let key = keys.key("after");
    let deadline = tokio::time::Instant::now() + crate::support::process::PATIENCE;
    loop {
        let bounded =
            tokio::time::timeout(Duration::from_millis(300), store.claim(&key, DEFAULT_LEASE));
        match bounded.await {
            Ok(Ok(Claim::Claimed(_))) => break,
            Ok(Ok(other)) => panic!("a fresh key answered {other:?}"),
            Ok(Err(_)) | Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "the silent connection was never made anew"
            ),
        }
    }
    let held = servers.second_holds(&key).await;
    assert!(
        held.as_deref()
            .is_some_and(|value| value.starts_with("claimed:")),
        "{held:?}"
    );
}

/// A replica still behind the address (a failover not yet told to the
/// name, or a URL that names a replica): connecting anew finds `READONLY`
/// again. The store does not connect over and over, nor say so each time:
/// one warning, then attempts told at `debug`, each after a pause twice
/// the last.
#[tokio::test]
async fn a_replica_still_behind_the_address_is_not_connected_to_over_and_over() {
    let (captured, _guard) = crate::support::capture::capture();
    let servers = Failover::start("replica").await;
    let store = RedisStore::connect(&servers.url()).await.unwrap();
    let keys = Keys::new("redis_replica");
    servers.demote_first().await;
    let made_anew = |level: tracing::Level| {
        captured
            .events()
            .iter()
            .filter(|event| {
                event.level == level && event.message.starts_with("Redis connection made anew")
            })
            .count()
    };
    // Each claim answered READONLY, each ping (a readiness check) answered:
    // a replica serves reads, which do not count as the server serving.
    let claim = async |n: &mut u32| {
        *n += 1;
        let err = store
            .claim(&keys.key(&n.to_string()), DEFAULT_LEASE)
            .await
            .expect_err("a replica takes no writes");
        assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
        store.ping().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + crate::support::process::PATIENCE;
    // The first attempt at once, told at `warn`; the second 2 s after it
    // began, told at `debug`.
    while made_anew(tracing::Level::DEBUG) == 0 && made_anew(tracing::Level::WARN) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not made anew twice: {}",
            captured.text()
        );
        claim(&mut n).await;
    }
    // The third waits 4 s from the second's start: none in the next 2 s
    // (the second began before its line was seen).
    let window = std::time::Instant::now();
    while window.elapsed() < Duration::from_secs(2) {
        claim(&mut n).await;
    }
    assert_eq!(made_anew(tracing::Level::WARN), 1, "{}", captured.text());
    assert_eq!(
        made_anew(tracing::Level::DEBUG),
        1,
        "{n} claims; {}",
        captured.text()
    );
}

/// A call that times out while the server stalls a moment (here writes
/// paused for a second, `CLIENT PAUSE WRITE`, as a fork or a slow command
/// can hold a server) does not have a live connection made anew: asked
/// with a `PING` behind the stalled call, it answers once the stall ends,
/// and is kept.
#[tokio::test]
async fn a_connection_that_answers_a_ping_after_a_timeout_is_kept() {
    let (captured, _guard) = crate::support::capture::capture();
    let servers = Failover::start("paused").await;
    let store = RedisStore::connect(&servers.url()).await.unwrap();
    let keys = Keys::new("redis_paused");
    claimed(store.claim(&keys.key("before"), DEFAULT_LEASE).await);
    let store = store.with_timeout(Duration::from_millis(300)).unwrap();
    let mut first = servers.raw("first.sock").await;
    // A claim sent within the pause times out; one sent after it (a slow
    // machine) lands, and the pause is made again.
    let mut n = 0;
    loop {
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1000)
            .arg("WRITE")
            .query_async::<()>(&mut first)
            .await
            .unwrap();
        n += 1;
        match store
            .claim(&keys.key(&format!("paused {n}")), DEFAULT_LEASE)
            .await
        {
            Err(err) if err.kind() == StoreErrorKind::Timeout => break,
            Ok(Claim::Claimed(_)) if n < 20 => {}
            other => panic!("{other:?}"),
        }
    }
    let told = |what: &str| {
        captured
            .events()
            .iter()
            .any(|event| event.message.starts_with(what))
    };
    let deadline = tokio::time::Instant::now() + crate::support::process::PATIENCE;
    while !told("Redis connection answered a ping") && !told("Redis connection made anew") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            captured.text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!told("Redis connection made anew"), "{}", captured.text());
}
