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
    /// (see [`Verifier::rotated`]). Two rotations at once both apply.
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
