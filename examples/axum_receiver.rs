//! A Clink webhook receiver on axum: verifies, deduplicates and prints every
//! event it handles.
//!
//! ```text
//! CLINK_WEBHOOK_SIGNING_KEY=whsec_... cargo run --example axum_receiver
//! ```
//!
//! It listens on `127.0.0.1:$PORT` (default 3000) at `POST /webhooks/clink`
//! and prints one line `handled <type> <id>` to stdout per handler run. Every
//! event type has a typed handler, so an acknowledged delivery is one whose
//! data decoded; an event older than one already handled about the same
//! object gets a note on stderr.
//! Without `CLINK_WEBHOOK_SIGNING_KEY` it uses a fixed development key and
//! says so on stderr. It stops gracefully on Ctrl-C or SIGTERM.

use axum::Router;
use clink_webhooks::event::Resource;
use clink_webhooks::idempotency::BoxFuture;
use clink_webhooks::ordering::{Freshness, MemoryFreshnessStore};
use clink_webhooks::router::EveryHandler;
use clink_webhooks::{ClinkLayer, Event, EventRouter, Verifier};
use tower::Layer;

/// The key used when `CLINK_WEBHOOK_SIGNING_KEY` is not set. Never use it in production.
const DEV_KEY: &str = "whsec_clink_webhooks_development_only";

/// The handler of every event type: prints the line every handler run
/// produces, and a note on stderr when a newer event about the same object
/// was already handled.
struct Handled;

impl EveryHandler for Handled {
    type Error = std::io::Error;

    fn handle<T: Resource + Send + 'static>(
        &self,
        event: Event<T>,
    ) -> BoxFuture<'static, Result<(), Self::Error>> {
        println!("handled {} {}", event.event_type, event.id);
        if let Freshness::Stale { newest_seen } = event.freshness() {
            eprintln!(
                "note: {} {} is stale: {newest_seen} was already handled",
                event.event_type, event.id
            );
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

fn router() -> EventRouter {
    EventRouter::new()
        .ordering(MemoryFreshnessStore::new())
        .on_every(Handled)
        // Names Clink adds after this version of the crate.
        .on_any(|event| {
            println!("handled {} {}", event.event_type(), event.id());
            std::future::ready(Ok::<_, std::io::Error>(()))
        })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let key = match std::env::var("CLINK_WEBHOOK_SIGNING_KEY") {
        Ok(key) if !key.is_empty() => key,
        _ => {
            eprintln!(
                "warning: CLINK_WEBHOOK_SIGNING_KEY is not set; using the development key {DEV_KEY:?}. \
                 Set it to your endpoint's signing secret for real deliveries."
            );
            DEV_KEY.to_owned()
        }
    };
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT must be a port number, got {port:?}"))?,
        Err(_) => 3000,
    };

    let service = ClinkLayer::new(Verifier::new(key)?).layer(router());
    let app = Router::new().route_service("/webhooks/clink", service);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    // Listen for signals before saying where we listen, so that a signal sent
    // as soon as the address is known is not missed.
    let shutdown = shutdown_signal();
    eprintln!(
        "listening on http://{}/webhooks/clink",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    eprintln!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM; the handlers are installed when it is called.
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
