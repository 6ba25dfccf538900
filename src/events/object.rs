//! Which object an event is about: [`ObjectKey`].
//!
//! Clink does not deliver in order, so a handler that keeps state per object
//! needs to know which object an event is about and how new the event is.
//! [`Event::object_key`] and [`RawEvent::object_key`] give the first; the
//! event's `created`, then its `id` to break ties, give the second.
//!
//! ```
//! use clink_webhooks::data::Order;
//! use clink_webhooks::events::{ObjectKey, RawEvent};
//!
//! let body = br#"{"id":"evt_1","type":"order.failed","data":{"orderId":"ord_1"}}"#;
//! let raw = RawEvent::from_slice(body)?;
//! let key = ObjectKey::new("order", "ord_1");
//! assert_eq!(raw.object_key().as_ref(), Some(&key));
//! assert_eq!(raw.decode::<Order>()?.object_key(), Some(key));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use serde_json::Value;

use super::{Event, RawEvent};
use crate::data::Resource;

/// Which object an event is about: its family and its id, e.g. `order` and
/// `ord_123`. Displays as `family:id`.
///
/// A customer known only by its email (`customer.verify` with a
/// `customerEmail` and no `customerId`) is keyed as an object of its own
/// kind, `customer_email`, by the SHA-256 of the email as sent, in
/// lowercase hex: `customer_email:` and 64 hex digits. So an email never
/// meets an id, and the key (kept in a freshness store for its retention,
/// in the inbox's object column, in logs) does not hold the address
/// itself. See [`Resource`].
///
/// In an inbox's object column (the key that orders an object's events,
/// which [`NewEvent::from_verified`](crate::store::NewEvent::from_verified)
/// writes), an id longer than 256 bytes is held as `sha256:` and its
/// SHA-256 in lowercase hex (`order:sha256:` and 64 hex digits), so that
/// the key fits every inbox's index (a PostgreSQL B-tree entry holds at
/// most about 2.7 KB). An id that itself starts with `sha256:` is held the
/// same way there, so such a key never meets an id as sent; every other id
/// of 256 bytes or fewer is held as it is. [`Event::object_key`] and
/// [`RawEvent::object_key`] give the id as sent (a freshness store that
/// cannot hold a key leaves its object untracked).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The event family, as [`EventType::family`](crate::EventType::family)
    /// gives it; `customer_email` for a customer keyed by its email.
    pub family: String,
    /// The object's id within the family (for `customer_email`, the
    /// SHA-256 of the customer's email, in hex).
    pub id: String,
}

impl ObjectKey {
    /// The key of object `id` in `family`.
    pub fn new(family: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            family: family.into(),
            id: id.into(),
        }
    }

    /// This key within a merchant `account`: the family becomes
    /// `{account}/{family}`, so that a freshness store keeps one record per
    /// account and object. The router tracks keys this way when the layer
    /// serves several [accounts](crate::accounts); account ids hold no `/`.
    #[must_use]
    pub fn within(mut self, account: &str) -> Self {
        self.family = format!("{account}/{}", self.family);
        self
    }

    /// This key as an inbox holds it: an id over 256 bytes, or one
    /// starting with `sha256:`, as `sha256:` and its SHA-256 in lowercase
    /// hex; any other as it is.
    #[must_use]
    pub(crate) fn bounded(mut self) -> Self {
        if self.id.len() > MAX_ID_LEN || self.id.starts_with(DIGEST_PREFIX) {
            self.id = format!("{DIGEST_PREFIX}{}", alias_digest(&self.id));
        }
        self
    }

    fn for_data(family: &str, data: &impl Resource) -> Option<Self> {
        if let Some(id) = data.object_id(family).filter(|id| !id.is_empty()) {
            return Some(Self::new(family, id));
        }
        data.object_alias(family)
            .filter(|(_, alias)| !alias.is_empty())
            .map(|(kind, alias)| Self::new(kind, alias_digest(alias)))
    }
}

/// The longest object id an inbox's key holds as it is, in bytes (see
/// [`ObjectKey::bounded`]).
const MAX_ID_LEN: usize = 256;

/// What starts the id of an inbox's key that is the digest of the id.
const DIGEST_PREFIX: &str = "sha256:";

/// An alias (a customer's email) as a key holds it: its SHA-256, in
/// lowercase hex, so that the key does not carry the address.
fn alias_digest(alias: &str) -> String {
    use sha2::{Digest as _, Sha256};
    hex::encode(Sha256::digest(alias.as_bytes()))
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.family, self.id)
    }
}

impl<T: Resource> Event<T> {
    /// The object this event is about; `None` when its data carries no id.
    ///
    /// The id is found by the rule of [`Resource`]: a family with a data
    /// type in this crate (`order`, ..., `customer`) is keyed by its own id
    /// field alone, any other family by `<family>Id`, then `id`; a customer
    /// with no `customerId` is keyed by its `customerEmail`, as
    /// `customer_email:` and the SHA-256 of the email in hex. For the
    /// family's own data type (or [`serde_json::Value`]) this is the key
    /// [`RawEvent::object_key`] gives.
    #[must_use]
    pub fn object_key(&self) -> Option<ObjectKey> {
        ObjectKey::for_data(self.event_type.family(), &self.data)
    }
}

impl RawEvent {
    /// The object this event is about, read from the raw data by the same
    /// rule as [`Event::object_key`] (see [`Resource`]): the same key for
    /// every data type the event decodes into; `None` when the data carries
    /// no id.
    #[must_use]
    pub fn object_key(&self) -> Option<ObjectKey> {
        // Only the resource's own members that are strings or numbers: an id
        // is one, and a member the key never reads (a number past `f64`'s
        // range, nesting deeper than serde_json reads into a `Value`) must
        // not hide it, as a typed decode, which skips such a member, would
        // not.
        let members: Vec<(String, &serde_json::value::RawValue)> =
            serde_json::from_str::<MembersInOrder<'_>>(self.data_json())
                .ok()?
                .0;
        // A name given twice means its last value, as in a typed decode
        // into a `Value`: a member that is not a string or a number (or
        // that no `Value` holds) takes out an earlier one of its name.
        let mut data = serde_json::Map::new();
        for (name, raw) in members {
            let scalar = matches!(
                raw.get().as_bytes().first(),
                Some(b'"' | b'-' | b'0'..=b'9')
            );
            match scalar.then(|| serde_json::from_str::<Value>(raw.get()).ok()) {
                Some(Some(value)) => {
                    data.insert(name, value);
                }
                _ => {
                    data.remove(&name);
                }
            }
        }
        ObjectKey::for_data(self.event_type().family(), &Value::Object(data))
    }
}

/// An object's members in order, each value as its raw text (read without
/// building it, so at any depth).
struct MembersInOrder<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for MembersInOrder<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Members<'a> {
            type Value = MembersInOrder<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self, mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) =
                    map.next_entry::<String, &'de serde_json::value::RawValue>()?
                {
                    members.push(member);
                }
                Ok(MembersInOrder(members))
            }
        }
        deserializer.deserialize_map(Members(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Dispute, Order};

    /// A member the key never reads, that a `Value` cannot hold, does not
    /// hide the id: the raw key agrees with the typed one.
    #[test]
    fn a_member_a_value_cannot_hold_does_not_hide_the_id() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for extra in ["1e400".to_owned(), deep] {
            let body = format!(
                r#"{{"id":"e","type":"order.succeeded","data":{{"x":{extra},"orderId":"o1","y":{{"z":[1]}}}}}}"#
            );
            let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
            let typed = raw.decode::<Order>().unwrap();
            assert_eq!(typed.object_key().unwrap().to_string(), "order:o1");
            assert_eq!(raw.object_key(), typed.object_key());
        }
    }

    /// An id given twice is its last value, as a typed decode into a
    /// `Value` reads it, also when that value is not a string: the raw key
    /// then falls back to the next id as the typed one does.
    #[test]
    fn an_id_given_twice_is_its_last_value_in_both_keys() {
        for (data, key) in [
            (
                r#"{"riskRuleId":"a","riskRuleId":{"x":1},"id":"b"}"#,
                "risk_rule:b",
            ),
            (
                r#"{"riskRuleId":{"x":1},"riskRuleId":"a","id":"b"}"#,
                "risk_rule:a",
            ),
            (r#"{"riskRuleId":"a","riskRuleId":"c"}"#, "risk_rule:c"),
        ] {
            let body = format!(r#"{{"id":"e","type":"risk_rule.updated","data":{data}}}"#);
            let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
            let typed = raw.decode::<Value>().unwrap();
            assert_eq!(typed.object_key().unwrap().to_string(), key, "{data}");
            assert_eq!(raw.object_key(), typed.object_key(), "{data}");
        }
    }

    /// As an inbox holds it, an id over 256 bytes is keyed by its digest;
    /// one of 256 bytes is kept as it is; one that looks like a digest key
    /// is keyed by its own digest, so never meets a long id's key. The
    /// event's own key keeps the id as sent.
    #[test]
    fn an_inbox_holds_a_long_object_id_by_its_digest() {
        let key_of = |id: &str| {
            let body =
                format!(r#"{{"id":"e","type":"order.succeeded","data":{{"orderId":"{id}"}}}}"#);
            let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
            let key = raw.object_key().unwrap();
            assert_eq!(
                Some(&key),
                raw.decode::<Order>().unwrap().object_key().as_ref()
            );
            assert_eq!(key.id, id, "the event's own key");
            key.bounded()
        };
        let long = "o".repeat(5_000);
        let key = key_of(&long);
        assert_eq!(
            key.to_string(),
            format!("order:sha256:{}", alias_digest(&long))
        );
        assert_eq!(key.id.len(), 71);
        assert_ne!(key_of(&"o".repeat(5_001)), key);
        let edge = "o".repeat(256);
        assert_eq!(key_of(&edge).id, edge);
        assert_eq!(key_of(&"o".repeat(257)).id.len(), 71);
        let lookalike = key.id.clone();
        let other = key_of(&lookalike);
        assert!(other.id.starts_with("sha256:"));
        assert_ne!(other, key);
        assert_eq!(key_of("ord_1").to_string(), "order:ord_1");
        let email = ObjectKey::new("customer_email", alias_digest("a@example.com"));
        assert_eq!(email.clone().bounded(), email);
    }

    #[test]
    fn raw_and_typed_keys_agree_and_empty_ids_are_none() {
        let raw = RawEvent::from_slice(
            br#"{"id":"e","type":"dispute.won","data":{"object":{"chargeBackId":"cb_1","orderId":"o"}}}"#,
        )
        .unwrap();
        let typed = raw.decode::<Dispute>().unwrap();
        assert_eq!(raw.object_key(), typed.object_key());
        assert_eq!(typed.object_key().unwrap().to_string(), "dispute:cb_1");
        let empty =
            RawEvent::from_slice(br#"{"id":"e","type":"order.created","data":{"orderId":""}}"#)
                .unwrap();
        assert_eq!(empty.object_key(), None);
        assert_eq!(
            ObjectKey::new("order", "ord_1")
                .within("acct_1")
                .to_string(),
            "acct_1/order:ord_1"
        );
    }
}
