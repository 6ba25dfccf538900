//! The framework-agnostic verifier on its own: what a queue consumer, a
//! serverless function or any framework without tower would do.
//!
//! ```text
//! cargo run --example verify_only
//! ```

use clink_webhooks::data::Order;
use clink_webhooks::{sign, RawEvent, Timestamp, Verifier, VerifyErrorKind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = "whsec_test_123";
    let verifier = Verifier::new(secret)?;

    // What arrives: two header values and the raw body bytes.
    let body = br#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"ord_1","amountTotal":19.99}}"#;
    let timestamp = Timestamp::now().as_millis().to_string();
    let signature = sign(secret, &timestamp, body);

    let verified = verifier.verify(&timestamp, &signature, body)?;
    let event = RawEvent::from_slice(body)?.decode::<Order>()?;
    println!(
        "verified with key #{} (signed at {}): {} {} order {:?}",
        verified.key_index(),
        verified.signed_at(),
        event.event_type,
        event.id,
        event.data.order_id
    );

    // A body changed in transit is refused, and says why.
    let tampered =
        br#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"ord_1","amountTotal":0.01}}"#;
    let error = verifier
        .verify(&timestamp, &signature, tampered)
        .expect_err("a tampered body must not verify");
    assert_eq!(error.kind(), VerifyErrorKind::SignatureMismatch);
    println!("tampered body refused: {error}");
    Ok(())
}
