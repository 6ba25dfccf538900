//! `customer.verify` data: [`CustomerVerify`], sent as `data.object`.
//!
//! ```
//! use clink_webhooks::data::CustomerVerify;
//! use clink_webhooks::events::RawEvent;
//!
//! let body = br#"{"id":"evt_1","type":"customer.verify",
//!     "data":{"object":{"customerId":"cus_1","customerEmail":"a@example.com","merchantId":"m_1"}}}"#;
//! let verify = RawEvent::from_slice(body)?.decode::<CustomerVerify>()?.data;
//! assert_eq!(verify.customer_email.as_deref(), Some("a@example.com"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{Deserialize, Serialize};

use super::Text;

/// The customer a `customer.verify` event asks to verify (`CustomerVerifyDataVo.object`).
///
/// Its [object key](crate::Event::object_key) is `customer:<customerId>`;
/// without a `customerId`, `customer_email:` and the SHA-256 of its
/// `customerEmail` in hex (see [`Resource`](super::Resource)).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CustomerVerify {
    /// The email to verify.
    pub customer_email: Option<Text>,
    /// The merchant.
    pub merchant_id: Option<Text>,
    /// The customer.
    pub customer_id: Option<Text>,
}
