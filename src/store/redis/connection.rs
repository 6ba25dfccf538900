//! How a [`RedisStore`] reaches Redis: one server through a
//! [`ConnectionManager`], or (feature `redis-cluster`) a Redis Cluster
//! through the `redis` crate's async cluster connection; either over TLS
//! with the feature `redis-tls`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};
use arc_swap::ArcSwap;

use super::{store_error, RedisStore};
use crate::store::{timed, StoreError, StoreErrorKind, DEFAULT_TIMEOUT};

/// What a [`RedisStore`] holds to reach Redis: each call takes a
/// [`Call`] from it, and tells it how the call went.
#[derive(Clone)]
pub(super) enum Link {
    /// One server, through a manager made anew when the one in use stops
    /// serving (see [`Single`]).
    Single(Arc<Single>),
    /// A Redis Cluster, whose connection follows failovers by itself.
    #[cfg(feature = "redis-cluster")]
    Cluster(::redis::cluster_async::ClusterConnection),
}

/// One server's connection manager. The manager reconnects by itself when
/// its connection breaks, but not when the connection stays up and stops
/// serving: a server that answers `READONLY` (a primary demoted to a
/// replica in a failover, its clients not killed, while the address now
/// leads to the new primary), or a connection that answers nothing (half
/// open: the server's host gone without a word, until the kernel gives up
/// on it, a quarter of an hour later). When the store made the manager
/// from a client ([`RedisStore::connect`]), either sign (for silence, once
/// a `PING` sent behind the call also goes unanswered for [`PROBE`]) has
/// it make a new manager, in the background: at once for a manager a
/// write had landed through, else after a pause that doubles from
/// [`REMAKE_PAUSE`] up to [`REMAKE_PAUSE_MAX`] while new managers fail as
/// the old one did.
pub(super) struct Single {
    current: ArcSwap<Managed>,
    /// How to make the manager anew: `None` for one the caller made.
    remake: Option<Remake>,
}

/// A connection manager and what its calls have shown of it.
pub(super) struct Managed {
    manager: ConnectionManager,
    /// Which of the store's managers it is: the first is 0.
    generation: u64,
    /// When it was made.
    made: Instant,
    /// When a reply last came through it, in nanoseconds since `made`,
    /// plus one (zero: never).
    answered: AtomicU64,
    /// Whether a write ever landed through it (a replica answers reads).
    served: AtomicBool,
}

impl Managed {
    /// `manager`, which `served` already (the first: trouble with it is
    /// new) or not (one made anew: trouble with it is the same as before).
    fn new(manager: ConnectionManager, generation: u64, served: bool) -> Arc<Self> {
        Arc::new(Self {
            manager,
            generation,
            made: Instant::now(),
            answered: AtomicU64::new(0),
            served: AtomicBool::new(served),
        })
    }

    fn since_made(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.made).as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Whether a reply came through it after `at` (to within a
    /// millisecond: see [`replied`](Self::replied)).
    fn answered_after(&self, at: Instant) -> bool {
        self.answered.load(Ordering::Relaxed) > self.since_made(at)
    }

    /// Notes a reply now. The time is written only when the last one
    /// written is a millisecond old, so that calls in parallel do not all
    /// write the one shared word.
    fn replied(&self) {
        const EVERY: u64 = 1_000_000;
        let now = self.since_made(Instant::now());
        if now > self.answered.load(Ordering::Relaxed).saturating_add(EVERY) {
            self.answered.fetch_max(now, Ordering::Relaxed);
        }
    }
}

struct Remake {
    client: Client,
    config: ConnectionManagerConfig,
    /// The runtime the store was made on, which a new manager is made on
    /// when the sign came from outside a runtime.
    runtime: tokio::runtime::Handle,
    state: Mutex<RemakeState>,
}

#[derive(Default)]
struct RemakeState {
    /// Whether a new manager is being made.
    busy: bool,
    /// When the last one started.
    started: Option<Instant>,
    /// The pause before the next, for a manager that never served.
    pause: Duration,
}

/// What has a connection made anew.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sign {
    /// The server answered `READONLY`.
    ReadOnly,
    /// A call got no answer in time, and nothing else came back meanwhile.
    Silent,
}

impl Sign {
    fn why(self) -> &'static str {
        match self {
            Self::ReadOnly => "the server answered READONLY (a primary demoted to a replica)",
            Self::Silent => {
                "nothing came back through the connection in time (it may be half open)"
            }
        }
    }
}

/// How long a connection that seemed silent has to answer a `PING` (sent
/// behind whatever it still holds) before it is made anew.
const PROBE: Duration = Duration::from_secs(2);

/// The least time between two starts of a new manager.
pub(super) const REMAKE_PAUSE: Duration = Duration::from_secs(1);

/// The most time between two starts while new managers fail as the old.
pub(super) const REMAKE_PAUSE_MAX: Duration = Duration::from_secs(60);

/// One call's way to Redis.
///
/// A call dropped before the store noted how it went (its future stopped
/// by a bound shorter than the store's timeout: the layer's, the
/// router's, the end of a lease) is taken for one that got no answer in
/// time, so that a connection that went silent is made anew whoever gave
/// up on it first.
pub(super) struct Call {
    pub(super) connection: Connection,
    /// Whether the call writes.
    writes: bool,
    /// The server it goes through and the generation of its manager, for
    /// a single server the store can make anew.
    remakeable: Option<(Arc<Single>, u64)>,
    /// When it started, or when its last reply came.
    started: Instant,
    /// Whether the store noted how it went.
    noted: bool,
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.noted {
            self.unanswered();
        }
    }
}

impl Call {
    /// Notes that the call went as `timed_out` says: one that got no
    /// answer in time has its connection made anew, unless a reply came
    /// through it meanwhile (a slow server, not a silent connection).
    pub(super) fn noted(&mut self, timed_out: bool) {
        self.noted = true;
        if timed_out {
            self.unanswered();
        }
    }

    /// Notes how a request of the call went: a reply shows the connection
    /// alive (the call's silence is counted from it on), a write that
    /// landed shows the server serves, and a `READONLY` answer has the
    /// connection made anew.
    pub(super) fn replied<T>(&mut self, result: &RedisResult<T>) {
        let read_only = match result {
            Ok(_) => false,
            Err(err) if err.code().is_some() => {
                err.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::ReadOnly)
            }
            // No reply: a lost connection, which the manager makes anew.
            Err(_) => return,
        };
        self.started = Instant::now();
        let Some((single, managed)) = self.current() else {
            return;
        };
        managed.replied();
        if read_only {
            single.make_anew(&managed, Sign::ReadOnly);
        } else if self.writes && result.is_ok() && !managed.served.load(Ordering::Relaxed) {
            managed.served.store(true, Ordering::Relaxed);
        }
    }

    /// The call got no answer: unless a reply came through its connection
    /// since it started or last had one (a slow server, not a silent
    /// connection), the connection is made anew.
    fn unanswered(&self) {
        if let Some((single, managed)) = self.current() {
            if !managed.answered_after(self.started) {
                single.make_anew(&managed, Sign::Silent);
            }
        }
    }

    /// The manager the call went through, while it is still the current
    /// one of a store that can make it anew.
    fn current(&self) -> Option<(&Arc<Single>, arc_swap::Guard<Arc<Managed>>)> {
        let (single, generation) = self.remakeable.as_ref()?;
        let managed = single.current.load();
        (managed.generation == *generation).then_some((single, managed))
    }
}

impl Link {
    /// One server through `manager`, never made anew.
    pub(super) fn single(manager: ConnectionManager) -> Self {
        Self::Single(Arc::new(Single {
            current: ArcSwap::new(Managed::new(manager, 0, true)),
            remake: None,
        }))
    }

    /// One server through `manager`, made anew from `client` and `config`
    /// when it stops serving.
    fn remakeable(
        manager: ConnectionManager, client: Client, config: ConnectionManagerConfig,
    ) -> Self {
        let remake = tokio::runtime::Handle::try_current()
            .ok()
            .map(|runtime| Remake {
                client,
                config,
                runtime,
                state: Mutex::new(RemakeState {
                    pause: REMAKE_PAUSE,
                    ..RemakeState::default()
                }),
            });
        Self::Single(Arc::new(Single {
            current: ArcSwap::new(Managed::new(manager, 0, true)),
            remake,
        }))
    }

    /// The way to Redis for one call, starting now; `writes` says whether
    /// it writes.
    pub(super) fn call(&self, writes: bool) -> Call {
        let started = Instant::now();
        match self {
            Self::Single(single) => {
                let managed = single.current.load();
                Call {
                    connection: Connection::Single(managed.manager.clone()),
                    writes,
                    remakeable: single
                        .remake
                        .as_ref()
                        .map(|_| (Arc::clone(single), managed.generation)),
                    started,
                    noted: false,
                }
            }
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(connection) => Call {
                connection: Connection::Cluster(connection.clone()),
                writes,
                remakeable: None,
                started,
                noted: false,
            },
        }
    }
}

impl Single {
    /// Makes the manager anew in the background, unless `from` was already
    /// replaced, or a new one is being made or was started within the
    /// pause.
    fn make_anew(self: &Arc<Self>, from: &Managed, sign: Sign) {
        let Some(remake) = &self.remake else {
            return;
        };
        // A manager that served before fails anew: a new episode, told at
        // `warn`. One that never served fails as the one before it did:
        // told at `debug`, after a longer pause each time.
        let fresh_trouble = from.served.load(Ordering::Relaxed);
        let generation = {
            let mut state = remake.state.lock().unwrap_or_else(PoisonError::into_inner);
            let pause = if fresh_trouble {
                REMAKE_PAUSE
            } else {
                state.pause
            };
            if state.busy
                || state.started.is_some_and(|at| at.elapsed() < pause)
                || self.current.load().generation != from.generation
            {
                return;
            }
            state.busy = true;
            state.started = Some(Instant::now());
            state.pause = if fresh_trouble {
                REMAKE_PAUSE.saturating_mul(2)
            } else {
                state.pause.saturating_mul(2).min(REMAKE_PAUSE_MAX)
            };
            from.generation.wrapping_add(1)
        };
        /// Clears `busy` however the task ends, dropped unpolled included.
        struct Done(Arc<Single>);
        impl Drop for Done {
            fn drop(&mut self) {
                if let Some(remake) = &self.0.remake {
                    remake
                        .state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .busy = false;
                }
            }
        }
        let done = Done(Arc::clone(self));
        let (client, config) = (remake.client.clone(), remake.config.clone());
        let old = from.manager.clone();
        let why = sign.why();
        // On the runtime of the call that saw the sign (it runs in a task),
        // else on the one the store was made on.
        let runtime =
            tokio::runtime::Handle::try_current().unwrap_or_else(|_| remake.runtime.clone());
        runtime.spawn(async move {
            // A connection that seemed silent is asked once more, briefly:
            // one that answers (a server that stalled a moment, a fork or a
            // slow command, or a starved runtime) is kept.
            if sign == Sign::Silent {
                let mut old = Connection::Single(old);
                let ping = ::redis::cmd("PING");
                let answered =
                    tokio::time::timeout(PROBE, ping.query_async::<String>(&mut old)).await;
                if matches!(answered, Ok(Ok(_))) {
                    tracing::debug!(
                        "Redis connection answered a ping after a call's timeout; kept"
                    );
                    return;
                }
            }
            let made = timed(DEFAULT_TIMEOUT * 3, async {
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(|err| store_error("cannot connect to Redis", &err))
            })
            .await;
            match made {
                Ok(manager) => {
                    done.0
                        .current
                        .store(Managed::new(manager, generation, false));
                    if fresh_trouble {
                        tracing::warn!(why, "Redis connection made anew");
                    } else {
                        tracing::debug!(why, "Redis connection made anew, again");
                    }
                }
                // Calls go on through the old one; the next sign tries again.
                Err(err) => tracing::debug!(why, %err, "Redis connection not made anew"),
            }
        });
    }
}

/// The connection every call of a [`RedisStore`] goes through.
#[derive(Clone)]
pub(super) enum Connection {
    /// One server (or a primary behind one address), reconnected in the
    /// background by the manager.
    Single(ConnectionManager),
    /// A Redis Cluster: each command goes to the node serving its key's
    /// slot, following `MOVED` and `ASK` redirections.
    #[cfg(feature = "redis-cluster")]
    Cluster(::redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

impl RedisStore {
    /// Connects to the Redis server at `url`: `redis://[[user]:password@]host:port[/db]`,
    /// or, with the feature `redis-tls`, `rediss://…` for TLS, verified
    /// against the system's root certificates (use `connect_with_tls` to
    /// trust a private CA).
    ///
    /// Connection attempts time out after [`DEFAULT_TIMEOUT`]. The returned
    /// store reconnects by itself when the connection drops later.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::InvalidInput`] when `url` does not parse, or is a
    /// `rediss://` URL and the feature `redis-tls` is off (the message says
    /// so); [`StoreErrorKind::Unavailable`] or [`StoreErrorKind::Timeout`]
    /// when the server cannot be reached or its certificate is not trusted.
    /// The message never repeats the URL, which may hold a password.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(|_| url_error(url, cfg!(feature = "redis-tls")))?;
        Self::connect_client(client).await
    }

    /// Connects to the Redis server at the `rediss://` URL `url` over TLS,
    /// trusting only the CA certificates in `root_cert_pem` (PEM, one or
    /// more `CERTIFICATE` blocks), for a server whose certificate a private
    /// CA signed. The server's certificate must name the URL's host (as a
    /// DNS name or an IP address).
    ///
    /// Otherwise as [`connect`](Self::connect): it times out after
    /// [`DEFAULT_TIMEOUT`] and reconnects by itself later.
    ///
    /// TLS is rustls with *ring*'s cryptography: when the process has not
    /// installed a default rustls `CryptoProvider`, the first TLS connection
    /// installs *ring*'s (as rustls itself does when it is the only one
    /// built in); install your own first to choose another.
    ///
    /// ```no_run
    /// use clink_webhooks::store::RedisStore;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis/ca.pem")?;
    /// let store = RedisStore::connect_with_tls("rediss://:secret@redis.internal:6380/", &ca).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::InvalidInput`] when `url` does not parse or is not
    /// `rediss://`, or `root_cert_pem` holds no certificate;
    /// [`StoreErrorKind::Unavailable`] or [`StoreErrorKind::Timeout`] when
    /// the server cannot be reached or its certificate is not trusted.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub async fn connect_with_tls(url: &str, root_cert_pem: &[u8]) -> Result<Self, StoreError> {
        let certificates = tls::certificates(root_cert_pem)?;
        if !is_tls_url(url) {
            return Err(tls::plain_url_error());
        }
        let client = Client::build_with_tls(url, certificates)
            .map_err(|_| url_error(url, cfg!(feature = "redis-tls")))?;
        Self::connect_client(client).await
    }

    /// Connects through `client` with a [`ConnectionManager`], then checks
    /// the server's eviction policy.
    async fn connect_client(client: Client) -> Result<Self, StoreError> {
        #[cfg(feature = "redis-tls")]
        tls::ensure_crypto_provider();
        // No response timeout of the client's own: the store bounds each
        // call with its timeout (`with_timeout`), which the client's
        // default (500 ms) would otherwise cut short.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEFAULT_TIMEOUT))
            .set_response_timeout(None)
            .set_number_of_retries(1);
        let connect = async {
            ConnectionManager::new_with_config(client.clone(), config.clone())
                .await
                .map_err(|err| store_error("cannot connect to Redis", &err))
        };
        let manager = timed(DEFAULT_TIMEOUT * 3, connect).await?;
        let store = Self::with_link(Link::remakeable(manager, client, config));
        store.warn_unless_noeviction().await;
        Ok(store)
    }
}

#[cfg(feature = "redis-cluster")]
impl RedisStore {
    /// A store over an existing Redis Cluster connection, with the default
    /// timeout, for a cluster client configured by hand (read routing,
    /// credentials providers, …).
    #[must_use]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub fn new_cluster(connection: ::redis::cluster_async::ClusterConnection) -> Self {
        Self::with_link(Link::Cluster(connection))
    }

    /// Connects to the Redis Cluster that the nodes at `urls` belong to
    /// (`redis://[[user]:password@]host:port`, or `rediss://` with the
    /// feature `redis-tls`, verified against the system's root
    /// certificates). One reachable node is enough: the others are found
    /// through it, and the store follows the cluster as slots move and
    /// nodes fail over, except a node that goes silent with its
    /// connection open (its host gone without a word, its process
    /// frozen): its slots' calls time out (`503`) until the kernel gives
    /// up on the connection, about a quarter of an hour later.
    ///
    /// Every call touches one key, so one hash slot (see
    /// [Redis Cluster](RedisStore#redis-cluster)).
    ///
    /// ```no_run
    /// use clink_webhooks::store::RedisStore;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisStore::connect_cluster(&[
    ///     "redis://10.0.0.1:6379/",
    ///     "redis://10.0.0.2:6379/",
    ///     "redis://10.0.0.3:6379/",
    /// ])
    /// .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::InvalidInput`] when `urls` is empty, one of them
    /// does not parse, or they give different credentials;
    /// [`StoreErrorKind::Unavailable`] or [`StoreErrorKind::Timeout`] when
    /// no node can be reached. Messages never repeat a URL.
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub async fn connect_cluster<U: AsRef<str>>(urls: &[U]) -> Result<Self, StoreError> {
        let builder = cluster::builder(urls)?;
        Self::connect_cluster_with(builder, urls).await
    }

    /// Connects to a Redis Cluster over TLS, as
    /// [`connect_cluster`](Self::connect_cluster) with `rediss://` URLs,
    /// trusting only the CA certificates in `root_cert_pem` (as
    /// [`connect_with_tls`](Self::connect_with_tls) does). The nodes must
    /// announce their TLS ports (Redis's `tls-cluster yes`, or
    /// `cluster-announce-tls-port`).
    ///
    /// # Errors
    ///
    /// As [`connect_cluster`](Self::connect_cluster), and
    /// [`StoreErrorKind::InvalidInput`] when a URL is not `rediss://` or
    /// `root_cert_pem` holds no certificate.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(
        docsrs,
        doc(cfg(all(feature = "redis-cluster", feature = "redis-tls")))
    )]
    pub async fn connect_cluster_with_tls<U: AsRef<str>>(
        urls: &[U], root_cert_pem: &[u8],
    ) -> Result<Self, StoreError> {
        let certificates = tls::certificates(root_cert_pem)?;
        if !urls.iter().all(|url| is_tls_url(url.as_ref())) {
            return Err(tls::plain_url_error());
        }
        let builder = cluster::builder(urls)?.certs(certificates);
        Self::connect_cluster_with(builder, urls).await
    }

    async fn connect_cluster_with<U: AsRef<str>>(
        builder: ::redis::cluster::ClusterClientBuilder, urls: &[U],
    ) -> Result<Self, StoreError> {
        #[cfg(feature = "redis-tls")]
        tls::ensure_crypto_provider();
        let client = builder
            .connection_timeout(DEFAULT_TIMEOUT)
            .build()
            .map_err(|_| cluster::urls_error(urls))?;
        let connect = async {
            client
                .get_async_connection()
                .await
                .map_err(|err| store_error("cannot connect to the Redis Cluster", &err))
        };
        let store = Self::new_cluster(timed(DEFAULT_TIMEOUT * 3, connect).await?);
        store.warn_unless_noeviction().await;
        Ok(store)
    }
}

/// Whether `url` asks for TLS.
fn is_tls_url(url: &str) -> bool {
    url.trim_start()
        .get(.."rediss://".len())
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"))
}

/// Why `url` was refused, without repeating it (it may hold a password):
/// a `rediss://` URL while TLS is not `tls_built_in` names the feature that
/// builds it in.
pub(super) fn url_error(url: &str, tls_built_in: bool) -> StoreError {
    let why = if is_tls_url(url) && !tls_built_in {
        "TLS (rediss://) is not built in: enable the `redis-tls` feature of clink-webhooks, \
         or reach Redis over a TLS tunnel or a private network"
    } else {
        "the Redis URL does not parse (it is not shown: it may hold a password)"
    };
    StoreError::new(StoreErrorKind::InvalidInput, why)
}

#[cfg(feature = "redis-cluster")]
mod cluster {
    use ::redis::cluster::ClusterClientBuilder;

    use super::url_error;
    use crate::store::{StoreError, StoreErrorKind};

    /// A cluster client builder over `urls`, refusing an empty list.
    pub(super) fn builder<U: AsRef<str>>(urls: &[U]) -> Result<ClusterClientBuilder, StoreError> {
        if urls.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                "no Redis Cluster node URL given",
            ));
        }
        Ok(ClusterClientBuilder::new(urls.iter().map(AsRef::as_ref)))
    }

    /// Why the cluster client refused `urls`, without repeating any of them.
    pub(super) fn urls_error<U: AsRef<str>>(urls: &[U]) -> StoreError {
        for url in urls {
            if ::redis::Client::open(url.as_ref()).is_err() {
                return url_error(url.as_ref(), cfg!(feature = "redis-tls"));
            }
        }
        StoreError::new(
            StoreErrorKind::InvalidInput,
            "the Redis Cluster node URLs give different credentials or TLS settings \
             (they are not shown: they may hold a password)",
        )
    }
}

#[cfg(feature = "redis-tls")]
pub(super) mod tls {
    use std::sync::Arc;

    use ::redis::{RedisError, TlsCertificates};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    use crate::store::{StoreError, StoreErrorKind};

    /// The certificates that make a client trust exactly the CAs in `pem`.
    pub(super) fn certificates(pem: &[u8]) -> Result<TlsCertificates, StoreError> {
        let invalid = |why: &str| StoreError::new(StoreErrorKind::InvalidInput, why);
        let mut count = 0_usize;
        for certificate in CertificateDer::pem_slice_iter(pem) {
            certificate.map_err(|_| invalid("the root certificate PEM does not parse"))?;
            count += 1;
        }
        if count == 0 {
            return Err(invalid(
                "the root certificate PEM holds no CERTIFICATE block",
            ));
        }
        Ok(TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        })
    }

    /// A root certificate was given with a URL that does not ask for TLS.
    pub(super) fn plain_url_error() -> StoreError {
        StoreError::new(
            StoreErrorKind::InvalidInput,
            "a root certificate is given, so the Redis URL must be rediss:// (TLS)",
        )
    }

    /// What went wrong in the TLS handshake behind `err`, if that is what
    /// failed: fixed words per kind of failure, never names from the
    /// certificate or the URL.
    pub(in crate::store::redis) fn failure(err: &RedisError) -> Option<String> {
        let inner = std::error::Error::source(err)?
            .downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()?;
        let inner: &(dyn std::error::Error + 'static) = &**inner;
        let tls = match inner.downcast_ref::<rustls::Error>() {
            Some(tls) => tls,
            None => inner
                .downcast_ref::<std::io::Error>()?
                .get_ref()?
                .downcast_ref::<rustls::Error>()?,
        };
        Some(describe(tls))
    }

    fn describe(err: &rustls::Error) -> String {
        use rustls::CertificateError as Cert;

        let why = match err {
            rustls::Error::InvalidCertificate(cert) => match cert {
                Cert::UnknownIssuer => "the server's certificate is not signed by a trusted CA",
                Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                    "the server's certificate does not name the host of the URL"
                }
                Cert::Expired
                | Cert::ExpiredContext { .. }
                | Cert::NotValidYet
                | Cert::NotValidYetContext { .. } => {
                    "the server's certificate is expired or not valid yet"
                }
                _ => "the server's certificate was refused",
            },
            rustls::Error::NoCertificatesPresented => "the server presented no certificate",
            rustls::Error::AlertReceived(alert) => {
                return format!("TLS handshake failed: the server sent the alert {alert:?}");
            }
            _ => "TLS handshake failed",
        };
        format!("TLS: {why}")
    }

    /// Installs *ring* as the process's rustls provider unless one is
    /// installed, so that building a TLS configuration never panics when
    /// several providers are compiled in.
    pub(super) fn ensure_crypto_provider() {
        if CryptoProvider::get_default().is_none() {
            // Another thread may install one meanwhile; either is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rediss_without_tls_names_the_feature() {
        let url = "rediss://:hunter2@redis.example:6380/";
        let err = url_error(url, false);
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput);
        let text = err.to_string();
        assert!(text.contains("`redis-tls` feature"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        // Schemes are case-insensitive, and leading blanks are forgiven.
        assert!(url_error(" REDISS://h:1/", false)
            .to_string()
            .contains("redis-tls"));

        // With TLS built in, or for another URL, it is a parse error.
        for (url, tls) in [(url, true), ("redis://:hunter2@[::1", false)] {
            let text = url_error(url, tls).to_string();
            assert!(text.contains("does not parse"), "{text}");
            assert!(!text.contains("redis-tls"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    /// Only in builds without the feature (`cargo test --lib --features redis`).
    #[cfg(not(feature = "redis-tls"))]
    #[tokio::test]
    async fn rediss_is_refused_without_the_feature() {
        let err = RedisStore::connect("rediss://:hunter2@127.0.0.1:6380/")
            .await
            .expect_err("TLS is not built in");
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("`redis-tls` feature"), "{err}");
    }

    #[test]
    fn tls_urls_are_recognised() {
        assert!(is_tls_url("rediss://127.0.0.1:6380/"));
        assert!(is_tls_url("Rediss://h/"));
        assert!(!is_tls_url("redis://127.0.0.1:6379/"));
        assert!(!is_tls_url("rediss:"));
        assert!(!is_tls_url("ü"));
    }

    #[cfg(feature = "redis-tls")]
    #[test]
    fn root_certificates_must_be_pem() {
        for bad in [
            &b""[..],
            b"not a certificate",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let err = tls::certificates(bad).expect_err("no certificate");
            assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
        }
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        let err = tls::certificates(broken).expect_err("bad base64");
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput, "{err}");
    }
}
