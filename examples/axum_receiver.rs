//! A Clink webhook receiver on axum: verifies, deduplicates and prints every
//! event it handles.
//!
//! ```text
//! CLINK_WEBHOOK_SIGNING_KEY=whsec_... cargo run --example axum_receiver
//! ```
//!
//! It listens on `$CLINK_BIND:$PORT` (default `127.0.0.1:3000`; set
//! `CLINK_BIND=0.0.0.0`, or `::`, to take deliveries from other hosts, as
//! in a container) at `POST /webhooks/clink`, and serves nothing else there.
//! It prints one line `handled <type> <id>` to stdout per handler run. Every
//! event type has a typed handler, so an acknowledged delivery is one whose
//! data decoded; an event older than one already handled about the same
//! object gets a note on stderr.
//! Without `CLINK_WEBHOOK_SIGNING_KEY` it does not start: it says on stderr
//! how to set it and exits with status 1, so that a receiver deployed with
//! the variable misspelt never accepts deliveries signed with a key anyone
//! can read. To try it locally, any key works as long as the sender signs
//! with the same one:
//!
//! ```text
//! CLINK_WEBHOOK_SIGNING_KEY=whsec_clink_webhooks_development_only cargo run --example axum_receiver
//! ```
//!
//! While the endpoint's secret is rotated, give the secrets newest first,
//! separated by commas (`CLINK_WEBHOOK_SIGNING_KEY=whsec_new,whsec_old`):
//! deliveries signed with either are accepted, and with
//! `CLINK_WEBHOOK_OLD_KEYS_EXPIRE=2026-12-31T00:00:00Z` (an RFC 3339 time,
//! the end of the rotation's grace) the older ones only until then.
//!
//! It stops gracefully on Ctrl-C or SIGTERM: from the signal, the deliveries
//! in progress and (with an inbox) the handlers running finish side by side
//! within one deadline of 4 s, and the events of handlers still running then
//! go back to the inbox (at once, or within 5 s more should the inbox be
//! slow), as the claims of the deliveries cut off are settled with a
//! shared store (within 2 s more): inside the 10 s Docker gives a container
//! by default (Kubernetes gives 30 s). It says `stopping` on stderr when the stop begins, and
//! `Ctrl-C again to stop at once` half a second later: a second Ctrl-C or
//! SIGTERM sent after that (one sent with the first is the same stop) stops
//! it at once, with status 130: the deliveries in progress get no answer (Clink retries
//! them), and the events of handlers still running run again once their
//! lease ends. A setting it cannot use (say
//! `CLINK_INBOX_LEASE_MS=30s`, below, which is not a number of
//! milliseconds) stops it before it listens: it says `error: ` and the
//! variable's name on stderr and exits with status 1.
//!
//! With `CLINK_INBOX=sqlite:<path>` (built with `--features sqlite`) or
//! `CLINK_INBOX=postgres` (with `--features postgres` and `DATABASE_URL`) it
//! acknowledges each delivery after writing it to that durable inbox, and
//! workers in the same process run the handlers, printing the same line;
//! `CLINK_INBOX_REORDER_MS` (default 1000) and `CLINK_INBOX_LEASE_MS`
//! (default 30000) set the reorder window and the workers' lease. Done
//! events are kept for `CLINK_INBOX_RETENTION_HOURS` (default 168, at
//! least 48: Clink retries a delivery for about a day) after they were
//! last handled, then purged, at start and every hour; dead ones are kept
//! until replayed or purged on purpose (`clink-webhook inbox purge
//! --dead`). Built
//! with `postgres-tls`, PostgreSQL is reached over TLS, the server's
//! certificate verified, when `DATABASE_URL` has `sslmode=require` or
//! `CLINK_DATABASE_CA_FILE` names the CA that signed it (without the
//! feature, a URL that asks for TLS is refused rather than sent plain).
//! `CLINK_EXAMPLE_HANDLER_DELAY_MS` makes every handler take that long (it
//! prints `handling <type> <id>` on stderr first), to watch a slow handler
//! with and without the inbox; with effects (below), the delay comes after
//! the effect is committed, as a slow call made once the writes are safe.
//!
//! With an inbox and `CLINK_EXAMPLE_EFFECTS=1`, every handler also writes a
//! row (account, event id, type) into the table `clink_example_effects` in
//! the inbox's own database (created on start), in the transaction that
//! marks the event done: `SqliteInbox::complete_with` for SQLite,
//! `PostgresInbox::complete_in` in a transaction from the pool on
//! `DATABASE_URL` for PostgreSQL. The row and the event's completion commit
//! together or not at all, so each event has exactly one row however often
//! the process is killed, which `tests/suite/recovery.rs` checks.
//!
//! With an inbox, the `console` feature and `CLINK_CONSOLE_TOKEN` set (16
//! characters at least), it serves the inbox console at `/console` on the
//! admin address (below): send the
//! token as `Authorization: Bearer <token>`, or open
//! `/console?token=<token>` once in a browser for a session cookie. Without
//! `CLINK_CONSOLE_TOKEN` there is no console. `CLINK_INBOX_MAX_ATTEMPTS`
//! (default 36, about a day) sets how many attempts an event gets before it is dead, and
//! `CLINK_EXAMPLE_FAIL_ONCE=<type>` makes the first run of every event of
//! that type fail, to watch one go dead and be replayed from the console:
//!
//! ```text
//! CLINK_WEBHOOK_SIGNING_KEY=whsec_clink_webhooks_development_only \
//!     CLINK_INBOX=sqlite:inbox.db CLINK_CONSOLE_TOKEN=change-me-0123456789 \
//!     CLINK_INBOX_MAX_ATTEMPTS=1 CLINK_EXAMPLE_FAIL_ONCE=refund.failed \
//!     cargo run --example axum_receiver --features console,sqlite
//! # then open http://127.0.0.1:3100/console?token=change-me-0123456789
//! ```
//!
//! With `CLINK_SECRET_KEY` set (built with `--features api`; `CLINK_ENV`
//! and `CLINK_API_BASE_URL` are read too, as `clink_webhooks::api::Client::from_env`
//! says), an order, refund, subscription, invoice or checkout session event
//! that is stale, or whose data does not decode, makes it ask Clink's API
//! for the object's current state and print `current <family> <object id>
//! <status>` to stdout before answering 200: a handler that applies the
//! current state instead of an old event. If the API cannot answer, the
//! delivery is answered 500 and Clink retries it; with an inbox, where the
//! delivery was answered 200 as it was kept, the inbox's workers retry the
//! event (the read comes before the event's completion commits). Without
//! `CLINK_SECRET_KEY` it does neither.
//!
//! ```text
//! CLINK_WEBHOOK_SIGNING_KEY=whsec_your_secret CLINK_SECRET_KEY=sk_test_... cargo run --example axum_receiver --features api
//! ```
//!
//! Health, metrics and the console are for operators, so they are served on
//! a second address, never next to the webhook route anyone can reach:
//! `CLINK_ADMIN_ADDR` (default `127.0.0.1:3100`, or a free port when
//! `PORT=0`; it says which on stderr, `admin listening on http://...`).
//! There `GET /health` answers `200 ok` while its store answers and `503`
//! with the reason when it does not (with an inbox, each check writes to
//! it), and `GET /metrics` serves the crate's metrics in Prometheus' text
//! format (see `clink_webhooks::layer` for the names; the labels name
//! accounts and key fingerprints). Keep that address on a private network:
//! set it to `0.0.0.0:3100`, say, for probes and scrapes from outside a
//! container, and do not publish the port.
//!
//! Run several of them behind a load balancer and they must share one
//! idempotency store, or two of them can each handle the same event. Built
//! with the `redis` feature and given `REDIS_URL`, it keeps the store in
//! Redis; built with `postgres` and given `DATABASE_URL` (and no
//! `REDIS_URL`), in PostgreSQL. Otherwise the store is in memory. It says
//! which on stderr. The same store keeps the freshness records, so every
//! instance agrees on which events are stale.
//!
//! ```text
//! CLINK_WEBHOOK_SIGNING_KEY=whsec_your_secret REDIS_URL=redis://127.0.0.1:6379/ cargo run --example axum_receiver --features redis
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use clink_webhooks::data::Resource;
use clink_webhooks::events::Freshness;
use clink_webhooks::events::InboxAttempt;
use clink_webhooks::inbox::Workers;
use clink_webhooks::layer::{Readiness, DURATION_BUCKETS};
use clink_webhooks::router::EveryHandler;
use clink_webhooks::router::WithState;
use clink_webhooks::server::Server;
use clink_webhooks::store::{FreshnessStore, IdempotencyStore, Inbox, MemoryStore};
use clink_webhooks::{events, ClinkLayer, Event, EventRouter, Verifier};
use clink_webhooks::{BoxError, BoxFuture};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

#[macro_use]
#[path = "support/lines.rs"]
mod lines;

/// What the handlers share: in a real app, the database pool and the
/// clients they call. Cloned for every handler call, so keep it cheap to
/// clone (`Arc`s, pools).
#[derive(Clone, Default)]
struct AppState {
    paid_orders: Arc<AtomicU64>,
    effects: Effects,
    clink: Clink,
}

/// Clink's API, when `CLINK_SECRET_KEY` is set: handlers read the current
/// state of an object through it when their event is stale or undecodable.
#[derive(Clone, Default)]
struct Clink {
    #[cfg(feature = "api")]
    client: Option<clink_webhooks::api::Client>,
}

impl Clink {
    /// The client from `CLINK_SECRET_KEY`, `CLINK_ENV` and
    /// `CLINK_API_BASE_URL`; none without `CLINK_SECRET_KEY`.
    fn from_env() -> Result<Self, Box<dyn std::error::Error>> {
        #[cfg(feature = "api")]
        {
            let client = clink_webhooks::api::Client::from_env()?;
            if let Some(client) = &client {
                eprintln!(
                    "Clink API: {} ({}), for stale and undecodable events",
                    client.environment(),
                    printable(client.base_url())
                );
            }
            Ok(Self { client })
        }
        #[cfg(not(feature = "api"))]
        {
            if env_value("CLINK_SECRET_KEY")?.is_some() {
                return Err("CLINK_SECRET_KEY needs the api feature \
                     (cargo run --example axum_receiver --features api)"
                    .into());
            }
            Ok(Self {})
        }
    }

    /// Whether there is a client.
    #[cfg_attr(not(feature = "api"), allow(clippy::unused_self))]
    fn enabled(&self) -> bool {
        #[cfg(feature = "api")]
        return self.client.is_some();
        #[cfg(not(feature = "api"))]
        false
    }

    /// Reads and prints the current state of the object `key` names, when
    /// there is a client and Clink can read objects of its family. Whether
    /// it did.
    async fn print_current(
        &self, key: Option<clink_webhooks::events::ObjectKey>,
    ) -> Result<bool, BoxError> {
        let current = self.current(key).await?;
        if let Some(line) = &current {
            lines::out(line);
        }
        Ok(current.is_some())
    }

    /// Reads the current state of the object `key` names, when there is a
    /// client and Clink can read objects of its family: the line to print.
    async fn current(
        &self, key: Option<clink_webhooks::events::ObjectKey>,
    ) -> Result<Option<String>, BoxError> {
        #[cfg(feature = "api")]
        if let (Some(client), Some(key)) = (&self.client, key) {
            let family = key.family.rsplit('/').next().unwrap_or_default();
            if clink_webhooks::api::ObjectKind::for_family(family).is_some() {
                let current = client.current(&key).await?;
                return Ok(Some(format!(
                    "current {} {} {}",
                    current.kind(),
                    printable(current.id().unwrap_or(&key.id)),
                    printable(current.status().unwrap_or("none"))
                )));
            }
        }
        let _ = key;
        Ok(None)
    }
}

/// The table handled events write their row into, with `CLINK_EXAMPLE_EFFECTS=1`.
///
/// It has no unique key on purpose: a second row for an event would show
/// that its effects ran twice, and `tests/suite/recovery.rs` counts rows to
/// prove they never do. In an app of your own, a unique key on the event
/// is a good second line of defence.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const EFFECTS_TABLE: &str = "clink_example_effects";

/// Where a handler writes its effect, in the transaction that completes
/// its event in the inbox.
#[derive(Clone, Default)]
enum Effects {
    /// No effects: the handler prints its line, and the worker marks the
    /// event done after it returns.
    #[default]
    Off,
    /// In the SQLite inbox's file, through `SqliteInbox::complete_with`.
    #[cfg(feature = "sqlite")]
    Sqlite(clink_webhooks::store::SqliteInbox),
    /// In the PostgreSQL inbox's database, through `PostgresInbox::complete_in`
    /// in a transaction from this pool.
    #[cfg(feature = "postgres")]
    Postgres(
        clink_webhooks::store::PostgresInbox,
        deadpool_postgres::Pool,
    ),
}

impl Effects {
    /// Writes the row of a handled event, and marks the event done, in one
    /// transaction. `attempt` is the workers' run of the event.
    async fn record(
        &self, attempt: Option<&InboxAttempt>, account: Option<&str>, id: &str, event_type: &str,
    ) -> Result<(), BoxError> {
        let row = (
            account.unwrap_or_default().to_owned(),
            id.to_owned(),
            event_type.to_owned(),
        );
        match self {
            Self::Off => {
                let _ = (attempt, row);
                Ok(())
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite(inbox) => {
                let attempt = attempt.ok_or("effects are written by the inbox's workers")?;
                inbox
                    .complete_with(attempt, move |tx| {
                        let (account, id, event_type) = row;
                        tx.execute(
                            &format!(
                                "INSERT INTO {EFFECTS_TABLE} (account, event_id, event_type) \
                                 VALUES (?1, ?2, ?3)"
                            ),
                            rusqlite::params![account, id, event_type],
                        )?;
                        Ok(())
                    })
                    .await
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(inbox, pool) => {
                let attempt = attempt.ok_or("effects are written by the inbox's workers")?;
                let (account, id, event_type) = row;
                let mut client = pool.get().await?;
                // Dropped without a commit (any `?` below), it rolls back.
                let tx = client.transaction().await?;
                tx.execute(
                    &format!(
                        "INSERT INTO {EFFECTS_TABLE} (account, event_id, event_type) \
                         VALUES ($1, $2, $3)"
                    ),
                    &[&account, &id, &event_type],
                )
                .await?;
                match inbox.complete_in(&tx, attempt).await? {
                    clink_webhooks::store::Settle::Applied => {
                        tx.commit().await?;
                        Ok(())
                    }
                    clink_webhooks::store::Settle::LeaseLost => Err(
                        "the event's lease ended before its effect was committed; it was rolled \
                         back and the event runs again"
                            .into(),
                    ),
                }
            }
        }
    }
}

/// A value from a delivery body, made safe to print: anyone can send a
/// signed-looking body, and a verified one can still carry an id with a
/// newline, terminal escapes or characters that hide or reorder text in
/// it. The crate's one rule: `clink_webhooks::events::printable`.
fn printable(text: &str) -> String {
    clink_webhooks::events::printable(text).into_owned()
}

/// How long each handler takes, from `CLINK_EXAMPLE_HANDLER_DELAY_MS`
/// (default 0), read when the receiver starts: a stand-in for a slow call,
/// to watch the inbox and shutdown at work.
static HANDLER_DELAY: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

fn handler_delay() -> Duration {
    HANDLER_DELAY.get().copied().unwrap_or_default()
}

/// Runs the "work" of a handler: for a stale event, the read of what is
/// true now; then its effect (with `CLINK_EXAMPLE_EFFECTS=1`), committed
/// with the event's completion; then the optional delay, a slow call made
/// once the writes are safe (an email, a request); then the lines.
///
/// Whatever may fail and must be retried comes before the commit: once
/// the event is complete, nothing retries it, and a failure after is lost.
async fn handle<T: Resource>(
    event: Event<T>, effects: &Effects, clink: &Clink,
) -> Result<(), BoxError> {
    let delay = handler_delay();
    if !delay.is_zero() {
        eprintln!(
            "handling {} {}",
            printable(event.event_type.as_str()),
            printable(&event.id)
        );
    }
    // A newer event was handled: what is true now is Clink's to say. If
    // its API cannot answer, the event is retried.
    let current = if event.freshness().is_stale() {
        clink.current(event.object_key()).await?
    } else {
        None
    };
    effects
        .record(
            event.inbox_attempt(),
            event.account(),
            &event.id,
            event.event_type.as_str(),
        )
        .await?;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    report(&event);
    if let Some(line) = current {
        lines::out(line);
    }
    Ok(())
}

/// Prints the line every handler run produces, and a note on stderr when a
/// newer event about the same object was already handled.
fn report<T>(event: &Event<T>) {
    let (event_type, id) = (printable(event.event_type.as_str()), printable(&event.id));
    // Not `println!`, which panics when stdout is closed (every handler run
    // would fail), and never waiting for stdout: see `lines`.
    lines::out(format_args!("handled {event_type} {id}"));
    if let Freshness::Stale { newest_seen } = event.freshness() {
        let newest_seen = printable(&newest_seen.to_string());
        lines::err(format_args!(
            "note: {event_type} {id} is stale: {newest_seen} was already handled"
        ));
    }
}

/// The handler of every event type without a handler of its own.
struct Handled {
    effects: Effects,
    clink: Clink,
}

impl EveryHandler for Handled {
    type Error = BoxError;

    fn handle<T: Resource + Send + 'static>(
        &self, event: Event<T>,
    ) -> BoxFuture<'static, Result<(), Self::Error>> {
        let (effects, clink) = (self.effects.clone(), self.clink.clone());
        Box::pin(async move { handle(event, &effects, &clink).await })
    }
}

fn router(state: AppState, freshness: Arc<dyn FreshnessStore>) -> EventRouter<WithState<AppState>> {
    let effects = state.effects.clone();
    let clink = state.clink.clone();
    let router = EventRouter::with_state(state)
        .ordering(freshness)
        .on_every_type(Handled {
            effects,
            clink: clink.clone(),
        })
        // A handler of its own, with the app's state next to the event.
        .on::<events::OrderSucceeded, _>(|event, state: AppState| async move {
            handle(event, &state.effects, &state.clink).await?;
            state.paid_orders.fetch_add(1, Ordering::Relaxed);
            Ok::<_, BoxError>(())
        })
        // Names Clink adds after this version of the crate.
        .on_unhandled(|event, state: AppState| async move {
            state
                .effects
                .record(
                    event.inbox_attempt(),
                    event.account(),
                    event.id(),
                    event.event_type().as_str(),
                )
                .await?;
            let (event_type, id) = (
                printable(event.event_type().as_str()),
                printable(event.id()),
            );
            lines::out(format_args!("handled {event_type} {id}"));
            Ok::<_, BoxError>(())
        });
    heal_undecodable(router, clink)
}

/// With Clink's API, an event whose data does not decode into its type is
/// not lost: the id in the envelope is enough to read what is true now,
/// and the delivery is acknowledged. Without it (or for a family Clink
/// cannot read), the delivery is answered 500 and retried, as the router
/// does by default.
fn heal_undecodable(
    router: EventRouter<WithState<AppState>>, clink: Clink,
) -> EventRouter<WithState<AppState>> {
    if !clink.enabled() {
        return router;
    }
    router.on_undecodable(move |event, error| {
        let clink = clink.clone();
        async move {
            if clink.print_current(event.object_key()).await? {
                return Ok(());
            }
            Err::<(), BoxError>(
                format!(
                    "{} {}: its data does not decode: {error}",
                    printable(event.event_type().as_str()),
                    printable(event.id())
                )
                .into(),
            )
        }
    })
}

/// The verifier of the endpoint's signing secret, from
/// `CLINK_WEBHOOK_SIGNING_KEY`, or what to tell the user. During a rotation
/// the variable holds the secrets newest first, separated by commas
/// (`whsec_new,whsec_old`), and a delivery signed with any of them is
/// accepted. Each is used without the whitespace around it: a secret mounted
/// from a file, as Kubernetes does, often ends with a newline, and one from
/// a `.env` file with CRLF line ends with `\r\n`, which would fail every
/// delivery. Without it the receiver does not start: one that fell back to
/// a key anyone can read would accept deliveries anyone can sign.
fn verifier() -> Result<Verifier, String> {
    let problem = match std::env::var("CLINK_WEBHOOK_SIGNING_KEY") {
        // The error says which secret of the list is wrong, never what it is.
        Ok(keys) if !keys.trim().is_empty() => {
            let verifier = Verifier::from_secret_list(&keys)
                .map_err(|e| format!("CLINK_WEBHOOK_SIGNING_KEY: {}", e.message()))?;
            return expiring_older_keys(verifier);
        }
        Ok(_) => "is empty",
        Err(std::env::VarError::NotPresent) => "is not set",
        Err(std::env::VarError::NotUnicode(_)) => "is not valid UTF-8",
    };
    Err(format!(
        "CLINK_WEBHOOK_SIGNING_KEY {problem}: set it to your endpoint's signing secret \
         from Clink. To try this example locally, any value works as long as the sender signs \
         with the same one, such as the README's development key: \
         CLINK_WEBHOOK_SIGNING_KEY=whsec_clink_webhooks_development_only \
         cargo run --example axum_receiver"
    ))
}

/// `verifier` with its older secrets (all but the first) accepted until
/// `CLINK_WEBHOOK_OLD_KEYS_EXPIRE`, an RFC 3339 time: the end of the
/// rotation's grace, after which a secret rotated out stops working even if
/// nobody takes it out of the list. A value that is no such time stops the
/// receiver; without one, a list of several secrets is accepted with a
/// warning on stderr that the older ones never expire.
fn expiring_older_keys(verifier: Verifier) -> Result<Verifier, String> {
    const VAR: &str = "CLINK_WEBHOOK_OLD_KEYS_EXPIRE";
    let value = match std::env::var(VAR) {
        Ok(value) if !value.trim().is_empty() => value,
        Err(std::env::VarError::NotUnicode(_)) => return Err(format!("{VAR} is not valid UTF-8")),
        _ => {
            if verifier.key_count() > 1 {
                eprintln!(
                    "warning: the older signing secrets never expire: set {VAR} to the end of \
                     the rotation's grace (an RFC 3339 time, such as 2026-12-31T00:00:00Z)"
                );
            }
            return Ok(verifier);
        }
    };
    let at = clink_webhooks::Timestamp::parse_rfc3339(value.trim())
        .map_err(|_| {
            format!(
                "{VAR} must be an RFC 3339 time (2026-12-31T00:00:00Z), got {}",
                printable(&value)
            )
        })?
        .to_system_time();
    if verifier.key_count() > 1 && at <= std::time::SystemTime::now() {
        eprintln!("warning: {VAR} has passed: only the newest signing secret is accepted");
    }
    Ok(verifier.expire_older_keys_at(at))
}

/// `DATABASE_URL` as `store::postgres_config` reads it: as the PostgreSQL
/// client does, with libpq's
/// `sslmode=verify-full` and `sslmode=verify-ca`, which the client refuses,
/// read as `sslmode=require`: TLS here always verifies the server's
/// certificate and the host it names ([`pg_manager`]). Only a setting of
/// the URL's query, or a whole `key=value` word, is read so: never the same
/// text in a password. The client's own error is not shown: it could quote
/// the password.
#[cfg(feature = "postgres")]
fn postgres_config(url: &str) -> Result<tokio_postgres::Config, String> {
    clink_webhooks::store::postgres_config(url).map_err(|_| {
        "DATABASE_URL is not a valid PostgreSQL connection string: \
         postgres://user:password@host:port/database?sslmode=require, or key=value settings"
            .to_owned()
    })
}

/// The connection pool's manager for `config`, and how the inbox listens
/// for new events: over TLS, the server's certificate verified, when
/// `DATABASE_URL` says `sslmode=require` (or `verify-full`, `verify-ca`) or
/// `CLINK_DATABASE_CA_FILE` names a CA (built with `postgres-tls`), plain
/// otherwise (and refused then if TLS was asked for: a connection string
/// that asks for it is not sent in the clear). A plain connection to
/// another machine is allowed, with a warning on stderr.
#[cfg(feature = "postgres")]
fn pg_manager(
    #[cfg_attr(not(feature = "postgres-tls"), allow(unused_mut))]
    mut config: tokio_postgres::Config,
) -> Result<(deadpool_postgres::Manager, PgTls), Box<dyn std::error::Error>> {
    let ca_file = env_value("CLINK_DATABASE_CA_FILE")?.map(std::path::PathBuf::from);
    #[cfg(feature = "postgres-tls")]
    if let Some(tls) = clink_webhooks::store::postgres_tls(&mut config, ca_file.as_deref())? {
        let manager = deadpool_postgres::Manager::new(config.clone(), tls.clone());
        return Ok((
            manager,
            PgTls {
                config,
                tls: Some(tls),
            },
        ));
    }
    #[cfg(not(feature = "postgres-tls"))]
    if ca_file.is_some() || config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(
            "TLS to PostgreSQL (sslmode=require, CLINK_DATABASE_CA_FILE) needs \
                    --features postgres-tls"
                .into(),
        );
    }
    warn_if_plain_to_another_machine(&config);
    let manager = deadpool_postgres::Manager::new(config.clone(), tokio_postgres::NoTls);
    Ok((
        manager,
        PgTls {
            config,
            #[cfg(feature = "postgres-tls")]
            tls: None,
        },
    ))
}

/// Says on stderr, once, that the database `config` names is reached
/// without TLS from another machine: what the receiver stores (event ids,
/// with an inbox whole deliveries) then crosses the network in the clear,
/// and anyone on the path could read or change it.
#[cfg(feature = "postgres")]
fn warn_if_plain_to_another_machine(config: &tokio_postgres::Config) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if clink_webhooks::store::postgres_on_this_machine(config) {
        return;
    }
    let how = if cfg!(feature = "postgres-tls") {
        "add sslmode=require to DATABASE_URL (and CLINK_DATABASE_CA_FILE for a private CA)"
    } else {
        "build with --features postgres-tls and add sslmode=require to DATABASE_URL"
    };
    WARNED.call_once(|| {
        eprintln!(
            "warning: the database in DATABASE_URL is on another machine and is reached \
             without TLS: what is stored there crosses the network unencrypted; {how}"
        );
    });
}

/// Says on stderr that the Redis server `url` names is reached without TLS
/// from another machine (`redis://` to a host that is not this one): its
/// password, and the claims and completions deduplication rests on, then
/// cross the network in the clear, and anyone on the path could write a
/// completion that makes a real delivery a duplicate, never handled.
#[cfg(feature = "redis")]
fn warn_if_redis_in_the_clear(url: &str) {
    use redis::IntoConnectionInfo as _;
    let Ok(info) = url.into_connection_info() else {
        return; // Refused by the connect that follows, with its reason.
    };
    let redis::ConnectionAddr::Tcp(host, _) = info.addr() else {
        return; // TLS, or a Unix socket.
    };
    let here = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback());
    if !here {
        let how = if cfg!(feature = "redis-tls") {
            "use a rediss:// URL"
        } else {
            "build with --features redis-tls and use a rediss:// URL"
        };
        eprintln!(
            "warning: the Redis server in REDIS_URL is on another machine and is reached \
             without TLS: its password and the claims deduplication rests on cross the network \
             unencrypted; {how}"
        );
    }
}

/// How the connections made beside the pool's (the inbox's LISTEN, a
/// timed-out statement's cancel) reach the database: as the pool's do.
#[cfg(feature = "postgres")]
struct PgTls {
    config: tokio_postgres::Config,
    #[cfg(feature = "postgres-tls")]
    tls: Option<clink_webhooks::store::MakeRustlsConnect>,
}

#[cfg(feature = "postgres")]
impl PgTls {
    /// `store`, cancelling a timed-out statement as the pool connects.
    #[cfg_attr(not(feature = "postgres-tls"), allow(clippy::unused_self))]
    fn store(
        &self, store: clink_webhooks::store::PostgresStore,
    ) -> clink_webhooks::store::PostgresStore {
        #[cfg(feature = "postgres-tls")]
        if let Some(tls) = &self.tls {
            return store.cancel_with(tls.clone());
        }
        store
    }

    /// `inbox`, cancelling a timed-out statement as the pool connects.
    #[cfg_attr(not(feature = "postgres-tls"), allow(clippy::unused_self))]
    fn inbox(
        &self, inbox: clink_webhooks::store::PostgresInbox,
    ) -> clink_webhooks::store::PostgresInbox {
        #[cfg(feature = "postgres-tls")]
        if let Some(tls) = &self.tls {
            return inbox.cancel_with(tls.clone());
        }
        inbox
    }

    /// Gives `inbox` its LISTEN connection.
    async fn start(
        self, inbox: &clink_webhooks::store::PostgresInbox,
    ) -> Result<(), clink_webhooks::store::StoreError> {
        #[cfg(feature = "postgres-tls")]
        if let Some(tls) = self.tls {
            return inbox.listen_with(self.config, tls).await;
        }
        inbox.listen(self.config).await
    }
}

/// The value of `var`, if set and not empty; an error naming the variable
/// when it is set to bytes that are not UTF-8 (read as unset, a mistyped
/// `CLINK_INBOX` or `DATABASE_URL` would quietly mean no inbox, or a store
/// in memory).
fn env_value(var: &str) -> Result<Option<String>, String> {
    match std::env::var(var) {
        Ok(value) => Ok(Some(value).filter(|value| !value.trim().is_empty())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{var} is not valid UTF-8")),
    }
}

/// The value of `var` (a number, an address), or `default` when it is not
/// set (or empty). A value that is not `what` is an error naming the
/// variable, with the value as it is (escaped): a mistyped setting stops
/// the receiver rather than quietly becoming the default.
fn env_parsed<T: std::str::FromStr>(var: &str, default: T, what: &str) -> Result<T, String> {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{var} is not valid UTF-8")),
        Ok(value) if value.trim().is_empty() => Ok(default),
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("{var} must be {what}, got {}", printable(&value))),
    }
}

/// `var`'s milliseconds ([`env_parsed`]).
fn env_millis(var: &str, default: u64) -> Result<Duration, String> {
    env_parsed(var, default, "a number of milliseconds").map(Duration::from_millis)
}

/// The port of health, metrics and the console, on loopback, when
/// `CLINK_ADMIN_ADDR` is not set; when `PORT=0` asks for any free port for
/// the webhook (as tests do), any free port for them too.
const ADMIN_PORT: u16 = 3100;

/// What the environment sets, read and checked before anything starts.
struct Settings {
    /// The webhook's address: `CLINK_BIND` (default 127.0.0.1) and `PORT`.
    bind: std::net::IpAddr,
    port: u16,
    /// Health, metrics and the console: `CLINK_ADMIN_ADDR`.
    admin: std::net::SocketAddr,
    reorder_window: Duration,
    lease: Duration,
    max_attempts: u32,
    /// How long done events are kept: `CLINK_INBOX_RETENTION_HOURS`.
    retention: Duration,
    handler_delay: Duration,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let port = env_parsed("PORT", 3000, "a port number")?;
        let loopback = std::net::Ipv4Addr::LOCALHOST.into();
        let admin_port = if port == 0 { 0 } else { ADMIN_PORT };
        Ok(Self {
            bind: env_parsed(
                "CLINK_BIND",
                loopback,
                "an IP address to listen on (127.0.0.1, 0.0.0.0, ::)",
            )?,
            port,
            admin: env_parsed(
                "CLINK_ADMIN_ADDR",
                (loopback, admin_port).into(),
                "an address and port to listen on (127.0.0.1:3100, 0.0.0.0:9100)",
            )?,
            reorder_window: env_millis("CLINK_INBOX_REORDER_MS", 1000)?,
            lease: env_millis("CLINK_INBOX_LEASE_MS", 30_000)?,
            max_attempts: env_parsed(
                "CLINK_INBOX_MAX_ATTEMPTS",
                clink_webhooks::inbox::DEFAULT_MAX_ATTEMPTS,
                "a number of attempts",
            )?,
            retention: {
                let hours: u64 =
                    env_parsed("CLINK_INBOX_RETENTION_HOURS", 168, "a number of hours")?;
                // A retry of a delivery whose event was purged before it
                // comes is a new event to the inbox, and runs its handlers
                // again: Clink retries for about a day.
                if !(48..=8760).contains(&hours) {
                    return Err(format!(
                        "CLINK_INBOX_RETENTION_HOURS must be from 48 to 8760 (Clink retries a \
                         delivery for about a day, and a retry of an event purged before it \
                         comes runs its handlers again), got {hours}"
                    ));
                }
                Duration::from_secs(hours * 3600)
            },
            handler_delay: env_millis("CLINK_EXAMPLE_HANDLER_DELAY_MS", 0)?,
        })
    }
}

/// The idempotency and freshness stores, shared by every instance.
type Stores = (Arc<dyn IdempotencyStore>, Arc<dyn FreshnessStore>);

/// One store for both jobs: Redis, PostgreSQL or memory, as the environment
/// and the enabled features say.
async fn stores() -> Result<Stores, Box<dyn std::error::Error>> {
    #[cfg(feature = "redis")]
    if let Some(url) = env_value("REDIS_URL")? {
        warn_if_redis_in_the_clear(&url);
        let store = Arc::new(clink_webhooks::store::RedisStore::connect(&url).await?);
        eprintln!("idempotency store: Redis (REDIS_URL)");
        return Ok((store.clone(), store));
    }
    #[cfg(feature = "postgres")]
    if let Some(url) = env_value("DATABASE_URL")? {
        use clink_webhooks::store::PostgresStore;
        use deadpool_postgres::{Pool, Runtime};

        let (manager, tls) = pg_manager(postgres_config(&url)?)?;
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .build()?;
        let store = Arc::new(tls.store(PostgresStore::new(pool)));
        store.migrate().await?;
        store.spawn_reaper(std::time::Duration::from_secs(600))?;
        eprintln!("idempotency store: PostgreSQL (DATABASE_URL)");
        return Ok((store.clone(), store));
    }
    for (var, feature) in [("REDIS_URL", "redis"), ("DATABASE_URL", "postgres")] {
        if env_value(var)?.is_some() {
            eprintln!(
                "warning: {var} is set, but this build lacks the {feature} feature \
                 (cargo run --example axum_receiver --features {feature})"
            );
        }
    }
    eprintln!(
        "idempotency store: in memory (one instance only; set REDIS_URL or DATABASE_URL \
         to share it between instances)"
    );
    let store = Arc::new(MemoryStore::new());
    Ok((store.clone(), store))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The crate logs through `tracing`: without a subscriber, a failed
    // handler or a refused delivery prints nothing. Colour only on a
    // terminal: escape codes in a log file are noise.
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(lines::Stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    // Whatever stops it from starting is said on one line, and it exits 1.
    let code = match run().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    };
    // What waits for stdout and stderr is written: a stream nobody reads
    // keeps the receiver from exiting for a second at most.
    lines::flush(Duration::from_secs(1));
    code
}

/// Runs the receiver until it is stopped; the status to exit with.
async fn run() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    let verifier = verifier()?;
    let settings = Settings::from_env()?;
    let _ = HANDLER_DELAY.set(settings.handler_delay);

    // Durations as a histogram with buckets, which can be summed across
    // instances (without buckets they render as a summary, which cannot).
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("clink_webhook_delivery_duration_seconds".to_owned()),
            DURATION_BUCKETS,
        )?
        .install_recorder()?;
    // The recorder keeps every sample until its upkeep folds them in, which
    // only a scrape of /metrics would do otherwise: with nobody scraping, a
    // stranger's requests (each refusal is timed) would grow memory
    // without bound.
    tokio::spawn({
        let prometheus = prometheus.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                prometheus.run_upkeep();
            }
        }
    });
    let (idempotency, freshness) = stores().await?;
    let effects = match env_value("CLINK_EXAMPLE_EFFECTS")?.as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(other) => {
            return Err(format!(
                "CLINK_EXAMPLE_EFFECTS must be 1 or 0, got {}",
                printable(other)
            )
            .into())
        }
    };
    let durable = inbox(effects).await?;
    if effects && durable.is_none() {
        return Err("CLINK_EXAMPLE_EFFECTS=1 needs an inbox: set CLINK_INBOX".into());
    }
    let state = AppState {
        clink: Clink::from_env()?,
        effects: durable
            .as_ref()
            .map(|durable| durable.effects.clone())
            .unwrap_or_default(),
        ..AppState::default()
    };
    let router = fail_once(router(state, freshness))?;
    let layer = ClinkLayer::new(verifier).store(idempotency);
    let mut console_inbox = None;
    let mut workers = None;
    let mut webhooks = Router::new();
    let readiness = if let Some(Durable { inbox, .. }) = durable {
        // Acknowledge after one write; workers in this process run the
        // handlers, in order per object, with retries.
        let intake = layer.intake(Arc::clone(&inbox));
        console_inbox = Some(Arc::clone(&inbox));
        // Done events are kept for the retention after they were last
        // handled, then purged, at start and every hour: the inbox would
        // grow with every delivery otherwise, until the disk is full and
        // every delivery is answered 503. Dead events are kept until they
        // are replayed, or purged on purpose (`clink-webhook inbox purge
        // --dead`).
        tokio::spawn({
            let inbox = Arc::clone(&inbox);
            let retention = settings.retention;
            async move {
                let mut every = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    every.tick().await;
                    let millis = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
                    let before = clink_webhooks::Timestamp::from_millis(
                        clink_webhooks::Timestamp::now()
                            .as_millis()
                            .saturating_sub(millis),
                    );
                    match inbox.purge(before).await {
                        Ok(0) => {}
                        Ok(purged) => {
                            tracing::info!(purged, "purged done events past the retention");
                        }
                        Err(error) => {
                            tracing::warn!(%error, "could not purge the inbox; tried again in an hour");
                        }
                    }
                }
            }
        });
        let readiness = intake.readiness();
        webhooks = webhooks.route_service("/webhooks/clink", intake);
        // What the library refuses of each is said with its variable's name.
        workers = Some(
            Workers::new(inbox, router.clone())
                .reorder_window(settings.reorder_window)
                .map_err(|e| format!("CLINK_INBOX_REORDER_MS: {e}"))?
                .lease(settings.lease)
                .map_err(|e| format!("CLINK_INBOX_LEASE_MS: {e}"))?
                .max_attempts(settings.max_attempts)
                .map_err(|e| format!("CLINK_INBOX_MAX_ATTEMPTS: {e}"))?,
        );
        readiness
    } else {
        let readiness = layer.readiness();
        webhooks = webhooks.route_service("/webhooks/clink", layer.route(router));
        readiness
    };
    // Health, metrics and the console are for operators, on an address of
    // their own: the webhook's is reachable by anyone, and a health check
    // of the inbox writes to it.
    let admin = Router::new()
        .route("/health", get(move || health(readiness.clone())))
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        );
    let (admin, console_mounted) = console(admin, console_inbox)?;

    let listener = listen((settings.bind, settings.port), "PORT, CLINK_BIND").await?;
    let admin_listener = listen(settings.admin, "CLINK_ADMIN_ADDR").await?;
    // Slow and idle clients are cut off, accept errors never stop them, and
    // a stop waits at most STOP_WITHIN for the deliveries in progress.
    let webhook_server = Server::new().shutdown_timeout(STOP_WITHIN)?;
    // Few connections on the admin address (probes, a scraper, an
    // operator's browser): the process's file limit is left to the webhook.
    let admin_server = Server::new()
        .shutdown_timeout(STOP_WITHIN)?
        .max_connections(64)?;
    // Listen for signals before saying where we listen, so that a signal sent
    // as soon as the address is known is not missed. One signal stops both
    // servers and the workers; a second stops the process at once.
    let (graceful, at_once) =
        stop_signals().map_err(|e| format!("cannot listen for Ctrl-C and SIGTERM: {e}"))?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        graceful.await;
        let _ = stop.send(true);
    });
    // Started once nothing else can fail: workers dropped without their
    // shutdown would leave the events they had taken running until their
    // lease ends, with an attempt spent.
    let workers = workers.map(Workers::spawn);
    let shutdown = || {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    };
    eprintln!(
        "listening on http://{}/webhooks/clink",
        listener.local_addr()?
    );
    eprintln!(
        "admin listening on http://{} (GET /health, GET /metrics{})",
        admin_listener.local_addr()?,
        if console_mounted { ", /console" } else { "" }
    );
    // From the signal the deliveries in progress and the handlers running
    // finish side by side within one deadline: handlers still running then
    // are stopped and their events go back to the inbox.
    let workers_stop = async {
        if let Some(workers) = workers {
            shutdown().await;
            workers.shutdown(STOP_WITHIN).await;
        }
    };
    let stopped = async {
        tokio::join!(
            webhook_server.serve(listener, webhooks, shutdown()),
            admin_server.serve(admin_listener, admin, shutdown()),
            workers_stop,
        );
    };
    // A graceful stop that ends as a second signal comes is still one.
    tokio::select! {
        biased;
        () = stopped => {
            eprintln!("stopped");
            Ok(std::process::ExitCode::SUCCESS)
        }
        // The deliveries in progress get no answer, and Clink retries them;
        // the events of handlers still running run again once their lease
        // ends. 130, as a shell reports a command Ctrl-C ended.
        () = at_once => {
            eprintln!("stopped at once");
            lines::flush(Duration::from_secs(1));
            // Now: returning would wait for the runtime's blocking calls
            // (a SQLite inbox's, up to its busy timeout of 5 s).
            #[allow(clippy::exit, reason = "a stop at once waits for nothing")]
            std::process::exit(130)
        }
    }
}

/// How long a stop waits for deliveries in progress and handlers running,
/// from the signal: with the at most 5 s the inbox may take to get the
/// stopped handlers' events back, inside the 10 s Docker gives a container
/// after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(4);

/// How many events [`fail_once`] remembers having failed.
const FAILED_ONCE_KEPT: usize = 10_000;

/// With `CLINK_EXAMPLE_FAIL_ONCE=<type>`, the first run of each event of
/// that type in this process fails (the router's `before_each` hook), to
/// watch an event retry, or go dead and be replayed; later runs succeed.
/// The events that failed are remembered up to [`FAILED_ONCE_KEPT`], then
/// forgotten all at once: memory stays bounded whatever arrives.
fn fail_once(
    router: EventRouter<WithState<AppState>>,
) -> Result<EventRouter<WithState<AppState>>, String> {
    let Some(failing) = env_value("CLINK_EXAMPLE_FAIL_ONCE")? else {
        return Ok(router);
    };
    let failed = std::sync::Mutex::new(std::collections::HashSet::new());
    Ok(router.before_each(move |event: clink_webhooks::RawEvent, _state: AppState| {
        let first = event.event_type().as_str() == failing && {
            let mut failed = failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // An event that failed once runs on; room is made for others
            // only after that check.
            !failed.contains(event.id()) && {
                if failed.len() >= FAILED_ONCE_KEPT {
                    failed.clear();
                }
                failed.insert(event.id().to_owned())
            }
        };
        std::future::ready(if first {
            Err(format!(
                "simulated failure: the first run of every {} event fails (CLINK_EXAMPLE_FAIL_ONCE)",
                printable(&failing)
            ))
        } else {
            Ok(())
        })
    }))
}

/// `app` with the inbox console nested at `/console` when
/// `CLINK_CONSOLE_TOKEN` is set (it needs the `console` feature and an
/// inbox); `app` as it is otherwise. Whether the console is in it.
fn console(
    app: Router, inbox: Option<Arc<dyn Inbox>>,
) -> Result<(Router, bool), Box<dyn std::error::Error>> {
    // Trimmed, as the signing key is: a token mounted from a file ends in a
    // newline.
    let Some(token) = env_value("CLINK_CONSOLE_TOKEN")?.map(|token| token.trim().to_owned()) else {
        return Ok((app, false));
    };
    #[cfg(feature = "console")]
    {
        let inbox = inbox.ok_or("CLINK_CONSOLE_TOKEN needs an inbox: set CLINK_INBOX")?;
        // On plain HTTP here; behind HTTPS, add `.secure_cookie(true)`.
        let console = clink_webhooks::console::Console::with_token(inbox, token)?;
        eprintln!(
            "console: /console on the admin address \
             (Authorization: Bearer <CLINK_CONSOLE_TOKEN>, or ?token= once)"
        );
        Ok((app.nest("/console", console.router()), true))
    }
    #[cfg(not(feature = "console"))]
    {
        let _ = (app, inbox, token);
        Err("CLINK_CONSOLE_TOKEN needs the console feature \
             (cargo run --example axum_receiver --features console,sqlite)"
            .into())
    }
}

/// The durable inbox `CLINK_INBOX` names, and where handlers write their
/// effects.
struct Durable {
    inbox: Arc<dyn Inbox>,
    /// [`Effects::Off`] unless `CLINK_EXAMPLE_EFFECTS=1`.
    effects: Effects,
}

/// The inbox `CLINK_INBOX` names: `sqlite:<path>` (feature `sqlite`) or
/// `postgres` (feature `postgres`, in `DATABASE_URL`'s database); `None`
/// without it. With `effects`, the effects table is created in the inbox's
/// database and handlers write to it.
async fn inbox(effects: bool) -> Result<Option<Durable>, Box<dyn std::error::Error>> {
    let Some(spec) = env_value("CLINK_INBOX")? else {
        return Ok(None);
    };
    if let Some(path) = spec.strip_prefix("sqlite:") {
        #[cfg(feature = "sqlite")]
        {
            let inbox = clink_webhooks::store::SqliteInbox::open(path)?;
            eprintln!("inbox: SQLite ({})", printable(path));
            let effects = if effects {
                // A connection of its own, for the schema only; the rows
                // are written on the inbox's connection, in its transaction.
                let connection = rusqlite::Connection::open(path)?;
                connection.busy_timeout(Duration::from_secs(5))?;
                connection.execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {EFFECTS_TABLE} (
                         account TEXT NOT NULL,
                         event_id TEXT NOT NULL,
                         event_type TEXT NOT NULL
                     )"
                ))?;
                eprintln!("effects: {EFFECTS_TABLE}, committed with each event's completion");
                Effects::Sqlite(inbox.clone())
            } else {
                Effects::Off
            };
            return Ok(Some(Durable {
                inbox: Arc::new(inbox),
                effects,
            }));
        }
        #[cfg(not(feature = "sqlite"))]
        {
            let _ = (path, effects);
            return Err("CLINK_INBOX=sqlite:... needs the sqlite feature \
                 (cargo run --example axum_receiver --features sqlite)"
                .into());
        }
    }
    if spec == "postgres" {
        #[cfg(feature = "postgres")]
        {
            let url =
                env_value("DATABASE_URL")?.ok_or("CLINK_INBOX=postgres needs DATABASE_URL")?;
            let (manager, tls) = pg_manager(postgres_config(&url)?)?;
            let pool = deadpool_postgres::Pool::builder(manager)
                .max_size(16)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()?;
            let inbox = tls.inbox(clink_webhooks::store::PostgresInbox::new(pool.clone()));
            inbox.migrate().await?;
            tls.start(&inbox).await?;
            eprintln!("inbox: PostgreSQL (DATABASE_URL)");
            let effects = if effects {
                let mut client = pool.get().await?;
                // One instance at a time creates it: a concurrent `CREATE
                // TABLE IF NOT EXISTS` can fail on PostgreSQL's catalogue.
                let tx = client.transaction().await?;
                tx.batch_execute(&format!(
                    "SELECT pg_advisory_xact_lock(hashtext('{EFFECTS_TABLE}'));
                     CREATE TABLE IF NOT EXISTS {EFFECTS_TABLE} (
                         account text NOT NULL,
                         event_id text NOT NULL,
                         event_type text NOT NULL,
                         handled_at timestamptz NOT NULL DEFAULT now()
                     )"
                ))
                .await?;
                tx.commit().await?;
                eprintln!("effects: {EFFECTS_TABLE}, committed with each event's completion");
                Effects::Postgres(inbox.clone(), pool)
            } else {
                Effects::Off
            };
            return Ok(Some(Durable {
                inbox: Arc::new(inbox),
                effects,
            }));
        }
        #[cfg(not(feature = "postgres"))]
        return Err("CLINK_INBOX=postgres needs the postgres feature \
             (cargo run --example axum_receiver --features postgres)"
            .into());
    }
    Err("CLINK_INBOX must be sqlite:<path> or postgres".into())
}

/// A listener on `addr`, or an error that names the settings `from` which
/// the address came.
async fn listen(
    addr: impl Into<std::net::SocketAddr>, from: &str,
) -> Result<tokio::net::TcpListener, String> {
    let addr = addr.into();
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({from}): {e}"))
}

/// `200 ok` when a signing key is active and the layer's store (or inbox)
/// answers, `503` with the reason otherwise.
async fn health(readiness: Readiness) -> (StatusCode, String) {
    match readiness.check().await {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")),
    }
}

/// Ctrl-C and SIGTERM (how Docker, Kubernetes and systemd stop a
/// process), listened for from when this is called, so that a signal sent
/// as soon as the address is printed is not missed. The first resolves the
/// first future returned, a graceful stop, and says so on stderr; a second,
/// for whoever will not wait for that, sent once the line saying it can be
/// is printed half a second later ([`SAME_STOP_WITHIN`]; one sent with the
/// first is the same stop), resolves the second: a stop at once.
/// (The runtime's handlers replace the default one, which would have ended
/// the process on Ctrl-C; without the second, nothing would.)
fn stop_signals() -> std::io::Result<(
    impl std::future::Future<Output = ()>,
    impl std::future::Future<Output = ()>,
)> {
    let mut signals = Signals::new()?;
    let (first, graceful) = tokio::sync::oneshot::channel::<()>();
    let (second, at_once) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("stopping");
        let _ = first.send(());
        // Signals sent with the first (a Ctrl-C to the process group, and
        // a SIGTERM a supervisor passes on) are the same stop: a second
        // one is one sent after the line that says it can be.
        let window = tokio::time::sleep(SAME_STOP_WITHIN);
        tokio::pin!(window);
        loop {
            tokio::select! {
                () = &mut window => break,
                () = signals.next() => {}
            }
        }
        eprintln!("Ctrl-C again to stop at once");
        signals.next().await;
        let _ = second.send(());
    });
    // A channel closed without a signal (the runtime is shutting down)
    // stops nothing.
    let on = |signal: tokio::sync::oneshot::Receiver<()>| async move {
        if signal.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    Ok((on(graceful), on(at_once)))
}

/// Signals within this long of the first are the same stop, not a second.
const SAME_STOP_WITHIN: Duration = Duration::from_millis(500);

/// Ctrl-C and SIGTERM, received one at a time.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the next Ctrl-C or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            // Never a stop the user did not ask for.
            std::future::pending::<()>().await;
        }
    }
}
