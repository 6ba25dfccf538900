//! Typed event data: what each Clink event is about, field by field.
//!
//! Every event carries one resource in `data` (or `data.object`). Its type is
//! named by the event's marker in [`events`](crate::events): the data of
//! [`events::OrderSucceeded`](crate::events::OrderSucceeded) is an [`Order`],
//! of [`events::RefundCreated`](crate::events::RefundCreated) a [`Refund`].
//! Families without a published schema decode to [`serde_json::Value`].
//!
//! # How fields are typed
//!
//! The family types ([`Order`], [`Session`], [`Refund`], [`Subscription`],
//! [`Invoice`], [`Dispute`], [`CustomerVerify`]) and their nested types follow
//! Clink's schemas field by field, with the wire's camelCase names.
//!
//! - **Every field is an `Option`**, including the few Clink's schema marks
//!   required (their docs say "always sent by Clink"). Clink sends `null`
//!   freely, and one missing field should not make a whole event unreadable.
//!   An empty string (`""`), which Clink's optional fields may carry for
//!   "absent", is `None` too for numbers, flags, times and amounts. A field
//!   of the wrong type is still an error, and [`DecodeError::path`](crate::events::DecodeError::path)
//!   names it.
//! - **Unknown fields are ignored**, so fields Clink adds later never fail a
//!   delivery.
//! - **Amounts are exact** [`rust_decimal::Decimal`]s read from the number's
//!   own text, never through `f64`: `19.99`, `0.1` and `1999` come out as
//!   written. A string holding a number is accepted too, and amounts are
//!   written back as JSON numbers with the same digits. See [`amount`].
//! - **Times** are [`Timestamp`](crate::Timestamp)s, whether sent as epoch milliseconds or as
//!   RFC 3339 strings. A time in a form not read as one (a date-time
//!   without its offset, say) is `None`, as an empty string is, rather
//!   than a refused event: see [`time`].
//! - **String enums** (statuses, reasons, intervals, ...) have an `Unknown`
//!   variant that keeps a value this crate does not know yet. The dispute
//!   status is an integer, and [`DisputeStatus::Unknown`] keeps unknown codes.
//! - **Texts** (ids, emails, codes, messages) are a [`Text`]: it reads as
//!   a `&str` and converts from and into a `String`, and a text of up to 24
//!   bytes is held without an allocation.
//! - **Currencies** are a [`Currency`]: the code as sent, with constants for
//!   the codes Clink lists, since a code Clink adds later is an ordinary value.
//! - **`metadata`** is a [`Metadata`], decoded alike from an object or from a
//!   string holding a JSON-encoded object.
//!
//! The structs are `#[non_exhaustive]` so that fields can follow Clink's
//! schema without breaking builds; to build one (in tests, say), start from
//! `Default::default()` and assign fields.
//!
//! ```
//! use clink_webhooks::data::Order;
//! use clink_webhooks::RawEvent;
//!
//! let body = br#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"ord_1","amountTotal":19.99}}"#;
//! let event = RawEvent::from_slice(body)?.decode::<Order>()?;
//! assert_eq!(event.data.amount_total.unwrap().to_string(), "19.99");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod common;
mod customer;
mod dispute;
mod invoice;
mod order;
mod refund;
mod resource;
mod session;
mod subscription;
mod text;

pub use common::{amount, time, Billing, Currency, Interval, Metadata, PriceData};
pub use customer::*;
pub use dispute::*;
pub use invoice::*;
pub use order::*;
pub use refund::*;
#[cfg(feature = "test-util")]
pub(crate) use resource::id_field;
pub use resource::Resource;
pub use session::*;
pub use subscription::*;
pub use text::Text;
