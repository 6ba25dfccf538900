//! [`Readiness`]: whether the layer can take deliveries now.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use super::config::{Config, Keys};
use crate::store::{timed, Inbox, StoreError};

/// Whether a [`ClinkLayer`](super::ClinkLayer) can take deliveries now:
/// one of its signing keys is active (for a layer with one set of keys,
/// fixed or live; a [key source](crate::accounts::KeySource)'s accounts
/// are not looked at), and its idempotency store answers within the
/// layer's store timeout (for an [`InboxIntake`](super::InboxIntake), its
/// inbox does) and has room for a new claim (a
/// [`MemoryStore`](crate::store::MemoryStore) full of live claims answers
/// [`Full`](crate::store::StoreErrorKind::Full) until one ends). Serve it on a health route so that a load balancer stops
/// sending deliveries to an instance that would answer every one `503`.
/// A freshness store a router was given with
/// [`EventRouter::ordering`](crate::EventRouter::ordering) apart from the
/// layer's store is not pinged: while only it is down, the deliveries of
/// the types it tracks are answered `503` and the check still passes (a
/// store of both kinds given to both, as the crate's stores are, is
/// pinged as the layer's).
///
/// Cheap to clone; made by [`ClinkLayer::readiness`](super::ClinkLayer::readiness)
/// and [`InboxIntake::readiness`](super::InboxIntake::readiness).
///
/// ```
/// use clink_webhooks::{ClinkLayer, Verifier};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = ClinkLayer::new(Verifier::new("whsec_test")?);
/// let readiness = layer.readiness();
/// // In a health handler: 200 when Ok, 503 with the reason otherwise.
/// assert!(readiness.check().await.is_ok());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Readiness {
    config: Arc<Config>,
    inbox: Option<Arc<dyn Inbox>>,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness").finish_non_exhaustive()
    }
}

impl Readiness {
    pub(super) fn new(config: Arc<Config>, inbox: Option<Arc<dyn Inbox>>) -> Self {
        Self { config, inbox }
    }

    /// Looks at the layer's keys (every delivery is answered `503` when
    /// each has expired), then pings the idempotency store (or, for an
    /// [`InboxIntake`](super::InboxIntake), writes to the inbox as a
    /// delivery would: a full disk, a read-only file or a lost connection
    /// is not ready), within the layer's store timeout.
    ///
    /// # Errors
    ///
    /// [`NotReady`] with the reason (it never contains a connection string
    /// or a secret) when every key has expired or the store does not
    /// answer.
    pub async fn check(&self) -> Result<(), NotReady> {
        let config = &self.config;
        let verifier = match &config.keys {
            Keys::One(verifier) => Some(Arc::clone(verifier)),
            Keys::Live(live) => Some(live.current()),
            Keys::PerAccount { .. } => None,
        };
        if verifier.is_some_and(|verifier| !verifier.has_active_key_at(SystemTime::now())) {
            return Err(NotReady(Reason::NoActiveKey));
        }
        let checked = match &self.inbox {
            Some(inbox) => {
                timed(config.settings.store_timeout, async {
                    inbox.check_writable().await
                })
                .await
            }
            None => {
                timed(config.settings.store_timeout, async {
                    config.store.ping().await
                })
                .await
            }
        };
        checked.map_err(|error| NotReady(Reason::Store(error)))
    }
}

/// Why the layer is not ready: every signing key has expired, or its
/// store did not answer, or answered that it has no room for a claim.
#[derive(Debug)]
pub struct NotReady(Reason);

#[derive(Debug)]
enum Reason {
    NoActiveKey,
    Store(StoreError),
}

impl NotReady {
    /// The store's error, when the store did not answer or has no room
    /// for a claim (`None` when every key has expired).
    #[must_use]
    pub fn store_error(&self) -> Option<&StoreError> {
        match &self.0 {
            Reason::Store(error) => Some(error),
            Reason::NoActiveKey => None,
        }
    }

    /// Whether every signing key of the layer has expired: the
    /// configuration is at fault (`no_active_key`); the endpoint's current
    /// secret mends it (a restart with it, or
    /// [`LiveVerifier::replace`](crate::LiveVerifier::replace)).
    #[must_use]
    pub fn no_active_key(&self) -> bool {
        matches!(self.0, Reason::NoActiveKey)
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Reason::Store(error) => write!(f, "not ready: {error}"),
            Reason::NoActiveKey => f.write_str(
                "not ready: every signing key has expired (no_active_key); configure the \
                 endpoint's current signing secret",
            ),
        }
    }
}

impl std::error::Error for NotReady {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.store_error()
            .map(|error| error as &(dyn std::error::Error + 'static))
    }
}
