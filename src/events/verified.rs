//! [`VerifiedEvent`]: an event with the facts of its verification, as the
//! [layer](crate::ClinkLayer) hands it on and
//! [`EventRouter::dispatch`](crate::EventRouter::dispatch) takes it; and
//! [`InboxAttempt`], what a handler run by inbox workers knows of its run.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::RawEvent;
use crate::signature::{KeyName, Verified};
use crate::Timestamp;

/// A verified Clink event: the event (envelope read, data still raw JSON),
/// the merchant account it came for, when it was signed and which key
/// signed it.
///
/// [`ClinkLayer`](crate::ClinkLayer) puts one in the request extensions of
/// every request its inner service receives and in the extensions of the
/// response to every verified delivery;
/// [`EventRouter::dispatch`](crate::EventRouter::dispatch) takes one. Code
/// that verifies by itself (a queue consumer) makes one with
/// [`new`](Self::new); code that kept an event to handle later, with
/// [`earlier`](Self::earlier).
///
/// ```
/// use clink_webhooks::{sign, RawEvent, Timestamp, Verifier, VerifiedEvent};
///
/// let verifier = Verifier::new("whsec_test")?;
/// let body = br#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"ord_1"}}"#;
/// let ts = Timestamp::now().as_millis().to_string();
/// let verified = verifier.verify(&ts, &sign("whsec_test", &ts, body), body)?;
/// let event = VerifiedEvent::new(RawEvent::from_slice(body)?, &verified);
/// assert_eq!(event.event().id(), "evt_1");
/// assert_eq!(event.key_name(), verifier.key_names().next().unwrap());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    event: RawEvent,
    signed_at: Timestamp,
    key_name: KeyName,
    /// Made from a signature checked just now ([`new`](Self::new)), not
    /// said to have been checked before ([`earlier`](Self::earlier)): what
    /// the axum extractors take from a request.
    checked_now: bool,
}

impl VerifiedEvent {
    /// `event`, verified just now as `verified` says. `event` must be read
    /// from the very body `verified` checked: nothing here ties the two
    /// together, and the axum extractors and an `EventRouter` served as a
    /// service take such an event, put in a request's extensions, as
    /// verified for that request. (A middleware of your own that pairs a
    /// `Verified` with another body lets that body through unchecked.)
    #[must_use]
    pub fn new(event: RawEvent, verified: &Verified) -> Self {
        Self {
            event,
            signed_at: verified.signed_at(),
            key_name: verified.key_label().clone(),
            checked_now: true,
        }
    }

    /// `event`, verified earlier (when it was received and kept), signed at
    /// `signed_at` under the key named `key_name`, for
    /// [`EventRouter::dispatch`](crate::EventRouter::dispatch). Neither the
    /// axum extractors nor an `EventRouter` served as a service take one
    /// from a request: only one made from a signature checked for that
    /// request (as the layer makes it).
    #[must_use]
    pub fn earlier(event: RawEvent, signed_at: Timestamp, key_name: &str) -> Self {
        Self {
            event,
            signed_at,
            key_name: KeyName::known(key_name),
            checked_now: false,
        }
    }

    /// Whether it was made from a signature checked just now (see
    /// [`earlier`](Self::earlier)).
    pub(crate) fn checked_now(&self) -> bool {
        self.checked_now
    }

    /// The merchant account the delivery was for, when the layer has a
    /// [key source](crate::accounts); `None` with a single verifier.
    #[must_use]
    pub fn account(&self) -> Option<&str> {
        self.event.account()
    }

    /// The event: envelope read, data still raw JSON.
    #[must_use]
    pub fn event(&self) -> &RawEvent {
        &self.event
    }

    /// The event, owned.
    #[must_use]
    pub fn into_event(self) -> RawEvent {
        self.event
    }

    /// When Clink signed this delivery (`X-Clink-Timestamp`).
    #[must_use]
    pub fn signed_at(&self) -> Timestamp {
        self.signed_at
    }

    /// The [name](crate::SigningKey::named) of the signing key that matched
    /// (its fingerprint when it has none), as metrics and logs say it.
    #[must_use]
    pub fn key_name(&self) -> &str {
        self.key_name.as_str()
    }

    /// See [`RawEvent::forget_predecoded`].
    pub(crate) fn forget_predecoded(&mut self) {
        self.event.forget_predecoded();
    }

    /// A clone that carries the resource decoded with the envelope, taken
    /// out of this event: see [`RawEvent::lend`].
    pub(crate) fn lend(&mut self) -> Self {
        Self {
            event: self.event.lend(),
            signed_at: self.signed_at,
            key_name: self.key_name.clone(),
            checked_now: self.checked_now,
        }
    }

    /// The key's name, for a metric label.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn key_label(&self) -> &KeyName {
        &self.key_name
    }
}

/// What a handler run by [inbox workers](crate::inbox::Workers) knows of
/// its run: the event's row in the inbox, the attempt, and the fencing token
/// of the lease it runs under. Found with [`Event::inbox_attempt`](super::Event::inbox_attempt)
/// (and on [`RawEvent`]); `None` when the event came straight from a delivery.
///
/// A handler whose effects are writes to the inbox's own database passes it
/// to the inbox's transactional completion (`PostgresInbox::complete_in`),
/// so that its writes and the event's completion commit together.
pub struct InboxAttempt {
    seq: i64,
    attempt: u32,
    token: String,
    completed: AtomicBool,
}

impl fmt::Debug for InboxAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxAttempt")
            .field("seq", &self.seq)
            .field("attempt", &self.attempt)
            .field("completed", &self.is_completed())
            .finish_non_exhaustive()
    }
}

/// Two attempts are the same when they are the same run of the same row.
impl PartialEq for InboxAttempt {
    fn eq(&self, other: &Self) -> bool {
        (self.seq, self.attempt, &self.token) == (other.seq, other.attempt, &other.token)
    }
}

impl InboxAttempt {
    pub(crate) fn new(seq: i64, attempt: u32, token: String) -> Self {
        Self {
            seq,
            attempt,
            token,
            completed: AtomicBool::new(false),
        }
    }

    /// The event's sequence number in the inbox.
    #[must_use]
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// Which attempt this is: 1 for the first run.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The fencing token of the lease the event runs under.
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Notes that the handler completed the event in its own transaction.
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn mark_completed(&self) {
        self.completed.store(true, Ordering::SeqCst);
    }

    /// Whether the handler completed the event in its own transaction.
    #[must_use]
    pub fn is_completed(&self) -> bool {
        self.completed.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_event_says_when_it_was_signed_and_under_which_key() {
        let raw = RawEvent::from_slice(br#"{"id":"evt_1","type":"order.created","data":{}}"#)
            .unwrap()
            .with_account("acct_1");
        let signed_at = Timestamp::from_millis(1_700_000_000_000);
        let verified = VerifiedEvent::earlier(raw, signed_at, "previous");
        assert_eq!(verified.signed_at(), signed_at);
        assert_eq!(verified.key_name(), "previous");
        assert_eq!(verified.key_label().as_str(), "previous");
        assert_eq!(verified.account(), Some("acct_1"));
        assert_eq!(verified.event().id(), "evt_1");
        assert_eq!(verified.into_event().id(), "evt_1");
    }

    #[test]
    fn an_attempt_is_its_row_run_and_token() {
        let attempt = InboxAttempt::new(3, 2, "tok_1".to_owned());
        assert_eq!(
            (attempt.seq(), attempt.attempt(), attempt.token()),
            (3, 2, "tok_1")
        );
        assert!(!attempt.is_completed());
        attempt.mark_completed();
        assert!(attempt.is_completed());
        assert_eq!(attempt, InboxAttempt::new(3, 2, "tok_1".to_owned()));
        for other in [
            InboxAttempt::new(4, 2, "tok_1".to_owned()),
            InboxAttempt::new(3, 1, "tok_1".to_owned()),
            InboxAttempt::new(3, 2, "tok_2".to_owned()),
        ] {
            assert_ne!(attempt, other);
        }
        let debug = format!("{attempt:?}");
        assert_eq!(
            debug,
            "InboxAttempt { seq: 3, attempt: 2, completed: true, .. }"
        );
    }
}
