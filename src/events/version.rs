//! [`Version`] and [`Freshness`]: how new an event is, and whether it is the
//! newest seen about its object.

use std::cmp::Ordering;
use std::fmt;

use crate::Timestamp;

/// How new an event is: its `created` time, then its id to break ties.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    created: Timestamp,
    event_id: String,
}

impl Version {
    /// The version of the event `event_id` created at `created`.
    pub fn new(created: Timestamp, event_id: impl Into<String>) -> Self {
        Self {
            created,
            event_id: event_id.into(),
        }
    }

    /// When the event was created.
    #[must_use]
    pub fn created(&self) -> Timestamp {
        self.created
    }

    /// The event's id.
    #[must_use]
    pub fn event_id(&self) -> &str {
        &self.event_id
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.created
            .cmp(&other.created)
            .then_with(|| self.event_id.cmp(&other.event_id))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.created, self.event_id)
    }
}

/// Whether an event is the newest seen about its object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Freshness {
    /// Not tracked: the router has no [`FreshnessStore`](crate::store::FreshnessStore), or the event has no
    /// `created` time or no object id.
    #[default]
    Untracked,
    /// No newer event about the same object has been handled.
    Fresh,
    /// A newer event about the same object was already handled.
    Stale {
        /// The newest version handled so far.
        newest_seen: Version,
    },
}

impl Freshness {
    /// Whether the event is known to be stale.
    #[must_use]
    pub fn is_stale(&self) -> bool {
        matches!(self, Self::Stale { .. })
    }

    /// How `version` compares with the `newest` recorded.
    #[must_use]
    pub fn of(version: &Version, newest: Option<Version>) -> Self {
        match newest {
            Some(newest) if newest > *version => Self::Stale {
                newest_seen: newest,
            },
            _ => Self::Fresh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ms: i64, id: &str) -> Version {
        Version::new(Timestamp::from_millis(ms), id)
    }

    #[test]
    fn versions_order_by_created_then_id() {
        assert!(v(1, "b") > v(1, "a"));
        assert!(v(2, "a") > v(1, "z"));
        assert_eq!(Freshness::of(&v(1, "a"), None), Freshness::Fresh);
        assert_eq!(Freshness::of(&v(2, "a"), Some(v(1, "a"))), Freshness::Fresh);
        assert_eq!(Freshness::of(&v(1, "a"), Some(v(1, "a"))), Freshness::Fresh);
        assert_eq!(
            Freshness::of(&v(1, "a"), Some(v(2, "a"))),
            Freshness::Stale {
                newest_seen: v(2, "a")
            }
        );
        assert!(Freshness::of(&v(1, "a"), Some(v(2, "a"))).is_stale());
        assert!(!Freshness::Fresh.is_stale() && !Freshness::Untracked.is_stale());
        assert_eq!(v(1, "a").partial_cmp(&v(1, "a")), Some(Ordering::Equal));
    }

    #[test]
    fn a_version_says_when_and_which_event() {
        let version = v(1_736_942_400_000, "evt_1");
        assert_eq!(version.created().as_millis(), 1_736_942_400_000);
        assert_eq!(version.event_id(), "evt_1");
        assert_eq!(version.to_string(), "2025-01-15T12:00:00.000Z (evt_1)");
    }
}
