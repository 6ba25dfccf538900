//! `listen`: the crate's own receiving pipeline on a loopback port, printing
//! one line per delivery.

use std::convert::Infallible;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use clink_webhooks::data::Resource;
use clink_webhooks::events::Freshness;
use clink_webhooks::router::EveryHandler;
use clink_webhooks::server::Server;
use clink_webhooks::BoxFuture;
use clink_webhooks::{
    ClinkLayer, ClinkService, Event, EventRouter, Layer, MemoryStore, Outcome, RawEvent,
    VerifiedEvent,
};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;
use tower_service::Service;

use crate::lines::{Lines, Stream};
use crate::output::{escaped, json_text, Output, Tone};

/// How long a connection may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

use crate::{CliError, ErrorCode, KeyArgs};

pub(crate) const AFTER_HELP: &str = "\
Deliveries go through the same ClinkLayer and EventRouter an app uses, with
the in-memory idempotency and freshness stores: signatures are verified,
duplicates acknowledged without running a handler, and every event of a type
the crate knows is decoded and checked for freshness against the others
about its object.

It listens on 127.0.0.1 only, prints `listening on http://127.0.0.1:PORT/PATH`
first (--port 0 picks a free port and prints it), then one line per delivery:
status, outcome, type, id, object, freshness. A refusal before the signature
checked out is marked unverified, and one refused after it (a signed body
that is no event) is marked not an event: nothing from either body is printed.
Deliveries never wait on stdout: when nobody reads it, up to 1 MiB of lines
wait, and lines past that are dropped (said on stderr, and counted at the end).

Ctrl-C or SIGTERM stops it gracefully (exit 0): it says `stopping` on stderr and
waits at most 10 s for the deliveries in progress. Half a second later it says
`Ctrl-C again to stop at once`: a second one sent after that stops it at once
(exit 130, error `interrupted`); one sent with the first (a supervisor passing
a SIGTERM on) is the same stop.";

/// How long open connections get to finish after Ctrl-C or SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long the lines still queued for stdout get to be written once the
/// deliveries are done.
const LINES_GRACE: Duration = Duration::from_secs(2);

/// How long the notes still queued for stderr get to be written before
/// the command ends.
const NOTES_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
pub(crate) struct ListenArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// The port on 127.0.0.1 (0 picks a free one).
    #[arg(long, value_name = "P", default_value_t = 3000)]
    port: u16,
    /// The path deliveries are POSTed to; other paths get 404.
    #[arg(long, value_name = "PATH", default_value = "/webhooks/clink")]
    path: String,
}

/// Typed handlers for every event type the crate knows, so the router
/// tracks their freshness; names added later go to the fallback.
fn router() -> EventRouter {
    EventRouter::new()
        .ordering(MemoryStore::new())
        .on_every_type(Acknowledge)
        .on_unhandled(|_event| std::future::ready(Ok::<_, Infallible>(())))
}

/// The handler of every typed event: does nothing; the router's response
/// says what freshness it was given.
struct Acknowledge;

impl EveryHandler for Acknowledge {
    type Error = Infallible;

    fn handle<T: Resource + Send + 'static>(
        &self, _event: Event<T>,
    ) -> BoxFuture<'static, Result<(), Infallible>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

type Pipeline = ClinkService<EventRouter>;
type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// The listening service: deliveries on `path` through the pipeline, 404 elsewhere.
#[derive(Clone)]
struct Listen {
    out: Output,
    lines: Lines,
    path: Arc<str>,
    pipeline: Pipeline,
}

impl Service<Request<Incoming>> for Listen {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self, _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        Box::pin(serve(
            self.out,
            self.lines.clone(),
            Arc::clone(&self.path),
            self.pipeline.clone(),
            request,
        ))
    }
}

/// Serves one delivery through the pipeline and prints what happened to it.
async fn serve(
    out: Output, lines: Lines, path: Arc<str>, mut pipeline: Pipeline, request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    if request.uri().path() != &*path {
        let message = format!("deliveries go to {path}");
        // The path is the sender's: printed escaped, in JSON too.
        lines.print(if out.json {
            json_text(
                &json!({"status": 404, "outcome": "not_found",
                        "method": request.method().as_str(),
                        "path": request.uri().path()}),
                false,
            )
        } else {
            format!(
                "{} not_found  {} {}",
                out.paint(Tone::Bad, "404"),
                escaped(request.method().as_str()),
                escaped(request.uri().path())
            )
        });
        let body = json!({"error": "not_found", "message": message}).to_string();
        let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(response);
    }
    poll_fn(|cx| Service::<Request<Incoming>>::poll_ready(&mut pipeline, cx)).await?;
    let response = pipeline.call(request).await?;
    lines.print(delivery_line(&out, &response));
    Ok(response.map(BodyExt::boxed_unsync))
}

fn freshness_text(freshness: Option<&Freshness>) -> Option<String> {
    Some(match freshness? {
        Freshness::Fresh => "fresh".to_owned(),
        Freshness::Stale { newest_seen } => format!("stale (newer: {newest_seen})"),
        _ => "untracked".to_owned(),
    })
}

/// The line for a delivery, from what the layer put in the response: its
/// outcome, the verified event, and the freshness the router found.
fn delivery_line<B>(out: &Output, response: &Response<B>) -> String {
    let status = response.status().as_u16();
    let outcome = Outcome::of(response);
    let code = outcome.map_or("unknown", Outcome::as_str);
    let event = response
        .extensions()
        .get::<VerifiedEvent>()
        .map(VerifiedEvent::event);
    let object = event.and_then(RawEvent::object_key);
    // The router puts no freshness in the response of a typed event it
    // does not track (one about no object, or without `created`).
    let typed = event.is_some_and(|e| e.event_type().is_known())
        && matches!(
            outcome,
            Some(
                Outcome::Handled
                    | Outcome::HandlerFailed
                    | Outcome::HandlerTimeout
                    | Outcome::HandlerPanicked
                    | Outcome::HandlerRefused(_)
            )
        );
    let freshness = freshness_text(response.extensions().get::<Freshness>())
        .or_else(|| typed.then(|| "untracked".to_owned()));
    if out.json {
        return json_text(
            &json!({
                "status": status,
                "outcome": code,
                "verified": event.is_some() || outcome.is_some_and(Outcome::is_verified),
                "event_type": event.map(|e| e.event_type().as_str()),
                "event_id": event.map(RawEvent::id),
                "object": object.as_ref().map(ToString::to_string),
                "freshness": freshness,
            }),
            false,
        );
    }
    let tone = if outcome == Some(&Outcome::Duplicate)
        || freshness.as_deref().is_some_and(|f| f.starts_with("stale"))
    {
        Tone::Note
    } else {
        Output::status_tone(status)
    };
    let mut line = out.paint(tone, &format!("{status} {code}"));
    // Values from the body are data: printed escaped, never raw.
    match event {
        Some(event) => line.push_str(&format!(
            "  {} {}",
            escaped(event.event_type().as_str()),
            escaped(event.id())
        )),
        // Signed with the key, but refused after the signature (a body
        // that is no event, an id no store can take): nothing from it.
        None if outcome.is_some_and(Outcome::is_verified) => line.push_str("  (not an event)"),
        None => line.push_str("  (unverified)"),
    }
    if let Some(object) = object {
        line.push_str(&format!("  {}", escaped(&object.to_string())));
    }
    if let Some(freshness) = freshness {
        line.push_str(&format!("  {}", escaped(&freshness)));
    }
    line
}

/// Ctrl-C and SIGTERM, listened for from the moment it is made, so that a
/// signal sent as soon as the address is printed is not missed.
struct Shutdown {
    #[cfg(unix)]
    signals: [tokio::signal::unix::Signal; 2],
}

impl Shutdown {
    fn new() -> Result<Self, CliError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind| {
                signal(kind).map_err(|e| CliError::io("cannot listen for Ctrl-C and SIGTERM", &e))
            };
            Ok(Self {
                signals: [
                    listen(SignalKind::interrupt())?,
                    listen(SignalKind::terminate())?,
                ],
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn requested(&mut self) {
        #[cfg(unix)]
        {
            let [interrupt, terminate] = &mut self.signals;
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            // Never a stop nobody asked for.
            std::future::pending::<()>().await;
        }
    }
}

/// A note for stderr: with --json a JSON object (`{"note": ...}`), as
/// every line there then is.
pub(crate) fn note_line(json: bool, text: &str) -> String {
    if json {
        json!({ "note": text }).to_string()
    } else {
        text.to_owned()
    }
}

/// Signals within this long of the first are the same stop, not a second.
const SAME_STOP_WITHIN: Duration = Duration::from_millis(500);

pub(crate) async fn run(out: &Output, args: &ListenArgs) -> Result<(), CliError> {
    if !args.path.starts_with('/') {
        return Err(CliError::usage(format!(
            "--path {}: a path starts with /",
            args.path
        )));
    }
    let verifier = args.key.verifier()?;
    let pipeline: Pipeline = ClinkLayer::new(verifier).layer(router());

    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| CliError::io(&format!("cannot listen on 127.0.0.1:{}", args.port), &e))?;
    let address = listener
        .local_addr()
        .map_err(|e| CliError::io("cannot read the listening address", &e))?;
    let mut shutdown = Shutdown::new()?;
    let url = format!("http://{address}{}", args.path);
    if out.json {
        out.json_line(&json!({ "listening": url }));
    } else {
        out.line(&format!("listening on {url}"));
    }

    // Notes on stderr, with --json as JSON objects too (`{"note": ...}`),
    // as every line there then is; both streams written by threads of
    // their own, so that neither, unread, holds up a delivery or a stop.
    let json = out.json;
    let notes = Lines::start(Stream::Stderr);
    let lines = Lines::start(Stream::Stdout).dropped_noted_in(&notes, json);
    let service = Listen {
        out: *out,
        lines: lines.clone(),
        path: Arc::from(args.path.as_str()),
        pipeline,
    };
    let server = Server::new()
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .and_then(|server| server.shutdown_timeout(SHUTDOWN_GRACE))
        .map_err(|e| CliError::usage(e.to_string()))?;
    // The first signal begins the graceful stop; a second, for whoever
    // will not wait for it, ends the command at once.
    let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
    let note = {
        let notes = notes.clone();
        move |text: &str| notes.print(note_line(json, text))
    };
    let at_once = async move {
        shutdown.requested().await;
        let _ = stop.send(());
        note("stopping");
        // Signals sent with the first (a Ctrl-C to the process group, and
        // a SIGTERM a supervisor passes on) are the same stop: a second
        // one is one sent after the line that says it can be.
        let window = tokio::time::sleep(SAME_STOP_WITHIN);
        tokio::pin!(window);
        loop {
            tokio::select! {
                () = &mut window => break,
                () = shutdown.requested() => {}
            }
        }
        note("Ctrl-C again to stop at once");
        shutdown.requested().await;
    };
    let serving = async {
        server
            .serve(listener, service, async move {
                let _ = stopping.await;
            })
            .await;
        // The lines still queued, written if stdout takes them (a second
        // signal meanwhile still stops it at once).
        tokio::task::spawn_blocking(move || lines.finish(LINES_GRACE))
            .await
            .unwrap_or_default()
    };
    // A graceful stop that ends as a second signal comes is still one.
    let stopped = tokio::select! {
        biased;
        unwritten = serving => {
            if unwritten > 0 {
                notes.print(note_line(json, &format!(
                    "{unwritten} lines were not printed: stdout did not take them in time"
                )));
            }
            notes.print(note_line(json, "stopped"));
            Ok(())
        }
        () = at_once => {
            // Said through the notes' queue, after them, and never again:
            // a stderr nobody reads (its pipe full) must not hold up the
            // stop at once that was asked for.
            let error = CliError::new(
                ErrorCode::Interrupted,
                "stopped at once by a second Ctrl-C or SIGTERM: the deliveries in progress got no answer",
            );
            notes.print(out.error_text(error.code.as_str(), &error.message));
            Err(error.printed())
        }
    };
    // The notes written before the error that may follow them, if stderr
    // takes them.
    let notes_left = notes.clone();
    let _ = tokio::task::spawn_blocking(move || notes_left.finish(NOTES_GRACE)).await;
    stopped
}
