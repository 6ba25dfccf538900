//! `session.*` data: [`Session`].
//!
//! ```
//! use clink_webhooks::data::{PaymentStatus, Session, SessionStatus};
//! use clink_webhooks::events::RawEvent;
//!
//! let body = br#"{"id":"evt_1","type":"session.complete","data":{"sessionId":"sess_1",
//!     "status":"completed","paymentStatus":"paid","created":"2025-01-15T11:45:00.000Z",
//!     "customer":{"customerId":"cus_1","email":"a@example.com"}}}"#;
//! let session = RawEvent::from_slice(body)?.decode::<Session>()?.data;
//! assert_eq!(session.status, Some(SessionStatus::Completed));
//! assert_eq!(session.payment_status, Some(PaymentStatus::Paid));
//! assert_eq!(session.created.unwrap().as_millis(), 1_736_941_500_000);
//! assert_eq!(session.customer.unwrap().email.as_deref(), Some("a@example.com"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::common::{amount, string_enum, time, Currency, Interval, Metadata, PriceData};
use super::Text;
use crate::Timestamp;

/// The checkout session a `session.*` event is about (`SessionApiVo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Session {
    /// Identifies the checkout session.
    pub session_id: Option<Text>,
    /// The time-limited session token.
    pub token: Option<Text>,
    /// The session's state.
    pub status: Option<SessionStatus>,
    /// How far the payment has got.
    pub payment_status: Option<PaymentStatus>,
    /// The amount before taxes and discounts.
    #[serde(default, with = "amount")]
    pub amount_subtotal: Option<Decimal>,
    /// The amount after taxes, fees and discounts.
    #[serde(default, with = "amount")]
    pub amount_total: Option<Decimal>,
    /// The currency given when the session was created.
    pub original_currency: Option<Currency>,
    /// The currency the customer chose.
    pub payment_currency: Option<Currency>,
    /// The order the session created.
    pub order_id: Option<Text>,
    /// The subscription, for subscription checkouts.
    pub subscription_id: Option<Text>,
    /// The invoice generated, if any.
    pub invoice_id: Option<Text>,
    /// The merchant's reference, echoed.
    pub merchant_reference_id: Option<Text>,
    /// The checkout locale, e.g. `en-US`.
    pub locale: Option<Text>,
    /// How the checkout is shown.
    pub ui_mode: Option<UiMode>,
    /// Where an embedded (`elements`) checkout returns to.
    pub return_url: Option<Text>,
    /// Where the customer goes on cancelling.
    pub cancel_url: Option<Text>,
    /// Where the customer goes on success.
    pub success_url: Option<Text>,
    /// When the session was created (sent as an RFC 3339 string).
    #[serde(default, with = "time")]
    pub created: Option<Timestamp>,
    /// When the session expires (sent as an RFC 3339 string).
    #[serde(default, with = "time")]
    pub expire: Option<Timestamp>,
    /// The registered price, when one is used.
    pub price: Option<Price>,
    /// The registered product, when one is used.
    pub product: Option<Product>,
    /// The customer.
    pub customer: Option<Customer>,
    /// Items priced inline.
    pub price_data_list: Option<Vec<PriceData>>,
    /// Merchant key/value pairs (not in Clink's schema; sent by its CLI fixtures).
    pub metadata: Option<Metadata>,
}

string_enum! {
    /// The state of a [`Session`] (the event is `session.complete`, the status `completed`).
    pub enum SessionStatus {
        /// Waiting for the customer.
        Open = "open",
        /// The checkout was completed.
        Completed = "completed",
        /// The session expired.
        Expired = "expired",
    }
}

string_enum! {
    /// How far a [`Session`]'s payment has got.
    pub enum PaymentStatus {
        /// Not paid.
        Unpaid = "unpaid",
        /// Being processed.
        Processing = "processing",
        /// Paid.
        Paid = "paid",
    }
}

string_enum! {
    /// How a checkout [`Session`] is shown.
    pub enum UiMode {
        /// Embedded in the merchant's page.
        Elements = "elements",
        /// On a page hosted by Clink.
        HostedPage = "hostedPage",
    }
}

/// A registered price (`PriceApiVo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Price {
    /// Identifies the price.
    pub price_id: Option<Text>,
    /// The price in each location's currency.
    pub price_list: Option<Vec<LocalPrice>>,
    /// The billing cycle, for recurring prices.
    pub recurring: Option<PriceRecurring>,
}

/// A price in one currency (`PriceDataApiVo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LocalPrice {
    /// The amount.
    #[serde(default, with = "amount")]
    pub amount: Option<Decimal>,
    /// The currency of `amount`.
    pub currency: Option<Currency>,
    /// The exchange rate from the original currency (exact, like amounts).
    #[serde(default, with = "amount")]
    pub exchange_rate: Option<Decimal>,
}

/// The billing cycle of a registered [`Price`] (`RecurringApiVo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PriceRecurring {
    /// Days of free trial.
    #[serde(default, deserialize_with = "super::common::blank_is_none")]
    pub free_trial_days: Option<i32>,
    /// The length of a cycle.
    pub interval: Option<Interval>,
}

/// The customer of a checkout [`Session`] (`CustomerApiVo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Customer {
    /// Identifies the customer.
    pub customer_id: Option<Text>,
    /// The customer's email.
    pub email: Option<Text>,
    /// The customer's name (not in Clink's schema; sent by its CLI fixtures).
    pub name: Option<Text>,
}

/// A registered product (`ProductApiVo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Product {
    /// Identifies the product.
    pub product_id: Option<Text>,
    /// The product's name.
    pub product_name: Option<Text>,
}
