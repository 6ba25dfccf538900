//! Rotating an endpoint's signing secret while deliveries go on:
//! [`Client::rotate_signing_secret`] installs the new secret as soon as
//! Clink answers and keeps the old one for a grace period, so that only a
//! delivery signed in between is refused (and retried by Clink).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{Mutex as TurnLock, OwnedMutexGuard};

use super::endpoints::{Endpoint, WebhookSecret};
use super::error::ApiError;
use super::Client;
use crate::accounts::KeyMap;
use crate::signature::{LiveVerifier, SigningKey};
use crate::BoxError;

/// The default grace period: how long the keys in use before a rotation
/// keep verifying after it; only deliveries stamped before the rotation
/// (see [`Verifier::rotated`](crate::signature::Verifier::rotated)).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// Where a rotation puts the new signing secret: the keys a layer or your
/// code verifies with while it serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LiveKeys {
    /// A [`LiveVerifier`], as [`ClinkLayer::live`](crate::ClinkLayer::live) serves.
    Verifier(LiveVerifier),
    /// One account of a [`KeyMap`], as
    /// [`ClinkLayer::with_key_source`](crate::ClinkLayer::with_key_source) serves.
    Account {
        /// The map the layer reads.
        keys: KeyMap,
        /// The account whose endpoint is rotated.
        account: String,
    },
}

impl LiveKeys {
    /// The keys of `account` in `keys`.
    pub fn account(keys: KeyMap, account: impl Into<String>) -> Self {
        Self::Account {
            keys,
            account: account.into(),
        }
    }
}

impl From<LiveVerifier> for LiveKeys {
    fn from(live: LiveVerifier) -> Self {
        Self::Verifier(live)
    }
}

/// A rotation that went through.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Rotated {
    /// The endpoint after the rotation, without its plain secret.
    pub endpoint: Endpoint,
    /// The [name](SigningKey::name) of the new key in the verifier: its
    /// fingerprint, so metrics show when deliveries move to it.
    pub key_name: String,
    /// Until when the keys in use before the rotation keep verifying (or
    /// their own expiry, when sooner); `None` when the grace period is too
    /// long to represent as a time ([`Duration::MAX`], say): they are then
    /// kept with no end but their own expiry, as
    /// [`Verifier::rotated`](crate::Verifier::rotated) keeps them.
    pub previous_until: Option<SystemTime>,
    /// The latest `X-Clink-Timestamp` a delivery signed with the keys in
    /// use before the rotation is accepted with (the rotation, and the
    /// skew the window allows the sender's clock): to load them again
    /// with, through [`SigningKey::signed_until`], if the process restarts
    /// within the grace period.
    pub previous_signed_until: SystemTime,
}

/// A rotation that did not go through, or went through on Clink's side
/// only in part.
///
/// When Clink rotated and the error holds the only copy of the new secret
/// ([`AccountRemoved`](Self::AccountRemoved), [`Persist`](Self::Persist),
/// or an [`Api`](Self::Api) error whose answer carried one),
/// [`new_secret`](Self::new_secret) gives it, so that it can still be
/// stored. `Debug` and `Display` never show it.
#[non_exhaustive]
pub enum RotationError {
    /// The account is not in the [`KeyMap`] when the rotation starts;
    /// nothing was rotated.
    UnknownAccount,
    /// The call failed. If it failed after Clink rotated (a lost answer),
    /// Clink signs with a secret you do not have: rotate again. An answer
    /// that said no but carried a secret ([`ApiError::new_secret`]) was
    /// neither installed nor handed to `persist`; [`new_secret`](Self::new_secret)
    /// gives it.
    Api(ApiError),
    /// Clink rotated but returned no usable secret; its deliveries will be
    /// refused until you rotate again or set the secret by hand.
    NoSecret,
    /// Clink rotated, but the account was removed from the [`KeyMap`]
    /// while the call was under way: the new secret verifies nothing, and
    /// it was not handed to `persist` (storing it could bring back an
    /// account that was removed on purpose). Clink signs the account's
    /// deliveries with it from now on and the old secret no longer works:
    /// store it from [`new_secret`](Self::new_secret) and put the account
    /// back with it if it should still receive, or rotate again later.
    AccountRemoved {
        /// The new secret, Clink's only copy for you.
        secret: WebhookSecret,
    },
    /// The new secret is live in the verifier, but `persist` failed: store
    /// it, from [`new_secret`](Self::new_secret), before the process
    /// restarts, or rotate again.
    Persist {
        /// Why `persist` failed.
        error: BoxError,
        /// The new secret `persist` was given.
        secret: WebhookSecret,
    },
    /// The rotation's task was cancelled before it said how it went (the
    /// runtime is shutting down): what it came to is not known. Clink may
    /// have rotated, and the new secret may then verify here without having
    /// been stored, or be nowhere at all: rotate again once the process
    /// runs again.
    Cancelled,
}

impl RotationError {
    /// The new signing secret, when Clink rotated and this error holds it
    /// ([`AccountRemoved`](Self::AccountRemoved),
    /// [`Persist`](Self::Persist)), or when Clink's answer said no but
    /// carried one ([`Api`](Self::Api), see [`ApiError::new_secret`]);
    /// `None` for the others, where nobody has a new secret.
    #[must_use]
    pub fn new_secret(&self) -> Option<&WebhookSecret> {
        match self {
            Self::AccountRemoved { secret } | Self::Persist { secret, .. } => Some(secret),
            Self::Api(error) => error.new_secret(),
            Self::UnknownAccount | Self::NoSecret | Self::Cancelled => None,
        }
    }
}

impl fmt::Debug for RotationError {
    /// The secret it may hold is shown as `[redacted]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = format_args!("[redacted]");
        match self {
            Self::UnknownAccount => f.write_str("UnknownAccount"),
            Self::Api(error) => f.debug_tuple("Api").field(error).finish(),
            Self::NoSecret => f.write_str("NoSecret"),
            Self::Cancelled => f.write_str("Cancelled"),
            Self::AccountRemoved { .. } => f
                .debug_struct("AccountRemoved")
                .field("secret", &redacted)
                .finish(),
            Self::Persist { error, secret } => f
                .debug_struct("Persist")
                .field("error", &without_secret(error, secret))
                .field("secret", &redacted)
                .finish(),
        }
    }
}

impl fmt::Display for RotationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownAccount => f.write_str(
                "signing secret rotation: the account is not in the key map; nothing was rotated",
            ),
            Self::Api(error) if error.new_secret().is_some() => write!(
                f,
                "signing secret rotation: {error} (the answer carried a signing secret, which \
                 was not installed; the error holds it (new_secret): if Clink rotated, store it \
                 or rotate again)"
            ),
            Self::Api(error) => write!(
                f,
                "signing secret rotation: {error} (if Clink rotated before the failure, rotate again)"
            ),
            Self::NoSecret => f.write_str(
                "signing secret rotation: Clink rotated the secret but returned none; rotate again",
            ),
            Self::AccountRemoved { .. } => f.write_str(
                "signing secret rotation: Clink rotated the secret, but the account was removed \
                 from the key map meanwhile, so the new secret verifies nothing here and was not \
                 stored; the error holds it (new_secret): store it, or rotate again",
            ),
            Self::Persist { error, secret } => write!(
                f,
                "signing secret rotation: the new secret verifies now, but storing it failed: \
                 {}; the error holds it (new_secret): store it before the process restarts",
                without_secret(error, secret)
            ),
            Self::Cancelled => f.write_str(
                "signing secret rotation: its task was cancelled (the runtime is shutting down), \
                 so what it came to is not known: Clink may have rotated the secret, and nobody \
                 may have the new one; rotate again",
            ),
        }
    }
}

impl std::error::Error for RotationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Api(error) => Some(error),
            // Its text may repeat the secret (see `without_secret`): the
            // error itself is in the variant's field, not in a chain that
            // reports print whole.
            Self::Persist { .. }
            | Self::UnknownAccount
            | Self::NoSecret
            | Self::AccountRemoved { .. }
            | Self::Cancelled => None,
        }
    }
}

impl Client {
    /// Rotates the signing secret of endpoint `endpoint_id` while `keys`
    /// serve: calls `rotate-secret`, puts the new secret into `keys` at once
    /// (Clink signs with it from the moment it answers), keeps the keys in
    /// use before for `grace` more (deliveries signed before the rotation
    /// are still being retried; a `grace` too long to represent as a time,
    /// such as [`Duration::MAX`], keeps them with no end but their own
    /// expiry), then hands the new secret to `persist` to
    /// store it where your process reads it at start-up. The secret is
    /// never logged or printed. If `persist` fails, or the account leaves
    /// the [`KeyMap`] while the call is under way, the error holds the new
    /// secret ([`RotationError::new_secret`]).
    ///
    /// The call, the install and `persist` run in a task of their own, so
    /// a caller that gives up midway (a request timeout, a dropped request)
    /// stops none of them: the new secret is installed and handed to
    /// `persist` all the same, which is why `persist` must be `Send` and
    /// `'static`. When nobody waits any more for what happened, a failure
    /// is logged at `error` (a failed `persist` among them: the new secret
    /// then verifies only until the process stops), and a success at
    /// `info`. If the call times out after Clink rotated (an answer lost on
    /// the way), nobody has the new secret: rotate again.
    ///
    /// Rotations of one endpoint through one [`Client`] (or its clones)
    /// run one at a time, each from the call to the end of `persist`: a
    /// second waits for the first, so that the secret installed and stored
    /// last is the one Clink signs with. A caller that gives up while it
    /// waits has started nothing, and a `persist` that never returns holds
    /// every later rotation of that endpoint through this client (bound
    /// your store's call by a timeout of its own). Another process rotating
    /// the same endpoint is not held back: let one process rotate each
    /// endpoint.
    ///
    /// Between Clink rotating and its answer arriving, a delivery signed
    /// with the new secret is refused (`401`, and Clink retries it); other
    /// processes serving the endpoint refuse them until they read the
    /// secret `persist` stored.
    ///
    /// `keys` (or the account of a [`KeyMap`]) must hold the secrets of
    /// this endpoint only: every key it held before is taken for the one
    /// rotated out, and ends with `grace`. A verifier that also holds the
    /// current secret of another endpoint (`from_secret_list` with the
    /// secrets of two endpoints) would refuse that endpoint's deliveries
    /// once `grace` ends: give each endpoint a verifier, or an account of
    /// its own.
    ///
    /// # Errors
    ///
    /// [`RotationError`], which says what state things are in;
    /// [`Cancelled`](RotationError::Cancelled) when the runtime shuts down
    /// while the rotation runs, which leaves what it came to unknown.
    ///
    /// # Panics
    ///
    /// When the rotation's task panics (in `persist`, say), with its panic.
    pub async fn rotate_signing_secret<F, Fut, E>(
        &self, endpoint_id: &str, keys: impl Into<LiveKeys>, grace: Duration, persist: F,
    ) -> Result<Rotated, RotationError>
    where
        F: FnOnce(WebhookSecret) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let keys = keys.into();
        if let LiveKeys::Account { keys, account } = &keys {
            if keys.get(account).is_none() {
                return Err(RotationError::UnknownAccount);
            }
        }
        // One rotation of an endpoint at a time: two at once could install
        // and store their secrets in another order than Clink rotated, and
        // leave the one Clink signs with to expire. A caller that gives up
        // while it waits has started nothing.
        let turn = self.rotations().turn(endpoint_id).await;
        // Looked at again once it is this rotation's turn: the account may
        // have been removed while another rotation of the endpoint ran, and
        // then nothing is rotated.
        if let LiveKeys::Account { keys, account } = &keys {
            if keys.get(account).is_none() {
                return Err(RotationError::UnknownAccount);
            }
        }
        // Everything runs in a task of its own: a caller that gives up (a
        // timeout, a dropped request) cannot stop between Clink rotating,
        // the new secret verifying and `persist` storing it.
        let client = self.clone();
        let endpoint_id = endpoint_id.to_owned();
        let (tell, told) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let result = client
                .rotate_install_persist(&endpoint_id, &keys, grace, persist)
                .await;
            drop(turn);
            if let Err(unheard) = tell.send(result) {
                log_unheard(&endpoint_id, &unheard);
            }
        });
        match told.await {
            Ok(result) => result,
            // The task ended without a word: it panicked (passed on here),
            // or the runtime is shutting down and cancelled it, at a point
            // nobody knows.
            Err(_) => match task.await {
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                _ => Err(RotationError::Cancelled),
            },
        }
    }

    /// The rotation itself: the call, the install, then `persist`.
    async fn rotate_install_persist<F, Fut, E>(
        &self, endpoint_id: &str, keys: &LiveKeys, grace: Duration, persist: F,
    ) -> Result<Rotated, RotationError>
    where
        F: FnOnce(WebhookSecret) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Into<BoxError>,
    {
        let mut endpoint = self
            .rotate_endpoint_secret(endpoint_id)
            .await
            .map_err(RotationError::Api)?;
        let secret = endpoint
            .signing_secret
            .take()
            .filter(|secret| super::client::is_a_secret(secret.expose()))
            .ok_or(RotationError::NoSecret)?;
        let key = SigningKey::new(secret.expose()).map_err(|_| RotationError::NoSecret)?;
        let key_name = key.name().to_owned();
        let now = SystemTime::now();
        let previous_signed_until = match keys {
            LiveKeys::Verifier(live) => live.current().last_signed_at_rotation(now),
            LiveKeys::Account { keys, account } => keys
                .get(account)
                .map_or(now, |verifier| verifier.last_signed_at_rotation(now)),
        };
        match keys {
            LiveKeys::Verifier(live) => live.rotate_at(key, grace, now),
            LiveKeys::Account { keys, account } => {
                if !keys.rotate_at(account, key, grace, now) {
                    // Removed while Clink rotated: the old secret is void
                    // and the new one verifies nothing; the caller gets it,
                    // not `persist`.
                    return Err(RotationError::AccountRemoved { secret });
                }
            }
        }
        tracing::info!(
            endpoint = %crate::events::printable(&endpoint.id),
            key = %key_name,
            grace_secs = grace.as_secs(),
            "rotated the endpoint's signing secret; the new key verifies now, the previous \
             ones for the grace period"
        );
        let rotated = Rotated {
            endpoint,
            key_name,
            // As the verifier computes it: a grace past what a time can
            // hold has no end, and must not panic after Clink rotated.
            previous_until: now.checked_add(grace),
            previous_signed_until,
        };
        // A copy stays here: if `persist` fails, the error hands it back.
        persist(secret.clone())
            .await
            .map_err(|error| RotationError::Persist {
                error: error.into(),
                secret,
            })?;
        Ok(rotated)
    }
}

/// The rotations under way through one [`Client`] and its clones: a lock
/// for each endpoint being rotated, dropped with its last turn.
#[derive(Default)]
pub(super) struct Rotations {
    locks: Arc<Mutex<HashMap<String, Arc<TurnLock<()>>>>>,
}

impl Rotations {
    /// Waits until no other rotation of `endpoint_id` is under way here,
    /// and holds its turn until the result is dropped.
    async fn turn(&self, endpoint_id: &str) -> Turn {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(locks.entry(endpoint_id.to_owned()).or_default())
        };
        let guard = match Arc::clone(&lock).try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                tracing::info!(
                    endpoint = %crate::events::printable(endpoint_id),
                    "waiting for the rotation of this endpoint already under way"
                );
                Arc::clone(&lock).lock_owned().await
            }
        };
        drop(lock);
        Turn {
            guard: Some(guard),
            locks: Arc::clone(&self.locks),
            endpoint_id: endpoint_id.to_owned(),
        }
    }
}

/// An endpoint's turn to rotate; the next waits until it is dropped.
struct Turn {
    guard: Option<OwnedMutexGuard<()>>,
    locks: Arc<Mutex<HashMap<String, Arc<TurnLock<()>>>>>,
    endpoint_id: String,
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.guard.take());
        // The lock goes when nobody else holds or waits for it.
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        if locks
            .get(&self.endpoint_id)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.endpoint_id);
        }
    }
}

/// What `persist` said when it failed, without the secret it was given: a
/// store's error can repeat the value it could not store (PostgreSQL's
/// `DETAIL` of a unique violation does), and this text is printed and
/// logged.
fn without_secret(error: &BoxError, secret: &WebhookSecret) -> String {
    let secret = secret.expose();
    let mut text = error.to_string();
    // The secret whole, then what follows its `whsec_` prefix, which a
    // store may keep apart.
    let bare = secret.strip_prefix("whsec_").unwrap_or(secret);
    for part in [secret, bare] {
        if part.len() >= 8 {
            text = text.replace(part, "[the new secret]");
        }
    }
    text
}

/// Logs what a rotation came to when its caller no longer waits for it:
/// nobody else would learn of it. Never the secret.
fn log_unheard(endpoint_id: &str, result: &Result<Rotated, RotationError>) {
    let endpoint = crate::events::printable(endpoint_id);
    match result {
        Ok(rotated) => tracing::info!(
            endpoint = %endpoint,
            key = %rotated.key_name,
            "the signing secret rotation finished after its caller gave up: the new secret \
             verifies and was stored"
        ),
        Err(RotationError::Persist { error, secret }) => tracing::error!(
            endpoint = %endpoint,
            error = %without_secret(error, secret),
            "storing the rotated signing secret failed after the rotation's caller gave up, so \
             nobody has it: it verifies until the process stops, and after a restart every \
             delivery is refused; rotate again"
        ),
        Err(error) => tracing::error!(
            endpoint = %endpoint,
            error = %error,
            "a signing secret rotation failed after its caller gave up, and nobody else is \
             told: if Clink rotated, its deliveries are refused until the secret is rotated again"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(rotations: &Rotations) -> usize {
        rotations.locks.lock().unwrap().len()
    }

    /// A turn holds its endpoint, not others; the next turn of the same
    /// endpoint comes once it is dropped; and the lock goes with the last
    /// turn, so the map holds only the endpoints under way.
    #[tokio::test]
    async fn turns_of_one_endpoint_follow_each_other_and_leave_nothing_behind() {
        let rotations = Rotations::default();
        let first = rotations.turn("whk_1").await;
        let other = rotations.turn("whk_2").await;
        assert_eq!(held(&rotations), 2);
        let mut second = std::pin::pin!(rotations.turn("whk_1"));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            second.as_mut().poll(&mut cx).is_pending(),
            "waits for the first"
        );
        drop(first);
        let second = second.await;
        drop(other);
        assert_eq!(held(&rotations), 1);
        drop(second);
        assert_eq!(held(&rotations), 0);
    }
}
