//! The inbox console (feature `console`): pages to see, search and replay
//! the events of an [`Inbox`], served by an axum [`Router`] that the app
//! mounts where it likes.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use clink_webhooks::console::Console;
//! use clink_webhooks::store::SqliteInbox;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let inbox = Arc::new(SqliteInbox::open("clink-inbox.db")?);
//! let token = std::env::var("CLINK_CONSOLE_TOKEN")?; // at least 16 characters
//! let console = Console::with_token(Arc::clone(&inbox), token)?.secure_cookie(true);
//! let app: axum::Router = axum::Router::new().nest("/console", console.router());
//! # Ok(()) }
//! ```
//!
//! # Pages
//!
//! - `/` (the mount path itself): counts by status, the age of the oldest
//!   event still to handle, events received and handled per minute over
//!   the last hour, and the newest dead events with their errors.
//! - `/events`: every event, newest first, filtered by status, type,
//!   account, object and time of arrival, a page at a time.
//!
//!   The rows of both lists, this one and the dead events on `/`, show
//!   the first 120 characters
//!   ([`SUMMARY_ERROR_CHARS`](crate::store::SUMMARY_ERROR_CHARS)) of an
//!   event's last error, with `…` when there is more, and are read with
//!   [`Inbox::page_summaries`]: no body, and no long error whole.
//! - `/events/{seq}`: one event: its envelope, the raw body indented, its
//!   attempts, last error and replays, and the timeline of its object: how
//!   many events are about it, and up to 100 of them, those that arrived
//!   nearest to this one (this one among them, marked), in `created` order
//!   with their status, with a link to all of them in `/events` (read with
//!   [`Inbox::page_summaries`], without their bodies). The page
//!   shows at most the first 256 KiB of the body's text (indented at most
//!   16 levels deep) and the first 16 KiB of the last error, and says so
//!   when it cuts one: `clink-webhook inbox --sqlite FILE show SEQ --json`
//!   (or `--postgres`) prints the whole event.
//!
//! The filters, counts and the chart read the inbox's indexes: a
//! [`SqliteInbox`](crate::store::SqliteInbox) makes them with its table; a
//! [`PostgresInbox`](crate::store::PostgresInbox) builds them with
//! `build_console_indexes` (the gateway does, when its console is on),
//! without which each of those reads the whole table.
//!
//! Pages are rendered on the server (askama templates, which escape every
//! value) and work without JavaScript; one small script only offers an
//! auto-refresh. The stylesheet and the script are served by the router
//! itself, and every response carries a Content-Security-Policy that lets
//! the page load nothing else: `default-src 'none'; style-src 'self';
//! script-src 'self'; img-src 'self' data:; form-action 'self';
//! frame-ancestors 'none'; base-uri 'none'`.
//!
//! # Actions
//!
//! Replay one event; replay every dead event the current filter matches.
//!
//! An event's page offers a replay when the event is dead, or handled;
//! not while it is pending or retrying (a worker runs it on its own, and a
//! replay would only reset its attempts and skip its backoff) or running
//! (a worker holds it). Every replay form holds only for the event as its
//! page showed it (its status, its replays and when it was handled),
//! checked in the same step as the replay with [`Inbox::replay_if`]: sent
//! once the event was replayed, handled or failed since (a second click
//! on the same button among them), it replays nothing and shows the event
//! as it is now, with a notice. Replaying a handled event asks again first
//! (the CLI's `--force`), and the confirmation pins the event as it shows
//! it: sent once the event was replayed and handled since, it replays
//! nothing and asks again. The check is atomic in the crate's inboxes (in
//! SQL, the replay's `UPDATE` holds the shown state in its `WHERE`; in
//! memory, it runs under the inbox's lock), so a worker that settles the
//! event between the page and the replay is caught too; an inbox of your
//! own that keeps the trait's default `replay_if` checks just before the
//! replay instead.
//!
//! The replay of the dead events holds for those its page counted: its
//! form carries the newest of them and how many there were, and once an
//! event matching the filter died since (newer than that one, or more of
//! them than counted) it replays nothing and shows the dead events as they
//! are now, to replay from there. That check is made just before the
//! replay; the replay itself is bounded by the newest shown
//! ([`InboxFilter::seq_through`](crate::store::InboxFilter::seq_through)),
//! which the crate's inboxes apply in the replay's own step
//! ([`Inbox::replay_matching`]: in its `UPDATE`, or under the lock in
//! memory), so an event newer than the one pinned that dies after the
//! check stays dead. What neither catches: an older event (numbered below
//! the one pinned) that dies after the page while as many others leave the
//! dead (replayed or purged) keeps the count as the page showed it, is
//! within the bound, and is replayed with the others. An inbox of your own
//! that does not apply `seq_through` replays newer ones too: the console
//! logs it at `warn`, with how many (`past_shown`).
//!
//! Each action is a form `POST` carrying a CSRF token derived from the
//! session, checked in constant time. Before that, and before any
//! credential is looked at, a `POST` the browser says another origin sent
//! (`Sec-Fetch-Site` other than `same-origin` or `none`: `cross-site`, or
//! `same-site` from a sibling subdomain) is refused with `403`, whatever
//! it carries: with a bearer token every form has the same CSRF token, and a
//! proxy in front that adds the `Authorization` header would let a form
//! from another origin in with it. Browsers set that header on their own;
//! from one too old to that sends an `Origin`, a `POST` whose origin is
//! `null` or names another host or port than its `Host` (or an
//! `X-Forwarded-Host`), or is a plain `http` page where the request is
//! known to have come over HTTPS (`X-Forwarded-Proto: https` from a proxy
//! in front, or [`secure_cookie`](Console::secure_cookie); a page on a
//! loopback host excepted, where browsers keep a `Secure` cookie from
//! plain HTTP), is refused the same way. A
//! proxy in front that rewrites `Host` should pass the browser's on, port
//! and all (nginx: `proxy_set_header Host $http_host;`), or set
//! `X-Forwarded-Host` so, or such a browser's actions are refused. The
//! pages' referrer policy is `same-origin`, so that a form of theirs tells
//! its origin (under `no-referrer` it would say `null`). A request with
//! neither header (curl, a script, a browser older than both) is not
//! refused for want of them. Each
//! action is logged at `info` level under
//! the target `clink_webhooks::console` when asked for, before it runs,
//! and again with what was done (values from bodies in their escaped
//! `Debug` form). A replay the inbox does not confirm, because it failed
//! or did not answer within the console's [`timeout`](Console::timeout),
//! may have been applied all the same (a store goes on with a write the
//! console stopped waiting for): it is logged at `warn`, and answered
//! `503` with a page that says so, and to look at the events before
//! trying again. A read-only console ([`read_only`](Console::read_only))
//! shows no action and refuses them.
//!
//! # Access
//!
//! There is no console without authentication: build it either
//!
//! - [`with_token`](Console::with_token): each request carries
//!   `Authorization: Bearer <token>`, or the session cookie the console sets
//!   when a page is opened once with `?token=<token>` (it then redirects to
//!   the same page without the token). A browser that already has a
//!   session and opens a `?token=` link (a bookmark) is sent to the page
//!   without the token, its session kept, and the token is not checked at
//!   all: a session cannot tell a right token from a wrong one. A
//!   `?token=` on a request the browser says loads no page of its own (an
//!   image, a script, a fetch or a frame another page holds:
//!   `Sec-Fetch-Mode` other than `navigate`, or `Sec-Fetch-Dest` other
//!   than `document`), or comes from another site's page
//!   (`Sec-Fetch-Site` `cross-site` or `same-site`), is answered `403` and
//!   neither checked nor counted,
//!   so no page can spend the operator's budget of wrong tokens by
//!   holding the console's address.
//!   A token in the address can reach the logs of a proxy in front: prefer
//!   the bearer header where a client can send one. The cookie
//!   is `HttpOnly`, `SameSite=Strict`, scoped to the mount path, `Secure` with
//!   [`secure_cookie`](Console::secure_cookie), and lasts
//!   [`session_ttl`](Console::session_ttl) (12 h by default). A missing or
//!   wrong token is answered `401` with nothing of the inbox, and each
//!   wrong one is logged at `warn` (how it came, in the query or the
//!   header; nothing of it). After 10 wrong tokens (each made up for
//!   6 s after it; a right one between them does not start the count
//!   again, since clients behind one proxy share it), every token
//!   presented, the right one too, is answered `429` with `Retry-After`
//!   until the wait is over, and one more is taken every 6 s while they go
//!   on; session cookies still get in. Each client has such a budget of
//!   its own when the console knows the connections' addresses: served by
//!   the crate's [`Server`](crate::server::Server), or by axum with
//!   `into_make_service_with_connect_info::<SocketAddr>()` (an IPv6
//!   client is its `/64`, and at most 1,024 clients are told apart at a
//!   time). Behind a proxy every connection is the proxy's: tell the
//!   console the header the proxy puts the client's address in with
//!   [`client_address_header`](Console::client_address_header), and the
//!   proxies' addresses with
//!   [`trusted_proxies`](Console::trusted_proxies). Otherwise
//!   clients share one budget, and a client that sends wrong tokens delays
//!   the logins of others while it goes on. All clients
//!   together take 100 wrong tokens in a row, then one every 0.6 s: past
//!   that, only clients that presented the right token in the last 24 h
//!   (and sessions) get in, so that many addresses guessing at once get no
//!   more guesses, and cannot keep out those who logged in lately.
//! - [`behind_app_auth`](Console::behind_app_auth): the console checks no
//!   credentials; **the app must put its own authentication in front** (a
//!   tower layer on the nested router, or its proxy's). The secret given
//!   keys the CSRF tokens.
//!
//! Mount it on a path of its own, served over HTTPS in production, and not
//! on the port Clink's deliveries reach if you can avoid it.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, OriginalUri, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::header::{self, HeaderValue};
use http::{StatusCode, Uri};

use crate::store::Inbox;
use crate::{ConfigError, Timestamp};

mod auth;
mod pages;
mod throttle;
mod view;

use auth::{Keys, Who, CSRF_COOKIE, SESSION_COOKIE};
use throttle::{Spent, Throttle};

/// The Content-Security-Policy every console response carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; \
    script-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// The shortest token or secret the console takes, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// How long a session cookie lasts unless set otherwise (12 h).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// How many events a page lists unless set otherwise.
pub const DEFAULT_PAGE_SIZE: usize = 50;

/// How long a page waits for the inbox unless set otherwise (5 s), all its
/// inbox calls together.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The inbox console: build it with [`with_token`](Self::with_token) or
/// [`behind_app_auth`](Self::behind_app_auth), then mount
/// [`router`](Self::router). See the [module docs](self).
#[derive(Clone)]
pub struct Console {
    shared: Shared,
}

#[derive(Clone)]
struct Shared {
    inbox: Arc<dyn Inbox>,
    keys: Keys,
    read_only: bool,
    secure_cookie: bool,
    session_ttl: Duration,
    page_size: usize,
    timeout: Duration,
    /// The wrong tokens sent lately.
    throttle: Arc<Throttle>,
    /// The header the proxy in front puts the client's address in, when
    /// the console is told to read it.
    client_header: Option<http::HeaderName>,
    /// The proxies whose header is believed; every connection's when
    /// empty.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// The sessions logged out, by nonce, with when they were: refused
    /// until their cookies would have expired anyway.
    logged_out: Arc<Mutex<HashMap<String, Timestamp>>>,
}

impl Shared {
    /// Ends the session `nonce` in this process.
    fn log_out(&self, nonce: &str, now: Timestamp) {
        let ttl = i64::try_from(self.session_ttl.as_millis()).unwrap_or(i64::MAX);
        let mut logged_out = self
            .logged_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Those whose cookies have expired since are forgotten: only a
        // session, which only the token opens, can be logged out, so the
        // table holds no more than the logins of one session's time.
        logged_out.retain(|_, at| now.as_millis().saturating_sub(at.as_millis()) < ttl);
        logged_out.insert(nonce.to_owned(), now);
    }

    /// Whether session `nonce` was logged out.
    fn is_logged_out(&self, nonce: &str) -> bool {
        self.logged_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(nonce)
    }
}

impl fmt::Debug for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("Console")
            .field("keys", &s.keys)
            .field("read_only", &s.read_only)
            .field("secure_cookie", &s.secure_cookie)
            .field("session_ttl", &s.session_ttl)
            .field("page_size", &s.page_size)
            .field("timeout", &s.timeout)
            .field("client_header", &s.client_header)
            .field("trusted_proxies", &s.trusted_proxies)
            .finish_non_exhaustive()
    }
}

fn check_secret(what: &str, secret: &[u8]) -> Result<(), ConfigError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(ConfigError::new(format!(
            "the console's {what} is {} bytes long; it must be at least {MIN_SECRET_LEN}",
            secret.len()
        )));
    }
    Ok(())
}

impl Console {
    fn new(inbox: Arc<dyn Inbox>, keys: Keys) -> Self {
        Self {
            shared: Shared {
                inbox,
                keys,
                read_only: false,
                secure_cookie: false,
                session_ttl: DEFAULT_SESSION_TTL,
                page_size: DEFAULT_PAGE_SIZE,
                timeout: DEFAULT_TIMEOUT,
                throttle: Arc::default(),
                client_header: None,
                trusted_proxies: Vec::new(),
                logged_out: Arc::default(),
            },
        }
    }

    /// A console over `inbox` that lets in the requests carrying `token`,
    /// as a bearer token or through the session cookie set from it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `token` is shorter than [`MIN_SECRET_LEN`]
    /// bytes or holds whitespace or control characters.
    pub fn with_token(inbox: impl Inbox, token: impl AsRef<str>) -> Result<Self, ConfigError> {
        let token = token.as_ref();
        check_secret("token", token.as_bytes())?;
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new(
                "the console's token must not hold whitespace or control characters",
            ));
        }
        Ok(Self::new(Arc::new(inbox), Keys::for_token(token)))
    }

    /// A console over `inbox` that checks no credentials: the app puts its
    /// own authentication in front of [`router`](Self::router), and must.
    /// `csrf_secret` keys the CSRF tokens of its forms; give every instance
    /// of the app the same one.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `csrf_secret` is shorter than
    /// [`MIN_SECRET_LEN`] bytes.
    pub fn behind_app_auth(
        inbox: impl Inbox, csrf_secret: impl AsRef<[u8]>,
    ) -> Result<Self, ConfigError> {
        check_secret("CSRF secret", csrf_secret.as_ref())?;
        Ok(Self::new(
            Arc::new(inbox),
            Keys::for_app(csrf_secret.as_ref()),
        ))
    }

    /// Shows no action and refuses them (`403`): pages only.
    #[must_use]
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.shared.read_only = read_only;
        self
    }

    /// Marks the cookies `Secure`, so browsers send them over HTTPS only.
    /// Set it whenever the console is served over HTTPS. The console then
    /// also takes the requests for HTTPS ones: from a browser that sends
    /// no `Sec-Fetch-Site`, a form of a plain `http` page other than a
    /// loopback one is refused (see the module's docs).
    #[must_use]
    pub fn secure_cookie(mut self, secure: bool) -> Self {
        self.shared.secure_cookie = secure;
        self
    }

    /// How long a session cookie lets its browser in (default 12 h).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `ttl` is under a second.
    pub fn session_ttl(mut self, ttl: Duration) -> Result<Self, ConfigError> {
        if ttl < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "the console's session must last a second at least",
            ));
        }
        self.shared.session_ttl = ttl;
        Ok(self)
    }

    /// How many events a page of the list shows (default 50).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] unless `events` is 1 to 1000.
    pub fn page_size(mut self, events: usize) -> Result<Self, ConfigError> {
        if !(1..=1000).contains(&events) {
            return Err(ConfigError::new(
                "the console's page size must be 1 to 1000 events",
            ));
        }
        self.shared.page_size = events;
        Ok(self)
    }

    /// How long a page waits for the inbox before answering `503` (default
    /// 5 s): the time all the inbox calls of one request have together,
    /// from when it came in.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `timeout` is zero.
    pub fn timeout(mut self, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout.is_zero() {
            return Err(ConfigError::new(
                "the console's timeout must be longer than zero",
            ));
        }
        self.shared.timeout = timeout;
        Ok(self)
    }

    /// Tells clients apart by the address the proxy in front of the
    /// console puts in `header` (`x-forwarded-for`, `x-real-ip`, ...)
    /// instead of the connection's, which behind a proxy is the proxy's
    /// for every client: each client then has a budget of wrong tokens of
    /// its own (see [Access](self#access)). The console reads the last
    /// address the header lists (of its last line), the one the proxy
    /// nearest the console put there; a request without one, or with one
    /// that is not an address, counts as the connection's.
    ///
    /// **Name your proxies with [`trusted_proxies`](Self::trusted_proxies),
    /// or set this only when every request reaches the console through a
    /// proxy you run that sets or appends that header**, the console's own
    /// address out of anyone else's reach: a client that reaches it
    /// directly names any address it likes, a fresh budget for each guess,
    /// or the address of a client that presented the token lately, which
    /// lets its guesses past the budget of all clients together and spends
    /// that client's own budget. With `trusted_proxies` the header is read
    /// only on connections from those proxies.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `header` is not a header name.
    pub fn client_address_header(mut self, header: &str) -> Result<Self, ConfigError> {
        let name = http::HeaderName::from_bytes(header.trim().as_bytes()).map_err(|_| {
            ConfigError::new(
                "the console's client address header must be a header name, such as \
                 x-forwarded-for",
            )
        })?;
        self.shared.client_header = Some(name);
        Ok(self)
    }

    /// The proxies in front of the console, by address (`10.0.0.7`,
    /// `::1`) or range (`10.0.0.0/8`, `fd00::/8`), whose
    /// [`client_address_header`](Self::client_address_header) is believed.
    /// A request on a connection from anywhere else counts as that
    /// connection's address, whatever header it carries. On a
    /// connection from one of them the console reads the header's
    /// addresses from the last back, past every address in these ranges
    /// (the proxies' own, where there are several in a row), and the first
    /// one outside them is the client's; an entry that is not an address
    /// ends the search at the nearest proxy's address, and a list of
    /// proxies only is the first of them. A connection whose address the
    /// console is not told (see [Access](self#access)) has no header
    /// believed either.
    ///
    /// Without it the header is read on every connection, and only its
    /// last address counts. An IPv4 address may be given IPv4-mapped
    /// (`::ffff:10.0.0.7`), as a dual-stack listener logs it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first entry that is neither an IP
    /// address nor a range, or when there is none.
    pub fn trusted_proxies<I, S>(mut self, proxies: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.shared.trusted_proxies = parse_proxies(proxies)?;
        Ok(self)
    }

    /// The console's router: mount it with `Router::nest("/console", ...)`
    /// (any path), or serve it as it is.
    pub fn router(self) -> Router {
        let shared = Arc::new(self.shared);
        Router::new()
            .route("/", get(pages::overview))
            .route("/events", get(pages::events))
            .route("/events/replay-dead", post(pages::replay_dead))
            .route("/events/{seq}", get(pages::event))
            .route("/events/{seq}/replay", post(pages::replay))
            .route("/logout", post(pages::logout))
            .route_layer(middleware::from_fn_with_state(Arc::clone(&shared), guard))
            .route("/assets/console.css", get(pages::stylesheet))
            .route("/assets/console.js", get(pages::script))
            .fallback(pages::not_found)
            .layer(middleware::map_response(security_headers))
            .with_state(shared)
    }
}

/// What a page knows of its request: who made it, where the console is,
/// and until when its inbox calls may run.
#[derive(Debug, Clone)]
struct Ctx {
    who: Who,
    /// The path the console is mounted at, without a trailing `/` (`""` at
    /// the root).
    base: String,
    /// The request's deadline: every inbox call it makes shares it.
    deadline: Deadline,
}

/// The time a request's inbox calls have, together: the console's
/// [`timeout`](Console::timeout) from when the request came in, so that a
/// page reading the inbox four times waits no longer than one reading it
/// once.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: tokio::time::Instant,
    timeout: Duration,
}

impl Deadline {
    fn starting_now(timeout: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            // A timeout too long to be an instant is as long as a year.
            at: now
                .checked_add(timeout)
                .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600)),
            timeout,
        }
    }
}

/// The path the console is mounted at: the original path less the part
/// the console's router saw.
fn base_path(original: Option<&OriginalUri>, uri: &Uri) -> String {
    let Some(OriginalUri(original)) = original else {
        return String::new();
    };
    let (full, inner) = (original.path(), uri.path());
    let base = if inner == "/" {
        full.trim_end_matches('/')
    } else {
        full.strip_suffix(inner).unwrap_or("")
    };
    base.to_owned()
}

/// The address of the client a request came from: the one the proxy in
/// front put last in the header [`Console::client_address_header`] names,
/// or else the connection's.
fn client_address(shared: &Shared, request: &Request) -> Option<IpAddr> {
    let connection = connection_address(request.extensions());
    let Some(name) = shared.client_header.as_ref() else {
        return connection;
    };
    if shared.trusted_proxies.is_empty() {
        return forwarded_address(request.headers(), name).or(connection);
    }
    let proxy = connection?.to_canonical();
    if !trusted(&shared.trusted_proxies, proxy) {
        return Some(proxy);
    }
    Some(forwarded_client(
        request.headers(),
        name,
        &shared.trusted_proxies,
        proxy,
    ))
}

/// The proxies given to [`Console::trusted_proxies`], read.
pub(crate) fn parse_proxies<I, S>(proxies: I) -> Result<Vec<ipnet::IpNet>, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let proxies: Vec<ipnet::IpNet> = proxies
        .into_iter()
        .map(|entry| {
            let entry = entry.as_ref().trim();
            entry
                .parse::<ipnet::IpNet>()
                .map(|net| canonical_net(net.trunc()))
                .or_else(|_| {
                    entry
                        .parse::<IpAddr>()
                        .map(|ip| ipnet::IpNet::from(ip.to_canonical()))
                })
                .map_err(|_| {
                    ConfigError::new(format!(
                        "a trusted proxy is an IP address or a range such as 10.0.0.0/8, not {:?}",
                        entry.chars().take(64).collect::<String>()
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    if proxies.is_empty() {
        // No proxy would believe none, where an empty list read as "every
        // connection" would believe everyone.
        return Err(ConfigError::new(
            "Console::trusted_proxies needs at least one address or range",
        ));
    }
    Ok(proxies)
}

/// `net` with an IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) as the
/// IPv4 range it maps, as the connections' addresses are compared.
fn canonical_net(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, ipnet::IpNet::V4),
            None => net,
        },
        other => other,
    }
}

/// Whether `address` is one of the trusted proxies'.
fn trusted(proxies: &[ipnet::IpNet], address: IpAddr) -> bool {
    let address = address.to_canonical();
    proxies.iter().any(|net| net.contains(&address))
}

/// The client a request from the trusted proxy at `proxy` came from: the
/// first address outside the trusted ranges, reading the `name` headers'
/// entries from the last back; the nearest proxy's when an entry is not an
/// address, the first of them when all are proxies.
fn forwarded_client(
    headers: &http::HeaderMap, name: &http::HeaderName, proxies: &[ipnet::IpNet], proxy: IpAddr,
) -> IpAddr {
    let mut nearest = proxy;
    let entries = headers
        .get_all(name)
        .iter()
        .rev()
        .flat_map(|line| line.as_bytes().rsplit(|byte| *byte == b','));
    for entry in entries {
        match address_entry(entry) {
            Some(address) if trusted(proxies, address) => nearest = address,
            Some(address) => return address,
            None => return nearest,
        }
    }
    nearest
}

/// The last address the last `name` header lists: an IP address, or one
/// with a port (`192.0.2.7:4711`, `[2001:db8::1]:4711`), or in brackets
/// (`[2001:db8::1]`). Only that last entry is read as text: what a client
/// put before it (bytes that are not text, say) does not hide it.
fn forwarded_address(headers: &http::HeaderMap, name: &http::HeaderName) -> Option<IpAddr> {
    let value = headers.get_all(name).iter().next_back()?.as_bytes();
    address_entry(value.rsplit(|byte| *byte == b',').next()?)
}

/// One entry of a forwarded header as an address: an IP address, or one
/// with a port, or in brackets.
fn address_entry(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim();
    let bare = entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(entry);
    bare.parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|address| address.ip()))
        .map(|ip| ip.to_canonical())
}

/// The address of the connection a request came on, as axum's
/// [`ConnectInfo`] or the crate's [`Server`](crate::server::Server) put it
/// in its extensions; `None` when neither did.
fn connection_address(extensions: &http::Extensions) -> Option<IpAddr> {
    let from_axum = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    #[cfg(feature = "server")]
    let from_axum = from_axum.or_else(|| {
        extensions
            .get::<crate::server::Peer>()
            .map(|peer| peer.0.ip())
    });
    from_axum
}

/// `429` while the budget of wrong tokens of the client at `address` is
/// spent, so that the token presented is not checked; `None` otherwise.
/// The first value of `name` in `query`, percent-decoded with each `+`
/// kept as it is (a form's reading makes it a space); `None` when absent
/// or not UTF-8 once decoded.
fn query_value_keeping_plus(query: &str, name: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?;
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[at], bytes.get(at + 1), bytes.get(at + 2)) {
            (b'%', Some(&high), Some(&low)) if hex(high).is_some() && hex(low).is_some() => {
                let value = hex(high).unwrap_or(0) * 16 + hex(low).unwrap_or(0);
                decoded.push(u8::try_from(value).unwrap_or(b'%'));
                at += 3;
            }
            (byte, ..) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

fn throttled(shared: &Shared, address: Option<IpAddr>) -> Option<Response> {
    let wait = shared
        .throttle
        .refused_for(throttle::client(address), tokio::time::Instant::now())?;
    Some(pages::too_many_wrong_tokens(throttle::retry_after_secs(
        wait,
    )))
}

/// Logs a wrong token, presented `via` the query or the header by the
/// client at `address`, counts it against that client's budget, and
/// answers `401`. Nothing of the token is logged.
fn wrong_token(shared: &Shared, address: Option<IpAddr>, via: &'static str) -> Response {
    let refused_for = shared
        .throttle
        .failed(throttle::client(address), tokio::time::Instant::now());
    let client = address.map(tracing::field::display);
    tracing::warn!(
        target: "clink_webhooks::console",
        via,
        client,
        "console: a wrong token was refused"
    );
    if let Some((wait, spent)) = refused_for {
        let retry_after_s = throttle::retry_after_secs(wait);
        let budget = match spent {
            Spent::Own => "client",
            Spent::All => "all clients",
        };
        tracing::warn!(
            target: "clink_webhooks::console",
            client,
            budget,
            retry_after_s,
            "{}",
            lockout(spent, retry_after_s)
        );
    }
    pages::denied()
}

/// What the log says when a wrong token spent the budget `spent`, its
/// tokens refused for `retry_after_s` seconds: that budget's numbers.
fn lockout(spent: Spent, retry_after_s: u64) -> String {
    let (burst, refill) = (spent.burst(), seconds(spent.refill()));
    match spent {
        Spent::Own => format!(
            "console: {burst} wrong tokens in a row from this client: every token it \
             presents is refused for {retry_after_s} s, and one is taken every {refill} s \
             after that while they go on (session cookies still get in)"
        ),
        Spent::All => format!(
            "console: {burst} wrong tokens in a row from all clients together: every token \
             presented is refused for {retry_after_s} s, but from clients that presented \
             the right one in the last {} h, and one is taken every {refill} s after that \
             while they go on (session cookies still get in)",
            throttle::KNOWN_FOR.as_secs() / 3600
        ),
    }
}

/// A duration in seconds, with decimals when it has a part of a second
/// (`6`, `0.6`).
fn seconds(span: Duration) -> String {
    span.as_secs_f64().to_string()
}

/// Remembers that the client at `address` presented the right token: the
/// budget of all clients' wrong tokens no longer refuses it.
fn right_token(shared: &Shared, address: Option<IpAddr>) {
    shared
        .throttle
        .succeeded(throttle::client(address), tokio::time::Instant::now());
}

/// Lets a request in, or answers `401` (`429` for a token while too many
/// wrong ones came, `403` for a form sent from another origin); records who
/// it is for the page.
async fn guard(State(shared): State<Arc<Shared>>, mut request: Request, next: Next) -> Response {
    // A form another origin made the browser send is refused before anything
    // else: whatever credentials came with it (a session cookie, or an
    // `Authorization` header a proxy in front adds), it is no action of
    // the person at the console.
    if request.method() == http::Method::POST
        && cross_site(request.headers(), request.uri(), shared.secure_cookie)
    {
        tracing::warn!(
            target: "clink_webhooks::console",
            path = request.uri().path(),
            "console: a form sent from another origin was refused"
        );
        return pages::cross_site();
    }
    let now = Timestamp::now();
    let base = base_path(request.extensions().get::<OriginalUri>(), request.uri());
    let cookie_path = if base.is_empty() { "/" } else { &base }.to_owned();
    let keys = &shared.keys;
    let mut set_cookie = None;
    // The client, when the app hands the console its connections'
    // addresses: each has a budget of wrong tokens of its own.
    let address = client_address(&shared, &request);
    let who = if keys.checks_token() {
        // Every session cookie sent is tried, not only the first: a cookie
        // of the same name planted for a longer path (sent first) does not
        // hide the console's own.
        let session = auth::cookies(request.headers(), SESSION_COOKIE)
            .find_map(|c| keys.check_cookie("session", c, shared.session_ttl, now))
            .filter(|nonce| !shared.is_logged_out(nonce));
        let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(request.uri())
            .map(|q| q.0)
            .unwrap_or_default();
        if let Some((_, token)) = pairs.iter().find(|(name, _)| name == "token") {
            // The same page without the token.
            let rest: Vec<(&str, String)> = pairs
                .iter()
                .filter(|(name, _)| name != "token")
                .map(|(name, value)| (name.as_str(), value.clone()))
                .collect();
            let path = request
                .extensions()
                .get::<OriginalUri>()
                .map_or_else(|| request.uri().path(), |original| original.path());
            let location = format!("{path}{}", view::query_string(&rest));
            if session.is_some() {
                // A session already in (a bookmarked `?token=` link) keeps
                // its cookie, and the token is not checked at all: told
                // apart, a right one from a wrong one would let a stolen
                // session guess the token without limit.
                return (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
            }
            // Another page can make the browser load the console with a
            // `?token=` (an image, a script, or a navigation it starts):
            // never a login, and not counted, so that no page spends the
            // operator's budget of wrong tokens by being opened. (Its
            // session cookie would not come with the page it leads to
            // either.)
            if !page_load(request.headers())
                || cross_site(request.headers(), request.uri(), shared.secure_cookie)
            {
                return pages::token_not_from_a_page();
            }
            if let Some(refused) = throttled(&shared, address) {
                return refused;
            }
            // Read as a form, a `+` in the address is a space, which no
            // token holds: a token with a `+` (base64's) pasted as it is
            // is also tried with its `+` kept.
            let pasted = token
                .contains(' ')
                .then(|| query_value_keeping_plus(request.uri().query().unwrap_or(""), "token"))
                .flatten();
            if !keys.is_token(token) && !pasted.is_some_and(|pasted| keys.is_token(&pasted)) {
                return wrong_token(&shared, address, "query");
            }
            right_token(&shared, address);
            // A new session from the token.
            let (cookie, _) = keys.new_cookie("session", now);
            return (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, location),
                    (
                        header::SET_COOKIE,
                        auth::set_cookie(
                            SESSION_COOKIE,
                            &cookie,
                            &cookie_path,
                            shared.session_ttl,
                            shared.secure_cookie,
                            auth::SameSite::Strict,
                        ),
                    ),
                ],
            )
                .into_response();
        }
        // A session already in is let in first: a bearer header beside it
        // (one a proxy in front adds) is neither checked nor counted.
        if let Some(nonce) = session {
            Who::Session(nonce)
        } else if let Some(token) = auth::bearer(request.headers()) {
            if let Some(refused) = throttled(&shared, address) {
                return refused;
            }
            if !keys.is_token(token) {
                return wrong_token(&shared, address, "bearer");
            }
            right_token(&shared, address);
            Who::Bearer
        } else {
            return pages::denied();
        }
    } else {
        let ttl = Duration::from_secs(400 * 24 * 3600);
        match auth::cookies(request.headers(), CSRF_COOKIE)
            .find_map(|c| keys.check_cookie("csrf", c, ttl, now))
        {
            Some(nonce) => Who::App(nonce),
            None => {
                let (cookie, nonce) = keys.new_cookie("csrf", now);
                set_cookie = Some(auth::set_cookie(
                    CSRF_COOKIE,
                    &cookie,
                    &cookie_path,
                    ttl,
                    shared.secure_cookie,
                    auth::SameSite::Lax,
                ));
                Who::App(nonce)
            }
        }
    };
    request.extensions_mut().insert(Ctx {
        who,
        base,
        deadline: Deadline::starting_now(shared.timeout),
    });
    // A page that panics (an inbox of the app's own that panics as it is
    // called) is answered, not its connection closed.
    let mut response = match crate::guard::CatchUnwind::new(next.run(request)).await {
        Ok(response) => response,
        Err(panic) => pages::panicked(&panic),
    };
    if let Some(cookie) = set_cookie.and_then(|c| HeaderValue::try_from(c).ok()) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Whether the browser says the request came from another origin:
/// `Sec-Fetch-Site` other than `same-origin` or `none` (`cross-site`,
/// `same-site`); or, from a browser that sends no `Sec-Fetch-Site` but an
/// `Origin`, an origin that is `null` or names another host or port than
/// the request's `Host` and every `X-Forwarded-Host`, or a plain `http`
/// page posting to a request known to have come over HTTPS
/// (`X-Forwarded-Proto: https`, the request's own scheme, or a `Secure`
/// cookie), unless that page is on a loopback host (where browsers keep
/// a `Secure` cookie from plain HTTP). A request with neither header
/// (curl, a script) is not.
fn cross_site(headers: &http::HeaderMap, uri: &Uri, secure: bool) -> bool {
    let mut sites = headers.get_all("sec-fetch-site").iter().peekable();
    if sites.peek().is_some() {
        return sites.any(|value| {
            let value = value.as_bytes();
            !(value.eq_ignore_ascii_case(b"same-origin") || value.eq_ignore_ascii_case(b"none"))
        });
    }
    let hosts: Vec<&[u8]> = headers
        .get_all(header::HOST)
        .iter()
        .chain(headers.get_all("x-forwarded-host").iter())
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .chain(
            uri.authority()
                .map(|authority| authority.as_str().as_bytes()),
        )
        .collect();
    // A hop that says `https` (the browser's side of a proxy in front), the
    // request's own scheme, or the cookie: a hop that says `http` may be
    // one behind a proxy that ended TLS, and tells nothing.
    let https = headers
        .get_all("x-forwarded-proto")
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .any(|scheme| scheme.trim_ascii().eq_ignore_ascii_case(b"https"))
        || uri.scheme_str() == Some("https")
        || secure;
    headers.get_all(header::ORIGIN).iter().any(|origin| {
        !hosts
            .iter()
            .any(|host| same_host(origin.as_bytes(), host, https))
    })
}

/// Whether the `Origin` `origin` (`scheme://host[:port]`) names the host
/// and port of `host` (a `Host` header's `host[:port]`, the port by
/// default the origin's scheme's), and is not a plain `http` page of a
/// host other than loopback when the request came over HTTPS. `null`
/// names none.
fn same_host(origin: &[u8], host: &[u8], https: bool) -> bool {
    let Ok(origin) = Uri::try_from(origin) else {
        return false;
    };
    let Ok(host) = http::uri::Authority::try_from(host.trim_ascii()) else {
        return false;
    };
    let (Some(scheme), Some(authority)) = (origin.scheme_str(), origin.authority()) else {
        return false;
    };
    let default = if scheme.eq_ignore_ascii_case("https") {
        443
    } else if scheme.eq_ignore_ascii_case("http") {
        if https && !is_loopback(authority.host()) {
            return false;
        }
        80
    } else {
        return false;
    };
    authority.host().eq_ignore_ascii_case(host.host())
        && authority.port_u16().unwrap_or(default) == host.port_u16().unwrap_or(default)
}

/// Whether `host` (as a URL holds it) is this machine: `localhost` or a
/// name under it, an address in `127.0.0.0/8`, or `[::1]`.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost")
        || host
            .len()
            .checked_sub(".localhost".len())
            .and_then(|at| host.get(at..))
            .is_some_and(|end| end.eq_ignore_ascii_case(".localhost"))
    {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether the browser says the request loads a page in its own window
/// or tab (`Sec-Fetch-Mode: navigate` and `Sec-Fetch-Dest: document`),
/// rather than an image, a script, a fetch or a frame another page holds.
/// A request without the headers (curl, a script, an older browser) is
/// taken for one.
fn page_load(headers: &http::HeaderMap) -> bool {
    let only = |name: &str, expected: &[u8]| {
        headers
            .get_all(name)
            .iter()
            .all(|value| value.as_bytes().eq_ignore_ascii_case(expected))
    };
    only("sec-fetch-mode", b"navigate") && only("sec-fetch-dest", b"document")
}

/// The headers every console response carries.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ] {
        headers.insert(name, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use bytes::Bytes;
    use tower::ServiceExt;

    use super::*;
    use crate::store::{MemoryInbox, NewEvent};

    const TOKEN: &str = "console-test-token-0123456789";

    /// An inbox with one event, dead (seq 1).
    async fn one_dead() -> Arc<MemoryInbox> {
        let inbox = Arc::new(MemoryInbox::new());
        let now = Timestamp::now();
        let event = NewEvent::new(
            None,
            "evt_dead".to_owned(),
            "order.succeeded".to_owned(),
            Some(now),
            None,
            now,
            now,
            Bytes::from_static(b"{}"),
        );
        inbox
            .insert_dead(&event, "the warehouse said no")
            .await
            .unwrap();
        inbox
    }

    /// What the console mounted at `/console` answers to `method path` with
    /// `headers` and, for a form, `form`.
    async fn send(
        app: &Router, method: &str, path: &str, headers: &[(&str, &str)], form: Option<&str>,
    ) -> Response {
        let mut request = http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match form {
            Some(form) => {
                request = request.header("content-type", "application/x-www-form-urlencoded");
                Body::from(form.to_owned())
            }
            None => Body::empty(),
        };
        app.clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap()
    }

    fn mounted(console: Console) -> Router {
        Router::new().nest("/console", console.router())
    }

    fn header(response: &Response, name: header::HeaderName) -> Option<&str> {
        response.headers().get(name).and_then(|v| v.to_str().ok())
    }

    /// The replay form of event 1, dead and never replayed, with `csrf`.
    fn replay_form(csrf: &str) -> String {
        format!("csrf={csrf}&status=dead&replays=0&handled=")
    }

    /// A cookie of the console's name planted before its own (a longer
    /// path, a parent domain: sent first) does not keep a session out,
    /// nor, behind the app's auth, its actions.
    #[tokio::test]
    async fn a_planted_cookie_before_the_consoles_own_does_not_hide_it() {
        let inbox = one_dead().await;
        let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
        let keys = Keys::for_token(TOKEN);
        let (session, _) = keys.new_cookie("session", Timestamp::now());
        let cookies = format!("{SESSION_COOKIE}=x; {SESSION_COOKIE}={session}");
        let page = send(
            &app,
            "GET",
            "/console/events",
            &[("cookie", &cookies)],
            None,
        )
        .await;
        assert_eq!(page.status(), StatusCode::OK);

        let secret = [7u8; 32];
        let app = mounted(Console::behind_app_auth(Arc::clone(&inbox), secret).unwrap());
        let keys = Keys::for_app(&secret);
        let (csrf_cookie, nonce_app) = keys.new_cookie("csrf", Timestamp::now());
        let cookies = format!("{CSRF_COOKIE}=1.2.3; {CSRF_COOKIE}={csrf_cookie}");
        let csrf = keys.csrf(&Who::App(nonce_app));
        let done = send(
            &app,
            "POST",
            "/console/events/1/replay",
            &[("cookie", &cookies)],
            Some(&replay_form(&csrf)),
        )
        .await;
        assert_eq!(done.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            header(&done, header::LOCATION),
            Some("/console/events/1?done=replayed")
        );
        assert!(done.headers().get(header::SET_COOKIE).is_none());
    }

    /// With a session in, a `?token=` is not checked: a right and a wrong
    /// one get the same answer (the page without it, the session kept, no
    /// new cookie), and no wrong one is counted.
    #[tokio::test(start_paused = true)]
    async fn a_token_beside_a_session_is_not_checked() {
        let app = mounted(Console::with_token(one_dead().await, TOKEN).unwrap());
        let (session, _) = Keys::for_token(TOKEN).new_cookie("session", Timestamp::now());
        let cookie = format!("{SESSION_COOKIE}={session}");
        let wrong = "wrongwrong-guess-zyxwvutsrq";
        for token in [TOKEN, wrong].into_iter().chain([wrong; 20]) {
            let page = send(
                &app,
                "GET",
                &format!("/console/events?status=dead&token={token}"),
                &[("cookie", &cookie)],
                None,
            )
            .await;
            assert_eq!(page.status(), StatusCode::SEE_OTHER);
            assert_eq!(
                header(&page, header::LOCATION),
                Some("/console/events?status=dead")
            );
            assert!(page.headers().get(header::SET_COOKIE).is_none());
        }
        // Twenty wrong ones beside the session, none counted: the token
        // still gets in, in the query or the header.
        let login = send(&app, "GET", &format!("/console?token={TOKEN}"), &[], None).await;
        assert_eq!(login.status(), StatusCode::SEE_OTHER);
        assert!(login.headers().get(header::SET_COOKIE).is_some());
        let bearer = format!("Bearer {TOKEN}");
        let page = send(&app, "GET", "/console", &[("authorization", &bearer)], None).await;
        assert_eq!(page.status(), StatusCode::OK);
    }

    /// A form another site made the browser send is refused, with every
    /// kind of login, before it does anything; from the console's own
    /// pages, or without the header, it goes through.
    #[tokio::test]
    async fn a_form_from_another_site_is_refused() {
        let inbox = one_dead().await;
        let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
        let keys = Keys::for_token(TOKEN);
        let bearer = format!("Bearer {TOKEN}");
        let form = replay_form(&keys.csrf(&Who::Bearer));
        let (session, nonce) = keys.new_cookie("session", Timestamp::now());
        let cookie = format!("{SESSION_COOKIE}={session}");
        let session_form = replay_form(&keys.csrf(&Who::Session(nonce)));
        let secret = [7u8; 32];
        let app_auth = mounted(Console::behind_app_auth(Arc::clone(&inbox), secret).unwrap());
        let app_keys = Keys::for_app(&secret);
        let (csrf_cookie, app_nonce) = app_keys.new_cookie("csrf", Timestamp::now());
        let csrf_cookie = format!("{CSRF_COOKIE}={csrf_cookie}");
        let app_form = replay_form(&app_keys.csrf(&Who::App(app_nonce)));
        for site in ["cross-site", "Cross-Site", "same-site"] {
            for (app, credentials, form) in [
                (&app, ("authorization", bearer.as_str()), &form),
                (&app, ("cookie", cookie.as_str()), &session_form),
                (&app_auth, ("cookie", csrf_cookie.as_str()), &app_form),
            ] {
                let refused = send(
                    app,
                    "POST",
                    "/console/events/1/replay",
                    &[credentials, ("sec-fetch-site", site)],
                    Some(form),
                )
                .await;
                assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{credentials:?}");
                assert!(refused.headers().get(header::SET_COOKIE).is_none());
                let entry = inbox.get(1).await.unwrap().unwrap();
                assert_eq!(entry.status, crate::store::InboxStatus::Dead);
                assert_eq!(entry.replays, 0);
            }
        }
        let done = send(
            &app,
            "POST",
            "/console/events/1/replay",
            &[
                ("authorization", &bearer),
                ("sec-fetch-site", "same-origin"),
            ],
            Some(&form),
        )
        .await;
        assert_eq!(done.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            header(&done, header::LOCATION),
            Some("/console/events/1?done=replayed")
        );
        assert_eq!(inbox.get(1).await.unwrap().unwrap().replays, 1);
        // A page from another site's link is still shown.
        let page = send(
            &app,
            "GET",
            "/console/events/1",
            &[("authorization", &bearer), ("sec-fetch-site", "cross-site")],
            None,
        )
        .await;
        assert_eq!(page.status(), StatusCode::OK);
    }

    /// From a browser that sends no `Sec-Fetch-Site`, a form whose
    /// `Origin` is another host, another port or `null` is refused; from
    /// the console's own host (as the request or a proxy names it) it goes
    /// through, as does a request with neither header.
    #[tokio::test]
    async fn an_older_browsers_form_from_another_origin_is_refused() {
        let inbox = one_dead().await;
        let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
        let form = replay_form(&Keys::for_token(TOKEN).csrf(&Who::Bearer));
        let bearer = format!("Bearer {TOKEN}");
        let auth = ("authorization", bearer.as_str());
        let host = ("host", "ops.example.com");
        for headers in [
            vec![auth, host, ("origin", "https://evil.example")],
            vec![
                auth,
                host,
                ("origin", "https://ops.example.com.evil.example"),
            ],
            vec![auth, host, ("origin", "https://ops.example.com:8443")],
            vec![auth, host, ("origin", "null")],
            vec![auth, host, ("origin", "ops.example.com")],
            vec![auth, ("origin", "https://ops.example.com")],
            vec![
                auth,
                host,
                ("origin", "https://ops.example.com"),
                ("origin", "https://evil.example"),
            ],
            // A page of the same host over plain HTTP (forged on the way),
            // where the request is known to have come over HTTPS.
            vec![
                auth,
                host,
                ("x-forwarded-proto", "https"),
                ("origin", "http://ops.example.com"),
            ],
        ] {
            let refused = send(
                &app,
                "POST",
                "/console/events/1/replay",
                &headers,
                Some(&form),
            )
            .await;
            assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{headers:?}");
        }
        // A console whose cookie is `Secure` is served over HTTPS.
        let secure = mounted(
            Console::with_token(Arc::clone(&inbox), TOKEN)
                .unwrap()
                .secure_cookie(true),
        );
        let refused = send(
            &secure,
            "POST",
            "/console/events/1/replay",
            &[auth, host, ("origin", "http://ops.example.com")],
            Some(&form),
        )
        .await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        // Reached as localhost (a tunnel), where browsers keep a `Secure`
        // cookie from plain HTTP, its own page's form goes through.
        for (local, origin) in [
            ("localhost:3001", "http://localhost:3001"),
            ("127.0.0.1:3001", "http://127.0.0.1:3001"),
            ("[::1]:3001", "http://[::1]:3001"),
        ] {
            let inbox = one_dead().await;
            let secure = mounted(
                Console::with_token(Arc::clone(&inbox), TOKEN)
                    .unwrap()
                    .secure_cookie(true),
            );
            let done = send(
                &secure,
                "POST",
                "/console/events/1/replay",
                &[auth, ("host", local), ("origin", origin)],
                Some(&form),
            )
            .await;
            assert_eq!(done.status(), StatusCode::SEE_OTHER, "{origin}");
        }
        assert_eq!(inbox.get(1).await.unwrap().unwrap().replays, 0);
        for headers in [
            vec![auth, host, ("origin", "https://ops.example.com")],
            vec![auth, host, ("origin", "https://OPS.example.com:443")],
            vec![
                auth,
                ("host", "ops.example.com:8080"),
                ("origin", "http://ops.example.com:8080"),
            ],
            vec![
                auth,
                ("host", "127.0.0.1:3000"),
                ("x-forwarded-host", "ops.example.com"),
                ("origin", "https://ops.example.com"),
            ],
            vec![auth, host],
            vec![
                auth,
                ("host", "ops.example.com:443"),
                ("x-forwarded-proto", "https"),
                ("origin", "https://ops.example.com"),
            ],
            vec![
                auth,
                host,
                ("x-forwarded-proto", "http"),
                ("origin", "http://ops.example.com"),
            ],
            // A hop behind the one that ended TLS says `http`: an `https`
            // page of the same host is the console's own.
            vec![
                auth,
                host,
                ("x-forwarded-proto", "http"),
                ("origin", "https://ops.example.com"),
            ],
            // The browser's word for it stands where it gives it.
            vec![
                auth,
                host,
                ("sec-fetch-site", "same-origin"),
                ("origin", "https://proxy.example"),
            ],
        ] {
            let inbox = one_dead().await;
            let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
            let done = send(
                &app,
                "POST",
                "/console/events/1/replay",
                &headers,
                Some(&form),
            )
            .await;
            assert_eq!(done.status(), StatusCode::SEE_OTHER, "{headers:?}");
            assert_eq!(inbox.get(1).await.unwrap().unwrap().replays, 1);
        }
    }

    /// The log of a spent budget names that budget's numbers.
    #[test]
    fn the_lockout_log_names_the_budget_spent() {
        let own = lockout(Spent::Own, 6);
        assert!(
            own.contains("10 wrong tokens in a row from this client"),
            "{own}"
        );
        assert!(own.contains("one is taken every 6 s"), "{own}");
        let all = lockout(Spent::All, 1);
        assert!(
            all.contains("100 wrong tokens in a row from all clients together"),
            "{all}"
        );
        assert!(all.contains("one is taken every 0.6 s"), "{all}");
        assert!(all.contains("in the last 24 h"), "{all}");
        for text in [own, all] {
            assert!(!text.contains("  "), "{text}");
        }
    }

    #[test]
    fn short_or_spaced_secrets_are_refused() {
        assert!(Console::with_token(MemoryInbox::new(), "short").is_err());
        assert!(Console::with_token(MemoryInbox::new(), "a token with spaces in it").is_err());
        assert!(Console::with_token(MemoryInbox::new(), "0123456789abcdef").is_ok());
        assert!(Console::behind_app_auth(MemoryInbox::new(), b"short").is_err());
        let console = Console::behind_app_auth(MemoryInbox::new(), [7u8; 32]).unwrap();
        assert!(console.clone().page_size(0).is_err());
        assert!(console.clone().timeout(Duration::ZERO).is_err());
        assert!(console.session_ttl(Duration::from_millis(10)).is_err());
    }

    #[test]
    fn the_mount_path_is_what_the_router_did_not_see() {
        let original = |path: &str| OriginalUri(path.parse().unwrap());
        let uri = |path: &str| -> Uri { path.parse().unwrap() };
        assert_eq!(
            base_path(Some(&original("/console/events/3")), &uri("/events/3")),
            "/console"
        );
        assert_eq!(
            base_path(Some(&original("/console")), &uri("/")),
            "/console"
        );
        assert_eq!(
            base_path(Some(&original("/ops/console/")), &uri("/")),
            "/ops/console"
        );
        assert_eq!(base_path(Some(&original("/events")), &uri("/events")), "");
        assert_eq!(base_path(None, &uri("/events")), "");
    }

    #[test]
    fn the_forwarded_address_is_the_last_one_the_last_header_lists() {
        let name = http::HeaderName::from_static("x-forwarded-for");
        let read = |lines: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for line in lines {
                headers.append(&name, HeaderValue::from_str(line).unwrap());
            }
            forwarded_address(&headers, &name).map(|ip| ip.to_string())
        };
        let some = |ip: &str| Some(ip.to_owned());
        assert_eq!(read(&["203.0.113.5"]), some("203.0.113.5"));
        assert_eq!(read(&["198.51.100.9, 203.0.113.5"]), some("203.0.113.5"));
        assert_eq!(read(&["198.51.100.9", "203.0.113.5 "]), some("203.0.113.5"));
        assert_eq!(read(&["203.0.113.5:4711"]), some("203.0.113.5"));
        assert_eq!(read(&["[2001:db8::1]:4711"]), some("2001:db8::1"));
        assert_eq!(read(&["[2001:db8::1]"]), some("2001:db8::1"));
        assert_eq!(read(&["2001:db8::1"]), some("2001:db8::1"));
        assert_eq!(read(&["::ffff:203.0.113.5"]), some("203.0.113.5"));
        assert_eq!(read(&["203.0.113.5, unknown"]), None);
        // Bytes that are not text before the proxy's entry do not hide it.
        let mut headers = http::HeaderMap::new();
        headers.append(
            &name,
            HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.5").unwrap(),
        );
        assert_eq!(
            forwarded_address(&headers, &name).map(|ip| ip.to_string()),
            some("203.0.113.5")
        );
        assert_eq!(read(&[""]), None);
        assert_eq!(read(&[]), None);
        assert!(Console::with_token(MemoryInbox::new(), "0123456789abcdef")
            .unwrap()
            .client_address_header("not a header")
            .is_err());
    }
}
