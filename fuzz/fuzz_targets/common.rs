//! Helpers shared by the fuzz targets: an independent reference for the
//! signature scheme, written from the wire-format description rather than
//! from the crate's code.

#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clink_webhooks::signature::VerifyErrorKind;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The tolerance the crate uses by default, both ways.
pub const TOLERANCE_MS: u64 = 300_000;

/// `hex(HMAC-SHA256(secret, timestamp "." body))`, lowercase.
pub fn reference_signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn trim(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii_whitespace())
}

/// `X-Clink-Timestamp` in milliseconds: ASCII digits once surrounding ASCII
/// whitespace is trimmed, seconds below 10^12, and within `i64`.
pub fn reference_timestamp(text: &str) -> Option<i64> {
    let digits = trim(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    let millis = if value < 1_000_000_000_000 {
        value * 1000
    } else {
        value
    };
    i64::try_from(millis).ok()
}

/// The signature as lowercase hex, if it is 64 hex digits once trimmed.
pub fn reference_signature_text(text: &str) -> Option<String> {
    let digits = trim(text);
    (digits.len() == 64 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| digits.to_ascii_lowercase())
}

/// A key as the reference sees it: its secret, and when it stops being
/// active (in epoch milliseconds), if ever.
pub struct RefKey {
    pub secret: Vec<u8>,
    pub expires_ms: Option<u64>,
}

/// The verdict the crate's documented order of checks gives for the values
/// of the two headers: the index of the first key that signed, or the first
/// problem.
pub fn reference_verdict(
    keys: &[RefKey],
    max_age_ms: u64,
    max_skew_ms: u64,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_ms: u64,
) -> Result<usize, VerifyErrorKind> {
    let signed_ms = reference_timestamp(timestamp).ok_or(VerifyErrorKind::MalformedTimestamp)?;
    let signature =
        reference_signature_text(signature).ok_or(VerifyErrorKind::MalformedSignature)?;
    let active = |key: &RefKey| key.expires_ms.is_none_or(|e| now_ms < e);
    if !keys.iter().any(active) {
        return Err(VerifyErrorKind::NoActiveKey);
    }
    let (now, signed) = (i128::from(now_ms), i128::from(signed_ms));
    if now > signed + i128::from(max_age_ms) {
        return Err(VerifyErrorKind::TooOld);
    }
    if signed > now + i128::from(max_skew_ms) {
        return Err(VerifyErrorKind::InFuture);
    }
    let signed_by = |key: &RefKey| reference_signature(&key.secret, timestamp, body) == signature;
    if let Some(index) = keys.iter().position(|key| active(key) && signed_by(key)) {
        return Ok(index);
    }
    // No active key signed it: a key past its expiry may have.
    if keys.iter().any(|key| !active(key) && signed_by(key)) {
        return Err(VerifyErrorKind::ExpiredKey);
    }
    Err(VerifyErrorKind::SignatureMismatch)
}

pub fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
