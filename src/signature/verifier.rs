//! [`Verifier`] and its entry points: the tolerance window, the
//! constant-time choice of the matching key, incremental [`Verification`]
//! and the [`Verified`] it yields.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use super::error::{VerifyError, VerifyErrorKind};
use super::keys::{feed_prefix, ActiveKey, SigningKey, SIGNATURE_LEN};
use super::name::KeyName;
use super::parse::{parse_signature, parse_timestamp, SignatureHeaders};
use super::tag::Tagging;
use crate::{ConfigError, Timestamp};

/// The default tolerance, in both directions: 300 seconds, as Clink's tools use.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// `duration` without its part of a millisecond.
fn whole_millis(duration: Duration) -> Duration {
    duration.saturating_sub(Duration::from_nanos(u64::from(
        duration.subsec_nanos() % 1_000_000,
    )))
}

/// The nanoseconds of a millisecond after its first.
const LAST_NANOS_OF_A_MILLISECOND: Duration = Duration::from_nanos(999_999);

/// Keys held inline per verification before spilling to the heap.
const INLINE_KEYS: usize = 2;

/// Checks Clink signatures under one or more signing keys.
///
/// Build it once at start-up and share it (it is `Send + Sync` and cheap to
/// clone). The key schedule runs once per key here, not once per request.
///
/// # The order of the checks
///
/// A request can be wrong in several ways at once. Every entry point reports
/// the first of these, so the same request gets the same answer from
/// [`verify`](Self::verify), [`verify_at`](Self::verify_at),
/// [`verify_headers`](Self::verify_headers),
/// [`verify_headers_at`](Self::verify_headers_at) and the
/// [layer](crate::ClinkLayer):
///
/// 1. the timestamp's form: [`MissingTimestamp`](VerifyErrorKind::MissingTimestamp),
///    [`MalformedTimestamp`](VerifyErrorKind::MalformedTimestamp) (also for
///    two copies of the header, or one that is not visible ASCII);
/// 2. [`UnsupportedSignType`](VerifyErrorKind::UnsupportedSignType);
/// 3. the signature's form: [`MissingSignature`](VerifyErrorKind::MissingSignature),
///    [`MalformedSignature`](VerifyErrorKind::MalformedSignature);
/// 4. [`NoActiveKey`](VerifyErrorKind::NoActiveKey);
/// 5. the window: [`TooOld`](VerifyErrorKind::TooOld) or
///    [`InFuture`](VerifyErrorKind::InFuture);
/// 6. [`SignatureMismatch`](VerifyErrorKind::SignatureMismatch), or
///    [`ExpiredKey`](VerifyErrorKind::ExpiredKey) when no active key signed
///    the body but a key past its expiry did (one extra HMAC per expired
///    key, computed only when no active key matched, and compared in
///    constant time as the active ones are).
///
/// So a request that is malformed (400) is refused as such whatever the
/// clock and the keys say, and the window is checked before the HMAC, as
/// Clink's own tools do. The header-only kinds (missing headers, the sign
/// type) cannot arise from [`verify_at`](Self::verify_at), which takes the
/// values. An incremental verification follows the same order with what it
/// has: [`begin`](Self::begin) checks steps 1, 4 and 5, since the signature
/// is not yet given, and [`Verification::finish`] steps 3 and 6; so with a
/// well-formed timestamp that is out of the window (or no active key) and a
/// malformed signature, `begin` reports the window where the one-shot entry
/// points report the signature. An incremental verification keeps no body,
/// so it reports a signature by an expired key as a mismatch; the
/// [layer](crate::ClinkLayer), which holds the body, tells the two apart.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<ActiveKey>,
    /// The keys' names in order, shared with each [`Verification`] begun
    /// through [`begin`](Self::begin) or [`begin_at`](Self::begin_at).
    names: Arc<[KeyName]>,
    max_age: Duration,
    max_future_skew: Duration,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expiries: Vec<_> = self.keys.iter().map(|k| k.expires_at).collect();
        f.debug_struct("Verifier")
            .field("keys", &self.names)
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

    /// A verifier for the signing secrets in `text`, separated by commas,
    /// newest first: the form of `CLINK_WEBHOOK_SIGNING_KEY` during a
    /// rotation (`whsec_new,whsec_old`), as `clink-webhook serve` reads it.
    /// Each secret is used without the whitespace around it, so a value
    /// mounted from a file (ending in `\n`) or read from a `.env` file with
    /// CRLF line ends (`\r\n`) verifies as the secret itself. Every secret
    /// is accepted, none expires; [`Verified::key_index`] is a secret's
    /// place in the list (the newest is 0), and the default 300 s tolerance
    /// applies both ways.
    ///
    /// ```
    /// use clink_webhooks::signature::{sign, Verifier};
    ///
    /// let verifier = Verifier::from_secret_list(" whsec_new , whsec_old\r\n")?;
    /// assert_eq!(verifier.key_count(), 2);
    /// let ts = clink_webhooks::Timestamp::now().as_millis().to_string();
    /// let verified = verifier.verify(&ts, &sign("whsec_old", &ts, b"{}"), b"{}")?;
    /// assert_eq!(verified.key_index(), 1);
    /// assert!(Verifier::from_secret_list("whsec_new,,whsec_old").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `text` holds no secret, or when one of its
    /// secrets is empty (a stray comma): the message says where, and never
    /// quotes a secret.
    pub fn from_secret_list(text: &str) -> Result<Self, ConfigError> {
        let secrets: Vec<&str> = text.split(',').map(str::trim).collect();
        let (newest, older) = match secrets.split_first() {
            // One secret: empty, it gets the message of an empty secret.
            Some((only, [])) => return Self::new(only),
            Some(split) => split,
            None => return Self::new(""),
        };
        if let Some(empty) = secrets.iter().position(|secret| secret.is_empty()) {
            return Err(ConfigError::new(format!(
                "signing secret {} of the {} in the list is empty (a stray comma?): give the \
                 secrets newest first, separated by single commas",
                empty + 1,
                secrets.len()
            )));
        }
        older
            .iter()
            .try_fold(Self::new(newest)?, |verifier, secret| {
                Ok(verifier.add_key(SigningKey::new(secret)?))
            })
    }

    /// A verifier for one [`SigningKey`].
    #[must_use]
    pub fn from_key(key: &SigningKey) -> Self {
        let key = ActiveKey::new(key);
        Self {
            names: Arc::new([key.name.clone()]),
            keys: vec![key],
            max_age: DEFAULT_TOLERANCE,
            max_future_skew: DEFAULT_TOLERANCE,
        }
    }

    /// Also accepts signatures under `key`, for key rotation. Its
    /// [`Verified::key_index`] is the number of keys added before it (the
    /// first key is 0); [`Verified::key_name`] is its
    /// [name](SigningKey::named).
    #[must_use]
    pub fn add_key(mut self, key: SigningKey) -> Self {
        self.keys.push(ActiveKey::from(key));
        self.names = self.keys.iter().map(|key| key.name.clone()).collect();
        self
    }

    /// Every key but the first (the newest, as
    /// [`from_secret_list`](Self::from_secret_list) takes them; a verifier
    /// built with [`add_key`](Self::add_key) has its first key first, so add
    /// the new key to it with [`rotated`](Self::rotated) instead) stops being
    /// accepted at `at`, or at its own expiry when sooner: the end of a
    /// rotation's grace, for secrets given as a list. A delivery signed with
    /// one of them after that is refused as
    /// [`ExpiredKey`](VerifyErrorKind::ExpiredKey), so a secret rotated out
    /// stops working without anyone having to remove it.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use clink_webhooks::signature::{sign, Verifier, VerifyErrorKind};
    ///
    /// let now = SystemTime::now();
    /// let verifier = Verifier::from_secret_list("whsec_new,whsec_old")?
    ///     .expire_older_keys_at(now + Duration::from_secs(3600));
    /// let ts = clink_webhooks::Timestamp::from_system_time(now).as_millis().to_string();
    /// let old = sign("whsec_old", &ts, b"{}");
    /// assert!(verifier.verify_at(&ts, &old, b"{}", now).is_ok());
    /// let later = now + Duration::from_secs(3601);
    /// let ts = clink_webhooks::Timestamp::from_system_time(later).as_millis().to_string();
    /// let old = sign("whsec_old", &ts, b"{}");
    /// let refused = verifier.verify_at(&ts, &old, b"{}", later).unwrap_err();
    /// assert_eq!(refused.kind(), VerifyErrorKind::ExpiredKey);
    /// let new = sign("whsec_new", &ts, b"{}");
    /// assert!(verifier.verify_at(&ts, &new, b"{}", later).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn expire_older_keys_at(mut self, at: SystemTime) -> Self {
        for key in self.keys.iter_mut().skip(1) {
            key.expires_at = Some(key.expires_at.map_or(at, |own| own.min(at)));
        }
        self
    }

    /// This verifier after a rotation of the endpoint's signing secret:
    /// `key` first, and every key of this one that is still active kept
    /// until `grace` from now (or its own expiry, when sooner). Keys
    /// already expired are dropped, and so are keys rotated out before
    /// whose last stamp is past the window ([`max_age`](Self::max_age)),
    /// so rotations do not pile keys up. The tolerance settings are kept.
    ///
    /// Clink signs with the new secret from the rotation on, so a key
    /// rotated out verifies only deliveries stamped (`X-Clink-Timestamp`)
    /// no later than now plus [`max_future_skew`](Self::max_future_skew):
    /// those sent before, still on their way or retried. One stamped later
    /// under an old key is a forgery by whoever holds the old secret, and
    /// is refused as [`ExpiredKey`](VerifyErrorKind::ExpiredKey); so the
    /// old secret stops working once the window has passed since the
    /// rotation, whatever `grace` is.
    ///
    /// ```
    /// use std::time::Duration;
    /// use clink_webhooks::signature::{sign, SigningKey, Verifier};
    ///
    /// let before = Verifier::new("whsec_old")?;
    /// let after = before.rotated(SigningKey::new("whsec_new")?, Duration::from_secs(3600));
    /// let ts = clink_webhooks::Timestamp::now().as_millis().to_string();
    /// for secret in ["whsec_new", "whsec_old"] {
    ///     assert!(after.verify(&ts, &sign(secret, &ts, b"{}"), b"{}").is_ok());
    /// }
    /// assert_eq!(after.key_count(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn rotated(&self, key: SigningKey, grace: Duration) -> Self {
        self.rotated_at(key, grace, SystemTime::now())
    }

    /// [`rotated`](Self::rotated) as of `now`.
    #[must_use]
    pub fn rotated_at(&self, key: SigningKey, grace: Duration, now: SystemTime) -> Self {
        let until = now.checked_add(grace);
        let last_signed = Timestamp::from(self.last_signed_at_rotation(now));
        // A key whose last stamp is older than the window's oldest can
        // verify nothing any more: dropped too, so that rotations with an
        // unbounded grace do not pile keys up (each one tried, a full HMAC,
        // on every signature that matches none).
        let oldest = now
            .checked_sub(self.max_age)
            .map_or(Timestamp::from_millis(i64::MIN), Timestamp::from);
        let mut keys = vec![ActiveKey::from(key)];
        keys.extend(
            self.keys
                .iter()
                .filter(|old| {
                    old.is_active_at(now) && old.signed_until.is_none_or(|last| last >= oldest)
                })
                .map(|old| {
                    let mut old = old.clone();
                    old.expires_at = match (old.expires_at, until) {
                        (Some(own), Some(until)) => Some(own.min(until)),
                        (own, until) => until.or(own),
                    };
                    old.signed_until = Some(
                        old.signed_until
                            .map_or(last_signed, |own| own.min(last_signed)),
                    );
                    old
                }),
        );
        Self {
            names: keys.iter().map(|key| key.name.clone()).collect(),
            keys,
            max_age: self.max_age,
            max_future_skew: self.max_future_skew,
        }
    }

    /// The latest stamp a delivery signed with a key rotated out at `now`
    /// may carry: the sender's clock may be ahead of this one by what the
    /// window allows.
    pub(crate) fn last_signed_at_rotation(&self, now: SystemTime) -> SystemTime {
        // A window without bound on that side (`Duration::MAX`) bounds
        // nothing: the end of year 9999, the last instant RFC 3339 writes
        // (so that a limit persisted as text reads back).
        const LAST: Duration = Duration::from_secs(253_402_300_799);
        let Some(latest) = UNIX_EPOCH.checked_add(LAST) else {
            return now.checked_add(self.max_future_skew).unwrap_or(now);
        };
        now.checked_add(self.max_future_skew)
            .map_or(latest, |last| last.min(latest).max(now))
    }

    /// The names of the keys, in the order they were given (see
    /// [`SigningKey::named`]).
    pub fn key_names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.names.iter().map(KeyName::as_str)
    }

    /// Sets both [`max_age`](Self::max_age) and
    /// [`max_future_skew`](Self::max_future_skew). Zero means the timestamp
    /// must equal the clock to the millisecond (the clock is read in whole
    /// milliseconds, as the timestamp is). A tolerance so large that the
    /// window's edge is past what the clock can hold (`Duration::MAX`)
    /// accepts every timestamp on that side that the clock can hold.
    #[must_use]
    pub fn tolerance(self, tolerance: Duration) -> Self {
        self.max_age(tolerance).max_future_skew(tolerance)
    }

    /// How far in the past a timestamp may be (default 300 s, inclusive),
    /// in whole milliseconds, as timestamps are (a part of one is dropped).
    #[must_use]
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = whole_millis(max_age);
        self
    }

    /// How far in the future a timestamp may be, for senders whose clock runs
    /// ahead (default 300 s, inclusive), in whole milliseconds, as
    /// timestamps are (a part of one is dropped).
    #[must_use]
    pub fn max_future_skew(mut self, skew: Duration) -> Self {
        self.max_future_skew = whole_millis(skew);
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
    /// [`VerifyError`] saying why the delivery must be refused: the first
    /// problem in the [order](Verifier#the-order-of-the-checks) every entry
    /// point follows.
    pub fn verify(
        &self, timestamp: &str, signature: &str, body: &[u8],
    ) -> Result<Verified, VerifyError> {
        self.verify_at(timestamp, signature, body, SystemTime::now())
    }

    /// [`verify`](Self::verify) with the clock reading given, for tests and replays.
    ///
    /// # Errors
    ///
    /// [`VerifyError`] saying why the delivery must be refused.
    pub fn verify_at(
        &self, timestamp: &str, signature: &str, body: &[u8], now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        // Each header read once, in the documented order: the timestamp's
        // form, the signature's form, then the keys and the window.
        let signed_at = parse_timestamp(timestamp)?;
        let signature = parse_signature(signature.as_bytes())?;
        self.check_parsed(signed_at, now)?;
        self.verify_parsed(timestamp, signed_at, &signature, body, now)
    }

    /// Reads `X-Clink-Timestamp`, `X-Clink-Signature` and the optional
    /// `X-Clink-SignType` (which must be `SHA256`, any case, when present)
    /// from `headers` and verifies `body` against the system clock.
    ///
    /// # Errors
    ///
    /// [`VerifyError`], the first problem in the
    /// [order](Verifier#the-order-of-the-checks) every entry point follows; a
    /// missing header is [`MissingTimestamp`](VerifyErrorKind::MissingTimestamp)
    /// or [`MissingSignature`](VerifyErrorKind::MissingSignature), and two
    /// copies of one are malformed.
    pub fn verify_headers(
        &self, headers: &HeaderMap, body: &[u8],
    ) -> Result<Verified, VerifyError> {
        self.verify_headers_at(headers, body, SystemTime::now())
    }

    /// [`verify_headers`](Self::verify_headers) with the clock reading given.
    ///
    /// # Errors
    ///
    /// As [`verify_headers`](Self::verify_headers).
    pub fn verify_headers_at(
        &self, headers: &HeaderMap, body: &[u8], now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let parts = SignatureHeaders::from_headers(headers);
        let (timestamp, signed_at) = parts.timestamp()?;
        let signature = parts.signature()?;
        self.check_parsed(signed_at, now)?;
        self.verify_parsed(timestamp, signed_at, &signature, body, now)
    }

    /// The steps of a [`Verification`] for a body that is already whole:
    /// with the body at hand, each key's state runs start to finish in a
    /// local instead of living in a slot of [`MacStates`]. Moving the states
    /// (about 150 bytes each) in and out of their slots cost as much as all
    /// the parsing together.
    fn verify_parsed(
        &self, timestamp: &str, signed_at: Timestamp, expected: &[u8; SIGNATURE_LEN], body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, VerifyError> {
        let mut matches = Matches::default();
        for (i, key) in self.keys.iter().enumerate() {
            if key.may_sign(now, signed_at) {
                matches.record(i, &key.mac.tag_dotted(timestamp.as_bytes(), body), expected);
            }
        }
        matches
            .verdict(signed_at, &self.names)
            .map_err(|error| self.expired_or(error, timestamp, signed_at, expected, body, now))
    }

    /// `error` (a mismatch), or [`ExpiredKey`](VerifyErrorKind::ExpiredKey)
    /// when a key that has expired by `now` signed `body`: every expired
    /// key's tag is computed and compared in constant time, as the active
    /// ones were, so how long this takes depends on how many keys have
    /// expired, never on the secrets or on which one matched.
    pub(crate) fn expired_or(
        &self, error: VerifyError, timestamp: &str, signed_at: Timestamp,
        expected: &[u8; SIGNATURE_LEN], body: &[u8], now: SystemTime,
    ) -> VerifyError {
        if error.kind() != VerifyErrorKind::SignatureMismatch {
            return error;
        }
        let mut matches = Matches::default();
        for (i, key) in self.keys.iter().enumerate() {
            if !key.may_sign(now, signed_at) {
                matches.record(i, &key.mac.tag_dotted(timestamp.as_bytes(), body), expected);
            }
        }
        if matches.matched.is_some_and(bool::from) {
            VerifyError::new(VerifyErrorKind::ExpiredKey)
        } else {
            error
        }
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
    /// every key has expired: steps 1, 4 and 5 of the
    /// [order](Verifier#the-order-of-the-checks); [`Verification::finish`]
    /// takes the signature's.
    pub fn begin(&self, timestamp: &str) -> Result<Verification, VerifyError> {
        self.begin_at(timestamp, SystemTime::now())
    }

    /// [`begin`](Self::begin) with the clock reading given.
    ///
    /// # Errors
    ///
    /// As [`begin`](Self::begin).
    pub fn begin_at(&self, timestamp: &str, now: SystemTime) -> Result<Verification, VerifyError> {
        let signed_at = parse_timestamp(timestamp)?;
        self.begin_parsed(timestamp, signed_at, now)
    }

    /// [`begin_at`](Self::begin_at) for a timestamp already parsed (as
    /// [`SignatureHeaders`] does) into `signed_at`.
    pub(crate) fn begin_parsed(
        &self, timestamp: &str, signed_at: Timestamp, now: SystemTime,
    ) -> Result<Verification, VerifyError> {
        self.check_parsed(signed_at, now)?;
        let mut verification = self.begin_checked(timestamp, signed_at, now);
        verification.names = Some(Arc::clone(&self.names));
        Ok(verification)
    }

    /// [`begin_parsed`](Self::begin_parsed) once its
    /// [`check_parsed`](Self::check_parsed) passed: apart, the states (some
    /// hundreds of bytes) can be made where they are kept, not in a
    /// `Result` and moved out of it. It holds no share of the keys' names:
    /// finish it with [`Verification::finish_by`] and this verifier, which
    /// the caller holds until then.
    #[inline]
    pub(crate) fn begin_checked(
        &self, timestamp: &str, signed_at: Timestamp, now: SystemTime,
    ) -> Verification {
        let mut verification = Verification {
            states: MacStates::new(self.keys.len()),
            signed_at,
            names: None,
        };
        self.start(&mut verification.states, timestamp, signed_at, now);
        verification
    }

    /// The checks after the timestamp's form: an active key, the window.
    pub(crate) fn check_parsed(
        &self, signed_at: Timestamp, now: SystemTime,
    ) -> Result<(), VerifyError> {
        if !self.has_active_key_at(now) {
            return Err(VerifyError::new(VerifyErrorKind::NoActiveKey));
        }
        self.check_tolerance(signed_at, now)
    }

    /// Whether a key of this verifier is active at `now` (has not expired):
    /// with none, every delivery is refused
    /// ([`NoActiveKey`](VerifyErrorKind::NoActiveKey)). The layer's
    /// readiness checks this for its own verifier; an app whose keys come
    /// from a [`KeySource`](crate::accounts::KeySource) can check its
    /// accounts' verifiers with it.
    #[must_use]
    pub fn has_active_key_at(&self, now: SystemTime) -> bool {
        self.keys.iter().any(|key| key.is_active_at(now))
    }

    /// Clones the HMAC state of each key that may have signed a delivery
    /// stamped `signed_at` into its slot, already fed `timestamp + "."`;
    /// the others (expired, or rotated out before `signed_at`) leave their
    /// slot empty.
    fn start(
        &self, states: &mut MacStates, timestamp: &str, signed_at: Timestamp, now: SystemTime,
    ) {
        for (slot, key) in states.slots_mut().iter_mut().zip(&self.keys) {
            if key.may_sign(now, signed_at) {
                feed_prefix(slot.insert(key.mac.start()), timestamp);
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
        // A bound that overflows the clock's range is never crossed. The
        // clock counts in whole milliseconds, as the stamp does: a stamp
        // exactly at the window's edge is in it whatever the clock's
        // microseconds (`now > latest + 999,999 ns`, where the clock cut
        // to its millisecond is past `latest`; the bound in the future
        // needs nothing, a stamp being whole milliseconds).
        if signed
            .checked_add(self.max_age)
            .and_then(|latest| latest.checked_add(LAST_NANOS_OF_A_MILLISECOND))
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
    Inline([Option<Tagging>; INLINE_KEYS], usize),
    Heap(Vec<Option<Tagging>>),
}

impl MacStates {
    fn new(len: usize) -> Self {
        if len <= INLINE_KEYS {
            Self::Inline(std::array::from_fn(|_| None), len)
        } else {
            Self::Heap((0..len).map(|_| None).collect())
        }
    }

    fn slots_mut(&mut self) -> &mut [Option<Tagging>] {
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
        &mut self, expected: &[u8; SIGNATURE_LEN], signed_at: Timestamp, names: &[KeyName],
    ) -> Result<Verified, VerifyError> {
        let mut matches = Matches::default();
        for (i, slot) in self.slots_mut().iter_mut().enumerate() {
            if let Some(tagging) = slot {
                matches.record(i, &tagging.finish_in_place(), expected);
            }
            *slot = None;
        }
        matches.verdict(signed_at, names)
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
        &mut self, key_index: usize, tag: &[u8; SIGNATURE_LEN], expected: &[u8; SIGNATURE_LEN],
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

    fn verdict(self, signed_at: Timestamp, names: &[KeyName]) -> Result<Verified, VerifyError> {
        if self.matched.is_some_and(bool::from) {
            let key_index = self.index as usize;
            Ok(Verified {
                key_index,
                signed_at,
                key_name: names.get(key_index).cloned().unwrap_or(KeyName::none()),
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
    /// The keys' names, shared with the verifier that began it; `None` when
    /// the crate began it and finishes it with that verifier at hand.
    names: Option<Arc<[KeyName]>>,
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
    pub fn finish(mut self, signature: &str) -> Result<Verified, VerifyError> {
        let signature = parse_signature(signature.as_bytes())?;
        // Begun through the public API, which shares the names; the crate's
        // own verifications finish with `finish_by`.
        debug_assert!(
            self.names.is_some(),
            "a verification begun without its names"
        );
        let names = self.names.as_deref().unwrap_or_default();
        self.states.finish(&signature, self.signed_at, names)
    }

    /// [`finish`](Self::finish) for a signature already decoded, in place
    /// (the states are some hundreds of bytes, and not moved to be read),
    /// with the keys' names read from `verifier`, the one that began it.
    pub(crate) fn finish_by(
        &mut self, expected: &[u8; SIGNATURE_LEN], verifier: &Verifier,
    ) -> Result<Verified, VerifyError> {
        self.states
            .finish(expected, self.signed_at, &verifier.names)
    }
}

/// Proof that a delivery's signature and timestamp checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    key_index: usize,
    signed_at: Timestamp,
    key_name: KeyName,
}

impl Verified {
    /// Which key matched, counted in the order keys were given to the
    /// [`Verifier`] (0 is the key given to [`Verifier::new`]).
    #[must_use]
    pub fn key_index(&self) -> usize {
        self.key_index
    }

    /// The [name](SigningKey::named) of the key that matched (its
    /// fingerprint when it has none): unlike the index, the same key has
    /// the same name before and after a rotation.
    #[must_use]
    pub fn key_name(&self) -> &str {
        self.key_name.as_str()
    }

    /// The name, to hand on (see [`SigningKey`]).
    pub(crate) fn key_label(&self) -> &KeyName {
        &self.key_name
    }

    /// When the sender signed the delivery, from `X-Clink-Timestamp`
    /// (seconds already converted to milliseconds).
    #[must_use]
    pub fn signed_at(&self) -> Timestamp {
        self.signed_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::sign;

    fn at_ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
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

    /// The window's edges are in whole milliseconds whatever the clock's
    /// microseconds: a stamp of the clock's millisecond passes a zero
    /// tolerance, and one exactly 300 s old the default window, with the
    /// clock 0.5 ms into its millisecond. Before, both were refused.
    #[test]
    fn the_window_s_edges_hold_whatever_the_clock_s_microseconds() {
        let now = at_ms(1_700_000_000_000) + Duration::from_micros(500);
        let sig = |ts: &str| sign("k", ts, b"body");
        let exact = Verifier::new("k").unwrap().tolerance(Duration::ZERO);
        let ts = "1700000000000";
        assert!(exact.verify_at(ts, &sig(ts), b"body", now).is_ok());
        let ts = "1699999999999";
        let refused = exact.verify_at(ts, &sig(ts), b"body", now).unwrap_err();
        assert_eq!(refused.kind(), VerifyErrorKind::TooOld);
        let default = Verifier::new("k").unwrap();
        let ts = "1699999700000";
        assert!(default.verify_at(ts, &sig(ts), b"body", now).is_ok());
        let ts = "1699999699999";
        let refused = default.verify_at(ts, &sig(ts), b"body", now).unwrap_err();
        assert_eq!(refused.kind(), VerifyErrorKind::TooOld);
        let ts = "1700000300000";
        assert!(default.verify_at(ts, &sig(ts), b"body", now).is_ok());
        // A tolerance's part of a millisecond is dropped: the edges stay
        // where whole milliseconds put them.
        let fractional = Verifier::new("k")
            .unwrap()
            .tolerance(Duration::from_micros(1_900));
        let ts = "1699999999999";
        assert!(fractional.verify_at(ts, &sig(ts), b"body", now).is_ok());
        let ts = "1699999999998";
        assert!(fractional.verify_at(ts, &sig(ts), b"body", now).is_err());
        let ts = "1700000000002";
        assert!(fractional.verify_at(ts, &sig(ts), b"body", now).is_err());
        assert_eq!(
            whole_millis(Duration::MAX),
            Duration::MAX - Duration::from_nanos(999_999_999 % 1_000_000)
        );
    }

    #[test]
    fn older_keys_expire_at_the_sooner_of_their_own_expiry_and_the_one_given() {
        let verifier = Verifier::new("k0")
            .unwrap()
            .add_key(SigningKey::new("k1").unwrap().expires_at(at_ms(5_000)))
            .add_key(SigningKey::new("k2").unwrap())
            .expire_older_keys_at(at_ms(10_000));
        let expiries: Vec<_> = verifier.keys.iter().map(|k| k.expires_at).collect();
        assert_eq!(expiries, [None, Some(at_ms(5_000)), Some(at_ms(10_000))]);
        let later = verifier.expire_older_keys_at(at_ms(2_000));
        let expiries: Vec<_> = later.keys.iter().map(|k| k.expires_at).collect();
        assert_eq!(expiries, [None, Some(at_ms(2_000)), Some(at_ms(2_000))]);
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
    fn every_way_of_verifying_names_the_key_that_matched() {
        let named = |i: usize| {
            SigningKey::new(format!("k{i}"))
                .unwrap()
                .named(&format!("name-{i}"))
                .unwrap()
        };
        let verifier = (1..=3).fold(Verifier::from_key(&named(0)), |v, i| v.add_key(named(i)));
        let (ts, now) = ("1700000000000", at_ms(1_700_000_000_000));
        for i in 0..=3 {
            let sig = sign(format!("k{i}"), ts, b"body");
            let name = format!("name-{i}");
            let whole = verifier.verify_at(ts, &sig, b"body", now).unwrap();
            assert_eq!((whole.key_index(), whole.key_name()), (i, &*name));
            let mut public = verifier.begin_at(ts, now).unwrap();
            public.update(b"bo");
            public.update(b"dy");
            let public = public.finish(&sig).unwrap();
            assert_eq!((public.key_index(), public.key_name()), (i, &*name));
            let signed_at = parse_timestamp(ts).unwrap();
            let mut crate_path = verifier.begin_checked(ts, signed_at, now);
            crate_path.update(b"body");
            let expected = parse_signature(sig.as_bytes()).unwrap();
            let crate_path = crate_path.finish_by(&expected, &verifier).unwrap();
            assert_eq!((crate_path.key_index(), crate_path.key_name()), (i, &*name));
        }
    }

    #[test]
    fn a_rotation_puts_the_new_key_first_and_caps_the_old_ones() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let hour = Duration::from_secs(3600);
        let key = |name: &str| {
            SigningKey::new(format!("whsec_{name}"))
                .unwrap()
                .named(name)
                .unwrap()
        };
        let before = Verifier::from_key(&key("current"))
            .add_key(key("soon").expires_at(now + Duration::from_secs(60)))
            .add_key(key("later").expires_at(now + 2 * hour))
            .add_key(key("gone").expires_at(now))
            .max_age(Duration::from_secs(7));
        let after = before.rotated_at(key("new"), hour, now);
        assert_eq!(
            after.key_names().collect::<Vec<_>>(),
            ["new", "current", "soon", "later"],
            "the new key first, an expired one dropped"
        );
        let expiries: Vec<_> = after.keys.iter().map(|k| k.expires_at).collect();
        assert_eq!(
            expiries,
            [
                None,
                Some(now + hour),
                Some(now + Duration::from_secs(60)),
                Some(now + hour)
            ],
            "the old keys last the grace period, or less when they expire sooner"
        );
        assert_eq!(after.max_age, Duration::from_secs(7), "settings kept");
        // Rotations do not pile keys up: once the grace ends, the next one drops them.
        let again = after.rotated_at(key("newer"), hour, now + 2 * hour);
        assert_eq!(again.key_names().collect::<Vec<_>>(), ["newer", "new"]);

        // Nor with a grace without end: a key rotated out whose last stamp
        // is past the window verifies nothing, and the next rotation drops
        // it. Before, every rotation added a key for good.
        let mut verifier = Verifier::from_key(&key("k0")).max_age(Duration::from_secs(300));
        for n in 1..=5_u32 {
            verifier = verifier.rotated_at(key(&format!("k{n}")), Duration::MAX, now + n * hour);
        }
        assert_eq!(verifier.key_names().collect::<Vec<_>>(), ["k5", "k4"]);
        // Rotations within the window keep what can still verify.
        let quick = Verifier::from_key(&key("a"))
            .rotated_at(key("b"), Duration::MAX, now)
            .rotated_at(key("c"), Duration::MAX, now + Duration::from_secs(60));
        assert_eq!(quick.key_names().collect::<Vec<_>>(), ["c", "b", "a"]);
    }

    /// The sender stops signing with a rotated secret at once: through the
    /// grace period, a key rotated out verifies only deliveries stamped no
    /// later than the rotation (and the skew the window allows the
    /// sender's clock), which can be in flight or retried; one stamped
    /// after is a forgery by whoever holds the old secret, refused as
    /// signed by an expired key, whole or streamed.
    #[test]
    fn a_rotated_out_key_verifies_only_what_was_signed_before_the_rotation() {
        let rotation = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let skew = Duration::from_secs(30);
        let before = Verifier::new("whsec_old")
            .unwrap()
            .max_age(Duration::from_secs(300))
            .max_future_skew(skew);
        let after = before.rotated_at(
            SigningKey::new("whsec_new").unwrap(),
            Duration::from_secs(3600),
            rotation,
        );
        let stamp = |at: SystemTime| Timestamp::from(at).as_millis().to_string();
        let verify = |secret: &str, signed: SystemTime, now: SystemTime| {
            let ts = stamp(signed);
            let whole = after
                .verify_at(&ts, &sign(secret, &ts, b"{}"), b"{}", now)
                .map(|verified| verified.key_index())
                .map_err(|error| error.kind());
            let mut streamed = after.begin_at(&ts, now).unwrap();
            streamed.update(b"{}");
            let streamed = streamed
                .finish(&sign(secret, &ts, b"{}"))
                .map(|verified| verified.key_index());
            assert_eq!(whole.is_ok(), streamed.is_ok(), "{secret} at {ts}");
            whole
        };
        let minute = Duration::from_secs(60);
        // Signed before the rotation, or within the skew after: kept.
        assert_eq!(
            verify("whsec_old", rotation - minute, rotation + minute),
            Ok(1)
        );
        assert_eq!(verify("whsec_old", rotation + skew, rotation + skew), Ok(1));
        // Signed later: a forgery with the old secret.
        for (signed, now) in [
            (
                rotation + skew + Duration::from_millis(1),
                rotation + skew + minute,
            ),
            (rotation + 10 * minute, rotation + 10 * minute),
        ] {
            assert_eq!(
                verify("whsec_old", signed, now),
                Err(VerifyErrorKind::ExpiredKey)
            );
            assert_eq!(verify("whsec_new", signed, now), Ok(0));
        }
        // Which key of `verifier` verifies `secret`'s signature of a
        // delivery stamped and checked at `at`.
        let check = |verifier: &Verifier, secret: &str, at: SystemTime| {
            let ts = stamp(at);
            verifier
                .verify_at(&ts, &sign(secret, &ts, b"{}"), b"{}", at)
                .map(|verified| verified.key_index())
                .map_err(|error| error.kind())
        };
        // A second rotation keeps the earlier limit of a key rotated out before.
        let again = after.rotated_at(
            SigningKey::new("whsec_newer").unwrap(),
            Duration::from_secs(3600),
            rotation + 5 * minute,
        );
        let expired = Err(VerifyErrorKind::ExpiredKey);
        assert_eq!(check(&again, "whsec_old", rotation + 2 * minute), expired);
        assert_eq!(check(&again, "whsec_new", rotation + 2 * minute), Ok(1));
        // Loaded again after a restart, with the limit the rotation gave.
        let reloaded = Verifier::new("whsec_new").unwrap().add_key(
            SigningKey::new("whsec_old")
                .unwrap()
                .expires_at(rotation + 60 * minute)
                .signed_until(after.last_signed_at_rotation(rotation)),
        );
        assert_eq!(
            check(&reloaded, "whsec_old", rotation + 10 * minute),
            expired
        );
        assert_eq!(check(&reloaded, "whsec_old", rotation), Ok(1));
    }

    /// A window without bound on the future side (`Duration::MAX`, which
    /// the docs allow) bounds nothing at a rotation either: the key rotated
    /// out still verifies a delivery stamped after the rotation, within its
    /// grace. It was cut off at the rotation's instant.
    #[test]
    fn a_rotation_under_a_window_without_bound_cuts_nothing_off() {
        let rotation = at_ms(1_700_000_000_000);
        let before = Verifier::new("whsec_old").unwrap().tolerance(Duration::MAX);
        let after = before.rotated_at(
            SigningKey::new("whsec_new").unwrap(),
            Duration::from_secs(3600),
            rotation,
        );
        let later = rotation + Duration::from_secs(60);
        let ts = Timestamp::from(later).as_millis().to_string();
        let verified = after.verify_at(&ts, &sign("whsec_old", &ts, b"{}"), b"{}", later);
        assert_eq!(verified.map(|v| v.key_index()).map_err(|e| e.kind()), Ok(1));
    }

    #[test]
    fn a_signature_by_an_expired_key_is_told_from_a_forgery() {
        let ts = "1700000000000";
        let signed_at = Timestamp::from_millis(1_700_000_000_000);
        let now = at_ms(1_700_000_000_000);
        let verifier = Verifier::new("current")
            .unwrap()
            .add_key(SigningKey::new("retired").unwrap().expires_at(at_ms(1)))
            .add_key(
                SigningKey::new("later")
                    .unwrap()
                    .expires_at(at_ms(4_102_444_800_000)),
            );
        let kind = |secret: &str| {
            verifier
                .verify_at(ts, &sign(secret, ts, b"body"), b"body", now)
                .map(|v| v.key_index())
                .map_err(|e| e.kind())
        };
        assert_eq!(kind("current"), Ok(0));
        assert_eq!(kind("later"), Ok(2));
        assert_eq!(kind("retired"), Err(VerifyErrorKind::ExpiredKey));
        assert_eq!(
            kind("someone_else"),
            Err(VerifyErrorKind::SignatureMismatch)
        );
        // The incremental form has no body to tell them apart with.
        let mut incremental = verifier.begin_at(ts, now).unwrap();
        incremental.update(b"body");
        let error = incremental
            .finish(&sign("retired", ts, b"body"))
            .unwrap_err();
        assert_eq!(error.kind(), VerifyErrorKind::SignatureMismatch);
        let expected =
            super::super::parse::parse_signature(sign("retired", ts, b"body").as_bytes()).unwrap();
        assert_eq!(
            verifier
                .expired_or(error, ts, signed_at, &expected, b"body", now)
                .kind(),
            VerifyErrorKind::ExpiredKey
        );
        // Any other error is kept as it is.
        let too_old = VerifyError::new(VerifyErrorKind::TooOld);
        assert_eq!(
            verifier
                .expired_or(too_old, ts, signed_at, &expected, b"body", now)
                .kind(),
            VerifyErrorKind::TooOld
        );
    }

    /// A list of secrets is read as the gateway reads one: split on
    /// commas, newest first, each trimmed; an empty one is refused, and the
    /// refusal quotes no secret.
    #[test]
    fn a_secret_list_is_split_trimmed_and_checked() {
        let now = at_ms(1_700_000_000_000);
        let ts = "1700000000000";
        let verifier =
            Verifier::from_secret_list(" whsec_new \t,whsec_mid,\nwhsec_old\r\n").unwrap();
        assert_eq!(verifier.key_count(), 3);
        for (index, secret) in ["whsec_new", "whsec_mid", "whsec_old"].iter().enumerate() {
            let verified = verifier
                .verify_at(ts, &sign(secret, ts, b"{}"), b"{}", now)
                .unwrap();
            assert_eq!(verified.key_index(), index, "{secret}");
        }
        // The whitespace is not part of any secret.
        for padded in [" whsec_new ", "whsec_old\r\n", "whsec_old\r"] {
            assert!(verifier
                .verify_at(ts, &sign(padded, ts, b"{}"), b"{}", now)
                .is_err());
        }
        // One secret, trimmed: the same as `new` with the secret itself.
        let one = Verifier::from_secret_list("whsec_only\r\n").unwrap();
        assert_eq!(one.key_count(), 1);
        assert!(one
            .verify_at(ts, &sign("whsec_only", ts, b"{}"), b"{}", now)
            .is_ok());

        for (text, said) in [
            ("", "empty signing secret"),
            (" \r\n", "empty signing secret"),
            (
                ", ,",
                "signing secret 1 of the 3 in the list is empty (a stray comma?)",
            ),
            (
                "whsec_keep_a,",
                "signing secret 2 of the 2 in the list is empty",
            ),
            (
                "whsec_keep_a, ,whsec_keep_b",
                "signing secret 2 of the 3 in the list is empty",
            ),
        ] {
            let error = Verifier::from_secret_list(text).unwrap_err().to_string();
            assert!(error.contains(said), "{text:?}: {error}");
            assert!(!error.contains("keep"), "a secret quoted: {error}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = SigningKey::new("whsec_supersecret").unwrap();
        let verifier = Verifier::from_key(&key);
        assert!(!format!("{verifier:?}").contains("supersecret"));
    }
}
