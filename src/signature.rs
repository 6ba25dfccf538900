//! Verifying and producing `X-Clink-Signature`, with no framework attached.
//!
//! Clink signs each delivery with
//! `hex(HMAC-SHA256(key, X-Clink-Timestamp + "." + raw body))`. A [`Verifier`]
//! checks that signature against every active [`SigningKey`] in constant
//! time, and refuses timestamps outside its tolerance window so that a
//! captured delivery cannot be replayed later.
//!
//! The entry points take plain strings and bytes, so any framework, a queue
//! consumer or a serverless function can use them; [`Verifier::verify_headers`]
//! reads the headers from an [`http::HeaderMap`] for those that have one.
//!
//! ```
//! use std::time::{Duration, SystemTime, UNIX_EPOCH};
//! use clink_webhooks::signature::{sign, Verifier};
//!
//! let verifier = Verifier::new("whsec_test_123")?;
//! let body = br#"{"id":"evt_1","type":"order.succeeded","data":{}}"#;
//! let timestamp = "1736942400000";
//! let signature = sign("whsec_test_123", timestamp, body);
//!
//! let now = UNIX_EPOCH + Duration::from_millis(1_736_942_400_000);
//! let verified = verifier.verify_at(timestamp, &signature, body, now)?;
//! assert_eq!(verified.key_index(), 0);
//!
//! // One changed byte and the delivery is refused.
//! let tampered = br#"{"id":"evt_1","type":"order.succeeded","data":{"x":1}}"#;
//! assert!(verifier.verify_at(timestamp, &signature, tampered, now).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Timestamps
//!
//! `X-Clink-Timestamp` is a run of ASCII digits (surrounding whitespace is
//! ignored). Clink's own tools send milliseconds and some senders send
//! seconds, so, as Clink's tools do, values below 10¹² are read as seconds and
//! the rest as milliseconds. The HMAC always covers the header text exactly as
//! received.
//!
//! # Key rotation
//!
//! Add the old key with an expiry next to the new one. Every key that has not
//! expired is tried, all of them on every call, and [`Verified::key_index`]
//! says which one matched, so you can see when senders stop using the old key.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use clink_webhooks::signature::{sign, SigningKey, Verifier};
//!
//! let verifier = Verifier::new("whsec_new")?
//!     .add_key(SigningKey::new("whsec_old")?.expires_at(SystemTime::now() + Duration::from_secs(86_400)));
//!
//! let ts = clink_webhooks::Timestamp::now().as_millis().to_string();
//! let old = sign("whsec_old", &ts, b"{}");
//! assert_eq!(verifier.verify(&ts, &old, b"{}")?.key_index(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::Timestamp;

type HmacSha256 = Hmac<Sha256>;

/// Name of the header that carries the signing timestamp.
pub const TIMESTAMP_HEADER: &str = "x-clink-timestamp";
/// Name of the header that carries the hex HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "x-clink-signature";
/// Name of the optional header that names the signature algorithm (`SHA256`).
pub const SIGN_TYPE_HEADER: &str = "x-clink-signtype";

/// The default tolerance, in both directions: 300 seconds, as Clink's tools use.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Timestamps below this value are seconds; the rest are milliseconds.
const MILLIS_THRESHOLD: u64 = 1_000_000_000_000;

/// Keys held inline per verification before spilling to the heap.
const INLINE_KEYS: usize = 4;

const SIGNATURE_LEN: usize = 32;

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

fn feed_prefix(mac: &mut HmacSha256, timestamp: &str) {
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
            return Err(ConfigError::new(ConfigErrorKind::EmptySecret));
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
struct ActiveKey {
    mac: HmacSha256,
    expires_at: Option<SystemTime>,
}

impl ActiveKey {
    fn is_active_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// Checks Clink signatures under one or more signing keys.
///
/// Build it once at start-up and share it (it is `Send + Sync` and cheap to
/// clone). The key schedule runs once per key here, not once per request.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<ActiveKey>,
    max_age: Duration,
    max_future_skew: Duration,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expiries: Vec<_> = self.keys.iter().map(|k| k.expires_at).collect();
        f.debug_struct("Verifier")
            .field("keys", &format_args!("[redacted; {}]", self.keys.len()))
            .field("key_expiries", &expiries)
            .field("max_age", &self.max_age)
            .field("max_future_skew", &self.max_future_skew)
            .finish()
    }
}

impl Verifier {
    /// A verifier for one signing secret (`&str`, `String` or bytes) that
    /// never expires, with the default 300 s tolerance both ways.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the secret is empty.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        Ok(Self::from_key(&SigningKey::new(secret)?))
    }

    /// A verifier for one [`SigningKey`].
    #[must_use]
    pub fn from_key(key: &SigningKey) -> Self {
        Self {
            keys: vec![ActiveKey {
                mac: keyed(&key.secret),
                expires_at: key.expires_at,
            }],
            max_age: DEFAULT_TOLERANCE,
            max_future_skew: DEFAULT_TOLERANCE,
        }
    }

    /// Also accepts signatures under `key`, for key rotation. Its
    /// [`Verified::key_index`] is the number of keys added before it (the
    /// first key is 0).
    #[must_use]
    pub fn add_key(mut self, key: SigningKey) -> Self {
        let SigningKey { secret, expires_at } = key;
        self.keys.push(ActiveKey {
            mac: keyed(&secret),
            expires_at,
        });
        self
    }

    /// Sets both [`max_age`](Self::max_age) and
    /// [`max_future_skew`](Self::max_future_skew). Zero means the timestamp
    /// must equal the clock to the millisecond; there is no way to turn the
    /// check off.
    #[must_use]
    pub fn tolerance(self, tolerance: Duration) -> Self {
        self.max_age(tolerance).max_future_skew(tolerance)
    }

    /// How far in the past a timestamp may be (default 300 s, inclusive).
    #[must_use]
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// How far in the future a timestamp may be, for senders whose clock runs
    /// ahead (default 300 s, inclusive).
    #[must_use]
    pub fn max_future_skew(mut self, skew: Duration) -> Self {
        self.max_future_skew = skew;
        self
    }

    /// The number of keys, active or expired.
    #[must_use]
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Verifies a delivery against the system clock.
    ///
    /// `timestamp` and `signature` are the `X-Clink-Timestamp` and
    /// `X-Clink-Signature` header values; `body` is the raw request body,
    /// byte for byte as received.
    ///
    /// # Errors
    ///
    /// [`VerifyError`] saying why the delivery must be refused.
    pub fn verify(
        &self,
        timestamp: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<Verified, VerifyError> {
        self.verify_at(timestamp, signature, body, SystemTime::now())
    }

    /// [`verify`](Self::verify) with the clock reading given, for tests and replays.
    ///
    /// # Errors
    ///
    /// [`VerifyError`] saying why the delivery must be refused.
    pub fn verify_at(
        &self,
        timestamp: &str,
        signature: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let signature = parse_signature(signature)?;
        self.verify_parsed(timestamp, &signature, body, now)
    }

    /// Reads `X-Clink-Timestamp`, `X-Clink-Signature` and the optional
    /// `X-Clink-SignType` (which must be `SHA256`, any case, when present)
    /// from `headers` and verifies `body` against the system clock.
    ///
    /// # Errors
    ///
    /// [`VerifyError`]; a missing header is
    /// [`MissingTimestamp`](VerifyErrorKind::MissingTimestamp) or
    /// [`MissingSignature`](VerifyErrorKind::MissingSignature).
    pub fn verify_headers(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Verified, VerifyError> {
        self.verify_headers_at(headers, body, SystemTime::now())
    }

    /// [`verify_headers`](Self::verify_headers) with the clock reading given.
    ///
    /// # Errors
    ///
    /// As [`verify_headers`](Self::verify_headers).
    pub fn verify_headers_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let parts = SignatureHeaders::from_headers(headers)?;
        self.verify_parsed(parts.timestamp, &parts.signature, body, now)
    }

    /// The steps of a [`Verification`] for a body that is already whole:
    /// with the body at hand, each key's state runs start to finish in a
    /// local instead of living in a slot of [`MacStates`]. Moving the states
    /// (about 150 bytes each) in and out of their slots cost as much as all
    /// the parsing together.
    fn verify_parsed(
        &self,
        timestamp: &str,
        expected: &[u8; SIGNATURE_LEN],
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let signed_at = self.check_timestamp(timestamp, now)?;
        let mut matches = Matches::default();
        for (i, key) in self.keys.iter().enumerate() {
            if key.is_active_at(now) {
                let mut mac = key.mac.clone();
                feed_prefix(&mut mac, timestamp);
                mac.update(body);
                matches.record(i, &mac.finalize().into_bytes().into(), expected);
            }
        }
        matches.verdict(signed_at)
    }

    /// Starts an incremental verification against the system clock: feed the
    /// body with [`Verification::update`] as it arrives, then
    /// [`Verification::finish`] with the signature.
    ///
    /// The timestamp is checked here, so a stale delivery is refused before
    /// its body is read.
    ///
    /// # Errors
    ///
    /// [`VerifyError`] for a malformed or out-of-tolerance timestamp, or when
    /// every key has expired.
    pub fn begin(&self, timestamp: &str) -> Result<Verification, VerifyError> {
        self.begin_at(timestamp, SystemTime::now())
    }

    /// [`begin`](Self::begin) with the clock reading given.
    ///
    /// # Errors
    ///
    /// As [`begin`](Self::begin).
    pub fn begin_at(&self, timestamp: &str, now: SystemTime) -> Result<Verification, VerifyError> {
        let signed_at = self.check_timestamp(timestamp, now)?;
        let mut states = MacStates::new(self.keys.len());
        self.start(&mut states, timestamp, now);
        Ok(Verification { states, signed_at })
    }

    /// Everything that can refuse a delivery before its body is hashed, in
    /// this order: the timestamp's form, an active key, the window.
    fn check_timestamp(&self, timestamp: &str, now: SystemTime) -> Result<Timestamp, VerifyError> {
        let signed_at = parse_timestamp(timestamp)?;
        if !self.keys.iter().any(|key| key.is_active_at(now)) {
            return Err(VerifyError::new(VerifyErrorKind::NoActiveKey));
        }
        self.check_tolerance(signed_at, now)?;
        Ok(signed_at)
    }

    /// Clones each active key's HMAC state into its slot, already fed
    /// `timestamp + "."`; expired keys leave their slot empty.
    fn start(&self, states: &mut MacStates, timestamp: &str, now: SystemTime) {
        for (slot, key) in states.slots_mut().iter_mut().zip(&self.keys) {
            if key.is_active_at(now) {
                feed_prefix(slot.insert(key.mac.clone()), timestamp);
            }
        }
    }

    /// Only additions and comparisons on the way through:
    /// `SystemTime::duration_since` costs several times more than
    /// `checked_add` (about 9 ns against 1.5 ns on x86-64 Linux) and is only
    /// needed for the message of a refusal.
    fn check_tolerance(&self, signed_at: Timestamp, now: SystemTime) -> Result<(), VerifyError> {
        let millis = signed_at.as_millis();
        let offset = Duration::from_millis(millis.unsigned_abs());
        let signed = if millis >= 0 {
            UNIX_EPOCH.checked_add(offset)
        } else {
            UNIX_EPOCH.checked_sub(offset)
        };
        let Some(signed) = signed else {
            // Beyond what this platform's clock can represent.
            let kind = if millis >= 0 {
                VerifyErrorKind::InFuture
            } else {
                VerifyErrorKind::TooOld
            };
            return Err(VerifyError::new(kind));
        };
        // A bound that overflows the clock's range is never crossed.
        if signed
            .checked_add(self.max_age)
            .is_some_and(|latest| now > latest)
        {
            return Err(VerifyError::with_offset(
                VerifyErrorKind::TooOld,
                now.duration_since(signed).unwrap_or_default(),
                self.max_age,
            ));
        }
        if now
            .checked_add(self.max_future_skew)
            .is_some_and(|horizon| signed > horizon)
        {
            return Err(VerifyError::with_offset(
                VerifyErrorKind::InFuture,
                signed.duration_since(now).unwrap_or_default(),
                self.max_future_skew,
            ));
        }
        Ok(())
    }
}

/// The keyed HMAC states of one verification: inline for the usual one or two
/// keys, so the hot path does not allocate.
#[allow(
    clippy::large_enum_variant,
    reason = "the inline variant is the point: boxing it would allocate per delivery"
)]
enum MacStates {
    Inline([Option<HmacSha256>; INLINE_KEYS], usize),
    Heap(Vec<Option<HmacSha256>>),
}

impl MacStates {
    fn new(len: usize) -> Self {
        if len <= INLINE_KEYS {
            Self::Inline(std::array::from_fn(|_| None), len)
        } else {
            Self::Heap((0..len).map(|_| None).collect())
        }
    }

    fn slots_mut(&mut self) -> &mut [Option<HmacSha256>] {
        match self {
            Self::Inline(slots, len) => &mut slots[..*len],
            Self::Heap(slots) => slots,
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        for mac in self.slots_mut().iter_mut().flatten() {
            mac.update(chunk);
        }
    }

    /// Finalizes every started state and compares each tag with `expected`,
    /// all of them whatever matched, and reports the first key that matched.
    fn finish(
        &mut self,
        expected: &[u8; SIGNATURE_LEN],
        signed_at: Timestamp,
    ) -> Result<Verified, VerifyError> {
        let mut matches = Matches::default();
        for (i, slot) in self.slots_mut().iter_mut().enumerate() {
            if let Some(mac) = slot.take() {
                matches.record(i, &mac.finalize().into_bytes().into(), expected);
            }
        }
        matches.verdict(signed_at)
    }
}

/// Which key's tag matched the signature, found without branching on any
/// comparison: every tag is compared and the first match is kept by
/// constant-time selection. (Whether a key was tried at all depends only on
/// its expiry, never on the signature.)
#[derive(Default)]
struct Matches {
    /// Whether any tag so far matched; `None` before the first tag.
    matched: Option<Choice>,
    index: u32,
}

impl Matches {
    #[inline]
    fn record(
        &mut self,
        key_index: usize,
        tag: &[u8; SIGNATURE_LEN],
        expected: &[u8; SIGNATURE_LEN],
    ) {
        let equal = tags_equal(tag, expected);
        let i = u32::try_from(key_index).unwrap_or(u32::MAX);
        self.matched = Some(match self.matched {
            None => {
                self.index = i;
                equal
            }
            Some(matched) => {
                self.index = u32::conditional_select(&self.index, &i, equal & !matched);
                matched | equal
            }
        });
    }

    fn verdict(self, signed_at: Timestamp) -> Result<Verified, VerifyError> {
        if self.matched.is_some_and(bool::from) {
            Ok(Verified {
                key_index: self.index as usize,
                signed_at,
            })
        } else {
            Err(VerifyError::new(VerifyErrorKind::SignatureMismatch))
        }
    }
}

/// Compares two tags in constant time. The words are XOR-folded first so
/// that `subtle` compares one word: its optimisation barrier is a call per
/// element, which over 32 single bytes costs more than the rest of the
/// checks.
fn tags_equal(tag: &[u8; SIGNATURE_LEN], expected: &[u8; SIGNATURE_LEN]) -> Choice {
    let (tag_words, _) = tag.as_chunks::<8>();
    let (expected_words, _) = expected.as_chunks::<8>();
    let diff = tag_words
        .iter()
        .zip(expected_words)
        .fold(0u64, |diff, (a, b)| {
            diff | (u64::from_ne_bytes(*a) ^ u64::from_ne_bytes(*b))
        });
    diff.ct_eq(&0)
}

/// An incremental verification: started by [`Verifier::begin`], fed the body
/// in chunks, finished with the signature.
///
/// ```
/// use clink_webhooks::signature::{sign, Verifier};
///
/// let verifier = Verifier::new("whsec_test_123")?;
/// let ts = clink_webhooks::Timestamp::now().as_millis().to_string();
/// let sig = sign("whsec_test_123", &ts, b"{\"id\":\"evt_1\"}");
///
/// let mut v = verifier.begin(&ts)?;
/// v.update(b"{\"id\":");
/// v.update(b"\"evt_1\"}");
/// assert!(v.finish(&sig).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Verification {
    states: MacStates,
    signed_at: Timestamp,
}

impl fmt::Debug for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verification")
            .field("signed_at", &self.signed_at)
            .finish_non_exhaustive()
    }
}

impl Verification {
    /// Feeds the next chunk of the raw body.
    pub fn update(&mut self, chunk: &[u8]) {
        self.states.update(chunk);
    }

    /// When the sender signed the delivery, from `X-Clink-Timestamp`.
    #[must_use]
    pub fn signed_at(&self) -> Timestamp {
        self.signed_at
    }

    /// Checks `signature` (the `X-Clink-Signature` value) against the body fed so far.
    ///
    /// # Errors
    ///
    /// [`MalformedSignature`](VerifyErrorKind::MalformedSignature) unless it
    /// is 64 hex digits, [`SignatureMismatch`](VerifyErrorKind::SignatureMismatch)
    /// when no active key produced it.
    pub fn finish(self, signature: &str) -> Result<Verified, VerifyError> {
        let signature = parse_signature(signature)?;
        self.finish_parsed(&signature)
    }

    pub(crate) fn finish_parsed(
        mut self,
        expected: &[u8; SIGNATURE_LEN],
    ) -> Result<Verified, VerifyError> {
        self.states.finish(expected, self.signed_at)
    }
}

/// Proof that a delivery's signature and timestamp checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    key_index: usize,
    signed_at: Timestamp,
}

impl Verified {
    /// Which key matched, counted in the order keys were given to the
    /// [`Verifier`] (0 is the key given to [`Verifier::new`]).
    #[must_use]
    pub fn key_index(&self) -> usize {
        self.key_index
    }

    /// When the sender signed the delivery, from `X-Clink-Timestamp`
    /// (seconds already converted to milliseconds).
    #[must_use]
    pub fn signed_at(&self) -> Timestamp {
        self.signed_at
    }
}

/// The signature headers of one request, checked for presence and form.
pub(crate) struct SignatureHeaders<'h> {
    pub(crate) timestamp: &'h str,
    pub(crate) signature: [u8; SIGNATURE_LEN],
}

impl<'h> SignatureHeaders<'h> {
    pub(crate) fn from_headers(headers: &'h HeaderMap) -> Result<Self, VerifyError> {
        let timestamp = header_str(headers, TIMESTAMP_HEADER, VerifyErrorKind::MissingTimestamp)?
            .ok_or(VerifyError::new(VerifyErrorKind::MissingTimestamp))?;
        let signature = header_str(headers, SIGNATURE_HEADER, VerifyErrorKind::MissingSignature)?
            .ok_or(VerifyError::new(VerifyErrorKind::MissingSignature))?;
        if let Some(sign_type) = header_str(
            headers,
            SIGN_TYPE_HEADER,
            VerifyErrorKind::UnsupportedSignType,
        )? {
            if !sign_type.trim().eq_ignore_ascii_case("SHA256") {
                return Err(VerifyError::new(VerifyErrorKind::UnsupportedSignType));
            }
        }
        // Check the timestamp's form before the signature's, as the verifier does.
        parse_timestamp(timestamp)?;
        Ok(Self {
            timestamp,
            signature: parse_signature(signature)?,
        })
    }
}

/// A header's text; a header that is present but not visible ASCII counts as
/// malformed for timestamp and signature, and unsupported for the sign type.
fn header_str<'h>(
    headers: &'h HeaderMap,
    name: &str,
    missing: VerifyErrorKind,
) -> Result<Option<&'h str>, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let malformed = match missing {
        VerifyErrorKind::MissingTimestamp => VerifyErrorKind::MalformedTimestamp,
        VerifyErrorKind::MissingSignature => VerifyErrorKind::MalformedSignature,
        other => other,
    };
    // Two copies of a signing header are ambiguous: refuse rather than pick one.
    if values.next().is_some() {
        return Err(VerifyError::new(malformed));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| VerifyError::new(malformed))
}

/// Parses `X-Clink-Timestamp`: ASCII digits after trimming, seconds below
/// 10¹², milliseconds otherwise; anything else, or an overflow, is malformed.
pub(crate) fn parse_timestamp(text: &str) -> Result<Timestamp, VerifyError> {
    let malformed = || VerifyError::new(VerifyErrorKind::MalformedTimestamp);
    let digits = text.trim_ascii();
    if digits.is_empty() {
        return Err(malformed());
    }
    let mut value: u64 = 0;
    for b in digits.bytes() {
        if !b.is_ascii_digit() {
            return Err(malformed());
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or_else(malformed)?;
    }
    let millis = if value < MILLIS_THRESHOLD {
        value * 1000
    } else {
        value
    };
    i64::try_from(millis)
        .map(Timestamp::from_millis)
        .map_err(|_| malformed())
}

/// Decodes a 64-digit hex signature (either case) into its 32 bytes.
///
/// Every digit is decoded the same way and validity is checked once at the
/// end: no table lookups and no branch per digit. Decoding all 64 digits
/// first and pairing them up after keeps both loops simple enough for the
/// optimiser; this runs about three times faster than `hex::decode_to_slice`.
pub(crate) fn parse_signature(text: &str) -> Result<[u8; SIGNATURE_LEN], VerifyError> {
    let Ok(digits) = <&[u8; SIGNATURE_LEN * 2]>::try_from(text.trim_ascii().as_bytes()) else {
        return Err(VerifyError::new(VerifyErrorKind::MalformedSignature));
    };
    let mut nibbles = [0u8; SIGNATURE_LEN * 2];
    let mut invalid = 0u8;
    for (nibble, &c) in nibbles.iter_mut().zip(digits) {
        let (value, not_hex) = hex_digit(c);
        *nibble = value;
        invalid |= not_hex;
    }
    if invalid != 0 {
        return Err(VerifyError::new(VerifyErrorKind::MalformedSignature));
    }
    let mut out = [0u8; SIGNATURE_LEN];
    for (byte, pair) in out.iter_mut().zip(nibbles.as_chunks::<2>().0) {
        *byte = (pair[0] << 4) | pair[1];
    }
    Ok(out)
}

/// The value of the hex digit `c` (either case), and 1 when it is not one.
#[inline]
fn hex_digit(c: u8) -> (u8, u8) {
    let is_digit = c.wrapping_sub(b'0') < 10;
    // Setting bit 5 folds `A`..`F` onto `a`..`f` and maps nothing else there.
    let is_letter = (c | 0x20).wrapping_sub(b'a') < 6;
    // The low four bits of `0`..`9` are their value; of `a`..`f`, value - 9.
    let value = (c & 0x0f) + if is_letter { 9 } else { 0 };
    (value, u8::from(!(is_digit | is_letter)))
}

/// Why a delivery was refused. See [`VerifyError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VerifyErrorKind {
    /// No `X-Clink-Timestamp` header.
    MissingTimestamp,
    /// No `X-Clink-Signature` header.
    MissingSignature,
    /// `X-Clink-Timestamp` is not a run of ASCII digits, or is out of range.
    MalformedTimestamp,
    /// `X-Clink-Signature` is not 64 hex digits.
    MalformedSignature,
    /// `X-Clink-SignType` names an algorithm other than `SHA256`.
    UnsupportedSignType,
    /// The timestamp is older than the tolerance allows (a possible replay).
    TooOld,
    /// The timestamp is further in the future than the tolerance allows.
    InFuture,
    /// No active key produced this signature over this body.
    SignatureMismatch,
    /// Every configured key has expired.
    NoActiveKey,
}

impl VerifyErrorKind {
    /// A short stable code for logs and response bodies, e.g. `signature_mismatch`.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Self::MissingTimestamp => "missing_timestamp",
            Self::MissingSignature => "missing_signature",
            Self::MalformedTimestamp => "malformed_timestamp",
            Self::MalformedSignature => "malformed_signature",
            Self::UnsupportedSignType => "unsupported_sign_type",
            Self::TooOld => "timestamp_too_old",
            Self::InFuture => "timestamp_in_future",
            Self::SignatureMismatch => "signature_mismatch",
            Self::NoActiveKey => "no_active_key",
        }
    }

    /// Whether the request itself is malformed (HTTP 400) rather than not
    /// authentic (HTTP 401).
    #[must_use]
    pub fn is_malformed_request(self) -> bool {
        matches!(
            self,
            Self::MissingTimestamp
                | Self::MissingSignature
                | Self::MalformedTimestamp
                | Self::MalformedSignature
                | Self::UnsupportedSignType
        )
    }
}

/// A refused delivery: what went wrong and what to check.
///
/// It never carries a secret or the signature the verifier expected.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyError {
    kind: VerifyErrorKind,
    offset: Option<(Duration, Duration)>,
}

impl VerifyError {
    pub(crate) const fn new(kind: VerifyErrorKind) -> Self {
        Self { kind, offset: None }
    }

    fn with_offset(kind: VerifyErrorKind, offset: Duration, allowed: Duration) -> Self {
        Self {
            kind,
            offset: Some((offset, allowed)),
        }
    }

    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> VerifyErrorKind {
        self.kind
    }
}

impl fmt::Debug for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyError")
            .field("kind", &self.kind)
            .field("message", &format_args!("{self}"))
            .finish()
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            VerifyErrorKind::MissingTimestamp => f.write_str(
                "missing X-Clink-Timestamp header: the request did not come from Clink or a proxy dropped the header",
            ),
            VerifyErrorKind::MissingSignature => f.write_str(
                "missing X-Clink-Signature header: the request did not come from Clink or a proxy dropped the header",
            ),
            VerifyErrorKind::MalformedTimestamp => f.write_str(
                "malformed X-Clink-Timestamp: expected epoch seconds or milliseconds as ASCII digits",
            ),
            VerifyErrorKind::MalformedSignature => f.write_str(
                "malformed X-Clink-Signature: expected 64 hex digits (HMAC-SHA256)",
            ),
            VerifyErrorKind::UnsupportedSignType => {
                f.write_str("unsupported X-Clink-SignType: only SHA256 is supported")
            }
            VerifyErrorKind::TooOld | VerifyErrorKind::InFuture => {
                let direction = if self.kind == VerifyErrorKind::TooOld {
                    "old"
                } else {
                    "ahead of this server's clock"
                };
                match self.offset {
                    Some((offset, allowed)) => write!(
                        f,
                        "X-Clink-Timestamp is {:.3} s {direction}, outside the {:.3} s tolerance: check this server's clock, or the delivery is a replay",
                        offset.as_secs_f64(),
                        allowed.as_secs_f64()
                    ),
                    None => write!(
                        f,
                        "X-Clink-Timestamp is too far {direction}: check this server's clock, or the delivery is a replay"
                    ),
                }
            }
            VerifyErrorKind::SignatureMismatch => f.write_str(
                "signature mismatch: no active signing key signed this body; check that the endpoint's current signing secret is configured and that the raw body reaches the verifier unchanged",
            ),
            VerifyErrorKind::NoActiveKey => f.write_str(
                "no active signing key: every configured key has expired; configure the endpoint's current signing secret",
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

/// What is wrong with a configuration value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// A signing secret was empty.
    EmptySecret,
}

/// A configuration mistake found while building a [`Verifier`] or [`SigningKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    kind: ConfigErrorKind,
}

impl ConfigError {
    const fn new(kind: ConfigErrorKind) -> Self {
        Self { kind }
    }

    /// What is wrong.
    #[must_use]
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ConfigErrorKind::EmptySecret => f.write_str(
                "empty signing secret: set it to the endpoint's signing secret from the Clink dashboard (whsec_...)",
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn timestamps_parse_by_unit() {
        assert_eq!(
            parse_timestamp("1736942400").unwrap().as_millis(),
            1_736_942_400_000
        );
        assert_eq!(
            parse_timestamp("1736942400000").unwrap().as_millis(),
            1_736_942_400_000
        );
        assert_eq!(
            parse_timestamp(" 1736942400 ").unwrap().as_millis(),
            1_736_942_400_000
        );
        assert_eq!(
            parse_timestamp("999999999999").unwrap().as_millis(),
            999_999_999_999_000
        );
        assert_eq!(
            parse_timestamp("1000000000000").unwrap().as_millis(),
            1_000_000_000_000
        );
    }

    #[test]
    fn bad_timestamps_are_malformed() {
        for bad in [
            "",
            "   ",
            "+1736942400",
            "-1",
            "1e12",
            "17369 42400",
            "1736942400.5",
            "0x10",
            "1234567890123456789012345",
            "-9223372036854775808",
            "18446744073709551615",
            "9223372036854775808",
            "١٢٣",
        ] {
            let err = parse_timestamp(bad).unwrap_err();
            assert_eq!(err.kind(), VerifyErrorKind::MalformedTimestamp, "{bad:?}");
        }
        assert_eq!(
            parse_timestamp("9223372036854775807").unwrap().as_millis(),
            i64::MAX
        );
    }

    #[test]
    fn signatures_must_be_exactly_64_hex_digits() {
        let good = "e07064a60193e751786c3f5a37fe7a5dc816bba53a2cb7781d0246b035dddfda";
        assert!(parse_signature(good).is_ok());
        assert_eq!(
            parse_signature(&good.to_uppercase()).unwrap(),
            parse_signature(good).unwrap()
        );
        for bad in [
            String::new(),
            good[..63].to_owned(),
            format!("{good}0"),
            format!("{}g", &good[..63]),
            format!("sha256={good}"),
            "é".repeat(32),
        ] {
            assert_eq!(
                parse_signature(&bad).unwrap_err().kind(),
                VerifyErrorKind::MalformedSignature,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hex_digits_decode_like_char_to_digit() {
        for c in 0..=u8::MAX {
            let (value, invalid) = hex_digit(c);
            match char::from(c).to_digit(16) {
                Some(expected) => {
                    assert_eq!((u32::from(value), invalid), (expected, 0), "{c:#04x}");
                }
                None => assert_eq!(invalid, 1, "{c:#04x}"),
            }
        }
    }

    #[test]
    fn tags_equal_only_when_every_bit_is() {
        let tag: [u8; SIGNATURE_LEN] = std::array::from_fn(|i| u8::try_from(i * 7).unwrap());
        assert!(bool::from(tags_equal(&tag, &tag)));
        for byte in 0..SIGNATURE_LEN {
            for bit in 0..8 {
                let mut other = tag;
                other[byte] ^= 1 << bit;
                assert!(!bool::from(tags_equal(&tag, &other)), "{byte}/{bit}");
            }
        }
    }

    #[test]
    fn inline_and_heap_key_sets_agree() {
        let mut verifier = Verifier::new("k0").unwrap();
        for i in 1..=6 {
            verifier = verifier.add_key(SigningKey::new(format!("k{i}")).unwrap());
        }
        let ts = "1700000000000";
        for i in 0..=6 {
            let sig = sign(format!("k{i}"), ts, b"body");
            let verified = verifier.verify_at(ts, &sig, b"body", at_ms(1_700_000_000_000));
            assert_eq!(verified.unwrap().key_index(), i);
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = SigningKey::new("whsec_supersecret").unwrap();
        let verifier = Verifier::from_key(&key);
        assert!(!format!("{key:?}").contains("supersecret"));
        assert!(!format!("{verifier:?}").contains("supersecret"));
    }

    #[test]
    fn error_messages_are_distinct_and_say_what_to_check() {
        let kinds = [
            VerifyErrorKind::MissingTimestamp,
            VerifyErrorKind::MissingSignature,
            VerifyErrorKind::MalformedTimestamp,
            VerifyErrorKind::MalformedSignature,
            VerifyErrorKind::UnsupportedSignType,
            VerifyErrorKind::TooOld,
            VerifyErrorKind::InFuture,
            VerifyErrorKind::SignatureMismatch,
            VerifyErrorKind::NoActiveKey,
        ];
        let messages: std::collections::HashSet<_> = kinds
            .iter()
            .map(|k| VerifyError::new(*k).to_string())
            .collect();
        assert_eq!(messages.len(), kinds.len());
        let codes: std::collections::HashSet<_> = kinds.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), kinds.len());
    }
}
