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
//! Add the old key with an expiry next to the new one. Every key that may
//! have signed a delivery of that timestamp (not expired, and not rotated
//! out before it: [`SigningKey::signed_until`]) is tried, all of them on
//! every call, and [`Verified::key_name`]
//! says which one matched (metrics and logs say it too), so you can see when
//! senders stop using the old key. Name the keys, or each is named by a short
//! fingerprint of its secret.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use clink_webhooks::signature::{sign, SigningKey, Verifier};
//!
//! let verifier = Verifier::from_key(&SigningKey::new("whsec_new")?.named("current")?)
//!     .add_key(
//!         SigningKey::new("whsec_old")?
//!             .named("previous")?
//!             .expires_at(SystemTime::now() + Duration::from_secs(86_400)),
//!     );
//!
//! let ts = clink_webhooks::Timestamp::now().as_millis().to_string();
//! let old = sign("whsec_old", &ts, b"{}");
//! assert_eq!(verifier.verify(&ts, &old, b"{}")?.key_name(), "previous");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! To rotate without a restart, serve through a [`LiveVerifier`] and call
//! its [`rotate`](LiveVerifier::rotate) with the new secret; Clink's API
//! client does it for you in one call
//! (`clink_webhooks::api::Client::rotate_signing_secret`, feature `api`).

mod error;
mod keys;
mod live;
mod name;
mod parse;
pub(crate) mod tag;
mod verifier;

pub use error::{VerifyError, VerifyErrorKind};
pub use keys::{sign, SigningKey};
pub use live::LiveVerifier;
pub(crate) use name::KeyName;
pub(crate) use parse::SignatureHeaders;
pub use parse::{SIGNATURE_HEADER, SIGN_TYPE_HEADER, TIMESTAMP_HEADER};
pub use verifier::{Verification, Verified, Verifier, DEFAULT_TOLERANCE};
