//! `refund.*` data: [`Refund`].
//!
//! ```
//! use clink_webhooks::data::{Refund, RefundReason, RefundStatus};
//! use clink_webhooks::events::RawEvent;
//!
//! // Clink's docs show `metadata` as a JSON-encoded string; it decodes like an object.
//! let body = br#"{"id":"evt_1","type":"refund.succeeded","data":{"refundId":"rf_1",
//!     "status":"success","refundAmount":5.5,"refundReason":"Duplicate payment",
//!     "metadata":"{\"arn\":\"74537604221431003881865\"}"}}"#;
//! let refund = RawEvent::from_slice(body)?.decode::<Refund>()?.data;
//! assert_eq!(refund.status, Some(RefundStatus::Success));
//! assert_eq!(refund.refund_reason, Some(RefundReason::DuplicatePayment));
//! assert_eq!(refund.refund_amount.unwrap().to_string(), "5.5");
//! assert_eq!(refund.metadata.unwrap().get_str("arn"), Some("74537604221431003881865"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::common::{amount, string_enum, time, Currency, Metadata};
use super::Text;
use crate::Timestamp;

/// The refund a `refund.*` event is about (`RefundApiVo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Refund {
    /// Identifies the refund.
    pub refund_id: Option<Text>,
    /// The order being refunded.
    pub order_id: Option<Text>,
    /// The customer refunded.
    pub customer_id: Option<Text>,
    /// The refund's state.
    pub status: Option<RefundStatus>,
    /// The amount refunded.
    #[serde(default, with = "amount")]
    pub refund_amount: Option<Decimal>,
    /// The currency of `refund_amount`.
    pub refund_currency: Option<Currency>,
    /// Why the refund was made.
    pub refund_reason: Option<RefundReason>,
    /// When the refund was created.
    #[serde(default, with = "time")]
    pub create_time: Option<Timestamp>,
    /// Key/value pairs such as `arn` and `merchantReferenceId`; sent as an
    /// object or as a JSON-encoded string.
    pub metadata: Option<Metadata>,
    /// The payment instrument refunded to.
    pub payment_instrument_id: Option<Text>,
}

string_enum! {
    /// The state of a [`Refund`]. Clink does not define the order in which
    /// these follow each other.
    pub enum RefundStatus {
        /// Created.
        Created = "created",
        /// Received.
        Received = "received",
        /// Being processed.
        Refunding = "refunding",
        /// Refunded.
        Success = "success",
        /// Failed.
        Failed = "failed",
        /// Closed.
        Closed = "closed",
    }
}

string_enum! {
    /// Why a [`Refund`] was made. Clink's values contain spaces and capitals.
    pub enum RefundReason {
        /// The customer paid twice.
        DuplicatePayment = "Duplicate payment",
        /// The payment was fraudulent.
        FraudulentActivity = "Fraudulent activity",
        /// The customer asked for it.
        CustomerInitiatedRefund = "Customer Initiated Refund",
        /// Another reason.
        Other = "Other",
    }
}
