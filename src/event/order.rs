//! `order.*` data.
use serde::{Deserialize, Serialize};

/// The order an `order.*` event is about (`OrderApiVo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Order {
    /// Identifies the order.
    pub order_id: Option<String>,
}
