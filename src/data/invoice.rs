//! `invoice.*` data: [`Invoice`], and the [`InvoiceItem`] that subscriptions share.
//!
//! ```
//! use clink_webhooks::data::{Interval, Invoice, InvoiceStatus};
//! use clink_webhooks::events::RawEvent;
//!
//! let body = br#"{"id":"evt_1","type":"invoice.paid","data":{"object":{"invoiceId":"inv_1",
//!     "status":"paid","items":[{"amount":19.99,"price":{"recurring":{"interval":"month"}}}]}}}"#;
//! let invoice = RawEvent::from_slice(body)?.decode::<Invoice>()?.data;
//! assert_eq!(invoice.status, Some(InvoiceStatus::Paid));
//! let item = &invoice.items.unwrap()[0];
//! assert_eq!(item.amount.unwrap().to_string(), "19.99");
//! let recurring = item.price.as_ref().unwrap().recurring.as_ref().unwrap();
//! assert_eq!(recurring.interval, Some(Interval::Month));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::common::{amount, string_enum, time, Billing, Currency, Interval};
use super::Text;
use crate::Timestamp;

/// The invoice an `invoice.*` event is about (`InvoiceApiVo`). One invoice
/// covers one billing period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Invoice {
    /// Identifies the invoice.
    pub invoice_id: Option<Text>,
    /// The subscription billed.
    pub subscription_id: Option<Text>,
    /// The related order.
    pub order_id: Option<Text>,
    /// The customer billed.
    pub customer_id: Option<Text>,
    /// The merchant.
    pub merchant_id: Option<Text>,
    /// The invoice's state.
    pub status: Option<InvoiceStatus>,
    /// When the invoice was created.
    #[serde(default, with = "time")]
    pub create_time: Option<Timestamp>,
    /// Start of the billed period.
    #[serde(default, with = "time")]
    pub current_period_start: Option<Timestamp>,
    /// End of the billed period.
    #[serde(default, with = "time")]
    pub current_period_end: Option<Timestamp>,
    /// The invoice total.
    #[serde(default, with = "amount")]
    pub original_amount: Option<Decimal>,
    /// The currency of `original_amount`.
    pub original_currency: Option<Currency>,
    /// How the invoice is collected.
    pub billing: Option<Billing>,
    /// The line items.
    pub items: Option<Vec<InvoiceItem>>,
}

string_enum! {
    /// The state of an [`Invoice`]: `open`, then `paid` or `void`.
    pub enum InvoiceStatus {
        /// Initialised, not paid yet.
        Open = "open",
        /// The payment succeeded.
        Paid = "paid",
        /// Cancelled without a successful payment.
        Void = "void",
    }
}

/// A line of an invoice, or a subscription's current or next cycle (`InvoiceItem`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct InvoiceItem {
    /// Identifies the line.
    pub invoice_item_id: Option<Text>,
    /// The line total.
    #[serde(default, with = "amount")]
    pub amount: Option<Decimal>,
    /// The currency of `amount`.
    pub currency: Option<Currency>,
    /// The line's description.
    pub description: Option<Text>,
    /// Start of the period the line covers.
    #[serde(default, with = "time")]
    pub period_start: Option<Timestamp>,
    /// End of the period the line covers.
    #[serde(default, with = "time")]
    pub period_end: Option<Timestamp>,
    /// `true` for a prorated line.
    #[serde(default, deserialize_with = "super::common::blank_is_none")]
    pub proration: Option<bool>,
    /// The price billed.
    pub price: Option<InvoiceItemPrice>,
}

/// The price an [`InvoiceItem`] bills (`InvoiceItemPrice`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct InvoiceItemPrice {
    /// The product billed.
    pub product_id: Option<Text>,
    /// The product's name.
    pub product_name: Option<Text>,
    /// The price billed.
    pub price_id: Option<Text>,
    /// The price snapshot at the time of invoicing.
    pub price_snapshot_id: Option<Text>,
    /// The price per unit.
    #[serde(default, with = "amount")]
    pub unit_amount: Option<Decimal>,
    /// How many units.
    #[serde(default, deserialize_with = "super::common::blank_is_none")]
    pub quantity: Option<i32>,
    /// The billing cycle.
    pub recurring: Option<Recurring>,
}

/// The billing cycle of an [`InvoiceItemPrice`] (`Recurring`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Recurring {
    /// The length of a cycle. Always sent by Clink (required in its schema).
    pub interval: Option<Interval>,
    /// How the price scales. Always sent by Clink (required in its schema).
    pub pricing_model: Option<PricingModel>,
    /// How tiers apply ("coming soon" per Clink). Always sent by Clink
    /// (required in its schema).
    pub tiers_mode: Option<TiersMode>,
    /// Days of trial.
    #[serde(default, deserialize_with = "super::common::blank_is_none")]
    pub trial_period_days: Option<i32>,
    /// Interval units per cycle; for [`Interval::Custom`], the number of days.
    #[serde(default, deserialize_with = "super::common::blank_is_none")]
    pub interval_count: Option<i32>,
}

string_enum! {
    /// How a recurring price scales with quantity.
    pub enum PricingModel {
        /// One price whatever the quantity.
        FlatRate = "flat_rate",
        /// A price per seat.
        PerSeat = "per_seat",
    }
}

string_enum! {
    /// How price tiers apply to a quantity.
    pub enum TiersMode {
        /// The tier the whole quantity falls in prices every unit.
        Volume = "volume",
        /// Each tier prices the units that fall in it.
        Graduated = "graduated",
    }
}
