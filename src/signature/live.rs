//! [`LiveVerifier`]: a verifier whose keys change while it serves.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use super::{SigningKey, Verifier};

/// A [`Verifier`] shared by everything that verifies, whose keys can be
/// replaced while deliveries are being verified: give one clone to
/// [`ClinkLayer::live`](crate::ClinkLayer::live) (or read
/// [`current`](Self::current) in code of your own) and keep another to
/// [`rotate`](Self::rotate) or [`replace`](Self::replace) the keys. A
/// change applies to every delivery that starts after it; one being
/// verified finishes with the keys it started with.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use clink_webhooks::signature::{sign, LiveVerifier, SigningKey, Verifier};
///
/// let live = LiveVerifier::new(Verifier::new("whsec_old")?);
/// let serving = live.clone(); // the layer's copy
/// live.rotate(SigningKey::new("whsec_new")?, Duration::from_secs(3600));
///
/// let ts = clink_webhooks::Timestamp::now().as_millis().to_string();
/// let signed = sign("whsec_new", &ts, b"{}");
/// assert!(serving.current().verify(&ts, &signed, b"{}").is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct LiveVerifier {
    current: Arc<RwLock<Arc<Verifier>>>,
}

impl LiveVerifier {
    /// A live verifier that starts with `verifier`'s keys and settings.
    #[must_use]
    pub fn new(verifier: Verifier) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(verifier))),
        }
    }

    /// The verifier in use now.
    #[must_use]
    pub fn current(&self) -> Arc<Verifier> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Uses `verifier` from now on.
    pub fn replace(&self, verifier: Verifier) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(verifier);
    }

    /// Accepts `key` from now on, and the keys in use now for `grace` more
    /// at most, for the deliveries stamped before the rotation alone (Clink
    /// signs nothing with a secret after rotating it; see
    /// [`Verifier::rotated`]). Two rotations at once both apply.
    pub fn rotate(&self, key: SigningKey, grace: Duration) {
        self.rotate_at(key, grace, SystemTime::now());
    }

    /// [`rotate`](Self::rotate) as of `now`.
    pub(crate) fn rotate_at(&self, key: SigningKey, grace: Duration, now: SystemTime) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(current.rotated_at(key, grace, now));
    }
}

impl fmt::Debug for LiveVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LiveVerifier")
            .field(&self.current())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::sign;

    const AT: &str = "1700000000000";

    fn at(offset: Duration) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000) + offset
    }

    fn accepts(live: &LiveVerifier, secret: &str, now: SystemTime) -> bool {
        let signature = sign(secret, AT, b"{}");
        live.current().verify_at(AT, &signature, b"{}", now).is_ok()
    }

    #[test]
    fn every_clone_sees_a_replacement_at_once() {
        let live = LiveVerifier::new(Verifier::new("whsec_old").unwrap());
        let serving = live.clone();
        let before = serving.current();
        assert!(accepts(&serving, "whsec_old", at(Duration::ZERO)));
        live.replace(Verifier::new("whsec_new").unwrap());
        assert!(accepts(&serving, "whsec_new", at(Duration::ZERO)));
        assert!(!accepts(&serving, "whsec_old", at(Duration::ZERO)));
        // A delivery that began before keeps the keys it started with.
        assert!(before
            .verify_at(AT, &sign("whsec_old", AT, b"{}"), b"{}", at(Duration::ZERO))
            .is_ok());
    }

    #[test]
    fn a_rotation_keeps_the_old_keys_for_the_grace_period_only() {
        let live = LiveVerifier::new(Verifier::new("whsec_old").unwrap());
        let serving = live.clone();
        let grace = Duration::from_secs(60);
        live.rotate_at(
            SigningKey::new("whsec_new").unwrap(),
            grace,
            at(Duration::ZERO),
        );
        assert_eq!(serving.current().key_count(), 2);
        assert!(accepts(&serving, "whsec_new", at(Duration::ZERO)));
        assert!(accepts(
            &serving,
            "whsec_old",
            at(grace - Duration::from_millis(1))
        ));
        assert!(!accepts(&serving, "whsec_old", at(grace)));
        assert!(accepts(&serving, "whsec_new", at(grace)));
        // `rotate` is as of the system clock, long after the old key's
        // expiry above: the newest key and the one still active remain.
        let newer = SigningKey::new("whsec_newer").unwrap();
        let names = [
            newer.name().to_owned(),
            SigningKey::new("whsec_new").unwrap().name().to_owned(),
        ];
        live.rotate(newer, grace);
        assert!(serving
            .current()
            .key_names()
            .eq(names.iter().map(String::as_str)));
    }

    #[test]
    fn debug_shows_the_current_verifier_without_secrets() {
        let live = LiveVerifier::new(Verifier::new("whsec_old").unwrap());
        let debug = format!("{live:?}");
        assert!(debug.starts_with("LiveVerifier(Verifier"), "{debug}");
        assert!(!debug.contains("whsec_old"), "{debug}");
    }
}
