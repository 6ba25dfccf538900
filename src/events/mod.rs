//! Clink events: the envelope, every event type, and typed data per family.
//!
//! A delivery body is an envelope (`id`, `type`, `created`, `livemode`,
//! `data`). [`RawEvent::from_slice`] reads the envelope and keeps `data` as raw
//! JSON; [`RawEvent::decode`] turns it into an [`Event<T>`] with typed data.
//!
//! Clink's sources disagree on the shape, and every reported shape is
//! accepted: the resource directly in `data` or wrapped as `data.object`;
//! `created` as an RFC 3339 string or as epoch milliseconds; `livemode`
//! present or not. Unknown fields and unknown event names never fail a
//! delivery (but a name longer than 128 bytes, which no Clink name comes
//! near, is refused as no envelope).
//!
//! A key given twice is ambiguous: JSON does not say which copy counts, and
//! readers differ (most keep the last, some the first, some refuse). So a
//! body that repeats a key of the envelope (`id`, `type`, `created`,
//! `livemode`, `data`) or of the `data` wrapper (`object`) is not an
//! envelope: [`RawEvent::from_slice`] returns
//! [`EnvelopeError::DuplicateKey`] (code `duplicate_key`), which the layer
//! answers with `400` ([`Outcome::InvalidEnvelope`](crate::Outcome::InvalidEnvelope);
//! kept as dead in its [dead-letter inbox](crate::ClinkLayer::dead_letters)
//! if it has one), so the handler never runs on a guess. Keys repeated elsewhere (another
//! envelope key such as `object`, or inside the resource) are the business of
//! whatever reads them: the family types refuse a repeated field of theirs
//! when decoding, and a [`serde_json::Value`] keeps the last copy.
//!
//! Clink does not deliver in order; [`Event::object_key`] and
//! [`RawEvent::object_key`] tell which object an event is about (see
//! [`ObjectKey`]).
//!
//! ```
//! use clink_webhooks::data::Order;
//! use clink_webhooks::events::RawEvent;
//! use clink_webhooks::EventType;
//!
//! let body = br#"{"id":"evt_1","object":"event","created":1736942400000,"type":"order.succeeded",
//!                 "data":{"object":{"orderId":"ord_1","status":"success","amountTotal":19.99}}}"#;
//! let raw = RawEvent::from_slice(body)?;
//! assert_eq!(raw.event_type(), &EventType::OrderSucceeded);
//!
//! let event = raw.decode::<Order>()?;
//! assert_eq!(event.data.order_id.as_deref(), Some("ord_1"));
//! assert_eq!(event.created.unwrap().to_string(), "2025-01-15T12:00:00.000Z");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Timestamp;

mod construct;
mod envelope;
mod event_type;
mod object;
mod printable;
mod verified;
mod version;

use envelope::IdText;

pub use construct::EventError;
pub use event_type::*;
pub use object::ObjectKey;
pub use printable::{escape_invisible, has_invisible, is_invisible, printable};
pub use verified::{InboxAttempt, VerifiedEvent};
pub use version::{Freshness, Version};

/// A Clink event with its data decoded into `T`.
///
/// `T` is a family type such as [`Order`](crate::data::Order) or
/// [`Subscription`](crate::data::Subscription), or
/// [`serde_json::Value`] for families without a published schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Event<T = serde_json::Value> {
    /// The event id, unique per event, and taken to be the same on every
    /// retry of it: the idempotency store deduplicates by it (Clink's
    /// sources do not say otherwise, nor that it is).
    pub id: String,
    /// The event type, e.g. `order.succeeded`.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the event occurred, if the envelope says.
    pub created: Option<Timestamp>,
    /// `true` for live mode, `false` for test mode, `None` when the envelope does not say.
    pub livemode: Option<bool>,
    /// The resource the event is about.
    pub data: T,
    #[serde(skip)]
    freshness: Freshness,
    #[serde(skip)]
    account: Option<Arc<str>>,
    #[serde(skip)]
    attempt: Option<Arc<InboxAttempt>>,
}

impl<T> Event<T> {
    /// A new event, for tests and tools.
    pub fn new(id: impl Into<String>, event_type: EventType, data: T) -> Self {
        Self {
            id: id.into(),
            event_type,
            created: None,
            livemode: None,
            data,
            freshness: Freshness::Untracked,
            account: None,
            attempt: None,
        }
    }

    /// The merchant account this event was delivered for, when the layer
    /// serves several [accounts](crate::accounts); `None` otherwise.
    #[must_use]
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// Whether a newer event about the same object was already handled, as
    /// the [`EventRouter`](crate::EventRouter) found when it has a
    /// [`FreshnessStore`](crate::store::FreshnessStore); otherwise
    /// [`Freshness::Untracked`]. See [`ordering`](crate::ordering).
    #[must_use]
    pub fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    pub(crate) fn set_freshness(&mut self, freshness: Freshness) {
        self.freshness = freshness;
    }

    /// The run of this event by [inbox workers](crate::inbox::Workers), when
    /// they run it; `None` when it came straight from a delivery.
    #[must_use]
    pub fn inbox_attempt(&self) -> Option<&InboxAttempt> {
        self.attempt.as_deref()
    }

    /// This event's [`Version`]: its `created` time, then its id. `None`
    /// when the envelope has no `created`.
    #[must_use]
    pub fn version(&self) -> Option<Version> {
        self.created
            .map(|created| Version::new(created, self.id.clone()))
    }

    /// Sets `created`.
    #[must_use]
    pub fn with_created(mut self, created: Timestamp) -> Self {
        self.created = Some(created);
        self
    }

    /// Sets `livemode`.
    #[must_use]
    pub fn with_livemode(mut self, livemode: bool) -> Self {
        self.livemode = Some(livemode);
        self
    }
}

/// A verified event whose envelope is read and whose `data` is still raw JSON.
///
/// Cheap to clone: it shares the delivery's body bytes, and the id is a
/// span of them (unless the JSON spelled it with escapes).
pub struct RawEvent {
    body: Bytes,
    id: IdText,
    event_type: EventType,
    created: Option<Timestamp>,
    livemode: Option<bool>,
    data: Option<Range<usize>>,
    account: Option<Arc<str>>,
    attempt: Option<Arc<InboxAttempt>>,
    /// The resource, decoded while the envelope was read, for the router's
    /// typed handler (see [`RawEvent::from_bytes_for`]). It moves, never
    /// shared: a clone is made without it, and the router takes it out.
    predecoded: Option<Predecoded>,
}

impl Clone for RawEvent {
    /// A clone shares the body; it does not carry the resource decoded with
    /// the envelope (a typed decode of the clone reads it from the body).
    fn clone(&self) -> Self {
        Self {
            body: self.body.clone(),
            id: self.id.clone(),
            event_type: self.event_type.clone(),
            created: self.created,
            livemode: self.livemode,
            data: self.data.clone(),
            account: self.account.clone(),
            attempt: self.attempt.clone(),
            predecoded: None,
        }
    }
}

/// A check of the one-pass reading, for the fuzz targets only: it exists in
/// builds made with `--cfg fuzzing` (as `cargo fuzz` makes them), never
/// otherwise.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    use super::{DecodesTyped, EventType, RawEvent};

    /// Every type this crate knows, as a router with a typed handler for each.
    struct Every;

    impl DecodesTyped for Every {
        fn decodes_typed(&self, event_type: &EventType) -> bool {
            !matches!(event_type, EventType::Unknown(_))
        }
    }

    /// Reads `body` with its resource decoded on the way, as a router with a
    /// typed handler for every type reads it, and panics unless that agrees
    /// with reading the envelope and then decoding: the same envelope or
    /// error, and the same typed data or decode error.
    pub fn check_decoding_on_the_way(body: &[u8]) {
        let plain = RawEvent::from_slice(body);
        let decoding = RawEvent::read(bytes::Bytes::copy_from_slice(body), Some(&Every));
        let (mut plain, mut decoding) = match (plain, decoding) {
            (Ok(plain), Ok(decoding)) => (plain, decoding),
            (plain, decoding) => {
                assert_eq!(plain.err(), decoding.err());
                return;
            }
        };
        assert_eq!(plain.id(), decoding.id());
        assert_eq!(plain.event_type(), decoding.event_type());
        assert_eq!(plain.created(), decoding.created());
        assert_eq!(plain.livemode(), decoding.livemode());
        assert_eq!(plain.data_json(), decoding.data_json());
        assert_eq!(
            super::event_type::typed_data_json(&mut plain),
            super::event_type::typed_data_json(&mut decoding)
        );
    }
}

#[cfg(test)]
thread_local! {
    /// How many typed decodes on this thread took a resource decoded with
    /// the envelope: for tests that a path decodes in one pass.
    pub(crate) static PREDECODED_TAKEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A resource decoded into its type while the envelope was read, kept until
/// a typed decode takes it (a decode into another type drops it and reads
/// the body). It is moved from the event to the decode that takes it, never
/// shared, so it needs no lock.
pub(crate) struct Predecoded(Box<dyn Any + Send + Sync>);

impl Predecoded {
    /// `T` decoded from `deserializer`, moved once, into its box: the box is
    /// allocated first (a resource is some hundreds of bytes, and each move
    /// of it a copy).
    fn decode<'de, T, D>(deserializer: D) -> Result<Self, D::Error>
    where
        T: serde::Deserialize<'de> + Send + Sync + 'static,
        D: serde::Deserializer<'de>,
    {
        let slot = Box::<T>::new_uninit();
        let data: Box<T> = Box::write(slot, T::deserialize(deserializer)?);
        Ok(Self(data))
    }

    /// The resource, if it was decoded into `T`, still in its box: moved
    /// out of it only into the event it becomes part of.
    fn take<T: 'static>(self) -> Option<Box<T>> {
        self.0.downcast::<T>().ok()
    }

    /// Whether it holds a resource decoded into `T`.
    #[cfg(any(test, fuzzing))]
    fn holds<T: 'static>(&self) -> bool {
        self.0.is::<T>()
    }
}

/// Which event types a reader wants decoded while the envelope is read:
/// those an [`EventRouter`](crate::EventRouter) has a typed handler for.
pub(crate) trait DecodesTyped: Send + Sync {
    /// Whether events of type `event_type` go to a typed handler.
    fn decodes_typed(&self, event_type: &EventType) -> bool;
}

impl fmt::Debug for RawEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawEvent")
            .field("id", &self.id())
            .field("event_type", &self.event_type)
            .field("created", &self.created)
            .field("livemode", &self.livemode)
            .field("account", &self.account)
            .field("inbox_attempt", &self.attempt)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl RawEvent {
    /// Reads the envelope of a delivery body (copying the body once).
    ///
    /// # Errors
    ///
    /// [`EnvelopeError`] when the body is not a JSON object with a non-empty
    /// string `id` and `type`, or repeats a key of the envelope or of the
    /// `data` wrapper ([`DuplicateKey`](EnvelopeError::DuplicateKey); see the
    /// [module docs](self)).
    pub fn from_slice(body: &[u8]) -> Result<Self, EnvelopeError> {
        Self::from_bytes(Bytes::copy_from_slice(body))
    }

    /// As [`from_slice`](Self::from_slice), sharing `body` rather than
    /// copying it. The body is read once: the envelope's fields, and where
    /// the resource lies, so that [`decode`](Self::decode) reads only those
    /// bytes.
    ///
    /// # Errors
    ///
    /// As [`from_slice`](Self::from_slice).
    pub fn from_bytes(body: Bytes) -> Result<Self, EnvelopeError> {
        Self::read(body, None)
    }

    /// As [`from_bytes`](Self::from_bytes), and, for an event of a type
    /// `typed` decodes, with the resource decoded into that type's data in
    /// the same pass over the body (when `type` comes before `data`, as
    /// Clink sends it), for the router's typed route to take through
    /// [`decode_typed`](Self::decode_typed) instead of reading the resource
    /// again ([`decode`](Self::decode) always reads it). Whatever the one pass
    /// cannot decide alone is read as `from_bytes` reads it, so the answer
    /// is always the same.
    pub(crate) fn from_bytes_for(
        body: Bytes, typed: &dyn DecodesTyped,
    ) -> Result<Self, EnvelopeError> {
        Self::read(body, Some(typed))
    }

    fn read(body: Bytes, typed: Option<&dyn DecodesTyped>) -> Result<Self, EnvelopeError> {
        // The whole body is checked once, with the CPU's vector
        // instructions where it has them: the reader below trusts it.
        let text = simdutf8::basic::from_utf8(&body).map_err(|_| EnvelopeError::NotJson)?;
        // serde reads a struct from an array too; an envelope is an object.
        if !text.trim_start().starts_with('{') {
            return Err(EnvelopeError::NotJson);
        }
        let (envelope, predecoded) = match typed {
            Some(typed) => envelope::read_decoding(text, &|t| typed.decodes_typed(t))?,
            None => (envelope::read(text)?, None),
        };
        // A type is printed in logs, metrics and the console, on every
        // line about its event: one far longer than any Clink type is
        // refused, as such an id is. (An unknown type with a character
        // that hides is taken, and printed escaped.)
        if let EventType::Unknown(name) = &envelope.event_type {
            if name.len() > MAX_EVENT_TYPE_LEN {
                crate::guard::cold();
                return Err(EnvelopeError::InvalidType);
            }
        }
        Ok(Self {
            predecoded,
            id: envelope.id,
            event_type: envelope.event_type,
            created: envelope.created,
            livemode: envelope.livemode,
            data: envelope.data,
            account: None,
            attempt: None,
            body,
        })
    }

    /// The merchant account this event was delivered for, when the layer
    /// serves several [accounts](crate::accounts); `None` otherwise.
    #[must_use]
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    pub(crate) fn set_account(&mut self, account: Option<Arc<str>>) {
        self.account = account;
    }

    /// This event as delivered for the merchant `account` (see
    /// [`accounts`](crate::accounts)): for an event kept and handled later.
    #[must_use]
    pub fn with_account(mut self, account: &str) -> Self {
        self.account = Some(account.into());
        self
    }

    /// The run of this event by [inbox workers](crate::inbox::Workers), when
    /// they run it; `None` when it came straight from a delivery.
    #[must_use]
    pub fn inbox_attempt(&self) -> Option<&InboxAttempt> {
        self.attempt.as_deref()
    }

    pub(crate) fn set_inbox_attempt(&mut self, attempt: Arc<InboxAttempt>) {
        self.attempt = Some(attempt);
    }

    /// The event id.
    #[must_use]
    pub fn id(&self) -> &str {
        match &self.id {
            // The span was taken from this body's text, which is UTF-8.
            IdText::Span(range) => std::str::from_utf8(&self.body[range.clone()]).unwrap_or(""),
            IdText::Owned(id) => id,
        }
    }

    /// The event type.
    #[must_use]
    pub fn event_type(&self) -> &EventType {
        &self.event_type
    }

    /// When the event occurred, if the envelope says.
    #[must_use]
    pub fn created(&self) -> Option<Timestamp> {
        self.created
    }

    /// `livemode`, if the envelope has it.
    #[must_use]
    pub fn livemode(&self) -> Option<bool> {
        self.livemode
    }

    /// The whole delivery body, byte for byte as it was verified.
    #[must_use]
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The resource's bytes: `data.object` when `data` wraps it, else
    /// `data`; `null` when the envelope has no `data`.
    fn data_bytes(&self) -> &[u8] {
        match &self.data {
            Some(range) => &self.body[range.clone()],
            None => b"null",
        }
    }

    /// The resource as raw JSON: `data.object` when `data` wraps it, else
    /// `data`; `null` when the envelope has no `data`.
    #[must_use]
    pub fn data_json(&self) -> &str {
        // The range was taken from this body's text, which is UTF-8.
        std::str::from_utf8(self.data_bytes()).unwrap_or("null")
    }

    /// Decodes the data into `T`, keeping the envelope.
    ///
    /// Reads only the resource's bytes, found when the envelope was read.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] naming the event and the path of the field that did
    /// not fit `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<Event<T>, DecodeError> {
        let data = self.decode_data::<T>()?;
        Ok(self.event_with(|| data))
    }

    /// As [`decode`](Self::decode), taking the resource decoded into `T`
    /// while the envelope was read, `predecoded`, when it was (taken out of
    /// this event with [`take_predecoded`](Self::take_predecoded)).
    pub(crate) fn decode_typed<T: DeserializeOwned + 'static>(
        &self, predecoded: Option<Predecoded>,
    ) -> Result<Event<T>, DecodeError> {
        match predecoded.and_then(Predecoded::take::<T>) {
            Some(data) => {
                #[cfg(test)]
                PREDECODED_TAKEN.with(|taken| taken.set(taken.get() + 1));
                Ok(self.event_with(|| *data))
            }
            None => self.decode(),
        }
    }

    /// Lets go of the resource decoded with the envelope, if no typed
    /// decode took it (a duplicate delivery, say), so that the event kept
    /// in a response's extensions holds only the body.
    pub(crate) fn forget_predecoded(&mut self) {
        self.predecoded = None;
    }

    /// The resource decoded with the envelope, taken out of this event, for
    /// [`decode_typed`](Self::decode_typed).
    pub(crate) fn take_predecoded(&mut self) -> Option<Predecoded> {
        self.predecoded.take()
    }

    /// A clone that carries the resource decoded with the envelope, taken
    /// out of this event.
    pub(crate) fn lend(&mut self) -> Self {
        let mut lent = self.clone();
        lent.predecoded = self.predecoded.take();
        lent
    }

    /// Whether this event holds its resource decoded into `T` as the
    /// envelope was read, not taken yet.
    #[cfg(test)]
    pub(crate) fn holds_predecoded<T: 'static>(&self) -> bool {
        self.predecoded.as_ref().is_some_and(Predecoded::holds::<T>)
    }

    /// This event with the resource `data` gives: the envelope's fields are
    /// made first and the resource last, straight into its place, so that a
    /// resource moved out of a box is copied once.
    #[inline(always)]
    fn event_with<T>(&self, data: impl FnOnce() -> T) -> Event<T> {
        let id = self.id().to_owned();
        let event_type = self.event_type.clone();
        let account = self.account.clone();
        let attempt = self.attempt.clone();
        Event {
            id,
            event_type,
            created: self.created,
            livemode: self.livemode,
            data: data(),
            freshness: Freshness::Untracked,
            account,
            attempt,
        }
    }

    /// The data as `T`. Read without tracking the path first; only when
    /// that fails is it read again, tracking the path, to say which field
    /// did not fit (the same input fails the same way both times).
    fn decode_data<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        /// Up to this size, checking the resource's UTF-8 once up front costs
        /// less than serde_json checking each string it reads from bytes;
        /// beyond it, the strings a type ignores (a large note) dominate, and
        /// reading bytes skips checking them.
        const CHECK_ONCE: usize = 16 * 1024;
        fn whole<'de, T: serde::Deserialize<'de>, R: serde_json::de::Read<'de>>(
            mut de: serde_json::Deserializer<R>,
        ) -> serde_json::Result<T> {
            let data = T::deserialize(&mut de)?;
            de.end()?;
            Ok(data)
        }
        let bytes = self.data_bytes();
        let text = (bytes.len() <= CHECK_ONCE)
            .then(|| std::str::from_utf8(bytes).ok())
            .flatten();
        let read = match text {
            Some(text) => whole(serde_json::Deserializer::from_str(text)),
            None => whole(serde_json::Deserializer::from_slice(bytes)),
        };
        if let Ok(data) = read {
            return Ok(data);
        }
        // No `data`, or `"data": null` (optional in Clink's schema, and
        // "absent or null" alike): the resource with none of its fields, for
        // a type that has one (every struct of `data`, whose fields are all
        // optional); a type that needs fields keeps the first error.
        if bytes.trim_ascii() == b"null" {
            if let Ok(data) = whole(serde_json::Deserializer::from_str("{}")) {
                return Ok(data);
            }
        }
        let error = |path: String, message: String| DecodeError {
            event_id: self.id().to_owned(),
            event_type: self.event_type.clone(),
            path,
            message,
        };
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let data = serde_path_to_error::deserialize(&mut de)
            .map_err(|err| error(err.path().to_string(), err.into_inner().to_string()))?;
        de.end()
            .map_err(|err| error(".".to_owned(), err.to_string()))?;
        Ok(data)
    }
}

/// Why a verified body is not a Clink event envelope.
///
/// A body with several faults gets the first in this order, whichever way it
/// is read: [`NotJson`](Self::NotJson), [`DuplicateKey`](Self::DuplicateKey),
/// [`MissingId`](Self::MissingId), [`MissingType`](Self::MissingType),
/// [`InvalidType`](Self::InvalidType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The body is not a JSON object.
    NotJson,
    /// The envelope has no non-empty string `id`.
    MissingId,
    /// The envelope has no non-empty string `type`.
    MissingType,
    /// The body repeats a key of the envelope (`id`, `type`, `created`,
    /// `livemode`, `data`) or of the `data` wrapper (`object`), so which
    /// copy counts is ambiguous.
    DuplicateKey,
    /// The `type` is longer than [`MAX_EVENT_TYPE_LEN`] bytes: no event
    /// type Clink sends, and a name too long to log, count or show on
    /// every line (a shorter unknown type is taken, and printed escaped).
    InvalidType,
}

/// The longest event type a delivery may name, in bytes: Clink's longest
/// is some 30; an unknown type up to this long is taken as any other.
pub const MAX_EVENT_TYPE_LEN: usize = 128;

impl EnvelopeError {
    /// A short stable code, e.g. `missing_event_id`.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Self::NotJson => "invalid_json",
            Self::MissingId => "missing_event_id",
            Self::MissingType => "missing_event_type",
            Self::DuplicateKey => "duplicate_key",
            Self::InvalidType => "invalid_event_type",
        }
    }
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotJson => "the body is not a JSON object: expected a Clink event envelope",
            Self::MissingId => "the event envelope has no string `id`",
            Self::MissingType => "the event envelope has no string `type`",
            Self::DuplicateKey => {
                "the event envelope repeats a key (`id`, `type`, `created`, `livemode`, `data`, or `object` in `data`), so its meaning is ambiguous"
            }
            Self::InvalidType => {
                "the event type is longer than 128 bytes, so it is no Clink event type"
            }
        })
    }
}

impl std::error::Error for EnvelopeError {}

/// An event's data did not decode into the requested type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    event_id: String,
    event_type: EventType,
    path: String,
    message: String,
}

impl DecodeError {
    /// The id of the event that did not decode.
    #[must_use]
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    /// Its type.
    #[must_use]
    pub fn event_type(&self) -> &EventType {
        &self.event_type
    }

    /// The path of the field that failed within the data, e.g.
    /// `items[0].amount` (`.` for the data itself).
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for DecodeError {
    /// One line, whatever the body held: the message can quote a value
    /// from it (an amount's text), so each character that does not show as
    /// itself, a line break included, is written as a `\uXXXX` escape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = escape_invisible(&self.message);
        let message = if message.contains('\n') {
            Cow::Owned(message.replace('\n', "\\u000a"))
        } else {
            message
        };
        write!(
            f,
            "event {:?} ({:?}): data field {:?} did not decode: {message}",
            self.event_id,
            self.event_type.as_str(),
            self.path,
        )
    }
}

impl std::error::Error for DecodeError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Order;

    /// `data` is optional in Clink's schema: absent or `null`, a typed
    /// event decodes to its resource with no fields, as a `Value` one
    /// decodes to `null`; a type that needs fields still refuses it.
    #[test]
    fn an_event_without_data_decodes_to_an_empty_resource() {
        for body in [
            r#"{"id":"e","type":"order.succeeded"}"#,
            r#"{"id":"e","type":"order.succeeded","data":null}"#,
            r#"{"id":"e","type":"order.succeeded","data": null }"#,
        ] {
            let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
            assert_eq!(
                raw.decode::<Order>().unwrap().data,
                Order::default(),
                "{body}"
            );
            assert_eq!(
                raw.decode::<crate::data::Dispute>().unwrap().data,
                crate::data::Dispute::default()
            );
            assert!(raw.decode::<serde_json::Value>().unwrap().data.is_null());
            #[derive(Debug, serde::Deserialize)]
            #[allow(dead_code, reason = "only decoded")]
            struct Needs {
                id: String,
            }
            let error = raw.decode::<Needs>().unwrap_err();
            assert!(error.to_string().contains("null"), "{error}");
        }
    }

    /// A decode error quotes what it could not read, and prints as one
    /// line with nothing hidden in it.
    #[test]
    fn a_decode_error_prints_values_from_the_body_escaped() {
        let body = r#"{"id":"e","type":"order.succeeded","data":{"amountTotal":"1\n\u001b[31mFAKE\u202e"}}"#;
        let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
        let error = raw.decode::<Order>().unwrap_err();
        let shown = error.to_string();
        assert!(!has_invisible(&shown) && !shown.contains('\n'), "{shown:?}");
        assert!(shown.contains("FAKE"), "{shown}");
    }

    #[test]
    fn data_and_data_object_resolve_to_the_same_resource() {
        let flat =
            RawEvent::from_slice(br#"{"id":"e","type":"order.created","data":{"orderId":"o1"}}"#)
                .unwrap();
        let wrapped = RawEvent::from_slice(
            br#"{"id":"e","type":"order.created","data":{"object":{"orderId":"o1"}}}"#,
        )
        .unwrap();
        assert_eq!(flat.data_json(), r#"{"orderId":"o1"}"#);
        assert_eq!(wrapped.data_json(), r#"{"orderId":"o1"}"#);
        // `object` as a string (subscription fixtures) is a field, not a wrapper.
        let tagged = RawEvent::from_slice(
            br#"{"id":"e","type":"x","data":{"object":"subscription","a":1}}"#,
        )
        .unwrap();
        assert_eq!(tagged.data_json(), r#"{"object":"subscription","a":1}"#);
        // An array is data as it is, never a wrapper.
        let listed = RawEvent::from_slice(br#"{"id":"e","type":"x","data":[{"a":1}]}"#).unwrap();
        assert_eq!(listed.data_json(), r#"[{"a":1}]"#);
    }

    #[test]
    fn envelope_errors() {
        assert_eq!(
            RawEvent::from_slice(b"nope").unwrap_err(),
            EnvelopeError::NotJson
        );
        assert_eq!(
            RawEvent::from_slice(b"[1]").unwrap_err(),
            EnvelopeError::NotJson
        );
        assert_eq!(
            RawEvent::from_slice(br#"{"type":"a"}"#).unwrap_err(),
            EnvelopeError::MissingId
        );
        assert_eq!(
            RawEvent::from_slice(br#"{"id":"","type":"a"}"#).unwrap_err(),
            EnvelopeError::MissingId
        );
        assert_eq!(
            RawEvent::from_slice(br#"{"id":7,"type":"a"}"#).unwrap_err(),
            EnvelopeError::MissingId
        );
        assert_eq!(
            RawEvent::from_slice(br#"{"id":"e"}"#).unwrap_err(),
            EnvelopeError::MissingType
        );
        assert_eq!(
            RawEvent::from_slice(b"\xff\xfe").unwrap_err(),
            EnvelopeError::NotJson
        );
    }

    #[test]
    fn a_repeated_envelope_or_wrapper_key_is_a_duplicate() {
        for body in [
            r#"{"id":"e","type":"order.created","data":{"object":{"orderId":"a"},"object":{"orderId":"b"}}}"#,
            r#"{"id":"e","type":"order.created","data":{"object":{},"object":{}}}"#,
            r#"{"id":"e","type":"x","data":{"object":"subscription","object":"x"}}"#,
            r#"{"id":"e","id":"f","type":"order.created"}"#,
            r#"{"id":null,"id":"e","type":"order.created"}"#,
            r#"{"id":"e","type":"order.created","type":"order.failed"}"#,
            r#"{"id":"e","type":"a","created":1,"created":2}"#,
            r#"{"id":"e","type":"a","livemode":true,"livemode":false}"#,
            r#"{"id":"e","type":"a","data":{},"data":{}}"#,
            r#"{"id":"e","type":"a","data":null,"data":null}"#,
            r#"{"id":"e","\u0069d":"f","type":"a"}"#,
            r#"{"type":"a","type":"a"}"#,
        ] {
            assert_eq!(
                RawEvent::from_slice(body.as_bytes()).unwrap_err(),
                EnvelopeError::DuplicateKey,
                "{body}"
            );
        }
        assert_eq!(EnvelopeError::DuplicateKey.code(), "duplicate_key");
        // Keys outside the envelope and the wrapper are not its business.
        for body in [
            r#"{"id":"e","type":"a","object":"event","object":"event"}"#,
            r#"{"id":"e","type":"a","extra":1,"extra":2}"#,
            r#"{"id":"e","type":"a","data":{"orderId":"a","orderId":"b"}}"#,
            r#"{"id":"e","type":"a","data":{"object":{"id":1,"id":2}}}"#,
            r#"{"id":"e","type":"a","data":[{"object":1},{"object":2}]}"#,
        ] {
            assert!(RawEvent::from_slice(body.as_bytes()).is_ok(), "{body}");
        }
    }

    #[test]
    fn created_in_both_forms_and_missing_data() {
        let a =
            RawEvent::from_slice(br#"{"id":"e","type":"a","created":"2025-01-15T12:00:00.000Z"}"#)
                .unwrap();
        let b = RawEvent::from_slice(
            br#"{"id":"e","type":"a","created":1736942400000,"livemode":true}"#,
        )
        .unwrap();
        assert_eq!(a.created(), b.created());
        assert_eq!(a.livemode(), None);
        assert_eq!(b.livemode(), Some(true));
        assert_eq!(a.data_json(), "null");
    }

    #[test]
    fn decode_errors_name_the_field() {
        let raw = RawEvent::from_slice(
            br#"{"id":"evt_9","type":"order.succeeded","data":{"orderId":["x"]}}"#,
        )
        .unwrap();
        let err = raw.decode::<Order>().unwrap_err();
        assert_eq!(err.path(), "orderId");
        assert_eq!(err.event_id(), "evt_9");
        assert_eq!(err.event_type().as_str(), "order.succeeded");
        assert!(err.to_string().starts_with(
            r#"event "evt_9" ("order.succeeded"): data field "orderId" did not decode: "#
        ));
    }

    #[test]
    fn a_decoded_event_keeps_the_envelope() {
        let raw = RawEvent::from_slice(
            br#"{"id":"evt_1","type":"order.created","created":1736942400000,"livemode":false,"data":{"orderId":"o1","note":"secret"}}"#,
        )
        .unwrap()
        .with_account("acct_1");
        assert_eq!(raw.body().len(), 118);
        let event = raw.decode::<serde_json::Value>().unwrap();
        assert_eq!(event.id, "evt_1");
        assert_eq!(event.event_type.as_str(), "order.created");
        assert_eq!(
            event.created,
            Some(Timestamp::from_millis(1_736_942_400_000))
        );
        assert_eq!(event.livemode, Some(false));
        assert_eq!(event.account(), Some("acct_1"));
        assert_eq!(event.data["orderId"], "o1");
        // Debug names the event, never the data.
        let debug = format!("{raw:?}");
        assert!(
            debug.starts_with(r#"RawEvent { id: "evt_1", event_type: "#),
            "{debug}"
        );
        assert!(
            debug.contains("body_len: 118") && !debug.contains("secret"),
            "{debug}"
        );
    }

    #[test]
    fn each_envelope_error_has_its_code_and_message() {
        let all = [
            (EnvelopeError::NotJson, "invalid_json", "not a JSON object"),
            (
                EnvelopeError::MissingId,
                "missing_event_id",
                "no string `id`",
            ),
            (
                EnvelopeError::MissingType,
                "missing_event_type",
                "no string `type`",
            ),
            (
                EnvelopeError::DuplicateKey,
                "duplicate_key",
                "repeats a key",
            ),
            (
                EnvelopeError::InvalidType,
                "invalid_event_type",
                "longer than 128 bytes",
            ),
        ];
        for (error, code, message) in all {
            assert_eq!(error.code(), code);
            assert!(error.to_string().contains(message), "{error}");
        }
    }

    /// An unknown type up to 128 bytes is taken as any other, whatever
    /// characters it holds (they are printed escaped); a longer one is
    /// refused, whichever way the envelope is read (the one pass, or the
    /// slow reading a key spelled with escapes sends it to).
    #[test]
    fn an_unknown_type_too_long_is_refused() {
        let body = |event_type: &str, key: &str| {
            format!(r#"{{"id":"evt_1","{key}":"{event_type}","data":{{}}}}"#)
        };
        let longest = format!("x.{}", "y".repeat(MAX_EVENT_TYPE_LEN - 2));
        for key in ["type", r"\u0074ype"] {
            let raw = RawEvent::from_slice(body(&longest, key).as_bytes());
            assert_eq!(
                raw.map(|raw| raw.event_type().clone()),
                Ok(EventType::Unknown(longest.clone())),
                "{key}"
            );
            assert_eq!(
                RawEvent::from_slice(body(&format!("{longest}y"), key).as_bytes()).map(drop),
                Err(EnvelopeError::InvalidType),
                "{key}"
            );
            let odd = RawEvent::from_slice(body(r"order.\u202e\n", key).as_bytes());
            assert_eq!(
                odd.map(|raw| raw.event_type().clone()),
                Ok(EventType::Unknown("order.\u{202e}\n".to_owned())),
                "{key}"
            );
        }
    }

    /// The account and the inbox attempt set on a raw event are what it
    /// and its typed decode say; an event straight from a delivery has
    /// neither.
    #[test]
    fn account_and_inbox_attempt_are_kept_and_decoded_along() {
        let mut raw =
            RawEvent::from_slice(br#"{"id":"e","type":"order.created","data":{"orderId":"o1"}}"#)
                .unwrap();
        assert_eq!(raw.account(), None);
        assert!(raw.inbox_attempt().is_none());
        assert!(raw.decode::<Order>().unwrap().inbox_attempt().is_none());

        raw.set_account(Some(Arc::from("acct_eu")));
        raw.set_inbox_attempt(Arc::new(InboxAttempt::new(7, 2, "t".repeat(32))));
        assert_eq!(raw.account(), Some("acct_eu"));
        let attempt = raw.inbox_attempt().map(|a| (a.seq(), a.attempt()));
        assert_eq!(attempt, Some((7, 2)));
        let event = raw.decode::<Order>().unwrap();
        let attempt = event.inbox_attempt().map(|a| (a.seq(), a.attempt()));
        assert_eq!(attempt, Some((7, 2)));
        raw.set_account(None);
        assert_eq!(raw.account(), None);
    }
}
