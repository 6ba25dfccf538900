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
//!
//! It listens on `127.0.0.1:$PORT` (default 3001): `POST /webhooks/clink`
//! goes through the layer to an [`EventRouter`], `GET /health` answers `200`
//! while the store answers (`503` with the reason otherwise), `GET /metrics`
//! serves the crate's metrics in Prometheus' text format, anything else is
//! `404`. In production, serve health and metrics on an internal port.
//!
//! It is served with `clink_webhooks::server::Server`: connections that send
//! no complete request headers within 10 s are closed, a failed `accept`
//! (out of file descriptors, say) is logged and retried instead of stopping
//! the server, and Ctrl-C or SIGTERM stops it gracefully: it waits at most
//! 10 s for deliveries in progress, then prints `stopped` and exits 0.

use std::convert::Infallible;

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

/// The endpoint's signing secret, from `CLINK_WEBHOOK_SIGNING_KEY`, without
/// the whitespace around it (a secret mounted from a file, as Kubernetes
/// does, often ends with a newline, which would fail every delivery), or
/// what to tell the user. Without it the receiver does not start: one that
/// fell back to a key anyone can read would accept deliveries anyone can
/// sign.
fn signing_key() -> Result<String, String> {
    let problem = match std::env::var("CLINK_WEBHOOK_SIGNING_KEY") {
        Ok(key) if !key.trim().is_empty() => return Ok(key.trim().to_owned()),
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The crate logs through `tracing`: without a subscriber, a failed
    // handler or a refused delivery prints nothing. Colour only on a terminal.
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    // Whatever stops it from starting is said on one line, and it exits 1.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The port in `PORT` (default 3001, also when it is empty); a value that
/// is not one is an error naming the variable, with the value as it is
/// (escaped).
fn port() -> Result<u16, String> {
    match std::env::var("PORT") {
        Err(std::env::VarError::NotPresent) => Ok(3001),
        Err(std::env::VarError::NotUnicode(_)) => Err("PORT is not valid UTF-8".to_owned()),
        Ok(port) if port.trim().is_empty() => Ok(3001),
        Ok(port) => port
            .trim()
            .parse()
            .map_err(|_| format!("PORT must be a port number, got {}", printable(&port))),
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let key = signing_key()?;
    let port = port()?;
    // Durations as a histogram with buckets, which can be summed across
    // instances (without buckets they render as a summary, which cannot).
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("clink_webhook_delivery_duration_seconds".to_owned()),
            DURATION_BUCKETS,
        )?
        .install_recorder()?;
    let router = EventRouter::new()
        .on::<events::OrderSucceeded, _>(|event| async move {
            let order = event.data.order_id.as_deref().map(printable);
            println!(
                "handled {} {} order={order:?}",
                printable(event.event_type.as_str()),
                printable(&event.id)
            );
            Ok::<_, std::io::Error>(())
        })
        .on_unhandled(|event| async move {
            println!(
                "handled {} {}",
                printable(event.event_type().as_str()),
                printable(event.id())
            );
            Ok::<_, std::io::Error>(())
        });
    let layer = ClinkLayer::new(Verifier::new(key)?);
    let readiness = layer.readiness();
    let webhook = layer.route(router);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    // Listen for signals before saying where we listen, so that a signal sent
    // as soon as the address is known is not missed.
    let shutdown = shutdown_signal();
    eprintln!(
        "listening on http://{}/webhooks/clink",
        listener.local_addr()?
    );
    let app = tower::service_fn(move |request| {
        route(
            request,
            webhook.clone(),
            readiness.clone(),
            prometheus.clone(),
        )
    });
    // Slow and idle clients are cut off, accept errors never stop it, and a
    // shutdown waits at most 10 s for deliveries in progress.
    Server::new().serve(listener, app, shutdown).await;
    eprintln!("stopped");
    Ok(())
}

async fn route<S>(
    request: Request<Incoming>, webhook: S, readiness: Readiness, prometheus: PrometheusHandle,
) -> Result<Response<Body>, Infallible>
where
    S: tower::Service<Request<Incoming>, Error = Infallible> + Send,
    S::Response: Into<Response<clink_webhooks::layer::ResponseBody<Full<Bytes>>>>,
    S::Future: Send,
{
    match (request.method(), request.uri().path()) {
        (_, "/webhooks/clink") => {
            let response: Response<_> = webhook.oneshot(request).await?.into();
            Ok(response.map(BodyExt::boxed_unsync))
        }
        (&Method::GET, "/health") => Ok(match readiness.check().await {
            Ok(()) => text(StatusCode::OK, "ok\n".to_owned()),
            Err(error) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")),
        }),
        (&Method::GET, "/metrics") => Ok(text(StatusCode::OK, prometheus.render())),
        _ => Ok(text(StatusCode::NOT_FOUND, "not found\n".to_owned())),
    }
}

/// Resolves on Ctrl-C or SIGTERM (how docker, Kubernetes and systemd stop
/// a process); the handlers are installed when it is called.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
