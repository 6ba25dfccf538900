//! `subscription.*` and `subscription.updated.*` data: [`Subscription`].
//!
//! ```
//! use clink_webhooks::data::{Subscription, SubscriptionStatus};
//! use clink_webhooks::events::RawEvent;
//!
//! // The event is `subscription.trialing`; the status is `free_trial`.
//! let body = br#"{"id":"evt_1","type":"subscription.trialing","data":{"subscriptionId":"sub_1",
//!     "status":"free_trial","quantity":2,"elapsedCycles":0,
//!     "scheduledPhases":[{"sequence":1,"effectiveCycle":3,"priceSnapshotId":"ps_2","quantity":5}]}}"#;
//! let sub = RawEvent::from_slice(body)?.decode::<Subscription>()?.data;
//! assert_eq!(sub.status, Some(SubscriptionStatus::FreeTrial));
//! assert_eq!(sub.scheduled_phases.unwrap()[0].effective_cycle, Some(3));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{Deserialize, Serialize};

use super::common::{string_enum, time, Billing, Currency, Metadata};
use super::InvoiceItem;
use super::Text;
use crate::Timestamp;

/// The subscription a `subscription.*` event is about (`SubApiVo`).
///
/// Clink's schema makes the first eleven fields required; they are still
/// `Option` here, so that an event missing one stays readable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Subscription {
    /// Identifies the subscription. Always sent by Clink (required in its schema).
    pub subscription_id: Option<Text>,
    /// The subscriber. Always sent by Clink (required in its schema).
    pub customer_id: Option<Text>,
    /// The product subscribed to. Always sent by Clink (required in its schema).
    pub product_id: Option<Text>,
    /// The price subscribed at. Always sent by Clink (required in its schema).
    pub price_id: Option<Text>,
    /// The immutable price snapshot taken at creation. Always sent by Clink
    /// (required in its schema).
    pub price_snapshot_id: Option<Text>,
    /// When the subscription was created. Always sent by Clink (required in its schema).
    #[serde(default, with = "time")]
    pub create_time: Option<Timestamp>,
    /// Units subscribed. Always sent by Clink (required in its schema).
    #[serde(default, deserialize_with = "super::common::blank_is_none")]
    pub quantity: Option<i32>,
    /// The kind of payment method, e.g. `CARD`. Always sent by Clink
    /// (required in its schema).
    pub payment_method_type: Option<Text>,
    /// The payment instrument charged. Always sent by Clink (required in its schema).
    pub payment_instrument_id: Option<Text>,
    /// The subscription's state. Always sent by Clink (required in its schema).
    pub status: Option<SubscriptionStatus>,
    /// How the subscription is collected. Always sent by Clink (required in its schema).
    pub billing: Option<Billing>,
    /// The merchant's reference (named `merchantReference`, not `merchantReferenceId`).
    pub merchant_reference: Option<Text>,
    /// The subscription's currency.
    pub currency: Option<Currency>,
    /// Start of the trial.
    #[serde(default, with = "time")]
    pub trial_start: Option<Timestamp>,
    /// End of the trial.
    #[serde(default, with = "time")]
    pub trial_end: Option<Timestamp>,
    /// Start of the current period.
    #[serde(default, with = "time")]
    pub current_period_start: Option<Timestamp>,
    /// End of the current period.
    #[serde(default, with = "time")]
    pub current_period_end: Option<Timestamp>,
    /// When the subscription is scheduled to cancel itself.
    #[serde(default, with = "time")]
    pub cancel_at: Option<Timestamp>,
    /// Whether it cancels at the end of the current period.
    #[serde(default, deserialize_with = "super::common::blank_is_none")]
    pub cancel_at_period_end: Option<bool>,
    /// When cancellation was requested.
    #[serde(default, with = "time")]
    pub canceled_at: Option<Timestamp>,
    /// Why it was cancelled.
    pub cancel_reason: Option<Text>,
    /// The current recurring price and cycle.
    pub recurring_invoice_item: Option<InvoiceItem>,
    /// A preview of the next cycle; only present while activation or a plan
    /// change is pending.
    pub upcoming_invoice_item: Option<InvoiceItem>,
    /// Plan changes that have not taken effect yet.
    pub scheduled_phases: Option<Vec<ScheduledPhase>>,
    /// Billing-period boundaries crossed so far; compare with
    /// [`ScheduledPhase::effective_cycle`].
    #[serde(default, deserialize_with = "super::common::blank_is_none")]
    pub elapsed_cycles: Option<i32>,
    /// The checkout session the subscription came from.
    pub session_id: Option<Text>,
    /// Merchant key/value pairs.
    pub metadata: Option<Metadata>,
}

string_enum! {
    /// The state of a [`Subscription`]. The names differ from the events':
    /// `subscription.trialing` carries `free_trial`, `subscription.activated`
    /// carries `active`.
    pub enum SubscriptionStatus {
        /// Waiting for its first payment.
        Incomplete = "incomplete",
        /// In its free trial.
        FreeTrial = "free_trial",
        /// Active and paid.
        Active = "active",
        /// The first payment never came.
        IncompleteExpired = "incomplete_expired",
        /// A renewal payment failed.
        PastDue = "past_due",
        /// Cancelled.
        Cancelled = "cancelled",
    }
}

/// A plan change scheduled for a later cycle (`ScheduledPhase`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ScheduledPhase {
    /// Position in the schedule, strictly increasing. Always sent by Clink
    /// (required in its schema).
    #[serde(default, deserialize_with = "super::common::blank_is_none")]
    pub sequence: Option<i32>,
    /// The renewal boundary, counted from creation, at which the phase takes
    /// effect; strictly increasing. Always sent by Clink (required in its schema).
    #[serde(default, deserialize_with = "super::common::blank_is_none")]
    pub effective_cycle: Option<i32>,
    /// The target price snapshot. Always sent by Clink (required in its schema).
    pub price_snapshot_id: Option<Text>,
    /// Units from then on. Always sent by Clink (required in its schema).
    #[serde(default, deserialize_with = "super::common::blank_is_none")]
    pub quantity: Option<i32>,
    /// Merchant key/value pairs (at most 10 keys).
    pub metadata: Option<Metadata>,
}
