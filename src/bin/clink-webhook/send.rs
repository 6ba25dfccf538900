//! `send`: sign events and POST them to a receiver over HTTP/1.1.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use clink_webhooks::events::EnvelopeError;
use clink_webhooks::testing::{fixture, Shape, SignedRequest, TimestampUnit};
use clink_webhooks::{EventType, RawEvent, Timestamp};
use http::Uri;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{HumanFloatCount, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::output::{escaped, Output, Tone};
use crate::{error_chain, event_type, read_body, CliError, ErrorCode, KeyArgs};

pub(crate) const AFTER_HELP: &str = "\
Only plain http:// is supported: TLS is not built in. To reach an HTTPS
endpoint, run a local receiver, or send through a TLS-terminating proxy or
tunnel that listens on http://.

Each delivery is signed when it is sent, so --repeat N sends the same event
(same id) N times, each signed again (whether Clink's retries carry a new
timestamp is not in its docs); --unique gives every delivery its own event id
instead, for load (the body is then written anew as compact JSON); --quiet
prints only the summary.

When the receiver answers 401, a hint about the signing key (or the clock)
follows the summary, once, on stderr; with --json it is the `hint` field of
the summary's line.

Values from the receiver's answers are printed escaped when they hold
control characters or quotes.

Exit code: 0 when every delivery got a 2xx (with --tamper: a 401 for its
signature), 1 when any got another status, 2 when any could not be
delivered at all (connection refused, timeout).";

/// How long one delivery may take, from connecting to the answer's status.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the answer's body, read for its detail, may take after its
/// status: one that stalls adds no detail, and the status stands.
const DETAIL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer's body read, to find its error code.
const ANSWER_LIMIT: usize = 64 * 1024;
/// From how many deliveries on a progress bar is shown (on a terminal).
const PROGRESS_FROM: u64 = 50;
/// How many deliveries' results may wait to be counted and printed: the
/// senders wait beyond that.
const RESULTS_QUEUED: usize = 1024;

/// The hint after a 401 for the signature: the usual cause is two keys.
const SIGNATURE_HINT: &str = "the receiver refused the signature (401): its signing key \
     must be the same secret this command signs with; pass that secret in \
     CLINK_WEBHOOK_SIGNING_KEY or with --secret env:NAME (--secret SECRET leaves it in your \
     shell's history)";
/// The hint after a 401 for the timestamp.
const TIMESTAMP_HINT: &str = "the receiver refused the timestamp (401): its clock and this \
     machine's differ by more than its tolerance; check both clocks";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Unit {
    /// Epoch seconds.
    S,
    /// Epoch milliseconds, as Clink's own tools send.
    Ms,
}

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// The event type, e.g. order.succeeded; its fixture is sent unless
    /// --body-file is given (all 44: `clink-webhook fixture --list`).
    #[arg(
        value_name = "TYPE",
        value_parser = event_type(),
        hide_possible_values = true,
        required_unless_present = "body_file"
    )]
    event_type: Option<EventType>,
    /// The receiver's URL, e.g. http://127.0.0.1:3000/webhooks/clink.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Send this body instead of the type's fixture, byte for byte (`-`
    /// reads stdin); at most 1 MiB.
    #[arg(long, value_name = "FILE")]
    body_file: Option<PathBuf>,
    /// How many deliveries to send.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,
    /// How many deliveries may be in flight at once.
    #[arg(long, value_name = "C", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// The unit of X-Clink-Timestamp.
    #[arg(long, value_name = "UNIT", value_enum, default_value_t = Unit::Ms)]
    timestamp_unit: Unit,
    /// Move the timestamp by this many seconds, as a sender with a skewed
    /// clock would: negative is behind, positive ahead (e.g. --skew -600).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    skew: i64,
    /// Change one byte of the body after signing: the receiver must refuse
    /// it with 401 for its signature (exit 0 when every delivery got that
    /// 401, 1 when any got another answer or a 401 for its timestamp, 2
    /// when any got none). A receiver with another key refuses it alike:
    /// check first that the same delivery untampered gets 2xx.
    #[arg(long)]
    tamper: bool,
    /// Give every delivery its own event id (the body is then written anew
    /// as compact JSON, keys sorted: not byte for byte).
    #[arg(long)]
    unique: bool,
    /// Set the event's `created` time: RFC 3339 (2025-01-15T11:00:00Z) or
    /// epoch milliseconds. An event created before one already handled about
    /// the same object is stale. The body is then written anew as compact
    /// JSON, keys sorted.
    #[arg(long, value_name = "TIME", value_parser = crate::time_arg)]
    created: Option<Timestamp>,
    /// Write `created` as an integer of epoch milliseconds, as Clink's newer
    /// payloads do, rather than an RFC 3339 string (the body is then
    /// written anew, keys sorted).
    #[arg(long)]
    created_ms: bool,
    /// Wrap `data` as `data.object`, as some of Clink's payloads come (the
    /// body is then written anew, keys sorted).
    #[arg(long)]
    wrap_data: bool,
    /// Print only the summary: no line per delivery, no progress bar (for a
    /// large --repeat).
    #[arg(long, short)]
    quiet: bool,
}

/// The target URL, which must be plain `http://` with a host.
fn target(url: &str) -> Result<Uri, CliError> {
    // The URL is not repeated: it may carry `user:password@`.
    let not_http = || {
        CliError::new(
            ErrorCode::BadUrl,
            "--to: expected an http:// URL with a host, such as http://127.0.0.1:3000/webhooks/clink",
        )
    };
    let uri: Uri = url.parse().map_err(|_| not_http())?;
    // Clink sends none, and nothing here would: a receiver or a proxy in
    // front asking for one would answer 401, read as a wrong signing key.
    if uri
        .authority()
        .is_some_and(|authority| authority.as_str().contains('@'))
    {
        return Err(CliError::new(
            ErrorCode::BadUrl,
            "--to: the URL's user info (what comes before an @ in its host) would not be \
             sent, as Clink sends none; send to an address that needs none",
        ));
    }
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => {
            check_port(&uri)?;
            Ok(uri)
        }
        Some("https") => Err(CliError::new(
            ErrorCode::BadUrl,
            "--to: https is not supported, TLS is not built in; send to the plain \
             http:// address of a local receiver, or through a TLS-terminating proxy or tunnel",
        )),
        _ => Err(not_http()),
    }
}

/// Checks the port of `uri`, if it names one: http's parser takes any text
/// after the host's colon, and a port the connector cannot read (`:99999`,
/// `:3000x`) would send to port 80 instead.
fn check_port(uri: &Uri) -> Result<(), CliError> {
    let authority = uri.authority().map_or("", |a| a.as_str());
    // After any `user:password@`, and after an IPv6 address's brackets.
    let host_and_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, rest)| rest);
    let after_host = match host_and_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => host_and_port
            .find(':')
            .map_or("", |colon| &host_and_port[colon..]),
    };
    if after_host.is_empty() {
        return Ok(());
    }
    let valid = after_host.strip_prefix(':').is_some_and(|port| {
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|port| port != 0)
    });
    if valid {
        Ok(())
    } else {
        // The URL is not repeated: it may carry `user:password@`.
        Err(CliError::new(
            ErrorCode::BadUrl,
            "--to: the port must be a number from 1 to 65535, such as \
             http://127.0.0.1:3000/webhooks/clink",
        ))
    }
}

/// The body to send, and how each delivery's copy of it differs.
struct Bodies {
    base: Bytes,
    /// The envelope, when the body must be edited per delivery.
    envelope: Option<serde_json::Map<String, Value>>,
    unique: bool,
    run: String,
}

impl Bodies {
    fn new(args: &SendArgs) -> Result<Self, CliError> {
        let base = match &args.body_file {
            Some(path) => Bytes::from(read_body(path)?),
            None => match &args.event_type {
                Some(event_type) => Bytes::from(fixture(event_type)),
                None => return Err(CliError::usage("name an event type or give --body-file")),
            },
        };
        if let Some(event_type) = &args.event_type {
            // A type too long to be an event's is read from the JSON.
            let body_type = match RawEvent::from_slice(&base) {
                Ok(event) => Some(event.event_type().as_str().to_owned()),
                Err(EnvelopeError::InvalidType) => serde_json::from_slice::<Value>(&base)
                    .ok()
                    .and_then(|body| body.get("type")?.as_str().map(str::to_owned)),
                Err(_) => None,
            };
            if let Some(body_type) = body_type.filter(|t| t != event_type.as_str()) {
                // The type is the body's: data, printed escaped.
                return Err(CliError::usage(format!(
                    "the body's type is {}, not {event_type}; leave TYPE out to send the body as it is",
                    escaped(&body_type)
                )));
            }
        }
        // With --created, the time it gives is written in milliseconds
        // below; without it, the body's own.
        let created_ms = args.created_ms && args.created.is_none();
        let base = if created_ms || args.wrap_data {
            let object = serde_json::from_slice::<serde_json::Map<String, Value>>(&base)
                .ok()
                .and_then(|_| std::str::from_utf8(&base).ok())
                .ok_or_else(|| {
                    CliError::usage(
                        "--created-ms and --wrap-data need a body that is a JSON object",
                    )
                })?;
            let mut shape = Shape::new();
            if created_ms {
                if !RawEvent::from_slice(&base).is_ok_and(|event| event.created().is_some()) {
                    return Err(CliError::usage(
                        "--created-ms needs a body whose `created` is a time, or --created",
                    ));
                }
                shape = shape.created_in_millis();
            }
            if args.wrap_data {
                shape = shape.data_wrapped();
            }
            Bytes::from(shape.apply(object))
        } else {
            base
        };
        let envelope = if args.unique || args.created.is_some() {
            let mut envelope: serde_json::Map<String, Value> = serde_json::from_slice(&base)
                .map_err(|_| {
                    CliError::usage("--unique and --created need a body that is a JSON object")
                })?;
            if let Some(created) = args.created {
                let created = if args.created_ms {
                    Value::from(created.as_millis())
                } else {
                    Value::from(created.to_string())
                };
                envelope.insert("created".into(), created);
            }
            Some(envelope)
        } else {
            None
        };
        // The time, and random bits: two runs started in the same
        // millisecond still give their deliveries ids of their own.
        let run = format!(
            "{:x}{}",
            Timestamp::now().as_millis().unsigned_abs(),
            &clink_webhooks::store::LeaseToken::generate().as_str()[..8]
        );
        Ok(Self {
            base,
            envelope,
            unique: args.unique,
            run,
        })
    }

    /// The body of delivery `n` (counted from 1).
    fn body(&self, n: u64) -> Bytes {
        let Some(envelope) = &self.envelope else {
            return self.base.clone();
        };
        let mut envelope = envelope.clone();
        if self.unique {
            let id = envelope.get("id").and_then(Value::as_str).unwrap_or("evt");
            let id = format!("{id}_{}_{n}", self.run);
            envelope.insert("id".into(), Value::from(id));
        }
        Bytes::from(Value::Object(envelope).to_string())
    }
}

/// What one delivery got.
struct Delivery {
    n: u64,
    event_id: String,
    latency: Duration,
    answer: Result<Answer, String>,
}

struct Answer {
    status: http::StatusCode,
    /// `duplicate`, or the refusal's `error` code, from the answer's body.
    detail: Option<String>,
}

/// A tenth of a millisecond, in nanoseconds: the precision the summary
/// prints latencies to.
const TICK_NANOS: u128 = 100_000;
/// Ticks counted per page of [`Latencies`]: one second's.
const TICKS_PER_PAGE: usize = 10_000;
/// Pages of [`Latencies`]: latencies under 61 s, past twice
/// [`DELIVERY_TIMEOUT`] (an answered delivery took less than it and
/// [`DETAIL_TIMEOUT`], unless the machine stalled), are counted apart; a
/// longer one counts as the longest.
const LATENCY_PAGES: usize = 61;

/// The latencies of the answered deliveries, counted by the tenth of a
/// millisecond each rounds to, which is the precision the summary prints:
/// its percentiles are those of every latency, in memory bounded whatever
/// `--repeat` is (a page of counts, 80 KiB, for each second of latency that
/// occurs; at most [`LATENCY_PAGES`]).
#[derive(Default)]
struct Latencies {
    pages: Vec<Option<Box<[u64]>>>,
    count: u64,
}

impl Latencies {
    fn add(&mut self, latency: Duration) {
        let last = LATENCY_PAGES * TICKS_PER_PAGE - 1;
        let tick = usize::try_from((latency.as_nanos() + TICK_NANOS / 2) / TICK_NANOS)
            .unwrap_or(last)
            .min(last);
        let (page, slot) = (tick / TICKS_PER_PAGE, tick % TICKS_PER_PAGE);
        if self.pages.len() <= page {
            self.pages.resize_with(page + 1, || None);
        }
        let counts =
            self.pages[page].get_or_insert_with(|| vec![0; TICKS_PER_PAGE].into_boxed_slice());
        counts[slot] = counts[slot].saturating_add(1);
        self.count = self.count.saturating_add(1);
    }

    /// The latency at `percent` (nearest rank), in milliseconds to the
    /// tenth; `None` when none was counted.
    fn percentile_ms(&self, percent: usize) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let percent = u128::try_from(percent).unwrap_or(u128::MAX);
        let rank = (u128::from(self.count) * percent)
            .div_ceil(100)
            .clamp(1, u128::from(self.count));
        let mut seen = 0u128;
        for (page, counts) in self.pages.iter().enumerate() {
            for (slot, &count) in counts.iter().flat_map(|counts| counts.iter()).enumerate() {
                seen += u128::from(count);
                if seen >= rank {
                    let tick = u32::try_from(page * TICKS_PER_PAGE + slot).unwrap_or(u32::MAX);
                    return Some(f64::from(tick) / 10.0);
                }
            }
        }
        None
    }
}

#[derive(Default)]
struct Summary {
    sent: u64,
    ok: u64,
    conflict: u64,
    client_error: u64,
    server_error: u64,
    other: u64,
    failed: u64,
    latencies: Latencies,
    /// Some delivery got 401 for its timestamp.
    timestamp_refused: bool,
    /// Some delivery got 401 for anything else: its signature, most likely.
    signature_refused: bool,
    /// How many deliveries got 401.
    unauthorized: u64,
    /// How many of those were for the timestamp, refused before the
    /// receiver checked the body.
    unauthorized_for_timestamp: u64,
}

impl Summary {
    fn add(&mut self, delivery: &Delivery) {
        self.sent += 1;
        match &delivery.answer {
            Ok(answer) => {
                self.latencies.add(delivery.latency);
                if answer.status == http::StatusCode::UNAUTHORIZED {
                    self.unauthorized += 1;
                    match answer.detail.as_deref() {
                        Some("timestamp_too_old" | "timestamp_in_future") => {
                            self.timestamp_refused = true;
                            self.unauthorized_for_timestamp += 1;
                        }
                        _ => self.signature_refused = true,
                    }
                }
                match answer.status.as_u16() {
                    200..=299 => self.ok += 1,
                    409 => self.conflict += 1,
                    400..=499 => self.client_error += 1,
                    500..=599 => self.server_error += 1,
                    _ => self.other += 1,
                }
            }
            Err(_) => self.failed += 1,
        }
    }

    /// The latency at `percent` (nearest rank), in milliseconds to the
    /// tenth printed; `None` when nothing was answered.
    fn percentile_ms(&self, percent: usize) -> Option<f64> {
        self.latencies.percentile_ms(percent)
    }

    /// What to check after a 401, unless the 401 is what `--tamper` or
    /// `--skew` asked for.
    fn hint(&self, args: &SendArgs) -> Option<&'static str> {
        if self.signature_refused && !args.tamper {
            Some(SIGNATURE_HINT)
        } else if self.timestamp_refused && args.skew == 0 {
            Some(TIMESTAMP_HINT)
        } else {
            None
        }
    }

    /// Why the run failed, if it did: any delivery without an answer
    /// (exit 2), else any answer other than 2xx (exit 1); with `--tamper`,
    /// any answer other than the `401` a tampered delivery must get.
    fn failure(&self, tamper: bool) -> Option<CliError> {
        if self.failed > 0 {
            Some(CliError::reported(
                ErrorCode::Unreachable,
                format!(
                    "{} of {} deliveries got no answer (connection refused, timeout)",
                    self.failed, self.sent
                ),
            ))
        } else if tamper {
            // A 401 for the timestamp came before the body was checked: it
            // shows nothing of the check of a tampered body.
            let for_signature = self.unauthorized - self.unauthorized_for_timestamp;
            (for_signature < self.sent).then(|| {
                let message = if self.unauthorized_for_timestamp > 0 {
                    format!(
                        "{} of {} tampered deliveries got 401 for their timestamp, refused \
                         before the receiver checked the body, and {} a status other than \
                         401 ({} of them 2xx): send with the receiver's clock and no --skew \
                         to see it refuse a body changed after signing",
                        self.unauthorized_for_timestamp,
                        self.sent,
                        self.sent - self.unauthorized,
                        self.ok
                    )
                } else {
                    format!(
                        "{} of {} tampered deliveries got a status other than 401 ({} of \
                         them 2xx): the receiver must refuse a body changed after signing",
                        self.sent - self.unauthorized,
                        self.sent,
                        self.ok
                    )
                };
                // Said in text too: the lines above show statuses, not
                // that a tampered delivery must get a 401 for its body.
                CliError::new(ErrorCode::TamperAccepted, message)
            })
        } else if self.ok < self.sent {
            Some(CliError::reported(
                ErrorCode::Non2xx,
                format!(
                    "{} of {} deliveries got a status other than 2xx",
                    self.sent - self.ok,
                    self.sent
                ),
            ))
        } else {
            None
        }
    }
}

pub(crate) async fn run(out: &Output, args: &SendArgs) -> Result<(), CliError> {
    let secret = Arc::new(args.key.signing_secret()?);
    let uri = target(&args.to)?;
    let bodies = Arc::new(Bodies::new(args)?);
    let unit = match args.timestamp_unit {
        Unit::S => TimestampUnit::Seconds,
        Unit::Ms => TimestampUnit::Millis,
    };
    let (skew, tamper) = (args.skew, args.tamper);
    let prepare = Arc::new(move |secret: &Zeroizing<String>, body: Bytes| {
        let request = SignedRequest::new(secret.as_bytes(), body)
            .uri(uri.clone())
            .unit(unit)
            .skew_secs(skew);
        if tamper {
            request.tamper()
        } else {
            request
        }
    });

    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);

    let total = args.repeat;
    let next = Arc::new(AtomicU64::new(1));
    let (tx, mut rx) = mpsc::channel(RESULTS_QUEUED);
    for _ in 0..args.concurrency.min(total) {
        let (client, next, tx) = (client.clone(), Arc::clone(&next), tx.clone());
        let (secret, bodies, prepare) = (
            Arc::clone(&secret),
            Arc::clone(&bodies),
            Arc::clone(&prepare),
        );
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n > total {
                    break;
                }
                let body = bodies.body(n);
                let event_id = RawEvent::from_slice(&body)
                    .map(|e| e.id().to_owned())
                    .unwrap_or_else(|_| "(not an event)".to_owned());
                let request = prepare(&secret, body);
                let started = Instant::now();
                let answer = deliver(&client, &request).await;
                let delivery = Delivery {
                    n,
                    event_id,
                    latency: started.elapsed(),
                    answer,
                };
                if tx.send(delivery).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        progress_bar(total)
    };
    let mut summary = Summary::default();
    while let Some(delivery) = rx.recv().await {
        summary.add(&delivery);
        if !args.quiet {
            progress.suspend(|| print_delivery(out, total, &delivery));
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    let hint = summary.hint(args);
    print_summary(out, &summary, hint);
    if let (Some(hint), false) = (hint, out.json) {
        out.hint(hint);
    }
    summary.failure(args.tamper).map_or(Ok(()), Err)
}

async fn deliver(
    client: &Client<HttpConnector, Full<Bytes>>, request: &SignedRequest,
) -> Result<Answer, String> {
    let response = tokio::time::timeout(DELIVERY_TIMEOUT, client.request(request.build()))
        .await
        .map_err(|_| format!("no answer within {} s", DELIVERY_TIMEOUT.as_secs()))?
        .map_err(|e| error_chain(&e))?;
    let status = response.status();
    // The answer's body only adds detail; a body that cannot be read, or
    // does not come, does not, and the status stands.
    let body = tokio::time::timeout(
        DETAIL_TIMEOUT,
        Limited::new(response.into_body(), ANSWER_LIMIT).collect(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(http_body_util::Collected::to_bytes)
    .unwrap_or_default();
    Ok(Answer {
        status,
        detail: detail(&body),
    })
}

/// `duplicate` or the `error` code of a receiver's JSON answer.
fn detail(body: &[u8]) -> Option<String> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    if answer["outcome"] == "duplicate" {
        Some("duplicate".to_owned())
    } else {
        answer["error"].as_str().map(str::to_owned)
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    if total < PROGRESS_FROM || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} sent, {rate} ({eta})") {
        bar.set_style(style.with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&rate(state.per_sec()));
            },
        ));
    }
    bar
}

/// A rate per second, rounded: `2,056/s`, or to a tenth below 100/s (`42.5/s`).
fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "0/s".to_owned()
    } else if per_sec < 99.95 {
        format!("{:.1}/s", HumanFloatCount(per_sec))
    } else {
        format!("{:.0}/s", HumanFloatCount(per_sec))
    }
}

fn print_delivery(out: &Output, total: u64, delivery: &Delivery) {
    let Delivery {
        n,
        event_id,
        latency,
        answer,
    } = delivery;
    let latency_ms = latency.as_secs_f64() * 1000.0;
    match answer {
        Ok(answer) if out.json => out.json_line(&json!({
            "n": n,
            "event_id": event_id,
            "status": answer.status.as_u16(),
            "detail": answer.detail,
            "latency_ms": latency_ms,
        })),
        Err(error) if out.json => out.json_line(&json!({
            "n": n,
            "event_id": event_id,
            "error": error,
        })),
        Ok(answer) => {
            let status = answer.status;
            let mut text = format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
            if let Some(detail) = &answer.detail {
                // From the receiver: it must not colour the terminal or fake a line.
                text = format!("{text} ({})", escaped(detail));
            }
            let tone = match answer.detail.as_deref() {
                Some("duplicate") => Tone::Note,
                _ => Output::status_tone(status.as_u16()),
            };
            out.line(&format!(
                "{n}/{total}  {}  {}  {latency_ms:.1} ms",
                out.paint(tone, text.trim_end()),
                escaped(event_id)
            ));
        }
        Err(error) => out.line(&format!(
            "{n}/{total}  {}  {}",
            out.paint(Tone::Bad, &format!("not delivered: {error}")),
            escaped(event_id)
        )),
    }
}

fn print_summary(out: &Output, summary: &Summary, hint: Option<&str>) {
    let (p50, p99) = (summary.percentile_ms(50), summary.percentile_ms(99));
    if out.json {
        let mut line = json!({ "summary": {
            "sent": summary.sent,
            "2xx": summary.ok,
            "409": summary.conflict,
            "4xx": summary.client_error,
            "5xx": summary.server_error,
            "other": summary.other,
            "not_delivered": summary.failed,
            "p50_ms": p50,
            "p99_ms": p99,
        }});
        if let Some(hint) = hint {
            line["hint"] = Value::from(hint);
        }
        out.json_line(&line);
        return;
    }
    let mut text = format!(
        "sent {}: 2xx {}, 409 {}, 4xx {}, 5xx {}",
        summary.sent, summary.ok, summary.conflict, summary.client_error, summary.server_error
    );
    if summary.other > 0 {
        text.push_str(&format!(", other {}", summary.other));
    }
    if summary.failed > 0 {
        text.push_str(&format!(", not delivered {}", summary.failed));
    }
    if let (Some(p50), Some(p99)) = (p50, p99) {
        text.push_str(&format!("; latency p50 {p50:.1} ms, p99 {p99:.1} ms"));
    }
    out.line(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `send`'s arguments as the command line gives them.
    fn send_args(args: &[&str]) -> SendArgs {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            send: SendArgs,
        }
        let mut line = vec!["send", "--to", "http://127.0.0.1:1/webhooks/clink"];
        line.extend_from_slice(args);
        <Command as clap::Parser>::try_parse_from(line)
            .expect("arguments")
            .send
    }

    fn sent(args: &[&str]) -> Value {
        let bodies = Bodies::new(&send_args(args)).expect("bodies");
        serde_json::from_slice(&bodies.body(1)).expect("JSON")
    }

    #[test]
    fn the_other_shapes_are_the_bodies_sent() {
        let plain = sent(&["order.succeeded"]);
        assert!(plain["created"].is_string());
        assert!(plain["data"]["orderId"].is_string());
        let shaped = sent(&["order.succeeded", "--created-ms", "--wrap-data"]);
        assert_eq!(shaped["created"], Value::from(1_736_942_400_000_i64));
        assert_eq!(shaped["data"]["object"], plain["data"]);
        // The time --created gives, in milliseconds.
        let given = sent(&[
            "order.succeeded",
            "--created",
            "2025-01-15T13:00:00Z",
            "--created-ms",
            "--unique",
        ]);
        assert_eq!(given["created"], Value::from(1_736_946_000_000_i64));
        assert_ne!(given["id"], plain["id"]);
    }

    #[test]
    fn shapes_of_a_body_that_cannot_take_them_are_refused() {
        let dir = std::env::temp_dir().join(format!("clink-send-shapes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, body, flag, says) in [
            (
                "array.json",
                "[1]",
                "--wrap-data",
                "need a body that is a JSON object",
            ),
            (
                "no-created.json",
                r#"{"id":"evt_1","type":"order.succeeded","data":{}}"#,
                "--created-ms",
                "needs a body whose `created` is a time",
            ),
            (
                "bad-created.json",
                r#"{"id":"evt_1","type":"order.succeeded","created":"soon","data":{}}"#,
                "--created-ms",
                "needs a body whose `created` is a time",
            ),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, body).unwrap();
            let args = send_args(&["--body-file", path.to_str().unwrap(), flag]);
            let error = Bodies::new(&args).err().expect("refused");
            assert!(error.message.contains(says), "{name}: {error:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_plain_http_urls_with_a_host_are_targets() {
        assert!(target("http://127.0.0.1:3000/webhooks/clink").is_ok());
        let https = target("https://example.com/hook").unwrap_err().message;
        assert!(https.contains("TLS is not built in"), "{https}");
        for good in [
            "http://localhost/hook",
            "http://127.0.0.1:1/hook",
            "http://127.0.0.1:65535/hook",
            "http://[::1]:3000/hook",
            "http://[::1]/hook",
        ] {
            assert!(target(good).is_ok(), "{good}");
        }
        // A user and password would not be sent (Clink sends none either):
        // refused, and not repeated.
        let user = target("http://user:hunter2@127.0.0.1:3000/hook")
            .unwrap_err()
            .message;
        assert!(user.contains("user info"), "{user}");
        assert!(!user.contains("hunter2"), "{user}");
        for bad in [
            "127.0.0.1:3000/hook",
            "ftp://x/y",
            "http://",
            "not a url",
            "/hook",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
        // http's parser takes any port text, and a port it cannot read
        // would be sent to port 80.
        for bad_port in [
            "http://127.0.0.1:99999/hook",
            "http://127.0.0.1:65536/hook",
            "http://127.0.0.1:3000x/hook",
            "http://127.0.0.1:0/hook",
            "http://127.0.0.1:/hook",
            "http://127.0.0.1:-1/hook",
            "http://[::1]:70000/hook",
            "http://[::1]x/hook",
            "http://user:pass@127.0.0.1:3000x/hook",
        ] {
            let error = target(bad_port).expect_err(bad_port);
            assert_eq!(error.code, ErrorCode::BadUrl, "{bad_port}");
            assert!(!error.message.contains("pass"), "{}", error.message);
        }
    }

    /// A summary of deliveries answered in `latencies`, in that order.
    fn summary_of(latencies: &[Duration]) -> Summary {
        let mut summary = Summary::default();
        for (n, &latency) in latencies.iter().enumerate() {
            summary.add(&Delivery {
                n: n as u64 + 1,
                event_id: "evt_1".to_owned(),
                latency,
                answer: Ok(Answer {
                    status: http::StatusCode::OK,
                    detail: None,
                }),
            });
        }
        summary
    }

    /// With `--tamper`, a 401 for the signature is what is checked for; a
    /// 401 for the timestamp, given before the body was checked, shows
    /// nothing of that check and fails it. Before, any 401 passed.
    #[test]
    fn a_tampered_delivery_refused_for_its_timestamp_is_not_a_pass() {
        let answered = |details: &[&str]| {
            let mut summary = Summary::default();
            for (n, detail) in details.iter().enumerate() {
                summary.add(&Delivery {
                    n: n as u64 + 1,
                    event_id: "evt_1".to_owned(),
                    latency: Duration::from_millis(1),
                    answer: Ok(Answer {
                        status: http::StatusCode::UNAUTHORIZED,
                        detail: Some((*detail).to_owned()),
                    }),
                });
            }
            summary.failure(true)
        };
        assert!(answered(&["signature_mismatch", "signature_mismatch"]).is_none());
        for details in [
            &["timestamp_too_old", "signature_mismatch"][..],
            &["timestamp_in_future"],
        ] {
            let error = answered(details).expect("not a pass");
            assert_eq!(error.code, ErrorCode::TamperAccepted, "{details:?}");
            assert!(
                error.message.contains("for their timestamp"),
                "{}",
                error.message
            );
        }
    }

    /// The p50 and p99 the summary prints for `latencies`.
    fn printed(latencies: &[Duration]) -> (String, String) {
        let summary = summary_of(latencies);
        let at = |percent| format!("{:.1}", summary.percentile_ms(percent).unwrap());
        (at(50), at(99))
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let ms = Duration::from_millis;
        let latencies: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(printed(&latencies), ("50.0".to_owned(), "99.0".to_owned()));
        // The nearest rank, not an interpolation: of 1,000 deliveries the
        // 500th and the 990th fastest.
        let latencies: Vec<Duration> = (1..=1000)
            .map(|i| Duration::from_micros(i * 1_237 % 977_000))
            .collect();
        let mut sorted = latencies.clone();
        sorted.sort_unstable();
        let exact = |rank: usize| format!("{:.1}", sorted[rank - 1].as_secs_f64() * 1000.0);
        assert_eq!(printed(&latencies), (exact(500), exact(990)));
        // Printed to the tenth of a millisecond, each latency rounded to it.
        let latencies = [
            Duration::from_micros(12_340),
            Duration::from_micros(12_360),
            Duration::from_micros(12_449),
            Duration::from_nanos(12_450_001),
        ];
        assert_eq!(printed(&latencies), ("12.4".to_owned(), "12.5".to_owned()));
        // Fast, slow and in between, one delivery each: p50 the second.
        let latencies = [
            Duration::from_micros(80),
            Duration::from_millis(29_999),
            Duration::from_micros(1_999_960),
        ];
        assert_eq!(
            printed(&latencies),
            ("2000.0".to_owned(), "29999.0".to_owned())
        );
        // Past twice the delivery timeout (the machine stalled): counted as that.
        assert_eq!(printed(&[Duration::from_secs(3600)]).1, "60999.9");
        assert_eq!(Summary::default().percentile_ms(99), None);
        // Failed deliveries have no latency.
        let mut summary = summary_of(&[ms(5)]);
        summary.add(&Delivery {
            n: 2,
            event_id: "evt_1".to_owned(),
            latency: ms(30_000),
            answer: Err("no answer".to_owned()),
        });
        assert_eq!(summary.percentile_ms(99), Some(5.0));
    }

    /// However many deliveries are answered, the latencies take a page of
    /// counts per second of latency seen, and no more.
    #[test]
    fn latencies_take_bounded_memory() {
        let mut latencies = Latencies::default();
        for i in 0..1_000_000u64 {
            latencies.add(Duration::from_micros(i % 3_000 * 7));
        }
        latencies.add(Duration::from_secs(u64::MAX));
        assert_eq!(LATENCY_PAGES as u64, 2 * DELIVERY_TIMEOUT.as_secs() + 1);
        let held = latencies.pages.iter().filter(|page| page.is_some()).count();
        assert_eq!(held, 2);
        assert_eq!(latencies.pages.len(), LATENCY_PAGES);
        assert_eq!(latencies.count, 1_000_001);
    }

    #[test]
    fn rates_are_rounded() {
        assert_eq!(rate(2_055.876_3), "2,056/s");
        assert_eq!(rate(123_456.7), "123,457/s");
        assert_eq!(rate(100.4), "100/s");
        assert_eq!(rate(99.96), "100/s");
        assert_eq!(rate(42.54), "42.5/s");
        assert_eq!(rate(7.0), "7/s");
        assert_eq!(rate(0.04), "0/s");
        assert_eq!(rate(0.0), "0/s");
        assert_eq!(rate(f64::NAN), "0/s");
    }

    /// A time is RFC 3339 or epoch milliseconds; a number that would be
    /// before 2001 in milliseconds is taken for seconds and refused.
    #[test]
    fn created_times_read_both_forms() {
        let time = crate::time_arg;
        assert_eq!(
            time("2025-01-15T12:00:00Z").unwrap(),
            time("1736942400000").unwrap()
        );
        assert!(time("yesterday").is_err());
        let seconds = time("1736942400").unwrap_err();
        assert!(
            seconds.contains("epoch seconds") && seconds.contains("1736942400000"),
            "{seconds}"
        );
        assert!(time("-5").is_err());
        assert!(time("99999999999999999999").is_err());
        assert_eq!(
            time("1000000000000").unwrap(),
            Timestamp::from_millis(1_000_000_000_000)
        );
    }
}
