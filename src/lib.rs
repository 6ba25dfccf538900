//! Receive [Clink](https://clinkbill.com) webhooks the way a payments team
//! needs: nothing forged gets in, nothing real gets lost, nothing runs twice.
//!
//! Clink POSTs each event with `X-Clink-Timestamp` and `X-Clink-Signature`
//! (hex HMAC-SHA256 of `timestamp + "." + raw body`), retries failed
//! deliveries for about a day, and does not deliver in order. This crate:
//!
//! - verifies the signature over the raw body in constant time, against
//!   every active key during a rotation, refusing stale or future timestamps
//!   ([`signature`], [`Verifier`]);
//! - deduplicates event ids with a lease, so a failed or crashed handler is
//!   retried and a succeeded one never runs again ([`store`]);
//! - decodes every Clink event type into typed data, forward compatible with
//!   fields and types Clink adds later ([`events`], [`data`]);
//! - hands events to async handlers by type ([`EventRouter`]), behind one
//!   tower layer ([`ClinkLayer`]) that axum and bare hyper apps add in a line.
//!
//! # Example
//!
//! ```
//! use std::io::Write as _;
//! use clink_webhooks::{events, ClinkLayer, EventRouter, Verifier};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Your side effects go in the handlers; an error has Clink retry the
//! // event. (Printed with `writeln!`, its error ignored: `println!` panics
//! // once stdout is closed, and a line that could not be printed is no
//! // reason to fail the event. A real app logs with `tracing`.)
//! let router = EventRouter::new()
//!     .on::<events::OrderSucceeded, _>(|event| async move {
//!         let (order, paid) = (&event.data.order_id, &event.data.amount_total);
//!         let _ = writeln!(std::io::stdout(), "order {order:?} paid: {paid:?}");
//!         Ok::<_, std::io::Error>(())
//!     })
//!     .on::<events::RefundSucceeded, _>(|event| async move {
//!         let _ = writeln!(std::io::stdout(), "refund {:?} done", event.data.refund_id);
//!         Ok::<_, std::io::Error>(())
//!     });
//!
//! // A tower service: mount it with axum's `route_service`, or serve it with hyper.
//! // (`route` hands events to the router directly; `ClinkLayer` is also a
//! // tower `Layer`, for any other inner service.)
//! let service = ClinkLayer::new(Verifier::new("whsec_...")?).route(router);
//! let app: axum::Router = axum::Router::new().route_service("/webhooks/clink", service);
//! # Ok(()) }
//! ```
//!
//! Without tower, call [`Verifier::construct_event`] with the two header
//! values and the raw body: it verifies them as the layer does and returns an
//! [`AnyEvent`], one variant per event type with its data decoded, or an
//! [`EventError`] with the status and code the layer would answer.
//!
//! # Module map
//!
//! Read it top to bottom as the path of a delivery; each module uses only
//! the ones above it (`scripts/module-graph` checks that there is no cycle).
//!
//! | module | holds |
//! |---|---|
//! | [`ConfigError`] | the one error every builder returns for a value it cannot work with |
//! | [`Timestamp`] | Clink's times: epoch milliseconds or RFC 3339 |
//! | [`data`] | the typed data of each event family ([`data::Order`], [`data::Refund`], ...) |
//! | [`signature`] | signing keys (named, for rotations), [`Verifier`], header parsing, [`sign`] |
//! | [`events`] | the envelope ([`RawEvent`], [`Event`], [`AnyEvent`]), [`EventType`], one marker type per event ([`events::OrderSucceeded`], ...), [`VerifiedEvent`], [`ObjectKey`](events::ObjectKey), [`Version`](events::Version) and [`Freshness`](events::Freshness), and [`Verifier::construct_event`] |
//! | [`store`] | the three store traits ([`IdempotencyStore`], [`FreshnessStore`], [`Inbox`](store::Inbox)) and their backends: [`MemoryStore`], `RedisStore`, `PostgresStore`, [`MemoryInbox`](store::MemoryInbox), `SqliteInbox`, `PostgresInbox` |
//! | [`accounts`] | many merchant accounts on one endpoint: which account a delivery is for, and its keys |
//! | [`ordering`] | telling a stale event from a fresh one, over a [`FreshnessStore`] |
//! | [`outcome`] | [`Outcome`]: what happened to a delivery, its status and its code |
//! | [`router`] | [`EventRouter`]: typed async handlers per event type; [`EventRouter::dispatch`] runs them on a [`VerifiedEvent`] |
//! | [`inbox`] | the durable inbox's [`Workers`](inbox::Workers): the router on kept events, in order, with retries and dead letters |
//! | [`layer`] | [`ClinkLayer`], [`ClinkService`] and [`InboxIntake`]: HTTP in, one file per step of a delivery |
//! | `axum` | extractors `ClinkEvent<K>` and `RawClinkEvent` |
//! | `server` | serving over hyper, hardened against slow, idle and many clients |
//! | `testing` | signed requests, fixtures and scenarios for your own tests |
//! | `console` | the inbox console: an axum router of pages over an [`Inbox`](store::Inbox) |
//!
//! Every public item has one path, in its module; the crate root also
//! re-exports the ones most code names: [`ConfigError`], [`Timestamp`],
//! [`TimestampParseError`], [`Decimal`] (from `rust_decimal`), [`sign`],
//! [`SigningKey`], [`Verified`], [`Verifier`], [`VerifyError`],
//! [`VerifyErrorKind`], [`Event`], [`AnyEvent`], [`EventError`],
//! [`EventKind`], [`EventType`], [`RawEvent`], [`VerifiedEvent`],
//! [`IdempotencyStore`], [`FreshnessStore`], [`MemoryStore`], [`Outcome`],
//! [`EventRouter`], [`ClinkLayer`], [`ClinkService`], [`InboxIntake`], and
//! tower's [`Layer`]. [`BoxError`] and [`BoxFuture`] are defined at the root.
//!
//! The `clink-webhook` binary (feature `cli`) is built on the public API only.
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | *(none)* | the verifier, events, [`ClinkLayer`], [`EventRouter`], [`MemoryStore`], [`accounts`] |
//! | `server` (default) | [`server::Server`]: hyper HTTP/1 serving with header timeouts, a connection limit, accept errors survived and a bounded graceful shutdown |
//! | `metrics` (default) | deliveries, durations, in-flight and key matches through the `metrics` facade (names in [`layer`]) |
//! | `axum` | extractors `ClinkEvent<K>` and `RawClinkEvent`, `HandlerError`, `IntoResponse` for [`Outcome`] |
//! | `redis` | `RedisStore`, for apps on several machines |
//! | `redis-tls` | `RedisStore` over TLS (`rediss://`, and `connect_with_tls` for a private CA), with rustls and *ring*; enables `redis` |
//! | `redis-cluster` | `RedisStore` over a Redis Cluster (`connect_cluster`); enables `redis` |
//! | `sqlite` | `SqliteInbox`: the durable [`inbox`] in a file, for one instance (SQLite bundled) |
//! | `postgres` | `PostgresStore`, with claims inside your own transaction, and `PostgresInbox` |
//! | `test-util` | module `testing`: signed requests, event fixtures and delivery scenarios for your own tests |
//! | `console` | module `console`: the inbox console, pages to see, search and replay the inbox's events, as an axum router to mount behind a token; enables `axum` |
//! | `api` | module `api`: a client of Clink's merchant API over rustls: the current state of an object, webhook endpoints, signing secret rotation without a restart |
//! | `cli` | the `clink-webhook` binary: `sign`, `verify`, `fixture`, `send`, `listen`, `api`, `endpoints`; enables `api` |
//! | `gateway` | `clink-webhook serve`: the receiving gateway, relaying kept events to HTTP, NATS JetStream or Redis Streams in per-object order; enables `cli` |
#![cfg_attr(docsrs, feature(doc_cfg))]
// The library logs through `tracing`; it never prints.
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod accounts;
#[cfg(feature = "api")]
#[cfg_attr(docsrs, doc(cfg(feature = "api")))]
pub mod api;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
mod config_error;
#[cfg(feature = "console")]
#[cfg_attr(docsrs, doc(cfg(feature = "console")))]
pub mod console;
pub mod data;
pub mod events;
mod guard;
pub mod inbox;
pub mod layer;
pub mod ordering;
mod outage;
pub mod outcome;
pub mod router;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
pub mod signature;
pub mod store;
#[cfg(test)]
#[allow(clippy::print_stderr)]
mod test_seed;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod timestamp;

pub use config_error::ConfigError;
pub use events::{AnyEvent, Event, EventError, EventKind, EventType, RawEvent, VerifiedEvent};
pub use layer::{ClinkLayer, ClinkService, InboxIntake, RoutedService};
pub use outcome::Outcome;
pub use router::EventRouter;
pub use rust_decimal::Decimal;
pub use signature::{
    sign, LiveVerifier, SigningKey, Verified, Verifier, VerifyError, VerifyErrorKind,
};
pub use store::{FreshnessStore, IdempotencyStore, MemoryStore};
pub use timestamp::{Timestamp, TimestampParseError};
pub use tower_layer::Layer;

/// A boxed error, as handlers and services return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed future, as the store traits, key sources and
/// [`EveryHandler`](router::EveryHandler) return (they are object safe).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
