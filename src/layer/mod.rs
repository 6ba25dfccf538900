//! [`ClinkLayer`]: a tower layer that verifies, deduplicates and hands on Clink deliveries.
//!
//! One delivery takes this path:
//!
//! 1. **Method**: anything but `POST` gets `405`.
//! 2. **Headers and keys**: `X-Clink-Timestamp` and `X-Clink-Signature` must
//!    be present and well formed (`400`). With a [key
//!    source](ClinkLayer::with_key_source), the account is read from the
//!    request and its keys looked up: an unknown account gets `404`, a key
//!    source that cannot answer, or will not look up more accounts now, `503`.
//!    The timestamp must be within tolerance (`401`).
//! 3. **Body**: a `Content-Length` over the limit gets `413` before a byte is
//!    read; a streamed body is cut off with `413` the moment it crosses the
//!    limit. The HMAC is computed while the body streams in.
//! 4. **Signature**: checked in constant time against every active key (`401`);
//!    when none matched, against the expired keys too, so that the operator
//!    can tell a sender still using a retired key (`expired_key`) from a
//!    forgery (the sender gets the same answer either way).
//! 5. **Envelope**: the verified body must be an event with an `id` and a
//!    `type`, and an id holding no control, format or separator character
//!    (`400`; with [`dead_letters`](crate::ClinkLayer::dead_letters), kept
//!    dead there and `200`).
//! 6. **Claim**: the account and event id are claimed in the [`IdempotencyStore`](crate::store::IdempotencyStore). Already
//!    handled: `200` without calling the inner service. Being handled by
//!    another delivery: `409` with `Retry-After`. Store unreachable: `503`
//!    with `Retry-After`, and the inner service is not called. An id the
//!    store cannot take as a key (over 1,024 bytes with the account and the
//!    key prefix): `400`, as an id too long for the envelope is (kept dead
//!    with `dead_letters`, as it is). A claim the
//!    store answered after the handler's time was spent (its lease may have
//!    ended meanwhile, and another delivery taken the event) is let go
//!    unused and answered as the handler timeout is (`500`).
//! 7. **Inner service**: made ready (within the handler's deadline: the
//!    layer's own service is always ready, so that no unverified request
//!    holds a place of the inner service's, a concurrency limit's permit
//!    say, while its body streams in), then
//!    called with a [`VerifiedEvent`](crate::VerifiedEvent) in the request
//!    extensions and the body as [`VerifiedBody`]. In front of an
//!    [`EventRouter`](crate::EventRouter), [`ClinkLayer::route`] makes a
//!    [`RoutedService`] that awaits the router's
//!    [`dispatch`](crate::EventRouter::dispatch) instead, with the same
//!    answers and no request built for it.
//! 8. **Settle**: a `2xx` marks the event completed; any other status, an
//!    error or a panic (answered `500`), or the handler timeout (`500`)
//!    releases the claim, so Clink's retry runs the handler again; but once
//!    an [`EventRouter`](crate::EventRouter) behind the layer said its
//!    handler succeeded, a service around it that fails afterwards (a
//!    timeout while the event's version was recorded, say) has the event
//!    completed and answered `200` (`handled`), so that no retry runs the
//!    handler again (work of that service's own that must be retried on
//!    failure belongs before the router, or in a handler). Every store
//!    call is bounded by [`ClinkLayer::store_timeout`]; a delivery dropped
//!    mid-way (the sender hung up) still settles its claim in the background:
//!    released while its handler runs, completed once a handler succeeded
//!    (an [`EventRouter`](crate::EventRouter) recording the event's version
//!    then, through [`ClinkLayer::route`] or as the inner service of
//!    `layer` when it has no state), so that no retry runs it again.
//!    A completion the store could not take (down, or not answering) is tried
//!    again in the background until the lease ends, so a store that comes
//!    back within the lease still learns that the event was handled; the
//!    handler's `2xx` is answered all the same (a `5xx` would make Clink's
//!    retry run the handler again for certain). The head decides: a `2xx`
//!    whose body then fails while it streams is still a handled event, and
//!    an acknowledged outcome's status rewritten by a service between the
//!    layer and the router into a `1xx`, `3xx`, `410` or `429` is answered as
//!    the outcome says. A handler does its work inside the response future:
//!    work handed to a task of its own (or queued behind a `Buffer`) goes on
//!    past the handler's deadline and the lease, beside the retry a release
//!    lets in.
//!
//! A delivery dropped after its claim, before it answered, is logged at
//! `warn` and counted in [`Metrics::abandoned`].
//!
//! Every delivery ends in one [`Outcome`](crate::Outcome), put in the
//! response extensions (next to the [`VerifiedEvent`](crate::VerifiedEvent) once verified) and
//! counted in [`Metrics`]. Every refusal the layer writes itself is
//! `{"error": "<code>", "message": "..."}`; it never contains a secret.
//!
//! Nothing a stranger sends makes a log line per request: refusals before
//! verification are summed up once per interval (by a timer), and a store,
//! an inbox or a key source that fails is logged when the failures start,
//! summed up while they last and logged when it answers again (see
//! [`ClinkLayer::refusal_log_interval`]).
//!
//! The files of this module follow the path: `config.rs` ([`ClinkLayer`] and
//! its settings), `service.rs` ([`ClinkService`], which runs the steps in
//! order, and the part of a delivery every service here shares), `verify.rs`
//! (steps 1 to 5), `claim.rs` (steps 6 and 8), `inner.rs` (step 7),
//! `routed.rs` ([`RoutedService`]: step 7 as a call to the router),
//! `intake.rs` ([`InboxIntake`]: steps 1 to 5, then the event kept in an
//! inbox), `budget.rs`, `metrics.rs`, `refusals.rs`, `health.rs`, and
//! `body.rs`/`future.rs` for the response types.
//!
//! ```
//! use clink_webhooks::{events, sign, ClinkLayer, EventRouter, Layer, Outcome, Timestamp, Verifier};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let router = EventRouter::new().on::<events::OrderSucceeded, _>(|event| async move {
//!     assert_eq!(event.data.order_id.as_deref(), Some("ord_1"));
//!     Ok::<_, std::convert::Infallible>(())
//! });
//! let service = ClinkLayer::new(Verifier::new("whsec_test")?).layer(router);
//!
//! let body = r#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"ord_1"}}"#;
//! let timestamp = Timestamp::now().as_millis().to_string();
//! let request = http::Request::post("/webhooks/clink")
//!     .header("x-clink-timestamp", &timestamp)
//!     .header("x-clink-signature", sign("whsec_test", &timestamp, body.as_bytes()))
//!     .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
//! let response = service.clone().oneshot(request.clone()).await?;
//! assert_eq!(response.status(), 200);
//!
//! // The same event again is acknowledged without running the handler.
//! let response = service.oneshot(request).await?;
//! assert_eq!(Outcome::of(&response), Some(&Outcome::Duplicate));
//! # Ok(()) }
//! ```

mod body;
mod budget;
mod claim;
mod config;
mod future;
mod health;
mod inner;
mod intake;
mod metrics;
mod refusals;
mod routed;
mod service;
mod verify;

use bytes::Bytes;
use http_body_util::Full;

pub use body::ResponseBody;
pub use budget::{DEFAULT_BODY_BUDGET, DEFAULT_MAX_BODIES_READING};
pub use config::{
    ClinkLayer, DEFAULT_BODY_LIMIT, DEFAULT_BODY_TIMEOUT, DEFAULT_KEY_PREFIX, DEFAULT_STORE_TIMEOUT,
};
pub use future::ResponseFuture;
pub use health::{NotReady, Readiness};
pub use intake::InboxIntake;
pub use metrics::{Metrics, DURATION_BUCKETS};
pub use refusals::DEFAULT_REFUSAL_LOG_INTERVAL;
pub use routed::RoutedService;
pub use service::ClinkService;

/// The body the inner service receives: the verified bytes, already buffered.
pub type VerifiedBody = Full<Bytes>;
