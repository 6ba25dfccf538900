//! Where the gateway forwards events: an HTTP app, a NATS JetStream stream
//! or a Redis stream. Each `publish` returns once the destination has
//! acknowledged the event (and what it said it kept, when it says), or
//! fails, and the inbox retries the event later.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use clink_webhooks::store::NewEvent;
use clink_webhooks::{BoxError, Timestamp};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex as AsyncMutex;
use zeroize::Zeroizing;

use super::config::{Config, DestinationKind, KeySpec};
use crate::output::escaped;
use crate::urls::{Credentials, NatsServers};

/// How much of an HTTP app's answer is read (and dropped).
const ANSWER_LIMIT: usize = 64 * 1024;

/// How long the body of an HTTP destination's answer is read on the side
/// after its status decided the publish.
const ANSWER_DRAIN: Duration = Duration::from_secs(5);

/// The Lua script that adds an event to a stream once: it keeps the entry
/// id under a marker key next to the stream and, when the marker is there
/// already (an `XADD` before a crash, or an earlier run of a replayed
/// event), returns that id without adding.
///
/// Every run that finds the marker sets its expiry again to the whole
/// dedup time (`ARGV[7]` seconds), as the run that adds it does: a replay
/// keeps the event in the inbox for another `inbox_retention_hours` from
/// then, and its marker must last as long, or a later replay, after the
/// marker expired, would add the event again.
const XADD_ONCE: &str = r"
local kept = redis.call('GET', KEYS[2])
if kept then
    redis.call('EXPIRE', KEYS[2], ARGV[7])
    return {0, kept}
end
local id = redis.call('XADD', KEYS[1], '*', 'event_id', ARGV[1], 'type', ARGV[2],
    'account', ARGV[3], 'object', ARGV[4], 'created', ARGV[5], 'body', ARGV[6])
redis.call('SET', KEYS[2], id, 'EX', ARGV[7])
return {1, id}
";

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A destination, connected (or connecting) and ready to publish.
pub(crate) struct Destination {
    /// The destination as metrics, logs and `/health` name it: its URL
    /// with any password masked.
    pub(crate) name: String,
    kind: Kind,
    timeout: Duration,
}

enum Kind {
    Http {
        url: http::Uri,
        authorization: Option<HeaderValue>,
        signers: Signers,
        client: HttpsClient,
        /// Room for the answers' bodies read on the side: as many as
        /// publishes run at once. A body without room is dropped, and its
        /// connection with it, rather than holding one open per forward.
        drains: Arc<tokio::sync::Semaphore>,
    },
    Nats {
        servers: NatsServers,
        stream: String,
        subject: String,
        /// The subjects the stream holds (see [`stream_subject`](super::config::stream_subject)).
        stream_subjects: String,
        duplicate_window: Duration,
        /// How many servers keep the stream, when the gateway makes it;
        /// the least an existing stream must have.
        replicas: usize,
        /// The largest body the gateway takes (`body_limit_bytes`).
        body_limit: usize,
        /// The connection once made and the stream exists; replaced by a
        /// new one after a publish on it failed or ran out of time.
        context: AsyncMutex<Option<NatsLink>>,
        /// What the stream may lose that this process has told (see
        /// [`stream_warnings`]): each is told once, at start or at the
        /// first connection that finds it.
        told: std::sync::Mutex<Vec<String>>,
    },
    Redis {
        client: redis::Client,
        stream: Streams,
        /// The connections once made (see [`Links`]); each replaced by a
        /// new one after a publish on it failed or ran out of time (the
        /// client itself reconnects only when the server closes it, not
        /// when it stalls).
        connection: Links<redis::aio::ConnectionManager>,
    },
    /// A Redis Cluster: the stream and its marker share a hash slot (the
    /// marker's key tags the stream's name), so the script runs on the
    /// node that holds the stream.
    RedisCluster {
        client: redis::cluster::ClusterClient,
        stream: Streams,
        /// As a single server's.
        connection: Links<redis::cluster_async::ClusterConnection>,
    },
}

/// A key that verifies deliveries, with the name the layer records on the
/// events it verifies (see [`KeySpec::recorded_name`]), worked out once when
/// the keys are loaded instead of on every forward.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    key: KeySpec,
    name: Option<String>,
}

impl VerifyingKey {
    /// `keys`, in their order, each with its recorded name.
    pub(crate) fn named(keys: &[KeySpec]) -> Vec<Self> {
        keys.iter()
            .map(|key| Self {
                name: key.recorded_name(),
                key: key.clone(),
            })
            .collect()
    }
}

/// The keys that verify deliveries, per account (`""` with one key),
/// newest first, with their recorded names: what forwards to an HTTP
/// destination are signed with. Replaced whole when `accounts_file` is
/// re-read.
pub(crate) type AccountKeys = Arc<RwLock<BTreeMap<String, Vec<VerifyingKey>>>>;

/// The keys forwards to an HTTP destination are signed with, at the time
/// each is sent: the app verifies them with a tolerance as tight as Clink's
/// own, however long an event waited in the inbox.
#[derive(Clone)]
pub(crate) enum Signers {
    /// `destination_signing_key`: one key for every event.
    Own(KeySpec),
    /// The keys that verify deliveries, per account (`""` with one key),
    /// newest first: each event is signed with the key that verified it
    /// while that key signs (not expired, and within its `signed_until`
    /// when it was rotated out), else the newest that does.
    Verifying(AccountKeys),
}

impl Signers {
    /// The secret to sign `event`'s forward with.
    fn secret_for(&self, event: &NewEvent) -> Result<Zeroizing<String>, String> {
        let keys = match self {
            Self::Own(key) => return Ok(Zeroizing::new(key.secret().to_owned())),
            Self::Verifying(keys) => keys.read().unwrap_or_else(PoisonError::into_inner),
        };
        let account = event.account.as_deref().unwrap_or("");
        let Some(keys) = keys.get(account).or_else(|| keys.get("")) else {
            return Err(format!(
                "no key of the account {} to sign its forward with (it is no longer in \
                 accounts_file); add it back, or set destination_signing_key",
                escaped(account)
            ));
        };
        let now = clink_webhooks::Timestamp::now();
        let live = || keys.iter().filter(|named| named.key.signs_at(now));
        let verified_by = event.signing_key.as_deref();
        let named = live()
            .find(|named| verified_by.is_some() && named.name.as_deref() == verified_by)
            .or_else(|| live().next())
            .or_else(|| keys.first())
            .ok_or("no key to sign the forward with")?;
        Ok(Zeroizing::new(named.key.secret().to_owned()))
    }
}

/// What a Redis destination adds events to, and how.
struct Streams {
    /// The stream name template.
    template: String,
    /// How long an event's marker keeps it from being added twice, from
    /// the last run of [`XADD_ONCE`] that added or found it:
    /// `redis_dedup_hours` and two of the inbox's purge periods.
    dedup: Duration,
    script: redis::Script,
    /// How many replicas must have an entry before its event counts as
    /// published (`WAIT`), and how long to wait for them.
    wait: Option<(u64, Duration)>,
    /// The largest body the server takes (see [`read_body_limit`]), as
    /// last read from it; Redis's default until one is read. Only a hint:
    /// a larger body is refused only once the server's limit, read again
    /// then, says so.
    largest: AtomicUsize,
    /// The largest body the gateway takes (`body_limit_bytes`).
    body_limit: usize,
}

/// The largest body the Redis server on `connection` takes in the script
/// that adds an event: its `proto-max-bulk-len` (the largest argument),
/// or its `client-query-buffer-limit` when lower (what a client's buffer
/// holds while a large argument comes). A larger one is refused by the
/// server, and would be refused however often it is sent. `None` when the
/// server does not say (`CONFIG` is in Redis's `@admin` category, which a
/// user of least privilege may not run).
async fn read_body_limit<C: redis::aio::ConnectionLike + Send>(
    connection: &mut C,
) -> Option<usize> {
    let mut pipeline = redis::pipe();
    pipeline
        .cmd("CONFIG")
        .arg("GET")
        .arg("proto-max-bulk-len")
        .cmd("CONFIG")
        .arg("GET")
        .arg("client-query-buffer-limit");
    let (bulk, buffer): (BTreeMap<String, String>, BTreeMap<String, String>) =
        pipeline.query_async(connection).await.ok()?;
    let read = |answer: &BTreeMap<String, String>, name: &str| {
        answer
            .get(name)
            .and_then(|value| value.parse::<usize>().ok())
    };
    let bulk = read(&bulk, "proto-max-bulk-len")?;
    Some(match read(&buffer, "client-query-buffer-limit") {
        Some(buffer) => bulk.min(buffer),
        None => bulk,
    })
}

/// The key of the marker that keeps `event` from being added twice to the
/// stream `stream_name` (in the stream's hash slot, by its braces).
pub(crate) fn xadd_marker(stream_name: &str, event: &NewEvent) -> String {
    format!("clink-webhook:xadd:{{{stream_name}}}:{}", message_id(event))
}

/// For tests: a connection to `client`'s server that waits as long as a
/// slow, busy machine needs for an answer (the `redis` crate's own default
/// gives up after 500 ms, which a replica's first sync can pass).
#[cfg(test)]
pub(crate) async fn patient_connection(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(120)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// For tests: how many entries the stream `stream` on the Redis server at
/// `url` holds; the stream and `event`'s marker are then deleted.
#[cfg(test)]
pub(crate) async fn stream_entries_then_delete(url: &str, stream: &str, event: &NewEvent) -> u64 {
    let mut redis = patient_connection(&redis::Client::open(url).unwrap())
        .await
        .unwrap();
    let entries: u64 = redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: u64 = redis::cmd("DEL")
        .arg(stream)
        .arg(xadd_marker(stream, event))
        .query_async(&mut redis)
        .await
        .unwrap();
    entries
}

impl Streams {
    /// Refuses `event` for good when its body is larger than the server
    /// on `connection` takes (see [`read_body_limit`]): the server would
    /// refuse it however often it is sent. A body over the limit last read
    /// has the limit read again (it may have been raised since), and is
    /// refused only when the server says so now; one that cannot be read
    /// now lets the body go to the server, which decides.
    async fn fits<C: redis::aio::ConnectionLike + Send>(
        &self, connection: &mut C, event: &NewEvent, name: &str,
    ) -> Result<(), BoxError> {
        if event.body.len() <= self.largest.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(largest) = read_body_limit(connection).await else {
            return Ok(());
        };
        self.largest.store(largest, Ordering::Relaxed);
        if event.body.len() > largest {
            return Err(EventRefused::permanent(format!(
                "{name}: the event's body is {} bytes, more than the {largest} the server takes \
                 (its proto-max-bulk-len, or client-query-buffer-limit when lower)",
                event.body.len()
            ))
            .into());
        }
        Ok(())
    }

    /// Adds `event` to its stream once (see [`XADD_ONCE`]) over `connection`;
    /// the entry's id.
    async fn add<C: redis::aio::ConnectionLike + Send>(
        &self, connection: &mut C, event: &NewEvent, name: &str,
    ) -> Result<String, BoxError> {
        let stream_name = fill(&self.template, event);
        let marker = xadd_marker(&stream_name, event);
        let Some((replicas, within)) = self.wait else {
            let (_added, id): (i64, String) = self
                .script
                .key(&stream_name)
                .key(&marker)
                .arg(&event.event_id)
                .arg(&event.event_type)
                .arg(event.account.as_deref().unwrap_or(""))
                .arg(event.object_key.as_deref().unwrap_or(""))
                .arg(event.created.map_or(String::new(), |c| c.to_string()))
                .arg(&event.body[..])
                .arg(self.dedup.as_secs())
                .invoke_async(connection)
                .await
                .map_err(|e| format!("{name}: XADD failed: {}", e.kind_text()))?;
            return Ok(id);
        };
        // The replicas have every write sent on a connection before its
        // WAIT: the entry, or (when the marker was found) the marker's new
        // expiry, which comes after the entry in the primary's stream of
        // writes. A failover to a replica that had not the entry would lose
        // it, while the inbox had the event done; fewer replicas than
        // asked, and it is published again (the marker keeps the entry
        // one). The script and the WAIT go as one pipeline, so on one
        // connection: a WAIT sent alone could go on a connection made anew
        // since the script, which has written nothing and is confirmed at
        // once. The script goes by its hash, as without WAIT; a server
        // that lacks it (restarted since the start's SCRIPT LOAD) has it
        // loaded, and the pipeline is sent again.
        let millis = u64::try_from(within.as_millis()).unwrap_or(u64::MAX).max(1);
        let pipeline = || {
            let mut pipeline = redis::pipe();
            pipeline
                .cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(2)
                .arg(&stream_name)
                .arg(&marker)
                .arg(&event.event_id)
                .arg(&event.event_type)
                .arg(event.account.as_deref().unwrap_or(""))
                .arg(event.object_key.as_deref().unwrap_or(""))
                .arg(event.created.map_or(String::new(), |c| c.to_string()))
                .arg(&event.body[..])
                .arg(self.dedup.as_secs())
                .cmd("WAIT")
                .arg(replicas)
                .arg(millis);
            pipeline
        };
        let failed =
            |e: redis::RedisError| format!("{name}: XADD and WAIT failed: {}", e.kind_text());
        let sent: redis::RedisResult<((i64, String), i64)> =
            pipeline().query_async(connection).await;
        let ((_added, id), confirmed) = match sent {
            Err(error) if error.code() == Some("NOSCRIPT") => {
                let _: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(XADD_ONCE)
                    .query_async(connection)
                    .await
                    .map_err(|e| format!("{name}: SCRIPT LOAD failed: {}", e.kind_text()))?;
                pipeline().query_async(connection).await.map_err(failed)?
            }
            sent => sent.map_err(failed)?,
        };
        if u64::try_from(confirmed).unwrap_or(0) < replicas {
            return Err(format!(
                "{name}: {confirmed} of the {replicas} replicas asked for \
                 (redis_wait_replicas) confirmed the entry within {millis} ms; the event is \
                 published again (its entry is kept once)"
            )
            .into());
        }
        Ok(id)
    }
}

/// A failure that is the event's, not the destination's: the destination
/// answered, and refused this one event (an HTTP app's `400` or `422`),
/// and the event is retried as any other; or the event cannot be sent as
/// it is ([`permanent`](Self::permanent)), and it is dead at once. The
/// destination is not failing for it.
#[derive(Debug)]
pub(crate) struct EventRefused {
    message: String,
    /// Whether it will be refused the same way however often it is sent
    /// (it cannot be sent as it is): then it is dead at once, for an
    /// operator to replay once the cause is fixed.
    pub(crate) permanent: bool,
}

impl EventRefused {
    /// Refused this time: retried as any failure.
    pub(crate) fn retried(message: String) -> Self {
        Self {
            message,
            permanent: false,
        }
    }

    /// Refused however often it is sent.
    pub(crate) fn permanent(message: String) -> Self {
        Self {
            message,
            permanent: true,
        }
    }
}

impl std::fmt::Display for EventRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EventRefused {}

/// Whether an HTTP app's answer `status` (not a success) is about the
/// event alone: a `4xx` that says the request itself is wrong (`400`,
/// `409`, `413`, `422`, ...), not one that says every request would be
/// (an unknown path or method, no access, a timeout, too many requests).
fn refuses_the_event(status: http::StatusCode) -> bool {
    status.is_client_error()
        && ![401, 403, 404, 405, 407, 408, 410, 421, 426, 429].contains(&status.as_u16())
}

/// Whether a Redis error at start may pass by itself: the server out of
/// reach, loading its data after a restart, a cluster without a primary for
/// now, or every client slot taken. Any other lasts until the
/// configuration changes.
fn passes(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || matches!(
            error.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
            )
        )
        || error
            .detail()
            .is_some_and(|detail| detail.contains("max number of clients"))
}

/// The bytes of a NATS message's headers beside their names and values:
/// `NATS/1.0\r\n`, `: ` and `\r\n` on each of the two lines, and the
/// blank line that ends them.
const NATS_HEADER_LINES: usize = 10 + 2 * 4 + 2;

/// Room for the headers of a message beside its body, at most: the lines,
/// `Nats-Msg-Id` with an account and an event id, `Clink-Event-Type` with
/// a type, each as long as the intake takes them.
const NATS_HEADER_ROOM: usize = 1024;

/// The largest argument a Redis server takes unless configured otherwise
/// (`proto-max-bulk-len`, 512 MiB): an event's body is one argument of
/// the script that adds it.
const REDIS_BULK_DEFAULT: usize = 512 * 1024 * 1024;

/// How long before the duplicate window ends, beyond the destination's
/// timeout, a publish repeated after an unknown outcome looks for the
/// earlier one first: a minute, since the earlier publish's start was
/// read on the clock of whichever gateway made it, which may be ahead of
/// this one's (the README asks for clocks within a minute).
const LOOKUP_MARGIN: Duration = Duration::from_secs(60);

/// How long after the latest publish of an event whose outcome is not
/// known, beyond twice the destination's timeout, the stream may still
/// keep it: its client hands it over within one timeout, reconnects at
/// most once within another, and ends; but the system may still be
/// sending bytes already written, for as long as TCP retransmits them
/// (about a quarter of an hour at Linux's defaults), and a server's clock
/// may be a minute ahead. A lookup reads no further.
const LATE_ARRIVAL: Duration = Duration::from_secs(20 * 60);

/// Earlier publishes of an event whose outcome is not known, as a NATS
/// publish looks for them in the stream before publishing again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unconfirmed {
    /// When the earliest may have been kept from: when it began, or when
    /// a lookup last found none.
    pub(crate) since: Timestamp,
    /// When the latest began; `None` when not known, and a lookup then
    /// reads to the stream's end.
    pub(crate) latest: Option<Timestamp>,
    /// How far an unfinished lookup read (see [`ReadPoint`]): the next one
    /// in the same stream reads on after it, not from `since` again, so
    /// that lookups cut short by the destination's timeout (a long backlog
    /// on the subject) still come to an end.
    pub(crate) read_to: Option<ReadPoint>,
}

/// How far a lookup read: the last message on the subject it read and
/// found not to be the event, every one on the subject before it in the
/// stream since the lookup's start read too.
///
/// A later lookup skips the messages up to it by their sequence, which
/// rises in the order the stream keeps them, whichever server leads it
/// (a time may not: a new leader's clock can be behind). Any publish of
/// the event not yet known when that lookup began, and so not covered by
/// its start, came after it, and is kept after that point. A sequence
/// counts only in the stream it was read in: the stream made again (its
/// creation time another) starts its sequences afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReadPoint {
    /// When that message was kept, on the servers' clock: a point before a
    /// later lookup's start is no use to it.
    pub(crate) time: Timestamp,
    /// The message's sequence in the stream.
    pub(crate) sequence: u64,
    /// When the stream was made, in nanoseconds since the epoch.
    pub(crate) stream_made: i128,
}

impl std::fmt::Display for ReadPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, sequence {} of the stream made {}",
            self.time, self.sequence, self.stream_made
        )
    }
}

impl std::str::FromStr for ReadPoint {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (time, rest) = text.split_once(", sequence ").ok_or(())?;
        let (sequence, made) = rest.split_once(" of the stream made ").ok_or(())?;
        Ok(Self {
            time: time.parse().map_err(|_| ())?,
            sequence: sequence.parse().map_err(|_| ())?,
            stream_made: made.parse().map_err(|_| ())?,
        })
    }
}

/// What a lookup has read so far (see [`ReadPoint`]), kept as it goes, so
/// that what a lookup cut short read still counts.
pub(crate) struct ReadTo {
    /// When the stream read was made, once the lookup has found it.
    made: Mutex<Option<i128>>,
    /// The last message read, not the event: its sequence and time.
    last: Mutex<Option<(u64, Timestamp)>>,
}

impl ReadTo {
    pub(crate) fn new() -> Self {
        Self {
            made: Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    /// The lookup reads the stream made at `made`.
    fn begin(&self, made: i128) {
        *self.made.lock().unwrap_or_else(PoisonError::into_inner) = Some(made);
    }

    /// The message `sequence`, kept at `time`, read, not the event.
    fn read(&self, sequence: u64, time: time::OffsetDateTime) {
        let millis =
            i64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(i64::MIN);
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|(read, _)| sequence > read) {
            *last = Some((sequence, Timestamp::from_millis(millis)));
        }
    }

    /// How far, if a message was read.
    pub(crate) fn get(&self) -> Option<ReadPoint> {
        let made = (*self.made.lock().unwrap_or_else(PoisonError::into_inner))?;
        let (sequence, time) = (*self.last.lock().unwrap_or_else(PoisonError::into_inner))?;
        Some(ReadPoint {
            time,
            sequence,
            stream_made: made,
        })
    }
}

/// A publish that failed after the event was handed to the destination:
/// the destination may have kept it.
#[derive(Debug)]
pub(crate) struct MaybeKept(pub(crate) String);

impl std::fmt::Display for MaybeKept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MaybeKept {}

/// A JetStream stream that exists and cannot take the events as
/// configured (its subjects do not cover the gateway's, its duplicate
/// window is shorter than `nats_duplicate_window_s`, it is kept by fewer
/// servers than `nats_replicas`), or one that JetStream refuses to find or
/// make for a reason that lasts (see [`lasting_refusal`]): at start, the
/// gateway does not start.
#[derive(Debug)]
pub(crate) struct StreamMismatch(String);

/// What to change, when the JetStream API refused to find or make the
/// stream with `code` for a reason that stays until someone changes the
/// configuration, the gateway's or the server's: every publish would fail
/// alike, and every event be retried until dead. `None` for a refusal that
/// may pass by itself (a cluster without a leader for now, resources
/// short), which is told and tried again with each event.
fn lasting_refusal(
    code: async_nats::jetstream::ErrorCode, subjects: &str, replicas: usize,
) -> Option<String> {
    use async_nats::jetstream::ErrorCode;
    Some(match code {
        ErrorCode::STREAM_SUBJECT_OVERLAP => format!(
            "another stream holds subjects that overlap {subjects}: set nats_stream to that \
             stream, once it holds {subjects}, or set nats_subject to subjects no other stream \
             holds"
        ),
        ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT | ErrorCode::JETSTREAM_NOT_ENABLED => {
            "JetStream is not enabled for the account of the gateway's NATS user: enable it for \
             that account on the server, or connect as a user of an account that has it"
                .to_owned()
        }
        // A server on its own keeps no stream on several servers.
        ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED => format!("nats_replicas is {replicas}"),
        ErrorCode::MAXIMUM_STREAMS_LIMIT => "the account of the gateway's NATS user may make no \
             more streams: raise its limit on the server, or set nats_stream to a stream that \
             exists"
            .to_owned(),
        ErrorCode::STREAM_INVALID_CONFIG | ErrorCode::BAD_REQUEST | ErrorCode::NO_ACCOUNT => {
            "the server refuses the stream as configured: change nats_stream, nats_subject, \
             nats_duplicate_window_s or nats_replicas, or make the stream on the server"
                .to_owned()
        }
        _ => return None,
    })
}

impl std::fmt::Display for StreamMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StreamMismatch {}

/// Whether the stream subject `held` (with `*` and `>`) takes every
/// subject that `wanted` (a subject, or one ending in `>`) stands for.
pub(crate) fn subject_covers(held: &str, wanted: &str) -> bool {
    let (mut held, mut wanted) = (held.split('.'), wanted.split('.'));
    loop {
        match (held.next(), wanted.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(token)) if token != ">" => {}
            (Some(h), Some(w)) if h == w && h != "*" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What happened to the destination lately, for `/health`.
#[derive(Debug, Default)]
pub(crate) struct Health {
    failing: Mutex<Option<(String, clink_webhooks::Timestamp)>>,
}

impl Health {
    /// The destination answered (took the event, or refused that event
    /// alone): it is not failing.
    pub(crate) fn ok(&self) {
        *self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The destination failed: no answer, or one that says it cannot take
    /// events now.
    pub(crate) fn failed(&self, error: &str) {
        let mut failing = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let since = failing
            .as_ref()
            .map_or_else(clink_webhooks::Timestamp::now, |(_, since)| *since);
        *failing = Some((error.to_owned(), since));
    }

    /// The last error and since when the destination fails, if it does.
    pub(crate) fn failing(&self) -> Option<(String, clink_webhooks::Timestamp)> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Keeps characters a NATS subject token or a key may hold; the rest become `_`.
fn token_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `template` with `{account}` and `{type}` replaced.
fn fill(template: &str, event: &NewEvent) -> String {
    template
        .replace(
            "{account}",
            &token_text(event.account.as_deref().unwrap_or("")),
        )
        .replace("{type}", &token_text(&event.event_type))
}

/// The subject of `event`: the template filled, `:` as `_`, the account's
/// `.` as `~` (it is one token), without empty tokens (the account is
/// empty with one key). The stream holds every such
/// subject: see [`stream_subject`](super::config::stream_subject).
pub(crate) fn subject(template: &str, event: &NewEvent) -> String {
    // A value of dots alone (an account named `...`, say) would leave only
    // empty tokens, dropped, and the subject without the tokens the stream
    // holds after its fixed ones (`clink.{account}` would make `clink`,
    // outside `clink.>`): `_` in its place, as for an empty type.
    let token = |value: &str| {
        let text = token_text(value);
        if !text.is_empty() && text.bytes().all(|b| b == b'.') {
            "_".to_owned()
        } else {
            text
        }
    };
    let mut event_type = token(&event.event_type);
    if event_type.is_empty() {
        // Never an empty type: the subject keeps its token count.
        event_type.push('_');
    }
    // An account is one token: its dots would split it into several, and
    // `clink.shop.>` would take the events of the account `shop.eu`. A
    // `~`, which no account holds, keeps two accounts two tokens.
    let account = token(event.account.as_deref().unwrap_or("")).replace('.', "~");
    template
        .replace("{account}", &account)
        .replace("{type}", &event_type)
        .replace(':', "_")
        .split('.')
        .filter(|token| !token.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

/// The id JetStream deduplicates a republish by: account and event id.
pub(crate) fn message_id(event: &NewEvent) -> String {
    format!(
        "{}:{}",
        event.account.as_deref().unwrap_or(""),
        event.event_id
    )
}

fn header(value: &str) -> Result<HeaderValue, BoxError> {
    HeaderValue::from_str(value).map_err(|_| {
        EventRefused::permanent("a header value the event holds is not valid".to_owned()).into()
    })
}

/// The connector of an HTTP destination: with the system's root
/// certificates for `https`; a plain `http://` one starts without them (an
/// image without `ca-certificates`), since it makes no TLS connection.
fn https_or_http(
    https: bool,
) -> Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, String>
{
    let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(builder) => builder,
        Err(e) if https => return Err(format!("cannot load the system's root certificates: {e}")),
        Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        ),
    };
    Ok(builder.https_or_http().enable_http1().build())
}

/// What a Redis server's `INFO` (its `persistence` and `memory` sections)
/// tells that can lose what the gateway counts as kept (an `XADD` answered
/// is an event done in the inbox): no append-only file (an entry written
/// since the last snapshot is gone when the server restarts), or an
/// eviction policy under a memory limit (a marker evicted lets a retry or
/// a replay add its event again; `allkeys-*` can evict a stream). A
/// section not told (a user who may not run `INFO`) says nothing.
fn what_redis_may_lose(persistence: Option<&str>, memory: Option<&str>) -> Vec<String> {
    let field = |info: Option<&str>, name: &str| {
        info?.lines().find_map(|line| {
            line.trim()
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(str::to_owned)
        })
    };
    let mut warnings = Vec::new();
    if field(persistence, "aof_enabled").as_deref() == Some("0") {
        warnings.push(
            "the server keeps no append-only file (appendonly no): an event it acknowledged \
             since its last snapshot is lost if it restarts, while the inbox has it done; set \
             appendonly yes (appendfsync everysec, or always)"
                .to_owned(),
        );
    }
    let limited = field(memory, "maxmemory").is_some_and(|bytes| bytes != "0");
    if let Some(policy) =
        field(memory, "maxmemory_policy").filter(|policy| limited && policy != "noeviction")
    {
        warnings.push(format!(
            "the server evicts keys when its memory is full (maxmemory-policy {}): an evicted \
             marker lets a retry or a replay add its event again, and a stream can be evicted \
             whole; set maxmemory-policy noeviction",
            crate::output::escaped(&policy)
        ));
    }
    warnings
}

/// What the stream `stream`, as `connection` found it, may lose of the
/// events it acknowledged: each a sentence to tell.
fn stream_warnings(stream: &str, connection: &NatsConnection) -> Vec<String> {
    let mut warnings = Vec::new();
    if connection.in_memory {
        warnings.push(format!(
            "the stream {stream} keeps its messages in memory only: an event it acknowledged, \
             and the inbox then let go of, is lost when the servers that keep it all restart; a \
             stream with file storage keeps it"
        ));
    }
    for warning in &connection.may_drop {
        warnings.push(format!("the stream {stream}: warning: {warning}"));
    }
    warnings
}

/// The `warnings` not in `told`, which holds them all afterwards.
fn untold(told: &std::sync::Mutex<Vec<String>>, warnings: Vec<String>) -> Vec<String> {
    let mut told = told
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let new: Vec<String> = warnings
        .into_iter()
        .filter(|warning| !told.contains(warning))
        .collect();
    told.extend(new.iter().cloned());
    new
}

/// What a JetStream stream's limits can remove before anyone reads it (an
/// event it acknowledged is done in the inbox, so a message removed unread
/// is an event lost): an age after which every message goes (`max_age`),
/// and a count or size past which the oldest go (`max_msgs`, `max_bytes`
/// with `discard: old`; `max_msgs_per_subject` unless the stream refuses a
/// subject's new message instead). A limit that refuses a new message
/// (`discard: new`) loses nothing: the publish is refused, the event kept in
/// the inbox and tried again. And a stream that keeps a message only while
/// a consumer wants its subject (`retention: interest`), which acknowledges
/// a publish nobody wants and keeps nothing.
fn what_stream_may_drop(config: &async_nats::jetstream::stream::Config) -> Vec<String> {
    use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy};
    let mut warnings = Vec::new();
    if config.retention == RetentionPolicy::Interest {
        warnings.push(
            "it keeps a message only while a consumer wants its subject (retention interest): \
             a publish that no consumer wants, or made while none is there, is acknowledged \
             and dropped at once, an event lost while the inbox has it done; use retention \
             limits"
                .to_owned(),
        );
    }
    if !config.max_age.is_zero() {
        warnings.push(format!(
            "it removes every message {} s after it is kept, read or not (max_age): an event not \
             read by then is lost, while the inbox has it done; set max_age 0, or longer than \
             the readers can be stopped",
            config.max_age.as_secs()
        ));
    }
    let discards_old = config.discard == DiscardPolicy::Old;
    let mut oldest_go = Vec::new();
    if discards_old && config.max_messages > 0 {
        oldest_go.push(format!("max_msgs {}", config.max_messages));
    }
    if discards_old && config.max_bytes > 0 {
        oldest_go.push(format!("max_bytes {}", config.max_bytes));
    }
    if config.max_messages_per_subject > 0
        && !(config.discard == DiscardPolicy::New && config.discard_new_per_subject)
    {
        oldest_go.push(format!(
            "max_msgs_per_subject {}",
            config.max_messages_per_subject
        ));
    }
    if !oldest_go.is_empty() {
        warnings.push(format!(
            "it removes its oldest messages, read or not, once it is full ({}): an event not \
             read by then is lost, while the inbox has it done; remove the limit, or \
             set discard new (and discard_new_per_subject) so that a full stream refuses the \
             publish and the inbox keeps the event",
            oldest_go.join(", ")
        ));
    }
    warnings
}

impl Destination {
    /// The destination `config` names; an HTTP one signs with `signers`.
    pub(crate) fn new(config: &Config, signers: Signers) -> Result<Self, String> {
        let name = config.destination.name.clone();
        let kind = match &config.destination.kind {
            DestinationKind::Http { uri, authorization } => {
                let connector = https_or_http(uri.scheme_str() == Some("https"))?;
                let client = Client::builder(TokioExecutor::new()).build(connector);
                let authorization = authorization
                    .as_ref()
                    .map(|value| {
                        let mut value = HeaderValue::from_str(value).map_err(|_| {
                            format!("{name}: its user and password do not make a valid header")
                        })?;
                        value.set_sensitive(true);
                        Ok::<_, String>(value)
                    })
                    .transpose()?;
                Kind::Http {
                    url: uri.clone(),
                    authorization,
                    signers,
                    client,
                    drains: Arc::new(tokio::sync::Semaphore::new(config.concurrency)),
                }
            }
            DestinationKind::Nats(servers) => Kind::Nats {
                servers: servers.clone(),
                stream: config.nats_stream.clone(),
                subject: config.nats_subject.clone(),
                stream_subjects: config.nats_stream_subject.clone(),
                duplicate_window: config.nats_duplicate_window,
                replicas: config.nats_replicas,
                body_limit: config.body_limit,
                context: AsyncMutex::new(None),
                told: std::sync::Mutex::default(),
            },
            DestinationKind::Redis(url) => Kind::Redis {
                client: redis::Client::open(url.as_str())
                    .map_err(|_| format!("{name}: not a valid Redis URL"))?,
                stream: Streams::new(config),
                connection: Links::new(config),
            },
            DestinationKind::RedisCluster(nodes) => Kind::RedisCluster {
                client: redis::cluster::ClusterClientBuilder::new(
                    nodes.iter().map(|node| node.as_str()).collect::<Vec<_>>(),
                )
                .connection_timeout(config.destination_timeout)
                .response_timeout(config.destination_timeout)
                .retries(1)
                .build()
                .map_err(|_| format!("{name}: not a valid Redis Cluster URL"))?,
                stream: Streams::new(config),
                connection: Links::new(config),
            },
        };
        Ok(Self {
            name,
            kind,
            timeout: config.destination_timeout,
        })
    }

    /// The kind, for metrics: `http`, `nats` or `redis`.
    pub(crate) fn kind(&self) -> &'static str {
        match self.kind {
            Kind::Http { .. } => "http",
            Kind::Nats { .. } => "nats",
            Kind::Redis { .. } => "redis",
            Kind::RedisCluster { .. } => "redis-cluster",
        }
    }

    /// Publishes `event`; what the destination said it kept, if it says.
    /// `unconfirmed` says the earlier publishes of it whose outcome is not
    /// known, if there were: a NATS destination looks for the event in the
    /// stream before publishing it again once the stream's duplicate window
    /// may have passed since, and a lookup that finds none moves
    /// `unconfirmed`'s `since` to when it began, so that the next one reads
    /// from there. A failure after the event was handed to the destination
    /// is a [`MaybeKept`].
    pub(crate) async fn publish(
        &self, event: &NewEvent, unconfirmed: &mut Option<Unconfirmed>,
    ) -> Result<Option<String>, BoxError> {
        let sent = AtomicBool::new(false);
        let read_to = ReadTo::new();
        let publishing = self.publish_now(event, unconfirmed, &sent, &read_to);
        let result = match tokio::time::timeout(self.timeout, publishing).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{} did not acknowledge within {} ms",
                self.name,
                self.timeout.as_millis()
            )
            .into()),
        };
        // What a lookup read counts, though it was cut short.
        if let (Some(earlier), Some(to)) = (unconfirmed.as_mut(), read_to.get()) {
            earlier.read_to = Some(match earlier.read_to {
                Some(before)
                    if before.stream_made == to.stream_made && before.sequence > to.sequence =>
                {
                    before
                }
                _ => to,
            });
        }
        result.map_err(|error| {
            if sent.load(Ordering::SeqCst) {
                MaybeKept(error.to_string()).into()
            } else {
                error
            }
        })
    }

    /// Whether this destination is NATS JetStream, whose duplicate window
    /// a publish repeated after an unknown outcome must stay within.
    pub(crate) fn is_nats(&self) -> bool {
        matches!(self.kind, Kind::Nats { .. })
    }

    /// At start: connects to a NATS destination and checks its stream, so
    /// that a stream that cannot keep the events as configured, or that
    /// JetStream refuses to make for a reason that lasts (see
    /// [`StreamMismatch`]), stops the gateway at once, and so does a NATS
    /// user that may not make the
    /// requests a lookup for an earlier publish makes (see
    /// [`check_lookup`]); for a single Redis server, see
    /// [`check_redis_at_start`](Self::check_redis_at_start). `Err` only for
    /// these; a destination that cannot be reached now is told on stderr,
    /// and tried again with each event.
    pub(crate) async fn check_at_start(&self) -> Result<(), String> {
        if let Kind::Redis { client, stream, .. } = &self.kind {
            return self.check_redis_at_start(client, stream).await;
        }
        let Kind::Nats {
            servers,
            stream,
            stream_subjects,
            duplicate_window,
            replicas,
            body_limit,
            context,
            told,
            ..
        } = &self.kind
        else {
            return Ok(());
        };
        let connected = tokio::time::timeout(
            self.timeout,
            self.connect_nats(
                servers,
                stream,
                stream_subjects,
                *duplicate_window,
                *replicas,
            ),
        )
        .await;
        match connected {
            Ok(Ok(connection)) => {
                for warning in untold(told, stream_warnings(stream, &connection)) {
                    eprintln!("gateway: {warning}");
                }
                if connection.largest < body_limit.saturating_add(NATS_HEADER_ROOM) {
                    eprintln!(
                        "gateway: {} takes messages of at most {} bytes (the servers' max_payload, \
                         or the stream's max_msg_size), less than body_limit_bytes ({body_limit}) \
                         and room for the headers ({NATS_HEADER_ROOM}): a body that does not fit \
                         is kept in the inbox as dead at once, never published; raise \
                         that limit, or lower body_limit_bytes to {}",
                        self.name,
                        connection.largest,
                        connection.largest.saturating_sub(NATS_HEADER_ROOM)
                    );
                }
                let checked = tokio::time::timeout(
                    self.timeout,
                    self.check_lookup_at_start(&connection, stream, stream_subjects),
                )
                .await;
                match checked {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Err(error),
                    Err(_) => eprintln!(
                        "gateway: {} did not answer the requests of a lookup for an earlier \
                         publish within {} ms; they are made again when one is needed",
                        self.name,
                        self.timeout.as_millis()
                    ),
                }
                *context.lock().await = Some(NatsLink::new(connection));
                Ok(())
            }
            Ok(Err(error)) if error.is::<StreamMismatch>() => Err(error.to_string()),
            Ok(Err(error)) => {
                eprintln!("gateway: {error}; events are kept and published once it answers");
                Ok(())
            }
            Err(_) => {
                eprintln!(
                    "gateway: {} did not answer within {} ms; events are kept and published once \
                     it answers",
                    self.name,
                    self.timeout.as_millis()
                );
                Ok(())
            }
        }
    }

    /// At start, for a single Redis server: that it lets the gateway in,
    /// is a primary (a replica refuses every write), is not a node of a
    /// Redis Cluster (which holds only some streams: the others would be
    /// refused with `MOVED`; `redis+cluster://` reaches them all), and lets
    /// its user run the script that adds an event once. `Err` for each of
    /// these, which last until the configuration changes; a server that
    /// cannot be reached now is told on stderr, and tried with each event.
    /// A server that takes smaller bodies than `body_limit_bytes` is told
    /// on stderr too: such a body is dead at once.
    async fn check_redis_at_start(
        &self, client: &redis::Client, stream: &Streams,
    ) -> Result<(), String> {
        let checked = tokio::time::timeout(self.timeout, async {
            // Answers are waited for as long as the check's own bound, not
            // the `redis` crate's default 500 ms.
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout));
            let mut connection = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            // What the server tells of itself. ROLE and INFO are in Redis's
            // `@dangerous` category, which a user of least privilege may
            // not run: then it is not told, and not held against it.
            let role: Option<Vec<redis::Value>> =
                redis::cmd("ROLE").query_async(&mut connection).await.ok();
            let mut info = Vec::new();
            for section in ["cluster", "persistence", "memory"] {
                info.push(
                    redis::cmd("INFO")
                        .arg(section)
                        .query_async::<String>(&mut connection)
                        .await
                        .ok(),
                );
            }
            let loaded: Result<String, _> = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(XADD_ONCE)
                .query_async(&mut connection)
                .await;
            let limit = read_body_limit(&mut connection).await;
            Ok::<_, redis::RedisError>((role, info, loaded, limit))
        })
        .await;
        let told_later = |what: &str| {
            eprintln!(
                "gateway: {}: {what}; events are kept and published once it answers",
                self.name
            );
            Ok(())
        };
        let (role, mut info, loaded, limit) = match checked {
            Ok(Ok(found)) => found,
            Ok(Err(error)) if passes(&error) => {
                return told_later(&format!("cannot connect: {}", error.kind_text()));
            }
            Ok(Err(error)) => return Err(self.redis_refused(&error)),
            Err(_) => {
                return told_later(&format!(
                    "did not answer within {} ms",
                    self.timeout.as_millis()
                ));
            }
        };
        let replica = role
            .as_deref()
            .and_then(<[redis::Value]>::first)
            .is_some_and(|role| {
                matches!(role, redis::Value::BulkString(role) if role == b"slave")
                    || matches!(role, redis::Value::SimpleString(role) if role == "slave")
            });
        if replica {
            return Err(format!(
                "{}: the server is a replica, which refuses every write: give the URL of the \
                 primary",
                self.name
            ));
        }
        let asked = match &self.kind {
            Kind::Redis { stream, .. } => stream.wait.map(|(replicas, _)| replicas),
            _ => None,
        };
        if let (Some(asked), Some(connected)) = (asked, connected_replicas(role.as_deref())) {
            if asked > connected {
                eprintln!(
                    "gateway: {}: warning: redis_wait_replicas is {asked}, but {connected} \
                     replicas are connected to the primary now: every publish fails, and its \
                     event is tried again, until enough are",
                    self.name
                );
            }
        }
        let (memory, persistence, cluster) = (
            info.pop().flatten(),
            info.pop().flatten(),
            info.pop().flatten(),
        );
        for warning in what_redis_may_lose(persistence.as_deref(), memory.as_deref()) {
            eprintln!("gateway: {}: warning: {warning}", self.name);
        }
        // Where the limit cannot be read, the server decides body by body.
        if let Some(largest) = limit {
            stream.largest.store(largest, Ordering::Relaxed);
            if largest < stream.body_limit {
                eprintln!(
                    "gateway: {}: warning: the server takes bodies of at most {largest} bytes (its \
                     proto-max-bulk-len, or client-query-buffer-limit when lower), \
                     less than body_limit_bytes ({}): a body that does not fit is kept in the \
                     inbox as dead at once, never published; raise the server's \
                     proto-max-bulk-len (and client-query-buffer-limit), or lower \
                     body_limit_bytes to {largest}",
                    self.name, stream.body_limit
                );
            }
        }
        if cluster.is_some_and(|info| info.lines().any(|line| line.trim() == "cluster_enabled:1")) {
            return Err(format!(
                "{}: the server is a node of a Redis Cluster, which holds only some of the \
                 streams: give its nodes as redis+cluster://host:port,host:port",
                self.name
            ));
        }
        match loaded {
            Ok(_) => Ok(()),
            Err(error) if passes(&error) => told_later(&format!(
                "cannot load the script now: {}",
                error.kind_text()
            )),
            Err(error) => Err(self.redis_refused(&error)),
        }
    }

    /// What a Redis server's lasting refusal at start says.
    fn redis_refused(&self, error: &redis::RedisError) -> String {
        format!(
            "{}: the server refused the gateway ({}): check the user and password in the URL, \
             and that the user may run EVALSHA, SCRIPT LOAD, XADD, GET, SET and EXPIRE on the \
             streams' keys (and WAIT, with redis_wait_replicas)",
            self.name,
            error.kind_text()
        )
    }

    async fn publish_now(
        &self, event: &NewEvent, unconfirmed: &mut Option<Unconfirmed>, sent: &AtomicBool,
        read_to: &ReadTo,
    ) -> Result<Option<String>, BoxError> {
        match &self.kind {
            Kind::Http {
                url,
                authorization,
                signers,
                client,
                drains,
            } => {
                // Signed now: the gateway verified the delivery when it came,
                // and the app checks this forward's time with its tolerance.
                let secret = signers
                    .secret_for(event)
                    .map_err(|e| format!("{}: {e}", self.name))?;
                let timestamp = clink_webhooks::Timestamp::now().as_millis().to_string();
                let signature = clink_webhooks::sign(secret.as_bytes(), &timestamp, &event.body);
                let mut request = Request::post(url.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header("x-clink-event-id", header(&event.event_id)?)
                    .header("x-clink-timestamp", timestamp)
                    .header("x-clink-signature", signature);
                if let Some(account) = &event.account {
                    request = request.header("x-clink-account", header(account)?);
                }
                if let Some(authorization) = authorization {
                    request = request.header(http::header::AUTHORIZATION, authorization.clone());
                }
                let request = request.body(Full::new(event.body.clone()))?;
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| format!("{}: {}", self.name, crate::error_chain(&e)))?;
                let status = response.status();
                // The status is the answer: the body is read on the side,
                // for a while, so that the connection can be kept (its text
                // is not used). A body that never comes does not turn a 2xx
                // into a timeout, and the event into a second delivery.
                let body = response.into_body();
                if let Ok(room) = Arc::clone(drains).try_acquire_owned() {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            ANSWER_DRAIN,
                            Limited::new(body, ANSWER_LIMIT).collect(),
                        )
                        .await;
                        drop(room);
                    });
                }
                if status.is_success() {
                    Ok(None)
                } else if refuses_the_event(status) {
                    Err(EventRefused::retried(format!(
                        "{} answered {status} for this event",
                        self.name
                    ))
                    .into())
                } else {
                    Err(format!("{} answered {status}", self.name).into())
                }
            }
            Kind::Nats {
                servers,
                stream,
                subject: template,
                stream_subjects,
                duplicate_window,
                replicas,
                context,
                told,
                ..
            } => {
                let link = {
                    let mut held = context.lock().await;
                    // A client no longer connected is let go of too: one
                    // whose server went away while it was idle has made its
                    // one reconnect, and does not try again.
                    let unusable = |link: &NatsLink| {
                        link.is_stale()
                            || link.client.connection_state()
                                != async_nats::connection::State::Connected
                    };
                    if held.as_ref().is_none_or(unusable) {
                        // Let go of a stale connection before making another.
                        *held = None;
                        let connection = self
                            .connect_nats(
                                servers,
                                stream,
                                stream_subjects,
                                *duplicate_window,
                                *replicas,
                            )
                            .await?;
                        // Not told at start if the servers did not answer
                        // then, or the stream changed since.
                        for warning in untold(told, stream_warnings(stream, &connection)) {
                            tracing::warn!(destination = %self.name, "{warning}");
                        }
                        *held = Some(NatsLink::new(connection));
                    }
                    held.clone().unwrap_or_else(|| unreachable!("just set"))
                };
                let (client, jetstream) = (&link.client, &link.jetstream);
                let message_id = message_id(event);
                // A NATS header value cannot hold a line break (the client
                // would panic on one): an id the layer would refuse, but an
                // inbox can hold one written another way.
                if message_id.contains(['\r', '\n']) {
                    return Err(EventRefused::permanent(format!(
                        "{}: the event's id holds a line break, which a NATS header cannot",
                        self.name
                    ))
                    .into());
                }
                let event_type = token_text(&event.event_type);
                // What the server counts against its limit: the body and the
                // headers' lines. One too large is refused before it is
                // handed over, so it is not taken for one that may be kept.
                let size = event.body.len()
                    + NATS_HEADER_LINES
                    + "Nats-Msg-Id".len()
                    + message_id.len()
                    + "Clink-Event-Type".len()
                    + event_type.len();
                if size > link.largest {
                    return Err(EventRefused::permanent(format!(
                        "{}: the event is {size} bytes with its headers, more than the {} the \
                         servers or the stream take (max_payload, max_msg_size)",
                        self.name, link.largest
                    ))
                    .into());
                }
                // A publish handed to a client that is not connected waits in
                // the client and goes out after it reconnects, perhaps after an
                // older event of its object was published meanwhile: never
                // hand one over then, and after any failure start afresh. A
                // publish that fails, or is dropped unfinished (its time ran
                // out: the connection may be stalled), leaves the connection
                // stale, and the next publish makes a new one.
                let unfinished = StaleUnlessFinished(Some(&link.stale));
                let published = async {
                    if client.connection_state() != async_nats::connection::State::Connected {
                        return Err(format!("{}: not connected", self.name));
                    }
                    // An earlier publish may be in the stream already, and
                    // older than the duplicate window by the time this one
                    // would arrive: look for it first. What follows leans on
                    // the stream's duplicate window, which may have changed
                    // since this connection was made (another gateway's
                    // publish, say, failed): the stream is checked again.
                    if unconfirmed.is_some() {
                        let found = jetstream.get_stream(stream).await.map_err(|e| {
                            format!("{}: cannot read the stream {stream}: {e}", self.name)
                        })?;
                        self.check_stream(
                            found.cached_info(),
                            stream,
                            stream_subjects,
                            *duplicate_window,
                            *replicas,
                        )
                        .map_err(|e| e.to_string())?;
                    }
                    if let Some(earlier) = unconfirmed.as_mut() {
                        let margin = i64::try_from((self.timeout + LOOKUP_MARGIN).as_millis())
                            .unwrap_or(i64::MAX);
                        let window =
                            i64::try_from(duplicate_window.as_millis()).unwrap_or(i64::MAX);
                        let now = Timestamp::now();
                        if now.as_millis().saturating_add(margin)
                            >= earlier.since.as_millis().saturating_add(window)
                        {
                            if let Some(sequence) = self
                                .find_kept(
                                    jetstream,
                                    stream,
                                    &subject(template, event),
                                    event,
                                    earlier,
                                    read_to,
                                )
                                .await?
                            {
                                return Ok(Err(sequence));
                            }
                            // None kept before the lookup began, nor after
                            // (within a minute of clocks' difference): the
                            // next lookup reads from there.
                            earlier.since = earlier.since.max(now);
                        }
                    }
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id.as_str());
                    headers.insert("Clink-Event-Type", event_type.as_str());
                    let subject = subject(template, event);
                    // A refusal of a publish to this subject: one of
                    // another subject is another publish's, on the same
                    // connection, and this one goes on.
                    let refused = async {
                        let named = format!("Publish to \"{subject}\"");
                        let mut refusals = link.refusals.clone();
                        refusals.borrow_and_update();
                        loop {
                            if refusals.changed().await.is_err() {
                                return std::future::pending().await;
                            }
                            let refusal = refusals.borrow_and_update().clone().unwrap_or_default();
                            if refusal.contains(&named) {
                                return refusal;
                            }
                        }
                    };
                    sent.store(true, Ordering::SeqCst);
                    let publish = async {
                        jetstream
                            .publish_with_headers(subject.clone(), headers, event.body.clone())
                            .await
                            .map_err(|e| format!("{}: cannot publish: {e}", self.name))?
                            .await
                            .map(Ok)
                            .map_err(|e| format!("{}: no acknowledgement: {e}", self.name))
                    };
                    // Still taken for a publish that may be kept (`sent`
                    // stays): the refusal may be that of another publish of
                    // the subject, told late.
                    tokio::select! {
                        published = publish => published,
                        refusal = refused => Err(format!(
                            "{}: the server refused ({}): the gateway's NATS user needs the \
                             right to publish to {stream_subjects}",
                            self.name,
                            escaped(&refusal)
                        )),
                    }
                }
                .await;
                match published {
                    Ok(Ok(ack)) => {
                        unfinished.finished();
                        Ok(Some(format!("{}:{}", ack.stream, ack.sequence)))
                    }
                    // Found in the stream: kept by an earlier publish.
                    Ok(Err(sequence)) => {
                        unfinished.finished();
                        Ok(Some(format!("{stream}:{sequence}")))
                    }
                    // `unfinished`, dropped, leaves the connection stale.
                    Err(error) => Err(error.into()),
                }
            }
            Kind::Redis {
                client,
                stream,
                connection,
            } => {
                let connect = async {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1);
                    client.get_connection_manager_with_config(config).await
                };
                self.add_on(connection, connect, stream, event, true).await
            }
            Kind::RedisCluster {
                client,
                stream,
                connection,
            } => {
                self.add_on(
                    connection,
                    client.get_async_connection(),
                    stream,
                    event,
                    false,
                )
                .await
            }
        }
    }

    /// Adds `event` to `stream` on a connection of `links`, made with
    /// `connect` when there is none or it is stale; a publish that fails or
    /// is dropped unfinished leaves the connection stale, and the next one
    /// connects anew. With `read_limit` (a single server), a body larger
    /// than the server takes is refused for good (see [`Streams::fits`]).
    /// With `redis_wait_replicas`, the publish has its
    /// connection to itself until it ends (see [`Links`]).
    async fn add_on<C>(
        &self, links: &Links<C>, connect: impl std::future::Future<Output = redis::RedisResult<C>>,
        stream: &Streams, event: &NewEvent, read_limit: bool,
    ) -> Result<Option<String>, BoxError>
    where
        C: redis::aio::ConnectionLike + Clone + Send,
    {
        let mut held = links.take().await;
        let mut link = match &*held {
            Some(link) if !link.is_stale() => link.clone(),
            _ => {
                // Let go of a stale connection before making another.
                *held = None;
                let mut connection = connect
                    .await
                    .map_err(|e| format!("{}: cannot connect: {}", self.name, e.kind_text()))?;
                // The server's limit, read again with each new connection
                // to a single server (a cluster's nodes are not asked:
                // each may have its own).
                if read_limit {
                    if let Some(largest) = read_body_limit(&mut connection).await {
                        stream.largest.store(largest, Ordering::Relaxed);
                    }
                }
                held.insert(Staling::new(connection)).clone()
            }
        };
        if !links.is_own() {
            // Shared: other publishes go on it at the same time.
            drop(held);
        }
        let unfinished = StaleUnlessFinished(Some(&link.stale));
        if read_limit {
            if let Err(refused) = stream.fits(&mut link.connection, event, &self.name).await {
                // Refused before the event is sent, on the server's
                // answer: the connection stays as good.
                unfinished.finished();
                return Err(refused);
            }
        }
        let added = stream.add(&mut link.connection, event, &self.name).await;
        if added.is_ok() {
            unfinished.finished();
        }
        added.map(Some)
    }

    /// Connects to the NATS servers and finds the stream (making it when
    /// missing). A stream that cannot take the events as configured, or
    /// that JetStream refuses to find or make for a reason that lasts (see
    /// [`StreamMismatch`]), is an `Err` of that type.
    async fn connect_nats(
        &self, servers: &NatsServers, stream: &str, subjects: &str, duplicate_window: Duration,
        replicas: usize,
    ) -> Result<NatsConnection, BoxError> {
        // The NATS client takes no credentials from a URL: they are read
        // from it here (a password up to the last `@`) and handed over.
        let options = match &servers.credentials {
            Some(Credentials::UserPassword(user, password)) => {
                async_nats::ConnectOptions::with_user_and_password(
                    user.clone(),
                    password.as_str().to_owned(),
                )
            }
            Some(Credentials::Token(token)) => {
                async_nats::ConnectOptions::with_token(token.as_str().to_owned())
            }
            None => async_nats::ConnectOptions::new(),
        };
        // The server does not answer a request its user may not make: it
        // tells the client (an `-ERR`), which reports it here.
        let (refused, refusals) = tokio::sync::watch::channel(None);
        let refused = Arc::new(refused);
        // One reconnect, at once, and no more: a client whose server went
        // away ends, dropping the publishes it still holds, instead of
        // sending them whenever the server comes back.
        let client = options
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout))
            .max_reconnects(1)
            .reconnect_delay_callback(|_| Duration::ZERO)
            .event_callback(move |event| {
                let refused = Arc::clone(&refused);
                async move {
                    if let async_nats::Event::ServerError(async_nats::ServerError::Other(text)) =
                        event
                    {
                        if text.to_ascii_lowercase().contains("permissions violation") {
                            refused.send_replace(Some(text));
                        }
                    }
                }
            })
            .connect(servers.urls.as_slice())
            .await
            .map_err(|e| format!("{}: cannot connect: {e}", self.name))?;
        let mut context = async_nats::jetstream::new(client.clone());
        context.set_timeout(self.timeout);
        // The server does not answer a request its user may not make: a
        // refusal ends the wait at once, and lasts until the server's
        // configuration changes.
        let refused = next_refusal(refusals.clone());
        let found = tokio::select! {
            found = context.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: stream.to_owned(),
                subjects: vec![subjects.to_owned()],
                duplicate_window,
                num_replicas: replicas,
                ..Default::default()
            }) => found,
            refusal = refused => {
                let error = StreamMismatch(format!(
                    "{}: the server refused to find or make the stream {stream} ({}): the \
                     gateway's NATS user needs the right to publish to $JS.API.STREAM.INFO.{stream} \
                     and $JS.API.STREAM.CREATE.{stream}, and to subscribe to _INBOX.>",
                    self.name,
                    escaped(&refusal)
                ));
                tracing::error!(%error, "gateway: the stream cannot be found");
                return Err(error.into());
            }
        };
        let found = found.map_err(|e| -> BoxError {
            let said = format!(
                "{}: cannot find or create the stream {stream}: {e}",
                self.name
            );
            // A refusal that stays until the configuration (the
            // gateway's or the server's) changes is not an outage.
            let refusal = match e.kind() {
                async_nats::jetstream::context::CreateStreamErrorKind::JetStream(error) => {
                    lasting_refusal(error.error_code(), subjects, replicas)
                }
                _ => None,
            };
            match refusal {
                Some(what_to_do) => StreamMismatch(format!("{said} ({what_to_do})")).into(),
                None => said.into(),
            }
        })?;
        self.check_stream(
            found.cached_info(),
            stream,
            subjects,
            duplicate_window,
            replicas,
        )?;
        let config = &found.cached_info().config;
        let largest = match usize::try_from(config.max_message_size) {
            Ok(stream_limit) if stream_limit > 0 => stream_limit.min(client.max_payload()),
            _ => client.max_payload(),
        };
        Ok(NatsConnection {
            retention: config.retention,
            in_memory: config.storage == async_nats::jetstream::stream::StorageType::Memory,
            may_drop: what_stream_may_drop(config),
            largest,
            client,
            jetstream: context,
            refusals,
        })
    }

    /// Whether the stream `info` describes can take the events: it holds
    /// every subject, deduplicates as long, is kept by as many servers, and
    /// acknowledges publishes. A stream made before (by hand, or for
    /// another configuration) is used only so; one changed since the
    /// connection was made is checked again before a publish that may
    /// repeat an earlier one.
    fn check_stream(
        &self, info: &async_nats::jetstream::stream::Info, stream: &str, subjects: &str,
        duplicate_window: Duration, replicas: usize,
    ) -> Result<(), BoxError> {
        let config = &info.config;
        if !config
            .subjects
            .iter()
            .any(|held| subject_covers(held, subjects))
        {
            let error = StreamMismatch(format!(
                "{}: the stream {stream} holds the subjects {}, which do not cover {subjects} that \
                 nats_subject publishes to: add {subjects} to the stream's subjects, or change \
                 nats_subject or nats_stream",
                self.name,
                escaped(&config.subjects.join(", "))
            ));
            tracing::error!(%error, "gateway: the stream cannot take the events");
            return Err(error.into());
        }
        // The servers that keep it: its leader and the other members of its
        // group (a server on its own keeps one copy whatever the stream's
        // configuration asks).
        let kept_by = info
            .cluster
            .as_ref()
            .map_or(1, |cluster| 1 + cluster.replicas.len());
        if kept_by < replicas {
            let error = StreamMismatch(format!(
                "{}: the stream {stream} is kept by {kept_by} server(s), fewer than nats_replicas \
                 ({replicas}): an event acknowledged to the gateway is lost with the server that \
                 holds it; raise the stream's replicas (on a cluster of as many servers), or \
                 lower nats_replicas",
                self.name,
            ));
            tracing::error!(%error, "gateway: the stream cannot take the events");
            return Err(error.into());
        }
        if config.duplicate_window < duplicate_window {
            let error = StreamMismatch(format!(
                "{}: the stream {stream} drops a repeated publish for {} s (its duplicate window), \
                 less than nats_duplicate_window_s ({} s): a publish repeated after a lost \
                 acknowledgement could be kept twice; raise the stream's duplicate window to at \
                 least {} s, or lower nats_duplicate_window_s",
                self.name,
                config.duplicate_window.as_secs(),
                duplicate_window.as_secs(),
                duplicate_window.as_secs()
            ));
            tracing::error!(%error, "gateway: the stream cannot take the events");
            return Err(error.into());
        }
        // A stream that acknowledges nothing, a sealed one and a mirror
        // take no publish the gateway can count as kept.
        let unfit = if config.no_ack {
            Some("acknowledges no publish (no_ack): use a stream that acknowledges")
        } else if config.sealed {
            Some("is sealed and takes no publish: use another stream")
        } else if config.mirror.is_some() {
            Some("is a mirror and takes no publish: name the stream it mirrors")
        } else {
            None
        };
        if let Some(unfit) = unfit {
            let error = StreamMismatch(format!("{}: the stream {stream} {unfit}", self.name));
            tracing::error!(%error, "gateway: the stream cannot take the events");
            return Err(error.into());
        }
        Ok(())
    }

    /// At start: makes the requests a lookup for an earlier publish makes
    /// (see [`check_lookup`]), so that a NATS user without the right to
    /// make them stops the start, instead of failing the lookup once an
    /// acknowledgement is lost. `Err` names the permissions a lookup needs.
    /// The caller bounds its time: a server that does not answer is not
    /// taken for a refusal, which the server tells the client at once.
    async fn check_lookup_at_start(
        &self, connection: &NatsConnection, stream: &str, stream_subjects: &str,
    ) -> Result<(), String> {
        let refused = next_refusal(connection.refusals.clone());
        let subject = check_subject(stream_subjects);
        let error = tokio::select! {
            checked = check_lookup(
                &connection.jetstream,
                stream,
                &subject,
                connection.retention,
                self.timeout,
            ) => match checked {
                Ok(()) => return Ok(()),
                Err(error) => error,
            },
            refusal = refused => format!("the server refused: {refusal}"),
        };
        let error = format!(
            "{}: cannot make the requests that look in the stream {stream} for a publish whose \
             acknowledgement was lost ({}): the gateway's NATS user needs the right to publish \
             to {} (and to subscribe to _INBOX.>)",
            self.name,
            escaped(&error),
            lookup_subjects(stream, connection.retention)
        );
        tracing::error!(%error, "gateway: the stream cannot be looked in");
        Err(error)
    }

    /// Looks in the stream, among the messages on `subject` kept since a
    /// minute before `since` (the clocks of the gateway and the server may
    /// differ), for `event` by its `Nats-Msg-Id`: its sequence, if there.
    /// See [`find_kept`].
    async fn find_kept(
        &self, jetstream: &async_nats::jetstream::Context, stream: &str, subject: &str,
        event: &NewEvent, earlier: &Unconfirmed, read_to: &ReadTo,
    ) -> Result<Option<u64>, String> {
        find_kept(
            jetstream,
            stream,
            subject,
            &message_id(event),
            earlier,
            self.timeout,
            read_to,
        )
        .await
        .map_err(|e| {
            format!(
                "{}: cannot look for an earlier publish in the stream {stream}: {e}",
                self.name
            )
        })
    }
}

/// A connection to NATS whose stream can take the events, as
/// [`Destination::connect_nats`] makes it.
struct NatsConnection {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    /// The stream's retention, which decides how a lookup reads it.
    retention: async_nats::jetstream::stream::RetentionPolicy,
    /// Whether the stream keeps its messages in memory only.
    in_memory: bool,
    /// What the stream's limits can remove unread (see
    /// [`what_stream_may_drop`]).
    may_drop: Vec<String>,
    /// The largest message, headers and body, the servers and the stream
    /// take.
    largest: usize,
    /// The last request of the client's the server refused for want of a
    /// permission (its `Permissions Violation` text), once there is one.
    refusals: tokio::sync::watch::Receiver<Option<String>>,
}

/// The next request of the client's that the server refuses for want of a
/// permission (its `Permissions Violation` text), told after this is
/// called; never, if the client is gone first.
async fn next_refusal(mut refusals: tokio::sync::watch::Receiver<Option<String>>) -> String {
    // A refusal told before is not the one waited for.
    refusals.borrow_and_update();
    match refusals.changed().await {
        Ok(()) => refusals.borrow().clone().unwrap_or_default(),
        Err(_) => std::future::pending().await,
    }
}

/// A connection to NATS that publishes use, and whether it is stale: a
/// publish on it failed or ran out of time, so that the next one connects
/// anew instead of handing its event to a connection that may be stalled.
#[derive(Clone)]
struct NatsLink {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    /// See [`NatsConnection::largest`].
    largest: usize,
    /// See [`NatsConnection::refusals`].
    refusals: tokio::sync::watch::Receiver<Option<String>>,
    stale: Arc<AtomicBool>,
}

impl NatsLink {
    fn new(connection: NatsConnection) -> Self {
        Self {
            client: connection.client,
            jetstream: connection.jetstream,
            largest: connection.largest,
            refusals: connection.refusals,
            stale: Arc::default(),
        }
    }

    fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }
}

/// The Redis connections publishes go on: one that every publish shares
/// (the client pipelines them), or, with `redis_wait_replicas`, one for
/// each publish that runs at once (`concurrency`), each held by one
/// publish until it ends: a `WAIT` holds up every later command on its
/// connection until it returns, so on a shared one the publishes would
/// wait for each other's replicas one after another, the later ones
/// running out of time behind a slow replica before sending their own.
struct Links<C> {
    links: Vec<AsyncMutex<Option<Staling<C>>>>,
    /// Where a publish that finds every connection held waits next.
    next: std::sync::atomic::AtomicUsize,
}

impl<C> Links<C> {
    fn new(config: &Config) -> Self {
        let count = if config.redis_wait_replicas > 0 {
            config.concurrency.max(1)
        } else {
            1
        };
        Self {
            links: (0..count).map(|_| AsyncMutex::new(None)).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Whether each publish has its connection to itself.
    fn is_own(&self) -> bool {
        self.links.len() > 1
    }

    /// A connection's place: one no other publish holds, if there is one.
    async fn take(&self) -> tokio::sync::MutexGuard<'_, Option<Staling<C>>> {
        if let Some(free) = self.links.iter().find_map(|link| link.try_lock().ok()) {
            return free;
        }
        let next = self.next.fetch_add(1, Ordering::Relaxed) % self.links.len();
        self.links[next].lock().await
    }
}

/// A Redis connection that publishes use, and whether it is stale, as
/// [`NatsLink`]'s.
#[derive(Clone)]
struct Staling<C> {
    connection: C,
    stale: Arc<AtomicBool>,
}

impl<C> Staling<C> {
    fn new(connection: C) -> Self {
        Self {
            connection,
            stale: Arc::default(),
        }
    }

    fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }
}

/// Marks a connection stale when dropped, unless the publish on it
/// [finished](Self::finished) well: a publish that failed, or whose future
/// was dropped before it ended (its destination timeout, the end of its
/// time inside the lease, shutdown), leaves it so.
struct StaleUnlessFinished<'a>(Option<&'a AtomicBool>);

impl StaleUnlessFinished<'_> {
    fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for StaleUnlessFinished<'_> {
    fn drop(&mut self) {
        if let Some(stale) = self.0 {
            stale.store(true, Ordering::SeqCst);
        }
    }
}

/// How many messages a lookup asks the server for at once (headers only:
/// a few hundred bytes each).
const LOOKUP_BATCH: usize = 1000;

/// The least time the server keeps a lookup's consumer when nobody reads
/// from it, should the lookup end without deleting it.
const LOOKUP_INACTIVE_MIN: Duration = Duration::from_secs(5);

/// The subjects a lookup in `stream`, of `retention`, publishes its
/// requests to (see [`find_kept`]), as README lists them: what the
/// gateway's NATS user must be allowed to publish to.
fn lookup_subjects(
    stream: &str, retention: async_nats::jetstream::stream::RetentionPolicy,
) -> String {
    let mut subjects = vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
    ];
    if retention == async_nats::jetstream::stream::RetentionPolicy::Limits {
        // The further tokens: the consumer's name, and for CREATE its
        // filter subject.
        subjects.extend(
            ["CREATE", "MSG.NEXT", "DELETE"]
                .map(|request| format!("$JS.API.CONSUMER.{request}.{stream}.>")),
        );
    }
    subjects.join(", ")
}

/// A subject of the stream that holds `stream_subjects` (a subject, or
/// fixed tokens then `>`) that the check at start reads: no event's, or
/// the one subject all events go to.
fn check_subject(stream_subjects: &str) -> String {
    stream_subjects
        .split('.')
        .map(|token| match token {
            "*" | ">" => "clink_lookup_check",
            token => token,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The server's time `millis` after the Unix epoch.
fn server_time(millis: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The `Nats-Msg-Id` in `headers`, if any.
fn kept_id(headers: Option<&async_nats::HeaderMap>) -> Option<&str> {
    headers
        .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
        .map(async_nats::HeaderValue::as_str)
}

/// The consumer a lookup named `name` reads `subject` with, from
/// `within`'s start, or after the sequence an earlier lookup read to:
/// ephemeral, headers only, no acknowledgements (so no redelivery), one
/// replica in memory; the server removes it once nobody has read from it
/// for `inactive`.
fn lookup_config(
    name: &str, subject: &str, within: Within, inactive: Duration,
) -> async_nats::jetstream::consumer::pull::Config {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
    let deliver_policy = match within.read_after {
        Some(read) => DeliverPolicy::ByStartSequence {
            start_sequence: read.saturating_add(1),
        },
        None => DeliverPolicy::ByStartTime {
            start_time: within.start,
        },
    };
    async_nats::jetstream::consumer::pull::Config {
        name: Some(name.to_owned()),
        description: Some("clink-webhook: looks for an earlier publish".to_owned()),
        deliver_policy,
        ack_policy: AckPolicy::None,
        filter_subject: subject.to_owned(),
        headers_only: true,
        inactive_threshold: inactive,
        num_replicas: 1,
        memory_storage: true,
        ..Default::default()
    }
}

/// Looks in `stream` for the message whose `Nats-Msg-Id` is `id` among the
/// messages on `subject` kept since a minute before `since`, after those an
/// earlier lookup of the stream read (see [`ReadPoint`]): its sequence, if
/// there. A message kept after the lookup began is looked at only when it
/// is the one. How far it reads is kept in `read_to` as it goes.
///
/// How depends on the stream's retention. A [`RetentionPolicy::Limits`]
/// stream is read in one pass (see [`find_kept_in_one_pass`]). On any
/// other a consumer would change what the stream keeps (on an interest
/// stream its deliveries without acknowledgements count as acknowledged;
/// a work-queue stream refuses one that does not acknowledge, or that
/// overlaps another): the messages are read one by one from the stream's
/// leader (see [`find_kept_one_by_one`]).
///
/// [`RetentionPolicy::Limits`]: async_nats::jetstream::stream::RetentionPolicy::Limits
async fn find_kept(
    jetstream: &async_nats::jetstream::Context, stream: &str, subject: &str, id: &str,
    earlier: &Unconfirmed, timeout: Duration, read_to: &ReadTo,
) -> Result<Option<u64>, String> {
    use async_nats::jetstream::stream::RetentionPolicy;
    let margin = i64::try_from(LOOKUP_MARGIN.as_millis()).unwrap_or(i64::MAX);
    let start_millis = earlier.since.as_millis().saturating_sub(margin);
    let start = server_time(start_millis);
    let end = earlier.latest.map(|latest| {
        let late = i64::try_from((2 * timeout + LATE_ARRIVAL).as_millis()).unwrap_or(i64::MAX);
        server_time(latest.as_millis().saturating_add(late))
    });
    if end.is_some_and(|end| end < start) {
        return Ok(None);
    }
    let found = jetstream
        .get_stream(stream)
        .await
        .map_err(|e| e.to_string())?;
    let info = found.cached_info();
    let made = info.created.unix_timestamp_nanos();
    read_to.begin(made);
    if info.state.messages == 0 {
        return Ok(None);
    }
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    // Where an earlier lookup of this stream read to, when that is past
    // this one's start; not when the stream's last sequence is now below
    // it (its sequences went back: restored from a snapshot, or a stream
    // kept in memory lost and made again under its old creation time).
    let read_after = earlier
        .read_to
        .filter(|point| {
            point.stream_made == made
                && point.time.as_millis() >= start_millis
                && point.sequence <= last
        })
        .map(|point| point.sequence);
    let within = Within {
        start,
        end,
        read_after,
    };
    // Read to the stream's last message already.
    if read_after == Some(last) {
        return Ok(None);
    }
    if info.config.retention == RetentionPolicy::Limits {
        find_kept_in_one_pass(
            jetstream, &found, subject, id, within, last, timeout, read_to,
        )
        .await
    } else {
        find_kept_one_by_one(&found, subject, id, within, first, last, read_to).await
    }
}

/// The times, on the servers' clock, a lookup reads the messages of: kept
/// from `start`, and up to `end` when that is known; and the sequence an
/// earlier lookup read to, after which this one reads (see [`ReadPoint`]).
#[derive(Clone, Copy)]
struct Within {
    start: time::OffsetDateTime,
    end: Option<time::OffsetDateTime>,
    read_after: Option<u64>,
}

impl Within {
    /// Whether a message kept at `time` comes after the times read.
    fn past(&self, time: time::OffsetDateTime) -> bool {
        self.end.is_some_and(|end| time > end)
    }
}

/// [`find_kept`] on a stream of limits, `last` its last sequence as the
/// lookup began, in one pass: an ephemeral pull consumer on the server
/// (see [`lookup_config`]) streams the messages on `subject` since
/// `within.start` in batches, so the lookup costs a few requests however
/// many messages the subject holds, and it stops at the first kept after
/// `within.end`.
///
/// The end comes from the stream's leader, before the consumer is made:
/// the last message on the subject, read from the leader, says the event
/// is absent (none, or kept before `start`) or found (it is the event's);
/// else the lookup reads until it passes it (or `last`, the lower), and
/// says absent only then. The server's count of the messages left for the
/// consumer can fall short of that (a message deleted meanwhile, or a
/// consumer on a replica behind the leader): its saying none is left before
/// fails the lookup, and so does a delivery missing from the sequence.
///
/// The consumer is deleted by a task of its own once the lookup ends (its
/// answer does not wait for that); the server removes one left behind
/// once inactive for `timeout` (at least [`LOOKUP_INACTIVE_MIN`]). The
/// caller bounds the lookup's time; each request is bounded by
/// `jetstream`'s timeout.
#[allow(clippy::too_many_arguments)]
async fn find_kept_in_one_pass(
    jetstream: &async_nats::jetstream::Context, found: &async_nats::jetstream::stream::Stream,
    subject: &str, id: &str, within: Within, last: u64, timeout: Duration, read_to: &ReadTo,
) -> Result<Option<u64>, String> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let bound = match found.get_last_raw_message_by_subject(subject).await {
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
        Ok(message) if message.time < within.start => return Ok(None),
        Ok(message) if kept_id(Some(&message.headers)) == Some(id) => {
            return Ok(Some(message.sequence))
        }
        // Read by an earlier lookup, and nothing after it on the subject.
        Ok(message)
            if within
                .read_after
                .is_some_and(|read| message.sequence <= read) =>
        {
            return Ok(None)
        }
        Ok(message) => last.min(message.sequence),
    };
    let consumer = LookupConsumer::new(jetstream, &found.cached_info().config.name);
    let inactive = timeout.max(LOOKUP_INACTIVE_MIN);
    let reader = found
        .create_consumer(lookup_config(&consumer.name, subject, within, inactive))
        .await
        .map_err(|e| e.to_string())?;
    let short = |after: &str| {
        format!(
            "the server had no message left on the subject {after}, though its leader holds one \
             at sequence {bound} or later"
        )
    };
    if reader.cached_info().num_pending == 0 {
        return Err(short("for the lookup"));
    }
    let mut messages = reader
        .stream()
        .max_messages_per_batch(LOOKUP_BATCH)
        .expires(inactive)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let mut delivered = 0;
    loop {
        let message = next(&mut messages)
            .await
            .ok_or("the server stopped sending the stream's messages")?
            .map_err(|e| e.to_string())?;
        let info = message.info().map_err(|e| e.to_string())?;
        // Without acknowledgements a message lost on the way is not
        // sent again: it could be the one looked for.
        if info.consumer_sequence != delivered + 1 {
            return Err(format!(
                "message {} of the lookup came after {delivered}: one was lost",
                info.consumer_sequence
            ));
        }
        delivered = info.consumer_sequence;
        if kept_id(message.headers.as_ref()) == Some(id) {
            return Ok(Some(info.stream_sequence));
        }
        read_to.read(info.stream_sequence, info.published);
        if info.stream_sequence >= bound || within.past(info.published) {
            return Ok(None);
        }
        if info.pending == 0 {
            return Err(short(&format!("after sequence {}", info.stream_sequence)));
        }
    }
}

/// [`find_kept`] on a stream of another retention, `first` and `last` its
/// first and last sequences as the lookup began, without a consumer: the
/// first message kept at or after `within.start` is found by halving (the
/// messages' times rise with their sequences), then the messages on
/// `subject` from there are read from the stream's leader one request
/// each, up to the first kept after `within.end`.
async fn find_kept_one_by_one(
    found: &async_nats::jetstream::stream::Stream, subject: &str, id: &str, within: Within,
    first: u64, last: u64, read_to: &ReadTo,
) -> Result<Option<u64>, String> {
    let start = within.start;
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let (mut low, mut high) = (first, last.saturating_add(1));
    while low < high {
        let middle = low + (high - low) / 2;
        match found.get_first_raw_message_by_subject(">", middle).await {
            Ok(message) if message.time < start => low = message.sequence + 1,
            Ok(_) => high = middle,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => high = middle,
            Err(e) => return Err(e.to_string()),
        }
    }
    // After what an earlier lookup read, when that is further.
    let mut next = within
        .read_after
        .map_or(low, |read| low.max(read.saturating_add(1)));
    while next <= last {
        match found.get_first_raw_message_by_subject(subject, next).await {
            Ok(message) if message.sequence <= last => {
                if kept_id(Some(&message.headers)) == Some(id) {
                    return Ok(Some(message.sequence));
                }
                read_to.read(message.sequence, message.time);
                if within.past(message.time) {
                    break;
                }
                next = message.sequence + 1;
            }
            Ok(_) => break,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(None)
}

/// Makes, in `stream` of `retention`, the requests a lookup makes (see
/// [`find_kept`]), on `subject`, one the stream holds: the stream's
/// information, the last message on the subject read from the leader,
/// and on a stream of limits a lookup's consumer (as [`lookup_config`]
/// makes it, from now on) created, asked for a message (without waiting)
/// and deleted, waiting for that.
async fn check_lookup(
    jetstream: &async_nats::jetstream::Context, stream: &str, subject: &str,
    retention: async_nats::jetstream::stream::RetentionPolicy, timeout: Duration,
) -> Result<(), String> {
    use async_nats::jetstream::stream::{LastRawMessageErrorKind, RetentionPolicy};
    let found = jetstream
        .get_stream(stream)
        .await
        .map_err(|e| e.to_string())?;
    match found.get_last_raw_message_by_subject(subject).await {
        Ok(_) => {}
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
        Err(e) => return Err(e.to_string()),
    }
    if retention != RetentionPolicy::Limits {
        return Ok(());
    }
    let consumer = LookupConsumer::new(jetstream, stream);
    let reader = found
        .create_consumer(lookup_config(
            &consumer.name,
            subject,
            Within {
                start: server_time(Timestamp::now().as_millis()),
                end: None,
                read_after: None,
            },
            timeout.max(LOOKUP_INACTIVE_MIN),
        ))
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = reader
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    while let Some(message) = next(&mut messages).await {
        message.map_err(|e| e.to_string())?;
    }
    consumer.delete_now().await
}

/// The next item of `stream`.
async fn next<S: futures_core::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

/// The consumer a lookup reads the stream with, named before it is
/// created so that it is deleted whatever happens: when dropped (the
/// lookup ended, or was stopped at the end of its time), a task of its own
/// deletes it, so the lookup's answer never waits for the deletion. The
/// server removes one left behind (the task failed, or the gateway stopped
/// first) once it is inactive.
struct LookupConsumer {
    jetstream: async_nats::jetstream::Context,
    stream: String,
    name: String,
    /// Whether it is still to be deleted when dropped.
    armed: bool,
}

impl LookupConsumer {
    /// A new name for a consumer on `stream`.
    fn new(jetstream: &async_nats::jetstream::Context, stream: &str) -> Self {
        let inbox = jetstream.client().new_inbox();
        Self {
            jetstream: jetstream.clone(),
            stream: stream.to_owned(),
            name: format!(
                "clink-lookup-{}",
                inbox.rsplit('.').next().unwrap_or(&inbox)
            ),
            armed: true,
        }
    }

    /// Deletes the consumer, waiting for the server's answer: for the check
    /// at start, not a lookup. A failure is left to a task as on a drop.
    async fn delete_now(mut self) -> Result<(), String> {
        self.jetstream
            .delete_consumer_from_stream(&self.name, &self.stream)
            .await
            .map_err(|e| e.to_string())?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for LookupConsumer {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (jetstream, stream, name) = (
            self.jetstream.clone(),
            std::mem::take(&mut self.stream),
            std::mem::take(&mut self.name),
        );
        runtime.spawn(async move {
            if let Err(error) = jetstream.delete_consumer_from_stream(&name, &stream).await {
                tracing::debug!(
                    %error,
                    consumer = %name,
                    "gateway: could not delete a lookup's consumer"
                );
            }
        });
    }
}

impl Streams {
    fn new(config: &Config) -> Self {
        Self {
            template: config.redis_stream.clone(),
            // The inbox purges hourly: a done event can outlive its
            // retention by that much, or twice (a purge that failed, or
            // ran long), and a forced replay of it then must still find
            // its marker (redis_dedup_hours is at least the retention).
            dedup: config.redis_dedup + 2 * super::PURGE_PERIOD,
            script: redis::Script::new(XADD_ONCE),
            // A third of the publish's time: a server that lacks the
            // script runs the pipeline's WAIT all the same, and the
            // pipeline is sent again once the script is loaded, so two
            // WAITs and their round trips fit in the publish's time.
            wait: (config.redis_wait_replicas > 0)
                .then(|| (config.redis_wait_replicas, config.destination_timeout / 3)),
            largest: AtomicUsize::new(REDIS_BULK_DEFAULT),
            body_limit: config.body_limit,
        }
    }
}

/// How many replicas a primary's answer to `ROLE` lists as connected
/// (`master`, its offset, then one entry a replica); `None` for any other
/// answer.
fn connected_replicas(role: Option<&[redis::Value]>) -> Option<u64> {
    let [kind, _, redis::Value::Array(replicas), ..] = role? else {
        return None;
    };
    let master = matches!(kind, redis::Value::BulkString(kind) if kind == b"master")
        || matches!(kind, redis::Value::SimpleString(kind) if kind == "master");
    master.then(|| u64::try_from(replicas.len()).unwrap_or(u64::MAX))
}

/// A Redis error without the parts that could quote a URL.
trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for redis::RedisError {
    fn kind_text(&self) -> String {
        let mut text = format!("{:?}", self.kind());
        if let Some(detail) = self.detail() {
            text.push_str(": ");
            text.push_str(detail);
        } else if let Some(errors) = self.clone().into_server_errors() {
            // A pipeline's: each command's error, as the server said it (a
            // server's error quotes no URL).
            for (index, error) in errors.iter() {
                text.push_str(&format!(
                    "; command {} answered {}",
                    index + 1,
                    error.code()
                ));
                if let Some(details) = error.details() {
                    text.push(' ');
                    text.push_str(details.trim());
                }
            }
        }
        if self.is_timeout() {
            text.push_str(" (timed out)");
        }
        if self.is_connection_refusal() {
            text.push_str(" (connection refused)");
        }
        text
    }
}

/// For tests: a configuration that relays to a stream of its own (named
/// after `what`, the process and the time) on the redis-server
/// `scripts/with-services` starts; with that server's URL and the stream.
#[cfg(test)]
pub(crate) fn redis_test_config(what: &str) -> (Config, String, String) {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| {
        panic!("REDIS_URL is not set; run with scripts/with-services (it starts a redis-server)")
    });
    let stream = format!(
        "clink-test:{what}:{}:{}",
        std::process::id(),
        Timestamp::now().as_millis()
    );
    let config = Config::from_pairs(&[
        ("webhook_signing_key", "whsec_a"),
        ("inbox", "sqlite:/tmp/unused.db"),
        ("destination", &url),
        ("redis_stream", &stream),
    ])
    .unwrap_or_else(|problem| panic!("{}", problem.0));
    (config, url, stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replicas a primary lists in its answer to `ROLE` are counted, to
    /// warn at start when `redis_wait_replicas` asks for more; a replica's
    /// answer, or none, counts nothing.
    #[test]
    fn the_replicas_connected_are_read_from_role() {
        use redis::Value;
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let replica = || Value::Array(vec![text("127.0.0.1"), text("6380"), text("10")]);
        let primary =
            |replicas: Vec<Value>| vec![text("master"), Value::Int(10), Value::Array(replicas)];
        assert_eq!(connected_replicas(Some(&primary(vec![]))), Some(0));
        assert_eq!(
            connected_replicas(Some(&primary(vec![replica(), replica()]))),
            Some(2)
        );
        let of_a_replica = vec![
            text("slave"),
            text("127.0.0.1"),
            Value::Int(6379),
            text("connected"),
            Value::Int(10),
        ];
        assert_eq!(connected_replicas(Some(&of_a_replica)), None);
        assert_eq!(connected_replicas(Some(&[])), None);
        assert_eq!(connected_replicas(None), None);
    }

    /// What a stream's limits can remove unread: an age, and a count or a
    /// size whose oldest messages go; a stream that refuses a publish when
    /// full, or has no limit, says nothing.
    #[test]
    fn what_a_stream_may_drop_is_read_from_its_limits() {
        use async_nats::jetstream::stream::{Config, DiscardPolicy};
        let said = |config: Config| {
            what_stream_may_drop(&config)
                .iter()
                .map(|w| w.split(':').next().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        };
        // As the server tells an unlimited stream: -1 for each count.
        let unlimited = Config {
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            ..Default::default()
        };
        assert_eq!(said(unlimited.clone()), Vec::<String>::new());
        assert_eq!(
            said(Config {
                max_age: Duration::from_secs(3600),
                max_messages: 1000,
                max_bytes: 1 << 20,
                ..unlimited.clone()
            }),
            [
                "it removes every message 3600 s after it is kept, read or not (max_age)",
                "it removes its oldest messages, read or not, once it is full (max_msgs 1000, \
                 max_bytes 1048576)"
            ]
        );
        let refusing = Config {
            discard: DiscardPolicy::New,
            max_messages: 1000,
            max_bytes: 1 << 20,
            max_messages_per_subject: 10,
            ..unlimited.clone()
        };
        assert_eq!(
            said(refusing.clone()),
            ["it removes its oldest messages, read or not, once it is full (max_msgs_per_subject 10)"]
        );
        assert_eq!(
            said(Config {
                discard_new_per_subject: true,
                ..refusing
            }),
            Vec::<String>::new()
        );
        assert_eq!(
            said(Config {
                max_messages_per_subject: 1,
                ..unlimited.clone()
            }),
            ["it removes its oldest messages, read or not, once it is full (max_msgs_per_subject 1)"]
        );
        // Kept only while a consumer wants it; a work queue keeps each
        // message until a consumer has it.
        assert_eq!(
            said(Config {
                retention: async_nats::jetstream::stream::RetentionPolicy::Interest,
                ..unlimited.clone()
            }),
            ["it keeps a message only while a consumer wants its subject (retention interest)"]
        );
        assert_eq!(
            said(Config {
                retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
                ..unlimited
            }),
            Vec::<String>::new()
        );
    }

    /// What a Redis server's INFO tells that can lose an acknowledged
    /// event: no append-only file, or eviction under a memory limit; a
    /// durable server without a limit (or a policy that evicts nothing)
    /// and a user who may not run INFO say nothing.
    #[test]
    fn what_a_redis_server_may_lose_is_read_from_its_info() {
        let persistence = |aof: u8| format!("# Persistence\r\nloading:0\r\naof_enabled:{aof}\r\n");
        let memory = |limit: u64, policy: &str| {
            format!("# Memory\r\nmaxmemory:{limit}\r\nmaxmemory_policy:{policy}\r\n")
        };
        let durable = persistence(1);
        let said = |persistence: Option<&str>, memory: Option<&str>| {
            what_redis_may_lose(persistence, memory)
                .iter()
                .map(|w| w.split(' ').take(5).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            said(Some(&durable), Some(&memory(0, "allkeys-lru"))),
            Vec::<String>::new()
        );
        assert_eq!(
            said(Some(&durable), Some(&memory(1 << 30, "noeviction"))),
            Vec::<String>::new()
        );
        assert_eq!(
            said(
                Some(&persistence(0)),
                Some(&memory(1 << 30, "volatile-lru"))
            ),
            [
                "the server keeps no append-only",
                "the server evicts keys when"
            ]
        );
        assert_eq!(said(None, None), Vec::<String>::new());
    }
    use async_nats::jetstream::stream::RetentionPolicy;
    use clink_webhooks::Timestamp;

    fn event(account: Option<&str>, event_type: &str) -> NewEvent {
        let now = Timestamp::now();
        NewEvent::new(
            account.map(str::to_owned),
            "evt_1".to_owned(),
            event_type.to_owned(),
            None,
            None,
            now,
            now,
            Bytes::from_static(b"{}"),
        )
    }

    #[test]
    fn subjects_drop_the_empty_account_and_keep_type_tokens() {
        let template = "clink.{account}.{type}";
        assert_eq!(
            subject(template, &event(None, "order.succeeded")),
            "clink.order.succeeded"
        );
        assert_eq!(
            subject(template, &event(Some("acct_eu"), "order.succeeded")),
            "clink.acct_eu.order.succeeded"
        );
        assert_eq!(subject(template, &event(None, "a b*>")), "clink.a_b__");
        // An account or a type of dots alone is one `_` token.
        assert_eq!(
            subject(template, &event(Some("..."), "order.succeeded")),
            "clink._.order.succeeded"
        );
        assert_eq!(
            subject(template, &event(Some("acct"), "..")),
            "clink.acct._"
        );
        assert_eq!(
            subject("clink.{account}", &event(Some("."), "x")),
            "clink._"
        );
        assert_eq!(subject("clink.{type}", &event(None, "...")), "clink._");
        // An account is one token, whatever dots it holds: `clink.shop.>`
        // does not take the events of `shop.eu`, nor share a subject with
        // `shop_eu`.
        assert_eq!(
            subject(template, &event(Some("shop.eu"), "order.succeeded")),
            "clink.shop~eu.order.succeeded"
        );
        assert_eq!(
            subject(template, &event(Some("shop_eu"), "order.succeeded")),
            "clink.shop_eu.order.succeeded"
        );
        assert_eq!(fill("clink:{account}", &event(None, "x")), "clink:");
        assert_eq!(message_id(&event(Some("a"), "x")), "a:evt_1");
    }

    #[test]
    fn a_stream_covers_the_subjects_it_holds() {
        for (held, wanted, covered) in [
            ("clink.>", "clink.>", true),
            (">", "clink.>", true),
            ("clink.>", "clink", false),
            ("clink", "clink", true),
            ("clink.*", "clink.>", false),
            ("clink.*.>", "clink.>", false),
            ("*.>", "clink.>", true),
            ("clink.a", "clink.>", false),
            ("other.>", "clink.>", false),
            ("clink.>", "clink.x.y", true),
        ] {
            assert_eq!(subject_covers(held, wanted), covered, "{held} {wanted}");
        }
    }

    #[test]
    fn a_4xx_about_the_request_refuses_the_event_alone() {
        for (status, event_alone) in [
            (400, true),
            (409, true),
            (413, true),
            (422, true),
            (401, false),
            (403, false),
            (404, false),
            (408, false),
            (429, false),
            (500, false),
            (503, false),
        ] {
            let status = http::StatusCode::from_u16(status).unwrap();
            assert_eq!(refuses_the_event(status), event_alone, "{status}");
        }
    }

    /// The keys `setting` (`webhook_signing_key` or `signing_keys`) holds.
    fn keys(setting: &'static str, value: &str) -> Vec<KeySpec> {
        let config = Config::from_pairs(&[
            (setting, value),
            ("inbox", "sqlite:/tmp/unused.db"),
            ("destination", "http://127.0.0.1:9/"),
        ])
        .unwrap_or_else(|problem| panic!("{}", problem.0));
        match config.keys {
            super::super::config::Keys::One(keys) => keys,
            super::super::config::Keys::PerAccount(_) => unreachable!("one endpoint"),
        }
    }

    /// `event` of `account`, verified by the key the layer records as `by`.
    fn verified(account: Option<&str>, by: Option<&str>) -> NewEvent {
        let mut event = event(account, "order.succeeded");
        event.signing_key = by.map(str::to_owned);
        event
    }

    /// A forward is signed with the key that verified its event while that
    /// key is live, else with the newest live one, else with the newest;
    /// the names it is matched by are the ones the layer records (a key's
    /// name, or its fingerprint when it has none), worked out when the keys
    /// are loaded.
    #[test]
    fn a_forward_is_signed_with_the_key_that_verified_its_event() {
        let signers = |accounts: Vec<(&str, Vec<KeySpec>)>| {
            let map = accounts
                .into_iter()
                .map(|(account, keys)| (account.to_owned(), VerifyingKey::named(&keys)))
                .collect();
            Signers::Verifying(Arc::new(RwLock::new(map)))
        };
        let secret = |signers: &Signers, event: &NewEvent| {
            signers
                .secret_for(event)
                .map(|secret| secret.as_str().to_owned())
        };
        let named = keys(
            "signing_keys",
            r#"[{ secret = "whsec_new", name = "new" },
                { secret = "whsec_old", name = "old" },
                { secret = "whsec_gone", name = "gone", expires = "2020-01-01T00:00:00Z" },
                { secret = "whsec_rotated", name = "rotated", signed_until = "2020-01-01T00:00:00Z" }]"#,
        );
        let one = signers(vec![("", named.clone())]);
        for (by, expected) in [
            (Some("old"), "whsec_old"),
            (Some("new"), "whsec_new"),
            // Expired since it verified the event: the newest live key.
            (Some("gone"), "whsec_new"),
            // Rotated out, past its signed_until: a forward stamped now
            // signed with it would be refused.
            (Some("rotated"), "whsec_new"),
            // A key no longer there, or none recorded.
            (Some("retired"), "whsec_new"),
            (None, "whsec_new"),
        ] {
            assert_eq!(
                secret(&one, &verified(None, by)).as_deref(),
                Ok(expected),
                "{by:?}"
            );
        }

        // Keys without names are matched by their fingerprints.
        let unnamed = keys("webhook_signing_key", "whsec_a,whsec_b");
        let fingerprint = unnamed[1].recorded_name().unwrap();
        assert!(!fingerprint.contains("whsec_b"), "a fingerprint");
        let plain = signers(vec![("", unnamed)]);
        assert_eq!(
            secret(&plain, &verified(None, Some(&fingerprint))).as_deref(),
            Ok("whsec_b")
        );
        assert_eq!(
            secret(&plain, &verified(None, Some("whsec_b"))).as_deref(),
            Ok("whsec_a")
        );

        // Every key expired: the newest.
        let expired = keys(
            "signing_keys",
            r#"[{ secret = "whsec_x", name = "x", expires = "2020-01-02T00:00:00Z" },
                { secret = "whsec_y", name = "y", expires = "2020-01-01T00:00:00Z" }]"#,
        );
        let expired = signers(vec![("", expired)]);
        assert_eq!(
            secret(&expired, &verified(None, Some("y"))).as_deref(),
            Ok("whsec_x")
        );

        // Per account; an account gone from the file has no key.
        let accounts = signers(vec![
            ("acct_eu", keys("webhook_signing_key", "whsec_eu")),
            ("acct_us", named),
        ]);
        assert_eq!(
            secret(&accounts, &verified(Some("acct_eu"), Some("old"))).as_deref(),
            Ok("whsec_eu")
        );
        assert_eq!(
            secret(&accounts, &verified(Some("acct_us"), Some("old"))).as_deref(),
            Ok("whsec_old")
        );
        let error = secret(&accounts, &verified(Some("acct_gone"), None)).unwrap_err();
        assert!(error.contains("acct_gone"), "{error}");
        assert_eq!(
            secret(
                &Signers::Own(keys("webhook_signing_key", "whsec_own").remove(0)),
                &verified(Some("acct_eu"), Some("old"))
            )
            .as_deref(),
            Ok("whsec_own")
        );
    }

    /// The nats-server with JetStream that `scripts/with-services` starts.
    fn nats_url() -> String {
        std::env::var("NATS_URL").unwrap_or_else(|_| {
            panic!("NATS_URL is not set; run with scripts/with-services (it starts a nats-server)")
        })
    }

    /// A stream of the test's own on the test's nats-server, holding
    /// `PREFIX.>`, of limits: the client, its JetStream context, the
    /// stream's name and `PREFIX`.
    async fn test_stream(
        test: &str,
    ) -> (
        async_nats::Client,
        async_nats::jetstream::Context,
        String,
        String,
    ) {
        test_stream_of(test, RetentionPolicy::Limits).await
    }

    /// [`test_stream`] of `retention`, dropping a repeated publish for the
    /// gateway's default 600 s. Kept in the server's memory: what these
    /// tests read does not depend on how a stream is stored, and making one
    /// on disk failed once while other builds ran (JetStream's "error
    /// creating store for stream").
    async fn test_stream_of(
        test: &str, retention: RetentionPolicy,
    ) -> (
        async_nats::Client,
        async_nats::jetstream::Context,
        String,
        String,
    ) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tag = format!(
            "{test}{}x{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst),
            Timestamp::now().as_millis() % 1_000_000
        );
        let client = async_nats::connect(nats_url()).await.unwrap();
        let mut jetstream = async_nats::jetstream::new(client.clone());
        // A bound on a hang only.
        jetstream.set_timeout(Duration::from_secs(60));
        let stream = format!("T{tag}");
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("t{tag}.>")],
                retention,
                storage: async_nats::jetstream::stream::StorageType::Memory,
                duplicate_window: Duration::from_secs(600),
                ..Default::default()
            })
            .await
            .unwrap();
        (client, jetstream, stream, format!("t{tag}"))
    }

    /// Publishes one message with `body` on `subject` for each of `ids` (its
    /// `Nats-Msg-Id`), 500 at a time: the sequence of each.
    async fn publish_all(
        jetstream: &async_nats::jetstream::Context, subject: &str, ids: &[String], body: &Bytes,
    ) -> Vec<u64> {
        let mut sequences = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut acks = Vec::with_capacity(chunk.len());
            for id in chunk {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                let ack = jetstream
                    .publish_with_headers(subject.to_owned(), headers, body.clone())
                    .await
                    .unwrap();
                acks.push(ack);
            }
            for ack in acks {
                sequences.push(ack.await.unwrap().sequence);
            }
        }
        sequences
    }

    /// How many consumers `stream` has.
    async fn consumers(jetstream: &async_nats::jetstream::Context, stream: &str) -> usize {
        let mut found = jetstream.get_stream(stream).await.unwrap();
        found.info().await.unwrap().state.consumer_count
    }

    /// Waits until `stream` has no consumer left (a lookup's is deleted by
    /// a task of its own, after the lookup answered), for a minute at most.
    async fn no_consumers_left(jetstream: &async_nats::jetstream::Context, stream: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while consumers(jetstream, stream).await != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "a lookup's consumer is still there"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the client sent (messages: its requests) and received (bytes)
    /// so far.
    fn traffic(client: &async_nats::Client) -> (u64, u64) {
        let statistics = client.statistics();
        (
            statistics.out_messages.load(Ordering::SeqCst),
            statistics.in_bytes.load(Ordering::SeqCst),
        )
    }

    /// Earlier publishes from `since` on, the latest of which is not known.
    fn unbounded(since: Timestamp) -> Unconfirmed {
        Unconfirmed {
            since,
            latest: None,
            read_to: None,
        }
    }

    /// Looks for `id` on `subject` as a publish with the default
    /// destination timeout does, bounded by a minute (a hang only).
    async fn lookup(
        jetstream: &async_nats::jetstream::Context, stream: &str, subject: &str, id: &str,
        since: Timestamp,
    ) -> Option<u64> {
        lookup_within(jetstream, stream, subject, id, &unbounded(since)).await
    }

    /// [`lookup`] for the publishes `earlier` says.
    async fn lookup_within(
        jetstream: &async_nats::jetstream::Context, stream: &str, subject: &str, id: &str,
        earlier: &Unconfirmed,
    ) -> Option<u64> {
        let read_to = ReadTo::new();
        let lookup = find_kept(
            jetstream,
            stream,
            subject,
            id,
            earlier,
            Duration::from_secs(10),
            &read_to,
        );
        tokio::time::timeout(Duration::from_secs(60), lookup)
            .await
            .expect("the lookup ended")
            .unwrap()
    }

    /// The most requests a lookup through the messages of these tests may
    /// make: a few of its own and one per batch it reads. One per message
    /// would be thousands.
    const FEW_REQUESTS: u64 = 30;

    /// A lookup finds the kept message among thousands of others on its
    /// subject, and says none when it is not there, in a few requests and
    /// without the messages' bodies: it reads the subject as one stream of
    /// headers, not one request per message.
    #[tokio::test]
    async fn a_lookup_reads_thousands_of_messages_in_a_few_requests() {
        const BODY: usize = 2048;
        let (client, jetstream, stream, prefix) = test_stream("lookup").await;
        let subject = format!("{prefix}.acct_eu.order_succeeded");
        let since = Timestamp::now();
        let body = Bytes::from(vec![b'x'; BODY]);
        let others = |from: usize, to: usize| -> Vec<String> {
            (from..to)
                .map(|i| format!("acct_eu:evt_other_{i}"))
                .collect()
        };
        publish_all(&jetstream, &subject, &others(0, 2000), &body).await;
        let kept = publish_all(
            &jetstream,
            &subject,
            &["acct_eu:evt_kept".to_owned()],
            &body,
        )
        .await[0];
        publish_all(&jetstream, &subject, &others(2000, 4000), &body).await;
        // The stream's last messages are on another subject.
        publish_all(
            &jetstream,
            &format!("{prefix}.acct_eu.refund_succeeded"),
            &others(4000, 4100),
            &body,
        )
        .await;

        let before = traffic(&client);
        let found = lookup(&jetstream, &stream, &subject, "acct_eu:evt_kept", since).await;
        let after = traffic(&client);
        assert_eq!(found, Some(kept));
        let (requests, received) = (after.0 - before.0, after.1 - before.1);
        assert!(
            requests <= FEW_REQUESTS,
            "{requests} requests to find the 2001st message"
        );
        // 2,000 bodies before the kept one: headers come alone.
        let bodies = 2000 * BODY as u64;
        assert!(
            received < bodies / 2,
            "{received} bytes received to find the 2001st message ({bodies} in bodies before it)"
        );
        no_consumers_left(&jetstream, &stream).await;

        let before = traffic(&client);
        let found = lookup(&jetstream, &stream, &subject, "acct_eu:evt_absent", since).await;
        let after = traffic(&client);
        assert_eq!(found, None);
        let requests = after.0 - before.0;
        assert!(
            requests <= FEW_REQUESTS,
            "{requests} requests to read 4,000 messages"
        );
        no_consumers_left(&jetstream, &stream).await;

        // The same id under another account, or on another subject, is not it.
        for (subject, id) in [
            (subject.as_str(), "acct_us:evt_kept"),
            (
                &format!("{prefix}.acct_eu.refund_succeeded"),
                "acct_eu:evt_kept",
            ),
            (
                &format!("{prefix}.acct_eu.nothing_here"),
                "acct_eu:evt_kept",
            ),
        ] {
            let found = lookup(&jetstream, &stream, subject, id, since).await;
            assert_eq!(found, None, "{subject} {id}");
        }
        no_consumers_left(&jetstream, &stream).await;
        jetstream.delete_stream(&stream).await.unwrap();
    }

    /// Only messages kept since a minute before the publish began are
    /// looked at, and an empty stream is no trouble. The message looked
    /// for is found both as the last one on its subject (read from the
    /// stream's leader) and before another (through a consumer).
    #[tokio::test]
    async fn a_lookup_looks_from_a_minute_before_the_publish() {
        let (_client, jetstream, stream, prefix) = test_stream("since").await;
        let subject = format!("{prefix}.order_succeeded");
        let now = Timestamp::now();
        let found = lookup(&jetstream, &stream, &subject, ":evt_1", now).await;
        assert_eq!(found, None, "an empty stream");
        let kept =
            publish_all(&jetstream, &subject, &[":evt_1".to_owned()], &Bytes::new()).await[0];
        let at = |seconds: i64| Timestamp::from_millis(now.as_millis() + seconds * 1000);
        for last in [true, false] {
            if !last {
                publish_all(&jetstream, &subject, &[":evt_2".to_owned()], &Bytes::new()).await;
            }
            for (since, expected) in [
                (at(0), Some(kept)),
                (at(50), Some(kept)),
                // Kept more than a minute before the publish began.
                (at(120), None),
            ] {
                let found = lookup(&jetstream, &stream, &subject, ":evt_1", since).await;
                assert_eq!(found, expected, "since {since}, the last one: {last}");
            }
        }
        no_consumers_left(&jetstream, &stream).await;
        jetstream.delete_stream(&stream).await.unwrap();
    }

    /// A lookup reads no further than the latest earlier publish could have
    /// been kept: twice the destination's timeout and [`LATE_ARRIVAL`]
    /// after it began. Here every message on the subject is kept after
    /// that, the event's among others: a lookup that knows when the latest
    /// publish began stops at the first, through a consumer and from the
    /// stream's leader alike, so that its cost is bounded however much the
    /// subject holds; one whose latest began later, or is not known, reads
    /// on and finds the event's.
    #[tokio::test]
    async fn a_lookup_reads_no_further_than_the_latest_publish_could_be_kept() {
        for retention in [RetentionPolicy::Limits, RetentionPolicy::WorkQueue] {
            let (_client, jetstream, stream, prefix) = test_stream_of("until", retention).await;
            let subject = format!("{prefix}.order_succeeded");
            let now = Timestamp::now();
            let mut ids: Vec<String> = (2..=50).map(|i| format!(":evt_{i}")).collect();
            ids.insert(20, ":evt_1".to_owned());
            let kept = publish_all(&jetstream, &subject, &ids, &Bytes::new()).await[20];
            let reach = 2 * Duration::from_secs(10) + LATE_ARRIVAL;
            let ago = |by: Duration| {
                Timestamp::from_millis(now.as_millis() - i64::try_from(by.as_millis()).unwrap())
            };
            let since = ago(reach + Duration::from_secs(3600));
            for (latest, expected) in [
                (Some(ago(reach + Duration::from_secs(120))), None),
                (Some(ago(reach - Duration::from_secs(120))), Some(kept)),
                (Some(now), Some(kept)),
                (None, Some(kept)),
            ] {
                let earlier = Unconfirmed {
                    since,
                    latest,
                    read_to: None,
                };
                let found = lookup_within(&jetstream, &stream, &subject, ":evt_1", &earlier).await;
                assert_eq!(found, expected, "{retention:?}, latest {latest:?}");
            }
            no_consumers_left(&jetstream, &stream).await;
            jetstream.delete_stream(&stream).await.unwrap();
        }
    }

    /// A lookup stopped at the end of its time leaves no consumer behind:
    /// dropped before it ends, its consumer is deleted by a task.
    #[tokio::test]
    async fn a_lookup_stopped_early_deletes_its_consumer() {
        let (_client, jetstream, stream, prefix) = test_stream("drop").await;
        let name = "clink-lookup-dropped".to_owned();
        // Durable: the server would keep it, inactive or not.
        jetstream
            .create_consumer_on_stream(
                async_nats::jetstream::consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("{prefix}.>"),
                    ..Default::default()
                },
                &stream,
            )
            .await
            .unwrap();
        assert_eq!(consumers(&jetstream, &stream).await, 1);
        drop(LookupConsumer {
            jetstream: jetstream.clone(),
            stream: stream.clone(),
            name,
            armed: true,
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while consumers(&jetstream, &stream).await != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the consumer is still there"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        jetstream.delete_stream(&stream).await.unwrap();
    }

    /// [`counting_relay_to`] the test's nats-server.
    async fn counting_relay(
        pattern: String,
    ) -> (
        u16,
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let target = nats_url()
            .trim_start_matches("nats://")
            .trim_end_matches('/')
            .to_owned();
        counting_relay_to(target, pattern).await
    }

    /// A relay between one client and the test's nats-server that, once
    /// what the client sends holds `pattern`, holds it and all the client
    /// sends after until released: the relay's port, a receiver told when it
    /// holds, and a sender whose send (or drop) releases it.
    async fn holding_relay(
        pattern: &'static str,
    ) -> (
        u16,
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (port, held, release, _) = counting_relay(pattern.to_owned()).await;
        (port, held, release)
    }

    /// [`holding_relay`] for any number of clients, to `target`
    /// (`host:port`), of which the first to send `pattern` is held (the
    /// others are relayed as they come), and how many connections it has
    /// taken so far.
    async fn counting_relay_to(
        target: String, pattern: String,
    ) -> (
        u16,
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (holding, held) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let hold = Arc::new(Mutex::new(Some((holding, released))));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let (target, hold, pattern) = (target.clone(), Arc::clone(&hold), pattern.clone());
                tokio::spawn(async move {
                    let outbound = tokio::net::TcpStream::connect(&target).await.unwrap();
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut server_read, mut server_write) = outbound.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    });
                    // What the client sent lately, enough to find `pattern`
                    // split between two reads.
                    let mut recent: Vec<u8> = Vec::new();
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let read = match client_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(read) => read,
                        };
                        recent.extend_from_slice(&buffer[..read]);
                        if recent
                            .windows(pattern.len())
                            .any(|window| window == pattern.as_bytes())
                        {
                            let taken = hold.lock().unwrap().take();
                            if let Some((holding, released)) = taken {
                                let _ = holding.send(());
                                let _ = released.await;
                            }
                        }
                        let keep = recent.len().min(pattern.len());
                        recent.drain(..recent.len() - keep);
                        if server_write.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (port, held, release, connections)
    }

    /// A JetStream context whose client goes through a [`holding_relay`]
    /// at `port`, its requests bounded by ten minutes (a hang only): a
    /// request held is not given up on first.
    async fn relayed(port: u16) -> async_nats::jetstream::Context {
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(600)))
            .connect(format!("nats://127.0.0.1:{port}"))
            .await
            .unwrap();
        let mut jetstream = async_nats::jetstream::new(client);
        jetstream.set_timeout(Duration::from_secs(600));
        jetstream
    }

    /// On a work-queue stream, or an interest one, a lookup reads the
    /// messages from the stream's leader, without a consumer: the server
    /// refuses one that does not acknowledge on a work queue, and its
    /// deliveries would count as acknowledged on an interest stream. It
    /// finds the kept message, says absent when it is not there or was
    /// kept more than a minute before the publish, and leaves the stream's
    /// messages and consumers as they were.
    #[tokio::test]
    async fn a_lookup_on_a_work_queue_or_interest_stream_reads_from_the_leader() {
        use async_nats::jetstream::consumer::pull;
        for retention in [RetentionPolicy::WorkQueue, RetentionPolicy::Interest] {
            let (_client, jetstream, stream, prefix) = test_stream_of("leader", retention).await;
            // The stream's own reader, which keeps the messages of an
            // interest stream until it acknowledges them.
            jetstream
                .create_consumer_on_stream(
                    pull::Config {
                        durable_name: Some("app".to_owned()),
                        filter_subject: format!("{prefix}.>"),
                        ..Default::default()
                    },
                    &stream,
                )
                .await
                .unwrap();
            let subject = format!("{prefix}.acct_eu.order_succeeded");
            let since = Timestamp::now();
            let others = |from: usize, to: usize| -> Vec<String> {
                (from..to)
                    .map(|i| format!("acct_eu:evt_other_{i}"))
                    .collect()
            };
            publish_all(&jetstream, &subject, &others(0, 30), &Bytes::new()).await;
            let kept = publish_all(
                &jetstream,
                &subject,
                &["acct_eu:evt_kept".to_owned()],
                &Bytes::new(),
            )
            .await[0];
            publish_all(&jetstream, &subject, &others(30, 60), &Bytes::new()).await;
            publish_all(
                &jetstream,
                &format!("{prefix}.acct_eu.refund_succeeded"),
                &others(60, 70),
                &Bytes::new(),
            )
            .await;
            let messages = |jetstream: async_nats::jetstream::Context, stream: String| async move {
                let mut found = jetstream.get_stream(&stream).await.unwrap();
                found.info().await.unwrap().state.messages
            };
            assert_eq!(messages(jetstream.clone(), stream.clone()).await, 71);

            let at = |seconds: i64| Timestamp::from_millis(since.as_millis() + seconds * 1000);
            for (id, since, expected) in [
                ("acct_eu:evt_kept", since, Some(kept)),
                ("acct_eu:evt_absent", since, None),
                ("acct_us:evt_kept", since, None),
                // Kept more than a minute before the publish began.
                ("acct_eu:evt_kept", at(120), None),
            ] {
                let found = lookup(&jetstream, &stream, &subject, id, since).await;
                assert_eq!(found, expected, "{retention:?}: {id} since {since}");
            }
            assert_eq!(
                consumers(&jetstream, &stream).await,
                1,
                "{retention:?}: the stream's own consumer alone"
            );
            assert_eq!(
                messages(jetstream.clone(), stream.clone()).await,
                71,
                "{retention:?}"
            );
            jetstream.delete_stream(&stream).await.unwrap();
        }
    }

    /// A lookup answers without waiting for its consumer to be deleted: a
    /// task of its own deletes it after. Held on its way to the server, the
    /// deletion would otherwise keep the answer past the publish's time,
    /// and a message found would be dropped.
    #[tokio::test]
    async fn a_lookup_answers_before_its_consumer_is_deleted() {
        let (_client, jetstream, stream, prefix) = test_stream("slowdelete").await;
        let subject = format!("{prefix}.order_succeeded");
        let since = Timestamp::now();
        let kept = publish_all(
            &jetstream,
            &subject,
            &[":evt_kept".to_owned()],
            &Bytes::new(),
        )
        .await[0];
        // Not the last message on its subject: read through a consumer.
        publish_all(
            &jetstream,
            &subject,
            &[":evt_later".to_owned()],
            &Bytes::new(),
        )
        .await;
        let (port, held, release) = holding_relay("CONSUMER.DELETE").await;
        let through = relayed(port).await;
        // The server keeps the consumer, inactive, longer than the test.
        let earlier = unbounded(since);
        let read_to = ReadTo::new();
        let lookup = find_kept(
            &through,
            &stream,
            &subject,
            ":evt_kept",
            &earlier,
            Duration::from_secs(600),
            &read_to,
        );
        let found = tokio::time::timeout(Duration::from_secs(60), lookup)
            .await
            .expect("the lookup answered while its consumer's deletion was held")
            .unwrap();
        assert_eq!(found, Some(kept));
        tokio::time::timeout(Duration::from_secs(60), held)
            .await
            .expect("the consumer's deletion was sent")
            .unwrap();
        assert_eq!(consumers(&jetstream, &stream).await, 1, "its deletion held");
        release.send(()).unwrap();
        no_consumers_left(&jetstream, &stream).await;
        jetstream.delete_stream(&stream).await.unwrap();
    }

    /// A lookup that the server tells has nothing left for it before the
    /// last message on the subject that the stream's leader holds fails
    /// rather than say absent: the server's count of what is left can fall
    /// short (here the last message is deleted between the read from the
    /// leader and the consumer's making; a consumer on a replica behind the
    /// leader likewise), and the message looked for could be among those it
    /// did not count. The publish is then tried again later.
    #[tokio::test]
    async fn a_lookup_told_less_than_the_leader_holds_fails() {
        let (_client, jetstream, stream, prefix) = test_stream("short").await;
        let subject = format!("{prefix}.order_succeeded");
        let since = Timestamp::now();
        let ids: Vec<String> = (1..=3).map(|i| format!(":evt_{i}")).collect();
        let sequences = publish_all(&jetstream, &subject, &ids, &Bytes::new()).await;
        let (port, held, release) = holding_relay("CONSUMER.CREATE").await;
        let through = relayed(port).await;
        let (task_stream, task_subject) = (stream.clone(), subject.clone());
        let lookup = tokio::spawn(async move {
            find_kept(
                &through,
                &task_stream,
                &task_subject,
                ":evt_absent",
                &unbounded(since),
                Duration::from_secs(600),
                &ReadTo::new(),
            )
            .await
        });
        tokio::time::timeout(Duration::from_secs(60), held)
            .await
            .expect("the lookup made its consumer")
            .unwrap();
        assert!(jetstream
            .get_stream(&stream)
            .await
            .unwrap()
            .delete_message(sequences[2])
            .await
            .unwrap());
        release.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(60), lookup)
            .await
            .expect("the lookup ended")
            .unwrap();
        let error = result.expect_err("the lookup said absent");
        assert!(
            error.contains("no message left on the subject after sequence"),
            "{error}"
        );
        no_consumers_left(&jetstream, &stream).await;
        jetstream.delete_stream(&stream).await.unwrap();
    }

    /// A publish that may repeat an earlier one (whose outcome is not
    /// known) checks the stream again first: its duplicate window, cut
    /// since the connection was made, no longer drops the repeat, and the
    /// publish fails saying what to change, publishing nothing.
    #[tokio::test]
    async fn a_publish_that_may_repeat_one_checks_the_stream_again() {
        let (_client, jetstream, stream, prefix) = test_stream("recheck").await;
        let template = format!("{prefix}.{{account}}.{{type}}");
        let destination = nats_destination_with(&nats_url(), &stream, &template, TIMEOUT_5_S);
        let first = event(None, "order.succeeded");
        tokio::time::timeout(
            Duration::from_secs(60),
            destination.publish(&first, &mut None),
        )
        .await
        .expect("the publish ended")
        .unwrap()
        .expect("a receipt");

        let mut config = jetstream
            .get_stream(&stream)
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
        config.duplicate_window = Duration::from_secs(10);
        jetstream.update_stream(config).await.unwrap();
        let mut second = event(None, "order.succeeded");
        second.event_id = "evt_2".to_owned();
        let now = Timestamp::now();
        let mut unconfirmed = Some(Unconfirmed {
            since: now,
            latest: Some(now),
            read_to: None,
        });
        let publish = destination.publish(&second, &mut unconfirmed);
        let error = tokio::time::timeout(Duration::from_secs(60), publish)
            .await
            .expect("the publish ended")
            .expect_err("the stream no longer drops the repeat")
            .to_string();
        assert!(
            error.contains("duplicate window") && error.contains("nats_duplicate_window_s"),
            "{error}"
        );
        let info = jetstream
            .get_stream(&stream)
            .await
            .unwrap()
            .cached_info()
            .clone();
        assert_eq!(info.state.messages, 1, "nothing more was published");
        jetstream.delete_stream(&stream).await.unwrap();
    }

    /// When `stream` was made, in nanoseconds since the epoch.
    async fn made_at(jetstream: &async_nats::jetstream::Context, stream: &str) -> i128 {
        let found = jetstream.get_stream(stream).await.unwrap();
        found.cached_info().created.unix_timestamp_nanos()
    }

    /// The time, in whole milliseconds on the servers' clock, `stream` kept
    /// its message `sequence` at.
    async fn kept_at(
        jetstream: &async_nats::jetstream::Context, stream: &str, sequence: u64,
    ) -> Timestamp {
        let message = jetstream
            .get_stream(stream)
            .await
            .unwrap()
            .get_raw_message(sequence)
            .await
            .unwrap();
        let nanos = message.time.unix_timestamp_nanos();
        Timestamp::from_millis(i64::try_from(nanos.div_euclid(1_000_000)).unwrap())
    }

    /// A lookup cut short by the destination's timeout (a long backlog on
    /// the subject, read one message a request on a work queue) keeps how
    /// far it read, for the next one to read on after it (see
    /// `a_lookup_reads_from_where_an_earlier_one_read_to`), where each
    /// read from the start again and the event ended dead. Here the relay
    /// holds the lookup's read of the tenth message until the publish's
    /// time is out.
    #[tokio::test]
    async fn a_lookup_cut_short_keeps_how_far_it_read() {
        let (_client, jetstream, stream, prefix) =
            test_stream_of("readto", RetentionPolicy::WorkQueue).await;
        let template = format!("{prefix}.{{account}}.{{type}}");
        let event = event(None, "order.succeeded");
        let subject = subject(&template, &event);
        let others: Vec<String> = (1..=20).map(|i| format!(":evt_other_{i}")).collect();
        let sequences = publish_all(&jetstream, &subject, &others, &Bytes::new()).await;
        let held_read = format!(r#"{{"seq":{},"next_by_subj":"{subject}"}}"#, sequences[9]);
        let (port, held, release, _) = counting_relay(held_read).await;
        let through = nats_destination_with(
            &format!("nats://127.0.0.1:{port}"),
            &stream,
            &template,
            &[("destination_timeout_ms", "10000")],
        );
        // The latest publish not known: the lookup reads to the end.
        let long_ago = Timestamp::from_millis(Timestamp::now().as_millis() - 3_600_000);
        let mut unconfirmed = Some(Unconfirmed {
            since: long_ago,
            latest: None,
            read_to: None,
        });
        let publish = through.publish(&event, &mut unconfirmed);
        let error = tokio::time::timeout(Duration::from_secs(120), publish)
            .await
            .expect("the publish ended")
            .expect_err("the lookup was held until the publish's time ran out");
        assert!(error.to_string().contains("did not acknowledge"), "{error}");
        tokio::time::timeout(Duration::from_secs(120), held)
            .await
            .expect("the lookup came to the tenth message within its time")
            .expect("the read of the tenth message was held");
        let read = unconfirmed.expect("still unconfirmed");
        assert_eq!(
            read.read_to,
            Some(ReadPoint {
                time: kept_at(&jetstream, &stream, sequences[8]).await,
                sequence: sequences[8],
                stream_made: made_at(&jetstream, &stream).await,
            }),
            "the lookup read the first nine messages"
        );
        assert_eq!(read.since, long_ago);
        release.send(()).unwrap();

        let direct = nats_destination_with(&nats_url(), &stream, &template, TIMEOUT_5_S);
        let publish = direct.publish(&event, &mut unconfirmed);
        tokio::time::timeout(Duration::from_secs(60), publish)
            .await
            .expect("the publish ended")
            .unwrap()
            .expect("a receipt");
        jetstream.delete_stream(&stream).await.unwrap();
    }

    /// A lookup reads on after the sequence an earlier one read to, not
    /// from `since` again (a message before it was read then), on a stream
    /// of limits and on a work queue alike, unless that earlier lookup read
    /// a stream made at another time, or stopped before this one's start;
    /// and a lookup that reads to the subject's last message keeps that
    /// message's place.
    #[tokio::test]
    async fn a_lookup_reads_from_where_an_earlier_one_read_to() {
        for retention in [RetentionPolicy::Limits, RetentionPolicy::WorkQueue] {
            let (_client, jetstream, stream, prefix) = test_stream_of("from", retention).await;
            let subject = format!("{prefix}.order_succeeded");
            let since = Timestamp::now();
            let ids = [":evt_read", ":evt_other", ":evt_last"].map(str::to_owned);
            let sequences = publish_all(&jetstream, &subject, &ids, &Bytes::new()).await;
            let made = made_at(&jetstream, &stream).await;
            let lookup = async |id: &str, read_to: Option<ReadPoint>| {
                let earlier = Unconfirmed {
                    since,
                    latest: None,
                    read_to,
                };
                let read = ReadTo::new();
                let found = find_kept(
                    &jetstream,
                    &stream,
                    &subject,
                    id,
                    &earlier,
                    Duration::from_secs(10),
                    &read,
                );
                let found = tokio::time::timeout(Duration::from_secs(60), found)
                    .await
                    .expect("the lookup ended")
                    .unwrap();
                (found, read.get())
            };
            // Read to the second message.
            let point = ReadPoint {
                time: kept_at(&jetstream, &stream, sequences[1]).await,
                sequence: sequences[1],
                stream_made: made,
            };
            assert_eq!(
                lookup(":evt_read", None).await.0,
                Some(sequences[0]),
                "{retention:?}"
            );
            assert_eq!(
                lookup(":evt_read", Some(point)).await.0,
                None,
                "{retention:?}: read before"
            );
            assert_eq!(
                lookup(":evt_last", Some(point)).await.0,
                Some(sequences[2]),
                "{retention:?}"
            );
            // Read to the stream's last message: nothing more to read.
            let to_the_end = ReadPoint {
                time: kept_at(&jetstream, &stream, sequences[2]).await,
                sequence: sequences[2],
                stream_made: made,
            };
            assert_eq!(
                lookup(":evt_read", Some(to_the_end)).await.0,
                None,
                "{retention:?}: read to the end"
            );
            // A point in a stream made at another time, before the
            // lookup's start, or past the stream's last sequence (its
            // sequences went back), is no use to it.
            for other in [
                ReadPoint {
                    sequence: sequences[2] + 10,
                    ..point
                },
                ReadPoint {
                    stream_made: made + 1,
                    ..point
                },
                ReadPoint {
                    time: Timestamp::from_millis(since.as_millis() - 120_000),
                    ..point
                },
            ] {
                assert_eq!(
                    lookup(":evt_read", Some(other)).await.0,
                    Some(sequences[0]),
                    "{retention:?}: {other}"
                );
            }
            let (found, read) = lookup(":evt_absent", None).await;
            assert_eq!(found, None, "{retention:?}");
            assert_eq!(
                read,
                Some(ReadPoint {
                    time: kept_at(&jetstream, &stream, sequences[2]).await,
                    sequence: sequences[2],
                    stream_made: made,
                }),
                "{retention:?}: read to the last message"
            );
            jetstream.delete_stream(&stream).await.unwrap();
        }
    }

    /// A publish after one whose outcome is not known, older than the
    /// duplicate window, looks for it first; a lookup that finds none
    /// moves the earlier publishes' start to when it began, so that the
    /// next lookup does not read again what this one read. The event is
    /// then published, and a publish repeated within the window is dropped
    /// by the stream.
    #[tokio::test]
    async fn a_lookup_that_finds_nothing_moves_the_next_ones_start() {
        let (_client, jetstream, stream, prefix) = test_stream("moves").await;
        let template = format!("{prefix}.{{account}}.{{type}}");
        let destination = nats_destination_with(&nats_url(), &stream, &template, TIMEOUT_5_S);
        let event = event(None, "order.succeeded");
        let long_ago = Timestamp::from_millis(Timestamp::now().as_millis() - 3_600_000);
        let mut unconfirmed = Some(Unconfirmed {
            since: long_ago,
            latest: Some(long_ago),
            read_to: None,
        });
        let before = Timestamp::now();
        let publish = destination.publish(&event, &mut unconfirmed);
        let first = tokio::time::timeout(Duration::from_secs(60), publish)
            .await
            .expect("the publish ended")
            .unwrap()
            .expect("a receipt");
        let moved = unconfirmed.expect("still unconfirmed before this publish");
        assert!(
            moved.since >= before,
            "the next lookup reads from {} though this one found nothing from {long_ago} to              {before}",
            moved.since
        );
        assert_eq!(moved.latest, Some(long_ago));

        let publish = destination.publish(&event, &mut unconfirmed);
        let second = tokio::time::timeout(Duration::from_secs(60), publish)
            .await
            .expect("the publish ended")
            .unwrap()
            .expect("a receipt");
        assert_eq!(second, first, "the repeat is the first publish");
        let info = jetstream
            .get_stream(&stream)
            .await
            .unwrap()
            .cached_info()
            .clone();
        assert_eq!(info.state.messages, 1);
        jetstream.delete_stream(&stream).await.unwrap();
    }

    /// A publish whose connection stalls (here a relay holds what the
    /// client sends once the publish is among it) runs out of time, and the
    /// next publish connects anew instead of handing its event to the
    /// stalled connection: it is acknowledged, through a second connection.
    #[tokio::test]
    async fn a_publish_after_one_that_ran_out_of_time_connects_anew() {
        let (_client, jetstream, stream, prefix) = test_stream("stall").await;
        let template = format!("{prefix}.{{account}}.{{type}}");
        let (port, held, _release, connections) = counting_relay(format!("HPUB {prefix}.")).await;
        let url = format!("nats://127.0.0.1:{port}");
        // Long enough for a connection and a publish on a slow machine;
        // the first publish waits all of it.
        let destination = nats_destination_with(&url, &stream, &template, TIMEOUT_5_S);
        let event = event(None, "order.succeeded");

        let first = tokio::time::timeout(
            Duration::from_secs(60),
            destination.publish(&event, &mut None),
        )
        .await
        .expect("the publish ended within its time");
        let error = first.expect_err("the publish was held");
        assert!(error.is::<MaybeKept>(), "{error}");
        // The publish's time and JetStream's wait for the acknowledgement
        // end together: on a busy machine both have passed by the time the
        // publish is polled again, and the client's own error comes first.
        // Either says the same.
        let error = error.to_string();
        assert!(
            error.contains("did not acknowledge") || error.contains("didn't receive ack in time"),
            "{error}"
        );
        held.await.expect("the relay held the publish");
        assert_eq!(connections.load(Ordering::SeqCst), 1);

        let second = tokio::time::timeout(
            Duration::from_secs(60),
            destination.publish(&event, &mut None),
        )
        .await
        .expect("the publish ended within its time")
        .unwrap_or_else(|e| panic!("the publish after the stalled one: {e}"));
        assert_eq!(second, Some(format!("{stream}:1")));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "the second publish went through a new connection"
        );
        jetstream.delete_stream(&stream).await.unwrap();
    }

    /// A relay to the test's nats-server that can cut every connection it
    /// relays and refuse the next ones until mended.
    #[derive(Default)]
    struct Cuttable {
        refusing: std::sync::atomic::AtomicBool,
        refused: std::sync::atomic::AtomicUsize,
        accepted: std::sync::atomic::AtomicUsize,
        live: Mutex<Vec<tokio::task::AbortHandle>>,
    }

    impl Cuttable {
        /// Closes every connection relayed, and refuses the next ones.
        fn cut(&self) {
            self.refusing.store(true, Ordering::SeqCst);
            for relayed in self.live.lock().unwrap().drain(..) {
                relayed.abort();
            }
        }

        /// Relays the next connections again.
        fn mend(&self) {
            self.refusing.store(false, Ordering::SeqCst);
        }
    }

    /// A [`Cuttable`] relay: its port and its handle.
    async fn cuttable_relay() -> (u16, Arc<Cuttable>) {
        let target = nats_url()
            .trim_start_matches("nats://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = Arc::new(Cuttable::default());
        let control = Arc::clone(&relay);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                // Decided before it is counted: a test that saw it refused
                // may mend the relay at once.
                if relay.refusing.load(Ordering::SeqCst) {
                    drop(inbound);
                    relay.refused.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                relay.accepted.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                let relayed = tokio::spawn(async move {
                    let mut outbound = tokio::net::TcpStream::connect(&target).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                relay.live.lock().unwrap().push(relayed.abort_handle());
            }
        });
        (port, control)
    }

    /// A server that goes away while the gateway is idle, and comes back:
    /// the next publish connects anew and is acknowledged at its first
    /// attempt. Before, it was handed to the client of before, which had
    /// made its one reconnect while the server was away, and failed ("not
    /// connected"), an attempt spent.
    #[tokio::test]
    async fn a_publish_after_the_server_went_away_while_idle_connects_anew() {
        let (_client, jetstream, stream, prefix) = test_stream("idle").await;
        let template = format!("{prefix}.{{account}}.{{type}}");
        let (port, relay) = cuttable_relay().await;
        let url = format!("nats://127.0.0.1:{port}");
        let destination = nats_destination_with(&url, &stream, &template, TIMEOUT_5_S);
        let first = destination
            .publish(&event(None, "order.succeeded"), &mut None)
            .await
            .unwrap_or_else(|e| panic!("the first publish: {e}"));
        assert_eq!(first, Some(format!("{stream}:1")));
        let accepted = relay.accepted.load(Ordering::SeqCst);

        relay.cut();
        // The client's one reconnect, refused.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while relay.refused.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "no reconnect came");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        relay.mend();

        let mut second = event(None, "order.succeeded");
        second.event_id = "evt_2".to_owned();
        let published = destination
            .publish(&second, &mut None)
            .await
            .unwrap_or_else(|e| panic!("the publish after the server came back: {e}"));
        assert_eq!(published, Some(format!("{stream}:2")));
        assert!(
            relay.accepted.load(Ordering::SeqCst) > accepted,
            "a new connection"
        );
        jetstream.delete_stream(&stream).await.unwrap();
    }

    /// A stream of the test's own holding `PREFIX.>`, kept in memory, as
    /// `config` makes it (its name and subjects set here): its name and
    /// `PREFIX`.
    async fn stream_made_as(
        jetstream: &async_nats::jetstream::Context, test: &str,
        config: async_nats::jetstream::stream::Config,
    ) -> (String, String) {
        let tag = format!(
            "{test}{}x{}",
            std::process::id(),
            Timestamp::now().as_millis() % 1_000_000
        );
        let stream = format!("T{tag}");
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("t{tag}.>")],
                storage: async_nats::jetstream::stream::StorageType::Memory,
                duplicate_window: Duration::from_secs(600),
                ..config
            })
            .await
            .unwrap();
        (stream, format!("t{tag}"))
    }

    /// A NATS destination publishing to `stream` on `PREFIX.{account}.{type}`.
    fn nats_destination(stream: &str, prefix: &str) -> Destination {
        let template = format!("{prefix}.{{account}}.{{type}}");
        nats_destination_with(&nats_url(), stream, &template, &[])
    }

    /// A destination timeout long enough for a connection and a publish on
    /// a slow machine.
    const TIMEOUT_5_S: &[(&str, &str)] = &[("destination_timeout_ms", "5000")];

    /// A NATS destination at `url` publishing to `stream` on subjects made
    /// from `template`, with the settings `more` besides.
    fn nats_destination_with(
        url: &str, stream: &str, template: &str, more: &[(&'static str, &'static str)],
    ) -> Destination {
        let mut pairs: Vec<(&'static str, &str)> = vec![
            ("webhook_signing_key", "whsec_a"),
            ("inbox", "sqlite:/tmp/unused.db"),
            ("destination", url),
            ("nats_stream", stream),
            ("nats_subject", template),
        ];
        pairs.extend(more.iter().copied());
        let config = Config::from_pairs(&pairs).unwrap_or_else(|problem| panic!("{}", problem.0));
        Destination::new(&config, Signers::Verifying(AccountKeys::default())).unwrap()
    }

    /// What a stream may lose of what it acknowledged (kept in memory,
    /// interest retention) is told when a publish first reaches it, as it
    /// is at start, when the servers did not answer then: once.
    #[tokio::test]
    async fn what_a_stream_may_lose_is_told_when_a_publish_first_reaches_it() {
        let client = async_nats::connect(nats_url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let (stream, prefix) = stream_made_as(
            &jetstream,
            "told",
            async_nats::jetstream::stream::Config {
                retention: RetentionPolicy::Interest,
                ..Default::default()
            },
        )
        .await;
        let destination = nats_destination(&stream, &prefix);
        let told = || match &destination.kind {
            Kind::Nats { told, .. } => told.lock().unwrap().clone(),
            _ => unreachable!("a NATS destination"),
        };
        assert!(told().is_empty());
        tokio::time::timeout(
            Duration::from_secs(60),
            destination.publish(&event(None, "order.succeeded"), &mut None),
        )
        .await
        .expect("the publish ended within its time")
        .unwrap_or_else(|e| panic!("published: {e}"));
        let said = told();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said[0].contains("in memory only"), "{said:?}");
        assert!(said[1].contains("interest"), "{said:?}");
        // Told once: the same warnings again are not new.
        let Kind::Nats { told: kept, .. } = &destination.kind else {
            unreachable!("a NATS destination")
        };
        assert!(untold(kept, said.clone()).is_empty());
        assert_eq!(told(), said);
        jetstream.delete_stream(&stream).await.unwrap();
    }

    /// An event whose id holds a line break (the layer refuses one, but an
    /// inbox can hold one written another way) is refused as the event's
    /// own failure, unsent: the NATS client panics on such a header value.
    #[tokio::test]
    async fn an_event_id_with_a_line_break_is_refused_unsent() {
        let client = async_nats::connect(nats_url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let (stream, prefix) = stream_made_as(
            &jetstream,
            "breaks",
            async_nats::jetstream::stream::Config::default(),
        )
        .await;
        let destination = nats_destination(&stream, &prefix);
        for id in ["evt_1\n", "evt_\r1"] {
            let mut broken = event(None, "order.succeeded");
            broken.event_id = id.to_owned();
            let error = tokio::time::timeout(
                Duration::from_secs(60),
                destination.publish(&broken, &mut None),
            )
            .await
            .expect("the publish ended within its time")
            .expect_err("an id with a line break cannot be a header");
            let refused = error.downcast_ref::<EventRefused>();
            assert!(refused.is_some_and(|r| r.permanent), "{id:?}: {error}");
        }
        let kept = tokio::time::timeout(
            Duration::from_secs(60),
            destination.publish(&event(None, "order.succeeded"), &mut None),
        )
        .await
        .expect("the publish ended within its time")
        .unwrap_or_else(|e| panic!("an id without one: {e}"));
        assert_eq!(kept, Some(format!("{stream}:1")));
    }

    /// An event larger than the stream takes (its `max_msg_size`; the
    /// servers' `max_payload` alike) is refused before it is handed over:
    /// the event's own failure, not one that may have been kept, nor the
    /// destination's. Before, it was handed over, refused by the server,
    /// and taken for a publish that may have landed, its connection made
    /// anew each time. One that fits is published.
    #[tokio::test]
    async fn an_event_larger_than_the_stream_takes_is_refused_unsent() {
        let client = async_nats::connect(nats_url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let (stream, prefix) = stream_made_as(
            &jetstream,
            "size",
            async_nats::jetstream::stream::Config {
                max_message_size: 2048,
                ..Default::default()
            },
        )
        .await;
        let destination = nats_destination(&stream, &prefix);
        let now = Timestamp::now();
        let large = NewEvent::new(
            None,
            "evt_large".to_owned(),
            "order.succeeded".to_owned(),
            None,
            None,
            now,
            now,
            Bytes::from(vec![b' '; 2048]),
        );
        let error = tokio::time::timeout(
            Duration::from_secs(60),
            destination.publish(&large, &mut None),
        )
        .await
        .expect("the publish ended within its time")
        .expect_err("the event is larger than the stream takes");
        let refused = error.downcast_ref::<EventRefused>();
        assert!(refused.is_some_and(|r| r.permanent), "{error}");
        assert!(error.to_string().contains("more than the 2048"), "{error}");
        let small = event(None, "order.succeeded");
        let kept = tokio::time::timeout(
            Duration::from_secs(60),
            destination.publish(&small, &mut None),
        )
        .await
        .expect("the publish ended within its time")
        .unwrap_or_else(|e| panic!("the event that fits: {e}"));
        assert_eq!(kept, Some(format!("{stream}:1")));
        jetstream.delete_stream(&stream).await.unwrap();
    }

    /// A stream that acknowledges no publish, or is sealed, stops the start:
    /// no publish to it could be counted as kept.
    #[tokio::test]
    async fn a_stream_that_acknowledges_nothing_or_is_sealed_stops_the_start() {
        let client = async_nats::connect(nats_url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let (stream, prefix) = stream_made_as(
            &jetstream,
            "noack",
            async_nats::jetstream::stream::Config {
                no_ack: true,
                ..Default::default()
            },
        )
        .await;
        let refused = nats_destination(&stream, &prefix).check_at_start().await;
        let error = refused.expect_err("a stream that acknowledges nothing");
        assert!(error.contains("acknowledges no publish"), "{error}");
        jetstream.delete_stream(&stream).await.unwrap();

        let (stream, prefix) = stream_made_as(
            &jetstream,
            "sealed",
            async_nats::jetstream::stream::Config::default(),
        )
        .await;
        let mut sealed = jetstream
            .get_stream(&stream)
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
        sealed.sealed = true;
        jetstream.update_stream(&sealed).await.unwrap();
        let refused = nats_destination(&stream, &prefix).check_at_start().await;
        let error = refused.expect_err("a sealed stream");
        assert!(error.contains("is sealed"), "{error}");
        jetstream.delete_stream(&stream).await.unwrap();
    }

    /// The check at start makes a lookup's requests: on a stream of limits
    /// it creates a lookup's consumer and deletes it, leaving none; on a
    /// work-queue stream, whose lookups need no consumer, it makes none
    /// (the server would refuse it) and passes.
    #[tokio::test]
    async fn the_check_at_start_makes_a_lookups_requests() {
        for retention in [RetentionPolicy::Limits, RetentionPolicy::WorkQueue] {
            let (client, jetstream, stream, prefix) = test_stream_of("check", retention).await;
            let mut created = client
                .subscribe(format!("$JS.API.CONSUMER.CREATE.{stream}.>"))
                .await
                .unwrap();
            let mut deleted = client
                .subscribe(format!("$JS.API.CONSUMER.DELETE.{stream}.>"))
                .await
                .unwrap();
            client.flush().await.unwrap();
            let url = nats_url();
            let template = format!("{prefix}.{{account}}.{{type}}");
            let config = Config::from_pairs(&[
                ("webhook_signing_key", "whsec_a"),
                ("inbox", "sqlite:/tmp/unused.db"),
                ("destination", &url),
                ("nats_stream", &stream),
                ("nats_subject", &template),
            ])
            .unwrap();
            let destination =
                Destination::new(&config, Signers::Verifying(AccountKeys::default())).unwrap();
            tokio::time::timeout(Duration::from_secs(60), destination.check_at_start())
                .await
                .expect("the check ended")
                .unwrap();
            assert_eq!(
                consumers(&jetstream, &stream).await,
                0,
                "{retention:?}: the check waits for its consumer's deletion"
            );
            if retention == RetentionPolicy::Limits {
                for (what, requests) in [("created", &mut created), ("deleted", &mut deleted)] {
                    let request = tokio::time::timeout(Duration::from_secs(60), next(requests))
                        .await
                        .unwrap_or_else(|_| panic!("no consumer {what}"))
                        .unwrap();
                    assert!(
                        request.subject.contains(".clink-lookup-"),
                        "{what}: {}",
                        request.subject
                    );
                }
            }
            jetstream.delete_stream(&stream).await.unwrap();
        }
    }

    /// A publish that finds the event's marker (a retry, or a replay, which
    /// keeps the event in the inbox for another retention from then) adds
    /// nothing and sets the marker's expiry again to the whole
    /// `redis_dedup_hours` and two of the inbox's purge periods (a done
    /// event can outlive its retention by a period, or two when a purge
    /// fails or runs long, and `redis_dedup_hours` may equal the
    /// retention): here the marker is left a minute, as if nearly
    /// all of that time had passed since the `XADD`, and the publish gives
    /// it back the whole time.
    #[tokio::test]
    async fn a_publish_that_finds_the_marker_keeps_it_for_the_whole_dedup_time() {
        let (config, url, stream) = redis_test_config("marker");
        let destination =
            Destination::new(&config, Signers::Verifying(AccountKeys::default())).unwrap();
        let event = event(None, "order.succeeded");
        let publish = || async {
            tokio::time::timeout(
                Duration::from_secs(60),
                destination.publish(&event, &mut None),
            )
            .await
            .expect("the publish ended")
            .unwrap_or_else(|e| panic!("the publish: {e}"))
        };
        let mut redis = patient_connection(&redis::Client::open(url.as_str()).unwrap())
            .await
            .unwrap();
        let marker = xadd_marker(&stream, &event);
        let dedup =
            i64::try_from((config.redis_dedup + 2 * super::super::PURGE_PERIOD).as_millis())
                .unwrap();
        let left = |redis: &mut redis::aio::MultiplexedConnection| {
            let mut redis = redis.clone();
            let marker = marker.clone();
            async move {
                redis::cmd("PTTL")
                    .arg(&marker)
                    .query_async::<i64>(&mut redis)
                    .await
                    .unwrap()
            }
        };

        let first = publish().await;
        assert!(first.is_some());
        let after_add = left(&mut redis).await;
        assert!(
            after_add > dedup - 600_000 && after_add <= dedup,
            "{after_add} ms"
        );

        let () = redis::cmd("PEXPIRE")
            .arg(&marker)
            .arg(60_000)
            .query_async(&mut redis)
            .await
            .unwrap();
        let second = publish().await;
        assert_eq!(second, first, "the second publish returns the kept id");
        let after_found = left(&mut redis).await;
        assert!(
            after_found > dedup - 600_000 && after_found <= dedup,
            "the marker was left {after_found} ms, not the whole {dedup} ms again"
        );
        let entries = stream_entries_then_delete(&url, &stream, &event).await;
        assert_eq!(entries, 1, "the event was added once");
    }

    /// A redis-server of the test's own on a free loopback port, in a
    /// directory of its own (a replica's sync writes a file there), both
    /// removed when dropped.
    struct OwnRedis {
        process: std::process::Child,
        port: u16,
        dir: std::path::PathBuf,
        more: Vec<String>,
    }

    impl OwnRedis {
        fn start(name: &str, more: &[&str]) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "clink-own-redis-{name}-{}-{}",
                std::process::id(),
                Timestamp::now().as_millis()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let more: Vec<String> = more.iter().map(|arg| (*arg).to_owned()).collect();
            let (process, port) = Self::spawn(&dir, &more);
            Self {
                process,
                port,
                dir,
                more,
            }
        }

        /// A redis-server on a port free a moment ago.
        fn spawn(dir: &std::path::Path, more: &[String]) -> (std::process::Child, u16) {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .unwrap()
                .port();
            let process = std::process::Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir)
                .args(more)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is installed by scripts/test");
            (process, port)
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }

        /// A connection, once the server answers; one that exited (its
        /// port taken since it was picked) is started again on another.
        async fn connection(&mut self) -> redis::aio::MultiplexedConnection {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                let client = redis::Client::open(self.url()).unwrap();
                if let Ok(mut connection) = patient_connection(&client).await {
                    let pong: redis::RedisResult<String> =
                        redis::cmd("PING").query_async(&mut connection).await;
                    if pong.is_ok() {
                        return connection;
                    }
                }
                if self.process.try_wait().unwrap().is_some() {
                    (self.process, self.port) = Self::spawn(&self.dir, &self.more);
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "redis-server did not start"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    impl Drop for OwnRedis {
        fn drop(&mut self) {
            let _ = self.process.kill();
            let _ = self.process.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A body larger than the Redis server takes in one argument
    /// (`proto-max-bulk-len`, here 1 MiB) is refused for good before it is
    /// sent, saying so, and its event is dead at once; one that fits is
    /// added. Sent, the server refused it as a protocol error and closed
    /// the connection, and the event was retried until it died, the later
    /// events of its object waiting behind it.
    #[tokio::test]
    async fn a_body_larger_than_the_server_takes_is_refused_for_good() {
        let mut server = OwnRedis::start("bulk", &["--proto-max-bulk-len", "1mb"]);
        let mut connection = server.connection().await;
        let stream = "clink-test:bulk";
        let config = Config::from_pairs(&[
            ("webhook_signing_key", "whsec_a"),
            ("inbox", "sqlite:/tmp/unused.db"),
            ("destination", &server.url()),
            ("redis_stream", stream),
            ("body_limit_bytes", "4194304"),
            ("body_budget_bytes", "8388608"),
            ("destination_timeout_ms", "30000"),
            ("lease_ms", "60000"),
        ])
        .unwrap_or_else(|problem| panic!("{}", problem.0));
        let destination =
            Destination::new(&config, Signers::Verifying(AccountKeys::default())).unwrap();
        let now = Timestamp::now();
        let of_size = |id: &str, size: usize| {
            NewEvent::new(
                None,
                id.to_owned(),
                "order.succeeded".to_owned(),
                None,
                None,
                now,
                now,
                Bytes::from(vec![b' '; size]),
            )
        };
        let mut entries = async || -> u64 {
            redis::cmd("XLEN")
                .arg(stream)
                .query_async(&mut connection)
                .await
                .unwrap()
        };
        let error = destination
            .publish(&of_size("evt_bulk_large", 1024 * 1024 + 1), &mut None)
            .await
            .expect_err("the body is larger than the server takes");
        let refused = error.downcast_ref::<EventRefused>();
        assert!(refused.is_some_and(|r| r.permanent), "{error}");
        assert!(
            error
                .to_string()
                .contains("1048577 bytes, more than the 1048576"),
            "{error}"
        );
        assert_eq!(entries().await, 0);
        let id = destination
            .publish(&of_size("evt_bulk_fits", 1024 * 1024), &mut None)
            .await
            .unwrap_or_else(|e| panic!("the body that fits: {e}"));
        assert!(id.is_some());
        assert_eq!(entries().await, 1);

        // The limit raised while the gateway runs, on the connection it
        // keeps: the large body is read against the new one, and added.
        let mut raise = server.connection().await;
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("proto-max-bulk-len")
            .arg("2mb")
            .query_async(&mut raise)
            .await
            .unwrap();
        destination
            .publish(&of_size("evt_bulk_raised", 1024 * 1024 + 1), &mut None)
            .await
            .unwrap_or_else(|e| panic!("the body under the raised limit: {e}"));
        assert_eq!(entries().await, 2);
    }

    /// With `redis_wait_replicas`, publishes that run at once wait for the
    /// replicas side by side, each on a connection of its own: on a shared
    /// one each `WAIT` held up the next publish's, and behind a slow
    /// replica the later ones ran out of time before sending theirs. Here
    /// no replica comes: four publishes with a 1 s `WAIT` each (a third of
    /// the 3 s timeout) all end with the replicas' answer, none out of time.
    #[tokio::test]
    async fn publishes_wait_for_the_replicas_side_by_side() {
        let mut primary = OwnRedis::start("alone", &[]);
        let config = Config::from_pairs(&[
            ("webhook_signing_key", "whsec_a"),
            ("inbox", "sqlite:/tmp/unused.db"),
            ("destination", &primary.url()),
            ("redis_stream", "clink-test:side-by-side"),
            ("redis_wait_replicas", "1"),
            ("destination_timeout_ms", "3000"),
            ("concurrency", "4"),
        ])
        .unwrap_or_else(|problem| panic!("{}", problem.0));
        let destination =
            Destination::new(&config, Signers::Verifying(AccountKeys::default())).unwrap();
        // The script loaded, as the start's check loads it: the WAIT is
        // all each publish waits for.
        let _: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(XADD_ONCE)
            .query_async(&mut primary.connection().await)
            .await
            .unwrap();
        let events: Vec<NewEvent> = (1..=4)
            .map(|n| {
                let mut event = event(None, "order.succeeded");
                event.event_id = format!("evt_side_{n}");
                event
            })
            .collect();
        let publish = async |event: &NewEvent| destination.publish(event, &mut None).await;
        let (a, b, c, d) = tokio::join!(
            publish(&events[0]),
            publish(&events[1]),
            publish(&events[2]),
            publish(&events[3])
        );
        for result in [a, b, c, d] {
            let error = result.unwrap_err().to_string();
            assert!(
                error.contains("0 of the 1 replicas asked for (redis_wait_replicas) confirmed"),
                "{error}"
            );
        }
    }

    /// With `redis_wait_replicas`, an event counts as published only once
    /// that many replicas have its entry (`WAIT`): a primary without its
    /// replica fails the publish, saying so, and the event is published
    /// again once the replica is there, its entry kept once. Without it, a
    /// failover to a replica that had not the entry lost it while the
    /// inbox had the event done.
    #[tokio::test]
    async fn an_event_waits_for_the_replicas_asked_for() {
        let mut primary = OwnRedis::start("primary", &[]);
        let mut on_primary = primary.connection().await;
        let stream = "clink-test:wait";
        let config = Config::from_pairs(&[
            ("webhook_signing_key", "whsec_a"),
            ("inbox", "sqlite:/tmp/unused.db"),
            ("destination", &primary.url()),
            ("redis_stream", stream),
            ("redis_wait_replicas", "1"),
            ("destination_timeout_ms", "3000"),
        ])
        .unwrap_or_else(|problem| panic!("{}", problem.0));
        let destination =
            Destination::new(&config, Signers::Verifying(AccountKeys::default())).unwrap();
        let event = event(None, "order.succeeded");

        // The script loaded, as the start's check loads it: the WAIT is
        // all the publish waits for.
        let _: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(XADD_ONCE)
            .query_async(&mut on_primary)
            .await
            .unwrap();
        let alone = destination.publish(&event, &mut None).await.unwrap_err();
        assert!(
            alone
                .to_string()
                .contains("0 of the 1 replicas asked for (redis_wait_replicas) confirmed"),
            "{alone}"
        );

        let mut replica = OwnRedis::start(
            "replica",
            &["--replicaof", "127.0.0.1", &primary.port.to_string()],
        );
        let mut on_replica = replica.connection().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut on_replica)
                .await
                .unwrap();
            if info
                .lines()
                .any(|line| line.trim() == "master_link_status:up")
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the replica never synced: {info}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Published once the replica confirms within the WAIT (a busy
        // machine's replica may take longer than the second a first
        // WAIT gives it: the publish is tried again, as the inbox would).
        // The script is flushed first: the pipeline loads it again.
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut on_primary)
            .await
            .unwrap();
        let kept = loop {
            match destination.publish(&event, &mut None).await {
                Ok(kept) => break kept,
                // Only the replica's confirmation may be late: a publish
                // that failed otherwise (the script not loaded again) fails
                // the test at once.
                Err(error) => {
                    assert!(error.to_string().contains("replicas asked for"), "{error}");
                    assert!(tokio::time::Instant::now() < deadline, "{error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert!(kept.is_some());
        for connection in [&mut on_primary, &mut on_replica] {
            let entries: u64 = redis::cmd("XLEN")
                .arg(stream)
                .query_async(connection)
                .await
                .unwrap();
            assert_eq!(entries, 1, "the entry is kept once, on both");
        }
    }

    /// A publish whose Redis connection stalls (a relay holds what the
    /// client sends once the publish is among it: a server that stopped
    /// answering without closing the connection) runs out of time, and the
    /// next publish connects anew instead of sending its event down the
    /// stalled connection, which the Redis client does not replace on a
    /// timeout: it is added, through a second connection.
    #[tokio::test]
    async fn a_redis_publish_after_one_that_ran_out_of_time_connects_anew() {
        let (_, url, stream) = redis_test_config("stall");
        let target = url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let (port, held, _release, connections) = counting_relay_to(target, stream.clone()).await;
        let relayed = format!("redis://127.0.0.1:{port}/");
        // Long enough for a connection and a publish on a slow machine;
        // the first publish waits all of it.
        let config = Config::from_pairs(&[
            ("webhook_signing_key", "whsec_a"),
            ("inbox", "sqlite:/tmp/unused.db"),
            ("destination", &relayed),
            ("redis_stream", &stream),
            ("destination_timeout_ms", "5000"),
        ])
        .unwrap_or_else(|problem| panic!("{}", problem.0));
        let destination =
            Destination::new(&config, Signers::Verifying(AccountKeys::default())).unwrap();
        let event = event(None, "order.succeeded");

        let first = tokio::time::timeout(
            Duration::from_secs(60),
            destination.publish(&event, &mut None),
        )
        .await
        .expect("the publish ended within its time");
        let error = first.expect_err("the publish was held").to_string();
        held.await.expect("the relay held the publish");
        // The publish's time and the client's response timeout end
        // together: either says the same.
        assert!(
            error.contains("did not acknowledge") || error.contains("timed out"),
            "{error}"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 1);

        let second = tokio::time::timeout(
            Duration::from_secs(60),
            destination.publish(&event, &mut None),
        )
        .await
        .expect("the publish ended within its time")
        .unwrap_or_else(|e| panic!("the publish after the stalled one: {e}"));
        assert!(second.is_some());
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "the second publish connected anew"
        );
        let entries = stream_entries_then_delete(&url, &stream, &event).await;
        assert_eq!(entries, 1, "the event was added once");
    }

    /// Whether NATS subject `pattern` (with `*` and `>`) matches `subject`.
    fn covers(pattern: &str, subject: &str) -> bool {
        let (mut pattern, mut subject) = (pattern.split('.'), subject.split('.'));
        loop {
            match (pattern.next(), subject.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(s)) if p == s => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn the_stream_holds_every_subject_a_template_makes() {
        use super::super::config::stream_subject;
        for template in [
            "clink.{account}.{type}",
            "clink.{account}",
            "clink:v1.{account}.{type}",
            "clink.{type}.{account}",
            "clink..{account}..{type}",
            "c.v{account}",
            "a:b.c",
            "clink.{account}:{type}",
        ] {
            for (account_empty, account) in [
                (true, None),
                (false, Some("acct_eu")),
                (false, Some("a.b")),
                (false, Some("...")),
            ] {
                let stream = stream_subject(template, account_empty).unwrap();
                for event_type in ["order.succeeded", "x", "a:b", "", "..."] {
                    let subject = subject(template, &event(account, event_type));
                    assert!(
                        covers(&stream, &subject),
                        "{template}: {subject} is not in the stream's {stream}"
                    );
                }
            }
        }
    }
}
