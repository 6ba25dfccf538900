//! A line to Clink's merchant API (feature `api`): the current state of an
//! object, the merchant's webhook endpoints, and signing secret rotation
//! without a restart.
//!
//! Clink delivers out of order and may miss a delivery, so a handler that
//! sees a [stale](crate::events::Freshness::Stale) event, or one whose data
//! does not decode, should not trust it: it asks Clink for the object's
//! current state instead. [`Client::current`] does that in one call from an
//! event's [`object_key`](crate::Event::object_key); concurrent reads of
//! one object share one call, and a [rate budget](ClientBuilder::rate_limit)
//! spreads a burst of stale events out so they cannot use up the
//! merchant's API limits.
//!
//! # Keys
//!
//! - Only secret keys call the API: a publishable key (`pk_…`) or a
//!   webhook signing secret (`whsec_…`) is refused when the client is
//!   built, before anything is sent.
//! - Each environment has its own keys: a `sk_prod_…` (or `sk_live_…`) key
//!   is refused for [`Sandbox`](Environment::Sandbox), a `sk_test_…` or
//!   `sk_uat_…` key for [`Production`](Environment::Production).
//! - Several keys, newest first, each with an optional expiry, make a key
//!   roll painless: the newest active key is used, and a call Clink refuses
//!   for its key (HTTP 401, or HTTP 200 with envelope `code` 401; Clink's
//!   sources show both) is made once more with the next one. A warning and
//!   the metric `clink_api_requests_total{key,result}` say which key works,
//!   so you see when the old one can be deleted.
//! - Keys never appear in `Debug`, `Display`, errors or logs (what a server
//!   says is scrubbed of anything shaped like a key), and are zeroized on
//!   drop.
//!
//! ```
//! use clink_webhooks::api::{ApiKey, Client, Environment};
//!
//! let client = Client::builder()
//!     .key(ApiKey::new("sk_test_new")?.named("2026-12")?)
//!     .key(ApiKey::new("sk_test_old")?.named("2026-06")?)
//!     .build()?;
//! assert_eq!(client.base_url(), "https://uat-api.clinkbill.com/api/");
//! assert!(!format!("{client:?}").contains("sk_test_new"));
//!
//! // A production key cannot call the sandbox, nor a publishable key anything.
//! let prod = Client::builder().key(ApiKey::new("sk_prod_abc")?).build();
//! assert!(prod.unwrap_err().to_string().contains("other environment"));
//! assert!(ApiKey::new("pk_test_abc").is_err());
//! let prod = Client::builder()
//!     .environment(Environment::Production)
//!     .key(ApiKey::new("sk_prod_abc")?)
//!     .build()?;
//! assert_eq!(prod.base_url(), "https://api.clinkbill.com/api/");
//! # Ok::<(), clink_webhooks::ConfigError>(())
//! ```
//!
//! # In a handler
//!
//! Keep the client in the router's state (it is cheap to clone):
//!
//! ```no_run
//! use clink_webhooks::api::{Client, CurrentObject};
//! use clink_webhooks::{events, BoxError, EventRouter};
//!
//! # fn router(client: Client, freshness: clink_webhooks::MemoryStore) -> EventRouter<clink_webhooks::router::WithState<Client>> {
//! EventRouter::with_state(client)
//!     .ordering(freshness)
//!     .on::<events::OrderSucceeded, _>(|event, clink: Client| async move {
//!         if event.freshness().is_stale() {
//!             // A newer event was handled: apply what is true now.
//!             if let Some(key) = event.object_key() {
//!                 if let CurrentObject::Order(order) = clink.current(&key).await? {
//!                     println!("order is now {:?}", order.status);
//!                 }
//!             }
//!             return Ok::<_, BoxError>(());
//!         }
//!         // ... apply event.data ...
//!         Ok(())
//!     })
//! # }
//! ```
//!
//! For data that does not decode, [`EventRouter::on_undecodable`](crate::EventRouter::on_undecodable)
//! gets the [`RawEvent`](crate::RawEvent), whose
//! [`object_key`](crate::RawEvent::object_key) reads the id from the
//! envelope alone; `examples/axum_receiver.rs` does both.
//!
//! # Errors and retries
//!
//! Every call fails with one [`ApiError`], whose [`kind`](ApiError::kind)
//! says what to do. Reads (GET) are retried on 5xx, 429 (after its
//! `Retry-After`) and transport failures, with backoff and jitter, within
//! the call's [deadline](ClientBuilder::deadline); writes are not retried,
//! since Clink documents no idempotency key for them. A write is never
//! sent with less than its whole request timeout, whatever it waited for
//! the rate budget: one cut off after it left may have been applied with
//! its answer lost.
//!
//! # Endpoints and signing secret rotation
//!
//! [`Client::ensure_endpoint`] creates or updates the endpoint at a URL,
//! for start-up; list, get, create, update, enable, disable and delete are
//! there too. [`Client::rotate_signing_secret`] rotates an endpoint's
//! signing secret, puts the new one into a live verifier or key map at
//! once, keeps the old one for a grace period and hands the new one to
//! your code to store, all of it in a task of its own, so that a caller
//! that gives up midway leaves none of it undone.

mod client;
mod endpoints;
mod error;
mod keys;
mod objects;
mod rotation;

pub use client::{
    Client, ClientBuilder, DEFAULT_ATTEMPTS, DEFAULT_DEADLINE, DEFAULT_RATE,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use endpoints::{
    Endpoint, EndpointQuery, EndpointUpdate, EnsureEndpoint, Ensured, EventName, NewEndpoint,
    WebhookSecret,
};
pub use error::{ApiError, ApiErrorKind};
pub use keys::{ApiKey, Environment};
pub use objects::{ApiObject, CurrentObject, ObjectKind, OrderQuery, Page};
pub use rotation::{LiveKeys, Rotated, RotationError, DEFAULT_GRACE};
