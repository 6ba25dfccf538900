//! [`Client`] and [`ClientBuilder`]: the keys, the transport, retries
//! within a deadline, single flight and the rate budget.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::endpoints::WebhookSecret;
use super::error::{ApiError, ApiErrorKind};
use super::keys::{scrub, ApiKey, Environment};
use crate::ConfigError;

/// The default time one request may take, connection included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time a call may take, its retries and waits included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// The default rate budget: requests per second, across every call of
/// the client and its clones.
pub const DEFAULT_RATE: u32 = 10;
/// The default number of attempts a read gets.
pub const DEFAULT_ATTEMPTS: u32 = 4;
/// The largest answer read; a larger one is a [`Decode`](ApiErrorKind::Decode) error.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// How long the client keeps calling with an older key after the newest
/// was refused, before it tries the newest again.
const PREFER_OLDER_FOR: Duration = Duration::from_secs(60);
/// The first wait between attempts of a read; it doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between attempts of a read.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const TIMESTAMP: HeaderName = HeaderName::from_static("x-timestamp");

type Https = hyper_rustls::HttpsConnector<HttpConnector>;
type Http = hyper_util::client::legacy::Client<Https, Full<Bytes>>;

/// A client of Clink's merchant API: the current state of orders, refunds,
/// subscriptions, invoices and checkout sessions, and the merchant's
/// webhook endpoints. Build it with [`Client::builder`] or
/// [`Client::from_env`]; it is cheap to clone (clones share the
/// connections, the rate budget and the calls in flight), so keep it in
/// your app's state.
///
/// Every call sends `X-API-KEY` (the newest active key, or for a minute
/// after it was refused, the older one that worked) and `X-Timestamp`
/// (epoch milliseconds). Reads are retried on 5xx, 429 and transport
/// failures with backoff and jitter, within the call's
/// [deadline](ClientBuilder::deadline); nothing else is retried, except a
/// call refused for its key, which is made once more with the next active
/// key (see [`ClientBuilder::key`]). A write, once sent, always has its
/// full [request timeout](ClientBuilder::request_timeout), however long it
/// waited for the rate budget (see [`ClientBuilder::deadline`]).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Vec<ApiKey>,
    environment: Environment,
    base: String,
    http: Http,
    request_timeout: Duration,
    deadline: Duration,
    attempts: u32,
    budget: RateBudget,
    flights: Flights,
    /// The key to start with, and until when, after the newest was refused.
    preferred: Mutex<Option<(usize, Instant)>>,
    /// The rotations under way, one at a time for each endpoint.
    rotations: super::rotation::Rotations,
}

impl Client {
    /// The rotations under way through this client and its clones.
    pub(super) fn rotations(&self) -> &super::rotation::Rotations {
        &self.inner.rotations
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Client")
            .field("environment", &inner.environment)
            .field("base_url", &inner.base)
            .field("keys", &inner.keys)
            .field("request_timeout", &inner.request_timeout)
            .field("deadline", &inner.deadline)
            .field("attempts", &inner.attempts)
            .field("rate", &inner.budget.rate)
            .finish_non_exhaustive()
    }
}

/// Settings for a [`Client`]; [`build`](Self::build) checks them all.
#[derive(Clone)]
pub struct ClientBuilder {
    keys: Vec<ApiKey>,
    environment: Environment,
    base_url: Option<String>,
    plain_http: bool,
    request_timeout: Duration,
    deadline: Duration,
    attempts: u32,
    rate: u32,
    burst: u32,
}

impl fmt::Debug for ClientBuilder {
    /// As derived, but a base URL's user info (which
    /// [`build`](Self::build) refuses) is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base_url = self.base_url.as_deref().map(without_user_info);
        f.debug_struct("ClientBuilder")
            .field("keys", &self.keys)
            .field("environment", &self.environment)
            .field("base_url", &base_url)
            .field("plain_http", &self.plain_http)
            .field("request_timeout", &self.request_timeout)
            .field("deadline", &self.deadline)
            .field("attempts", &self.attempts)
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish()
    }
}

/// `url` with what its authority holds before an `@` (a user and a
/// password) replaced by `[redacted]`, and its query or fragment too (a
/// token, say): the builder keeps the URL as given, which `build` may
/// refuse, and a password with a `/` in it ends no authority for a person
/// who typed it, so one shaped `user:password@` is taken up to its `@`.
fn without_user_info(url: &str) -> std::borrow::Cow<'_, str> {
    let start = url.find("://").map_or(0, |at| at + 3);
    let after = &url[start..];
    // The user info: up to an `@` in the authority as a URL reads it, or,
    // for a password that holds `/`, `?` or `#` (which end the authority
    // for a URL, not for the person who typed it), up to the last `@`
    // with a `:` before it.
    // Of the two, the later: a password may hold `@` as well. A host (and
    // port) follows the user info's `@`.
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let in_authority = after[..authority_end].rfind('@');
    let host_after = |at: usize| {
        let host = &after[at + 1..];
        let host = &host[..host.find(['/', '?', '#']).unwrap_or(host.len())];
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    };
    // Failing a host of plain letters (an underscore, a name not in
    // ASCII), the last `@` with a `:` before it: hiding too much beats
    // showing a password.
    let shaped = after
        .match_indices('@')
        .map(|(at, _)| at)
        .rfind(|&at| after[..at].contains(':') && host_after(at))
        .or_else(|| {
            let at = after.rfind('@')?;
            after[..at].contains(':').then_some(at)
        });
    let user_info = in_authority.max(shaped);
    let (shown, rest) = match user_info {
        Some(at) => (format!("{}[redacted]", &url[..start]), &after[at..]),
        None => (url[..start].to_owned(), after),
    };
    // A query or a fragment (a token, say) is not shown either.
    match rest.find(['?', '#']) {
        Some(mark) => format!("{shown}{}{}[redacted]", &rest[..mark], &rest[mark..=mark]).into(),
        None if user_info.is_some() => format!("{shown}{rest}").into(),
        None => url.into(),
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            environment: Environment::Sandbox,
            base_url: None,
            plain_http: false,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            attempts: DEFAULT_ATTEMPTS,
            rate: DEFAULT_RATE,
            burst: DEFAULT_RATE,
        }
    }
}

impl ClientBuilder {
    /// Adds a secret key. Give the newest first: the client calls with the
    /// first key that has not [expired](ApiKey::expires_at), and when Clink
    /// refuses it (HTTP 401, or envelope `code` 401) makes the call once
    /// more with the next active key, when the
    /// [rate budget](Self::rate_limit) has room for it before the call's
    /// [deadline](Self::deadline) (else the call fails with Clink's
    /// refusal, [`Unauthorized`](ApiErrorKind::Unauthorized), its message
    /// saying that the next key was not tried). A write is not made
    /// again when its refusal carries a new signing secret (Clink may have
    /// made or rotated all the same: the error holds the secret) or came
    /// with a 5xx status (its outcome is unknown); the refusal is the
    /// answer. When an older key works where the
    /// newest did not, a warning and the metric
    /// `clink_api_requests_total{key}` say so, and the client keeps using
    /// the working key for a minute before trying the newest again.
    #[must_use]
    pub fn key(mut self, key: ApiKey) -> Self {
        self.keys.push(key);
        self
    }

    /// The environment (default [`Sandbox`](Environment::Sandbox)): its
    /// base URL, and which key prefixes are refused.
    #[must_use]
    pub fn environment(mut self, environment: Environment) -> Self {
        self.environment = environment;
        self
    }

    /// Calls `url` instead of the environment's base URL: a proxy, or a
    /// fake API in tests. `https://` to any host, and `http://` to this
    /// machine (`localhost`, a loopback address); the keys are still
    /// checked against the [environment](Self::environment). A URL with a
    /// user, a query or a fragment is refused.
    #[must_use]
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Lets the [base URL](Self::base_url) be plain `http://` to a host
    /// other than this machine (default: refused), for a proxy on a
    /// network of your own that adds TLS on its way out: the key then
    /// crosses that network unencrypted.
    #[must_use]
    pub fn plain_http_beyond_this_machine(mut self, allow: bool) -> Self {
        self.plain_http = allow;
        self
    }

    /// The longest one request may take, from connecting to the last byte
    /// of the answer (default 10 s). A read gets less when less is left of
    /// its [deadline](Self::deadline); a write always gets all of it.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The longest a call may take, retries, backoff and waits for the
    /// rate budget included (default 30 s); one too long to represent
    /// ([`Duration::MAX`]) means no deadline. A read whose retries the
    /// deadline ends fails with its last attempt's error (Clink's `500`,
    /// say), not with the retry that found no time left.
    ///
    /// A write (POST, PUT, PATCH, DELETE) is bound by the deadline only
    /// until it is sent: it waits for room in the rate budget within the
    /// deadline, and once sent it has its full
    /// [request timeout](Self::request_timeout), even past the deadline, so
    /// a write can return up to one request timeout after it. A write cut
    /// off after it left may have been applied with its answer lost (a
    /// rotated signing secret nobody has), so one queued behind reads is
    /// never sent with only what they left of the deadline. A write that
    /// gets no room before its deadline fails as
    /// [`RateLimited`](ApiErrorKind::RateLimited) with nothing sent.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How many attempts a read gets in all (default 4; 1 turns retries off).
    #[must_use]
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// The rate budget: at most `per_second` requests a second on average,
    /// and `burst` at once after a quiet spell (default 10 and 10), across
    /// every call of the client and its clones. A call waits for room
    /// within its deadline, so a burst of stale events is spread out
    /// instead of using up the merchant's API limits; one that cannot get
    /// room in time fails as [`RateLimited`](ApiErrorKind::RateLimited),
    /// without sending its request. When Clink answers `429`, every call
    /// waits out its `Retry-After` (seconds or an HTTP date; without one,
    /// the retry's backoff; for the other calls at most 60 s), not the
    /// refused one only.
    #[must_use]
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.rate = per_second;
        self.burst = burst;
        self
    }

    /// The client.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when there is no key, a key's prefix names the other
    /// environment, the base URL is not an `http(s)://` URL, a duration is
    /// zero, the rate is zero or the system's root certificates cannot be
    /// loaded for an `https://` base URL. Nothing is sent before this
    /// returns.
    pub fn build(self) -> Result<Client, ConfigError> {
        if self.keys.is_empty() {
            return Err(ConfigError::new(
                "a Clink API client needs a secret key (CLINK_SECRET_KEY)",
            ));
        }
        for key in &self.keys {
            key.check_environment(self.environment)?;
        }
        let base = base_url(self.base_url.as_deref(), self.environment, self.plain_http)?;
        if self.request_timeout.is_zero() || self.deadline.is_zero() {
            return Err(ConfigError::new(
                "the Clink API client's request timeout and deadline must be more than zero",
            ));
        }
        if self.attempts == 0 || self.rate == 0 || self.burst == 0 {
            return Err(ConfigError::new(
                "the Clink API client's attempts, rate and burst must be at least 1",
            ));
        }
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector(base.starts_with("https://"))?);
        Ok(Client {
            inner: Arc::new(Inner {
                keys: self.keys,
                environment: self.environment,
                base,
                http,
                request_timeout: self.request_timeout,
                deadline: self.deadline,
                attempts: self.attempts,
                budget: RateBudget::new(self.rate, self.burst),
                flights: Flights::default(),
                preferred: Mutex::new(None),
                rotations: super::rotation::Rotations::default(),
            }),
        })
    }
}

/// Whether an answer with `code` (the HTTP status, or the envelope's) and
/// the words `msg` refuses the key: a `401`, or a `403` or `422` whose
/// short message names the key and says it is revoked, expired or invalid
/// (Clink's proposed contract answers `403 API key has been revoked` and
/// `422 Secret key is expired`); a `403` about anything else (an account's
/// rights, a proxy's page) is not one.
/// What an envelope's `code` other than 200, with its `msg`, says went
/// wrong.
fn kind_of_code(code: i64, msg: &str) -> ApiErrorKind {
    match code {
        code if refuses_the_key(code, msg) => ApiErrorKind::Unauthorized,
        404 => ApiErrorKind::NotFound,
        429 => ApiErrorKind::RateLimited,
        500..=599 => ApiErrorKind::Server,
        _ => ApiErrorKind::Envelope,
    }
}

fn refuses_the_key(code: i64, msg: &str) -> bool {
    let msg = msg.to_ascii_lowercase();
    let about_the_key = ["api key", "apikey", "api-key", "secret key"]
        .iter()
        .any(|words| msg.contains(words));
    let refused = ["revoked", "expired", "invalid"]
        .iter()
        .any(|words| msg.contains(words));
    code == 401 || matches!(code, 403 | 422) && about_the_key && refused && msg.len() <= 200
}

/// The base URL, checked, ending in `/`. Its errors do not show it: a
/// URL refused may hold a password or a token.
fn base_url(
    url: Option<&str>, environment: Environment, plain_http: bool,
) -> Result<String, ConfigError> {
    let Some(url) = url.map(str::trim).filter(|url| !url.is_empty()) else {
        return Ok(environment.base_url().to_owned());
    };
    let refused = |why: &str| ConfigError::new(format!("the Clink API base URL is refused: {why}"));
    if url.contains('#') {
        return Err(refused("it holds a fragment (#...)"));
    }
    let uri: Uri = url
        .parse()
        .map_err(|_| refused("it is not a URL such as https://api.example/clink/api"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(refused(
            "it must start with https:// (or http:// to this machine)",
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(refused("it names no host"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(refused("it must not hold a user or password"));
    }
    if uri.query().is_some() {
        return Err(refused("it must not hold a query (?...)"));
    }
    if uri.scheme_str() == Some("http") && !plain_http && !this_machine(uri.host()) {
        return Err(refused(
            "plain http:// to a host other than this machine would send the API key \
             unencrypted; use https://, or allow it for a proxy of your own that adds TLS \
             (ClientBuilder::plain_http_beyond_this_machine, CLINK_API_PLAIN_HTTP=1)",
        ));
    }
    // The scheme as `Uri` read it, in lower case (`HTTPS://` is https:
    // TLS and its roots are chosen by it).
    let scheme = uri.scheme_str().unwrap_or("https");
    let mut base = format!(
        "{scheme}://{}",
        url.split_once("://").map_or(url, |(_, rest)| rest)
    );
    if !base.ends_with('/') {
        base.push('/');
    }
    Ok(base)
}

/// Whether `host` is this machine: `localhost` or a loopback address.
fn this_machine(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let bare = host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// HTTPS with the system's roots, and plain HTTP for proxies and tests.
fn connector(https: bool) -> Result<Https, ConfigError> {
    // The process's default provider when the app set one, else *ring*: never
    // rustls' automatic choice, which panics when the app's dependencies
    // enable two providers.
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let builder = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(Arc::clone(&provider))
    {
        Ok(builder) => builder,
        Err(error) if https => {
            return Err(ConfigError::new(format!(
                "cannot load the system's root certificates for the Clink API: {error}"
            )))
        }
        // Only plain HTTP will be used: TLS needs no roots.
        Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| ConfigError::new(format!("TLS settings for the Clink API: {e}")))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    };
    Ok(builder.https_or_http().enable_http1().build())
}

impl Client {
    /// Settings for a client, starting from the defaults.
    #[must_use]
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client from the environment: keys from `CLINK_SECRET_KEY` (one, or
    /// several separated by commas, newest first), the environment from
    /// `CLINK_ENV` (`sandbox` when unset), the base URL from
    /// `CLINK_API_BASE_URL` (the environment's when unset) and
    /// `CLINK_API_PLAIN_HTTP=1` to allow it plain `http://` beyond this
    /// machine ([`ClientBuilder::plain_http_beyond_this_machine`]). `None`
    /// when `CLINK_SECRET_KEY` is unset or empty.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] as [`ClientBuilder::build`] and [`ApiKey::new`] give,
    /// for an unknown `CLINK_ENV`, for a variable set to bytes that are not
    /// UTF-8, and when `CLINK_BASE_URL` (the name
    /// another tool reads) is set and `CLINK_API_BASE_URL` is not: the
    /// client would call Clink itself where a mock or a proxy was meant.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        // A variable set to bytes that are not UTF-8 is an error, not an
        // unset one (its value, a key perhaps, is never printed).
        let var = |name: &str| match std::env::var(name) {
            Ok(value) => Ok(Some(value).filter(|v| !v.trim().is_empty())),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::new(format!(
                "{name} is set, but not to valid UTF-8 text"
            ))),
        };
        let Some(keys) = var("CLINK_SECRET_KEY")?.map(zeroize::Zeroizing::new) else {
            return Ok(None);
        };
        let mut builder = Self::builder();
        if let Some(env) = var("CLINK_ENV")? {
            builder = builder.environment(env.parse()?);
        }
        let base_url = var("CLINK_API_BASE_URL")?;
        // The other tool's name matters only when this one is unset.
        let other = match base_url {
            Some(_) => None,
            None => var("CLINK_BASE_URL")?,
        };
        match (base_url, other) {
            (Some(url), _) => builder = builder.base_url(url),
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "CLINK_BASE_URL is set, but this client reads its base URL from \
                     CLINK_API_BASE_URL and would call Clink itself: set CLINK_API_BASE_URL \
                     (or unset CLINK_BASE_URL)",
                ))
            }
            (None, None) => {}
        }
        if let Some(allow) = var("CLINK_API_PLAIN_HTTP")? {
            builder = builder.plain_http_beyond_this_machine(match allow.trim() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => {
                    return Err(ConfigError::new(
                        "CLINK_API_PLAIN_HTTP must be 1 or 0 (true or false)",
                    ))
                }
            });
        }
        for key in keys.split(',').filter(|key| !key.trim().is_empty()) {
            builder = builder.key(ApiKey::new(key)?);
        }
        builder.build().map(Some)
    }

    /// The environment the client calls.
    #[must_use]
    pub fn environment(&self) -> Environment {
        self.inner.environment
    }

    /// The base URL calls are made against, ending in `/`.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Reads the answer of a GET at `path`, sharing one call among the
    /// callers that ask for the same path at the same time.
    ///
    /// The shared call runs while its first caller is polled: a caller that
    /// joined it waits at most the deadline and one request's timeout, so
    /// that a first caller kept but no longer polled (a future parked in a
    /// `select!` loop, a stream nobody reads) holds nobody else for ever.
    pub(crate) async fn get_shared(&self, path: &str) -> Result<Bytes, ApiError> {
        let flight = self.inner.flights.join(path);
        let bound = self
            .inner
            .deadline
            .saturating_add(self.inner.request_timeout);
        let shared = tokio::time::timeout(
            bound,
            flight
                .cell
                .get_or_init(|| self.call(Method::GET, path, &[], None)),
        )
        .await;
        let result = match shared {
            Ok(result) => result.clone(),
            Err(_) => Err(ApiError::new(
                ApiErrorKind::Timeout,
                &format!("GET /{path}"),
                format!(
                    "no answer within {} ms: the same read, made first by another caller, did \
                     not end",
                    bound.as_millis()
                ),
            )),
        };
        drop(flight);
        result
    }

    /// Makes a call and returns the body of an answer that says yes: an
    /// envelope whose `code` is 200 or missing.
    pub(crate) async fn call(
        &self, method: Method, path: &str, query: &[(&str, String)], body: Option<Bytes>,
    ) -> Result<Bytes, ApiError> {
        self.call_as(method, path, query, body, Answer::Plain).await
    }

    /// [`call`](Self::call) for the calls whose answer carries a plain
    /// signing secret Clink shows once (create, rotate-secret, ensure): an
    /// answer whose `code` is no number is taken as a yes when it carries
    /// that secret, the data the call is made for.
    pub(crate) async fn call_for_secret(
        &self, method: Method, path: &str, body: Option<Bytes>,
    ) -> Result<Bytes, ApiError> {
        self.call_as(method, path, &[], body, Answer::Secret).await
    }

    async fn call_as(
        &self, method: Method, path: &str, query: &[(&str, String)], body: Option<Bytes>,
        answer: Answer,
    ) -> Result<Bytes, ApiError> {
        let call = format!("{method} /{path}");
        let mut url = format!("{}{path}", self.inner.base);
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(name);
            url.push('=');
            url.push_str(&encode(value));
        }
        let uri: Uri = url
            .parse()
            .map_err(|_| ApiError::new(ApiErrorKind::Unsupported, &call, "invalid URL"))?;
        let deadline = deadline_from(Instant::now(), self.inner.deadline);
        let write = method != Method::GET;
        let retries = !write;
        let mut attempt = 1;
        // The answer of the attempt before, while retrying.
        let mut previous: Option<ApiError> = None;
        loop {
            let request = Attempt {
                call: &call,
                method: &method,
                uri: &uri,
                body: body.as_ref(),
                deadline,
                write,
                answer,
            };
            let error = match self.with_keys(&request).await {
                Ok(body) => return Ok(body),
                Err(error) => error,
            };
            // The client's own budget saying no is not worth asking again:
            // it had no room before the deadline.
            let local = error.status().is_none() && error.code().is_none();
            let out_of_time = local
                && (error.kind() == ApiErrorKind::RateLimited
                    || (error.kind() == ApiErrorKind::Timeout && Instant::now() >= deadline));
            if out_of_time {
                // A retry that the call's deadline cut short, or that the
                // budget could not fit before it, says nothing about Clink:
                // the answer before it says why the read failed.
                return Err(previous.unwrap_or(error));
            }
            let retryable = matches!(
                error.kind(),
                ApiErrorKind::Server
                    | ApiErrorKind::RateLimited
                    | ApiErrorKind::Transport
                    | ApiErrorKind::Timeout
            );
            let wait = error.retry_after().unwrap_or_else(|| backoff(attempt));
            if error.kind() == ApiErrorKind::RateLimited && error.status().is_some() {
                // Clink's limit is the account's: every call of this
                // client and its clones waits, not this one only, whether
                // this one is retried or not (a write is not).
                self.inner.budget.pause_for(wait.min(MAX_SHARED_PAUSE));
            }
            if !retries || !retryable || attempt >= self.inner.attempts {
                return Err(error);
            }
            if Instant::now() + wait >= deadline {
                return Err(error);
            }
            tracing::debug!(call = %call, attempt, error = %error, "retrying a Clink API read");
            tokio::time::sleep(wait).await;
            if Instant::now() >= deadline {
                // The wait ran past the deadline (a busy machine): no time
                // is left for the retry.
                return Err(error);
            }
            previous = Some(error);
            attempt += 1;
        }
    }

    /// One attempt, with the preferred active key and, when Clink refuses
    /// it, once more with the next active key.
    async fn with_keys(&self, request: &Attempt<'_>) -> Result<Bytes, ApiError> {
        let inner = &self.inner;
        let now = SystemTime::now();
        let active: Vec<usize> = (0..inner.keys.len())
            .filter(|&i| inner.keys[i].is_active_at(now))
            .collect();
        let Some(&newest) = active.first() else {
            return Err(ApiError::new(
                ApiErrorKind::Unauthorized,
                request.call,
                "every API key the client holds has expired",
            ));
        };
        let first = {
            let preferred = inner
                .preferred
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match *preferred {
                Some((key, until)) if Instant::now() < until && active.contains(&key) => key,
                _ => newest,
            }
        };
        let error = match self.send(request, first).await {
            Ok(body) => return Ok(body),
            // A refusal that carries a new signing secret may have rotated
            // or created all the same: sending it again with the next key
            // could do that twice, and would lose this secret. So may a
            // write answered 5xx, whatever its envelope's code says: its
            // outcome is unknown, and only a read is sent again.
            Err(error)
                if error.kind() == ApiErrorKind::Unauthorized
                    && request.write
                    && error.status().is_some_and(|s| s.is_server_error()) =>
            {
                return Err(error.noted(
                    "not sent again with another key: a write answered 5xx may have been applied",
                ));
            }
            Err(error) if error.kind() == ApiErrorKind::Unauthorized => {
                if error.new_secret().is_some() {
                    return Err(error.noted(
                        "not sent again with another key: the answer carries a new signing \
                         secret, which Clink may have put into effect",
                    ));
                }
                error
            }
            Err(error) => return Err(error),
        };
        // The next key: the newest when an older one was refused (and is
        // no longer preferred), else the next active one after the newest.
        let next = if first == newest {
            active.get(1).copied()
        } else {
            *inner
                .preferred
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
            Some(newest)
        };
        let Some(next) = next else {
            return Err(error.noted("no other active key to try"));
        };
        // With no room for the next key before the deadline, Clink's
        // refusal of this one is the answer: a request was sent, and
        // refused for its key, which a budget error ("not sent") would deny.
        if inner.budget.acquire(request.deadline).await.is_err() {
            return Err(error.noted(
                "the next key was not tried: the client's rate budget had no room for it \
                 before the call's deadline",
            ));
        }
        match self.sent(request, next).await {
            Ok(body) => {
                tracing::warn!(
                    refused = %inner.keys[first].name(),
                    works = %inner.keys[next].name(),
                    "Clink refused the API key {}; the key {} works and is used for now: \
                     check the keys and their expiries",
                    inner.keys[first].name(),
                    inner.keys[next].name(),
                );
                if next != newest {
                    *inner
                        .preferred
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) =
                        Some((next, Instant::now() + PREFER_OLDER_FOR));
                }
                Ok(body)
            }
            Err(second) => Err(second),
        }
    }

    /// One request with key `key`, within the budget and the timeouts.
    async fn send(&self, request: &Attempt<'_>, key: usize) -> Result<Bytes, ApiError> {
        self.inner
            .budget
            .acquire(request.deadline)
            .await
            .map_err(|()| {
                ApiError::new(
                    ApiErrorKind::RateLimited,
                    request.call,
                    "the client's rate budget had no room before the call's deadline, so the \
                     request was not sent",
                )
            })?;
        self.sent(request, key).await
    }

    /// One request with key `key`, room in the budget taken.
    async fn sent(&self, request: &Attempt<'_>, key: usize) -> Result<Bytes, ApiError> {
        let key = &self.inner.keys[key];
        let result = self.exchange(request, key).await;
        record(key.name(), &result);
        result
    }

    async fn exchange(&self, request: &Attempt<'_>, key: &ApiKey) -> Result<Bytes, ApiError> {
        let inner = &self.inner;
        let call = request.call;
        let mut api_key = HeaderValue::from_str(key.expose()).map_err(|_| {
            ApiError::new(ApiErrorKind::Unsupported, call, "the key cannot be sent")
        })?;
        api_key.set_sensitive(true);
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut builder = Request::builder()
            .method(request.method.clone())
            .uri(request.uri.clone())
            .header(API_KEY, api_key)
            .header(TIMESTAMP, millis.to_string())
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("clink-webhooks/", env!("CARGO_PKG_VERSION")),
            );
        if request.body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let http_request = builder
            .body(Full::new(request.body.cloned().unwrap_or_default()))
            .map_err(|_| ApiError::new(ApiErrorKind::Unsupported, call, "invalid request"))?;
        // A write has its whole timeout whatever it waited for the budget:
        // one cut short after it left may have been applied, its answer
        // lost. A read gets what its deadline leaves, and is retried.
        let timeout = if request.write {
            inner.request_timeout
        } else {
            let left = request.deadline.saturating_duration_since(Instant::now());
            inner.request_timeout.min(left)
        };
        let exchange = async {
            let response = inner.http.request(http_request).await.map_err(|error| {
                let failed = ApiError::new(
                    ApiErrorKind::Transport,
                    call,
                    scrub(&error_chain(&error), &inner.keys),
                );
                // No connection was made: the request was never written.
                if error.is_connect() {
                    failed.unsent()
                } else {
                    failed
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|error| {
                    let kind = if error.is::<http_body_util::LengthLimitError>() {
                        ApiErrorKind::Decode
                    } else {
                        ApiErrorKind::Transport
                    };
                    ApiError::new(kind, call, scrub(&error.to_string(), &inner.keys))
                })?
                .to_bytes();
            Ok::<_, ApiError>((parts, body))
        };
        let (parts, body) = match tokio::time::timeout(timeout, exchange).await {
            Ok(answer) => answer?,
            Err(_) => {
                let mut message = format!("no answer within {} ms", timeout.as_millis());
                if request.write {
                    message.push_str("; it may have reached Clink and been applied");
                }
                return Err(ApiError::new(ApiErrorKind::Timeout, call, message));
            }
        };
        self.judge(request, parts.status, &parts.headers, body)
    }

    /// The body of an answer that says yes, or the error it says.
    fn judge(
        &self, request: &Attempt<'_>, status: StatusCode, headers: &http::HeaderMap, body: Bytes,
    ) -> Result<Bytes, ApiError> {
        let call = request.call;
        // What the answer says, for an error: without any signing secret it
        // carries, taken out before `scrub` cuts and escapes the text, so
        // that no piece of one is left (a secret across the cut, or one
        // escaped in the JSON, is no longer an exact copy to find).
        let json = serde_json::from_slice::<Value>(&body).ok();
        let secrets = json.as_ref().map(signing_secrets).unwrap_or_default();
        let told = |text: &str| scrub(&redact(text, &secrets), &self.inner.keys);
        let said = || match &json {
            Some(json) => told(&without_secrets(json).to_string()),
            None => told(&String::from_utf8_lossy(&body)),
        };
        if status.is_redirection() {
            // Not followed (the key would go along to wherever it points):
            // a base URL to correct, not Clink saying no.
            let to = headers
                .get(http::header::LOCATION)
                .and_then(|to| to.to_str().ok())
                .map(|to| format!(" to {}", told(to)))
                .unwrap_or_default();
            return Err(ApiError::new(
                ApiErrorKind::Decode,
                call,
                format!("the answer is a redirect{to}, which is not followed: check the base URL"),
            )
            .with_status(status));
        }
        if !status.is_success() {
            let envelope = serde_json::from_slice::<Status>(&body).ok();
            let words = envelope
                .as_ref()
                .and_then(|e| e.msg.clone())
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            // An envelope's code of 400 to 599 says more than a status of
            // no more meaning than "client error" or "server error" (HTTP
            // 400 with code 404 is not found; HTTP 500 with code 404 is not
            // worth asking again).
            let code = match envelope.as_ref().map(|e| &e.code) {
                Some(&Code::Number(code)) if (400..=599).contains(&code) => Some(code),
                _ => None,
            };
            let kind = match (status, code) {
                (s, _) if refuses_the_key(s.as_u16().into(), &words) => ApiErrorKind::Unauthorized,
                (StatusCode::NOT_FOUND, _) => ApiErrorKind::NotFound,
                (StatusCode::TOO_MANY_REQUESTS, _) => ApiErrorKind::RateLimited,
                (_, Some(code)) => kind_of_code(code, &words),
                (s, None) if s.is_server_error() => ApiErrorKind::Server,
                _ => ApiErrorKind::Envelope,
            };
            let secret = secret_in(&body);
            let mut error = ApiError::new(
                kind,
                call,
                envelope
                    .as_ref()
                    .and_then(|e| e.msg.as_deref())
                    .map_or_else(said, told),
            )
            .with_status(status)
            .with_retry_after(retry_after(headers));
            if let Some(Code::Number(code)) = envelope.map(|e| e.code) {
                error = error.with_code(code);
            }
            return Err(error.with_secret(secret));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Bytes::from_static(b"{}"));
        }
        // serde fills a struct from an array too (`[]` would read as an
        // envelope without a code): only an object is one.
        let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let envelope = object.then(|| serde_json::from_slice::<Status>(&body));
        let envelope: Status = envelope.and_then(Result::ok).ok_or_else(|| {
            ApiError::new(
                ApiErrorKind::Decode,
                call,
                "the answer is not a JSON object",
            )
            .with_status(status)
            // A `code` or `msg` twice fails the envelope's read, not the
            // secret's, which a lenient read may still find.
            .with_secret(secret_in(&body))
        })?;
        match envelope.code {
            Code::None | Code::Number(200) => Ok(body),
            // A code that is no number says neither yes nor no. Clink's CLI
            // takes it for a yes, and so does a call made for the secret
            // the answer carries: dropping a secret Clink has put into
            // effect is worse. Elsewhere it is taken for a no, so that a
            // refusal in words (`"FORBIDDEN"`) is not reported done.
            Code::Unreadable(_)
                if request.answer == Answer::Secret && secret_in(&body).is_some() =>
            {
                Ok(body)
            }
            Code::Unreadable(code) => {
                // The message first, so that the cut at 200 characters
                // takes the code's text rather than what Clink said.
                let said = match envelope.msg {
                    Some(msg) => format!("{msg} (the answer's code {code} is not a number)"),
                    None => format!("the answer's code {code} is not a number"),
                };
                Err(ApiError::new(ApiErrorKind::Envelope, call, told(&said))
                    .with_status(status)
                    .with_secret(secret_in(&body)))
            }
            Code::Number(code) => {
                let msg = envelope.msg.unwrap_or_default();
                Err(ApiError::new(kind_of_code(code, &msg), call, told(&msg))
                    .with_status(status)
                    .with_code(code)
                    .with_retry_after(retry_after(headers))
                    .with_secret(secret_in(&body)))
            }
        }
    }

    /// The `data` of an answer, decoded; `None` when it is missing or null.
    pub(crate) fn data<T: DeserializeOwned>(
        &self, call: &str, body: &[u8],
    ) -> Result<Option<T>, ApiError> {
        Ok(match self.data_said(call, body)? {
            Said::Data(data) => Some(data),
            Said::Null | Said::Absent => None,
        })
    }

    /// As [`data`](Self::data), telling an answer with `"data": null` from
    /// one with no `data` at all (an empty body, or `{}`).
    pub(crate) fn data_said<T: DeserializeOwned>(
        &self, call: &str, body: &[u8],
    ) -> Result<Said<T>, ApiError> {
        #[derive(Deserialize)]
        #[serde(bound(deserialize = "T: DeserializeOwned"))]
        struct Envelope<T> {
            #[serde(default = "absent", deserialize_with = "present")]
            data: Said<T>,
        }
        fn absent<T>() -> Said<T> {
            Said::Absent
        }
        fn present<'de, D: serde::Deserializer<'de>, T: DeserializeOwned>(
            deserializer: D,
        ) -> Result<Said<T>, D::Error> {
            Ok(Option::<T>::deserialize(deserializer)?.map_or(Said::Null, Said::Data))
        }
        let deserializer = &mut serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize::<_, Envelope<T>>(deserializer)
            .map(|envelope| envelope.data)
            .map_err(|error| self.decode_error(call, &error))
    }

    /// A whole answer decoded (the lists, which are not wrapped in `data`).
    pub(crate) fn whole<T: DeserializeOwned>(
        &self, call: &str, body: &[u8],
    ) -> Result<T, ApiError> {
        let deserializer = &mut serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(deserializer)
            .map_err(|error| self.decode_error(call, &error))
    }

    fn decode_error(
        &self, call: &str, error: &serde_path_to_error::Error<serde_json::Error>,
    ) -> ApiError {
        ApiError::new(
            ApiErrorKind::Decode,
            call,
            scrub(
                &format!("at {}: {}", error.path(), error.inner()),
                &self.inner.keys,
            ),
        )
    }
}

/// One attempt's request, as every key would send it.
struct Attempt<'a> {
    call: &'a str,
    method: &'a Method,
    uri: &'a Uri,
    body: Option<&'a Bytes>,
    /// When the call ends; a write, once sent, has its whole request
    /// timeout even past it.
    deadline: Instant,
    /// Not a GET: never retried, and never cut short once sent.
    write: bool,
    /// What the answer is for.
    answer: Answer,
}

/// What a call's answer is for, which decides how an envelope `code` that
/// is no number is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Its status, or data other than a new signing secret: such a code is
    /// an [`Envelope`](ApiErrorKind::Envelope) error.
    Plain,
    /// A plain signing secret Clink shows once: such a code is a yes when
    /// the answer carries the secret.
    Secret,
}

/// The envelope's status fields, read leniently: they decide whether an
/// answer that may carry a secret Clink shows once is taken, so a shape
/// the reference does not promise must not turn a yes into an error.
#[derive(Deserialize)]
struct Status {
    /// A whole number, also as a string or a float (`"200"`, `200.0`);
    /// anything else is [`Code::Unreadable`], which the call judges.
    #[serde(default, deserialize_with = "lenient_code")]
    code: Code,
    /// A string; anything else counts as no message.
    #[serde(default, deserialize_with = "lenient_msg")]
    msg: Option<String>,
}

/// An envelope's `code`, as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Code {
    /// Missing, or `null`.
    #[default]
    None,
    /// A whole number.
    Number(i64),
    /// Anything else (`"FORBIDDEN"`, `true`, `200.5`, an object): its JSON
    /// text.
    Unreadable(String),
}

fn lenient_code<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Code, D::Error> {
    let whole = |float: f64| {
        // Within i64's range and with no fraction, the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        let whole = float as i64;
        #[allow(clippy::cast_precision_loss)]
        let exact = float.fract() == 0.0 && float.abs() < 9.0e18 && whole as f64 == float;
        exact.then_some(whole)
    };
    let Some(value) = Option::<Value>::deserialize(deserializer)? else {
        return Ok(Code::None);
    };
    let number = match &value {
        Value::Number(number) => number.as_i64().or_else(|| number.as_f64().and_then(whole)),
        Value::String(text) => {
            let text = text.trim();
            text.parse::<i64>()
                .ok()
                .or_else(|| text.parse::<f64>().ok().and_then(whole))
        }
        _ => None,
    };
    Ok(number.map_or_else(|| Code::Unreadable(value.to_string()), Code::Number))
}

fn lenient_msg<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        Some(Value::String(msg)) => Some(msg),
        _ => None,
    })
}

/// The plain signing secret in an answer: in its `data`
/// (`data.signingSecret`, or `data.endpoint.signingSecret` for ensure), or
/// else the one secret the answer holds anywhere else (at its top level,
/// say: Clink shows a new secret once, and a shape the client does not
/// expect must not lose it); `None` when it holds none, or several other
/// than those two, which could not be told apart.
pub(crate) fn secret_in(body: &[u8]) -> Option<WebhookSecret> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let in_data = value.get("data").and_then(|data| {
        [Some(data), data.get("endpoint")]
            .into_iter()
            .flatten()
            .find_map(|holder| match holder.get(SIGNING_SECRET) {
                Some(Value::String(secret)) if is_a_secret(secret) => Some(secret.clone()),
                _ => None,
            })
    });
    let secret = in_data.or_else(|| {
        let mut found = signing_secrets(&value);
        found.sort_unstable();
        found.dedup();
        match <[String; 1]>::try_from(found) {
            Ok([only]) => Some(only),
            Err(_) => None,
        }
    });
    secret.map(WebhookSecret::new)
}

/// The name of the member that holds a plain signing secret.
const SIGNING_SECRET: &str = "signingSecret";

/// Whether `text`, a `signingSecret`'s value, is a secret at all: an empty
/// one (or only spaces), as a serializer may write for "not available",
/// is none.
pub(crate) fn is_a_secret(text: &str) -> bool {
    !text.trim().is_empty() && !is_masked(text)
}

/// Whether `text` is a signing secret's masked form, as Clink and this
/// crate show one (`whse...9f2a`, or `****` for a short one): never the
/// secret, whatever field holds it.
fn is_masked(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    text == "****" || (chars.len() == 11 && chars[4..7] == ['.', '.', '.'])
}

/// Every plain signing secret in an answer: the strings of its
/// `signingSecret` members, at any depth.
fn signing_secrets(json: &Value) -> Vec<String> {
    fn collect(json: &Value, found: &mut Vec<String>) {
        match json {
            Value::Object(members) => {
                for (name, value) in members {
                    match value {
                        Value::String(secret) if name == SIGNING_SECRET && is_a_secret(secret) => {
                            found.push(secret.clone());
                        }
                        value => collect(value, found),
                    }
                }
            }
            Value::Array(values) => values.iter().for_each(|value| collect(value, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    collect(json, &mut found);
    found
}

/// `json` with the value of every `signingSecret` member, at any depth,
/// replaced by `"[redacted]"`.
fn without_secrets(json: &Value) -> Value {
    match json {
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(name, value)| {
                    let value = if name == SIGNING_SECRET && !value.is_null() {
                        Value::from("[redacted]")
                    } else {
                        without_secrets(value)
                    };
                    (name.clone(), value)
                })
                .collect(),
        ),
        Value::Array(values) => Value::Array(values.iter().map(without_secrets).collect()),
        other => other.clone(),
    }
}

/// `text` with every copy of each of `secrets`, as it is and as JSON
/// escapes it, replaced by `[redacted]`.
fn redact(text: &str, secrets: &[String]) -> String {
    // The longest first, so that a secret holding another is taken whole.
    let mut secrets: Vec<&String> = secrets.iter().collect();
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    let mut text = text.to_owned();
    for secret in secrets {
        let escaped = Value::from(secret.as_str()).to_string();
        let escaped = &escaped[1..escaped.len() - 1];
        for form in [secret.as_str(), escaped] {
            if !form.is_empty() && text.contains(form) {
                text = text.replace(form, "[redacted]");
            }
        }
    }
    text
}

/// The instant `deadline` after `now`; a deadline too long to represent as
/// an instant ([`Duration::MAX`], say) is as good as none: about 30 years.
fn deadline_from(now: Instant, deadline: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(deadline)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// What an answer says its `data` is.
pub(crate) enum Said<T> {
    /// No `data` at all.
    Absent,
    /// `"data": null`.
    Null,
    /// `data` itself.
    Data(T),
}

/// `Retry-After`, in seconds or as an HTTP date (read on this machine's
/// clock), at most a day.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// The longest a `429` holds every call of the client: a longer
/// `Retry-After` (from a proxy, say, or read through a skewed clock) holds
/// only the call that got it, and the next call asks again after this.
const MAX_SHARED_PAUSE: Duration = Duration::from_secs(60);

/// The wait after failed attempt `attempt`: doubling from 200 ms up to 5 s,
/// with up to a fifth of jitter either way.
fn backoff(attempt: u32) -> Duration {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};

    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(attempt);
    #[allow(clippy::cast_precision_loss)]
    let factor = 0.8 + (hasher.finish() % 4000) as f64 / 10_000.0;
    doubled.min(MAX_BACKOFF).mul_f64(factor)
}

/// An error and its sources, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Counts a request by key name and result.
fn record(key: &str, result: &Result<Bytes, ApiError>) {
    #[cfg(feature = "metrics")]
    {
        let result = match result {
            Ok(_) => "ok",
            Err(error) => error.kind().as_str(),
        };
        metrics::counter!("clink_api_requests_total", "key" => key.to_owned(), "result" => result)
            .increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (key, result);
}

/// `id` as one path segment, [percent-encoded](encode); `Err` with the
/// reason for an id no segment can carry: an empty one, or `.` or `..`,
/// which stay as they are when encoded and which a URL path reads as a step
/// to this resource or its parent (RFC 3986 dot segments), so that
/// `DELETE webhook/endpoints/..` would reach another resource.
pub(crate) fn segment(id: &str) -> Result<String, &'static str> {
    match id {
        "" => Err("id is empty"),
        "." | ".." => Err("id is `.` or `..`, which a URL path reads as another resource"),
        id => Ok(encode(id)),
    }
}

/// Percent-encodes `text` for a path segment or a query value: everything
/// but `A-Z a-z 0-9 - . _ ~`.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A token bucket: `rate` requests a second, `burst` at once. A caller
/// reserves a slot and waits for it, so callers are served in turn without
/// polling; a caller that gives up before its slot comes gives it back.
struct RateBudget {
    rate: u32,
    burst: f64,
    /// The tokens and when they were counted.
    state: Mutex<(f64, Instant)>,
    /// Until when Clink asked for no request (a `429`'s `Retry-After`).
    paused_until: Mutex<Option<Instant>>,
}

impl RateBudget {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            state: Mutex::new((f64::from(burst), Instant::now())),
            paused_until: Mutex::new(None),
        }
    }

    /// Sends no request for `wait` from now (or until a later end already
    /// set): Clink answered `429`.
    fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *paused = Some(paused.map_or(until, |own| own.max(until)));
    }

    /// Waits for room for one request, and for the end of a pause Clink
    /// asked for; `Err` when there is none before `deadline` (nothing is
    /// reserved then).
    ///
    /// During a pause the budget does not refill: slots are counted from
    /// its end, so that the callers who came meanwhile go out at the rate
    /// after it, `burst` at once, not all together. A caller whose slot
    /// comes inside a pause begun while it waited reserves again.
    async fn acquire(&self, deadline: Instant) -> Result<(), ()> {
        loop {
            let wait = self.reserve(deadline)?;
            if wait.is_zero() {
                return Ok(());
            }
            let mut slot = Reserved(Some(self));
            tokio::time::sleep(wait).await;
            let paused = *self
                .paused_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if paused.is_some_and(|until| until > Instant::now()) {
                // Clink asked for a pause while this waited: it takes a
                // slot after the pause. The one it held is not given back:
                // the budget, counted from the pause's end, refills once
                // for all who waited, so they go out `burst` at once and
                // then at the rate.
                slot.0 = None;
                continue;
            }
            slot.0 = None;
            return Ok(());
        }
    }

    /// Reserves a slot; how long until it comes, or `Err` when it does not
    /// come before `deadline` (nothing reserved).
    fn reserve(&self, deadline: Instant) -> Result<Duration, ()> {
        let paused = *self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // Counted from the pause's end when there is one.
        let (tokens, last) = *state;
        let from = paused.map_or(now, |until| until.max(now)).max(last);
        let refilled = from
            .saturating_duration_since(last)
            .as_secs_f64()
            .mul_add(f64::from(self.rate), tokens);
        let tokens = refilled.min(self.burst) - 1.0;
        let after = if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / f64::from(self.rate))
        };
        let wait = (from - now) + after;
        if now + wait > deadline {
            return Err(());
        }
        *state = (tokens, from);
        Ok(wait)
    }

    /// Gives a reserved slot back.
    fn refund(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = (state.0 + 1.0).min(self.burst);
    }
}

/// A slot waited for; dropped while still set (the caller gave up), it is
/// given back.
struct Reserved<'a>(Option<&'a RateBudget>);

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(budget) = self.0 {
            // Inside a pause, not given back: the budget, counted from the
            // pause's end, pays for it already.
            let paused = *budget
                .paused_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if paused.is_none_or(|until| until <= Instant::now()) {
                budget.refund();
            }
        }
    }
}

/// A read in flight and how many callers wait for it.
struct Shared {
    cell: Arc<OnceCell<Result<Bytes, ApiError>>>,
    waiting: usize,
}

/// The reads in flight, by path: callers of one path share one call.
#[derive(Default)]
struct Flights {
    calls: Mutex<HashMap<String, Shared>>,
}

/// A caller's share of a read in flight; the last one to leave removes it.
struct Flight<'a> {
    flights: &'a Flights,
    path: &'a str,
    cell: Arc<OnceCell<Result<Bytes, ApiError>>>,
}

impl Flights {
    fn join<'a>(&'a self, path: &'a str) -> Flight<'a> {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let shared = calls.entry(path.to_owned()).or_insert_with(|| Shared {
            cell: Arc::default(),
            waiting: 0,
        });
        shared.waiting += 1;
        Flight {
            flights: self,
            path,
            cell: Arc::clone(&shared.cell),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut calls = self
            .flights
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(shared) = calls.get_mut(self.path) else {
            return;
        };
        if !Arc::ptr_eq(&shared.cell, &self.cell) {
            return;
        }
        shared.waiting -= 1;
        // A finished call is forgotten at once, so the next read asks Clink
        // again; an unfinished one when its last caller gives up.
        if shared.waiting == 0 || self.cell.initialized() {
            calls.remove(self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_escapes_all_but_unreserved() {
        assert_eq!(encode("ord_1-a.b~c"), "ord_1-a.b~c");
        assert_eq!(encode("a/b?c d%"), "a%2Fb%3Fc%20d%25");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn a_segment_is_one_step_of_a_path() {
        assert_eq!(segment("whk_1").unwrap(), "whk_1");
        assert_eq!(segment("a/../b").unwrap(), "a%2F..%2Fb");
        assert_eq!(segment("...").unwrap(), "...");
        assert_eq!(segment("%2E%2E").unwrap(), "%252E%252E");
        for refused in ["", ".", ".."] {
            assert!(segment(refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn a_builders_debug_shows_no_user_info_of_its_base_url() {
        for (url, shown) in [
            (
                "https://u:hunter2@proxy/api",
                "https://[redacted]@proxy/api",
            ),
            (
                "https://u:a@b@proxy:9?x=@",
                "https://[redacted]@proxy:9?[redacted]",
            ),
            ("hunter2@proxy", "[redacted]@proxy"),
            ("https://proxy/a@b", "https://proxy/a@b"),
            // A password with a `/`, and a token in a query or fragment.
            (
                "https://deploy:hun/ter2@proxy.lan/api",
                "https://[redacted]@proxy.lan/api",
            ),
            (
                "https://proxy/api?token=hunter2",
                "https://proxy/api?[redacted]",
            ),
            ("https://proxy/api#hunter2", "https://proxy/api#[redacted]"),
            (
                "https://deploy:hun?ter2@proxy/api",
                "https://[redacted]@proxy/api",
            ),
            (
                "https://deploy:hun#ter2@proxy/api?x=1",
                "https://[redacted]@proxy/api?[redacted]",
            ),
            (
                "https://deploy:h@ter2/w0rd@proxy/api",
                "https://[redacted]@proxy/api",
            ),
            (
                "https://deploy:h@ter2?w0rd@proxy/api",
                "https://[redacted]@proxy/api",
            ),
            (
                "https://deploy:hun/ter2@my_proxy/api",
                "https://[redacted]@my_proxy/api",
            ),
        ] {
            let debug = format!("{:?}", Client::builder().base_url(url));
            assert!(debug.contains(shown), "{debug}");
            assert!(
                !debug.contains("hunter2")
                    && !debug.contains("hun/ter2")
                    && !debug.contains("ter2")
                    && !debug.contains("u:a"),
                "{debug}"
            );
        }
    }

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(
            base_url(None, Environment::Production, false).unwrap(),
            "https://api.clinkbill.com/api/"
        );
        for (url, plain_http, base) in [
            ("http://127.0.0.1:9/api", false, "http://127.0.0.1:9/api/"),
            ("http://127.0.0.2:9/api/", false, "http://127.0.0.2:9/api/"),
            ("http://[::1]:9/api", false, "http://[::1]:9/api/"),
            ("http://LocalHost:9/api", false, "http://LocalHost:9/api/"),
            ("https://proxy.lan/api", false, "https://proxy.lan/api/"),
            ("http://proxy.lan/api", true, "http://proxy.lan/api/"),
            ("HTTPS://proxy.lan/api", false, "https://proxy.lan/api/"),
            ("Http://127.0.0.1:9/api", false, "http://127.0.0.1:9/api/"),
        ] {
            assert_eq!(
                base_url(Some(url), Environment::Sandbox, plain_http).unwrap(),
                base
            );
        }
        for (bad, why) in [
            ("ftp://x/", "must start with https://"),
            ("not a url", "not a URL"),
            ("http:///x", "not a URL"),
            ("http://u:hunter2@x/", "user or password"),
            ("https://x/?token=s3cr3t", "query"),
            ("http://127.0.0.1/api#x", "fragment"),
            ("http://proxy.lan/api", "unencrypted"),
            ("http://10.0.0.1/api", "unencrypted"),
        ] {
            let error = base_url(Some(bad), Environment::Sandbox, false).unwrap_err();
            let said = error.to_string();
            assert!(said.contains(why), "{bad}: {said}");
            for secret in ["hunter2", "s3cr3t"] {
                assert!(!said.contains(secret), "{bad}: {said}");
            }
        }
    }

    #[test]
    fn the_envelope_status_is_read_leniently() {
        let status = |body: &str| {
            let status: Status = serde_json::from_str(body).unwrap();
            (status.code, status.msg)
        };
        let success = Some("success".to_owned());
        assert_eq!(
            status(r#"{"code":200,"msg":"success"}"#),
            (Code::Number(200), success.clone())
        );
        assert_eq!(
            status(r#"{"code":"200","msg":"success"}"#),
            (Code::Number(200), success)
        );
        assert_eq!(
            status(r#"{"code":200.0,"msg":7}"#),
            (Code::Number(200), None)
        );
        assert_eq!(
            status(r#"{"code":" 401 ","msg":null}"#),
            (Code::Number(401), None)
        );
        assert_eq!(status(r#"{"code":"404.0"}"#), (Code::Number(404), None));
        for (unreadable, text) in [
            (r#"{"code":"OK"}"#, r#""OK""#),
            (r#"{"code":200.5}"#, "200.5"),
            (r#"{"code":1e300}"#, "1e+300"),
            (r#"{"code":true}"#, "true"),
            (r#"{"code":{"value":200}}"#, r#"{"value":200}"#),
        ] {
            assert_eq!(
                status(unreadable),
                (Code::Unreadable(text.to_owned()), None),
                "{unreadable}"
            );
        }
        for no_code in [r#"{"code":null}"#, r#"{"msg":["success"]}"#, "{}"] {
            assert_eq!(status(no_code), (Code::None, None), "{no_code}");
        }
    }

    #[test]
    fn a_secret_is_found_in_data_or_its_endpoint() {
        let found = |body: &str| secret_in(body.as_bytes()).map(|s| s.expose().to_owned());
        assert_eq!(
            found(r#"{"code":0,"data":{"signingSecret":"whsec_a"}}"#).as_deref(),
            Some("whsec_a")
        );
        assert_eq!(
            found(r#"{"data":{"endpoint":{"signingSecret":"whsec_b"}}}"#).as_deref(),
            Some("whsec_b")
        );
        // Elsewhere, when it is the only one: a shape not expected loses
        // no secret.
        assert_eq!(
            found(r#"{"code":200,"signingSecret":"whsec_c"}"#).as_deref(),
            Some("whsec_c")
        );
        assert_eq!(
            found(r#"{"data":{"endpoint":{"id":"e"}},"signingSecret":"whsec_d"}"#).as_deref(),
            Some("whsec_d")
        );
        for none in [
            r#"{"data":{"signingSecret":""}}"#,
            r#"{"data":{"signingSecret":7}}"#,
            r#"{"signingSecret":"whsec_c","other":{"signingSecret":"whsec_e"}}"#,
            "not json",
        ] {
            assert_eq!(found(none), None, "{none}");
        }
    }

    #[test]
    fn signing_secrets_are_found_and_taken_out_at_any_depth() {
        let json = serde_json::json!({
            "msg": "a \"q\" b",
            "data": {"signingSecret": "s1", "endpoint": {"signingSecret": "s\"2"}},
            "rows": [{"signingSecret": "s3"}, {"signingSecret": 7}, {"signingSecret": null}],
        });
        assert_eq!(signing_secrets(&json), ["s\"2", "s1", "s3"]);
        let without = without_secrets(&json).to_string();
        assert!(
            !without.contains("s1") && !without.contains("s3") && !without.contains('7'),
            "{without}"
        );
        assert!(without.contains(r#""signingSecret":null"#), "{without}");
        assert_eq!(
            redact(r#"x s1 "s\"2" s"2"#, &signing_secrets(&json)),
            r#"x [redacted] "[redacted]" [redacted]"#
        );
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        for attempt in 1..40 {
            let wait = backoff(attempt);
            let nominal = FIRST_BACKOFF
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(
                wait >= nominal.mul_f64(0.8) && wait < nominal.mul_f64(1.2),
                "{attempt}: {wait:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_clink_asked_for_holds_every_request() {
        let budget = RateBudget::new(10, 10);
        let far = Instant::now() + Duration::from_secs(60);
        budget.pause_for(Duration::from_secs(2));
        budget.pause_for(Duration::from_secs(1));
        let before = Instant::now();
        budget.acquire(far).await.unwrap();
        assert_eq!(
            Instant::now() - before,
            Duration::from_secs(2),
            "the later end holds"
        );
        // A request whose deadline comes first is not sent.
        budget.pause_for(Duration::from_secs(5));
        assert!(budget
            .acquire(Instant::now() + Duration::from_secs(4))
            .await
            .is_err());
        budget.acquire(far).await.unwrap();
        assert_eq!(Instant::now() - before, Duration::from_secs(7));
    }

    /// Callers that come during a pause go out after it at the rate,
    /// `burst` at once, not all together; and a caller already waiting for
    /// its slot when the pause is asked for waits for the pause too.
    /// Before, the budget refilled during the pause and every caller went
    /// out at its end, and one waiting went out inside it.
    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_waiting_callers_and_does_not_refill_the_budget() {
        let budget = Arc::new(RateBudget::new(10, 10));
        let start = Instant::now();
        let far = start + Duration::from_secs(60);
        budget.pause_for(Duration::from_secs(2));
        let mut callers = tokio::task::JoinSet::new();
        for n in 0..30u64 {
            let budget = Arc::clone(&budget);
            callers.spawn(async move {
                // One caller every 60 ms during the pause.
                tokio::time::sleep(Duration::from_millis(n * 60)).await;
                budget.acquire(far).await.unwrap();
                Instant::now() - start
            });
        }
        let mut sent: Vec<Duration> = callers.join_all().await;
        sent.sort();
        let at_the_end = sent
            .iter()
            .filter(|t| **t <= Duration::from_secs(2))
            .count();
        assert_eq!(at_the_end, 10, "the burst at the pause's end: {sent:?}");
        assert!(
            sent[29] >= Duration::from_millis(3_990),
            "twenty more at ten a second: {sent:?}"
        );
        assert!(sent[0] >= Duration::from_secs(2), "{sent:?}");

        // A caller waiting for its slot when a pause is asked for.
        let budget = Arc::new(RateBudget::new(1, 1));
        let far = Instant::now() + Duration::from_secs(60);
        budget.acquire(far).await.unwrap();
        let waiting = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move {
                let before = Instant::now();
                budget.acquire(far).await.unwrap();
                Instant::now() - before
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        budget.pause_for(Duration::from_secs(5));
        let waited = waiting.await.unwrap();
        assert!(waited >= Duration::from_millis(5_100), "{waited:?}");

        // Several callers waiting for their slots when a pause is asked
        // for: after it, one at a time at the rate (a burst of one), not
        // all at its end.
        let budget = Arc::new(RateBudget::new(1, 1));
        let start = Instant::now();
        let far = start + Duration::from_secs(60);
        budget.acquire(far).await.unwrap();
        let mut waiting = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let budget = Arc::clone(&budget);
            waiting.spawn(async move {
                budget.acquire(far).await.unwrap();
                Instant::now() - start
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        budget.pause_for(Duration::from_secs(5));
        let mut sent: Vec<Duration> = waiting.join_all().await;
        sent.sort();
        for (n, at) in sent.iter().enumerate() {
            let due = Duration::from_millis(5_500) + Duration::from_secs(n as u64);
            assert!(*at >= due - Duration::from_millis(1), "{n}: {sent:?}");
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date() {
        let headers = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(RETRY_AFTER, value.parse().unwrap());
            headers
        };
        assert_eq!(retry_after(&headers(" 30 ")), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(&headers("9999999")), Some(MAX_RETRY_AFTER));
        let in_a_minute =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
        let wait = retry_after(&headers(&in_a_minute)).unwrap();
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert_eq!(
            retry_after(&headers("Sun, 06 Nov 1994 08:49:37 GMT")),
            Some(Duration::ZERO),
            "a date passed"
        );
        assert_eq!(retry_after(&headers("soon")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_given_up_is_given_back() {
        let budget = RateBudget::new(1, 1);
        let far = Instant::now() + Duration::from_secs(60);
        budget.acquire(far).await.unwrap();
        // Waits a second for its slot, then gives up.
        let waiting = tokio::time::timeout(Duration::from_millis(10), budget.acquire(far)).await;
        assert!(waiting.is_err());
        let before = Instant::now();
        budget.acquire(far).await.unwrap();
        assert!(
            Instant::now() - before <= Duration::from_millis(1000),
            "the given-up slot is not still held"
        );
    }

    #[test]
    fn callers_that_give_up_leave_no_flight_behind() {
        let flights = Flights::default();
        let first = flights.join("order/ord_1");
        let second = flights.join("order/ord_1");
        assert!(Arc::ptr_eq(&first.cell, &second.cell), "one call shared");
        drop(first);
        assert_eq!(flights.len(), 1, "still wanted");
        drop(second);
        assert_eq!(flights.len(), 0, "nobody waits: forgotten");
        // A finished call is forgotten by its first caller to leave.
        let done = flights.join("order/ord_2");
        let other = flights.join("order/ord_2");
        done.cell.set(Ok(Bytes::new())).unwrap();
        drop(done);
        assert_eq!(flights.len(), 0);
        let fresh = flights.join("order/ord_2");
        assert!(
            !Arc::ptr_eq(&fresh.cell, &other.cell),
            "the next read asks again"
        );
        drop(other);
        assert_eq!(
            flights.len(),
            1,
            "a leaver of the old call keeps the new one"
        );
        drop(fresh);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_spreads_a_burst_and_refuses_past_the_deadline() {
        let budget = RateBudget::new(10, 2);
        let start = Instant::now();
        let far = start + Duration::from_secs(60);
        budget.acquire(far).await.unwrap();
        budget.acquire(far).await.unwrap();
        assert_eq!(Instant::now(), start, "the burst goes at once");
        budget.acquire(far).await.unwrap();
        assert!(Instant::now() >= start + Duration::from_millis(99));
        // No room within 10 ms: refused, and nothing reserved.
        let soon = Instant::now() + Duration::from_millis(10);
        assert!(budget.acquire(soon).await.is_err());
        let before = Instant::now();
        budget.acquire(far).await.unwrap();
        assert!(Instant::now() - before <= Duration::from_millis(101));
    }
}
