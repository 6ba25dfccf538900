//! A Clink webhook receiver on bare hyper 1.x, with no axum in the tree.
//!
//! ```text
//! CLINK_WEBHOOK_SIGNING_KEY=whsec_... cargo run --example hyper_receiver
//! ```
//!
//! The layer wraps an [`EventRouter`]; hyper-util's `TowerToHyperService`
//! adapts the tower service to hyper. Every path on the port is the webhook
//! endpoint here; put a path check in front for anything more.

use clink_webhooks::{events, ClinkLayer, EventRouter, Layer, Verifier};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = std::env::var("CLINK_WEBHOOK_SIGNING_KEY")
        .unwrap_or_else(|_| "whsec_clink_webhooks_development_only".to_owned());
    let router = EventRouter::new()
        .on::<events::OrderSucceeded, _>(|event| async move {
            println!(
                "handled {} {} order={:?}",
                event.event_type, event.id, event.data.order_id
            );
            Ok::<_, std::io::Error>(())
        })
        .on_unhandled(|event| async move {
            println!("handled {} {}", event.event_type(), event.id());
            Ok::<_, std::io::Error>(())
        });
    let service = ClinkLayer::new(Verifier::new(key)?).layer(router);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 3001)).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {error}");
            }
        });
    }
}
