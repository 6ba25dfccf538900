//! Receiving without tower: what a serverless function or any framework
//! would do with a delivery's two header values and raw body, where the
//! delivery arrives and before it is answered. (A queue consumer that
//! verifies a delivery later, past the tolerance of 5 minutes, finds it too
//! old after Clink was told it was received: verify before queueing, or
//! pass the time the delivery arrived to `construct_event_at`.) The body's
//! size is yours to bound, as the layer's body limit does (1 MiB).
//!
//! ```text
//! CLINK_WEBHOOK_SIGNING_KEY=whsec_... cargo run --example verify_only
//! ```
//!
//! The key comes from `CLINK_WEBHOOK_SIGNING_KEY` (during a rotation, the
//! secrets newest first, separated by commas: `whsec_new,whsec_old`, each
//! accepted), and its newest secret signs the sample deliveries too. Without it the example does not run: it says on stderr
//! how to set it and exits with status 1, as the receivers do, so that code
//! copied from it never verifies with a key anyone can read. To try it, any
//! key works (`CLINK_WEBHOOK_SIGNING_KEY=whsec_clink_webhooks_development_only`).
//! The key is never printed.

use clink_webhooks::events::{AnyEvent, EventError};
use clink_webhooks::{sign, EventType, Timestamp, Verifier};

/// A line on stdout. Not `println!`, which panics once stdout is closed
/// (a terminal gone, a log reader that stopped): a handler that prints
/// with it would then fail every event.
macro_rules! say {
    ($($line:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($line)*);
    }};
}

/// A line on stderr, for the same reason: `eprintln!` panics once stderr
/// is closed, and a refusal logged with it would fail the request.
macro_rules! note {
    ($($line:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($line)*);
    }};
}

/// What a receiver does with one delivery: the status to answer and, for the
/// log, what happened. In your framework, answer with the status (and the
/// code as the body, if you like).
fn receive(verifier: &Verifier, timestamp: &str, signature: &str, body: &[u8]) -> u16 {
    let event = match verifier.construct_event(timestamp, signature, body) {
        Ok(event) => event,
        // Authentic, of a type this receiver does not handle, with data
        // this crate's type for it does not read: acknowledged, as the
        // layer acknowledges a type no handler takes. Answering 500 would
        // have Clink retry it for a day for nothing.
        Err(EventError::Decode(error)) if !handles(error.event_type()) => {
            note!(
                "{:?} not handled here; acknowledged ({error})",
                error.event_type().as_str()
            );
            return 200;
        }
        Err(error) => {
            // The message says what to check and never holds the key; it
            // can quote the body, so log it rather than send it back.
            note!(
                "refused: {} {} ({error})",
                error.status().as_u16(),
                error.code()
            );
            return error.status().as_u16();
        }
    };
    // Clink retries until it gets a 2xx, so the same event can come again:
    // keep the ids you have handled (an `IdempotencyStore` does this with a
    // lease) and skip those you have.
    match handle(&event) {
        Ok(()) => {
            say!("  event id {:?}", event.id());
            200
        }
        // Failed: answered 500, so that Clink delivers it again.
        Err(error) => {
            note!("event {:?} failed: {error}; answered 500", event.id());
            500
        }
    }
}

/// The types [`handle`] does something with.
fn handles(event_type: &EventType) -> bool {
    matches!(
        event_type,
        EventType::OrderSucceeded | EventType::RefundSucceeded
    )
}

/// Your side effects, run where this prints: an error when they failed.
/// Values from the body are data, printed with `{:?}` so that no control
/// character reaches the terminal or the log.
fn handle(event: &AnyEvent) -> Result<(), std::io::Error> {
    match event {
        AnyEvent::OrderSucceeded(order) => say!(
            "order {:?} paid {:?} {:?}",
            order.data.order_id,
            order.data.amount_total,
            order.data.payment_currency
        ),
        AnyEvent::RefundSucceeded(refund) => {
            say!("refund {:?} done", refund.data.refund_id);
        }
        AnyEvent::Unknown(raw) => say!(
            "event type {:?} is new to this crate; acknowledged",
            raw.event_type().as_str()
        ),
        other => say!(
            "{:?} not handled here; acknowledged",
            other.event_type().as_str()
        ),
    }
    Ok(())
}

/// The verifier of the endpoint's signing secret, from
/// `CLINK_WEBHOOK_SIGNING_KEY`, and the secret Clink signs with, or what to
/// tell the user. During a rotation the variable holds the secrets newest
/// first, separated by commas (`whsec_new,whsec_old`): a delivery signed
/// with any of them is accepted, and Clink signs with the newest, the
/// first. Each is used without the whitespace around it (a secret mounted
/// from a file, as Kubernetes does, often ends with a newline, which would
/// fail every delivery). There is no fallback: code that verified with a
/// key anyone can read would accept deliveries anyone can sign.
fn signing_keys() -> Result<(Verifier, String), String> {
    let problem = match std::env::var("CLINK_WEBHOOK_SIGNING_KEY") {
        // The error says which secret of the list is wrong, never what it is.
        Ok(keys) if !keys.trim().is_empty() => {
            let verifier = Verifier::from_secret_list(&keys)
                .map_err(|e| format!("CLINK_WEBHOOK_SIGNING_KEY: {}", e.message()))?;
            let newest = keys.split(',').next().unwrap_or_default().trim().to_owned();
            return Ok((verifier, newest));
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
         cargo run --example verify_only"
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (verifier, secret) = match signing_keys() {
        Ok(keys) => keys,
        Err(message) => {
            note!("error: {message}");
            std::process::exit(1);
        }
    };

    // What arrives: two header values and the raw body bytes (signed here
    // with the newest key, as Clink would: this example plays both sides).
    let body = br#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"ord_1","amountTotal":19.99,"paymentCurrency":"USD"}}"#;
    let timestamp = Timestamp::now().as_millis().to_string();
    let signature = sign(&secret, &timestamp, body);
    assert_eq!(receive(&verifier, &timestamp, &signature, body), 200);

    // A body changed in transit is refused with 401, and says why.
    let tampered = br#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"ord_1","amountTotal":0.01,"paymentCurrency":"USD"}}"#;
    assert_eq!(receive(&verifier, &timestamp, &signature, tampered), 401);

    // A type not handled here whose data does not read: acknowledged.
    let unreadable = br#"{"id":"evt_2","type":"dispute.won","data":{"chargeBackId":["cb_1"]}}"#;
    let signature = sign(&secret, &timestamp, unreadable);
    assert_eq!(receive(&verifier, &timestamp, &signature, unreadable), 200);

    // A signed body that is not a Clink event is refused with 400.
    let not_an_event = br#"{"type":"order.succeeded"}"#;
    let signature = sign(&secret, &timestamp, not_an_event);
    assert_eq!(
        receive(&verifier, &timestamp, &signature, not_an_event),
        400
    );
    Ok(())
}
