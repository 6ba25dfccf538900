//! Receive Clink webhooks.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod signature;
mod timestamp;

pub use signature::{sign, SigningKey, Verified, Verifier, VerifyError, VerifyErrorKind};
pub use timestamp::{Timestamp, TimestampParseError};
pub mod event;
pub use event::{events, Event, EventKind, EventType, RawEvent};
pub mod idempotency;
pub use idempotency::{IdempotencyStore, MemoryStore};
