//! [`Readiness`]: whether the layer can take deliveries now.

use std::fmt;
use std::sync::Arc;

use super::config::Config;
use crate::store::{timed, Inbox, StoreError};

/// Whether a [`ClinkLayer`](super::ClinkLayer) can take deliveries now:
/// its idempotency store answers within the layer's store timeout (for an
/// [`InboxIntake`](super::InboxIntake), its inbox does). Serve it on a
/// health route so that a load balancer stops sending deliveries to an
/// instance that would answer every one `503`.
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

    /// Pings the idempotency store (or, for an
    /// [`InboxIntake`](super::InboxIntake), writes to the inbox as a
    /// delivery would: a full disk, a read-only file or a lost connection
    /// is not ready), within the layer's store timeout.
    ///
    /// # Errors
    ///
    /// [`NotReady`] with the reason (it never contains a connection string
    /// or a secret) when the store does not answer.
    pub async fn check(&self) -> Result<(), NotReady> {
        let config = &self.config;
        match &self.inbox {
            Some(inbox) => timed(config.settings.store_timeout, inbox.check_writable())
                .await
                .map_err(NotReady),
            None => timed(config.settings.store_timeout, config.store.ping())
                .await
                .map_err(NotReady),
        }
    }
}

/// Why the layer is not ready: its store did not answer.
#[derive(Debug)]
pub struct NotReady(StoreError);

impl NotReady {
    /// The store's error.
    #[must_use]
    pub fn store_error(&self) -> &StoreError {
        &self.0
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not ready: {}", self.0)
    }
}

impl std::error::Error for NotReady {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}
