//! `serve`: the receiving gateway. Verifies deliveries with the crate's
//! layer, keeps them in a durable inbox, and relays them from there to an
//! HTTP app, a NATS JetStream stream or a Redis stream, in per-object order,
//! with the inbox's retries, backoff and dead letters.

mod config;
mod destination;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use clink_webhooks::accounts::{AccountFrom, KeyMap};
use clink_webhooks::inbox::Workers;
use clink_webhooks::layer::Readiness;
use clink_webhooks::router::Permanent;
use clink_webhooks::server::Server;
use clink_webhooks::store::Inbox;
use clink_webhooks::{
    BoxError, BoxFuture, ClinkLayer, EventRouter, InboxIntake, RawEvent, Timestamp,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tower_service::Service;

use self::config::{read_accounts, verifier, Config, InboxSpec, Keys};
use self::destination::{
    AccountKeys, Destination, EventRefused, Health, MaybeKept, ReadPoint, Signers, Unconfirmed,
    VerifyingKey,
};
use crate::output::Output;
use crate::CliError;

pub(crate) const AFTER_HELP: &str = "\
The gateway verifies each delivery (signature, timestamp, envelope) with the
crate's layer, keeps it in a durable inbox and answers 200 once it is written;
workers then forward kept events to the destination, one object's events at
a time, oldest `created` first, each published only once every older event
of its object still to publish was acknowledged there. A failed publish is retried with
exponential backoff; after max_attempts the event is dead (see
`clink-webhook inbox`), and no longer holds the later events of its object
back: replayed, it arrives late.

Destinations (CLINK_DESTINATION):
  http://..., https://...  POST the raw body signed when it is sent
                           (X-Clink-Timestamp now, X-Clink-Signature with the
                           key that verified the event, or with
                           destination_signing_key), plus X-Clink-Account and
                           X-Clink-Event-Id (user:password@ in the URL is sent
                           as Authorization: Basic); any 2xx completes the event
  nats://[user:password@]host:port[,host:port...]
                           JetStream: publish to nats_subject in nats_stream
                           (created if missing; one made before must hold the
                           subjects and drop repeats for nats_duplicate_window_s)
                           with Nats-Msg-Id ACCOUNT:EVENT_ID; completed on the
                           server's ack. A publish whose ack was lost is looked
                           for in the stream before it is repeated past the
                           duplicate window
  redis://..., rediss://...  XADD to redis_stream with the fields event_id, type,
                           account, object, created and body, once per event
  redis+cluster://host:port,host:port,...  the same in a Redis Cluster
                           (rediss+cluster:// over TLS; user:password@ before
                           the first host applies to every node)

A password in a postgres://, nats:// or redis:// URL runs up to the last @
(it may hold / ? # @ or , as it is); in an http(s):// URL write those
percent-encoded. Every password is masked wherever a URL is shown, and an
http(s):// destination is shown by its scheme, host and port, its path (which
may be a secret) as /… (https://hooks.example:443/…).

Settings come from the TOML file CONFIG (names as below, lower case) and the
environment (the variables below, which win). Durations are in the unit their
name ends with. settle_ms is the inbox's reorder window: how long an event
waits after arriving so that an older event of its object arriving late still
goes first. Done events are kept for inbox_retention_hours after they were
last handled or replayed (purged hourly), dead ones until replayed or purged
with `inbox purge --dead`: below 48 h the gateway
warns at start, for Clink retries a delivery for about a day, and a retry of
one whose answer was lost, coming after its event was purged, is relayed
again. With a redis:// destination, redis_dedup_hours (how long an event's
marker keeps it from being added twice, two hours more for the purge) must be at least
inbox_retention_hours.

Routes: POST serve_path (with accounts_file: serve_path/ACCOUNT), GET /health
(200, or 503 naming what fails: the inbox, the keys (every one expired), or
the destination while an event waits for it; an HTTP app's 400, 409, 422
refuses one event, not the destination), GET /ready
(whether the inbox takes deliveries and a key is active), GET /metrics (Prometheus) and, with
console_token, /console: all on the delivery port, or with admin_listen on
that address instead (the delivery port then answers 404 to them).
SIGTERM or Ctrl-C stops taking deliveries and lets those in progress and the
publishes in flight finish within shutdown_timeout_ms, one deadline for both
(no new event is taken from the inbox after the signal); events still out then
go back to the inbox in up to 5 s more, and an SQLite write still waiting
for the file's lock then is let finish in up to 10 s more. Give a container
longer to stop than that: docker run --stop-timeout 30 with the default 10 s
(Docker's own default grace is 10 s). SIGHUP re-reads the accounts file.

Settings:
";

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (TOML); every setting can also come from the
    /// environment.
    #[arg(value_name = "CONFIG")]
    config: Option<PathBuf>,
    /// Check the configuration (file and environment), print it and exit.
    #[arg(long)]
    check: bool,
}

/// The help after the options: how it works, then every setting.
pub(crate) fn after_help() -> String {
    format!("{AFTER_HELP}{}", config::settings_help())
}

/// Runs the destination for each event the workers take.
struct Relay {
    inbox: Arc<dyn Inbox>,
    destination: Destination,
    health: Arc<Health>,
    max_attempts: u32,
    /// Set once the gateway is stopping: a forward stopped from then on
    /// goes back to the inbox (released, not an attempt that failed), so
    /// it is counted neither retried nor dead. (One stopped meanwhile at
    /// the end of its time inside the lease is a failed attempt the inbox
    /// records, which these counters then miss.)
    stopping: Arc<AtomicBool>,
}

/// Where a forward is, for [`Unfinished`] to tell whose part a stop cut
/// off: the destination's, or the inbox's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Reading the event from the inbox, before the publish.
    Reading,
    /// The destination has the event and has not answered.
    Publishing,
    /// The destination answered; what follows (recording its receipt) is
    /// the inbox's part.
    Answered,
    /// The forward ended, and counted its outcome itself.
    Finished,
}

/// Records a forward that was dropped before it ended (the workers stop a
/// handler at the end of its time inside the lease, and at shutdown) as a
/// failed attempt, which it otherwise would not be (not at shutdown, when
/// the workers give its event back to the inbox), and, when the
/// destination had the event and had not answered, as a failure of the
/// destination. A stop while the inbox was being read or written (before
/// the publish, or recording the receipt of one the destination already
/// acknowledged) says nothing against the destination.
struct Unfinished<'a> {
    relay: &'a Relay,
    attempt: u32,
    started: std::time::Instant,
    stage: Stage,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed().as_millis();
        let name = &self.relay.destination.name;
        match self.stage {
            Stage::Finished => return,
            Stage::Publishing => {
                let error = format!(
                    "{name}: no answer within {elapsed} ms, when the forward was stopped (its \
                     time inside lease_ms ran out, or the gateway is stopping)"
                );
                tracing::warn!(%error, "gateway: a forward was stopped unfinished");
                self.relay.health.failed(&error);
            }
            Stage::Reading | Stage::Answered => {
                let part = if self.stage == Stage::Reading {
                    "reading the event"
                } else {
                    "recording the receipt of a publish the destination acknowledged"
                };
                tracing::warn!(
                    destination = %name,
                    "gateway: a forward was stopped after {elapsed} ms while the inbox was \
                     {part} (its time inside lease_ms ran out, or the gateway is stopping)"
                );
            }
        }
        if !self.relay.stopping.load(Ordering::SeqCst) {
            self.relay.count_failure(self.attempt, false);
        }
    }
}

impl Relay {
    /// Counts a failed attempt: retried, or dead after the last.
    fn count_failure(&self, attempt: u32, permanent: bool) {
        let label = self.destination.name.clone();
        if permanent || attempt >= self.max_attempts {
            metrics::counter!("clink_gateway_dead_total", "destination" => label).increment(1);
        } else {
            metrics::counter!("clink_gateway_retried_total", "destination" => label).increment(1);
        }
    }

    async fn forward(&self, raw: RawEvent) -> Result<(), BoxError> {
        let attempt = raw
            .inbox_attempt()
            .ok_or("the gateway's handler runs under inbox workers only")?;
        let mut unfinished = Unfinished {
            relay: self,
            attempt: attempt.attempt(),
            started: std::time::Instant::now(),
            stage: Stage::Reading,
        };
        let result = self.forward_attempt(attempt, &mut unfinished.stage).await;
        unfinished.stage = Stage::Finished;
        result
    }

    /// Forwards the event of `attempt`, keeping `stage` up to date for
    /// the [`Unfinished`] that watches it.
    async fn forward_attempt(
        &self, attempt: &clink_webhooks::events::InboxAttempt, stage: &mut Stage,
    ) -> Result<(), BoxError> {
        let entry = self
            .inbox
            .get(attempt.seq())
            .await?
            .ok_or("the event is no longer in the inbox")?;
        let label = self.destination.name.clone();
        if entry.receipt.is_some() {
            // Published before a crash, not yet completed: done.
            metrics::counter!("clink_gateway_published_total", "destination" => label).increment(1);
            return Ok(());
        }
        let started = Timestamp::now();
        let mut unconfirmed = self
            .destination
            .is_nats()
            .then(|| unconfirmed_since(&entry.history, entry.event.received_at, attempt.attempt()))
            .flatten();
        *stage = Stage::Publishing;
        // A lookup that finds nothing narrows `unconfirmed` as it goes.
        let published = self
            .destination
            .publish(&entry.event, &mut unconfirmed)
            .await;
        // The destination answered: a stop from here on cuts off the inbox,
        // not the destination.
        *stage = Stage::Answered;
        match published {
            Ok(receipt) => {
                self.health.ok();
                if let Some(receipt) = receipt {
                    if let Err(error) = self.inbox.record_receipt(attempt, &receipt).await {
                        // The destination deduplicates a republish on its own.
                        tracing::warn!(%error, "gateway: could not record the destination's receipt");
                    }
                }
                let lag_ms = Timestamp::now()
                    .as_millis()
                    .saturating_sub(entry.event.received_at.as_millis())
                    .max(0);
                #[allow(clippy::cast_precision_loss)]
                let lag = lag_ms as f64 / 1000.0;
                metrics::counter!("clink_gateway_published_total", "destination" => label.clone())
                    .increment(1);
                metrics::gauge!("clink_gateway_lag_seconds", "destination" => label).set(lag);
                Ok(())
            }
            Err(error) => {
                let refused = error.downcast_ref::<EventRefused>();
                let permanent = refused.is_some_and(|refused| refused.permanent);
                // A refusal of this event alone says nothing of the
                // destination either way: one failing stays failing until
                // it takes an event again.
                if refused.is_none() {
                    self.health.failed(&error.to_string());
                }
                self.count_failure(attempt.attempt(), permanent);
                if !self.destination.is_nats() {
                    return Err(for_the_workers(error, permanent));
                }
                // The inbox keeps the error with the attempt: the next one
                // reads from it whether a publish may be in the stream.
                let since = if error.is::<MaybeKept>() {
                    Some(unconfirmed.map_or(started, |earlier| earlier.since.min(started)))
                } else {
                    unconfirmed.map(|earlier| earlier.since)
                };
                // How far a lookup read stays true whatever was published
                // after it: a message kept later has a later sequence.
                let read_to = unconfirmed
                    .and_then(|earlier| earlier.read_to)
                    .map_or(String::new(), |to| format!("{READ_TO}{to}"));
                let error = match since {
                    Some(since) => format!("{UNCONFIRMED}{since}{read_to}) {error}"),
                    None => format!("{NONE_KEPT} {error}"),
                };
                Err(for_the_workers(error.into(), permanent))
            }
        }
    }
}

/// A failed forward's `error` as the inbox's workers take it: marked
/// [`Permanent`] when the event was refused for good (it cannot be sent as
/// it is), so that it is dead at once rather than retried for
/// `max_attempts` while it holds back the later events of its object.
fn for_the_workers(error: BoxError, permanent: bool) -> BoxError {
    if permanent {
        Box::new(Permanent::new(error))
    } else {
        error
    }
}

/// How often the gateway purges the inbox's old done events: one can
/// outlive its retention by up to this long.
pub(crate) const PURGE_PERIOD: std::time::Duration = std::time::Duration::from_secs(3600);

/// How often the metrics recorder folds in the samples it holds, whether
/// or not anyone scrapes /metrics.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the error of a failed NATS publish when a publish of the event
/// (this one or an earlier one) may be in the stream unconfirmed: then the
/// time the earliest such publish began, and `)`.
const UNCONFIRMED: &str = "(unconfirmed publish since ";

/// Follows the time in [`UNCONFIRMED`] when a lookup for the event read
/// part of the stream and found none there: the point it read to (see
/// [`ReadPoint`]).
const READ_TO: &str = "; none kept to ";

/// Starts the error of a failed NATS publish when no publish of the event
/// can be in the stream.
const NONE_KEPT: &str = "(nothing published)";

/// The publishes of an event whose outcome is not known, if one may be in
/// the stream: read from its attempts (`history`) since it was last
/// completed, before this one, `attempt`.
///
/// - **Since when** one may have been kept: the newest failed publish's
///   error says it for itself and every attempt before (see
///   [`UNCONFIRMED`]); an attempt after it that ended otherwise (stopped
///   at the end of its time, lost with its lease, given back at shutdown)
///   may have published at its start. When the kept attempts do not reach
///   back to the first, or an error's time cannot be read, since the event
///   arrived (`received_at`).
/// - **When the latest began**: the start of the newest attempt that may
///   have published (the one whose error says so counts, though its
///   publish may not have been sent); `None` when no kept attempt says,
///   and the lookup then reads to the stream's end.
/// - **How far a lookup read**, as the newest error that says since when
///   says it (see [`READ_TO`]).
fn unconfirmed_since(
    history: &[clink_webhooks::store::InboxAttemptRecord], received_at: Timestamp, attempt: u32,
) -> Option<Unconfirmed> {
    use clink_webhooks::store::InboxAttemptOutcome;
    let done = history
        .iter()
        .rposition(|record| record.outcome == InboxAttemptOutcome::Completed)
        .map(|at| at + 1);
    let records = &history[done.unwrap_or(0)..];
    // What an attempt's error says: nothing kept (`Some(None)`), or
    // unconfirmed since a time (`Some(Some(..))`); an unreadable time
    // counts from the arrival.
    let said = |record: &clink_webhooks::store::InboxAttemptRecord| {
        let error = record.outcome.error()?;
        if let Some((_, rest)) = error.split_once(UNCONFIRMED) {
            let said = rest.split_once(')').map_or("", |(said, _)| said);
            let (since, read_to) = said.split_once(READ_TO).unwrap_or((said, ""));
            return Some(Some(Unconfirmed {
                since: since.parse::<Timestamp>().unwrap_or(received_at),
                latest: Some(record.started_at),
                read_to: read_to.parse::<ReadPoint>().ok(),
            }));
        }
        error.contains(NONE_KEPT).then_some(None)
    };
    let (mut unconfirmed, after) = match records.iter().rposition(|record| said(record).is_some()) {
        Some(at) => (said(&records[at]).flatten(), &records[at + 1..]),
        None => {
            let whole = done.is_some()
                || records
                    .first()
                    .map_or(attempt <= 1, |first| first.attempt <= 1);
            let since_arrival = (!whole).then_some(Unconfirmed {
                since: received_at,
                latest: None,
                read_to: None,
            });
            (since_arrival, records)
        }
    };
    for record in after {
        let started = record.started_at;
        unconfirmed = Some(match unconfirmed {
            None => Unconfirmed {
                since: started,
                latest: Some(started),
                read_to: None,
            },
            Some(earlier) => Unconfirmed {
                since: earlier.since.min(started),
                latest: Some(earlier.latest.map_or(started, |latest| latest.max(started))),
                read_to: earlier.read_to,
            },
        });
    }
    unconfirmed
}

type Body = UnsyncBoxBody<Bytes, BoxError>;

fn full(text: String) -> Body {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Which routes a port serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Routes {
    /// The deliveries and the admin routes, on the one port.
    All,
    /// The deliveries only (the admin routes have a port of their own).
    Deliveries,
    /// `/health`, `/ready`, `/metrics` and `/console` only.
    Admin,
}

/// The gateway's HTTP service: deliveries to the intake, `/health`,
/// `/ready`, `/metrics`, `/console`, each where [`Routes`] says; 404
/// elsewhere.
#[derive(Clone)]
struct Gateway {
    routes: Routes,
    intake: InboxIntake,
    path: Arc<str>,
    per_account: bool,
    readiness: Readiness,
    inbox: Arc<dyn Inbox>,
    /// The longest `/health` waits for the inbox's counts.
    store_timeout: Duration,
    destination: Arc<str>,
    destination_kind: &'static str,
    health: Arc<Health>,
    /// With `accounts_file`: the accounts' keys and the accounts' names,
    /// for `/health` and `/ready` to tell when no account has a key active
    /// (the layer's readiness cannot see into a key source).
    accounts: Option<(KeyMap, Arc<Mutex<BTreeSet<String>>>)>,
    metrics: Option<PrometheusHandle>,
    /// The inbox console at `/console`, when configured.
    #[cfg(feature = "console")]
    console: Option<axum::Router>,
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

impl Gateway {
    fn is_delivery_path(&self, path: &str) -> bool {
        if self.per_account {
            path.strip_prefix(&*self.path)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|account| !account.is_empty() && !account.contains('/'))
        } else {
            path == &*self.path
        }
    }

    /// With `accounts_file`, when no account has a key active now: the
    /// error, as the layer's readiness words every key expired.
    fn accounts_without_keys(&self) -> Option<&'static str> {
        let (map, known) = self.accounts.as_ref()?;
        let now = std::time::SystemTime::now();
        let active = known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|account| map.get(account).is_some_and(|v| v.has_active_key_at(now)));
        (!active).then_some(
            "not ready: every signing key of every account has expired (no_active_key); \
             configure the endpoints' current signing secrets in accounts_file and send SIGHUP",
        )
    }

    /// Whether the gateway takes deliveries: a key active (for each key
    /// set, or some account's), then the inbox writable. `Err` says why,
    /// and whether it is the keys.
    async fn ready(&self) -> Result<(), (bool, String)> {
        if let Some(error) = self.accounts_without_keys() {
            return Err((true, error.to_owned()));
        }
        self.readiness
            .check()
            .await
            .map_err(|error| (error.no_active_key(), error.to_string()))
    }

    async fn health(&self) -> Response<Body> {
        // Every key expired is the keys' failure, not the inbox's (which
        // is then not looked at).
        let (inbox, keys) = match self.ready().await {
            Ok(()) => (json!({ "status": "ok" }), json!({ "status": "ok" })),
            Err((true, error)) => (
                json!({ "status": "not checked" }),
                json!({ "status": "failing", "error": error }),
            ),
            Err((false, error)) => (
                json!({ "status": "failing", "error": error }),
                json!({ "status": "ok" }),
            ),
        };
        // Bounded as the readiness check is: an inbox held by a long call
        // (or a stalled disk) must not keep the probe from answering.
        let stats = tokio::time::timeout(self.store_timeout, self.inbox.stats()).await;
        let stats = stats.ok().and_then(Result::ok).map(|stats| {
            json!({
                "pending": stats.pending,
                "retrying": stats.retrying,
                "running": stats.running,
                "dead": stats.dead,
                "oldest_unhandled": stats.oldest_unhandled.map(|t| t.to_string()),
            })
        });
        // The destination is failing while an event still waits for it:
        // once every event is done or dead, nothing is failing any more.
        let waiting = stats.as_ref().is_none_or(|stats| {
            stats["pending"] != 0 || stats["retrying"] != 0 || stats["running"] != 0
        });
        let failing = self.health.failing().filter(|_| waiting);
        let destination = match failing {
            None => json!({
                "name": &*self.destination, "kind": self.destination_kind, "status": "ok",
            }),
            Some((error, since)) => json!({
                "name": &*self.destination, "kind": self.destination_kind, "status": "failing",
                "error": error, "since": since.to_string(),
            }),
        };
        let failing =
            inbox["status"] != "ok" || keys["status"] != "ok" || destination["status"] != "ok";
        let status = if failing {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        json_response(
            status,
            &json!({
                "status": if failing { "failing" } else { "ok" },
                "inbox": inbox,
                "keys": keys,
                "events": stats,
                "destination": destination,
            }),
        )
    }

    async fn route(mut self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        if self.routes == Routes::Deliveries {
            if self.is_delivery_path(&path) {
                return self.deliver(request).await;
            }
            return self.not_found();
        }
        if self.routes == Routes::All && self.is_delivery_path(&path) {
            return self.deliver(request).await;
        }
        #[cfg(feature = "console")]
        if path == "/console" || path.starts_with("/console/") {
            if let Some(mut console) = self.console.take() {
                let ready = std::future::poll_fn(|cx| {
                    Service::<Request<Incoming>>::poll_ready(&mut console, cx)
                });
                let answered = match ready.await {
                    Ok(()) => console.call(request).await,
                    Err(never) => match never {},
                };
                let response = match answered {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                return response.map(|body| body.map_err(Into::into).boxed_unsync());
            }
        }
        match (request.method(), path.as_str()) {
            (&Method::GET, "/health") => self.health().await,
            (&Method::GET, "/ready") => match self.ready().await {
                Ok(()) => json_response(StatusCode::OK, &json!({ "status": "ok" })),
                Err((_, error)) => json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "status": "failing", "error": error }),
                ),
            },
            (&Method::GET, "/metrics") if self.metrics.is_some() => {
                let text = self.metrics.as_ref().map(|handle| {
                    handle.run_upkeep();
                    handle.render()
                });
                let mut response = Response::new(full(text.unwrap_or_default()));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            _ => self.not_found(),
        }
    }

    async fn deliver(&mut self, request: Request<Incoming>) -> Response<Body> {
        let response = match self.intake.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        response.map(|body| body.map_err(Into::into).boxed_unsync())
    }

    /// A `404`. With the admin routes on a port of their own, it says
    /// nothing more: neither port tells a stranger what the other serves,
    /// nor the delivery path.
    fn not_found(&self) -> Response<Body> {
        let body = match self.routes {
            Routes::All => json!({
                "error": "not_found",
                "message": format!("deliveries go to {}", self.delivery_path()),
            }),
            Routes::Deliveries | Routes::Admin => json!({ "error": "not_found" }),
        };
        json_response(StatusCode::NOT_FOUND, &body)
    }

    fn delivery_path(&self) -> String {
        if self.per_account {
            format!("{}/{{account}}", self.path)
        } else {
            self.path.to_string()
        }
    }
}

impl Service<Request<Incoming>> for Gateway {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self, _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.route(request).await) })
    }
}

/// The accounts' keys, loaded into `map` (and, with the names the layer
/// records, into `keys`); accounts gone from the file are removed. Returns
/// how many accounts the file has.
fn load_accounts(
    path: &std::path::Path, map: &KeyMap, known: &Mutex<BTreeSet<String>>, tolerance: Duration,
    keys: &AccountKeys,
) -> Result<usize, String> {
    let accounts = read_accounts(path).map_err(|p| p.0)?;
    let mut verifiers = Vec::with_capacity(accounts.len());
    for (account, keys) in &accounts {
        let verifier = verifier(keys, tolerance).map_err(|m| format!("account {account}: {m}"))?;
        verifiers.push((account.clone(), verifier));
    }
    // Named once here, not on each forward.
    let named = accounts
        .iter()
        .map(|(account, keys)| (account.clone(), VerifyingKey::named(keys)))
        .collect();
    let mut known = known.lock().unwrap_or_else(PoisonError::into_inner);
    for (account, verifier) in verifiers {
        map.insert(account.clone(), verifier)
            .map_err(|e| format!("account {account}: {e}"))?;
        known.insert(account);
    }
    let gone: Vec<String> = known
        .iter()
        .filter(|account| !accounts.contains_key(*account))
        .cloned()
        .collect();
    for account in gone {
        map.remove(&account);
        known.remove(&account);
    }
    let count = accounts.len();
    *keys.write().unwrap_or_else(PoisonError::into_inner) = named;
    Ok(count)
}

/// The most connections the admin address serves at once.
const ADMIN_CONNECTIONS: usize = 64;

/// The admin routes `config` serves.
fn admin_routes(config: &Config) -> Vec<&'static str> {
    let mut routes = vec!["/health", "/ready"];
    if config.metrics {
        routes.push("/metrics");
    }
    if config.console.is_some() {
        routes.push("/console");
    }
    routes
}

/// The least `inbox_retention_hours` without a warning: Clink retries a
/// delivery for about a day, and two days cover that with a margin.
const RETENTION_WARNED_BELOW: Duration = Duration::from_secs(48 * 3600);

/// The warning at start when the inbox keeps settled events for less than
/// [`RETENTION_WARNED_BELOW`]: an event purged while Clink still retries a
/// delivery of it whose answer was lost is taken as new, and relayed again.
fn retention_warning(retention: Duration) -> Option<String> {
    (retention < RETENTION_WARNED_BELOW).then(|| {
        format!(
            "inbox_retention_hours ({} h) is shorter than {} h: Clink retries a delivery for \
             about a day, and a retry of one whose answer was lost that comes after its event \
             was purged is taken as new and relayed a second time; set it to {} or more",
            retention.as_secs() / 3600,
            RETENTION_WARNED_BELOW.as_secs() / 3600,
            RETENTION_WARNED_BELOW.as_secs() / 3600
        )
    })
}

async fn open_inbox(config: &Config) -> Result<Arc<dyn Inbox>, CliError> {
    let failed = |what: &str, error: &dyn std::error::Error| CliError::io(what, error);
    match &config.inbox {
        InboxSpec::Sqlite(path) => {
            let inbox = clink_webhooks::store::SqliteInbox::open(path)
                .map_err(|e| failed(&format!("cannot open the inbox {}", path.display()), &e))?;
            Ok(Arc::new(inbox))
        }
        InboxSpec::Postgres(url) => {
            // Checked when the configuration was read; the error is not shown:
            // it could quote the password.
            let mut pg = crate::urls::postgres_config(url)
                .ok_or_else(|| CliError::usage("configuration: database_url is not valid"))?;
            let tls =
                clink_webhooks::store::postgres_tls(&mut pg, config.database_ca_file.as_deref())
                    .map_err(|e| {
                        CliError::usage(format!("configuration: database_ca_file: {e}"))
                    })?;
            if tls.is_none() && !clink_webhooks::store::postgres_on_this_machine(&pg) {
                eprintln!(
                    "gateway: the inbox's database is on another machine and reached without \
                     TLS: the events' bodies cross the network unencrypted; add \
                     sslmode=require to database_url (and database_ca_file for a private CA)"
                );
            }
            let manager = match &tls {
                Some(tls) => deadpool_postgres::Manager::new(pg.clone(), tls.clone()),
                None => deadpool_postgres::Manager::new(pg.clone(), tokio_postgres::NoTls),
            };
            let pool = deadpool_postgres::Pool::builder(manager)
                .max_size(config.concurrency + 4)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| failed("cannot make the PostgreSQL pool", &e))?;
            let mut inbox = clink_webhooks::store::PostgresInbox::new(pool)
                .with_timeout(config.store_timeout)
                .map_err(|e| CliError::usage(e.to_string()))?;
            if let Some(tls) = &tls {
                inbox = inbox.cancel_with(tls.clone());
            }
            inbox
                .migrate()
                .await
                .map_err(|e| failed("cannot create the inbox table", &e))?;
            let listening = match tls {
                Some(tls) => inbox.listen_with(pg, tls).await,
                None => inbox.listen(pg).await,
            };
            if let Err(error) = listening {
                tracing::warn!(
                    %error,
                    "gateway: no LISTEN connection yet; idle workers poll every 250 ms until one is made"
                );
            }
            // The console's pages read through indexes of their own, built
            // beside the deliveries (a build holds no write back); an index
            // already there is only looked up.
            #[cfg(feature = "console")]
            if config.console.is_some() {
                let building = inbox.clone();
                tokio::spawn(async move {
                    if let Err(error) = building.build_console_indexes().await {
                        tracing::warn!(
                            %error,
                            "gateway: the console's indexes are not built; its pages and counts \
                             read the whole inbox table (see PostgresInbox::console_indexes_sql)"
                        );
                    }
                });
            }
            Ok(Arc::new(inbox))
        }
    }
}

/// Dependencies held at `debug` whatever the log filter says: at `trace`,
/// async-nats logs its CONNECT with the user's password or token. (The
/// Redis and PostgreSQL clients log through the `log` crate, which the
/// gateway does not print.)
const CAPPED_AT_DEBUG: &[&str] = &["async_nats"];

/// The subscriber the gateway logs through: `filter` (the `log` setting)
/// and the caps of [`CAPPED_AT_DEBUG`], writing to `writer`.
fn log_subscriber<W>(filter: &str, writer: W) -> Result<impl tracing::Subscriber, CliError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt as _;
    let env_filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| {
        CliError::usage(format!(
            "configuration: log ({}): not a log filter such as warn or warn,clink_webhooks=info: {e}",
            if filter.contains("://") {
                crate::urls::masked_url(filter)
            } else {
                crate::output::escaped(filter)
            }
        ))
    })?;
    // A layer of its own, so that no directive of the filter (a narrower
    // target, a span) can lift a cap.
    let caps = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::TRACE)
        .with_targets(
            CAPPED_AT_DEBUG
                .iter()
                .map(|target| (*target, tracing::Level::DEBUG)),
        );
    Ok(tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(writer)
        .with_ansi(false)
        .finish()
        .with(caps))
}

fn install_logging(filter: &str) -> Result<(), CliError> {
    let _ = tracing::subscriber::set_global_default(log_subscriber(filter, std::io::stderr)?);
    Ok(())
}

#[allow(clippy::too_many_lines)]
pub(crate) async fn run(out: &Output, args: &ServeArgs) -> Result<(), CliError> {
    let config =
        Config::load(args.config.as_deref()).map_err(|problem| CliError::usage(problem.0))?;
    if out.json {
        out.json_line(&config.json());
    } else {
        for line in config.lines() {
            out.line(&line);
        }
    }
    if let Some(warning) = retention_warning(config.inbox_retention) {
        eprintln!("gateway: {warning}");
    }
    if config.admin_listen.is_none() && !config.listen.ip().to_canonical().is_loopback() {
        eprintln!(
            "gateway: serve_listen is not a loopback address and admin_listen is unset: {} \
             answer on the delivery port; set admin_listen (127.0.0.1:3001, say), or let only \
             the delivery path through from outside",
            admin_routes(&config).join(", ")
        );
    }
    if let Some(spec) = config.console.as_ref() {
        if spec.client_header.is_some() && spec.trusted_proxies.is_empty() {
            eprintln!(
                "gateway: console_client_header is believed on every connection: a client that \
                 reaches the console without your proxy names any address it likes; set \
                 console_trusted_proxies to the proxies' addresses"
            );
        }
    }
    if args.check {
        if out.json {
            out.json_line(&json!({ "check": "ok" }));
        } else {
            out.line("configuration ok");
        }
        return Ok(());
    }
    install_logging(&config.log)?;
    // One TLS provider for every client (Redis, HTTPS, NATS).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = if config.metrics {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .map_err(|e| CliError::io("cannot install the metrics recorder", &e))?;
        // The recorder keeps every sample until its upkeep folds them in,
        // which a scrape of /metrics does; with nobody scraping, a
        // stranger's requests (each refusal is timed) would grow memory
        // without bound.
        tokio::spawn({
            let handle = handle.clone();
            async move {
                let mut every = tokio::time::interval(METRICS_UPKEEP);
                loop {
                    every.tick().await;
                    handle.run_upkeep();
                }
            }
        });
        Some(handle)
    } else {
        None
    };

    let inbox = open_inbox(&config).await?;
    let usage = |e: clink_webhooks::ConfigError| CliError::usage(format!("configuration: {e}"));
    let accounts = KeyMap::new();
    let known = Arc::new(Mutex::new(BTreeSet::new()));
    let account_keys = AccountKeys::default();
    let layer = match &config.keys {
        Keys::One(keys) => {
            account_keys
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(String::new(), VerifyingKey::named(keys));
            ClinkLayer::new(
                verifier(keys, config.tolerance)
                    .map_err(|m| CliError::usage(format!("configuration: {m}")))?,
            )
        }
        Keys::PerAccount(path) => {
            load_accounts(path, &accounts, &known, config.tolerance, &account_keys)
                .map_err(CliError::usage)?;
            ClinkLayer::with_key_source(AccountFrom::LastPathSegment, accounts.clone())
        }
    };
    // Each of the limit and the budget is checked against the other as it
    // is set: the one that grows past the other's default goes second (the
    // configuration has checked that the budget holds the limit).
    let (budget_bytes, budget_bodies) = config.body_budget;
    let sized = if config.body_limit > clink_webhooks::layer::DEFAULT_BODY_BUDGET {
        layer
            .body_budget(budget_bytes, budget_bodies)
            .and_then(|l| l.body_limit(config.body_limit))
    } else {
        layer
            .body_limit(config.body_limit)
            .and_then(|l| l.body_budget(budget_bytes, budget_bodies))
    };
    let layer = sized
        .and_then(|l| l.body_timeout(config.body_timeout))
        .and_then(|l| l.store_timeout(config.store_timeout))
        .map_err(usage)?;
    let intake = layer.intake(Arc::clone(&inbox));

    let signers = match &config.destination_key {
        Some(key) => Signers::Own(key.clone()),
        None => Signers::Verifying(Arc::clone(&account_keys)),
    };
    let destination = Destination::new(&config, signers).map_err(CliError::usage)?;
    // A stream that cannot take the events as configured stops the start.
    destination
        .check_at_start()
        .await
        .map_err(|e| CliError::usage(format!("configuration: {e}")))?;
    let destination_name: Arc<str> = Arc::from(destination.name.as_str());
    let destination_kind = destination.kind();
    let health = Arc::new(Health::default());
    let stopping = Arc::new(AtomicBool::new(false));
    let relay = Arc::new(Relay {
        inbox: Arc::clone(&inbox),
        destination,
        health: Arc::clone(&health),
        max_attempts: config.max_attempts,
        stopping: Arc::clone(&stopping),
    });
    let router = EventRouter::new().on_unhandled(move |raw| {
        let relay = Arc::clone(&relay);
        async move { relay.forward(raw).await }
    });
    let workers = Workers::new(Arc::clone(&inbox), router)
        .concurrency(config.concurrency)
        .and_then(|w| w.lease(config.lease))
        .and_then(|w| w.max_attempts(config.max_attempts))
        .and_then(|w| w.backoff(config.backoff, config.max_backoff))
        .and_then(|w| w.reorder_window(config.reorder_window))
        .map_err(usage)?;

    // The port first, and every other step that can fail: a gateway that
    // does not start (its port taken by another on the same inbox, say)
    // claims no event, and relays none.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| CliError::io(&format!("cannot listen on {}", config.listen), &e))?;
    let address = listener
        .local_addr()
        .map_err(|e| CliError::io("cannot read the listening address", &e))?;
    let admin_listener = match config.admin_listen {
        Some(admin) => {
            let listener = TcpListener::bind(admin).await.map_err(|e| {
                CliError::io(&format!("cannot listen on {admin} (admin_listen)"), &e)
            })?;
            let address = listener
                .local_addr()
                .map_err(|e| CliError::io("cannot read the admin address", &e))?;
            Some((listener, address))
        }
        None => None,
    };
    let mut signals = Signals::new()?;
    let gateway = Gateway {
        routes: if admin_listener.is_some() {
            Routes::Deliveries
        } else {
            Routes::All
        },
        readiness: intake.readiness(),
        intake,
        path: Arc::from(config.path.as_str()),
        per_account: matches!(config.keys, Keys::PerAccount(_)),
        inbox: Arc::clone(&inbox),
        store_timeout: config.store_timeout,
        destination: Arc::clone(&destination_name),
        destination_kind,
        health,
        accounts: matches!(config.keys, Keys::PerAccount(_))
            .then(|| (accounts.clone(), Arc::clone(&known))),
        metrics,
        #[cfg(feature = "console")]
        console: match &config.console {
            Some(spec) => {
                let mut console = clink_webhooks::console::Console::with_token(
                    Arc::clone(&inbox),
                    spec.token.as_str(),
                )
                .map_err(usage)?
                .secure_cookie(spec.secure_cookie);
                if let Some(header) = &spec.client_header {
                    console = console.client_address_header(header).map_err(usage)?;
                    if !spec.trusted_proxies.is_empty() {
                        console = console
                            .trusted_proxies(&spec.trusted_proxies)
                            .map_err(usage)?;
                    }
                }
                Some(axum::Router::new().nest("/console", console.router()))
            }
            None => None,
        },
    };
    let server = Server::new()
        .header_read_timeout(config.header_read_timeout)
        .and_then(|s| s.max_connections(config.max_connections))
        .and_then(|s| s.shutdown_timeout(config.shutdown_timeout))
        .map_err(usage)?;
    let admin = match admin_listener {
        Some((listener, address)) => {
            let gateway = Gateway {
                routes: Routes::Admin,
                ..gateway.clone()
            };
            // Few connections: probes, a scraper and an operator's browser.
            let server = server
                .clone()
                .max_connections(ADMIN_CONNECTIONS)
                .map_err(usage)?;
            Some((listener, address, gateway, server))
        }
        None => None,
    };
    let pool = workers.spawn();
    let url = format!("http://{address}{}", gateway.delivery_path());
    let admin_url = admin
        .as_ref()
        .map(|(_, address, ..)| format!("http://{address}"));
    if out.json {
        out.json_line(&json!({
            "listening": url, "admin": admin_url, "destination": &*destination_name,
        }));
    } else {
        out.line(&format!("listening on {url}"));
        if let Some(admin_url) = &admin_url {
            out.line(&format!(
                "admin listening on {admin_url} ({})",
                admin_routes(&config).join(", ")
            ));
        }
        out.line(&format!("forwarding to {destination_name}"));
    }

    // The inbox keeps done events for inbox_retention_hours after they were
    // last handled or replayed (Inbox::purge), and dead ones until they are
    // replayed or purged on purpose: as long as it keeps one, a redelivery
    // of it is a duplicate.
    let purger = {
        let inbox = Arc::clone(&inbox);
        let retention = config.inbox_retention;
        tokio::spawn(async move {
            loop {
                let millis = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
                let before =
                    Timestamp::from_millis(Timestamp::now().as_millis().saturating_sub(millis));
                if let Err(error) = inbox.purge(before).await {
                    tracing::warn!(%error, "gateway: could not purge old events");
                }
                tokio::time::sleep(PURGE_PERIOD).await;
            }
        })
    };

    let reload = match &config.keys {
        Keys::PerAccount(path) => Some((path.clone(), accounts, known, account_keys)),
        Keys::One(_) => None,
    };
    let tolerance = config.tolerance;
    let stop = async move {
        loop {
            match signals.next().await {
                Signal::Stop => return,
                Signal::Reload => {
                    let Some((path, accounts, known, keys)) = &reload else {
                        eprintln!("SIGHUP: no accounts_file to re-read");
                        continue;
                    };
                    match load_accounts(path, accounts, known, tolerance, keys) {
                        Ok(count) => {
                            eprintln!("SIGHUP: re-read {}: {count} accounts", path.display());
                        }
                        Err(message) => {
                            eprintln!("SIGHUP: {message}; the keys in use are unchanged");
                        }
                    }
                }
            }
        }
    };
    // One deadline, shutdown_timeout_ms from the signal, for the whole
    // stop, and the two halves side by side from the signal on: the
    // deliveries in progress finish while the workers take no new event
    // and the publishes in flight finish (or their events go back to the
    // inbox). A long drain then takes nothing from the publishes.
    let (signalled, signal) = tokio::sync::oneshot::channel();
    // The admin port, when there is one, stops with the delivery port.
    let (stopped, mut admin_stop) = tokio::sync::watch::channel(false);
    let stop = async move {
        stop.await;
        let _ = stopped.send(true);
        let _ = signalled.send(());
    };
    let admin_serving = async move {
        if let Some((listener, _, gateway, server)) = admin {
            let stop = async move {
                // An error means the sender is gone: stopping too.
                let _ = admin_stop.wait_for(|stopped| *stopped).await;
            };
            server.serve(listener, gateway, stop).await;
        }
    };
    let shutdown_timeout = config.shutdown_timeout;
    let workers_stop = async move {
        // Only the signal ends serving; without it (never), no time is left.
        let left = match signal.await {
            Ok(()) => shutdown_timeout,
            Err(_) => Duration::ZERO,
        };
        stopping.store(true, Ordering::SeqCst);
        pool.shutdown(left).await;
    };
    tokio::join!(
        server.serve(listener, gateway, stop),
        admin_serving,
        workers_stop
    );
    purger.abort();
    eprintln!("stopped");
    Ok(())
}

enum Signal {
    Stop,
    Reload,
}

/// SIGTERM, Ctrl-C and SIGHUP, listened for from the start.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, CliError> {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind| {
            signal(kind)
                .map_err(|e| CliError::io("cannot listen for SIGTERM, Ctrl-C and SIGHUP", &e))
        };
        Ok(Self {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
            hangup: listen(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Stop,
            _ = self.terminate.recv() => Signal::Stop,
            _ = self.hangup.recv() => Signal::Reload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the filter, async-nats logs at `debug` at most (its
    /// CONNECT at `trace` holds the password); other targets as it says.
    #[test]
    fn no_filter_lifts_the_cap_on_async_nats() {
        for filter in [
            "trace",
            "async_nats=trace",
            "async_nats::connection=trace",
            "warn,async_nats[{pass}]=trace",
        ] {
            let written = Arc::new(Mutex::new(Vec::<u8>::new()));
            let writer = {
                let written = Arc::clone(&written);
                move || WrittenTo(Arc::clone(&written))
            };
            let subscriber = log_subscriber(filter, writer).unwrap();
            tracing::subscriber::with_default(subscriber, || {
                tracing::trace!(
                    target: "async_nats::connection",
                    pass = "hunter2",
                    "write operation: CONNECT"
                );
                tracing::debug!(target: "async_nats::connector", "connecting to server");
                tracing::trace!(target: "clink_webhooks::inbox", "a trace of the crate");
            });
            let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
            assert!(!text.contains("hunter2"), "{filter}: {text}");
            if ["trace", "async_nats=trace"].contains(&filter) {
                assert!(text.contains("connecting to server"), "{filter}: {text}");
            }
            if filter == "trace" {
                assert!(text.contains("a trace of the crate"), "{filter}: {text}");
            }
        }
        assert!(log_subscriber("warn,=x=", std::io::sink).is_err());
    }

    /// A writer into a shared buffer.
    struct WrittenTo(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for WrittenTo {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn relay(destination: &str) -> Relay {
        let config = Config::from_pairs(&[
            ("webhook_signing_key", "whsec_a"),
            ("inbox", "sqlite:/tmp/unused.db"),
            ("destination", destination),
        ])
        .unwrap_or_else(|problem| panic!("{}", problem.0));
        Relay {
            inbox: Arc::new(clink_webhooks::store::MemoryInbox::new()),
            destination: Destination::new(&config, Signers::Verifying(AccountKeys::default()))
                .unwrap(),
            health: Arc::new(Health::default()),
            max_attempts: 3,
            stopping: Arc::default(),
        }
    }

    /// A forward stopped on its last attempt counts the event dead when its
    /// time ran out (the workers keep it dead), and neither dead nor
    /// retried once the gateway is stopping (the workers give the event
    /// back to the inbox, to be tried again).
    #[test]
    fn a_forward_stopped_at_shutdown_is_counted_neither_dead_nor_retried() {
        for stopping in [false, true] {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let relay = relay("http://127.0.0.1:9/");
            relay.stopping.store(stopping, Ordering::SeqCst);
            metrics::with_local_recorder(&recorder, || {
                drop(Unfinished {
                    relay: &relay,
                    attempt: relay.max_attempts,
                    started: std::time::Instant::now(),
                    stage: Stage::Publishing,
                });
            });
            let counted = handle.render();
            assert_eq!(
                counted.contains("clink_gateway_dead_total"),
                !stopping,
                "stopping: {stopping}: {counted}"
            );
            assert!(
                !counted.contains("clink_gateway_retried_total"),
                "{counted}"
            );
        }
    }

    /// A forward refused for good reaches the workers marked permanent
    /// (dead at once), through the NATS error's prefix too; one refused
    /// this time, or failing otherwise, does not.
    #[test]
    fn an_event_refused_for_good_is_permanent_for_the_workers() {
        let marked = |error: BoxError| {
            std::iter::successors(Some(&*error as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .any(<dyn std::error::Error>::is::<Permanent>)
        };
        let refused = |permanent| -> BoxError {
            Box::new(if permanent {
                EventRefused::permanent("too large".to_owned())
            } else {
                EventRefused::retried("answered 409".to_owned())
            })
        };
        assert!(marked(for_the_workers(refused(true), true)));
        let nats = format!("{NONE_KEPT} too large");
        assert!(marked(for_the_workers(nats.into(), true)));
        assert!(!marked(for_the_workers(refused(false), false)));
        assert!(!marked(for_the_workers("cannot connect".into(), false)));
    }

    #[test]
    fn an_unconfirmed_publish_is_read_from_the_attempts() {
        use clink_webhooks::store::{InboxAttemptOutcome, InboxAttemptRecord};
        let at = Timestamp::from_millis;
        let failed = |attempt, started, error: &str| {
            InboxAttemptRecord::new(
                attempt,
                at(started),
                Duration::from_millis(10),
                InboxAttemptOutcome::Failed {
                    error: format!("attempt {attempt} of 9 failed; the next runs at ...: {error}"),
                },
            )
        };
        let other = |attempt, started, outcome| {
            InboxAttemptRecord::new(attempt, at(started), Duration::from_millis(10), outcome)
        };
        let arrived = at(1_000);
        let marked = format!("{UNCONFIRMED}{}) nats://h: no acknowledgement", at(2_000));
        let none = format!("{NONE_KEPT} nats://h: cannot connect");
        let moved = format!("{UNCONFIRMED}{}) nats://h: no acknowledgement", at(9_000));
        let unreadable = format!("{UNCONFIRMED}soon) nats://h: no acknowledgement");
        // Since when, and the latest begun (`None`: not known).
        for (history, attempt, expected) in [
            // The first attempt: nothing before it.
            (vec![], 1, None),
            // Attempts whose publish was never sent.
            (
                vec![failed(1, 1_500, &none), failed(2, 1_600, &none)],
                3,
                None,
            ),
            // One that was: its time carries on through later errors, and
            // the latest is the newest that says so.
            (
                vec![failed(1, 2_000, &marked)],
                2,
                Some((2_000, Some(2_000))),
            ),
            (
                vec![failed(1, 2_000, &marked), failed(2, 3_000, &marked)],
                3,
                Some((2_000, Some(3_000))),
            ),
            // A lookup found none until later than the latest began.
            (
                vec![failed(1, 3_000, &moved)],
                2,
                Some((9_000, Some(3_000))),
            ),
            // A time that cannot be read: since the event arrived.
            (
                vec![failed(1, 2_500, &unreadable)],
                2,
                Some((1_000, Some(2_500))),
            ),
            // An attempt that ended otherwise after it may have published.
            (
                vec![
                    failed(1, 1_500, &none),
                    other(2, 4_000, InboxAttemptOutcome::LeaseExpired),
                ],
                3,
                Some((4_000, Some(4_000))),
            ),
            (
                vec![
                    failed(1, 1_500, &none),
                    failed(2, 5_000, "handler timed out"),
                ],
                3,
                Some((5_000, Some(5_000))),
            ),
            (
                vec![
                    failed(1, 2_000, &marked),
                    other(2, 4_000, InboxAttemptOutcome::LeaseExpired),
                ],
                3,
                Some((2_000, Some(4_000))),
            ),
            // Completed, then replayed: only what came after counts.
            (
                vec![
                    failed(1, 2_000, &marked),
                    other(2, 2_500, InboxAttemptOutcome::Completed),
                    failed(1, 6_000, &none),
                ],
                2,
                None,
            ),
            // Earlier attempts no longer kept and none that says: since it
            // arrived, the latest begun before the newest kept one at most.
            (
                vec![other(7, 8_000, InboxAttemptOutcome::Released)],
                8,
                Some((1_000, Some(8_000))),
            ),
            (vec![], 5, Some((1_000, None))),
        ] {
            let unconfirmed = unconfirmed_since(&history, arrived, attempt).map(|unconfirmed| {
                (
                    unconfirmed.since.as_millis(),
                    unconfirmed.latest.map(Timestamp::as_millis),
                )
            });
            assert_eq!(unconfirmed, expected, "{history:?}");
        }

        // How far a lookup read, as the newest error that says since when
        // says it, carried through the attempts after it.
        let point = ReadPoint {
            time: at(7_000),
            sequence: 41,
            stream_made: 1_700_000_000_123_456_789,
        };
        let read = format!(
            "{UNCONFIRMED}{}{READ_TO}{point}) nats://h: did not acknowledge",
            at(2_000)
        );
        // The text an earlier version wrote (a time alone): no point.
        let older_read = format!(
            "{UNCONFIRMED}{}{READ_TO}{}) nats://h: did not acknowledge",
            at(2_000),
            at(7_000)
        );
        let unreadable_read = format!(
            "{UNCONFIRMED}{}{READ_TO}{}, sequence many of the stream made 1) nats://h: no",
            at(2_000),
            at(7_000)
        );
        for (history, expected) in [
            (vec![failed(1, 3_000, &read)], Some(point)),
            (
                vec![
                    failed(1, 3_000, &read),
                    other(2, 8_000, InboxAttemptOutcome::LeaseExpired),
                ],
                Some(point),
            ),
            (
                vec![failed(1, 3_000, &read), failed(2, 4_000, &marked)],
                None,
            ),
            (vec![failed(1, 3_000, &marked)], None),
            (vec![failed(1, 3_000, &unreadable_read)], None),
            (vec![failed(1, 3_000, &older_read)], None),
        ] {
            let unconfirmed = unconfirmed_since(&history, arrived, 3).expect("unconfirmed");
            assert_eq!(unconfirmed.since, at(2_000), "{history:?}");
            assert_eq!(unconfirmed.read_to, expected, "{history:?}");
        }
    }

    #[test]
    fn a_forward_stopped_unfinished_is_a_failure_of_the_destination() {
        let relay = relay("http://app:s3cret@127.0.0.1:9/hook");
        drop(Unfinished {
            relay: &relay,
            attempt: 1,
            started: std::time::Instant::now(),
            stage: Stage::Publishing,
        });
        let (error, _) = relay.health.failing().expect("not failing");
        assert!(
            error.starts_with("http://app:***@127.0.0.1:9/…: no answer within"),
            "{error}"
        );
        assert!(!error.contains("s3cret"), "{error}");

        // Stopped while the inbox, not the destination, had its turn, or
        // after it ended: nothing against the destination.
        for stage in [Stage::Reading, Stage::Answered, Stage::Finished] {
            let relay = super::tests::relay("http://127.0.0.1:9/hook");
            drop(Unfinished {
                relay: &relay,
                attempt: 1,
                started: std::time::Instant::now(),
                stage,
            });
            assert!(relay.health.failing().is_none(), "{stage:?}");
        }
    }

    use clink_webhooks::store::{
        InboxClaim, InboxEntry, InboxFilter, InboxStats, Inserted, NewEvent, Replayed, Settle,
        StoreError,
    };

    /// A memory inbox that never answers some calls, as an inbox held by a
    /// long call (or a stalled disk) would not: its counts, with `counts`,
    /// and the recording of a receipt, with `receipts`, which is notified
    /// when that call comes.
    struct Stalling {
        inner: clink_webhooks::store::MemoryInbox,
        counts: bool,
        receipts: Option<Arc<tokio::sync::Notify>>,
    }

    impl Stalling {
        /// A memory inbox whose counts never come.
        fn counts() -> Self {
            Self {
                inner: clink_webhooks::store::MemoryInbox::new(),
                counts: true,
                receipts: None,
            }
        }

        /// A memory inbox that never records a receipt, notifying `asked`
        /// when asked to.
        fn receipts(asked: &Arc<tokio::sync::Notify>) -> Self {
            Self {
                inner: clink_webhooks::store::MemoryInbox::new(),
                counts: false,
                receipts: Some(Arc::clone(asked)),
            }
        }
    }

    impl Inbox for Stalling {
        fn insert<'a>(
            &'a self, event: &'a NewEvent,
        ) -> BoxFuture<'a, Result<Inserted, StoreError>> {
            self.inner.insert(event)
        }
        fn insert_dead<'a>(
            &'a self, event: &'a NewEvent, error: &'a str,
        ) -> BoxFuture<'a, Result<Inserted, StoreError>> {
            self.inner.insert_dead(event, error)
        }
        fn claim(
            &self, lease: Duration, reorder_window: Duration,
        ) -> BoxFuture<'_, Result<Option<InboxClaim>, StoreError>> {
            self.inner.claim(lease, reorder_window)
        }
        fn complete<'a>(
            &'a self, claim: &'a InboxClaim,
        ) -> BoxFuture<'a, Result<Settle, StoreError>> {
            self.inner.complete(claim)
        }
        fn fail<'a>(
            &'a self, claim: &'a InboxClaim, error: &'a str, retry_at: Option<Timestamp>,
        ) -> BoxFuture<'a, Result<Settle, StoreError>> {
            self.inner.fail(claim, error, retry_at)
        }
        fn release<'a>(
            &'a self, claim: &'a InboxClaim,
        ) -> BoxFuture<'a, Result<Settle, StoreError>> {
            self.inner.release(claim)
        }
        fn list<'a>(
            &'a self, filter: &'a InboxFilter, limit: usize,
        ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
            self.inner.list(filter, limit)
        }
        fn get(&self, seq: i64) -> BoxFuture<'_, Result<Option<InboxEntry>, StoreError>> {
            self.inner.get(seq)
        }
        fn replay(&self, seq: i64, force: bool) -> BoxFuture<'_, Result<Replayed, StoreError>> {
            self.inner.replay(seq, force)
        }
        fn replay_matching<'a>(
            &'a self, filter: &'a InboxFilter, force: bool,
        ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
            self.inner.replay_matching(filter, force)
        }
        fn purge(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
            self.inner.purge(before)
        }
        fn purge_dead(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
            self.inner.purge_dead(before)
        }
        fn stats(&self) -> BoxFuture<'_, Result<InboxStats, StoreError>> {
            if self.counts {
                Box::pin(std::future::pending())
            } else {
                self.inner.stats()
            }
        }
        fn check_writable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            self.inner.check_writable()
        }
        fn wait(&self, timeout: Duration) -> BoxFuture<'_, ()> {
            self.inner.wait(timeout)
        }
        fn record_receipt<'a>(
            &'a self, attempt: &'a clink_webhooks::events::InboxAttempt, receipt: &'a str,
        ) -> BoxFuture<'a, Result<Settle, StoreError>> {
            match &self.receipts {
                Some(asked) => {
                    asked.notify_one();
                    Box::pin(std::future::pending())
                }
                None => self.inner.record_receipt(attempt, receipt),
            }
        }
    }

    /// `/health` waits for the inbox's counts no longer than the store
    /// timeout: an inbox whose counts never come gets an answer with the
    /// counts unknown (`events` null), not a probe that hangs. The clock is
    /// paused, so the store timeout ends before the guard does, however
    /// slow the machine.
    #[tokio::test(start_paused = true)]
    async fn health_answers_within_the_store_timeout_when_the_counts_never_come() {
        let store_timeout = Duration::from_secs(1);
        let inbox: Arc<dyn Inbox> = Arc::new(Stalling::counts());
        let gateway = gateway_over(
            clink_webhooks::Verifier::new("whsec_a").unwrap(),
            inbox,
            store_timeout,
        );
        let started = tokio::time::Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(30), gateway.health())
            .await
            .expect("/health did not answer while the inbox's counts never came");
        let waited = started.elapsed();
        assert!(
            waited >= store_timeout && waited < store_timeout * 2,
            "{waited:?}"
        );
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], "ok", "{body}");
        assert_eq!(body["inbox"]["status"], "ok", "{body}");
        assert!(body["events"].is_null(), "{body}");
    }

    /// A gateway to an HTTP destination over `inbox`, verifying with
    /// `verifier`.
    fn gateway_over(
        verifier: clink_webhooks::Verifier, inbox: Arc<dyn Inbox>, store_timeout: Duration,
    ) -> Gateway {
        let layer = ClinkLayer::new(verifier)
            .store_timeout(store_timeout)
            .unwrap();
        let intake = layer.intake(Arc::clone(&inbox));
        Gateway {
            routes: Routes::All,
            readiness: intake.readiness(),
            intake,
            path: Arc::from("/webhooks/clink"),
            per_account: false,
            inbox,
            store_timeout,
            destination: Arc::from("http://127.0.0.1:9/hook"),
            destination_kind: "http",
            health: Arc::new(Health::default()),
            accounts: None,
            metrics: None,
            #[cfg(feature = "console")]
            console: None,
        }
    }

    /// Every key expired is told in `/health` as the keys' failure, not
    /// the inbox's, and `/ready` fails with it.
    #[tokio::test]
    async fn health_names_the_keys_when_every_one_has_expired() {
        let expired = clink_webhooks::SigningKey::new("whsec_a")
            .unwrap()
            .expires_at(std::time::SystemTime::now() - Duration::from_secs(1));
        let inbox: Arc<dyn Inbox> = Arc::new(clink_webhooks::store::MemoryInbox::new());
        let gateway = gateway_over(
            clink_webhooks::Verifier::from_key(&expired),
            inbox,
            Duration::from_secs(5),
        );
        let response = gateway.health().await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], "failing", "{body}");
        assert_eq!(body["keys"]["status"], "failing", "{body}");
        assert!(
            body["keys"]["error"]
                .as_str()
                .is_some_and(|error| error.contains("no_active_key")),
            "{body}"
        );
        assert_eq!(body["inbox"]["status"], "not checked", "{body}");
    }

    /// With `accounts_file`, `/health` (and `/ready`, through the same
    /// check) fails naming the keys once every key of every account has
    /// expired, and not while one account has a key active.
    #[tokio::test]
    async fn health_names_the_keys_when_every_account_s_key_has_expired() {
        let expired = clink_webhooks::SigningKey::new("whsec_a")
            .unwrap()
            .expires_at(std::time::SystemTime::now() - Duration::from_secs(1));
        let inbox: Arc<dyn Inbox> = Arc::new(clink_webhooks::store::MemoryInbox::new());
        let mut gateway = gateway_over(
            clink_webhooks::Verifier::new("whsec_unused").unwrap(),
            inbox,
            Duration::from_secs(5),
        );
        let map = KeyMap::new();
        let known = Arc::new(Mutex::new(BTreeSet::new()));
        for account in ["acct_eu", "acct_us"] {
            map.insert(account, clink_webhooks::Verifier::from_key(&expired))
                .unwrap();
            known.lock().unwrap().insert(account.to_owned());
        }
        gateway.accounts = Some((map.clone(), Arc::clone(&known)));
        let health = async |gateway: &Gateway| {
            let response = gateway.health().await;
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (status, body)
        };

        let (status, body) = health(&gateway).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["keys"]["status"], "failing", "{body}");
        assert!(
            body["keys"]["error"]
                .as_str()
                .is_some_and(|error| error.contains("no_active_key")),
            "{body}"
        );
        assert!(gateway.accounts_without_keys().is_some());

        map.insert("acct_us", clink_webhooks::Verifier::new("whsec_b").unwrap())
            .unwrap();
        let (status, body) = health(&gateway).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["keys"]["status"], "ok", "{body}");
        assert!(gateway.accounts_without_keys().is_none());
    }

    /// A forward stopped (as the workers stop one at the end of its time
    /// inside the lease) after the destination acknowledged its publish,
    /// while the inbox was recording the receipt, leaves the destination
    /// healthy in `/health`: the receipt is the inbox's part. Here the
    /// inbox never records it, and the forward is dropped once it asked;
    /// the destination is the redis-server of `scripts/with-services`,
    /// which holds the event.
    #[tokio::test]
    async fn a_forward_stopped_recording_its_receipt_leaves_the_destination_healthy() {
        let (config, url, stream) = super::destination::redis_test_config("receipt");
        let asked = Arc::new(tokio::sync::Notify::new());
        let inbox: Arc<dyn Inbox> = Arc::new(Stalling::receipts(&asked));
        let relay = Relay {
            inbox: Arc::clone(&inbox),
            destination: Destination::new(&config, Signers::Verifying(AccountKeys::default()))
                .unwrap(),
            health: Arc::new(Health::default()),
            max_attempts: 3,
            stopping: Arc::default(),
        };
        let now = Timestamp::now();
        let event = NewEvent::new(
            None,
            "evt_receipt".to_owned(),
            "order.succeeded".to_owned(),
            None,
            None,
            now,
            now,
            Bytes::from(
                json!({
                    "id": "evt_receipt",
                    "object": "event",
                    "created": now.as_millis(),
                    "type": "order.succeeded",
                    "data": { "orderId": "ord_receipt" },
                })
                .to_string(),
            ),
        );
        inbox.insert(&event).await.unwrap();
        // The event as the workers hand it to their handler, with its
        // attempt; the handler itself waits for ever.
        let (taken, mut handed) = tokio::sync::mpsc::unbounded_channel();
        let router = EventRouter::new().on_unhandled(move |raw| {
            let taken = taken.clone();
            async move {
                let _ = taken.send(raw);
                std::future::pending::<Result<(), BoxError>>().await
            }
        });
        let pool = Workers::new(Arc::clone(&inbox), router)
            .reorder_window(Duration::ZERO)
            .unwrap()
            .spawn();
        let raw = tokio::time::timeout(Duration::from_secs(60), handed.recv())
            .await
            .expect("the workers took the event")
            .unwrap();

        let mut forward = Box::pin(relay.forward(raw));
        let reached = async {
            tokio::select! {
                result = &mut forward => {
                    panic!("the forward ended ({result:?}) though no receipt was recorded")
                }
                () = asked.notified() => {}
            }
        };
        tokio::time::timeout(Duration::from_secs(60), reached)
            .await
            .expect("the forward asked the inbox to record the receipt");
        // Stopped there, as at the end of its time inside the lease.
        drop(forward);
        assert_eq!(relay.health.failing(), None);

        let entries = destination::stream_entries_then_delete(&url, &stream, &event).await;
        assert_eq!(entries, 1, "the destination holds the event");
        drop(pool);
    }
}
