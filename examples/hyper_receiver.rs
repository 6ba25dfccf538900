//! A Clink webhook receiver on bare hyper 1.x, with no axum in the tree.
//!
//! ```text
//! CLINK_WEBHOOK_SIGNING_KEY=whsec_... cargo run --example hyper_receiver
//! ```
//!
//! Without `CLINK_WEBHOOK_SIGNING_KEY` it does not start: it says on stderr
//! how to set it and exits with status 1. To try it locally, any key works
//! as long as the sender signs with the same one
//! (`CLINK_WEBHOOK_SIGNING_KEY=whsec_clink_webhooks_development_only`).
//! While the endpoint's secret is rotated, give the secrets newest first,
//! separated by commas (`whsec_new,whsec_old`): deliveries signed with
//! either are accepted, and with `CLINK_WEBHOOK_OLD_KEYS_EXPIRE` (an RFC
//! 3339 time, the end of the rotation's grace) the older ones only until
//! then.
//!
//! Its idempotency store is the layer's default, in memory: one instance
//! only (it says so on stderr). Two instances behind a load balancer need a
//! shared store, or each can handle the same event; the `axum_receiver`
//! example shows one (`REDIS_URL`, `DATABASE_URL`), and the layer takes it
//! alike here.
//!
//! It listens on `$CLINK_BIND:$PORT` (default `127.0.0.1:3001`; set
//! `CLINK_BIND=0.0.0.0`, or `::`, to take deliveries from other hosts):
//! `POST /webhooks/clink` goes through the layer to an [`EventRouter`],
//! anything else is `404`. Health and metrics are for operators, so they are
//! served on a second address, `CLINK_ADMIN_ADDR` (default `127.0.0.1:3101`,
//! or a free port when `PORT=0`; it says which on stderr, `admin listening
//! on http://...`): `GET /health` answers `200` while the store answers
//! (`503` with the reason otherwise), `GET /metrics` serves the crate's
//! metrics in Prometheus' text format. Keep that address on a private
//! network. A setting it cannot use stops it before it listens, with
//! `error: ` and the variable's name on stderr, and exit status 1.
//!
//! It is served with `clink_webhooks::server::Server`: connections that send
//! no complete request headers within 10 s are closed, a failed `accept`
//! (out of file descriptors, say) is logged and retried instead of stopping
//! the server, and Ctrl-C or SIGTERM stops it gracefully: it says `stopping`
//! on stderr, waits at most 4 s for deliveries in progress (and at most 2 s
//! more for the claims of those it cut off to be settled with a shared
//! store: inside the 10 s Docker gives a container), then prints `stopped` and exits 0. Half a
//! second after the first it says `Ctrl-C again to stop at once`: a second
//! Ctrl-C or SIGTERM sent after that stops it at once, with status 130 (the
//! deliveries in progress get no answer, and Clink retries them); one sent
//! with the first is the same stop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clink_webhooks::layer::{Readiness, DURATION_BUCKETS};
use clink_webhooks::server::Server;
use clink_webhooks::{events, ClinkLayer, EventRouter, Verifier};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower::ServiceExt;

#[macro_use]
#[path = "support/lines.rs"]
mod lines;

/// A value from a delivery body, made safe to print: the crate's rule
/// (control, format and separator characters escaped, see
/// `clink_webhooks::events::printable`).
fn printable(text: &str) -> String {
    clink_webhooks::events::printable(text).into_owned()
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response
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
         cargo run --example hyper_receiver"
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The crate logs through `tracing`: without a subscriber, a failed
    // handler or a refused delivery prints nothing. Colour only on a terminal.
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

/// The value of `var`, or `default` when it is not set (or empty); a value
/// that is not `what` is an error naming the variable, with the value as
/// it is (escaped).
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

/// The webhook's address (`CLINK_BIND`, `PORT`) and the admin address of
/// health and metrics (`CLINK_ADMIN_ADDR`; port 3101 on loopback, or any
/// free port when `PORT=0` asks for one for the webhook, as tests do).
fn addresses() -> Result<(SocketAddr, SocketAddr), String> {
    let loopback = std::net::Ipv4Addr::LOCALHOST.into();
    let port = env_parsed("PORT", 3001, "a port number")?;
    let bind: std::net::IpAddr = env_parsed(
        "CLINK_BIND",
        loopback,
        "an IP address to listen on (127.0.0.1, 0.0.0.0, ::)",
    )?;
    let admin = env_parsed(
        "CLINK_ADMIN_ADDR",
        (loopback, if port == 0 { 0 } else { 3101 }).into(),
        "an address and port to listen on (127.0.0.1:3101, 0.0.0.0:9101)",
    )?;
    Ok(((bind, port).into(), admin))
}

/// A listener on `addr`, or an error that names the settings `from` which
/// the address came.
async fn listen(addr: SocketAddr, from: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({from}): {e}"))
}

/// Runs the receiver until it is stopped; the status to exit with.
async fn run() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    let verifier = verifier()?;
    let (addr, admin_addr) = addresses()?;
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
    let router = EventRouter::new()
        .on::<events::OrderSucceeded, _>(|event| async move {
            let order = event.data.order_id.as_deref().map(printable);
            // Not `println!`, which panics when stdout is closed (every
            // handler run would fail), and never waiting for stdout: see
            // `lines`.
            lines::out(format_args!(
                "handled {} {} order={order:?}",
                printable(event.event_type.as_str()),
                printable(&event.id)
            ));
            Ok::<_, std::io::Error>(())
        })
        .on_unhandled(|event| async move {
            lines::out(format_args!(
                "handled {} {}",
                printable(event.event_type().as_str()),
                printable(event.id())
            ));
            Ok::<_, std::io::Error>(())
        });
    // The layer's default idempotency store, in this process's memory.
    eprintln!(
        "idempotency store: in memory (one instance only; behind a load balancer, give \
         the layer a shared store, as the axum_receiver example does with REDIS_URL or \
         DATABASE_URL)"
    );
    let layer = ClinkLayer::new(verifier);
    let readiness = layer.readiness();
    let webhook = layer.route(router);

    let listener = listen(addr, "PORT, CLINK_BIND").await?;
    let admin_listener = listen(admin_addr, "CLINK_ADMIN_ADDR").await?;
    let webhook_server = Server::new().shutdown_timeout(STOP_WITHIN)?;
    // Few connections on the admin address (probes, a scraper, an
    // operator's browser): the process's file limit is left to the webhook.
    let admin_server = Server::new()
        .shutdown_timeout(STOP_WITHIN)?
        .max_connections(64)?;
    // Listen for signals before saying where we listen, so that a signal sent
    // as soon as the address is known is not missed. One signal stops both
    // servers; a second stops the process at once.
    let (graceful, at_once) =
        stop_signals().map_err(|e| format!("cannot listen for Ctrl-C and SIGTERM: {e}"))?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        graceful.await;
        let _ = stop.send(true);
    });
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
        "admin listening on http://{} (GET /health, GET /metrics)",
        admin_listener.local_addr()?
    );
    let app = tower::service_fn(move |request| route(request, webhook.clone()));
    let admin_app =
        tower::service_fn(move |request| admin(request, readiness.clone(), prometheus.clone()));
    // Slow and idle clients are cut off, accept errors never stop it, and a
    // stop waits at most STOP_WITHIN for deliveries in progress.
    let stopped = async {
        tokio::join!(
            webhook_server.serve(listener, app, shutdown()),
            admin_server.serve(admin_listener, admin_app, shutdown()),
        );
    };
    // A graceful stop that ends as a second signal comes is still one.
    tokio::select! {
        biased;
        () = stopped => {
            eprintln!("stopped");
            Ok(std::process::ExitCode::SUCCESS)
        }
        // The deliveries in progress get no answer, and Clink retries them.
        // 130, as a shell reports a command Ctrl-C ended.
        () = at_once => {
            eprintln!("stopped at once");
            Ok(std::process::ExitCode::from(130))
        }
    }
}

/// How long a stop waits for the deliveries in progress, from the signal:
/// well inside the 10 s Docker gives a container after SIGTERM before it
/// kills it (Kubernetes gives 30 s).
const STOP_WITHIN: Duration = Duration::from_secs(4);

/// The webhook's address: the webhook route, and nothing else.
async fn route<S>(request: Request<Incoming>, webhook: S) -> Result<Response<Body>, Infallible>
where
    S: tower::Service<Request<Incoming>, Error = Infallible> + Send,
    S::Response: Into<Response<clink_webhooks::layer::ResponseBody<Full<Bytes>>>>,
    S::Future: Send,
{
    if request.uri().path() == "/webhooks/clink" {
        let response: Response<_> = webhook.oneshot(request).await?.into();
        return Ok(response.map(BodyExt::boxed_unsync));
    }
    Ok(text(StatusCode::NOT_FOUND, "not found\n".to_owned()))
}

/// The admin address: health and metrics, for operators only.
async fn admin(
    request: Request<Incoming>, readiness: Readiness, prometheus: PrometheusHandle,
) -> Result<Response<Body>, Infallible> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/health") => Ok(match readiness.check().await {
            Ok(()) => text(StatusCode::OK, "ok\n".to_owned()),
            Err(error) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")),
        }),
        (&Method::GET, "/metrics") => Ok(text(StatusCode::OK, prometheus.render())),
        _ => Ok(text(StatusCode::NOT_FOUND, "not found\n".to_owned())),
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
