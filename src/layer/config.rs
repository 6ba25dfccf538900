//! [`ClinkLayer`]: the layer's configuration, validated as it is built.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::budget::{BodyBudget, DEFAULT_BODY_BUDGET, DEFAULT_MAX_BODIES_READING};
use super::refusals::{RefusalLog, DEFAULT_REFUSAL_LOG_INTERVAL};
use super::{ClinkService, InboxIntake, Metrics, RoutedService};
use crate::accounts::{AccountFrom, KeySource};
use crate::guard::handler_deadline_settled_within;
use crate::outage::OutageLog;
use crate::signature::{LiveVerifier, Verifier};
use crate::store::{
    IdempotencyStore, Inbox, MemoryStore, DEFAULT_LEASE, DEFAULT_RETENTION, MAX_TTL,
};
use crate::{ConfigError, EventRouter};

/// The default body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The default time allowed for the whole body to arrive: 30 s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The default time the layer waits for any one store call: 5 s. The Redis
/// and PostgreSQL stores time out sooner on their own (1 s by default); this
/// bounds any store, including your own.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// The default prefix of idempotency keys.
pub const DEFAULT_KEY_PREFIX: &str = "clink";

/// The longest key prefix, so that a prefix leaves room for event ids.
const MAX_KEY_PREFIX_LEN: usize = 128;

/// Where the layer gets the keys it verifies with.
#[derive(Clone)]
pub(super) enum Keys {
    /// One endpoint, one set of keys.
    One(Arc<Verifier>),
    /// One endpoint, keys that change while it serves.
    Live(LiveVerifier),
    /// Many accounts: the account from the request, its keys from the source.
    PerAccount {
        from: AccountFrom,
        source: Arc<dyn KeySource>,
    },
}

/// What [`ClinkLayer`]'s builder methods set, besides the keys and stores.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub(super) body_limit: usize,
    pub(super) body_timeout: Duration,
    pub(super) lease: Duration,
    pub(super) retention: Duration,
    pub(super) handler_timeout: Option<Duration>,
    pub(super) store_timeout: Duration,
    pub(super) key_prefix: Arc<str>,
}

#[derive(Clone)]
pub(super) struct Config {
    pub(super) keys: Keys,
    pub(super) store: Arc<dyn IdempotencyStore>,
    /// `store` itself when it is a [`MemoryStore`], whose calls answer at
    /// once: the layer then calls it directly, without boxing a future per call.
    pub(super) memory: Option<Arc<MemoryStore>>,
    pub(super) settings: Settings,
    pub(super) metrics: Arc<Metrics>,
    pub(super) refusals: Arc<RefusalLog>,
    pub(super) outages: Outages,
    pub(super) budget: Arc<BodyBudget>,
    pub(super) dead_letters: Option<Arc<dyn Inbox>>,
}

/// The outage logs of what the layer calls, one per dependency: see
/// [`OutageLog`].
#[derive(Clone, Debug)]
pub(super) struct Outages {
    /// The idempotency store's claims and settles.
    pub(super) store: Arc<OutageLog>,
    /// An intake's inbox.
    pub(super) inbox: Arc<OutageLog>,
    /// The dead-letter inbox.
    pub(super) dead_letters: Arc<OutageLog>,
    /// The key source.
    pub(super) keys: Arc<OutageLog>,
}

impl Outages {
    fn new(interval: Duration) -> Self {
        const RETRIED: &str = "deliveries are answered 503 and Clink retries them";
        Self {
            store: OutageLog::new("idempotency store", RETRIED, interval),
            inbox: OutageLog::new("inbox", RETRIED, interval),
            dead_letters: OutageLog::new(
                "dead-letter inbox",
                "undecodable events are answered 500 (bodies that are no envelope 400) and Clink retries them",
                interval,
            ),
            keys: OutageLog::new("key source", RETRIED, interval),
        }
    }
}

impl Config {
    /// The handler's deadline: see [`handler_deadline_settled_within`]. A
    /// networked store's completion may take the store timeout, and lands
    /// inside the lease; a memory store settles at once.
    pub(super) fn handler_deadline(&self) -> Duration {
        let settle = if self.memory.is_some() {
            Duration::ZERO
        } else {
            self.settings.store_timeout
        };
        handler_deadline_settled_within(self.settings.lease, self.settings.handler_timeout, settle)
    }

    /// Logs, as a service is made, a handler timeout longer than the
    /// lease leaves a handler, and a store timeout too long for the lease
    /// to leave a completion its time (see [`ClinkLayer::store_timeout`]).
    fn warn_of_what_the_lease_cuts(&self) {
        let Settings {
            lease,
            store_timeout,
            ..
        } = self.settings;
        if let Some(asked) = self.settings.handler_timeout {
            let given = self.handler_deadline();
            if asked > given {
                tracing::warn!(
                    handler_timeout_ms = u64::try_from(asked.as_millis()).unwrap_or(u64::MAX),
                    given_ms = u64::try_from(given.as_millis()).unwrap_or(u64::MAX),
                    "clink layer: the handler timeout is cut to the lease less its spare part \
                     (see ClinkLayer::handler_timeout); set a longer lease for more"
                );
            }
        }
        if self.memory.is_none() && store_timeout > lease / 2 {
            tracing::warn!(
                lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
                store_timeout_ms = u64::try_from(store_timeout.as_millis()).unwrap_or(u64::MAX),
                "clink layer: the store timeout is longer than half the lease, so a completion \
                 sent as a handler's time ends may land after its lease, when another delivery \
                 may have run the handler again; set a lease of at least twice the store timeout"
            );
        }
    }
}

/// The tower [`Layer`] that puts a [`ClinkService`] in front of a service.
///
/// Cheap to clone; clones share their configuration, store and [`Metrics`].
///
/// Setters whose value could be wrong (a zero limit, a lease no store can
/// hold) return `Result<Self, ConfigError>`, so a mistake is found when the
/// layer is built and never mid-delivery; the others return `Self`.
///
/// ```
/// use std::time::Duration;
/// use clink_webhooks::{ClinkLayer, Verifier};
///
/// let layer = ClinkLayer::new(Verifier::new("whsec_test")?)
///     .body_limit(256 * 1024)?
///     .lease(Duration::from_secs(60))?;
/// assert!(ClinkLayer::new(Verifier::new("whsec_test")?).lease(Duration::ZERO).is_err());
/// # Ok::<(), clink_webhooks::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct ClinkLayer {
    pub(super) config: Arc<Config>,
}

impl fmt::Debug for ClinkLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let keys = match &c.keys {
            Keys::One(verifier) => format!("{verifier:?}"),
            Keys::Live(live) => format!("{live:?}"),
            Keys::PerAccount { from, .. } => format!("per account, from {from:?}"),
        };
        f.debug_struct("ClinkLayer")
            .field("keys", &keys)
            .field("settings", &c.settings)
            .finish_non_exhaustive()
    }
}

/// `store` behind an `Arc`, and the same store again when it is a
/// [`MemoryStore`] (or an `Arc` of one), for [`Config::memory`].
fn shared<S: IdempotencyStore>(store: S) -> (Arc<dyn IdempotencyStore>, Option<Arc<MemoryStore>>) {
    let store: Box<dyn Any> = Box::new(store);
    let store = match store.downcast::<MemoryStore>() {
        Ok(memory) => {
            let memory = Arc::new(*memory);
            return (
                Arc::clone(&memory) as Arc<dyn IdempotencyStore>,
                Some(memory),
            );
        }
        Err(other) => other,
    };
    let store = match store.downcast::<Arc<MemoryStore>>() {
        Ok(memory) => {
            return (
                Arc::clone(&*memory) as Arc<dyn IdempotencyStore>,
                Some(*memory),
            )
        }
        Err(other) => other,
    };
    match store.downcast::<S>() {
        Ok(store) => (Arc::new(*store), None),
        Err(_) => unreachable!("the box holds an S"),
    }
}

/// Checks a duration setting: at least 1 ms and at most [`MAX_TTL`].
fn check_duration(what: &str, value: Duration, default: &str) -> Result<Duration, ConfigError> {
    if value < Duration::from_millis(1) || value > MAX_TTL {
        return Err(ConfigError::new(format!(
            "ClinkLayer::{what} must be at least 1 ms and at most 10 years (the default is {default})"
        )));
    }
    Ok(value)
}

impl ClinkLayer {
    /// A layer that verifies with `verifier` and deduplicates in a fresh
    /// [`MemoryStore`] (one process). Use [`store`](Self::store) when the app
    /// runs on several machines.
    #[must_use]
    pub fn new(verifier: Verifier) -> Self {
        Self::with_keys(Keys::One(Arc::new(verifier)))
    }

    /// A layer that verifies with the keys `live` holds at each delivery:
    /// keep a clone of `live` to [rotate](LiveVerifier::rotate) the
    /// endpoint's signing secret while the layer serves, with no restart.
    #[must_use]
    pub fn live(live: LiveVerifier) -> Self {
        Self::with_keys(Keys::Live(live))
    }

    /// A layer for many merchant accounts on one endpoint: it reads the
    /// account from each request as `from` says and verifies with the keys
    /// `source` gives for it. See [`accounts`](crate::accounts).
    #[must_use]
    pub fn with_key_source(from: AccountFrom, source: impl KeySource) -> Self {
        Self::with_keys(Keys::PerAccount {
            from,
            source: Arc::new(source),
        })
    }

    fn with_keys(keys: Keys) -> Self {
        let memory = Arc::new(MemoryStore::new());
        Self {
            config: Arc::new(Config {
                keys,
                store: Arc::clone(&memory) as Arc<dyn IdempotencyStore>,
                memory: Some(memory),
                settings: Settings {
                    body_limit: DEFAULT_BODY_LIMIT,
                    body_timeout: DEFAULT_BODY_TIMEOUT,
                    lease: DEFAULT_LEASE,
                    retention: DEFAULT_RETENTION,
                    handler_timeout: None,
                    store_timeout: DEFAULT_STORE_TIMEOUT,
                    key_prefix: Arc::from(DEFAULT_KEY_PREFIX),
                },
                metrics: Arc::default(),
                refusals: RefusalLog::new(DEFAULT_REFUSAL_LOG_INTERVAL),
                outages: Outages::new(DEFAULT_REFUSAL_LOG_INTERVAL),
                budget: Arc::new(BodyBudget::new(
                    DEFAULT_BODY_BUDGET,
                    DEFAULT_MAX_BODIES_READING,
                )),
                dead_letters: None,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Deduplicates in `store` instead of the default [`MemoryStore`]. An
    /// `Arc` of a store is a store, so one store can serve the layer and the
    /// router's [`ordering`](crate::EventRouter::ordering).
    #[must_use]
    pub fn store(mut self, store: impl IdempotencyStore) -> Self {
        let (store, memory) = shared(store);
        let config = self.config_mut();
        config.store = store;
        config.memory = memory;
        self
    }

    /// Keeps verified events whose data does not decode into their
    /// handler's type ([`Outcome::Undecodable`](crate::Outcome::Undecodable))
    /// in `inbox`, as `dead` with the decode error, and acknowledges them
    /// ([`Outcome::DeadLettered`](crate::Outcome::DeadLettered)): decoding is
    /// deterministic, so Clink's retries would fail the same way for a day
    /// and then stop, with nothing kept. Replay them from the inbox after an
    /// upgrade that decodes them (`clink-webhook inbox replay`, or
    /// [`Inbox::replay`](crate::store::Inbox::replay) with
    /// [`Workers`](crate::inbox::Workers) running). If the inbox cannot take
    /// the event, the delivery is answered as without one. Each is
    /// kept with the delivery's signature headers as received
    /// ([`NewEvent::signature_headers`](crate::store::NewEvent::signature_headers)),
    /// as the [intake](Self::intake) keeps events: forwarded later, it
    /// verifies with its recipient's key.
    ///
    /// A verified body that is no event envelope (not a JSON object, no
    /// `id` or `type`, a key of the envelope repeated:
    /// [`Outcome::InvalidEnvelope`](crate::Outcome::InvalidEnvelope),
    /// `400` without a dead-letter inbox) is kept there as dead too, and
    /// acknowledged: it has no id, so it is kept under `not-an-envelope:`
    /// and the SHA-256 of its body in hex, and a retry of it is kept once.
    /// An [`InboxIntake`] made from this layer keeps such bodies in this
    /// inbox, not in its own. So is a verified event whose id cannot be
    /// kept (a character that does not print as itself, or too long for
    /// the idempotency store or the intake's inbox:
    /// [`Outcome::InvalidEventId`](crate::Outcome::InvalidEventId), `400`
    /// without a dead-letter inbox), under `invalid-event-id:` and the
    /// SHA-256 of its body. Replayed, one whose id does not print as
    /// itself is dead again at once (the workers give no handler such an
    /// id); one whose id was too long for the store runs as any event.
    ///
    /// An event an [`EventRouter`](crate::EventRouter) failed with an error
    /// no retry can mend (a handler's or hook's
    /// [`Permanent`](crate::router::Permanent) error: `500` without a
    /// dead-letter inbox) is kept there as dead too, with that error, and
    /// acknowledged
    /// ([`Outcome::FailedKeptDead`](crate::Outcome::FailedKeptDead)):
    /// replay it once what it needs is mended. (An axum handler's error
    /// behind the layer is a `500` whatever it holds.) A keep the inbox
    /// does not confirm in time is answered `500` as without one; had it
    /// landed all the same, and Clink's retry then succeeds, the event is
    /// both handled and dead there: look before replaying it.
    #[must_use]
    pub fn dead_letters(mut self, inbox: impl Inbox) -> Self {
        self.config_mut().dead_letters = Some(Arc::new(inbox));
        self
    }

    /// A service that runs this layer's steps and hands each verified event
    /// to `router` directly: what `self.layer(router)` does, answering the
    /// same, without the HTTP request built for the router and the response
    /// read back from it. See [`RoutedService`].
    #[must_use]
    pub fn route<T>(&self, router: EventRouter<T>) -> RoutedService<T> {
        self.config.warn_of_what_the_lease_cuts();
        RoutedService::new(router, Arc::clone(&self.config))
    }

    /// A service that verifies deliveries as this layer does and keeps
    /// them in `inbox` instead of handing them on: see [`InboxIntake`].
    /// It shares this layer's keys, limits, body budget and [`Metrics`].
    #[must_use]
    pub fn intake(&self, inbox: impl Inbox) -> InboxIntake {
        InboxIntake::new(Arc::clone(&self.config), Arc::new(inbox))
    }

    /// The largest body accepted, in bytes (default 1 MiB).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `bytes` is zero (every delivery would be
    /// refused) or larger than the [body budget](Self::body_budget).
    pub fn body_limit(mut self, bytes: usize) -> Result<Self, ConfigError> {
        if bytes == 0 || bytes > self.config.budget.max_bytes() {
            return Err(ConfigError::new(
                "ClinkLayer::body_limit must be at least one byte and at most the body budget \
                 (64 MiB unless set: set body_budget first to allow more)",
            ));
        }
        self.config_mut().settings.body_limit = bytes;
        Ok(self)
    }

    /// Bounds the bytes held for bodies not yet verified, across every
    /// delivery this layer and its clones serve (default
    /// [`DEFAULT_BODY_BUDGET`], 64 MiB), and how many bodies are read at
    /// once (default [`DEFAULT_MAX_BODIES_READING`], 1,024). Past either,
    /// a delivery is answered `503` with `Retry-After` before more of it is
    /// read; a verified body no longer counts. Memory for unverified bodies
    /// then stays under `bytes` whatever a sender without the key does, but
    /// for small margins: a buffer a body grows out of is not held while it
    /// is copied (one at a time per thread, within a single poll), and once
    /// freed stays with the allocator for its next allocations (up to 64
    /// KiB, on the heap); and a body within a page of a limit that is not a
    /// whole number of pages holds up to a page less than it has.
    ///
    /// A body holds what its sender has sent, not the length it declares:
    /// never more than 16 KiB or four times what came (in a mapping, the
    /// pages written). A body known to have come whole in one chunk is
    /// kept as it came; any other is copied as it comes, so that no chunk
    /// it waits beside holds the larger buffer a server read it into. One
    /// that declares 64 KiB or less is gathered on the
    /// heap, its buffer held whole: at first 16 KiB (twice what came, if
    /// more), then its declared length. A larger one, or one of unknown
    /// length past 64 KiB, is gathered in memory mappings of its own, whose
    /// pages are resident only once written and go back to the system when
    /// the body grows out of them or is dropped: it holds the pages written.
    /// Once verified, such a body is copied to the heap.
    ///
    /// A sender without the key could otherwise keep the budget full with
    /// bodies it never finishes, and every real delivery refused until the
    /// body timeout. So a body that does not fit (or finds every place
    /// taken) first makes room: the body read longest, if it has waited
    /// for its bytes a second or more (since its first bytes came; or,
    /// while more than half the places are taken, since it began waiting
    /// for its first), is ended (answered `503`,
    /// [`Outcome::Overloaded`](crate::Outcome::Overloaded), which Clink
    /// retries) and its bytes and its place given back (for bytes, only a
    /// body that holds some is ended). A real delivery's body arrives whole
    /// in milliseconds, and one that comes whole with its declared length
    /// is never ended so. Bodies that never send a byte, begun while half
    /// the places or fewer were taken, keep their places until the body
    /// timeout: at most half of them (the crate's
    /// [`Server`](crate::server::Server) closes such connections for new
    /// clients, and takes fewer connections than there are places).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `bytes` is below the [body
    /// limit](Self::body_limit) (a body the limit allows could never be
    /// read) or `bodies` is zero.
    pub fn body_budget(mut self, bytes: usize, bodies: usize) -> Result<Self, ConfigError> {
        if bytes < self.config.settings.body_limit || bodies == 0 {
            return Err(ConfigError::new(
                "ClinkLayer::body_budget must hold at least one body at the body limit, and one body at a time",
            ));
        }
        self.config_mut().budget = Arc::new(BodyBudget::new(bytes, bodies));
        Ok(self)
    }

    /// How long the whole body may take to arrive (default 30 s); slower
    /// bodies get `408`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `timeout` is between 1 ms and 10 years.
    pub fn body_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.config_mut().settings.body_timeout = check_duration("body_timeout", timeout, "30 s")?;
        Ok(self)
    }

    /// How long a claim holds before another delivery may take the event
    /// over (default 30 s). Handlers must finish within it, less a spare
    /// part for the completion (27 s of the default with a memory store,
    /// 25 s with another store): see [`handler_timeout`](Self::handler_timeout).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `lease` is under one millisecond (every claim
    /// would expire at once) or over [`MAX_TTL`] (no store could hold it).
    pub fn lease(mut self, lease: Duration) -> Result<Self, ConfigError> {
        self.config_mut().settings.lease = check_duration("lease", lease, "30 s")?;
        Ok(self)
    }

    /// How long a handled event id is remembered (default 72 h, beyond
    /// Clink's ~24 h of retries).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `retention` is under one millisecond (nothing
    /// would be remembered) or over [`MAX_TTL`] (no store could hold it).
    pub fn retention(mut self, retention: Duration) -> Result<Self, ConfigError> {
        self.config_mut().settings.retention = check_duration("retention", retention, "72 h")?;
        Ok(self)
    }

    /// Stops a handler after `timeout` (answered `500` and released, so it
    /// runs again on retry).
    ///
    /// The timeout never exceeds the [`lease`](Self::lease) less a spare
    /// part, whatever is set here, and without this call it is exactly
    /// that: a handler is always stopped before its lease can run out, so
    /// two deliveries of one event never run their handlers at the same
    /// time. The spare part is a tenth of the lease with a [`MemoryStore`]
    /// given by value or as an `Arc<MemoryStore>`, which settles at once.
    /// With any other store it is the longer of a tenth of the lease and
    /// the [store timeout](Self::store_timeout), so that the completion
    /// sent when the handler succeeds, answered within the store timeout,
    /// has landed before the lease ends and no other delivery can have run
    /// the handler again; but never more than half the lease (keep the
    /// store timeout at most half the lease for that to hold). With the
    /// defaults that is 27 s of the 30 s lease with a memory store, and
    /// 25 s with another store. The time the claim itself took is taken
    /// off, since the lease starts during the claim.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `timeout` is between 1 ms and 10 years.
    pub fn handler_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.config_mut().settings.handler_timeout = Some(check_duration(
            "handler_timeout",
            timeout,
            "the lease less its spare part",
        )?);
        Ok(self)
    }

    /// How long the layer waits for any one store call (default
    /// [`DEFAULT_STORE_TIMEOUT`]). A claim that times out answers `503`;
    /// the call goes on in the background as long again, and a claim it
    /// makes then is released, so that Clink's retry is not told the event
    /// is in flight until the lease ends. (A store that gives up first, on
    /// its own call timeout, answers an error: the Redis and PostgreSQL
    /// stores' 1 s by default. A claim its server makes after that holds
    /// the event until the lease ends, and the retries meanwhile are
    /// answered `409`.) A
    /// completion that times out or fails on the way is tried again in the
    /// background until the lease ends, and logged; a release that does is
    /// logged, and the lease frees the claim.
    ///
    /// With a store other than the [`MemoryStore`], a handler is stopped
    /// this long before its lease ends, so that its completion lands inside
    /// the lease: see [`handler_timeout`](Self::handler_timeout). Keep it
    /// at most half the [`lease`](Self::lease): a handler always keeps half
    /// the lease, so a longer store timeout leaves a completion less time
    /// than it may take, and the layer logs a warning when it makes a
    /// service with such settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `timeout` is between 1 ms and 10 years.
    pub fn store_timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        self.config_mut().settings.store_timeout = check_duration("store_timeout", timeout, "5 s")?;
        Ok(self)
    }

    /// The prefix of idempotency keys (default `clink`), so several
    /// endpoints or apps can share one store. Keys are
    /// `{prefix}:{account}:{event id}` (the account empty with a single verifier).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `prefix` is longer than 128 bytes or holds a
    /// control character.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Result<Self, ConfigError> {
        let prefix = prefix.into();
        if prefix.len() > MAX_KEY_PREFIX_LEN || prefix.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "ClinkLayer::key_prefix must be at most 128 bytes without control characters",
            ));
        }
        self.config_mut().settings.key_prefix = Arc::from(prefix);
        Ok(self)
    }

    /// How often, at most, the layer writes a `warn` line summing up the
    /// deliveries it refused before their signature checked out (default
    /// [`DEFAULT_REFUSAL_LOG_INTERVAL`], 10 s): the first refusal after a
    /// quiet spell at once, then a summary at the end of each interval in
    /// which there were more, written by a timer (so the last one comes on
    /// time with no further traffic); each refusal is also logged at
    /// `debug`. A client without the key cannot fill the logs.
    ///
    /// The same interval paces the outage summaries: a store, an inbox or a
    /// key source that fails is logged once when the failures start (at
    /// `error`), summed up once per interval while they go on, and once
    /// when it answers again (at `warn`), never once per delivery; the
    /// [`Metrics`] count every failure. An interval past what the clock
    /// can count (`Duration::MAX`) logs the first refusal and each
    /// dependency's first outage (its start and its end), then nothing
    /// more: the metrics alone count the rest.
    #[must_use]
    pub fn refusal_log_interval(mut self, interval: Duration) -> Self {
        let config = self.config_mut();
        config.refusals = RefusalLog::new(interval);
        config.outages = Outages::new(interval);
        self
    }

    /// A readiness check for a health route: whether a signing key is
    /// active and the layer's store answers now. See
    /// [`Readiness`](super::Readiness).
    #[must_use]
    pub fn readiness(&self) -> super::Readiness {
        super::Readiness::new(Arc::clone(&self.config), None)
    }

    /// The counters shared by this layer and every service it makes.
    #[must_use]
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.config.metrics)
    }

    /// Waits until the claims of every delivery cut off in this process
    /// have been settled with their stores, at most `within`; whether they
    /// all were.
    ///
    /// A delivery whose future is dropped (its client hung up, or a
    /// server's shutdown deadline ended it) has its claim completed, once a
    /// handler succeeded, or released otherwise, on a task of its own, as
    /// is a completion tried again after the store could not take it
    /// (unavailable, or out of time). This waits for every such task of
    /// the process, whichever layer began it. A process
    /// that ends meanwhile (`main` returning after its server stopped)
    /// drops those tasks: a completion lost so lets Clink's retry run a
    /// handler that succeeded again once the claim's lease ends, and a
    /// release lost answers its retries `409` until then.
    /// [`Server::serve`](crate::server::Server::serve) waits for them (up
    /// to 2 s) before it returns; an app served otherwise (`axum::serve`,
    /// a hyper loop of its own) awaits this after its server has stopped.
    /// A [`MemoryStore`](crate::store::MemoryStore) settles at once, so
    /// there is nothing to wait for with it. The wait is on Tokio's timer:
    /// call it inside a runtime with its time driver on (`enable_time`, or
    /// `enable_all`).
    ///
    /// ```
    /// # async fn example() {
    /// use std::time::Duration;
    /// use clink_webhooks::ClinkLayer;
    ///
    /// // After the server's graceful shutdown, before `main` returns:
    /// if !ClinkLayer::settled(Duration::from_secs(2)).await {
    ///     eprintln!("some claims were left to their leases");
    /// }
    /// # }
    /// ```
    pub async fn settled(within: Duration) -> bool {
        super::claim::settled(within).await
    }
}

impl<S> Layer<S> for ClinkLayer {
    type Service = ClinkService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.config.warn_of_what_the_lease_cuts();
        ClinkService::new(inner, Arc::clone(&self.config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> ClinkLayer {
        ClinkLayer::new(Verifier::new("whsec_test").unwrap())
    }

    #[test]
    fn the_handler_deadline_stays_inside_the_lease() {
        let config = layer().lease(Duration::from_secs(10)).unwrap().config;
        assert_eq!(config.handler_deadline(), Duration::from_secs(9));
        let config = layer()
            .lease(Duration::from_secs(10))
            .and_then(|l| l.handler_timeout(Duration::from_secs(60)))
            .unwrap()
            .config;
        assert_eq!(config.handler_deadline(), Duration::from_secs(9));
        let config = layer()
            .handler_timeout(Duration::from_secs(2))
            .unwrap()
            .config;
        assert_eq!(config.handler_deadline(), Duration::from_secs(2));
    }

    /// With a store other than the memory store, the handler stops the
    /// store timeout before its lease ends (at most half the lease), so
    /// that its completion lands inside the lease.
    #[test]
    fn the_handler_deadline_leaves_a_networked_settle_its_store_timeout() {
        let s = Duration::from_secs;
        let other = || {
            let store: Arc<dyn IdempotencyStore> = Arc::new(MemoryStore::new());
            layer().store(store)
        };
        assert_eq!(layer().config.handler_deadline(), s(27));
        assert_eq!(other().config.handler_deadline(), s(25));
        let config = other().lease(s(20)).unwrap().config;
        assert_eq!(config.handler_deadline(), s(15));
        let config = other()
            .store_timeout(s(1))
            .and_then(|l| l.lease(s(20)))
            .unwrap()
            .config;
        assert_eq!(config.handler_deadline(), s(18));
        let config = other().lease(s(2)).unwrap().config;
        assert_eq!(config.handler_deadline(), s(1));
        let config = layer().lease(s(2)).unwrap().config;
        assert_eq!(config.handler_deadline(), Duration::from_millis(1800));
    }

    #[test]
    fn values_no_delivery_could_work_with_are_refused_at_configuration() {
        let zero = Duration::ZERO;
        let too_long = MAX_TTL + Duration::from_secs(1);
        let errors = [
            layer().lease(zero).unwrap_err(),
            layer().lease(too_long).unwrap_err(),
            layer().retention(zero).unwrap_err(),
            layer().retention(too_long).unwrap_err(),
            layer().body_limit(0).unwrap_err(),
            layer().body_timeout(zero).unwrap_err(),
            layer().handler_timeout(zero).unwrap_err(),
            layer().store_timeout(zero).unwrap_err(),
            layer().key_prefix("a\nb").unwrap_err(),
            layer().key_prefix("p".repeat(129)).unwrap_err(),
        ];
        for error in errors {
            assert!(
                error
                    .to_string()
                    .starts_with("invalid configuration: ClinkLayer::"),
                "{error}"
            );
        }
        assert!(layer().lease(MAX_TTL).is_ok());
        assert!(layer().key_prefix("shop-eu").is_ok());
    }

    #[test]
    fn debug_shows_the_keys_by_name_and_the_settings_never_a_secret() {
        let layer = layer().body_limit(4096).unwrap();
        let debug = format!("{layer:?}");
        assert!(
            debug.starts_with("ClinkLayer { keys: \"Verifier"),
            "{debug}"
        );
        assert!(debug.contains("body_limit: 4096"), "{debug}");
        assert!(!debug.contains("whsec_test"), "{debug}");
        assert_eq!(DEFAULT_BODY_LIMIT, 1_048_576, "1 MiB, as documented");
    }

    #[test]
    fn an_intake_shares_the_layers_counters() {
        let layer = layer();
        let intake = layer.intake(crate::store::MemoryInbox::new());
        assert!(Arc::ptr_eq(&intake.metrics(), &layer.metrics()));
        assert_eq!(format!("{intake:?}"), "InboxIntake { .. }");
    }

    #[test]
    fn each_bound_is_allowed_at_its_edge() {
        let ms = Duration::from_millis(1);
        assert!(layer().lease(ms).is_ok());
        assert!(layer().retention(MAX_TTL).is_ok());
        assert!(layer().body_timeout(ms).is_ok());
        assert!(layer().store_timeout(ms).is_ok());
        assert!(layer().handler_timeout(MAX_TTL).is_ok());
        assert!(layer().body_timeout(MAX_TTL + ms).is_err());
        assert!(layer().key_prefix("p".repeat(128)).is_ok());
        assert!(layer().key_prefix("").is_ok());
        // The budget holds at least one body at the limit, and one body.
        let limited = || layer().body_limit(1000).unwrap();
        assert!(limited().body_budget(1000, 1).is_ok());
        assert!(limited().body_budget(999, 1).is_err());
        assert!(limited().body_budget(1000, 0).is_err());
        assert!(limited().body_limit(1).is_ok());
        // A limit up to the budget set before it, not past it.
        let budgeted = || limited().body_budget(4096, 8).unwrap();
        assert!(budgeted().body_limit(4096).is_ok());
        assert!(budgeted().body_limit(4097).is_err());
    }
}
