//! The one configuration error every builder in the crate returns.

use std::borrow::Cow;
use std::fmt;

/// A configuration value the crate cannot work with: an empty signing
/// secret, a zero lease or capacity, a table name that is not a plain
/// identifier, ...
///
/// Every setter that takes a value that could be wrong returns
/// `Result<Self, ConfigError>`; setters whose every value is valid return
/// `Self`. Nothing configured is checked again mid-delivery, and nothing
/// configured can make a delivery panic.
///
/// ```
/// use clink_webhooks::Verifier;
///
/// let error = Verifier::new("").unwrap_err();
/// assert!(error.to_string().contains("empty signing secret"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: Cow<'static, str>,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// What is wrong and what to do, as [`Display`](fmt::Display) prints it
    /// without the leading "invalid configuration".
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}
