//! `dispute.*` data: [`Dispute`], the charge-back Clink sends as `data.object`.
//!
//! ```
//! use clink_webhooks::data::{Dispute, DisputeStatus};
//! use clink_webhooks::events::RawEvent;
//!
//! let body = br#"{"id":"evt_1","type":"dispute.won","created":1750062041000,
//!     "data":{"object":{"chargeBackId":"cb_1","status":3,"disputeAmount":19.99}}}"#;
//! let dispute = RawEvent::from_slice(body)?.decode::<Dispute>()?.data;
//! assert_eq!(dispute.charge_back_id.as_deref(), Some("cb_1"));
//! assert_eq!(dispute.status, Some(DisputeStatus::Won));
//! assert_eq!(DisputeStatus::from(9), DisputeStatus::Unknown(9));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::common::{amount, time, Currency};
use super::Text;
use crate::Timestamp;

/// The charge-back a `dispute.*` event is about (`ChargeBackWebhookVo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Dispute {
    /// Identifies the dispute (there is no `disputeId`).
    pub charge_back_id: Option<Text>,
    /// The disputed order.
    pub order_id: Option<Text>,
    /// The merchant.
    pub merchant_id: Option<Text>,
    /// The customer.
    pub customer_id: Option<Text>,
    /// The payment channel.
    pub channel_code: Option<Text>,
    /// The amount disputed.
    #[serde(default, with = "amount")]
    pub dispute_amount: Option<Decimal>,
    /// The currency of `dispute_amount`.
    pub dispute_currency: Option<Currency>,
    /// The amount of the original transaction.
    #[serde(default, with = "amount")]
    pub original_amount: Option<Decimal>,
    /// The currency of `original_amount`.
    pub original_currency: Option<Currency>,
    /// The reason code.
    pub reason_code: Option<Text>,
    /// The reason, in words.
    pub reason_description: Option<Text>,
    /// The card network's reason code.
    pub network_reason_code: Option<Text>,
    /// The dispute's state (sent as an integer).
    #[serde(default, deserialize_with = "super::common::blank_is_none")]
    pub status: Option<DisputeStatus>,
    /// The deadline for submitting evidence.
    #[serde(default, with = "time")]
    pub evidence_deadline: Option<Timestamp>,
    /// When the channel opened the dispute.
    #[serde(default, with = "time")]
    pub channel_dispute_time: Option<Timestamp>,
}

/// The state of a [`Dispute`], which Clink sends as an integer (`1` to `5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisputeStatus {
    /// `1`: opened, nothing decided.
    Pending,
    /// `2`: being processed.
    Processing,
    /// `3`: decided for the merchant.
    Won,
    /// `4`: decided for the customer.
    Lost,
    /// `5`: withdrawn.
    Withdrawn,
    /// A code this version of the crate does not know, kept as sent.
    Unknown(i64),
}

impl DisputeStatus {
    /// The integer Clink sends.
    #[must_use]
    pub fn code(self) -> i64 {
        match self {
            Self::Pending => 1,
            Self::Processing => 2,
            Self::Won => 3,
            Self::Lost => 4,
            Self::Withdrawn => 5,
            Self::Unknown(code) => code,
        }
    }
}

impl From<i64> for DisputeStatus {
    fn from(code: i64) -> Self {
        match code {
            1 => Self::Pending,
            2 => Self::Processing,
            3 => Self::Won,
            4 => Self::Lost,
            5 => Self::Withdrawn,
            other => Self::Unknown(other),
        }
    }
}

impl fmt::Display for DisputeStatus {
    /// The lower-case name, or the code when unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Won => "won",
            Self::Lost => "lost",
            Self::Withdrawn => "withdrawn",
            Self::Unknown(code) => return write!(f, "{code}"),
        })
    }
}

impl Serialize for DisputeStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.code())
    }
}

impl<'de> Deserialize<'de> for DisputeStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        i64::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every status has its code, the code reads back as the status, and
    /// its name is what `Display` writes; an unknown code is kept and shown.
    #[test]
    fn a_status_is_its_code_and_its_name() {
        let statuses = [
            (DisputeStatus::Pending, 1, "pending"),
            (DisputeStatus::Processing, 2, "processing"),
            (DisputeStatus::Won, 3, "won"),
            (DisputeStatus::Lost, 4, "lost"),
            (DisputeStatus::Withdrawn, 5, "withdrawn"),
            (DisputeStatus::Unknown(42), 42, "42"),
            (DisputeStatus::Unknown(-7), -7, "-7"),
        ];
        for (status, code, name) in statuses {
            assert_eq!(status.code(), code);
            assert_eq!(DisputeStatus::from(code), status);
            assert_eq!(status.to_string(), name);
            assert_eq!(serde_json::to_string(&status).unwrap(), code.to_string());
            let read: DisputeStatus = serde_json::from_str(&code.to_string()).unwrap();
            assert_eq!(read, status);
        }
    }
}
