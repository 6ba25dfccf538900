//! [`KeyName`]: a signing key's name as verifications hand it on.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

/// How many distinct names a process keeps for its life (at most
/// [`MAX_KEPT_LEN`] bytes each, so some 100 KiB in all): more than the keys
/// of any fixed configuration, and a bound for a key source that makes a
/// key per account.
const KEPT_NAMES: usize = 1024;

/// The longest name kept (the longest a [`SigningKey`](super::SigningKey)
/// may be given).
const MAX_KEPT_LEN: usize = 64;

/// A key's name. The first [`KEPT_NAMES`] distinct names are kept once for
/// the life of the process, so that a verification hands its key's name on
/// without counting references; a name beyond those is shared, so that
/// memory stays bounded however many keys a key source makes. Shared
/// behind a thin pointer, the name takes 16 bytes either way, as a `&str`
/// or an `Arc<str>` does alone.
#[derive(Clone)]
pub(crate) enum KeyName {
    Kept(&'static str),
    Shared(Arc<Box<str>>),
}

/// The names kept so far. Read far more often (a name read back from
/// storage, per event) than added to (a key made).
static KEPT: RwLock<BTreeSet<&'static str>> = RwLock::new(BTreeSet::new());

impl KeyName {
    /// `name`, kept when it already is or there is room to keep it.
    pub(crate) fn new(name: &str) -> Self {
        let mut kept = KEPT.write().unwrap_or_else(PoisonError::into_inner);
        match keep(&mut kept, name) {
            Some(name) => Self::Kept(name),
            None => Self::shared(name),
        }
    }

    /// `name`, kept when a key was given it; never adds a name to those
    /// kept (for names read back from storage).
    pub(crate) fn known(name: &str) -> Self {
        let kept = KEPT.read().unwrap_or_else(PoisonError::into_inner);
        match kept.get(name) {
            Some(name) => Self::Kept(name),
            None => Self::shared(name),
        }
    }

    fn shared(name: &str) -> Self {
        Self::Shared(Arc::new(name.into()))
    }

    /// The name of no key (a verification with an index out of range,
    /// which does not arise).
    pub(crate) const fn none() -> Self {
        Self::Kept("")
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Kept(name) => name,
            Self::Shared(name) => name.as_ref(),
        }
    }

    /// Whether `self` and `other` are the same text at the same address:
    /// the same name, without comparing its bytes.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn same(&self, other: &Self) -> bool {
        std::ptr::eq(self.as_str(), other.as_str())
    }

    /// The name as a metric label's value: borrowed when kept.
    #[cfg(feature = "metrics")]
    pub(crate) fn label(&self) -> metrics::SharedString {
        match self {
            Self::Kept(name) => metrics::SharedString::from(*name),
            Self::Shared(_) => metrics::SharedString::from(self.as_str().to_owned()),
        }
    }
}

/// `name` as `kept` holds it, added when there is room: `None` when `kept`
/// is full or `name` too long to keep.
fn keep(kept: &mut BTreeSet<&'static str>, name: &str) -> Option<&'static str> {
    if let Some(name) = kept.get(name) {
        return Some(name);
    }
    if kept.len() >= KEPT_NAMES || name.len() > MAX_KEPT_LEN {
        return None;
    }
    let name: &'static str = Box::leak(Box::from(name));
    kept.insert(name);
    Some(name)
}

/// Whether `name` is among the names kept.
#[cfg(test)]
pub(crate) fn is_kept(name: &str) -> bool {
    KEPT.read()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(name)
}

impl PartialEq for KeyName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for KeyName {}

impl fmt::Debug for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_takes_sixteen_bytes_kept_or_shared() {
        assert_eq!(std::mem::size_of::<KeyName>(), 16);
    }

    #[test]
    fn a_name_is_kept_once_and_the_kept_names_are_bounded() {
        // A set of its own: the process's is shared with every other test.
        let mut kept = BTreeSet::new();
        let a = keep(&mut kept, "kept-once").unwrap();
        assert!(std::ptr::eq(
            a,
            keep(&mut kept, &String::from("kept-once")).unwrap()
        ));
        assert_eq!(kept.len(), 1);
        assert_eq!(keep(&mut kept, &"x".repeat(MAX_KEPT_LEN + 1)), None);
        assert_eq!(
            keep(&mut kept, &"x".repeat(MAX_KEPT_LEN)).map(str::len),
            Some(64)
        );
        for i in kept.len()..KEPT_NAMES {
            assert!(keep(&mut kept, &format!("bounded-{i}")).is_some());
        }
        assert_eq!(kept.len(), KEPT_NAMES);
        assert_eq!(keep(&mut kept, "one-too-many"), None);
        assert_eq!(kept.len(), KEPT_NAMES);
        // Names kept before the set filled are still found.
        assert!(std::ptr::eq(a, keep(&mut kept, "kept-once").unwrap()));
    }

    #[test]
    fn the_process_names_keep_their_text_and_reading_back_adds_none() {
        let a = KeyName::new("process-name");
        assert_eq!(a.as_str(), "process-name");
        assert_eq!(KeyName::new(&String::from("process-name")), a);
        // A name no key was given is shared when read back, never kept.
        let read = KeyName::known("read-back-only");
        assert!(matches!(read, KeyName::Shared(_)));
        assert_eq!(read.as_str(), "read-back-only");
        assert!(!KEPT.read().unwrap().contains("read-back-only"));
        // Equal text compares equal whichever form holds it.
        assert_eq!(KeyName::shared("process-name"), a);
        assert!(!KeyName::shared("process-name").same(&KeyName::shared("process-name")));
        // Found again by reading back, at the same address, when it was kept
        // (the process's set may have been filled by other tests).
        if matches!(a, KeyName::Kept(_)) {
            assert!(KeyName::known("process-name").same(&a));
        }
    }
}
