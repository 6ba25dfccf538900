//! Signing secrets and the HMAC they key: [`SigningKey`], [`sign`], and the
//! keyed state a [`Verifier`](super::Verifier) keeps per key.

use std::fmt;
use std::time::SystemTime;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::ConfigError;

pub(super) type HmacSha256 = Hmac<Sha256>;

/// Length of an HMAC-SHA256 tag, in bytes.
pub(super) const SIGNATURE_LEN: usize = 32;

/// What [`SigningKey::new`] says about an empty secret.
const EMPTY_SECRET: &str =
    "empty signing secret: set it to the endpoint's signing secret from the Clink dashboard (whsec_...)";

/// Computes the `X-Clink-Signature` for a delivery: lowercase hex of
/// HMAC-SHA256 over `timestamp + "." + body` under `secret`.
///
/// `secret` is used as given (a `whsec_…` secret is used whole, prefix
/// included, as Clink does).
///
/// ```
/// let sig = clink_webhooks::signature::sign("test_webhook_signing_key", "1700000000000", br#"{"id":"evt_test"}"#);
/// assert_eq!(sig, "e07064a60193e751786c3f5a37fe7a5dc816bba53a2cb7781d0246b035dddfda");
/// ```
#[must_use]
pub fn sign(secret: impl AsRef<[u8]>, timestamp: &str, body: &[u8]) -> String {
    let mut mac = keyed(secret.as_ref());
    feed_prefix(&mut mac, timestamp);
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn keyed(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    <HmacSha256 as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

/// Feeds the part of the signed message that comes before the body.
pub(super) fn feed_prefix(mac: &mut HmacSha256, timestamp: &str) {
    mac.update(timestamp.as_bytes());
    mac.update(b".");
}

/// One endpoint signing secret, optionally with the time it stops being accepted.
///
/// The secret is zeroized when the key is dropped and never shown by `Debug`.
#[derive(Clone)]
pub struct SigningKey {
    secret: Zeroizing<Vec<u8>>,
    expires_at: Option<SystemTime>,
}

impl SigningKey {
    /// A key from the endpoint's signing secret (`&str`, `String` or bytes).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the secret is empty: an empty key would make every
    /// forger's job trivial.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let secret = secret.as_ref();
        if secret.is_empty() {
            return Err(ConfigError::new(EMPTY_SECRET));
        }
        Ok(Self {
            secret: Zeroizing::new(secret.to_vec()),
            expires_at: None,
        })
    }

    /// Stops accepting this key at `at` (a signature under it verified at or
    /// after `at` is refused). Use it for the old key during a rotation.
    #[must_use]
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// When this key stops being accepted, if ever.
    #[must_use]
    pub fn expiry(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("secret", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A keyed HMAC state, ready to clone per delivery. It is derived from the
/// secret (it is key material) and is zeroized on drop by the `hmac` crate.
#[derive(Clone)]
pub(super) struct ActiveKey {
    pub(super) mac: HmacSha256,
    pub(super) expires_at: Option<SystemTime>,
}

impl ActiveKey {
    /// Runs the key schedule for `key` once, so that each delivery only
    /// clones the result.
    pub(super) fn new(key: &SigningKey) -> Self {
        Self {
            mac: keyed(&key.secret),
            expires_at: key.expires_at,
        }
    }

    pub(super) fn is_active_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

impl From<SigningKey> for ActiveKey {
    /// As [`ActiveKey::new`]; the secret is zeroized as `key` drops.
    fn from(key: SigningKey) -> Self {
        Self::new(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let key = SigningKey::new("whsec_supersecret").unwrap();
        assert!(!format!("{key:?}").contains("supersecret"));
    }
}
