//! Receive Clink webhooks.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
pub mod event;
pub mod idempotency;
pub mod layer;
pub mod router;
pub mod signature;
mod timestamp;

pub use event::{events, Event, EventKind, EventType, RawEvent};
pub use idempotency::{IdempotencyStore, MemoryStore};
pub use layer::{ClinkLayer, ClinkService, VerifiedEvent};
pub use router::EventRouter;
pub use signature::{sign, SigningKey, Verified, Verifier, VerifyError, VerifyErrorKind};
pub use timestamp::{Timestamp, TimestampParseError};

/// A boxed error, as handlers and services return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
