//! Signed deliveries, realistic event bodies and Clink's delivery scenarios,
//! for testing your own receiver (feature `test-util`).
//!
//! - [`SignedRequest`] builds an `http::Request` signed as Clink signs it,
//!   from raw bytes or an [`Event`](crate::Event), with the knobs a test
//!   needs: timestamp, unit, clock skew, a tampered body, another key.
//! - [`fixture`] gives a realistic body for each of the 44 event types
//!   (the `clink-webhook` CLI sends the same ones).
//! - [`Scenario`]s replay what Clink does to a receiver (duplicates,
//!   out-of-order events, clock skew, a key mid-rotation, a tampered body)
//!   in process against any tower service with
//!   [`ClinkLayer`](crate::ClinkLayer) in front (the steps read the outcome
//!   it puts on each response), and say which step got which answer. Out
//!   of order, they check that an older event arriving late is
//!   acknowledged and not lost; what your handler does with a stale one
//!   (see [`Freshness`](crate::events::Freshness)) is a test of your own.
//!
//! Testing an axum app end to end, through the layer and your handlers:
//!
//! ```
//! use clink_webhooks::testing::{fixture, Scenario, SignedRequest};
//! use clink_webhooks::{events, ClinkLayer, EventRouter, EventType, Verifier};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let router = EventRouter::new().on::<events::OrderSucceeded, _>(|event| async move {
//!     assert_eq!(event.data.amount_total, Some("19.99".parse()?));
//!     Ok::<_, clink_webhooks::BoxError>(())
//! });
//! let layer = ClinkLayer::new(Verifier::new("whsec_test")?);
//! let app = axum::Router::new().route_service("/webhooks/clink", layer.layer(router));
//!
//! let delivery = SignedRequest::new("whsec_test", fixture(&EventType::OrderSucceeded));
//! let response = app.clone().oneshot(delivery.build::<axum::body::Body>()).await?;
//! assert_eq!(response.status(), 200);
//!
//! for scenario in Scenario::all("whsec_test") {
//!     scenario.run(app.clone()).await?;
//! }
//! # Ok(()) }
//! ```

mod fixtures;
mod request;
mod scenario;

pub use fixtures::{fixture, fixture_with_id, fresh_fixture, Shape};
pub use request::{SignedRequest, TimestampUnit, DEFAULT_PATH};
pub use scenario::{Scenario, ScenarioFailure, Step, StepResult};
