//! Why a delivery was refused: [`VerifyError`] and its [`VerifyErrorKind`].

use std::fmt;
use std::time::Duration;

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
    /// Every configured key has expired: the receiver's own configuration,
    /// not the delivery, is at fault, so the layer answers `503` (with
    /// `Retry-After`) and logs it at `error`; see
    /// [`is_receiver_fault`](Self::is_receiver_fault).
    NoActiveKey,
    /// No active key produced this signature, but a key past its expiry
    /// did: the sender still signs with a secret this endpoint has retired
    /// (a rotation ended too early, or the old secret leaked). Refused
    /// (`401`) like a mismatch, and the sender is answered exactly as for
    /// [`SignatureMismatch`](Self::SignatureMismatch), so that whoever holds
    /// an old secret does not learn that it was one; the code `expired_key`
    /// is for the operator's logs and metrics. Telling costs one extra HMAC
    /// per expired key, only when no active key matched.
    ExpiredKey,
}

impl VerifyErrorKind {
    /// Every kind, for tests that go through them all.
    #[cfg(test)]
    pub(crate) const ALL: [Self; 10] = [
        Self::MissingTimestamp,
        Self::MissingSignature,
        Self::MalformedTimestamp,
        Self::MalformedSignature,
        Self::UnsupportedSignType,
        Self::TooOld,
        Self::InFuture,
        Self::SignatureMismatch,
        Self::NoActiveKey,
        Self::ExpiredKey,
    ];

    /// A short stable code for logs and metrics, e.g. `signature_mismatch`.
    /// The sender of a delivery is answered with it too, but for
    /// [`ExpiredKey`](Self::ExpiredKey), answered as
    /// [`SignatureMismatch`](Self::SignatureMismatch) (see
    /// [`EventError::code`](crate::events::EventError::code)).
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
            Self::ExpiredKey => "expired_key",
        }
    }

    /// Whether the receiver's keys, not the delivery, are at fault
    /// ([`NoActiveKey`](Self::NoActiveKey): every key has expired): answer
    /// `503`, so that the sender retries once a current key is configured.
    ///
    /// ```
    /// use clink_webhooks::signature::VerifyErrorKind;
    ///
    /// assert!(VerifyErrorKind::NoActiveKey.is_receiver_fault());
    /// assert!(!VerifyErrorKind::SignatureMismatch.is_receiver_fault());
    /// ```
    #[must_use]
    pub fn is_receiver_fault(self) -> bool {
        matches!(self, Self::NoActiveKey)
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

    pub(super) fn with_offset(kind: VerifyErrorKind, offset: Duration, allowed: Duration) -> Self {
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

impl VerifyError {
    /// The header a missing or malformed header error is about.
    fn header(&self) -> &'static str {
        match self.kind {
            VerifyErrorKind::MissingTimestamp | VerifyErrorKind::MalformedTimestamp => {
                "X-Clink-Timestamp"
            }
            _ => "X-Clink-Signature",
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            VerifyErrorKind::MissingTimestamp | VerifyErrorKind::MissingSignature => write!(
                f,
                "missing {} header: the request did not come from Clink or a proxy dropped the header",
                self.header()
            ),
            VerifyErrorKind::MalformedTimestamp | VerifyErrorKind::MalformedSignature => {
                let expected = if self.kind == VerifyErrorKind::MalformedTimestamp {
                    "epoch seconds or milliseconds as ASCII digits"
                } else {
                    "64 hex digits (HMAC-SHA256)"
                };
                write!(f, "malformed {}: expected {expected}", self.header())
            }
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
            VerifyErrorKind::ExpiredKey => f.write_str(
                "signed with an expired key: no active signing key signed this body, but a key past its expiry did; check that the sender uses the endpoint's current signing secret, or whether the old one leaked",
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_distinct_and_say_what_to_check() {
        let kinds = VerifyErrorKind::ALL;
        let messages: std::collections::HashSet<_> = kinds
            .iter()
            .map(|k| VerifyError::new(*k).to_string())
            .collect();
        assert_eq!(messages.len(), kinds.len());
        let codes: std::collections::HashSet<_> = kinds.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), kinds.len());
    }

    #[test]
    fn each_message_names_its_header_and_what_was_expected() {
        use VerifyErrorKind as K;
        for (kind, code, malformed, fragments) in [
            (
                K::MissingTimestamp,
                "missing_timestamp",
                true,
                &["missing X-Clink-Timestamp header"][..],
            ),
            (
                K::MissingSignature,
                "missing_signature",
                true,
                &["missing X-Clink-Signature header"],
            ),
            (
                K::MalformedTimestamp,
                "malformed_timestamp",
                true,
                &["malformed X-Clink-Timestamp: expected epoch seconds or milliseconds"],
            ),
            (
                K::MalformedSignature,
                "malformed_signature",
                true,
                &["malformed X-Clink-Signature: expected 64 hex digits"],
            ),
            (
                K::UnsupportedSignType,
                "unsupported_sign_type",
                true,
                &["only SHA256"],
            ),
            (K::TooOld, "timestamp_too_old", false, &["is too far old"]),
            (
                K::InFuture,
                "timestamp_in_future",
                false,
                &["too far ahead of this server's clock"],
            ),
            (
                K::SignatureMismatch,
                "signature_mismatch",
                false,
                &["signature mismatch"],
            ),
            (
                K::NoActiveKey,
                "no_active_key",
                false,
                &["every configured key has expired"],
            ),
            (
                K::ExpiredKey,
                "expired_key",
                false,
                &["signed with an expired key"],
            ),
        ] {
            let error = VerifyError::new(kind);
            assert_eq!(error.kind(), kind);
            assert_eq!(kind.code(), code);
            assert_eq!(kind.is_malformed_request(), malformed, "{kind:?}");
            let message = error.to_string();
            for fragment in fragments {
                assert!(message.contains(fragment), "{kind:?}: {message}");
            }
            let debug = format!("{error:?}");
            assert!(
                debug.contains(&format!("{kind:?}")) && debug.contains(&message),
                "{debug}"
            );
        }
        let late = VerifyError::with_offset(
            K::TooOld,
            Duration::from_millis(400_250),
            Duration::from_secs(300),
        );
        assert_eq!(
            late.to_string(),
            "X-Clink-Timestamp is 400.250 s old, outside the 300.000 s tolerance: check this server's clock, or the delivery is a replay"
        );
        let early = VerifyError::with_offset(
            K::InFuture,
            Duration::from_secs(301),
            Duration::from_secs(300),
        );
        assert!(early
            .to_string()
            .starts_with("X-Clink-Timestamp is 301.000 s ahead of this server's clock"));
    }
}
