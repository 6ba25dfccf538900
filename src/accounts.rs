//! Many merchant accounts on one endpoint: which account a delivery is for,
//! and that account's signing keys.
//!
//! A platform receiving Clink webhooks for many merchant accounts has one
//! endpoint per account in Clink, each with its own signing secret. Serve
//! them all from one route: the layer reads the account from the request
//! ([`AccountFrom`]: a path segment such as `/webhooks/clink/{account}`, a
//! header, or the host), asks a [`KeySource`] for that account's
//! [`Verifier`] on every delivery, and verifies with it. An unknown account
//! is answered `404` before the body is read and touches no store; a key
//! source that cannot answer is `503`, so Clink retries (unless a
//! [`CachedKeySource`] is told to answer for the accounts it found before
//! with the keys it found: see its
//! [`stale_if_error`](CachedKeySource::stale_if_error)).
//!
//! The account is part of the [`VerifiedEvent`](crate::VerifiedEvent), of
//! the delivery's `tracing` span, and of every idempotency and freshness
//! key, so the same event id under two accounts is two events.
//!
//! Two key sources come ready: [`KeyMap`], a map you update at run time (a
//! rotated secret takes effect on the next delivery, no restart), and
//! [`CachedKeySource`], which asks your own async function (a database, a
//! secrets manager) and caches its answers, unknown accounts included. A
//! stranger can name any account in a request, so `CachedKeySource` bounds
//! what that costs your backend: one lookup per account at a time, capped
//! lookups at once and per second, and an optional cheap
//! [`precheck`](CachedKeySource::precheck) before any lookup.
//!
//! ```
//! use std::time::Duration;
//! use clink_webhooks::accounts::{AccountFrom, KeyMap};
//! use clink_webhooks::{sign, ClinkLayer, EventRouter, Layer, SigningKey, Timestamp, Verifier};
//!
//! let keys = KeyMap::new();
//! keys.insert("acct_eu", Verifier::new("whsec_eu")?)?;
//! keys.insert("acct_us", Verifier::new("whsec_us")?)?;
//!
//! // POST /webhooks/clink/{account}
//! let layer = ClinkLayer::with_key_source(AccountFrom::LastPathSegment, keys.clone());
//! let service = layer.layer(EventRouter::new());
//!
//! // Later, a rotation: the new key from now on, and the old one for the
//! // deliveries stamped before the rotation (Clink signs nothing with a
//! // secret after rotating it), for a day at most.
//! let stamped_before = Timestamp::now().as_millis().to_string();
//! keys.rotate(
//!     "acct_eu",
//!     SigningKey::new("whsec_eu_new")?.named("current")?,
//!     Duration::from_secs(86_400),
//! );
//!
//! let eu = keys.get("acct_eu").unwrap();
//! let ts = stamped_before;
//! assert!(eu.verify(&ts, &sign("whsec_eu", &ts, b"{}"), b"{}").is_ok());
//! let new = eu.verify(&ts, &sign("whsec_eu_new", &ts, b"{}"), b"{}").unwrap();
//! assert_eq!(new.key_name(), "current");
//! # Ok::<(), clink_webhooks::ConfigError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use http::header::HeaderName;
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;

use crate::signature::{SigningKey, Verifier};
use crate::BoxFuture;
use crate::{BoxError, ConfigError};

/// The longest account id, in bytes.
pub const MAX_ACCOUNT_LEN: usize = 128;

/// Whether `account` is a valid account id: 1 to [`MAX_ACCOUNT_LEN`] ASCII
/// letters, digits, `_`, `-` and `.`, other than `.` and `..` (which name a
/// directory, not an account, in a path or a file name). Anything else is an
/// unknown account, so an id never needs escaping in a key or a log line.
#[must_use]
pub fn is_valid_account(account: &str) -> bool {
    !account.is_empty()
        && account.len() <= MAX_ACCOUNT_LEN
        && account != "."
        && account != ".."
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn check_account(account: &str) -> Result<(), ConfigError> {
    if is_valid_account(account) {
        Ok(())
    } else {
        Err(ConfigError::new(format!(
            "an account id is 1 to {MAX_ACCOUNT_LEN} ASCII letters, digits, `_`, `-` and `.`, other than `.` and `..`"
        )))
    }
}

/// Where in a request the layer finds the account a delivery is for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccountFrom {
    /// The last segment of the path: `/webhooks/clink/{account}`.
    LastPathSegment,
    /// The segment at this index, counting from 0 after the leading `/`:
    /// `1` reads `acct_1` from `/clink/acct_1/webhooks`. The path is the
    /// one the layer sees: behind axum's `Router::nest("/clink", ..)`,
    /// which takes its prefix off, that is `/acct_1/webhooks` (index 0).
    PathSegment(usize),
    /// The value of this header (set by your proxy, say).
    Header(HeaderName),
    /// The request's host, without the port, in lowercase (a host name
    /// is the same whatever its case): `acct-1.hooks.example.com`. Keep
    /// such accounts in lowercase, as the host is read (an account in
    /// capitals is never found), and of at most 128 bytes, as every account.
    Host,
}

impl AccountFrom {
    /// The account `parts` names, if it names a valid one: as spelt in
    /// the request, but a host in lowercase.
    pub(crate) fn account<'a>(
        &self, parts: &'a http::request::Parts,
    ) -> Option<std::borrow::Cow<'a, str>> {
        let account = match self {
            Self::LastPathSegment => parts.uri.path().rsplit('/').next(),
            Self::PathSegment(index) => parts
                .uri
                .path()
                .trim_start_matches('/')
                .split('/')
                .nth(*index),
            Self::Header(name) => parts.headers.get(name).and_then(|v| v.to_str().ok()),
            Self::Host => parts.uri.host().or_else(|| {
                let host = parts.headers.get(http::header::HOST)?.to_str().ok()?;
                Some(host.rsplit_once(':').map_or(host, |(host, _port)| host))
            }),
        }?;
        if !is_valid_account(account) {
            return None;
        }
        Some(
            if matches!(self, Self::Host) && account.bytes().any(|b| b.is_ascii_uppercase()) {
                std::borrow::Cow::Owned(account.to_ascii_lowercase())
            } else {
                std::borrow::Cow::Borrowed(account)
            },
        )
    }
}

/// A key source could not answer; the delivery is answered `503` with
/// `Retry-After`, so Clink retries it.
///
/// Cheap to clone: deliveries waiting on one lookup all get its error.
#[derive(Debug, Clone)]
pub struct KeySourceError {
    error: Arc<dyn std::error::Error + Send + Sync>,
    limited: bool,
}

/// Why a lookup was not made: see [`KeySourceError::limited`].
#[derive(Debug)]
struct Limited;

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "too many lookups of uncached accounts at once or in the last second; \
             the lookup was not made",
        )
    }
}

impl std::error::Error for Limited {}

impl KeySourceError {
    /// An error from the key source's own backend. Its message is logged
    /// (escaped, in a summary); it must not contain secrets.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self {
            error: Arc::from(error.into()),
            limited: false,
        }
    }

    /// The lookup was not made because the key source's own limits were
    /// reached (too many lookups at once, or per second). The delivery is
    /// answered `503` with `Retry-After`
    /// ([`Outcome::KeyLookupsLimited`](crate::Outcome::KeyLookupsLimited)),
    /// and it is not an outage of the backend: it is counted with the
    /// layer's refusals rather than logged as one.
    #[must_use]
    pub fn limited() -> Self {
        Self {
            error: Arc::new(Limited),
            limited: true,
        }
    }

    /// Whether this is [`limited`](Self::limited): the backend was not asked.
    #[must_use]
    pub fn is_limited(&self) -> bool {
        self.limited
    }
}

impl fmt::Display for KeySourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the signing keys could not be looked up: {}", self.error)
    }
}

impl std::error::Error for KeySourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.error)
    }
}

/// Gives the layer the [`Verifier`] (the active signing keys) of an account,
/// per delivery.
///
/// Object safe; `Arc<K>` is a key source when `K` is. The layer bounds each
/// call by its [store timeout](crate::ClinkLayer::store_timeout).
pub trait KeySource: Send + Sync + 'static {
    /// The verifier of `account`, or `None` when there is no such account
    /// (answered `404`).
    ///
    /// `account` is as the request spells it (a [host](AccountFrom::Host)
    /// in lowercase), and the layer keys its idempotency claims and
    /// freshness records on that spelling. So answer only for the spelling
    /// you keep: a lookup that also answers for another one (`ACCT-1` for
    /// `acct-1`, matching without regard to case) makes each spelling an
    /// account of its own, and one delivery sent again under another
    /// spelling runs its handler again.
    ///
    /// # Errors
    ///
    /// A [`KeySourceError`] when the keys cannot be looked up now (or
    /// [`KeySourceError::limited`] when the source will not look them up
    /// now); the delivery is answered `503` and Clink retries it.
    fn verifier<'a>(
        &'a self, account: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Verifier>>, KeySourceError>>;
}

impl<K: KeySource + ?Sized> KeySource for Arc<K> {
    fn verifier<'a>(
        &'a self, account: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Verifier>>, KeySourceError>> {
        (**self).verifier(account)
    }
}

/// A [`KeySource`] over a map you update at run time: clones share the map,
/// so keep one clone to [`insert`](Self::insert) and
/// [`remove`](Self::remove) accounts while the layer serves. A change takes
/// effect on the next delivery.
#[derive(Clone, Default)]
pub struct KeyMap {
    accounts: Arc<DashMap<String, Arc<Verifier>>>,
}

impl fmt::Debug for KeyMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMap")
            .field("accounts", &self.accounts.len())
            .finish_non_exhaustive()
    }
}

impl KeyMap {
    /// An empty map: every account is unknown until inserted.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the verifier of `account`, replacing any it had. To rotate a
    /// secret, use [`rotate`](Self::rotate), or insert a verifier holding
    /// both keys, the old one with an expiry and the rotation's time as
    /// its last stamp ([`SigningKey::expires_at`],
    /// [`SigningKey::signed_until`], [`Verifier::add_key`]): Clink signs
    /// nothing with a secret after rotating it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `account` is not a valid account id (see
    /// [`is_valid_account`]).
    pub fn insert(
        &self, account: impl Into<String>, verifier: Verifier,
    ) -> Result<(), ConfigError> {
        let account = account.into();
        check_account(&account)?;
        self.accounts.insert(account, Arc::new(verifier));
        Ok(())
    }

    /// Rotates the signing secret of `account`: `key` from now on, and the
    /// keys it has now for `grace` more at most, for the deliveries stamped
    /// before the rotation alone (Clink signs nothing with a secret after
    /// rotating it; see [`Verifier::rotated`]). Returns whether the account
    /// was there; an unknown account is left unknown.
    pub fn rotate(&self, account: &str, key: SigningKey, grace: Duration) -> bool {
        self.rotate_at(account, key, grace, std::time::SystemTime::now())
    }

    /// [`rotate`](Self::rotate) as of `now`.
    pub(crate) fn rotate_at(
        &self, account: &str, key: SigningKey, grace: Duration, now: std::time::SystemTime,
    ) -> bool {
        match self.accounts.get_mut(account) {
            Some(mut verifier) => {
                let rotated = verifier.rotated_at(key, grace, now);
                *verifier = Arc::new(rotated);
                true
            }
            None => false,
        }
    }

    /// The verifier of `account`, if it has one.
    #[must_use]
    pub fn get(&self, account: &str) -> Option<Arc<Verifier>> {
        self.accounts.get(account).map(|v| Arc::clone(&v))
    }

    /// Forgets `account`: its deliveries are answered `404` from now on.
    /// Whether it was there.
    pub fn remove(&self, account: &str) -> bool {
        self.accounts.remove(account).is_some()
    }

    /// How many accounts it holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Whether it holds no account.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

impl KeySource for KeyMap {
    fn verifier<'a>(
        &'a self, account: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Verifier>>, KeySourceError>> {
        Box::pin(std::future::ready(Ok(self.get(account))))
    }
}

/// The default [`CachedKeySource::max_concurrent_lookups`]: 16.
pub const DEFAULT_MAX_CONCURRENT_LOOKUPS: usize = 16;

/// The default rate of [`CachedKeySource::lookup_rate`]: 100 lookups a
/// second.
pub const DEFAULT_LOOKUPS_PER_SECOND: u32 = 100;

/// The default burst of [`CachedKeySource::lookup_rate`]: 100 lookups.
pub const DEFAULT_LOOKUP_BURST: u32 = 100;

tokio::task_local! {
    /// Set by a [`CachedKeySource`] whose answer is not its function's (its
    /// cache's, its precheck's, or the keys of before answering for a
    /// lookup that failed or could not be made), within the scope
    /// [`answered`] makes around a lookup: it goes with that lookup's task,
    /// whatever wraps the source.
    static ANSWERED_WITHOUT_LOOKUP: std::cell::Cell<bool>;
}

/// Marks the answer being given as not a lookup's (see
/// `ANSWERED_WITHOUT_LOOKUP`); nothing outside [`answered`]'s scope.
fn mark_answered_without_lookup() {
    let _ = ANSWERED_WITHOUT_LOOKUP.try_with(|mark| mark.set(true));
}

/// The answer of the lookup `lookup` makes, and whether it was a lookup's:
/// not a [`CachedKeySource`]'s cache, precheck, or keys of before, which
/// say nothing of whether the source behind the cache answers (so they do
/// not end an outage). `lookup` is called within the scope, as a cache
/// answers in the call that makes the future.
pub(crate) async fn answered<F: Future>(lookup: impl FnOnce() -> F) -> (F::Output, bool) {
    ANSWERED_WITHOUT_LOOKUP
        .scope(std::cell::Cell::new(false), async {
            let answer = lookup().await;
            (answer, !ANSWERED_WITHOUT_LOOKUP.with(std::cell::Cell::get))
        })
        .await
}

/// Of `max` lookup slots, how many the lookups of names never found may
/// not take: a quarter, and at least one when there are two or more.
const fn reserved_lookups(max: usize) -> usize {
    if max < 2 {
        0
    } else if max < 8 {
        1
    } else {
        max / 4
    }
}

/// While a known account's keys answer for a failing lookup, how long
/// until it is asked again (or its `ttl`, if shorter): not on every
/// delivery, against a source that is failing.
const STALE_RETRY: Duration = Duration::from_secs(30);

/// A [`KeySource`] that asks an async function of yours and caches its
/// answers: known accounts for a [`ttl`](Self::ttl) (default 5 minutes),
/// unknown ones for a shorter [`negative_ttl`](Self::negative_ttl) (default
/// 30 s), so a sender probing made-up accounts does not reach your backend
/// on every request (while there is room: a cache full of known accounts
/// keeps no unknown one, whose lookups the rate then bounds). About
/// [`capacity`](Self::capacity) accounts are cached (default 10,000; past
/// it by at most the lookups running at once); when full, what helps no
/// one goes first (unknown accounts' answers that ended, known accounts'
/// keys that ended more than a `ttl` ago), then every unknown account's
/// answer, then, for a known account's keys, the known one that expires
/// soonest.
///
/// Anyone can name any account in a request, so what reaches your function
/// is bounded, whatever a sender does:
///
/// - **One lookup per account at a time.** Deliveries for an account that is
///   being looked up wait for that lookup and share its answer (or its
///   error): 64 deliveries at once for one uncached account make one call.
/// - **Lookups capped.** At most
///   [`max_concurrent_lookups`](Self::max_concurrent_lookups) run at once
///   (default [`DEFAULT_MAX_CONCURRENT_LOOKUPS`], 16), and at most
///   [`lookup_rate`](Self::lookup_rate) start per second, but for accounts
///   a lookup found (see below), each looked up once a `ttl` at most (a token bucket:
///   default [`DEFAULT_LOOKUPS_PER_SECOND`], 100 a second, in bursts of up to
///   [`DEFAULT_LOOKUP_BURST`], 100). Past either, the delivery is answered
///   `503` with `Retry-After` ([`KeySourceError::limited`],
///   [`Outcome::KeyLookupsLimited`](crate::Outcome::KeyLookupsLimited))
///   without calling your function, and Clink retries it later. Cached
///   accounts are never limited. An account its last lookup found (the
///   last [`capacity`](Self::capacity) of them, however long idle) is
///   asked about again without waiting for the rate (a lookup that failed,
///   or was given up on when its delivery's time ran out, forgets it, so
///   a struggling source is asked at the rate), in a slot the lookups of
///   other names cannot take (a quarter of them are kept for known
///   accounts, see [`max_concurrent_lookups`](Self::max_concurrent_lookups));
///   while its cached keys have
///   expired less than a [`ttl`](Self::ttl) ago and every lookup slot is
///   busy, they answer for it instead of a `503`; and in a full cache, an
///   unknown account's answer never takes the place of a known account's
///   keys. An account never found before waits for the rate: while a
///   flood of made-up names takes every token, each of its deliveries,
///   retries included, is likely to be refused for as long as the flood
///   lasts. Where names can be told apart cheaply, a
///   [`precheck`](Self::precheck) refuses made-up ones before they take a
///   token.
/// - **An optional [`precheck`](Self::precheck)**: a cheap test of the name
///   (a set of your account ids, a prefix) run before the cache and any
///   lookup; a name it refuses is an unknown account (`404`).
///
/// A failed lookup (an error, or a panic of your function) is not cached:
/// the deliveries waiting on it get `503`, and the next one asks again;
/// the layer logs those failures as an outage, never one line per
/// delivery, and its end when a lookup answers again (an answer from the
/// cache, a name the precheck refused, or keys of before answering for a
/// lookup that failed or could not be made, is none: a sender naming
/// cached or made-up accounts cannot make the log say the source is
/// back). Clink retries a delivery for about a day, so an outage of your
/// backend shorter than that loses nothing, as long as each retry is
/// signed when it is sent (Clink's docs do not say; a retry carrying its
/// first attempt's timestamp could not pass the timestamp check once the
/// [tolerance](crate::Verifier::tolerance) is past). To go on receiving
/// through a longer one, set [`stale_if_error`](Self::stale_if_error): an
/// account a lookup found before is then verified with the keys it found,
/// for that long after they expired, while its lookups fail. A lookup that
/// hangs is not a failure until the delivery's time runs out
/// ([`store_timeout`](crate::ClinkLayer::store_timeout)): that delivery
/// gets `503`.
///
/// ```
/// use std::collections::HashSet;
/// use clink_webhooks::accounts::{AccountFrom, CachedKeySource};
/// use clink_webhooks::{ClinkLayer, Verifier};
///
/// let source = CachedKeySource::new(|account: String| async move {
///     // Look the account's secret up in your database here.
///     let secret = (account == "acct_1").then_some("whsec_1");
///     secret.map(Verifier::new).transpose()
/// })
/// // At most 4 lookups at once, 20 a second.
/// .max_concurrent_lookups(4)?
/// .lookup_rate(20, 20)?
/// // Only names of the platform's form are looked up at all.
/// .precheck(|account| account.starts_with("acct_"));
/// let layer = ClinkLayer::with_key_source(AccountFrom::LastPathSegment, source);
///
/// // Or with the set of account ids, when you have it at hand.
/// let known: HashSet<String> = ["acct_1".to_owned()].into();
/// let _by_set = CachedKeySource::new(|_account: String| async {
///     Ok::<Option<Verifier>, std::io::Error>(None)
/// })
/// .precheck(move |account| known.contains(account));
/// # Ok::<(), clink_webhooks::ConfigError>(())
/// ```
pub struct CachedKeySource<F> {
    fetch: F,
    cache: DashMap<String, Cached>,
    ttl: Duration,
    negative_ttl: Duration,
    capacity: usize,
    precheck: Option<Box<dyn Fn(&str) -> bool + Send + Sync>>,
    /// The lookups running now, one per account, shared by the deliveries
    /// that wait for them.
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    /// One permit per lookup running.
    lookups: Semaphore,
    /// One permit per lookup running of an account not known (see
    /// `known`): fewer than `lookups`, so that made-up names leave known
    /// accounts [`reserved_lookups`] slots.
    stranger_lookups: Semaphore,
    max_lookups: usize,
    rate: TokenBucket,
    /// The accounts a lookup found, with when it last did: at most
    /// `capacity`, the longest unseen dropped first. Only a lookup that
    /// found the account adds it, so made-up names never get in; one in it
    /// is looked up without a token of the rate, however long ago its keys
    /// were cached.
    known: Mutex<HashMap<String, Instant>>,
    stale_if_error: Duration,
    /// Lookups that failed while a known account's keys answered for them.
    stale_outage: Arc<crate::outage::OutageLog>,
}

#[derive(Clone)]
struct Cached {
    verifier: Option<Arc<Verifier>>,
    until: Instant,
    /// Until when keys (not an absence) answer for a lookup that fails:
    /// `stale_if_error` past the end of their `ttl`.
    stale_until: Instant,
}

/// What a lookup answered, once it has.
type Answer = Result<Option<Arc<Verifier>>, KeySourceError>;

/// One lookup of one account, which every delivery for that account waits
/// on. If the delivery running it is dropped (it timed out, the sender
/// hung up), one of those waiting runs it again.
#[derive(Default)]
struct Flight {
    answer: OnceCell<Answer>,
    /// Whether the answer is your function's: not the cache's, nor the
    /// keys of before answering for a lookup that failed or could not be
    /// made (see [`answered`]).
    looked_up: AtomicBool,
    /// Set by [`CachedKeySource::forget`] while the lookup may still run:
    /// its answer, perhaps of the keys from before, is then not cached.
    forgotten: AtomicBool,
}

/// Takes a delivery's flight out of the map when the last delivery waiting
/// on it is done with it (answered or dropped), unless a newer flight has
/// taken its place: a flight is never kept longer than a delivery waits on
/// it, and stays findable (by [`CachedKeySource::forget`], by the next
/// delivery) while one does, though the delivery that began its lookup
/// was dropped and another runs it again.
struct Leave<'a> {
    flights: &'a Mutex<HashMap<String, Arc<Flight>>>,
    account: &'a str,
    /// Taken when the delivery leaves, under the map's lock.
    flight: Option<Arc<Flight>>,
}

impl Leave<'_> {
    fn flight(&self) -> &Flight {
        self.flight
            .as_deref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(flight) = self.flight.take() else {
            return;
        };
        let in_map = flights
            .get(self.account)
            .is_some_and(|held| Arc::ptr_eq(held, &flight));
        // Every delivery's share is dropped under this lock: the map's is
        // the last one when no other delivery waits on it.
        drop(flight);
        if in_map
            && flights
                .get(self.account)
                .is_some_and(|held| Arc::strong_count(held) == 1)
        {
            flights.remove(self.account);
        }
    }
}

/// A token bucket: `per_second` tokens a second, at most `burst` saved up.
struct TokenBucket {
    per_second: u32,
    burst: u32,
    /// Tokens left, and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second,
            burst,
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    /// Takes a token; whether there was one.
    fn take(&self) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, counted) = &mut *state;
        let earned =
            now.saturating_duration_since(*counted).as_secs_f64() * f64::from(self.per_second);
        *tokens = (*tokens + earned).min(f64::from(self.burst));
        *counted = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Runs `forget` when dropped still holding it: a lookup dropped before
/// its answer came.
struct ForgetUnlessDisarmed<G: FnOnce()> {
    forget: Option<G>,
}

impl<G: FnOnce()> Drop for ForgetUnlessDisarmed<G> {
    fn drop(&mut self) {
        if let Some(forget) = self.forget.take() {
            forget();
        }
    }
}

impl<F> fmt::Debug for CachedKeySource<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedKeySource")
            .field("cached", &self.cache.len())
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("capacity", &self.capacity)
            .field("precheck", &self.precheck.is_some())
            .field("max_concurrent_lookups", &self.max_lookups)
            .field("lookups_per_second", &self.rate.per_second)
            .field("lookup_burst", &self.rate.burst)
            .field("stale_if_error", &self.stale_if_error)
            .finish_non_exhaustive()
    }
}

fn check_ttl(what: &str, ttl: Duration) -> Result<Duration, ConfigError> {
    if ttl > crate::store::MAX_TTL {
        return Err(ConfigError::new(format!(
            "CachedKeySource::{what} must be at most 10 years"
        )));
    }
    Ok(ttl)
}

impl<F> CachedKeySource<F> {
    /// Drops what the cache holds for `account`, its keys or its absence,
    /// so that its next delivery looks it up again: call it when an
    /// account's secrets change (rotated, added, removed) for the change
    /// to be seen at once instead of when the entry expires. Call it once
    /// your lookup function gives the new keys (after the change is
    /// committed): a lookup made before that would read the old ones and
    /// cache them for another `ttl`. It forgets in this process only; each
    /// instance of an app has its own cache.
    ///
    /// The other accounts keep their entries. A lookup of `account`
    /// running when it is called still answers the deliveries waiting on
    /// it, but caches nothing, and deliveries from then on wait on a lookup
    /// of their own. Whether there was an entry.
    pub fn forget(&self, account: &str) -> bool {
        // Under the entry's lock, which a lookup takes to cache its answer
        // after reading its flight's mark: the lookup sees the mark, or
        // its answer is taken out here.
        let entry = self.cache.entry(account.to_owned());
        if let Some(flight) = self
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(account)
        {
            flight.forgotten.store(true, Ordering::Release);
        }
        match entry {
            dashmap::Entry::Occupied(entry) => {
                entry.remove();
                true
            }
            dashmap::Entry::Vacant(entry) => {
                drop(entry);
                false
            }
        }
    }
}

impl<F, Fut, E> CachedKeySource<F>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Verifier>, E>> + Send + 'static,
    E: Into<BoxError>,
{
    /// A cache in front of `fetch`, which returns an account's verifier, or
    /// `None` for an account that does not exist.
    pub fn new(fetch: F) -> Self {
        Self {
            fetch,
            cache: DashMap::new(),
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            capacity: 10_000,
            precheck: None,
            flights: Mutex::default(),
            lookups: Semaphore::new(DEFAULT_MAX_CONCURRENT_LOOKUPS),
            stranger_lookups: Semaphore::new(
                DEFAULT_MAX_CONCURRENT_LOOKUPS - reserved_lookups(DEFAULT_MAX_CONCURRENT_LOOKUPS),
            ),
            max_lookups: DEFAULT_MAX_CONCURRENT_LOOKUPS,
            rate: TokenBucket::new(DEFAULT_LOOKUPS_PER_SECOND, DEFAULT_LOOKUP_BURST),
            known: Mutex::default(),
            stale_if_error: Duration::ZERO,
            stale_outage: crate::outage::OutageLog::new(
                "key source",
                "the accounts it found before are verified with the keys it gave",
                crate::outage::DEFAULT_OUTAGE_LOG_INTERVAL,
            ),
        }
    }

    /// How long past the end of their [`ttl`](Self::ttl) a known account's
    /// keys answer for it while its lookup fails (an error or a panic of
    /// your function); default zero: never, a failed lookup is a `503` for
    /// every delivery waiting on it, which Clink retries for about a day.
    /// When it is set, while the stale keys answer, the account is asked
    /// about again every 30 s (or every `ttl`, if shorter), never on every
    /// delivery, and the source logs the outage itself (once when it
    /// starts, a summary of counts while it lasts, once when it ends).
    ///
    /// The keys are those your function gave last, each with its own
    /// expiry, which still holds. A change your backend made that no
    /// lookup has read yet (an account removed, a leaked secret rotated
    /// out) is not seen while it fails: those keys go on verifying for up
    /// to this long. So [`forget`](Self::forget) an account whenever its
    /// secrets change or it is removed, as its docs say: a forgotten
    /// account has no keys to answer with.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when it is over 10 years.
    pub fn stale_if_error(mut self, stale: Duration) -> Result<Self, ConfigError> {
        self.stale_if_error = check_ttl("stale_if_error", stale)?;
        Ok(self)
    }

    /// How long a known account's keys are used before asking again
    /// (default 5 minutes): the longest a rotated secret takes to be seen
    /// (unless you [`forget`](CachedKeySource::forget) the account when it
    /// changes), but while every lookup slot is busy, when the expired keys answer
    /// for up to one `ttl` more ([`max_concurrent_lookups`](Self::max_concurrent_lookups)).
    /// Zero asks every time.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `ttl` is over 10 years.
    pub fn ttl(mut self, ttl: Duration) -> Result<Self, ConfigError> {
        self.ttl = check_ttl("ttl", ttl)?;
        Ok(self)
    }

    /// How long an unknown account is remembered as unknown (default 30 s).
    /// Zero asks every time.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `ttl` is over 10 years.
    pub fn negative_ttl(mut self, ttl: Duration) -> Result<Self, ConfigError> {
        self.negative_ttl = check_ttl("negative_ttl", ttl)?;
        Ok(self)
    }

    /// How many accounts are cached at most (default 10,000).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `capacity` is zero.
    pub fn capacity(mut self, capacity: usize) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::new(
                "CachedKeySource::capacity must be at least one account",
            ));
        }
        self.capacity = capacity;
        Ok(self)
    }

    /// How many lookups may run at once (default
    /// [`DEFAULT_MAX_CONCURRENT_LOOKUPS`], 16); one more is not made, and its
    /// delivery is answered `503` ([`KeySourceError::limited`]). Deliveries
    /// waiting on a lookup of the same account do not count. A quarter of
    /// them (at least one, when there are two or more: 4 of the default 16)
    /// are kept for the accounts a lookup found before: the lookups of
    /// names never found (made-up ones among them) take at most the rest,
    /// so that a flood of them, held open by a slow source, never takes
    /// every slot from a known account.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `lookups` is zero or over tokio's
    /// `Semaphore::MAX_PERMITS`.
    pub fn max_concurrent_lookups(mut self, lookups: usize) -> Result<Self, ConfigError> {
        if lookups == 0 || lookups > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new(
                "CachedKeySource::max_concurrent_lookups must be at least 1 and at most tokio's \
                 Semaphore::MAX_PERMITS (the default is 16)",
            ));
        }
        self.lookups = Semaphore::new(lookups);
        self.stranger_lookups = Semaphore::new(lookups - reserved_lookups(lookups));
        self.max_lookups = lookups;
        Ok(self)
    }

    /// How many lookups may start per second: `per_second` on average, up
    /// to `burst` at once after a quiet spell (a token bucket; default
    /// [`DEFAULT_LOOKUPS_PER_SECOND`] and [`DEFAULT_LOOKUP_BURST`], 100 and
    /// 100). Past it a lookup is not made, and its delivery is answered
    /// `503` ([`KeySourceError::limited`]). Answers from the cache do not
    /// count, and neither do the lookups of accounts a lookup found before
    /// (with a `ttl` above zero: each is looked up once a `ttl` at most).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when either is zero.
    pub fn lookup_rate(mut self, per_second: u32, burst: u32) -> Result<Self, ConfigError> {
        if per_second == 0 || burst == 0 {
            return Err(ConfigError::new(
                "CachedKeySource::lookup_rate must allow at least one lookup a second, in bursts of at least one (the default is 100 and 100)",
            ));
        }
        self.rate = TokenBucket::new(per_second, burst);
        Ok(self)
    }

    /// A cheap check of an account name, run before the cache and any
    /// lookup: a name it refuses is an unknown account (`404`), and your
    /// function is never asked about it. Give it the set of your account
    /// ids (`move |account| ids.contains(account)`), a prefix test, a
    /// Bloom filter: whatever says "certainly not ours" without a round
    /// trip. It runs on every delivery, so it must not block.
    #[must_use]
    pub fn precheck(mut self, check: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.precheck = Some(Box::new(check));
        self
    }

    /// The cached answer for `account`, if it has one that has not expired.
    fn cached(&self, account: &str, now: Instant) -> Option<Cached> {
        self.cache
            .get(account)
            .filter(|cached| cached.until > now)
            .map(|cached| cached.clone())
    }

    /// The lookup of `account` running now, or a new one. A lookup that
    /// has answered is not joined, though a delivery still holds it: its
    /// answer, had it been one to keep, is in the cache, and one not kept
    /// (a failure, or any with a `ttl` of zero) is not handed on.
    fn flight(&self, account: &str) -> Arc<Flight> {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = flights
            .get(account)
            .filter(|flight| !flight.answer.initialized())
        {
            return Arc::clone(flight);
        }
        let flight = Arc::<Flight>::default();
        flights.insert(account.to_owned(), Arc::clone(&flight));
        flight
    }

    /// Whether a lookup found `account` lately (see `known`).
    fn is_known(&self, account: &str) -> bool {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(account)
    }

    /// Remembers that a lookup found `account`, or forgets it when one did
    /// not (the account was removed).
    fn note_known(&self, account: &str, found: bool) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if !found {
            known.remove(account);
            return;
        }
        if !known.contains_key(account) && known.len() >= self.capacity {
            let unseen_longest = known
                .iter()
                .min_by_key(|(_, seen)| **seen)
                .map(|(name, _)| name.clone());
            if let Some(name) = unseen_longest {
                known.remove(&name);
            }
        }
        known.insert(account.to_owned(), Instant::now());
    }

    /// The keys of a known account whose cache entry ended less than a
    /// `ttl` ago: what it is answered with while its lookup cannot be made.
    fn expired_keys(&self, account: &str, now: Instant) -> Option<Arc<Verifier>> {
        let cached = self.cache.get(account)?;
        let verifier = cached.verifier.as_ref()?;
        (cached.until + self.ttl > now).then(|| Arc::clone(verifier))
    }

    /// The keys of a known account that answer for it while its lookup
    /// fails (see [`stale_if_error`](Self::stale_if_error)), asked about
    /// again after [`STALE_RETRY`] (or its `ttl`): none if the account was
    /// forgotten since the lookup began.
    fn stale_keys(&self, account: &str, flight: &Flight) -> Option<Arc<Verifier>> {
        let now = Instant::now();
        let mut cached = self.cache.get_mut(account)?;
        if flight.forgotten.load(Ordering::Acquire) || cached.stale_until <= now {
            return None;
        }
        let verifier = Arc::clone(cached.verifier.as_ref()?);
        cached.until = (now + STALE_RETRY.min(self.ttl)).min(cached.stale_until);
        Some(verifier)
    }

    /// Looks `account` up, within the limits, and caches the answer.
    ///
    /// An account its last lookup found (see `known`) is looked up again
    /// without a token of the rate when the `ttl` is above zero (its
    /// lookups are then one a `ttl` at most), in a slot the lookups of
    /// other names cannot all take ([`reserved_lookups`]), and, while every
    /// slot it may take is busy, its keys that expired less than a `ttl`
    /// ago answer for it: made-up names, which take tokens and the other
    /// slots, do not lock a known account out (only the lookups of known
    /// accounts themselves, when more of them run at once than there are
    /// slots). A lookup that fails, or does not find the account, forgets
    /// it: its next lookup takes a token and a stranger's slot, its expired
    /// keys cached or not.
    async fn lookup(&self, account: &str, flight: &Flight) -> Answer {
        let now = Instant::now();
        // Answered by a lookup that ended since this delivery missed the cache.
        if let Some(cached) = self.cached(account, now) {
            return Ok(cached.verifier);
        }
        let expired = self.expired_keys(account, now);
        let limited = || match &expired {
            Some(verifier) => Ok(Some(Arc::clone(verifier))),
            None => Err(KeySourceError::limited()),
        };
        // Known: found by its last lookup (one that failed since forgot it,
        // though its keys may still be cached).
        let known = self.is_known(account);
        let _stranger = if known {
            None
        } else {
            let Ok(permit) = self.stranger_lookups.try_acquire() else {
                return limited();
            };
            Some(permit)
        };
        let Ok(_running) = self.lookups.try_acquire() else {
            return limited();
        };
        let exempt = !self.ttl.is_zero() && known;
        if !exempt && !self.rate.take() {
            return Err(KeySourceError::limited());
        }
        // A lookup given up on (the delivery's store timeout ended it while
        // the source was slow) forgets the account, as one that failed
        // does: the next waits for the rate, rather than each delivery
        // starting a lookup of its own against a struggling source.
        let mut given_up = ForgetUnlessDisarmed {
            forget: Some(|| self.note_known(account, false)),
        };
        // Your function panicking is its lookup failing: the answer every
        // delivery waiting on it shares, not one lookup after another.
        let fetched =
            crate::guard::CatchUnwind::new(async { (self.fetch)(account.to_owned()).await }).await;
        given_up.forget = None;
        let verifier = match fetched {
            Ok(Ok(verifier)) => verifier.map(Arc::new),
            failed => {
                let error = match failed {
                    Ok(Err(error)) => KeySourceError::new(error),
                    _ => KeySourceError::new("the key lookup panicked"),
                };
                // A known account's keys answer for it, and it stays known:
                // asked about again once its entry ends, not on every
                // delivery.
                if let Some(verifier) = self.stale_keys(account, flight) {
                    self.stale_outage.failed(&error);
                    return Ok(Some(verifier));
                }
                // Failing, it may fail again: the next lookup waits for
                // the rate, so that a flood of its name cannot make one
                // lookup after another of a struggling source.
                self.note_known(account, false);
                return Err(error);
            }
        };
        self.stale_outage.succeeded();
        flight.looked_up.store(true, Ordering::Release);
        self.note_known(account, verifier.is_some());
        let ttl = if verifier.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        let now = Instant::now();
        if verifier.is_none() {
            // Keys of before (the account removed) are not answered with
            // again, whether or not there is room for this answer. (Not if
            // the account was forgotten since the lookup began: what the
            // cache holds may be newer than this answer. Looked at under
            // the entry's lock, as `forget` removes under it.)
            self.cache.remove_if(account, |_, cached| {
                cached.verifier.is_some() && !flight.forgotten.load(Ordering::Acquire)
            });
        }
        // An unknown account's answer never takes a known account's place:
        // without room, it is not cached.
        if !ttl.is_zero() && self.make_room(now, verifier.is_some()) {
            let entry = self.cache.entry(account.to_owned());
            // Not if the account was forgotten since the lookup began: its
            // answer may be of the keys from before.
            if !flight.forgotten.load(Ordering::Acquire) {
                let until = now + ttl;
                entry.insert(Cached {
                    verifier: verifier.clone(),
                    until,
                    stale_until: until.checked_add(self.stale_if_error).unwrap_or(until),
                });
            }
        }
        Ok(verifier)
    }

    /// Makes room for one more entry, for a known account's keys when
    /// `known`: first what helps no one (unknown accounts' answers that
    /// ended, known accounts' keys that ended more than a `ttl` ago), then
    /// every unknown account's answer, then, for a known account only, the
    /// known one that ends soonest. Whether there is room. A known
    /// account's keys that ended lately are what lets it through a flood
    /// of made-up names (see [`lookup`](Self::lookup)), so made-up names,
    /// which fill the cache with unknown accounts, never push them out.
    fn make_room(&self, now: Instant, known: bool) -> bool {
        if self.cache.len() < self.capacity {
            return true;
        }
        let ttl = self.ttl;
        self.cache.retain(|_, cached| match cached.verifier {
            Some(_) => cached.until + ttl > now,
            None => cached.until > now,
        });
        if self.cache.len() < self.capacity {
            return true;
        }
        self.cache.retain(|_, cached| cached.verifier.is_some());
        if !known {
            return self.cache.len() < self.capacity;
        }
        while self.cache.len() >= self.capacity {
            let soonest = self
                .cache
                .iter()
                .min_by_key(|entry| entry.until)
                .map(|entry| entry.key().clone());
            match soonest {
                Some(account) => {
                    self.cache.remove(&account);
                }
                None => return true,
            }
        }
        true
    }
}

impl<F, Fut, E> KeySource for CachedKeySource<F>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Verifier>, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn verifier<'a>(
        &'a self, account: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Verifier>>, KeySourceError>> {
        if self.precheck.as_ref().is_some_and(|check| !check(account)) {
            mark_answered_without_lookup();
            return Box::pin(std::future::ready(Ok(None)));
        }
        if let Some(cached) = self.cached(account, Instant::now()) {
            mark_answered_without_lookup();
            return Box::pin(std::future::ready(Ok(cached.verifier)));
        }
        // Made before the future, so that a future dropped before its first
        // poll also takes its flight out of the map.
        let leave = Leave {
            flights: &self.flights,
            account,
            flight: Some(self.flight(account)),
        };
        Box::pin(async move {
            let flight = leave.flight();
            let answer = flight
                .answer
                .get_or_init(|| self.lookup(account, flight))
                .await
                .clone();
            if !flight.looked_up.load(Ordering::Acquire) {
                mark_answered_without_lookup();
            }
            answer
        })
    }
}

/// Lookups bounded: one per account at a time, capped at once and per
/// second, names refused before any lookup.
#[cfg(test)]
mod lookup_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Semaphore as Gate;

    use super::*;

    type GatedFetch = Box<
        dyn Fn(String) -> BoxFuture<'static, Result<Option<Verifier>, std::io::Error>>
            + Send
            + Sync,
    >;

    /// A source whose lookups count themselves, wait for a permit of the
    /// gate (closed at first), and know every account named `acct_*`.
    fn gated() -> (CachedKeySource<GatedFetch>, Arc<AtomicUsize>, Arc<Gate>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Gate::new(0));
        let (counter, opened) = (Arc::clone(&calls), Arc::clone(&gate));
        let fetch: GatedFetch = Box::new(move |account: String| {
            counter.fetch_add(1, Ordering::SeqCst);
            let opened = Arc::clone(&opened);
            Box::pin(async move {
                opened.acquire().await.unwrap().forget();
                Ok(account
                    .starts_with("acct_")
                    .then(|| Verifier::new("k").unwrap()))
            })
        });
        (CachedKeySource::new(fetch), calls, gate)
    }

    /// How many deliveries wait on the lookup of `account` now.
    fn waiting(source: &CachedKeySource<GatedFetch>, account: &str) -> usize {
        let flights = source.flights.lock().unwrap();
        flights
            .get(account)
            .map_or(0, |flight| Arc::strong_count(flight) - 1)
    }

    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("not reached");
    }

    #[tokio::test]
    async fn deliveries_for_one_uncached_account_share_one_lookup() {
        let (source, calls, gate) = gated();
        let source = Arc::new(source);
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let source = Arc::clone(&source);
            tasks.push(tokio::spawn(async move {
                source.verifier("acct_one").await.map(|v| v.is_some())
            }));
        }
        until(|| waiting(&source, "acct_one") == 64).await;
        gate.add_permits(64);
        for task in tasks {
            assert!(task.await.unwrap().unwrap());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(source.flights.lock().unwrap().is_empty());
        // Cached from now on.
        assert!(source.verifier("acct_one").await.unwrap().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// An account the source no longer finds is not answered with its
    /// keys of before, though the cache, full of found accounts, has no
    /// room for the answer that it is gone. Before, those keys stayed, and
    /// answered for it while every lookup slot was taken.
    #[tokio::test(start_paused = true)]
    async fn an_account_no_longer_found_loses_its_keys_in_a_full_cache() {
        let exists = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let seen = Arc::clone(&exists);
        let fetch: GatedFetch = Box::new(move |_account: String| {
            let found = seen.load(Ordering::SeqCst);
            Box::pin(async move { Ok(found.then(|| Verifier::new("k").unwrap())) })
        });
        let source = CachedKeySource::new(fetch)
            .capacity(1)
            .and_then(|source| source.ttl(Duration::from_secs(60)))
            .unwrap();
        assert!(source.verifier("acct_a").await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(61)).await;
        exists.store(false, Ordering::SeqCst);
        assert!(source.verifier("acct_a").await.unwrap().is_none());
        assert!(
            source.expired_keys("acct_a", Instant::now()).is_none(),
            "the keys of before are gone"
        );
    }

    /// A delivery that comes once a lookup has answered asks again when
    /// that answer was not cached (here a `ttl` of zero), though another
    /// delivery still holds the lookup. Before, it took the old answer
    /// (a failure, or keys since revoked) for as long as deliveries for the
    /// account overlapped.
    #[tokio::test]
    async fn a_lookup_that_answered_is_not_joined() {
        let (source, calls, gate) = gated();
        let source = source.ttl(Duration::ZERO).unwrap();
        gate.add_permits(100);
        let first = source.verifier("acct_a");
        // A delivery waiting on the same lookup, not polled until the end.
        let held = source.verifier("acct_a");
        assert!(first.await.unwrap().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(source.verifier("acct_a").await.unwrap().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "asked again");
        assert!(held.await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_forgotten_account_is_looked_up_again_and_the_others_stay_cached() {
        let (source, calls, gate) = gated();
        gate.add_permits(100);
        for account in ["acct_a", "acct_b", "nobody"] {
            source.verifier(account).await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(source.forget("acct_a"));
        assert!(source.forget("nobody"), "an absence is forgotten too");
        assert!(!source.forget("acct_never_asked"));
        for account in ["acct_a", "acct_b", "nobody"] {
            source.verifier(account).await.unwrap();
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            5,
            "acct_b answered from the cache"
        );
        // Cached again after the new lookup.
        source.verifier("acct_a").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    /// A lookup running when its account is forgotten answers those waiting
    /// on it, but its answer (maybe of the keys from before) is not kept,
    /// and a delivery arriving after the call does not wait on it.
    #[tokio::test]
    async fn a_lookup_running_when_its_account_is_forgotten_is_not_cached() {
        let (source, calls, gate) = gated();
        let source = Arc::new(source);
        let before = {
            let source = Arc::clone(&source);
            tokio::spawn(async move { source.verifier("acct_r").await.map(|v| v.is_some()) })
        };
        until(|| waiting(&source, "acct_r") == 1).await;
        assert!(!source.forget("acct_r"));
        let after = {
            let source = Arc::clone(&source);
            tokio::spawn(async move { source.verifier("acct_r").await.map(|v| v.is_some()) })
        };
        until(|| waiting(&source, "acct_r") == 1 && calls.load(Ordering::SeqCst) == 2).await;
        // The lookup from before the call ends first: not cached.
        gate.add_permits(1);
        assert!(before.await.unwrap().unwrap());
        assert!(source.cache.get("acct_r").is_none());
        gate.add_permits(1);
        assert!(after.await.unwrap().unwrap());
        assert!(source.cache.get("acct_r").is_some());
        source.verifier("acct_r").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// Forgetting one account leaves a lookup of another, running then,
    /// to cache its answer.
    #[tokio::test]
    async fn forgetting_one_account_leaves_the_lookups_of_others_alone() {
        let (source, calls, gate) = gated();
        let source = Arc::new(source);
        let other = {
            let source = Arc::clone(&source);
            tokio::spawn(async move { source.verifier("acct_other").await.map(|v| v.is_some()) })
        };
        until(|| waiting(&source, "acct_other") == 1 && calls.load(Ordering::SeqCst) == 1).await;
        assert!(!source.forget("acct_changed"));
        gate.add_permits(1);
        assert!(other.await.unwrap().unwrap());
        assert!(source.cache.get("acct_other").is_some());
    }

    /// Deliveries waiting on a lookup that fails share its error, and the
    /// next delivery asks again. A lookup function that panics fails so
    /// too: one lookup, its error shared (before, each waiting delivery
    /// ran the lookup again in turn, and the account stayed exempt from
    /// the rate).
    #[tokio::test]
    async fn deliveries_waiting_on_a_failed_lookup_share_its_error_and_the_next_asks_again() {
        for panics in [false, true] {
            let calls = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&calls);
            let gate = Arc::new(Gate::new(0));
            let opened = Arc::clone(&gate);
            let source = Arc::new(CachedKeySource::new(move |_account: String| {
                counter.fetch_add(1, Ordering::SeqCst);
                let opened = Arc::clone(&opened);
                async move {
                    opened.acquire().await.unwrap().forget();
                    assert!(!panics, "the lookup function panics");
                    Err::<Option<Verifier>, _>("database down")
                }
            }));
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let source = Arc::clone(&source);
                tasks.push(tokio::spawn(async move {
                    source.verifier("acct_x").await.map(|v| v.is_some())
                }));
            }
            until(|| {
                source
                    .flights
                    .lock()
                    .unwrap()
                    .get("acct_x")
                    .is_some_and(|f| Arc::strong_count(f) == 9)
            })
            .await;
            gate.add_permits(100);
            let expected = if panics { "panicked" } else { "database down" };
            for task in tasks {
                let error = task.await.unwrap().unwrap_err();
                assert!(!error.is_limited());
                assert!(error.to_string().contains(expected), "{error}");
            }
            assert_eq!(calls.load(Ordering::SeqCst), 1, "panics: {panics}");
            assert!(!source.is_known("acct_x"));
            assert!(source.verifier("acct_x").await.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 2, "a failure is not cached");
        }
    }

    /// Three slots, one of them kept for known accounts: two lookups of
    /// names never found run, a third is not made.
    #[tokio::test]
    async fn past_the_concurrency_cap_a_lookup_is_not_made() {
        let (source, calls, gate) = gated();
        let source = Arc::new(source.max_concurrent_lookups(3).unwrap());
        let mut tasks = Vec::new();
        for account in ["acct_a", "acct_b"] {
            let source = Arc::clone(&source);
            tasks.push(tokio::spawn(async move {
                source.verifier(account).await.map(|v| v.is_some())
            }));
        }
        until(|| calls.load(Ordering::SeqCst) == 2).await;
        let error = source.verifier("acct_c").await.unwrap_err();
        assert!(error.is_limited(), "{error}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the third was not asked");
        gate.add_permits(3);
        for task in tasks {
            assert!(task.await.unwrap().unwrap());
        }
        // Room again.
        assert!(source.verifier("acct_c").await.unwrap().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_rate_a_lookup_is_not_made_until_a_token_is_earned() {
        let (source, calls, gate) = gated();
        let source = source.lookup_rate(2, 3).unwrap();
        gate.add_permits(1000);
        for n in 0..3 {
            assert!(source.verifier(&format!("acct_{n}")).await.is_ok(), "{n}");
        }
        let error = source.verifier("acct_3").await.unwrap_err();
        assert!(error.is_limited(), "{error}");
        // Cached accounts are answered whatever the rate.
        assert!(source.verifier("acct_0").await.unwrap().is_some());
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(source.verifier("acct_3").await.unwrap_err().is_limited());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(source.verifier("acct_3").await.unwrap().is_some());
        assert!(source.verifier("acct_4").await.unwrap_err().is_limited());
        // A quiet spell saves up the burst, no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        for n in 10..13 {
            assert!(source.verifier(&format!("acct_{n}")).await.is_ok(), "{n}");
        }
        assert!(source.verifier("acct_13").await.unwrap_err().is_limited());
        assert_eq!(calls.load(Ordering::SeqCst), 7);
    }

    /// A flood of made-up names takes every token of the rate and every
    /// lookup slot; an account known until lately is still answered once
    /// its cache entry ends: looked up without a token, or, with every slot
    /// taken, with its expired keys, for one ttl at most.
    #[tokio::test(start_paused = true)]
    async fn a_flood_of_made_up_names_never_locks_a_known_account_out() {
        let (source, calls, gate) = gated();
        let ttl = Duration::from_secs(60);
        let source = Arc::new(
            source
                .ttl(ttl)
                .unwrap()
                .lookup_rate(1, 1)
                .unwrap()
                .max_concurrent_lookups(1)
                .unwrap(),
        );
        gate.add_permits(1);
        assert!(source.verifier("acct_known").await.unwrap().is_some());
        // A minute on, its entry has just ended, and a flood of made-up
        // names spends the rate's one token.
        tokio::time::advance(ttl + Duration::from_millis(1)).await;
        gate.add_permits(1);
        assert!(source.verifier("acct_made_up_0").await.is_ok());
        assert!(source
            .verifier("acct_made_up_1")
            .await
            .unwrap_err()
            .is_limited());
        // Known until lately: looked up again at once, with no token.
        gate.add_permits(1);
        assert!(source.verifier("acct_known").await.unwrap().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        // Ended again, and every slot is taken by a made-up name's lookup,
        // held open.
        tokio::time::advance(ttl + Duration::from_millis(1)).await;
        let holding = {
            let source = Arc::clone(&source);
            tokio::spawn(async move { source.verifier("acct_made_up_2").await.is_ok() })
        };
        until(|| calls.load(Ordering::SeqCst) == 4).await;
        assert!(source
            .verifier("acct_made_up_3")
            .await
            .unwrap_err()
            .is_limited());
        // The known account's expired keys answer, with no lookup.
        assert!(source.verifier("acct_known").await.unwrap().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // But not past one ttl after they expired.
        tokio::time::advance(ttl).await;
        assert!(source
            .verifier("acct_known")
            .await
            .unwrap_err()
            .is_limited());
        gate.add_permits(1);
        assert!(holding.await.unwrap());
    }

    /// Made-up names held open by a slow source take the slots strangers
    /// may take, never the last: a known account whose keys expired long
    /// ago (so they no longer answer for it) is still looked up.
    #[tokio::test(start_paused = true)]
    async fn made_up_names_leave_known_accounts_a_slot() {
        assert_eq!(
            [1, 2, 4, 7, 8, 16, 100].map(reserved_lookups),
            [0, 1, 1, 1, 2, 4, 25]
        );
        let (source, calls, gate) = gated();
        let ttl = Duration::from_secs(60);
        let source = Arc::new(source.ttl(ttl).unwrap().max_concurrent_lookups(4).unwrap());
        gate.add_permits(1);
        assert!(source.verifier("acct_known").await.unwrap().is_some());
        // Past its entry and a ttl after it: its keys no longer answer.
        tokio::time::advance(ttl * 2 + Duration::from_millis(1)).await;
        let spawn = |account: &'static str| {
            let source = Arc::clone(&source);
            tokio::spawn(async move { source.verifier(account).await })
        };
        let holding: Vec<_> = ["made_up_0", "made_up_1", "made_up_2"]
            .into_iter()
            .map(spawn)
            .collect();
        until(|| calls.load(Ordering::SeqCst) == 4).await;
        // A fourth made-up name finds no slot it may take, and no lookup
        // is made (before the slots were kept, it took the last one).
        let fourth = spawn("made_up_3");
        until(|| fourth.is_finished() || calls.load(Ordering::SeqCst) > 4).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "a stranger took the kept slot"
        );
        assert!(fourth.await.unwrap().unwrap_err().is_limited());
        // The known account takes the slot kept for it.
        let known = spawn("acct_known");
        until(|| calls.load(Ordering::SeqCst) == 5).await;
        gate.add_permits(4);
        assert!(known.await.unwrap().unwrap().is_some());
        for held in holding {
            assert!(held.await.unwrap().unwrap().is_none());
        }
    }

    /// An account a lookup found is looked up again without a token of the
    /// rate however long it was idle (its keys long expired): a flood of
    /// names the source does not know, which never get known, does not
    /// lock it out. With a ttl of zero (a lookup every time) every lookup
    /// takes a token.
    #[tokio::test(start_paused = true)]
    async fn an_account_found_once_is_not_held_to_the_rate() {
        for ttl in [Duration::from_secs(60), Duration::ZERO] {
            let (source, calls, gate) = gated();
            let source = source.ttl(ttl).unwrap().lookup_rate(1, 1).unwrap();
            gate.add_permits(1);
            assert!(source.verifier("acct_known").await.unwrap().is_some());
            // Idle far longer than its keys and the ttl after them; a name
            // the source does not know spends the rate's one token.
            tokio::time::advance(Duration::from_secs(600)).await;
            gate.add_permits(1);
            assert!(source.verifier("made_up_0").await.unwrap().is_none());
            assert!(!source.is_known("made_up_0"));
            assert!(source.verifier("made_up_1").await.unwrap_err().is_limited());
            gate.add_permits(1);
            let again = source.verifier("acct_known").await;
            if ttl.is_zero() {
                assert!(again.unwrap_err().is_limited(), "ttl 0: a token each time");
                assert_eq!(calls.load(Ordering::SeqCst), 2);
            } else {
                assert!(again.unwrap().is_some());
                assert_eq!(calls.load(Ordering::SeqCst), 3);
            }
        }
    }

    /// A lookup that fails forgets the account, when its keys no longer
    /// answer for it (`stale_if_error` zero here): the next one waits for
    /// the rate, so a flood of its name cannot make one lookup after
    /// another of a struggling source.
    ///
    /// So too while its keys, expired less than a `ttl` ago, are still
    /// cached (61 s after a lookup with a `ttl` of 60 s): before, those
    /// keys let every lookup of its name skip the rate, each failing
    /// against the struggling source.
    #[tokio::test(start_paused = true)]
    async fn a_failed_lookup_forgets_the_account() {
        for since in [Duration::from_secs(61), Duration::from_secs(600)] {
            failing_lookups_wait_for_the_rate(since).await;
        }
    }

    /// A lookup given up on (its delivery's time ran out while the source
    /// was slow) forgets the account too: the next lookup waits for the
    /// rate. Before, the account stayed known, and every delivery naming
    /// it started a lookup of its own, without a token, against the slow
    /// source.
    #[tokio::test(start_paused = true)]
    async fn a_lookup_given_up_on_forgets_the_account() {
        let hangs = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hanging = Arc::clone(&hangs);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let source = CachedKeySource::new(move |_account: String| {
            let hang = hanging.load(Ordering::SeqCst);
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok::<_, std::io::Error>(Some(Verifier::new("k").unwrap()))
            }
        })
        .ttl(Duration::from_secs(60))
        .unwrap()
        .lookup_rate(1, 1)
        .unwrap();
        assert!(source.verifier("acct_a").await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(600)).await;
        hangs.store(true, Ordering::SeqCst);
        // A tenth of a second each: less than the rate's second.
        let gave_up = tokio::time::timeout(Duration::from_millis(100), source.verifier("acct_a"));
        assert!(gave_up.await.is_err(), "the lookup hangs");
        assert!(!source.is_known("acct_a"));
        // The next takes the refilled token (and is given up on too); the
        // one after waits for the rate, starting no lookup.
        let again = tokio::time::timeout(Duration::from_millis(100), source.verifier("acct_a"));
        assert!(again.await.is_err());
        let limited = tokio::time::timeout(Duration::from_millis(100), source.verifier("acct_a"))
            .await
            .expect("a lookup started, without a token");
        assert!(limited.unwrap_err().is_limited());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// [`a_failed_lookup_forgets_the_account`], its lookups failing `since`
    /// after the one that found it.
    async fn failing_lookups_wait_for_the_rate(since: Duration) {
        let fails = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failing = Arc::clone(&fails);
        let source = CachedKeySource::new(move |_account: String| {
            let fail = failing.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err(std::io::Error::other("the database is down"))
                } else {
                    Ok(Some(Verifier::new("k").unwrap()))
                }
            }
        })
        .ttl(Duration::from_secs(60))
        .unwrap()
        .lookup_rate(1, 1)
        .unwrap()
        .stale_if_error(Duration::ZERO)
        .unwrap();
        assert!(source.verifier("acct_a").await.unwrap().is_some());
        assert!(source.is_known("acct_a"));
        tokio::time::advance(since).await;
        fails.store(true, Ordering::SeqCst);
        let first = source.verifier("acct_a").await.unwrap_err();
        assert!(!first.is_limited(), "failed, without a token ({since:?})");
        assert!(!source.is_known("acct_a"));
        // The token refilled meanwhile is taken by the next failure, and
        // the one after waits for the rate.
        let second = source.verifier("acct_a").await.unwrap_err();
        assert!(!second.is_limited(), "{since:?}");
        let third = source.verifier("acct_a").await.unwrap_err();
        assert!(third.is_limited(), "{since:?}");
    }

    /// With `stale_if_error` set, while its lookups fail (an error or a
    /// panic), an account a lookup found is verified with the keys found
    /// last, for `stale_if_error` past their `ttl`, asked about again every
    /// 30 s, never on every delivery; the outage is logged when it starts
    /// and when it ends. Past `stale_if_error` a failure is an error, and
    /// the 30 s between two lookups end with it.
    #[test]
    fn a_known_accounts_keys_answer_while_its_lookups_fail() {
        let lines = crate::outage::tests::logged(|| async {
            let fails = Arc::new(std::sync::atomic::AtomicU8::new(0));
            let failing = Arc::clone(&fails);
            let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counted = Arc::clone(&calls);
            let source = CachedKeySource::new(move |_account: String| {
                let fail = failing.load(Ordering::SeqCst);
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    match fail {
                        0 => Ok(Some(Verifier::new("k").unwrap())),
                        1 => Err(std::io::Error::other("the database is down")),
                        _ => panic!("the lookup panicked"),
                    }
                }
            })
            .ttl(Duration::from_secs(60))
            .unwrap()
            .lookup_rate(1, 1)
            .unwrap()
            .stale_if_error(Duration::from_secs(3600))
            .unwrap();
            assert!(source.verifier("acct_a").await.unwrap().is_some());
            tokio::time::advance(Duration::from_secs(600)).await;
            for fail in [1, 2] {
                fails.store(fail, Ordering::SeqCst);
                let before = calls.load(Ordering::SeqCst);
                assert!(source.verifier("acct_a").await.unwrap().is_some(), "{fail}");
                assert!(source.is_known("acct_a"));
                // Not asked again on the next deliveries, within 30 s.
                for _ in 0..10 {
                    assert!(source.verifier("acct_a").await.unwrap().is_some());
                }
                assert_eq!(calls.load(Ordering::SeqCst), before + 1);
                tokio::time::advance(Duration::from_secs(30)).await;
            }
            // Answering again: its keys are cached anew.
            fails.store(0, Ordering::SeqCst);
            assert!(source.verifier("acct_a").await.unwrap().is_some());
            let answered = calls.load(Ordering::SeqCst);
            assert_eq!(answered, 4);
            // An hour past the end of their ttl, the keys answer no more.
            tokio::time::advance(Duration::from_secs(60 + 3600)).await;
            fails.store(1, Ordering::SeqCst);
            let error = source.verifier("acct_a").await.unwrap_err();
            assert!(
                error.to_string().contains("the database is down"),
                "{error}"
            );
            assert!(!source.is_known("acct_a"));

            // The 30 s before the next lookup end where the stale keys do.
            fails.store(0, Ordering::SeqCst);
            let brief = CachedKeySource::new({
                let fails = Arc::clone(&fails);
                move |_account: String| {
                    let fail = fails.load(Ordering::SeqCst) != 0;
                    async move {
                        if fail {
                            Err(std::io::Error::other("down"))
                        } else {
                            Ok(Some(Verifier::new("k").unwrap()))
                        }
                    }
                }
            })
            .ttl(Duration::from_secs(60))
            .unwrap()
            .stale_if_error(Duration::from_secs(1))
            .unwrap();
            assert!(brief.verifier("acct_b").await.unwrap().is_some());
            fails.store(1, Ordering::SeqCst);
            tokio::time::advance(Duration::from_millis(60_500)).await;
            assert!(brief.verifier("acct_b").await.unwrap().is_some());
            tokio::time::advance(Duration::from_millis(600)).await;
            assert!(brief.verifier("acct_b").await.is_err());
        });
        let told = |what: &str| lines.iter().filter(|line| line.contains(what)).count();
        // Once for each source's outage; the first one's end told.
        assert_eq!(told("clink key source unavailable"), 2, "{lines:#?}");
        assert_eq!(told("clink key source available again"), 1, "{lines:#?}");
    }

    #[tokio::test]
    async fn the_precheck_refuses_names_before_any_lookup() {
        let (source, calls, gate) = gated();
        let source = source.precheck(|account| account.starts_with("acct_"));
        gate.add_permits(10);
        for _ in 0..100 {
            assert!(source.verifier("someone_else").await.unwrap().is_none());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(source.cache.is_empty(), "a refused name is not cached");
        assert!(source.verifier("acct_1").await.unwrap().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_dropped_delivery_leaves_nothing_behind_and_a_waiting_one_takes_over() {
        let (source, calls, gate) = gated();
        // Never polled.
        drop(source.verifier("acct_a"));
        assert!(source.flights.lock().unwrap().is_empty());
        // Dropped while its lookup waits, with another delivery waiting too.
        let mut first = source.verifier("acct_a");
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(first.as_mut().poll(&mut cx).is_pending());
        let mut second = source.verifier("acct_a");
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        drop(first);
        // The one waiting runs the lookup again, in the same flight, still
        // in the map: a delivery now joins it, and forgetting the account
        // marks it, so that its answer, perhaps of the keys from before,
        // is not cached.
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(waiting(&source, "acct_a"), 1);
        let mut third = source.verifier("acct_a");
        assert!(third.as_mut().poll(&mut cx).is_pending());
        assert_eq!(waiting(&source, "acct_a"), 2);
        source.forget("acct_a");
        gate.add_permits(2);
        assert!(second.await.unwrap().is_some());
        assert!(third.await.unwrap().is_some());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the waiting one looked up again, once for both"
        );
        assert!(
            source.cache.get("acct_a").is_none(),
            "forgotten, not cached"
        );
        assert!(source.flights.lock().unwrap().is_empty());
        // Defaults as documented.
        assert_eq!(source.max_lookups, DEFAULT_MAX_CONCURRENT_LOOKUPS);
        assert_eq!(source.rate.per_second, DEFAULT_LOOKUPS_PER_SECOND);
        assert_eq!(source.rate.burst, DEFAULT_LOOKUP_BURST);
    }

    #[test]
    fn limits_no_lookup_could_work_with_are_refused() {
        let (source, _, _) = gated();
        assert!(source.max_concurrent_lookups(0).is_err());
        let (source, _, _) = gated();
        assert!(source.lookup_rate(0, 1).is_err());
        let (source, _, _) = gated();
        assert!(source.lookup_rate(1, 0).is_err());
    }

    #[test]
    fn dot_and_dot_dot_are_not_accounts() {
        for bad in [".", ".."] {
            assert!(!is_valid_account(bad), "{bad}");
            assert!(KeyMap::new()
                .insert(bad, Verifier::new("k").unwrap())
                .is_err());
            let p = http::Request::post(format!("/webhooks/clink/{bad}"))
                .body(())
                .unwrap()
                .into_parts()
                .0;
            assert_eq!(AccountFrom::LastPathSegment.account(&p), None);
        }
        for good in ["a.b", "...", ".a", "a.", "acct_1"] {
            assert!(is_valid_account(good), "{good}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::post(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    /// Rotating an account's key in a map: the new key at once, the old
    /// one for the grace period only; an unknown account stays unknown.
    #[test]
    fn a_key_map_rotates_an_accounts_key_and_keeps_the_old_one_for_the_grace() {
        use std::time::UNIX_EPOCH;

        use crate::signature::sign;

        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |t: std::time::SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis()
                .to_string()
        };
        let map = KeyMap::new();
        map.insert("acct_1", Verifier::new("whsec_old").unwrap())
            .unwrap();
        let grace = Duration::from_secs(60);
        let new_key = || SigningKey::new("whsec_new").unwrap();
        assert!(map.rotate_at("acct_1", new_key(), grace, now));
        assert!(!map.rotate_at("acct_2", new_key(), grace, now));
        assert!(!map.rotate("acct_2", new_key(), grace));
        assert!(
            map.get("acct_2").is_none(),
            "an unknown account stays unknown"
        );

        let verifier = map.get("acct_1").unwrap();
        let body = br#"{"id":"evt_1","type":"order.succeeded","data":{}}"#;
        for (secret, when, accepted) in [
            ("whsec_new", now, true),
            ("whsec_old", now + grace / 2, true),
            ("whsec_new", now + 2 * grace, true),
            ("whsec_old", now + 2 * grace, false),
        ] {
            let ts = at(when);
            let result = verifier.verify_at(&ts, &sign(secret, &ts, body), body, when);
            assert_eq!(
                result.is_ok(),
                accepted,
                "{secret} at +{:?}",
                when.duration_since(now)
            );
        }

        // `rotate` rotates as of now: the new key is accepted at once.
        assert!(map.rotate("acct_1", SigningKey::new("whsec_newer").unwrap(), grace));
        let ts = crate::Timestamp::now().as_millis().to_string();
        let newest = map.get("acct_1").unwrap();
        assert!(newest
            .verify(&ts, &sign("whsec_newer", &ts, body), body)
            .is_ok());
        assert!(newest
            .verify(&ts, &sign("whsec_new", &ts, body), body)
            .is_ok());
        assert!(newest
            .verify(&ts, &sign("whsec_old", &ts, body), body)
            .is_err());
    }

    /// A key map holds what was inserted until it is removed, shared by its
    /// clones, and answers the layer's lookups from it.
    #[tokio::test]
    async fn a_key_map_keeps_accounts_until_removed_and_clones_share_them() {
        let map = KeyMap::new();
        assert!(map.is_empty());
        assert_eq!(map.len(), 0);
        let clone = map.clone();
        clone
            .insert("acct_1", Verifier::new("whsec_a").unwrap())
            .unwrap();
        clone
            .insert("acct_2", Verifier::new("whsec_b").unwrap())
            .unwrap();
        assert!(map
            .insert("a:b", Verifier::new("whsec_c").unwrap())
            .is_err());
        assert_eq!(map.len(), 2);
        assert!(!map.is_empty());
        let one = map.get("acct_1").unwrap();
        let names =
            |verifier: &Verifier| verifier.key_names().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(names(&one), names(&Verifier::new("whsec_a").unwrap()));
        assert_ne!(names(&one), names(&Verifier::new("whsec_b").unwrap()));
        assert!(map.get("acct_3").is_none());
        assert!(Arc::ptr_eq(
            &map.verifier("acct_1").await.unwrap().unwrap(),
            &one
        ));
        assert!(map.verifier("acct_3").await.unwrap().is_none());

        assert!(map.remove("acct_1"));
        assert!(!map.remove("acct_1"), "already gone");
        assert!(clone.get("acct_1").is_none());
        assert_eq!(clone.len(), 1);
        assert!(clone.remove("acct_2"));
        assert!(map.is_empty());
    }

    /// What a key source's errors say, and what they lead back to.
    #[test]
    fn key_source_errors_say_what_failed_and_keep_their_source() {
        use std::error::Error as _;

        let limited = KeySourceError::limited();
        assert!(limited.is_limited());
        assert!(limited
            .to_string()
            .contains("too many lookups of uncached accounts"));
        assert!(limited
            .source()
            .unwrap()
            .to_string()
            .contains("the lookup was not made"));
        let failed = KeySourceError::new("connection refused");
        assert!(!failed.is_limited());
        assert_eq!(
            failed.to_string(),
            "the signing keys could not be looked up: connection refused"
        );
        assert_eq!(failed.source().unwrap().to_string(), "connection refused");
    }

    /// A key map's `Debug` counts its accounts and shows no secret.
    #[test]
    fn a_key_map_debugs_its_size_without_secrets() {
        let map = KeyMap::new();
        map.insert("acct_1", Verifier::new("whsec_secret").unwrap())
            .unwrap();
        map.insert("acct_2", Verifier::new("whsec_secret").unwrap())
            .unwrap();
        let debug = format!("{map:?}");
        assert!(debug.starts_with("KeyMap { accounts: 2"), "{debug}");
        assert!(!debug.contains("whsec"), "{debug}");
    }

    #[test]
    fn accounts_come_from_where_they_are_configured_and_must_be_plain() {
        let p = parts(
            "/webhooks/clink/acct_1",
            &[("x-account", "acct-2"), ("host", "acct.3:8080")],
        );
        fn of(from: &AccountFrom, p: &http::request::Parts) -> Option<String> {
            from.account(p).map(std::borrow::Cow::into_owned)
        }
        assert_eq!(
            of(&AccountFrom::LastPathSegment, &p).as_deref(),
            Some("acct_1")
        );
        assert_eq!(
            of(&AccountFrom::PathSegment(1), &p).as_deref(),
            Some("clink")
        );
        assert_eq!(of(&AccountFrom::PathSegment(9), &p), None);
        let header = AccountFrom::Header(HeaderName::from_static("x-account"));
        assert_eq!(of(&header, &p).as_deref(), Some("acct-2"));
        assert_eq!(of(&AccountFrom::Host, &p).as_deref(), Some("acct.3"));
        // A host is one whatever its case; a path or a header keeps its own.
        let upper = parts(
            "/webhooks/clink/ACCT_1",
            &[("x-account", "Acct-2"), ("host", "ACCT.3:8080")],
        );
        assert_eq!(of(&AccountFrom::Host, &upper).as_deref(), Some("acct.3"));
        assert_eq!(
            of(&AccountFrom::LastPathSegment, &upper).as_deref(),
            Some("ACCT_1")
        );
        assert_eq!(of(&header, &upper).as_deref(), Some("Acct-2"));
        for bad in [
            "/webhooks/clink/",
            "/webhooks/clink/a%0Ab",
            "/webhooks/clink/a:b",
        ] {
            let bad_parts = parts(bad, &[]);
            assert_eq!(of(&AccountFrom::LastPathSegment, &bad_parts), None, "{bad}");
        }
        assert!(!is_valid_account(&"a".repeat(MAX_ACCOUNT_LEN + 1)));
        assert!(KeyMap::new()
            .insert("a b", Verifier::new("k").unwrap())
            .is_err());
    }

    #[tokio::test]
    async fn the_cache_asks_once_per_ttl_and_remembers_unknown_accounts() {
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let source = CachedKeySource::new(move |account: String| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, std::io::Error>((account == "known").then(|| Verifier::new("k").unwrap()))
            }
        });
        for _ in 0..3 {
            assert!(source.verifier("known").await.unwrap().is_some());
            assert!(source.verifier("unknown").await.unwrap().is_none());
        }
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn cached_answers_expire_and_the_cache_stays_bounded() {
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let source = CachedKeySource::new(move |_account: String| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(Some(Verifier::new("k").unwrap())) }
        })
        .ttl(Duration::from_secs(10))
        .unwrap()
        .capacity(2)
        .unwrap();
        source.verifier("a").await.unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        source.verifier("a").await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        for account in ["b", "c", "d"] {
            source.verifier(account).await.unwrap();
        }
        assert!(source.cache.len() <= 2);
    }

    #[tokio::test]
    async fn a_failed_lookup_is_an_error_and_is_not_cached() {
        let source = CachedKeySource::new(|_account: String| async {
            Err::<Option<Verifier>, _>("database down")
        });
        let error = source.verifier("a").await.unwrap_err();
        assert!(error.to_string().contains("database down"));
        assert!(source.cache.is_empty());
    }

    /// The TTLs may be anything up to ten years, that included; the
    /// cache's `Debug` shows its settings and how much it holds.
    #[tokio::test]
    async fn ttls_are_bounded_at_ten_years_and_the_cache_debugs_its_settings() {
        let source = || {
            CachedKeySource::new(|_account: String| async {
                Ok::<_, std::io::Error>(Some(Verifier::new("whsec_secret").unwrap()))
            })
        };
        let max = crate::store::MAX_TTL;
        assert!(source().ttl(max).is_ok());
        assert!(source().negative_ttl(max).is_ok());
        assert!(source().ttl(max + Duration::from_nanos(1)).is_err());
        assert!(source()
            .negative_ttl(max + Duration::from_nanos(1))
            .is_err());
        let cached = source()
            .ttl(Duration::from_secs(7))
            .unwrap()
            .capacity(3)
            .unwrap();
        cached.verifier("acct_1").await.unwrap().unwrap();
        let debug = format!("{cached:?}");
        assert!(
            debug.starts_with("CachedKeySource { cached: 1, ttl: 7s,"),
            "{debug}"
        );
        assert!(debug.contains("capacity: 3"), "{debug}");
        assert!(!debug.contains("whsec"), "{debug}");
    }

    type Fetch = Box<
        dyn Fn(String) -> std::future::Ready<Result<Option<Verifier>, std::io::Error>>
            + Send
            + Sync,
    >;

    const TTL: Duration = Duration::from_secs(10);
    const NEGATIVE_TTL: Duration = Duration::from_secs(20);
    const MS: Duration = Duration::from_millis(1);

    /// A cache of `capacity` accounts over a lookup that knows the accounts
    /// named `known*`, and how many lookups it made.
    fn counting(capacity: usize) -> (CachedKeySource<Fetch>, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let fetch: Fetch = Box::new(move |account: String| {
            counter.fetch_add(1, Ordering::SeqCst);
            let known = account.starts_with("known");
            std::future::ready(Ok(known.then(|| Verifier::new("k").unwrap())))
        });
        let source = CachedKeySource::new(fetch)
            .ttl(TTL)
            .unwrap()
            .negative_ttl(NEGATIVE_TTL)
            .unwrap()
            .capacity(capacity)
            .unwrap();
        (source, asked)
    }

    /// The accounts cached, sorted.
    fn cached(source: &CachedKeySource<Fetch>) -> Vec<String> {
        let mut accounts: Vec<String> = source.cache.iter().map(|e| e.key().clone()).collect();
        accounts.sort();
        accounts
    }

    /// Asks for `account`, checking the answer; whether it was looked up
    /// (rather than answered from the cache).
    async fn ask(source: &CachedKeySource<Fetch>, asked: &AtomicUsize, account: &str) -> bool {
        let before = asked.load(Ordering::SeqCst);
        let verifier = source.verifier(account).await.unwrap();
        assert_eq!(
            verifier.is_some(),
            account.starts_with("known"),
            "{account}"
        );
        assert!(source.cache.len() <= source.capacity, "over capacity");
        asked.load(Ordering::SeqCst) > before
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_cached_until_its_ttl_ends_exactly() {
        for (account, ttl) in [("known_a", TTL), ("unknown_a", NEGATIVE_TTL)] {
            let (source, asked) = counting(4);
            assert!(ask(&source, &asked, account).await, "first asked");
            tokio::time::advance(ttl - MS).await;
            assert!(
                !ask(&source, &asked, account).await,
                "{account}: 1 ms before the TTL"
            );
            tokio::time::advance(MS).await;
            assert!(
                ask(&source, &asked, account).await,
                "{account}: exactly at the TTL"
            );
            // Cached again from now: one ms after its TTL, asked again.
            tokio::time::advance(ttl - MS).await;
            assert!(
                !ask(&source, &asked, account).await,
                "{account}: 1 ms before"
            );
            tokio::time::advance(2 * MS).await;
            assert!(
                ask(&source, &asked, account).await,
                "{account}: 1 ms after the TTL"
            );
            assert_eq!(asked.load(Ordering::SeqCst), 3);
        }
    }

    /// A cache with room left sweeps nothing (no pass over every entry per
    /// lookup): an expired answer stays until room is needed.
    #[tokio::test(start_paused = true)]
    async fn a_cache_with_room_left_sweeps_nothing() {
        let (source, asked) = counting(3);
        ask(&source, &asked, "known_a").await;
        tokio::time::advance(TTL + MS).await;
        ask(&source, &asked, "known_b").await;
        assert_eq!(cached(&source), ["known_a", "known_b"]);
        ask(&source, &asked, "known_c").await;
        assert_eq!(cached(&source), ["known_a", "known_b", "known_c"]);
        // Full now: the expired answer makes the room.
        ask(&source, &asked, "known_d").await;
        assert_eq!(cached(&source), ["known_b", "known_c", "known_d"]);
    }

    /// Concurrent lookups: 1 up to tokio's most permits, those included.
    #[test]
    fn concurrent_lookups_are_bounded_by_what_a_semaphore_holds() {
        let source =
            || CachedKeySource::new(|_account: String| async { Ok::<_, std::io::Error>(None) });
        assert!(source().max_concurrent_lookups(0).is_err());
        assert!(source().max_concurrent_lookups(1).is_ok());
        assert!(source()
            .max_concurrent_lookups(Semaphore::MAX_PERMITS)
            .is_ok());
        assert!(source()
            .max_concurrent_lookups(Semaphore::MAX_PERMITS + 1)
            .is_err());
    }

    /// A full cache drops what helps no one first (an unknown account's
    /// answer that ended, a known one's keys that ended more than a ttl
    /// ago), then unknown accounts, and only then, for a known account,
    /// the known one that ends soonest; an unknown account's answer takes
    /// no known account's place: a known account's keys that ended lately
    /// outlast made-up names, whose flood they let it through.
    #[tokio::test(start_paused = true)]
    async fn a_full_cache_drops_unknown_accounts_before_known_ones() {
        let (source, asked) = counting(3);
        ask(&source, &asked, "known_a").await; // expires at 10 s
        ask(&source, &asked, "unknown_u").await; // at 20 s
        tokio::time::advance(Duration::from_secs(1)).await;
        ask(&source, &asked, "known_b").await; // at 11 s
        assert_eq!(cached(&source), ["known_a", "known_b", "unknown_u"]);

        // At 10 s exactly, known_a has expired, lately: the unknown account
        // goes, not known_a.
        tokio::time::advance(Duration::from_secs(9)).await;
        ask(&source, &asked, "known_c").await; // at 20 s
        assert_eq!(cached(&source), ["known_a", "known_b", "known_c"]);

        // Only known accounts: the one that ends soonest goes, each time.
        tokio::time::advance(MS).await;
        ask(&source, &asked, "known_d").await; // at 20.001 s
        assert_eq!(cached(&source), ["known_b", "known_c", "known_d"]);
        tokio::time::advance(MS).await;
        ask(&source, &asked, "known_e").await; // at 20.002 s
        assert_eq!(cached(&source), ["known_c", "known_d", "known_e"]);

        // An unknown account's answer takes no known account's place: with
        // no room, it is not cached (and asked again next time).
        assert!(ask(&source, &asked, "unknown_v").await);
        assert_eq!(cached(&source), ["known_c", "known_d", "known_e"]);
        assert!(ask(&source, &asked, "unknown_v").await);
        ask(&source, &asked, "known_f").await;
        assert_eq!(cached(&source), ["known_d", "known_e", "known_f"]);

        // The cached ones are answered from the cache, the dropped one is asked again.
        let before = asked.load(Ordering::SeqCst);
        for account in ["known_d", "known_e", "known_f"] {
            assert!(!ask(&source, &asked, account).await, "{account}");
        }
        assert_eq!(asked.load(Ordering::SeqCst), before);
        assert!(ask(&source, &asked, "known_c").await);
        assert_eq!(cached(&source), ["known_c", "known_e", "known_f"]);

        // Keys that ended more than a ttl ago help no one: they go first.
        tokio::time::advance(Duration::from_secs(25)).await;
        ask(&source, &asked, "unknown_w").await;
        assert_eq!(cached(&source), ["unknown_w"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_never_holds_more_than_its_capacity() {
        for capacity in [1, 2, 3] {
            let (source, asked) = counting(capacity);
            for i in 0..10 {
                let account = if i % 3 == 0 {
                    format!("unknown_{i}")
                } else {
                    format!("known_{i}")
                };
                let only_known = source.cache.len() == capacity
                    && source.cache.iter().all(|entry| entry.verifier.is_some());
                assert!(ask(&source, &asked, &account).await);
                assert_eq!(
                    source.cache.len(),
                    (i + 1).min(capacity),
                    "capacity {capacity}"
                );
                // The newest is kept, but an unknown account's answer takes
                // no known account's place.
                let kept = !(only_known && account.starts_with("unknown"));
                assert_eq!(source.cache.contains_key(&account), kept, "{account}");
                tokio::time::advance(MS).await;
            }
            // Once every answer has expired, a new one makes room by dropping them all.
            tokio::time::advance(NEGATIVE_TTL).await;
            assert!(ask(&source, &asked, "known_9").await);
            assert_eq!(source.cache.len(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn all_unknown_accounts_make_room_together() {
        let (source, asked) = counting(3);
        for account in ["unknown_1", "known_1", "unknown_2"] {
            ask(&source, &asked, account).await;
        }
        ask(&source, &asked, "known_2").await;
        assert_eq!(cached(&source), ["known_1", "known_2"]);
    }
}
