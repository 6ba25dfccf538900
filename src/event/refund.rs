//! `refund.*` data.
use serde::{Deserialize, Serialize};

/// The resource a `refund.*` event is about.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Refund {}
