//! [`RedisStore`]: a store shared by every instance through one Redis server
//! or one Redis Cluster, over TCP or TLS.
//!
//! Key formats (documented on [`RedisStore`], under Keys):
//!
//! - idempotency: the caller's key as given (the layer's
//!   `{prefix}:{account}:{event_id}`), one key per event;
//! - freshness: `{freshness prefix}:{family}:{id}`, one key per object.
//!
//! Each script touches exactly its `KEYS[1]`, so one hash slot in a Redis
//! Cluster (the `scripts_touch_one_key` test below keeps it so); the
//! braces above are placeholders, not hash tags.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{ErrorKind, RedisError, Script, Value};

use super::DEFAULT_FRESHNESS_RETENTION;
use super::{
    check_key, check_timeout, timed, ttl_millis, BoxFuture, Claim, IdempotencyStore, LeaseToken,
    Settle, StoreError, StoreErrorKind, DEFAULT_TIMEOUT,
};
use crate::ConfigError;

mod connection;
mod freshness;

use connection::{Call, Connection, Link};

/// A script whose only key is `KEYS[1]`, so that it touches one hash slot
/// in a Redis Cluster (checked in debug builds).
fn one_key_script(code: &str) -> Script {
    debug_assert!(touches_one_key(code), "a script touches another key");
    Script::new(code)
}

/// Whether `code` names `KEYS[1]` and no other key.
fn touches_one_key(code: &str) -> bool {
    let mut keys = code.match_indices("KEYS").peekable();
    keys.peek().is_some() && keys.all(|(at, _)| code[at..].starts_with("KEYS[1]"))
}

/// What a completed key holds.
const DONE: &str = "done";
/// What a claimed key holds, before the holder's token.
const CLAIMED: &str = "claimed:";

/// Claims `KEYS[1]` for the token `ARGV[1]` for `ARGV[2]` ms (a key held
/// by that token's claim already, sent again, is claimed anew).
/// Answers `{0}` claimed, `{1, pttl}` in flight, `{2}` completed. Run when
/// the native claim found the key held by a claim (or by a value this store
/// does not write).
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    one_key_script(&format!(
        r"
local value = redis.call('GET', KEYS[1])
if not value or value == '{CLAIMED}' .. ARGV[1] then
    redis.call('SET', KEYS[1], '{CLAIMED}' .. ARGV[1], 'PX', ARGV[2])
    return {{0}}
end
if value == '{DONE}' then
    return {{2}}
end
if string.sub(value, 1, {prefix}) == '{CLAIMED}' then
    return {{1, redis.call('PTTL', KEYS[1])}}
end
return redis.error_reply('ERR key holds a value the idempotency store did not write')
",
        prefix = CLAIMED.len()
    ))
});

/// Marks `KEYS[1]` done for `ARGV[2]` ms if the token `ARGV[1]` holds it.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    one_key_script(&format!(
        r"
if redis.call('GET', KEYS[1]) == '{CLAIMED}' .. ARGV[1] then
    redis.call('SET', KEYS[1], '{DONE}', 'PX', ARGV[2])
    return 1
end
return 0
"
    ))
});

/// Deletes `KEYS[1]` if the token `ARGV[1]` holds it.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    one_key_script(&format!(
        r"
if redis.call('GET', KEYS[1]) == '{CLAIMED}' .. ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
"
    ))
});

/// An idempotency store in Redis (7 or later; Valkey too, tested with 8.1),
/// shared by every instance of the app that points at the same server or
/// Redis Cluster.
///
/// Each key is one string: `claimed:<token>` with the lease as its expiry,
/// then `done` with the retention as its expiry. Redis's own clock ends both,
/// so the app servers' clocks do not matter and nothing needs reaping.
///
/// A claim of a new key, or of a completed one, is one round trip of one
/// native command, `SET key claimed:<token> NX PX <lease> GET`: it claims
/// the key unless it exists and answers what the key held. A claim that
/// finds another delivery's lease takes a second round trip, a Lua script
/// (`EVALSHA`) that reads the value and its remaining lease atomically (and
/// claims the key if that lease ended in between). Completing and releasing
/// are one round trip each, a script that checks the token and writes the
/// key atomically. After a server restart empties the script cache, the
/// first call of each script loads it once (`NOSCRIPT`, then `SCRIPT LOAD`
/// and a second `EVALSHA`).
///
/// On a server whose `SET` takes `IFEQ` (Redis 8.4 and later, Valkey 8.1
/// and later), completing is one native command instead, `SET key done
/// IFEQ claimed:<token> PX <retention>`, which does the script's work and
/// costs the server about 0.4 of it. The store finds out at its first
/// completion: a server that answers that `SET` with a syntax error (Redis
/// 7, Valkey 8.0; it writes nothing then) gets the script in the same call,
/// and from then on; any other `ERR` to it gets the script for that call
/// only. The first completion on a server without `IFEQ` thus takes two
/// round trips, within one per-call timeout.
///
/// Every call gives up after the per-call timeout (default
/// [`DEFAULT_TIMEOUT`]; a claim or a completion that takes two round trips
/// takes both within it) with [`StoreErrorKind::Timeout`]; a lost connection is
/// [`StoreErrorKind::Unavailable`] and the connection (a [`ConnectionManager`],
/// or the cluster connection) reconnects in the background. Either way the
/// layer answers 503 and Clink retries. An answer lost to a timeout may still
/// have claimed the key; that claim then holds until its lease ends.
///
/// A connection can also stay up and stop serving: the server answers
/// `READONLY` (a failover demoted it to a replica without closing its
/// clients' connections, while the address now leads to the new primary),
/// or nothing at all (half open: the server's host gone without a word,
/// which the kernel notices only some fifteen minutes later). A store made
/// by [`connect`](Self::connect) (or `connect_with_tls`) takes either as a
/// sign (a call that timed out, or that its caller gave up on first, only
/// when nothing at all came back through the connection since the call
/// began or last had a reply, and a `PING` sent behind it then gets
/// no answer within 2 s: a slow server that answers others, or one that
/// stalled a moment, is left alone) and connects anew in the background,
/// logging it at `warn` once the new connection is up; calls go on through
/// the old one meanwhile. Should the new connection show the same sign
/// before a write lands through it (the address still leads to a replica,
/// which answers reads), the next attempt waits 2 s, then twice as long
/// each time up to a minute, told at `debug`. A store over your own manager
/// ([`new`](Self::new)) cannot make it anew, and waits for the kernel or
/// the server to close it. The cluster connection follows `READONLY` by
/// itself, but not a node that answers nothing: its slots' calls time out
/// until the kernel gives up on the connection.
///
/// # Connecting
///
/// | to | call | feature |
/// |---|---|---|
/// | one server, `redis://` | [`connect`](Self::connect), or [`new`](Self::new) over your own [`ConnectionManager`] | `redis` |
/// | one server over TLS, `rediss://`, a public CA | [`connect`](Self::connect) (the system's root certificates) | `redis-tls` |
/// | one server over TLS, a private CA | `connect_with_tls(url, ca_pem)` | `redis-tls` |
/// | a Redis Cluster | `connect_cluster(&[urls])`, or `new_cluster` over your own cluster connection | `redis-cluster` |
/// | a Redis Cluster over TLS, a private CA | `connect_cluster_with_tls(&[urls], ca_pem)` | both |
///
/// TLS is the `redis` crate's rustls support with *ring*'s cryptography:
/// neither OpenSSL nor native-tls is linked. The server's certificate must
/// name the host of the URL (a DNS name or an IP address); there is no
/// switch to skip that check.
///
/// # Keys
///
/// | what | key | value | expiry |
/// |---|---|---|---|
/// | an event id | the key the layer gives, `{prefix}:{account}:{event_id}` (see [Keys](super#keys)) | `claimed:<token>`, then `done` | the lease, then the retention |
/// | an object's newest version | `{prefix}:{family}:{id}`, prefix [`DEFAULT_FRESHNESS_PREFIX`](Self::DEFAULT_FRESHNESS_PREFIX) unless [`with_freshness_prefix`](Self::with_freshness_prefix) sets another | `<created ms>\|<event id>` | [`freshness_retention`](Self::freshness_retention) after the last write |
///
/// The braces above name parts; the store adds no braces of its own. No
/// Clink family contains a `:`, so two objects never share a key.
///
/// # Redis Cluster
///
/// Every Lua script reads and writes exactly one key, its `KEYS[1]`, and
/// every other call (`GET`) one key too, so each call touches one hash slot
/// and runs on the one node that serves it; no key needs a hash tag, and
/// keys spread over the whole cluster. A `{...}` in a key or a prefix is a
/// hash tag to Redis Cluster: it still works, but every key with the same
/// tag lands on one node, so keep braces out of prefixes and account names
/// unless that is what you want. A script that touches several keys would
/// have to give them one common `{...}` tag; none does.
///
/// The store follows slot moves and failovers as the cluster connection
/// does (`MOVED`, `ASK`, `TRYAGAIN` and `CLUSTERDOWN` are retried within the
/// per-call timeout). Scripts are loaded on every primary when one answers
/// `NOSCRIPT`, so a failover or a new node costs one extra round trip.
///
/// # Durability
///
/// A completed mark is only as durable as the Redis server. Without
/// persistence, a Redis crash forgets which events were handled, and a retry
/// arriving afterwards runs its handler again (nothing is lost; something may
/// run twice). For exactly-once across Redis crashes, run Redis with
/// `appendonly yes` (`appendfsync everysec` or `always`), or use
/// [`PostgresStore`](super::PostgresStore), whose marks are durable, and
/// which can commit the mark together with your own writes. In a cluster,
/// writes acknowledged by a primary that fails before its replica copied
/// them are lost the same way.
///
/// Every key has an expiry, so the server must not evict keys under memory
/// pressure: run it with `maxmemory-policy noeviction` (Redis's default), so
/// that a full server refuses writes (answered `503`) instead of dropping a
/// live claim. [`connect`](Self::connect) logs a warning when the server says
/// it has another policy (in a cluster, the node that answers the check).
///
/// It is also a [`FreshnessStore`](crate::store::FreshnessStore) for
/// [`EventRouter::ordering`](crate::EventRouter::ordering), with one key per
/// object (see [Keys](#keys)). Recording is one Lua script that keeps the
/// newer version; reading is one `GET`.
///
/// # Example
///
/// ```no_run
/// use std::sync::Arc;
/// use clink_webhooks::store::{IdempotencyStore, RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let url = std::env::var("REDIS_URL")?;
/// let store: Arc<dyn IdempotencyStore> = Arc::new(RedisStore::connect(&url).await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    link: Link,
    /// Set once the server refused `SET .. IFEQ`, shared by clones.
    no_ifeq: Arc<AtomicBool>,
    timeout: Duration,
    freshness_prefix: Arc<str>,
    freshness_retention: Duration,
}

impl RedisStore {
    /// A store over an existing connection manager, with the default timeout.
    ///
    /// The store's timeout ([`with_timeout`](Self::with_timeout)) bounds
    /// each call, but the connection manager's own response timeout still
    /// applies: build it with
    /// `ConnectionManagerConfig::set_response_timeout(None)` (as
    /// [`connect`](Self::connect) does) for a store timeout longer than the
    /// redis crate's default of 500 ms.
    ///
    /// The manager reconnects when its connection breaks, but the store
    /// cannot make it anew when the connection stays up and stops serving
    /// (a server answering `READONLY` after a failover, a connection half
    /// open), as one [`connect`](Self::connect) made does.
    #[must_use]
    pub fn new(connection: ConnectionManager) -> Self {
        Self::with_link(Link::single(connection))
    }

    fn with_link(link: Link) -> Self {
        Self {
            link,
            no_ifeq: Arc::default(),
            timeout: DEFAULT_TIMEOUT,
            freshness_prefix: Self::DEFAULT_FRESHNESS_PREFIX.into(),
            freshness_retention: DEFAULT_FRESHNESS_RETENTION,
        }
    }

    /// Logs a warning when the server may evict keys under memory pressure:
    /// every key this store writes has an expiry, so a `volatile-*` or
    /// `allkeys-*` policy could drop a live claim or a completed mark. Says
    /// nothing when the server hides its configuration (`CONFIG` disabled).
    async fn warn_unless_noeviction(&self) {
        let mut call = self.link.call(false);
        let mut query = ::redis::cmd("CONFIG");
        query.arg("GET").arg("maxmemory-policy");
        let answer: Result<Vec<String>, StoreError> = timed(self.timeout, async {
            let reply = query.query_async(&mut call.connection).await;
            call.replied(&reply);
            reply.map_err(|err| store_error("CONFIG GET", &err))
        })
        .await;
        let answer = noted(call, answer);
        if let Ok(pair) = answer {
            if let Some(policy) = pair.get(1).filter(|policy| *policy != "noeviction") {
                tracing::warn!(
                    policy = policy.as_str(),
                    "Redis may evict keys under memory pressure (maxmemory-policy is not \
                     noeviction): a live claim or a completed mark could be dropped and a \
                     handler run twice"
                );
            }
        }
    }

    /// Sets how long each call waits for Redis before failing with
    /// [`StoreErrorKind::Timeout`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `timeout` is zero or longer than an hour.
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.timeout = check_timeout(timeout)?;
        Ok(self)
    }

    /// The per-call timeout.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `script` on `key` with `args` under the per-call timeout.
    async fn run(&self, script: &Script, key: &str, args: &[&str]) -> Result<Value, StoreError> {
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        self.call(true, async |connection| {
            invocation.invoke_async(connection).await
        })
        .await
    }

    /// Makes one `request` under the per-call timeout; `writes` says
    /// whether it writes (only a write that lands shows that the server
    /// serves: a replica answers reads).
    async fn call<T>(
        &self, writes: bool, request: impl AsyncFnOnce(&mut Connection) -> ::redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut call = self.link.call(writes);
        let result = timed(self.timeout, async {
            let reply = request(&mut call.connection).await;
            call.replied(&reply);
            reply.map_err(|err| store_error("Redis call failed", &err))
        })
        .await;
        noted(call, result)
    }

    async fn claim_key(&self, key: &str, lease: Duration) -> Result<Claim, StoreError> {
        self.claim_key_as(key, lease, LeaseToken::generate()).await
    }

    /// [`claim_key`](Self::claim_key) with `token`. A claim sent again with
    /// the same token (a Redis Cluster connection sends a command again
    /// after a reconnect, though the first may have been applied) finds
    /// the key held by its own claim, and has it.
    async fn claim_key_as(
        &self, key: &str, lease: Duration, token: LeaseToken,
    ) -> Result<Claim, StoreError> {
        check_key(key)?;
        let lease = ttl_millis("lease", lease)?.to_string();
        let own = format!("{CLAIMED}{}", token.as_str());
        // A new key (most deliveries) or a completed one (a retry of a
        // handled event) takes one native command, cheaper for the server
        // than a script: set the claim unless the key exists, and say what
        // it held. Only a claim held by another delivery (whose remaining
        // lease is read with the value, atomically) or a value this store
        // did not write goes on to the script.
        let mut set = ::redis::cmd("SET");
        set.arg(key)
            .arg(&own)
            .arg("NX")
            .arg("PX")
            .arg(&lease)
            .arg("GET");
        let started = std::time::Instant::now();
        let held: Value = self
            .call(true, async |connection| set.query_async(connection).await)
            .await?;
        match held {
            Value::Nil => return Ok(Claim::Claimed(token)),
            Value::BulkString(value) if value == own.as_bytes() => {
                return Ok(Claim::Claimed(token))
            }
            Value::BulkString(value) if value == DONE.as_bytes() => return Ok(Claim::Completed),
            _ => {}
        }
        // The script gets what the first call left of the per-call timeout:
        // one timeout for the whole claim.
        let left = self.timeout.saturating_sub(started.elapsed());
        let reply = timed(left, self.run(&CLAIM, key, &[token.as_str(), &lease])).await?;
        let Value::Array(items) = reply else {
            return Err(unexpected("the idempotency script", &reply));
        };
        match items.as_slice() {
            [Value::Int(0)] => Ok(Claim::Claimed(token)),
            [Value::Int(2)] => Ok(Claim::Completed),
            [Value::Int(1), Value::Int(pttl)] => match u64::try_from(*pttl) {
                Ok(millis) => Ok(Claim::InFlight {
                    retry_after: Duration::from_millis(millis),
                }),
                // -1: a claim without expiry, which this store never writes.
                Err(_) => Err(StoreError::new(
                    StoreErrorKind::Protocol,
                    "a claimed key has no expiry; it was not written by this store",
                )),
            },
            _ => Err(StoreError::new(
                StoreErrorKind::Protocol,
                format!("unexpected claim reply of {} items", items.len()),
            )),
        }
    }

    /// Completes `key` if `token` holds it: natively where the server can,
    /// otherwise by the script.
    async fn complete_key(
        &self, key: &str, token: &LeaseToken, retention: Duration,
    ) -> Result<Settle, StoreError> {
        let retention = ttl_millis("retention", retention)?.to_string();
        check_key(key)?;
        // One timeout for the whole completion, both tries included.
        let mut call = self.link.call(true);
        let completed = timed(
            self.timeout,
            self.complete_checked(&mut call, key, token, &retention),
        )
        .await;
        noted(call, completed)
    }

    async fn complete_checked(
        &self, call: &mut Call, key: &str, token: &LeaseToken, retention: &str,
    ) -> Result<Settle, StoreError> {
        if !self.no_ifeq.load(Ordering::Relaxed) {
            let mut set = ::redis::cmd("SET");
            set.arg(key)
                .arg(DONE)
                .arg("IFEQ")
                .arg(format!("{CLAIMED}{}", token.as_str()))
                .arg("PX")
                .arg(retention);
            let reply = set.query_async::<Value>(&mut call.connection).await;
            call.replied(&reply);
            match reply {
                Ok(Value::Okay) => return Ok(Settle::Applied),
                Ok(Value::Nil) => return Ok(Settle::LeaseLost),
                Ok(other) => return Err(unexpected("SET .. IFEQ", &other)),
                // A server without IFEQ refuses the command with a syntax
                // error and writes nothing; it gets the script from then on.
                // Any other plain `ERR` (a proxy's wording, say) gets the
                // script for this call, which checks the token again.
                Err(err) if err.code() == Some("ERR") => {
                    if is_syntax_error(&err) {
                        self.no_ifeq.store(true, Ordering::Relaxed);
                    }
                }
                Err(err) => return Err(store_error("Redis call failed", &err)),
            }
        }
        // The key was checked; the script runs within the caller's timeout.
        let mut invocation = COMPLETE.key(key);
        invocation.arg(token.as_str()).arg(retention);
        let reply = invocation.invoke_async(&mut call.connection).await;
        call.replied(&reply);
        let reply = reply.map_err(|err| store_error("Redis call failed", &err))?;
        settled(reply)
    }

    async fn settle(
        &self, script: &Script, key: &str, args: &[&str],
    ) -> Result<Settle, StoreError> {
        check_key(key)?;
        settled(self.run(script, key, args).await?)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .field("freshness_prefix", &self.freshness_prefix)
            .field("freshness_retention", &self.freshness_retention)
            .finish_non_exhaustive()
    }
}

impl IdempotencyStore for RedisStore {
    fn claim<'a>(
        &'a self, key: &'a str, lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(self.claim_key(key, lease))
    }

    fn complete<'a>(
        &'a self, key: &'a str, token: &'a LeaseToken, retention: Duration,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(self.complete_key(key, token, retention))
    }

    fn release<'a>(
        &'a self, key: &'a str, token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<Settle, StoreError>> {
        Box::pin(async move { self.settle(&RELEASE, key, &[token.as_str()]).await })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut call = self.link.call(false);
            let pinged = timed(self.timeout, async {
                let reply = ::redis::cmd("PING")
                    .query_async::<String>(&mut call.connection)
                    .await;
                call.replied(&reply);
                reply.map(drop).map_err(|err| store_error("PING", &err))
            })
            .await;
            noted(call, pinged)
        })
    }
}

/// `result`, that of `call`, noted on it: a connection that answered
/// nothing in time is made anew.
fn noted<T>(mut call: Call, result: Result<T, StoreError>) -> Result<T, StoreError> {
    call.noted(
        result
            .as_ref()
            .is_err_and(|err| err.kind() == StoreErrorKind::Timeout),
    );
    result
}

/// What a settle script answered: `1` applied, `0` the lease was lost.
fn settled(reply: Value) -> Result<Settle, StoreError> {
    match reply {
        Value::Int(1) => Ok(Settle::Applied),
        Value::Int(0) => Ok(Settle::LeaseLost),
        other => Err(unexpected("the idempotency script", &other)),
    }
}

/// Whether `err`, an `ERR` answer to `SET .. IFEQ`, is the syntax error a
/// server without `IFEQ` answers.
fn is_syntax_error(err: &RedisError) -> bool {
    err.detail()
        .is_some_and(|detail| detail.to_ascii_lowercase().contains("syntax error"))
}

/// A [`StoreError`] for a failed Redis call, built from the error's kind and
/// codes only: never from text that could echo the URL or the password.
fn store_error(context: &str, err: &RedisError) -> StoreError {
    use ::redis::ServerErrorKind as Server;

    let unavailable =
        |why: &str| StoreError::new(StoreErrorKind::Unavailable, format!("{context}: {why}"));
    if err.is_timeout() {
        return StoreError::new(StoreErrorKind::Timeout, format!("{context}: timed out"));
    }
    #[cfg(feature = "redis-tls")]
    if let Some(why) = connection::tls::failure(err) {
        return unavailable(&why);
    }
    if err.is_connection_refusal() {
        return unavailable("connection refused");
    }
    if err.is_io_error() || err.is_connection_dropped() {
        return unavailable("connection lost");
    }
    match err.kind() {
        ErrorKind::AuthenticationFailed => {
            unavailable("authentication failed (check the credentials in the URL)")
        }
        ErrorKind::Server(
            Server::BusyLoading
            | Server::TryAgain
            | Server::MasterDown
            | Server::ClusterDown
            | Server::ReadOnly,
        ) => unavailable(err.category()),
        // Refusals the server lifts by itself (memory freed, a script
        // ended, a snapshot written, replicas back): worth another try.
        ErrorKind::Extension if err.code().is_some_and(is_passing_refusal) => {
            unavailable(&format!("server answered {}", err.code().unwrap_or("")))
        }
        // No connection to the node a key lives on (a Cluster failing over
        // or cut off), a reply that could not be read (the connection is
        // made anew), no primary or replica known yet: passing, as a lost
        // connection is, so that a completion is tried again.
        ErrorKind::ClusterConnectionNotFound
        | ErrorKind::Parse
        | ErrorKind::MasterNameNotFoundBySentinel
        | ErrorKind::NoValidReplicasFoundBySentinel => unavailable(err.category()),
        ErrorKind::Server(_) => StoreError::new(
            StoreErrorKind::Protocol,
            format!(
                "{context}: server answered {} {}",
                err.code().unwrap_or("ERR"),
                err.detail().unwrap_or("")
            ),
        ),
        _ => StoreError::new(
            StoreErrorKind::Protocol,
            format!("{context}: {}", err.category()),
        ),
    }
}

/// Whether `code` is a server refusal that passes without the client's
/// doing: out of memory, busy with a script, unable to persist, or short
/// of replicas.
fn is_passing_refusal(code: &str) -> bool {
    matches!(code, "OOM" | "BUSY" | "MISCONF" | "NOREPLICAS")
}

/// A [`StoreError`] for a reply of the wrong shape from `source`.
fn unexpected(source: &str, reply: &Value) -> StoreError {
    let shape = match reply {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::Array(_) => "an array",
        Value::SimpleString(_) | Value::BulkString(_) => "a string",
        _ => "another type",
    };
    StoreError::new(
        StoreErrorKind::Protocol,
        format!("unexpected reply from {source}: {shape}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors the client recovers from by connecting again are passing
    /// (`Unavailable`, which a completion is tried again on); a wrong
    /// reply or a refused command is not.
    #[test]
    fn errors_a_new_connection_lifts_are_passing() {
        for kind in [
            ErrorKind::ClusterConnectionNotFound,
            ErrorKind::Parse,
            ErrorKind::MasterNameNotFoundBySentinel,
            ErrorKind::NoValidReplicasFoundBySentinel,
        ] {
            let error = store_error("call", &RedisError::from((kind, "what")));
            assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{kind:?}");
        }
        for kind in [ErrorKind::UnexpectedReturnType, ErrorKind::Client] {
            let error = store_error("call", &RedisError::from((kind, "what")));
            assert_eq!(error.kind(), StoreErrorKind::Protocol, "{kind:?}");
        }
    }

    #[test]
    fn scripts_touch_one_key() {
        assert!(touches_one_key("redis.call('GET', KEYS[1])"));
        assert!(!touches_one_key("return 1"));
        assert!(!touches_one_key("redis.call('GET', KEYS[1], KEYS[2])"));
        assert!(!touches_one_key("local k = KEYS; return k[1]"));
        // Each script checks itself when it is first built.
        for script in [&CLAIM, &COMPLETE, &RELEASE, &freshness::RECORD] {
            LazyLock::force(script);
        }
    }

    /// A claim sent again with its token, after the first was applied (as a
    /// Redis Cluster connection does after a reconnect), has the key, and
    /// another delivery's claim finds it in flight; through the native
    /// command and through the script alike.
    #[tokio::test]
    async fn a_claim_sent_again_has_its_own_key() {
        let url = std::env::var("REDIS_URL")
            .expect("REDIS_URL is not set: run scripts/test, which starts Redis");
        let store = RedisStore::connect(&url).await.unwrap();
        let key = format!("clink-test-resent-{}", LeaseToken::generate().as_str());
        let lease = Duration::from_secs(30);
        let token = LeaseToken::generate();
        for _ in 0..2 {
            let claim = store
                .claim_key_as(&key, lease, token.clone())
                .await
                .unwrap();
            assert!(
                matches!(&claim, Claim::Claimed(t) if t == &token),
                "{claim:?}"
            );
        }
        let reply = store
            .run(&CLAIM, &key, &[token.as_str(), "30000"])
            .await
            .unwrap();
        assert_eq!(reply, Value::Array(vec![Value::Int(0)]));
        let other = store.claim_key(&key, lease).await.unwrap();
        assert!(matches!(other, Claim::InFlight { .. }), "{other:?}");
    }
}
