//! The verifier against an independent reference (HMAC-SHA256 computed here,
//! compared as hex) on arbitrary inputs, a share of them signed correctly.

#![no_main]

#[path = "common.rs"]
mod common;

use std::time::Duration;

use clink_webhooks::signature::{SigningKey, Verifier, VerifyErrorKind};
use common::{at_ms, reference_signature, reference_verdict, RefKey, TOLERANCE_MS};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

fn secret(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let len = u.int_in_range(1..=48)?;
    Ok(u.bytes(len)?.to_vec())
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let now_ms: u64 = u.int_in_range(0..=4_102_444_800_000)?;

    let mut keys = vec![RefKey {
        secret: secret(&mut u)?,
        expires_ms: None,
    }];
    for _ in 0..u.int_in_range(0..=2)? {
        keys.push(RefKey {
            secret: secret(&mut u)?,
            expires_ms: None,
        });
    }
    for key in &mut keys {
        if u.ratio(1, 4)? {
            key.expires_ms = Some(now_ms.saturating_add_signed(u.int_in_range(-5_000..=5_000)?));
        }
    }
    let (max_age, max_skew) = if u.ratio(3, 4)? {
        (TOLERANCE_MS, TOLERANCE_MS)
    } else {
        (u.arbitrary::<u64>()?, u.arbitrary::<u64>()?)
    };

    let offset_ms: i64 = u.int_in_range(-400_000..=400_000)?;
    let signed_ms = now_ms.saturating_add_signed(offset_ms);
    let timestamp = match u.int_in_range(0..=4)? {
        0 => signed_ms.to_string(),
        1 => (signed_ms / 1000).to_string(),
        2 => format!(" {signed_ms}\t"),
        3 => format!("000{signed_ms}"),
        _ => u.arbitrary::<String>()?,
    };
    let sig_mode = u.int_in_range(0..=5)?;
    let signer = u.choose_index(keys.len())?;
    let flip = u.int_in_range(0..=63)?;
    let split = u.arbitrary::<usize>()?;
    let arbitrary_sig = u.arbitrary::<String>()?;
    let body = u.take_rest();

    let good = reference_signature(&keys[signer].secret, &timestamp, body);
    let signature = match sig_mode {
        0 | 1 => good,
        2 => good.to_ascii_uppercase(),
        3 => format!("\t{good} "),
        4 => {
            let mut bytes = good.into_bytes();
            bytes[flip] = if bytes[flip] == b'0' { b'1' } else { b'0' };
            String::from_utf8(bytes).unwrap()
        }
        _ => arbitrary_sig,
    };

    let mut verifier = Verifier::new(&keys[0].secret)
        .unwrap()
        .max_age(Duration::from_millis(max_age))
        .max_future_skew(Duration::from_millis(max_skew));
    if let Some(expires) = keys[0].expires_ms {
        verifier = Verifier::from_key(
            &SigningKey::new(&keys[0].secret)
                .unwrap()
                .expires_at(at_ms(expires)),
        )
        .max_age(Duration::from_millis(max_age))
        .max_future_skew(Duration::from_millis(max_skew));
    }
    for key in &keys[1..] {
        let mut k = SigningKey::new(&key.secret).unwrap();
        if let Some(expires) = key.expires_ms {
            k = k.expires_at(at_ms(expires));
        }
        verifier = verifier.add_key(k);
    }

    let now = at_ms(now_ms);
    let expected = reference_verdict(
        &keys, max_age, max_skew, &timestamp, &signature, body, now_ms,
    );
    let one_shot = verifier
        .verify_at(&timestamp, &signature, body, now)
        .map(|v| v.key_index())
        .map_err(|e| e.kind());
    assert_eq!(
        one_shot, expected,
        "verify_at: ts {timestamp:?} sig {signature:?}"
    );
    if let Ok(verified) = verifier.verify_at(&timestamp, &signature, body, now) {
        assert_eq!(
            verified.signed_at().as_millis(),
            common::reference_timestamp(&timestamp).unwrap()
        );
    }

    // The incremental form, fed in two chunks: it agrees, except that it
    // judges the window and the keys before it sees a malformed signature.
    let incremental = verifier
        .begin_at(&timestamp, now)
        .and_then(|mut v| {
            let (a, b) = body.split_at(split % (body.len() + 1));
            v.update(a);
            v.update(b);
            v.finish(&signature)
        })
        .map(|v| v.key_index())
        .map_err(|e| e.kind());
    let begin_first = expected == Err(VerifyErrorKind::MalformedSignature)
        && matches!(
            incremental,
            Err(VerifyErrorKind::TooOld | VerifyErrorKind::InFuture | VerifyErrorKind::NoActiveKey)
        );
    // Nor has it the body to tell a signature by an expired key from a
    // forgery: it reports a mismatch.
    let no_body = expected == Err(VerifyErrorKind::ExpiredKey)
        && incremental == Err(VerifyErrorKind::SignatureMismatch);
    if !begin_first && !no_body {
        assert_eq!(
            incremental, expected,
            "begin_at: ts {timestamp:?} sig {signature:?}"
        );
    }
    Ok(())
}
