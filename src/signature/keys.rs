//! Signing secrets and the HMAC they key: [`SigningKey`], [`sign`], and the
//! keyed state a [`Verifier`](super::Verifier) keeps per key.

use std::fmt;
use std::sync::OnceLock;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::name::KeyName;
use super::tag::{HmacKey, Tagging};
use crate::ConfigError;
use crate::Timestamp;

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
    hex::encode(HmacKey::new(secret.as_ref()).tag_dotted(timestamp.as_bytes(), body))
}

/// Feeds the part of the signed message that comes before the body.
#[inline]
pub(super) fn feed_prefix(tagging: &mut Tagging, timestamp: &str) {
    tagging.update(timestamp.as_bytes());
    tagging.update(b".");
}

/// The longest [key name](SigningKey::named).
const MAX_NAME_LEN: usize = 64;

/// One endpoint signing secret, optionally with the time it stops being
/// accepted and a name.
///
/// The name is what metrics, logs, [`Verified::key_name`](super::Verified::key_name)
/// and the inbox say matched, so that an operator can tell when the old key
/// of a rotation stops being used. Without one, the key is named by a short
/// fingerprint of the secret (`key-` and 8 hex digits of a SHA-256 of it),
/// which says which key it was without saying anything usable about a
/// random secret such as Clink's. About a guessable one (a word, the
/// README's development key) it says whether a guess is right, to whoever
/// reads the metrics or the logs: give such a key a [name](Self::named),
/// or better, a random secret.
///
/// The secret is zeroized when the key is dropped and never shown by `Debug`.
/// The first 1,024 distinct names a process gives its keys are kept once
/// for its life (at most 64 bytes each), so that a verification hands its
/// key's name on without counting references; names beyond those are
/// shared like any string, so that a key source making a key per account
/// keeps memory bounded.
///
/// ```
/// use clink_webhooks::SigningKey;
///
/// let key = SigningKey::new("whsec_2026_12")?.named("2026-12")?;
/// assert_eq!(key.name(), "2026-12");
/// let unnamed = SigningKey::new("whsec_2026_12")?;
/// assert!(unnamed.name().starts_with("key-"));
/// assert!(SigningKey::new("whsec_x")?.named("no spaces").is_err());
/// # Ok::<(), clink_webhooks::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct SigningKey {
    secret: Zeroizing<Vec<u8>>,
    expires_at: Option<SystemTime>,
    signed_until: Option<Timestamp>,
    /// The name given, or the fingerprint's, worked out when first asked
    /// for: a key named at once never keeps its fingerprint among the
    /// names kept.
    name: OnceLock<KeyName>,
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
            name: OnceLock::new(),
            secret: Zeroizing::new(secret.to_vec()),
            expires_at: None,
            signed_until: None,
        })
    }

    /// Names this key: 1 to 64 characters from `A-Z a-z 0-9 . _ - : / @ +`
    /// (`current`, `previous`, `2026-12`, ...). The name appears in metrics
    /// labels, so a few names reused across rotations keep the series few.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an empty name, one over 64 characters, or one
    /// with another character.
    pub fn named(mut self, name: &str) -> Result<Self, ConfigError> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._-:/@+".contains(c);
        if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(allowed) {
            return Err(ConfigError::new(format!(
                "signing key name {:?}: use 1 to {MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ - : / @ +",
                name.chars().take(MAX_NAME_LEN + 1).collect::<String>()
            )));
        }
        self.name = OnceLock::from(KeyName::new(name));
        Ok(self)
    }

    /// The key's name: the one given to [`named`](Self::named), or else its
    /// fingerprint (`key-` and 8 hex digits).
    #[must_use]
    pub fn name(&self) -> &str {
        self.key_name().as_str()
    }

    fn key_name(&self) -> &KeyName {
        self.name
            .get_or_init(|| KeyName::new(&fingerprint(&self.secret)))
    }

    /// Stops accepting this key at `at` (a signature under it verified at or
    /// after `at` is refused). Use it for the old key during a rotation.
    /// The time of a verification is the clock's reading when it begins:
    /// the layer reads it once a delivery's headers are in, before its body
    /// (which may take up to the body timeout), so a delivery whose headers
    /// came before `at` is judged as of then.
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

    /// Accepts this key only for deliveries stamped (`X-Clink-Timestamp`)
    /// at or before `at`: a secret Clink rotated out signs nothing after
    /// the rotation, so a delivery it signed later is a forgery. Set it on
    /// the old key when you load keys yourself during a rotation's grace
    /// period (a restart, a [`KeyMap`](crate::accounts::KeyMap) entry), to
    /// [`Rotated::previous_signed_until`](crate::api::Rotated::previous_signed_until)
    /// when the crate rotated; [`Verifier::rotated`](super::Verifier::rotated)
    /// sets it itself. A delivery it refuses is refused as signed by an
    /// expired key.
    #[must_use]
    pub fn signed_until(mut self, at: SystemTime) -> Self {
        self.signed_until = Some(Timestamp::from(at));
        self
    }

    /// The latest stamp of a delivery this key is accepted for, if set
    /// (see [`signed_until`](Self::signed_until)).
    #[must_use]
    pub fn signed_limit(&self) -> Option<SystemTime> {
        self.signed_until.map(SystemTime::from)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", self.key_name())
            .field("secret", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A short name for a secret that says nothing usable about it: `key-` and
/// the first 8 hex digits of a SHA-256 of a fixed label and the secret.
fn fingerprint(secret: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"clink-webhooks signing key fingerprint\n")
        .chain_update(secret)
        .finalize();
    format!("key-{}", hex::encode(&digest[..4]))
}

/// A key's HMAC schedule, run once, with its expiry and name. The schedule
/// is as good as the secret for forging and is zeroized on drop.
#[derive(Clone)]
pub(super) struct ActiveKey {
    pub(super) mac: HmacKey,
    pub(super) expires_at: Option<SystemTime>,
    /// The latest timestamp a delivery signed with it may carry: set for a
    /// key rotated out, which the sender stopped signing with at once.
    pub(super) signed_until: Option<Timestamp>,
    pub(super) name: KeyName,
}

impl ActiveKey {
    /// Runs the key schedule for `key` once, so that each delivery only
    /// clones the result.
    pub(super) fn new(key: &SigningKey) -> Self {
        Self {
            mac: HmacKey::new(&key.secret),
            expires_at: key.expires_at,
            signed_until: key.signed_until,
            name: key.key_name().clone(),
        }
    }

    pub(super) fn is_active_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    /// Whether it may have signed a delivery stamped `signed_at`, at `now`:
    /// active, and not rotated out before `signed_at`.
    pub(super) fn may_sign(&self, now: SystemTime, signed_at: Timestamp) -> bool {
        self.is_active_at(now) && self.signed_until.is_none_or(|until| signed_at <= until)
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
        let debug = format!("{key:?}");
        assert!(!debug.contains("supersecret"), "{debug}");
        assert!(debug.starts_with("SigningKey"), "{debug}");
        assert!(
            debug.contains(key.name()) && debug.contains("[redacted]"),
            "{debug}"
        );
    }

    #[test]
    fn a_key_is_active_until_the_instant_of_its_expiry() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let key = SigningKey::new("whsec_a").unwrap();
        assert_eq!(key.expiry(), None);
        assert!(ActiveKey::from(key.clone()).is_active_at(at));
        let expiring = key.expires_at(at);
        assert_eq!(expiring.expiry(), Some(at));
        let active = ActiveKey::new(&expiring);
        assert!(active.is_active_at(at - std::time::Duration::from_millis(1)));
        assert!(!active.is_active_at(at));
        assert!(!active.is_active_at(at + std::time::Duration::from_millis(1)));
    }

    #[test]
    fn signing_covers_the_timestamp_the_dot_and_the_body() {
        let whole = sign("k", "1700000000000", b"{}");
        assert_eq!(whole.len(), 64);
        let mut tagging = HmacKey::new(b"k").start();
        tagging.update(b"1700000000000.{}");
        assert_eq!(whole, hex::encode(tagging.finish()));
        assert_ne!(whole, sign("k", "1700000000000", b"{ }"));
        assert_ne!(whole, sign("k", "1700000000001", b"{}"));
        assert_ne!(whole, sign("k2", "1700000000000", b"{}"));
    }

    #[test]
    fn unnamed_keys_are_named_by_a_fingerprint_of_their_secret() {
        let a = SigningKey::new("whsec_a").unwrap();
        assert_eq!(a.name(), SigningKey::new("whsec_a").unwrap().name());
        assert_ne!(a.name(), SigningKey::new("whsec_b").unwrap().name());
        assert_eq!(a.name().len(), "key-".len() + 8);
        assert!(a.name()["key-".len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit()));
        assert!(!a.name().contains("whsec"));
    }

    /// A key named at once never keeps its fingerprint among the names a
    /// process keeps (1,024 at most), nor takes their lock for it.
    #[test]
    fn a_key_named_at_once_keeps_no_fingerprint() {
        let secret = "whsec_named_at_once";
        let named = SigningKey::new(secret).unwrap().named("at-once").unwrap();
        let verifier = crate::Verifier::from_key(&named);
        assert!(verifier.key_names().eq(["at-once"]));
        assert!(format!("{named:?}").contains("at-once"));
        assert!(!super::super::name::is_kept(&fingerprint(
            secret.as_bytes()
        )));
        let unnamed = SigningKey::new(secret).unwrap();
        assert_eq!(unnamed.name(), fingerprint(secret.as_bytes()));
    }

    #[test]
    fn names_are_checked() {
        let key = || SigningKey::new("whsec_a").unwrap();
        for good in [
            "current",
            "2026-12",
            "a",
            "acct_1:v2",
            "x@y/z+1.2",
            &"n".repeat(64),
        ] {
            assert_eq!(key().named(good).unwrap().name(), good);
        }
        for bad in [
            "",
            "has space",
            "quote\"",
            "line\nbreak",
            "é",
            &"n".repeat(65),
        ] {
            assert!(key().named(bad).is_err(), "{bad:?}");
        }
    }
}
