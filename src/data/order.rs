//! `order.*` data: [`Order`].
//!
//! ```
//! use clink_webhooks::data::{Currency, Order, OrderStatus};
//! use clink_webhooks::events::RawEvent;
//! use rust_decimal::Decimal;
//!
//! let body = br#"{"id":"evt_1","type":"order.succeeded","created":"2025-01-15T12:00:00.000Z",
//!     "data":{"orderId":"ord_1","status":"success","amountTotal":19.99,"paymentCurrency":"USD",
//!             "paymentMethod":{"paymentMethodType":"CARD"},"riskLevel":"low"}}"#;
//! let order = RawEvent::from_slice(body)?.decode::<Order>()?.data;
//! assert_eq!(order.status, Some(OrderStatus::Success));
//! assert_eq!(order.amount_total, Some(Decimal::new(1999, 2)));
//! assert_eq!(order.payment_currency, Some(Currency::USD));
//! assert_eq!(order.payment_method.unwrap().payment_method_type.as_deref(), Some("CARD"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::common::{amount, string_enum, time, Currency, Metadata, PriceData};
use super::Text;
use crate::Timestamp;

/// The order an `order.*` event is about (`OrderApiVo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Order {
    /// Identifies the order.
    pub order_id: Option<Text>,
    /// Whether the order belongs to a subscription or is a single payment.
    #[serde(rename = "type")]
    pub order_type: Option<OrderType>,
    /// The order's current state.
    pub status: Option<OrderStatus>,
    /// The merchant's own reference; neither unique nor an idempotency key.
    pub merchant_reference_id: Option<Text>,
    /// The checkout session that produced the order.
    pub session_id: Option<Text>,
    /// The related invoice, if any.
    pub invoice_id: Option<Text>,
    /// The paying customer.
    pub customer_id: Option<Text>,
    /// The paying customer's email.
    pub customer_email: Option<Text>,
    /// When the order was created.
    #[serde(default, with = "time")]
    pub create_time: Option<Timestamp>,
    /// When the payment reached a final `success` or `failed` state.
    #[serde(default, with = "time")]
    pub payment_time: Option<Timestamp>,
    /// The product bought, when it is a registered product.
    pub product_id: Option<Text>,
    /// The price used, when it is a registered price.
    pub price_id: Option<Text>,
    /// Items priced inline.
    pub price_data_list: Option<Vec<PriceData>>,
    /// How the customer paid.
    pub payment_method: Option<PaymentMethod>,
    /// The payment attempts made through the platform.
    pub payment_execution_details: Option<Vec<PaymentExecutionDetail>>,
    /// The amount before taxes and adjustments.
    #[serde(default, with = "amount")]
    pub amount_subtotal: Option<Decimal>,
    /// The final amount.
    #[serde(default, with = "amount")]
    pub amount_total: Option<Decimal>,
    /// The currency the customer paid in.
    pub payment_currency: Option<Currency>,
    /// The currency of the original request.
    pub original_currency: Option<Currency>,
    /// Merchant key/value pairs.
    pub metadata: Option<Metadata>,
    /// The detected risk level, e.g. `low`.
    pub risk_level: Option<Text>,
}

string_enum! {
    /// What kind of payment an [`Order`] is.
    pub enum OrderType {
        /// A payment for a subscription.
        Recurring = "recurring",
        /// A single payment.
        Onetime = "onetime",
    }
}

string_enum! {
    /// The state of an [`Order`].
    pub enum OrderStatus {
        /// Paid.
        Success = "success",
        /// The payment failed.
        Failed = "failed",
        /// The customer must act (e.g. 3-D Secure) before the payment can go on.
        RequiresAction = "requires_action",
        /// Not yet final.
        Pending = "pending",
        /// Part of the amount was refunded.
        PartialRefunded = "partial_refunded",
        /// The whole amount was refunded.
        Refunded = "refunded",
    }
}

/// How an order was paid (`PaymentMethodApiVo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PaymentMethod {
    /// The kind of payment method, e.g. `CARD`.
    pub payment_method_type: Option<Text>,
    /// The stored payment instrument.
    pub payment_instrument_id: Option<Text>,
}

/// One payment attempt made through a channel (`PaymentExecutionDetailApiVo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PaymentExecutionDetail {
    /// The payment channel.
    pub channel_code: Option<Text>,
    /// The transaction id the channel assigned.
    pub channel_transaction_id: Option<Text>,
    /// The channel's failure code, passed through unchanged.
    pub original_failure_code: Option<Text>,
    /// The channel's failure message, passed through unchanged.
    pub original_failure_message: Option<Text>,
}
