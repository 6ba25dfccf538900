//! Receiving without tower: what a queue consumer, a serverless function or
//! any framework would do with a delivery's two header values and raw body.
//!
//! ```text
//! cargo run --example verify_only
//! ```
//!
//! The key comes from `CLINK_WEBHOOK_SIGNING_KEY`; without it a fixed
//! development key is used, with a warning. The key is never printed.

use clink_webhooks::events::AnyEvent;
use clink_webhooks::{sign, Timestamp, Verifier};

/// The key used when `CLINK_WEBHOOK_SIGNING_KEY` is not set. Never use it in
/// production: anyone can read it here.
const DEVELOPMENT_KEY: &str = "whsec_clink_webhooks_development_only";

/// What a receiver does with one delivery: the status to answer and, for the
/// log, what happened. In your framework, answer with the status (and the
/// code as the body, if you like); run your side effects where this prints.
fn receive(verifier: &Verifier, timestamp: &str, signature: &str, body: &[u8]) -> u16 {
    match verifier.construct_event(timestamp, signature, body) {
        Ok(event) => {
            // Verified. Values from the body are data, printed with `{:?}`
            // so that no control character reaches the terminal or the log.
            match &event {
                AnyEvent::OrderSucceeded(order) => println!(
                    "order {:?} paid {:?} {:?}",
                    order.data.order_id, order.data.amount_total, order.data.payment_currency
                ),
                AnyEvent::RefundSucceeded(refund) => {
                    println!("refund {:?} done", refund.data.refund_id);
                }
                AnyEvent::Unknown(raw) => println!(
                    "event type {:?} is new to this crate; acknowledged",
                    raw.event_type().as_str()
                ),
                other => println!(
                    "{:?} not handled here; acknowledged",
                    other.event_type().as_str()
                ),
            }
            // Clink retries until it gets a 2xx, so the same event can come
            // again: keep the ids you have handled (an `IdempotencyStore`
            // does this with a lease) and skip those you have.
            println!("  event id {:?}", event.id());
            200
        }
        Err(error) => {
            // The message says what to check and never holds the key; it can
            // quote the body, so log it rather than send it back.
            eprintln!(
                "refused: {} {} ({error})",
                error.status().as_u16(),
                error.code()
            );
            error.status().as_u16()
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("CLINK_WEBHOOK_SIGNING_KEY").unwrap_or_else(|_| {
        eprintln!("warning: CLINK_WEBHOOK_SIGNING_KEY is not set; using a development key");
        DEVELOPMENT_KEY.to_owned()
    });
    let verifier = Verifier::new(&secret)?;

    // What arrives: two header values and the raw body bytes (signed here
    // with the same key, as Clink would).
    let body = br#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"ord_1","amountTotal":19.99,"paymentCurrency":"USD"}}"#;
    let timestamp = Timestamp::now().as_millis().to_string();
    let signature = sign(&secret, &timestamp, body);
    assert_eq!(receive(&verifier, &timestamp, &signature, body), 200);

    // A body changed in transit is refused with 401, and says why.
    let tampered = br#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"ord_1","amountTotal":0.01,"paymentCurrency":"USD"}}"#;
    assert_eq!(receive(&verifier, &timestamp, &signature, tampered), 401);

    // A signed body that is not a Clink event is refused with 400.
    let not_an_event = br#"{"type":"order.succeeded"}"#;
    let signature = sign(&secret, &timestamp, not_an_event);
    assert_eq!(
        receive(&verifier, &timestamp, &signature, not_an_event),
        400
    );
    Ok(())
}
