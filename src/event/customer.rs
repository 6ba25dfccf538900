//! `customer.verify` data.
use serde::{Deserialize, Serialize};

/// The resource a `customer.verify` event is about.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CustomerVerify {}
