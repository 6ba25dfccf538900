//! [`Server`]: serving a webhook endpoint over HTTP/1 with hyper, hardened
//! against clients that are slow, idle or many (feature `server`).
//!
//! A webhook URL is public. Served naively, a client can keep a socket open
//! forever by sending a header byte every few seconds, hold thousands of
//! idle keep-alive connections, make `accept` fail with "too many open
//! files" and stop the server, or keep it from shutting down. `Server`:
//!
//! - closes a connection that has not sent complete request headers within
//!   the [header read timeout](Server::header_read_timeout) (default 10 s),
//!   which also bounds how long an idle keep-alive connection stays open;
//! - closes a connection whose answer the client does not read within the
//!   [write timeout](Server::write_timeout) (default 10 s): pipelining
//!   requests and never reading would otherwise hold a connection for ever;
//! - answers `431` to request headers over
//!   [`max_header_bytes`](Server::max_header_bytes) (default 16 KiB; a
//!   webhook's are a few hundred bytes), and closes the connection: hyper's
//!   read buffer, which holds a request's head and the body bytes in
//!   transit, is bounded by it too, so what a connection makes the server
//!   hold before the layer's budget counts is at most that;
//! - closes a connection whose chunked body's trailers run past 1 KiB (a
//!   webhook sends none; hyper would keep up to 16 KiB of them);
//! - answers `400` to a request with both `Content-Length` and
//!   `Transfer-Encoding` (and closes the connection), which a proxy in
//!   front might frame differently from this server: request smuggling;
//! - serves at most [`max_connections`](Server::max_connections) at once
//!   (default 512), or fewer when the process may not open a file for each
//!   (`ulimit -n`; on Linux): then half the limit, at most 64 files, is
//!   kept for the process's other files, and a warning says so at start
//!   (each `Server` counts the limit alone: two in one process, a
//!   webhook's and an admin's, share it, so give the second a small
//!   `max_connections`);
//!   when every one is taken and another client connects,
//!   the connection idle longest is closed to make room (one open for at
//!   least a second without a request, between requests or still sending
//!   its first head), so that clients holding connections open without
//!   using them keep no one out. With none idle, the one whose client has
//!   kept it waiting longest, a second or more, for a body that arrives
//!   slower than 16 KiB in that time (of its data: a chunked body's size
//!   lines and their padding do not count) is closed unanswered: a delivery's
//!   body arrives in milliseconds, and the layer runs no handler before
//!   it is all in, so what is cut is a body trickled or stalled (or, while
//!   every slot is taken, one sent that slowly over a poor link). With
//!   neither, the connection between two requests idle longest, however
//!   briefly, whose last answer was not to a delivery the layer verified
//!   (a refusal, or an answer from any route that needs no key) is
//!   closed, so that clients that keep every connection busy with such
//!   requests keep no one out either; once the new client has waited a
//!   second, one whose last answer was to a verified delivery is taken so
//!   too (one a second at most, whoever keeps the server that busy). Of
//!   those, one whose client has not begun its next request goes first:
//!   closed, a connection drops a request not yet handed on (a head still
//!   arriving, or one sent ahead behind the last) unanswered, and nothing
//!   of it ran. A connection still sending its first head is never taken
//!   so. A request whose body is all in is never cut when the layer serves it,
//!   and a connection told to close finishes a request it began meanwhile
//!   unless it stalls its body so; an answer already made that its client
//!   has not read a second later is cut. A service of your own that leaves
//!   a body unread while it runs (or streams it) may be cut with it when
//!   its client sends the body that slowly. While no connection
//!   qualifies, the one accepted waits for a slot, and the rest wait in the
//!   kernel's backlog;
//! - when `accept` fails for want of a file all the same (the app's other
//!   files took what the limit left), closes a connection for the client
//!   waiting as a full server does, and tries again; any failed `accept` is
//!   logged (at `warn` once a minute at most, while they go on) and tried
//!   again after a pause, never stopping;
//! - on shutdown stops accepting, lets deliveries in progress finish for at
//!   most the [shutdown timeout](Server::shutdown_timeout) (default 10 s),
//!   then closes what is left, and waits at most 2 s more while the claims
//!   being settled in the process on tasks of their own (those of the
//!   deliveries it cut off among them) are settled with their stores (see
//!   [`ClinkLayer::settled`](crate::ClinkLayer::settled)).
//!
//! Every request it serves carries the address of its connection's peer
//! in its extensions, as a [`Peer`].
//!
//! Bodies are bounded by the layer itself ([`ClinkLayer::body_timeout`],
//! [`ClinkLayer::body_budget`]).
//!
//! # Memory a stranger can make it hold
//!
//! With the defaults, request heads and bodies not yet verified take at
//! most the layer's body budget (64 MiB) plus a margin of 24 MiB, counted
//! as resident memory (the allocator's and hyper's buffers included): each
//! connection holds at most `max_header_bytes` (16 KiB) of hyper's read
//! buffer for a head, kept while its body is read, and as much again for
//! body bytes in transit, plus its state (about 13 KiB for an idle
//! connection in a debug build, less in a release one) and at most 1 KiB
//! of a chunked body's trailers, so at most about 46 KiB, and the
//! connection limit (512) caps how many do: 23 MiB.
//! `tests/suite/hostile.rs` measures the peak with 400 connections stalled
//! in bodies with wrong signatures, 400 stalled just short of the header
//! limit or just after it in a chunked body, and 400 sending heads far
//! over it. A larger `max_header_bytes` or `max_connections` raises the
//! margin in proportion (about 45 KiB per connection at the default
//! header limit).
//!
//! [`ClinkLayer::body_timeout`]: crate::ClinkLayer::body_timeout
//! [`ClinkLayer::body_budget`]: crate::ClinkLayer::body_budget
//!
//! ```no_run
//! use clink_webhooks::server::Server;
//! use clink_webhooks::{ClinkLayer, EventRouter, Verifier};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let service = ClinkLayer::new(Verifier::new("whsec_...")?).route(EventRouter::new());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! // Ctrl-C, or SIGTERM: how Docker, Kubernetes and systemd stop a process.
//! #[cfg(unix)]
//! let mut sigterm =
//!     tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
//! let shutdown = async move {
//!     // A Ctrl-C handler that cannot be installed stops nothing.
//!     #[cfg(unix)]
//!     tokio::select! {
//!         Ok(()) = tokio::signal::ctrl_c() => {}
//!         _ = sigterm.recv() => {}
//!     }
//!     #[cfg(not(unix))]
//!     if tokio::signal::ctrl_c().await.is_err() {
//!         std::future::pending::<()>().await;
//!     }
//! };
//! Server::new().serve(listener, service, shutdown).await;
//! # Ok(()) }
//! ```

mod framing;
mod stall;

/// The framing scanner, for the fuzz targets only: it exists in builds
/// made with `--cfg fuzzing` (as `cargo fuzz` makes them), never otherwise.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// The index of the first request (0 for a connection's first) that
    /// the server refuses for its framing, when the connection's bytes
    /// arrive in `pieces`; `None` when it refuses none.
    #[must_use]
    pub fn refused_from(pieces: &[&[u8]]) -> Option<u64> {
        let mut framing = super::framing::Framing::new();
        for piece in pieces {
            framing.scan(piece);
        }
        framing.refused_from()
    }
}

use std::fmt;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;
use tokio::net::TcpListener;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tower_service::Service;

use crate::{BoxError, ConfigError};

/// The default time a connection has to send complete request headers: 10 s.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The default number of connections served at once: 512 (see [what a
/// stranger can make it hold](self#memory-a-stranger-can-make-it-hold)).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// The default time deliveries in progress get to finish on shutdown: 10 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The default time a connection's answer may wait for the client to read
/// it: 10 s.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default limit of a request's head (its request line and headers):
/// 16 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

/// The pause after a failed `accept` before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often failed `accept`s are logged at `warn` while they go on: the
/// first of a run, then a count at most this often (each at `debug`).
const ACCEPT_FAILURES_TOLD_EVERY: Duration = Duration::from_secs(60);

/// Whether `error`, from `accept`, says the process (`EMFILE`) or the
/// system (`ENFILE`) has no file left for the connection.
fn out_of_files(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(23 | 24)) && cfg!(unix)
}

/// How many files the process may have open (its soft `RLIMIT_NOFILE`, as
/// `/proc/self/limits` tells it on Linux); `None` when unlimited or not
/// told.
fn open_file_limit() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// How many connections to serve at once, at most `max`, when the process
/// may have `limit` files open: each connection takes one, and the
/// process's other files (its listeners, its stores' connections, its
/// logs) take some, so a limit too low for `max` keeps half of it (at most
/// 64) for them. Past the limit `accept` fails, and a full server closes an
/// idle connection for a new client only while the limit is not reached.
fn within_open_files(max: usize, limit: Option<u64>) -> usize {
    let Some(limit) = limit.and_then(|l| usize::try_from(l).ok()) else {
        return max;
    };
    let kept = (limit / 2).min(64);
    if max.saturating_add(kept) <= limit {
        max
    } else {
        (limit - kept).clamp(1, max)
    }
}

/// A run of failed `accept`s, logged as [`ACCEPT_FAILURES_TOLD_EVERY`]
/// says.
#[derive(Debug, Default)]
struct AcceptFailures {
    /// When the run began.
    since: Option<tokio::time::Instant>,
    /// When one was last logged at `warn`, and how many failed since.
    told: Option<(tokio::time::Instant, u64)>,
}

impl AcceptFailures {
    fn failed(&mut self, error: &std::io::Error) {
        let now = tokio::time::Instant::now();
        self.since.get_or_insert(now);
        match &mut self.told {
            Some((at, count)) if now.duration_since(*at) < ACCEPT_FAILURES_TOLD_EVERY => {
                *count += 1;
                tracing::debug!(%error, "accept failed; trying again shortly");
            }
            told => {
                let before = told.map_or(0, |(_, count)| count);
                *told = Some((now, 0));
                tracing::warn!(
                    %error,
                    failed_before = before,
                    "accept failed; trying again shortly (out of files: closing idle \
                     connections for the clients waiting), told again at most once a minute"
                );
            }
        }
    }

    /// Whether the clients waiting have waited [`IDLE_BEFORE_CLOSED`].
    fn waited_long(&self) -> bool {
        self.since
            .is_some_and(|since| since.elapsed() >= IDLE_BEFORE_CLOSED)
    }

    fn accepted(&mut self) {
        self.since = None;
    }
}

/// How often a connection accepted while every slot is taken looks again
/// for one idle long enough to close, while none is (after one is told to
/// close, it waits this long beyond that one's [`CLOSE_GRACE`]).
const EVICT_AGAIN: Duration = Duration::from_millis(100);

/// How long a connection must have been idle (open without a request, or
/// since its last answer was made) before a full server closes it for a
/// new client: a client that just connected, or just had its answer, is
/// about to send its request. (A connection between two requests whose
/// last answer was not to a verified delivery is closed however briefly
/// idle, and one that was once the new client has waited this long: see
/// [`Open::close_idlest`].)
const IDLE_BEFORE_CLOSED: Duration = Duration::from_secs(1);

/// How long a server that stopped waits, after closing the connections
/// left, for the claims being settled in the process on tasks of their
/// own (those of the deliveries it cut off among them).
const SETTLE_GRACE: Duration = Duration::from_secs(2);

/// How long a connection told to close for a new client has to close, for
/// as long as it is in the middle of no request: an answer being written
/// to a client that reads it, say.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The connections being served, as a full server picks the one to close.
#[derive(Default)]
struct Open {
    connections: Mutex<HashMap<u64, Arc<Served>>>,
    next_id: AtomicU64,
    /// Told whenever a connection has closed (its file is free).
    closed: Notify,
}

/// One connection being served.
struct Served {
    /// Requests it is in the middle of (0: between requests, or sending
    /// its first head).
    requests: AtomicUsize,
    /// When it last opened, started a request or had its answer made: a
    /// [`now_ms`].
    last_active: AtomicU64,
    /// Whether it has had an answer made: between two requests once idle,
    /// not sending its first head.
    answered: AtomicBool,
    /// Whether its last answer was to a delivery the layer verified (it
    /// carries a [`VerifiedEvent`](crate::VerifiedEvent)).
    verified: AtomicBool,
    /// Whether it was told to close.
    told: AtomicBool,
    /// What its bytes say: whether it is in the middle of a body.
    framing: Arc<framing::Verdicts>,
    /// Told to close.
    close: Notify,
}

/// The time on [`now_ms`]'s clock [`IDLE_BEFORE_CLOSED`] ago; `None` in
/// the clock's first second.
fn since_before_closed() -> Option<u64> {
    now_ms().checked_sub(u64::try_from(IDLE_BEFORE_CLOSED.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds on a clock of the process's own, for how long connections
/// have been idle.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Open {
    fn connections(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Served>>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection, until the guard returned is dropped.
    fn add(self: &Arc<Self>, framing: Arc<framing::Verdicts>) -> (Registered, Arc<Served>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let served = Arc::new(Served {
            requests: AtomicUsize::new(0),
            last_active: AtomicU64::new(now_ms()),
            answered: AtomicBool::new(false),
            verified: AtomicBool::new(false),
            told: AtomicBool::new(false),
            close: Notify::new(),
            framing,
        });
        self.connections().insert(id, Arc::clone(&served));
        (
            Registered {
                open: Arc::clone(self),
                id,
            },
            served,
        )
    }

    /// Tells the connection idle longest, if one has been idle for
    /// [`IDLE_BEFORE_CLOSED`] and was not told yet, to close; failing
    /// that, the one whose client has kept it waiting longest for a body
    /// that is not flowing ([`Served::body_stalled`]); failing that, the
    /// one between two requests idle longest, however briefly, whose last
    /// answer was not to a verified delivery, or, once the new client has
    /// `waited` for
    /// `IDLE_BEFORE_CLOSED`, any. Between two requests, one whose client
    /// has not begun its next goes first. Whether there was one. Of two
    /// alike, the one opened first.
    fn close_idlest(&self, waited: bool) -> bool {
        let connections = self.connections();
        let untold = || {
            connections
                .iter()
                .filter(|(_, served)| !served.told.load(Ordering::Relaxed))
        };
        let idle = || {
            untold().filter_map(|(&id, served)| {
                let idle = served.requests.load(Ordering::Relaxed) == 0;
                Some((served.last_active.load(Ordering::Relaxed), id, served)).filter(|_| idle)
            })
        };
        // In the clock's first second, nothing has been idle that long.
        let idlest = since_before_closed()
            .and_then(|idle_since| {
                idle()
                    .filter(|&(since, ..)| since <= idle_since)
                    .min_by_key(|&(since, id, served)| (served.framing.next_begun(), since, id))
                    .or_else(|| {
                        // A body its client has kept the server waiting on
                        // for a second, sending less than 16 KiB of it: a
                        // delivery's takes milliseconds, so this one is
                        // trickled or stalled, and holds a slot while it
                        // lasts.
                        untold()
                            .filter_map(|(&id, served)| {
                                Some((served.framing.waiting_for_body_since()?, id, served))
                            })
                            .filter(|&(since, ..)| since <= idle_since)
                            .min_by_key(|&(since, id, _)| (since, id))
                    })
            })
            .or_else(|| {
                // Clients that keep every connection busy with requests
                // answered at once (refused ones, or to any route that
                // needs no key) would keep a new client out for as long as
                // they go on. Between two requests a connection may be
                // closed (RFC 9112); one whose last answer was not to a
                // verified delivery at once, one whose was once the new
                // client has waited as long as a connection must be idle,
                // so that clients busy with deliveries are closed one a
                // second at most. One still sending its first
                // head is never taken so: a new client's delivery is not
                // cut for the next. One whose next request has begun to
                // come goes last: closed, it drops that request unanswered.
                idle()
                    .filter(|(.., served)| {
                        served.answered.load(Ordering::Relaxed)
                            && (waited || !served.verified.load(Ordering::Relaxed))
                    })
                    .min_by_key(|&(since, id, served)| (served.framing.next_begun(), since, id))
            })
            .map(|(.., served)| served);
        match idlest {
            Some(served) => {
                served.told.store(true, Ordering::Relaxed);
                // `notify_one` keeps the permit when the connection's task
                // is not waiting yet.
                served.close.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Served {
    /// Whether the server has been waiting a second or more on this
    /// connection's client for a body arriving slower than
    /// [`framing::FLOWING`] bytes in that time.
    fn body_stalled(&self) -> bool {
        self.framing
            .waiting_for_body_since()
            .is_some_and(|since| since_before_closed().is_some_and(|limit| since <= limit))
    }
}

/// A connection in [`Open`]'s map until dropped, however its task ends.
struct Registered {
    open: Arc<Open>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open.connections().remove(&self.id);
        self.open.closed.notify_waiters();
    }
}

/// A request in progress on its connection: the connection is not idle
/// until it is dropped.
struct InProgress(Arc<Served>);

impl InProgress {
    fn new(served: &Arc<Served>) -> Self {
        served.requests.fetch_add(1, Ordering::Relaxed);
        served.last_active.store(now_ms(), Ordering::Relaxed);
        Self(Arc::clone(served))
    }

    /// Notes whether its answer was to a delivery the layer verified.
    fn answered<B>(&self, response: &http::Response<B>) {
        let verified = response
            .extensions()
            .get::<crate::VerifiedEvent>()
            .is_some();
        self.0.verified.store(verified, Ordering::Relaxed);
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.last_active.store(now_ms(), Ordering::Relaxed);
        self.0.answered.store(true, Ordering::Relaxed);
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves a tower service on a listener with the protections in the
/// [module docs](self). Built with validated setters, then
/// [`serve`](Self::serve).
#[derive(Clone)]
pub struct Server {
    header_read_timeout: Duration,
    max_connections: usize,
    shutdown_timeout: Duration,
    max_header_bytes: usize,
    write_timeout: Duration,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_connections", &self.max_connections)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("write_timeout", &self.write_timeout)
            .finish()
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// A server with the defaults: 10 s header read timeout, 512
    /// connections, 10 s shutdown timeout, 16 KiB of request head, 10 s
    /// write timeout.
    #[must_use]
    pub fn new() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }

    /// The largest request head (request line and headers, in bytes)
    /// served; a larger one is answered `431 Request Header Fields Too
    /// Large` and its connection closed. It is the size of hyper's read
    /// buffer per connection, which also holds body bytes on their way to
    /// the layer: see [what a stranger can make it
    /// hold](self#memory-a-stranger-can-make-it-hold).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `bytes` is between 8 KiB (hyper's smallest
    /// read buffer) and 1 MiB.
    pub fn max_header_bytes(mut self, bytes: usize) -> Result<Self, ConfigError> {
        if !(8 * 1024..=1024 * 1024).contains(&bytes) {
            return Err(ConfigError::new(
                "Server::max_header_bytes must be between 8 KiB and 1 MiB (the default is 16 KiB)",
            ));
        }
        self.max_header_bytes = bytes;
        Ok(self)
    }

    /// How long a connection has to send complete request headers, counted
    /// from when it opens or finishes its previous response; an idle
    /// keep-alive connection is closed after it too.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `timeout` is between 1 ms and 1 hour.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "Server::header_read_timeout must be between 1 ms and 1 hour (the default is 10 s)",
            ));
        }
        self.header_read_timeout = timeout;
        Ok(self)
    }

    /// How long an answer may wait for the client to read it: a connection
    /// whose writes make no progress for this long is closed. A client
    /// that pipelines requests and never reads the answers would otherwise
    /// hold its connection, and one of the
    /// [`max_connections`](Self::max_connections), for as long as it likes
    /// (while hyper waits to write, it reads no further request, so the
    /// header read timeout does not run).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `timeout` is between 1 ms and 1 hour.
    pub fn write_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "Server::write_timeout must be between 1 ms and 1 hour (the default is 10 s)",
            ));
        }
        self.write_timeout = timeout;
        Ok(self)
    }

    /// How many connections are served at once. When every one is taken
    /// and another client connects, the connection idle longest (for a
    /// second at least) is closed for it, or else the one waiting longest
    /// on its client for a stalled body (for a second at least), or else
    /// one between two requests (at once when its last answer was not to
    /// a delivery the layer verified, once the newcomer has waited a
    /// second otherwise); when
    /// none is, the
    /// newcomer waits for one to close, and more wait in the kernel's
    /// backlog (see the [module docs](self)). A process that may not open
    /// a file for each (`ulimit -n`) serves fewer, keeping half its limit,
    /// at most 64 files, for its other files, and warns at start.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `connections` is zero.
    pub fn max_connections(mut self, connections: usize) -> Result<Self, ConfigError> {
        if connections == 0 || connections > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new(
                "Server::max_connections must be at least 1 (the default is 512)",
            ));
        }
        self.max_connections = connections;
        Ok(self)
    }

    /// How long deliveries in progress get to finish once shutdown is
    /// asked for; connections still open then are closed.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `timeout` is over 1 hour.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "Server::shutdown_timeout must be at most 1 hour (the default is 10 s)",
            ));
        }
        self.shutdown_timeout = timeout;
        Ok(self)
    }

    /// Serves `service` on `listener` until `shutdown` resolves, then shuts
    /// down as the [module docs](self) say. Returns once every connection
    /// is closed and the claims being settled in the process on tasks of
    /// their own (those of the deliveries it cut off among them) are (or 2
    /// s have passed since it closed them).
    pub async fn serve<S, B>(
        self, listener: TcpListener, service: S, shutdown: impl Future<Output = ()>,
    ) where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let max_connections = within_open_files(self.max_connections, open_file_limit());
        if max_connections < self.max_connections {
            tracing::warn!(
                max_connections = self.max_connections,
                serving = max_connections,
                open_files = open_file_limit(),
                "the process may not open a file for every connection (ulimit -n): serving fewer \
                 connections at once, the rest of the limit kept for its other files; raise the \
                 limit (LimitNOFILE= in a systemd unit, --ulimit nofile= with Docker) to serve \
                 them all"
            );
        }
        let slots = Arc::new(Semaphore::new(max_connections));
        let open = Arc::new(Open::default());
        let mut accept_failures = AcceptFailures::default();
        // Told once shutdown is asked for: every connection finishes the
        // request it is in the middle of, then closes.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        'accept: loop {
            // Reap finished connections so the set does not grow.
            while connections.try_join_next().is_some() {}
            // Accepted before a slot is sure, so that a full server knows a
            // client is waiting and closes an idle connection for it.
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, say (the app's other
                        // files took what the limit left): a client is
                        // waiting, as when every slot is taken, so a
                        // connection is closed for it as a full server
                        // closes one, and the accept tried again once one
                        // has closed (or after the grace of the one told);
                        // anything else, after a pause.
                        accept_failures.failed(&error);
                        let closed = open.closed.notified();
                        let mut closed = std::pin::pin!(closed);
                        closed.as_mut().enable();
                        let told = out_of_files(&error)
                            && open.close_idlest(accept_failures.waited_long());
                        let wait = if told {
                            CLOSE_GRACE + EVICT_AGAIN
                        } else {
                            ACCEPT_BACKOFF
                        };
                        tokio::select! {
                            () = closed, if told => continue,
                            () = tokio::time::sleep(wait) => continue,
                            () = &mut shutdown => break,
                        }
                    }
                },
                () = &mut shutdown => break,
            };
            accept_failures.accepted();
            let accepted = tokio::time::Instant::now();
            let slot = loop {
                if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
                    break slot;
                }
                // One told to close has its grace to do it before another
                // is told; with none idle long enough, a look again soon.
                let waited = accepted.elapsed() >= IDLE_BEFORE_CLOSED;
                let wait = if open.close_idlest(waited) {
                    tracing::debug!(
                        "every connection is taken: closing one idle, or waiting on a body, for a new client"
                    );
                    CLOSE_GRACE + EVICT_AGAIN
                } else {
                    EVICT_AGAIN
                };
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => break slot,
                        Err(_) => break 'accept,
                    },
                    () = tokio::time::sleep(wait) => {}
                    () = &mut shutdown => break 'accept,
                }
            };
            let (stream, peer) = stream;
            let stream = framing::Watched::new(stream);
            let verdicts = stream.verdicts();
            let service = service.clone();
            let (registered, served) = open.add(verdicts.clone());
            let served_here = Arc::clone(&served);
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(Peer(peer));
                let mut service = service.clone();
                let refused = verdicts.next_is_refused();
                let in_progress = InProgress::new(&served_here);
                async move {
                    let _in_progress = in_progress;
                    if refused {
                        tracing::debug!(
                            "request with both Content-Length and Transfer-Encoding (or framing \
                             that cannot be followed); answering 400 and closing the connection"
                        );
                        return Ok::<_, S::Error>(ambiguous_framing());
                    }
                    poll_fn(|cx| service.poll_ready(cx)).await?;
                    let response = service.call(request).await?;
                    _in_progress.answered(&response);
                    Ok(response.map(Either::Left))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(self.header_read_timeout)
                // hyper's read buffer holds a request's head while it is
                // parsed (a head that does not fit is answered 431), and
                // body bytes on their way to the service.
                .max_buf_size(self.max_header_bytes)
                .serve_connection(
                    TokioIo::new(stall::WriteDeadline::new(stream, self.write_timeout)),
                    service,
                );
            let mut stopping = stopping.clone();
            connections.spawn(async move {
                let _registered = registered;
                let mut connection = std::pin::pin!(connection);
                let closed = tokio::select! {
                    // The connection first: a request whose head is in
                    // already is dispatched, and finished, before a close.
                    biased;
                    closed = connection.as_mut() => closed,
                    // Closed for a new client: hyper closes an idle
                    // connection at once (dropping the part of a next head
                    // it holds, or one read ahead), and finishes a request
                    // begun and the answer it is writing; a first head it
                    // is still reading it would read until the header
                    // timeout, and a body until the body timeout, so a
                    // connection still sending its first head is dropped
                    // at once, one in no request after a grace (an answer
                    // may still be on its way out), and one whose client
                    // has stalled its body at once.
                    // (The layer runs no handler before the body is all
                    // in.)
                    () = served.close.notified() => {
                        connection.as_mut().graceful_shutdown();
                        // Still sending its first head: no answer to
                        // write, and nothing of its request ran; hyper
                        // would read the head on, so it is closed now,
                        // not after the grace.
                        if !served.answered.load(Ordering::Relaxed)
                            && served.requests.load(Ordering::Relaxed) == 0
                        {
                            tracing::debug!(
                                "closing a connection still sending its first head, for a new client"
                            );
                            Ok(())
                        } else {
                            loop {
                                if served.body_stalled() {
                                    tracing::debug!(
                                        "closing a connection whose client has stalled its body, \
                                         for a new client"
                                    );
                                    break Ok(());
                                }
                                match tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await {
                                    Ok(closed) => break closed,
                                    Err(_) if served.requests.load(Ordering::Relaxed) == 0 => {
                                        break Ok(());
                                    }
                                    Err(_) => {}
                                }
                            }
                        }
                    }
                    // The server stops: a request begun is finished first.
                    () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(error) = closed {
                    tracing::debug!(%error, "connection closed with an error");
                }
                drop(slot);
            });
        }
        drop(listener);
        let _ = stop.send(true);
        let finished = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(self.shutdown_timeout, finished)
            .await
            .is_err()
        {
            tracing::warn!(
                open = connections.len(),
                "connections still open after the shutdown timeout; closing them"
            );
        }
        connections.shutdown().await;
        // Deliveries cut off (here, or by their clients hanging up) settle
        // their claims on tasks of their own, as do completions tried
        // again: a completion lost as the process ends would let a retry
        // run a handler that succeeded again. With none, no wait.
        if !crate::ClinkLayer::settled(SETTLE_GRACE).await {
            tracing::warn!(
                "claims still settling in this process {} s after the server closed its \
                 connections; they free themselves when their leases end",
                SETTLE_GRACE.as_secs()
            );
        }
    }
}

/// The address of the client a request came from: its connection's peer,
/// which [`Server`] puts in every request's extensions (behind a proxy,
/// the proxy's address). In axum, read it with `Extension<Peer>`; the
/// [console](crate::console) counts each client's wrong tokens apart by
/// it.
///
/// ```
/// use clink_webhooks::server::Peer;
///
/// fn client(request: &http::Request<()>) -> Option<std::net::IpAddr> {
///     request.extensions().get::<Peer>().map(|peer| peer.0.ip())
/// }
/// # assert_eq!(client(&http::Request::new(())), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer(pub SocketAddr);

/// The answer to a request whose body could be framed two ways: `400`, and
/// the connection closed.
fn ambiguous_framing<L, D>() -> Response<Either<L, Empty<D>>> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_limit_too_low_for_every_connection_keeps_some_for_other_files() {
        assert_eq!(within_open_files(512, None), 512);
        assert_eq!(within_open_files(512, Some(1024)), 512);
        assert_eq!(within_open_files(512, Some(576)), 512);
        assert_eq!(within_open_files(1024, Some(1024)), 960);
        assert_eq!(within_open_files(512, Some(64)), 32);
        assert_eq!(within_open_files(512, Some(3)), 2);
        assert_eq!(within_open_files(512, Some(1)), 1);
        assert_eq!(within_open_files(512, Some(0)), 1);
        assert_eq!(within_open_files(8, Some(u64::MAX)), 8);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_file_limit_is_read() {
        assert!(open_file_limit().is_some_and(|limit| limit > 0));
        let too_many = std::io::Error::from_raw_os_error(24);
        assert!(out_of_files(&too_many));
        assert!(!out_of_files(&std::io::Error::from(
            std::io::ErrorKind::ConnectionAborted
        )));
    }
}
