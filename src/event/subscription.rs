//! `subscription.*` data.
use serde::{Deserialize, Serialize};

/// The resource a `subscription.*` event is about.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Subscription {}
