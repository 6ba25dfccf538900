//! Which object an event is about: [`Resource`] and [`ObjectKey`].
//!
//! Clink does not deliver in order, so a handler that keeps state per object
//! needs to know which object an event is about and how new the event is.
//! [`Event::object_key`] and [`RawEvent::object_key`] give the first; the
//! event's `created`, then its `id` to break ties, give the second.
//!
//! ```
//! use clink_webhooks::event::{ObjectKey, Order, RawEvent};
//!
//! let body = br#"{"id":"evt_1","type":"order.failed","data":{"orderId":"ord_1"}}"#;
//! let raw = RawEvent::from_slice(body)?;
//! let key = ObjectKey::new("order", "ord_1");
//! assert_eq!(raw.object_key().as_ref(), Some(&key));
//! assert_eq!(raw.decode::<Order>()?.object_key(), Some(key));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use super::{
    CustomerVerify, Dispute, Event, Invoice, Order, RawEvent, Refund, Session, Subscription,
};

/// Event data that identifies the object it is about.
pub trait Resource {
    /// The id of the object this data is about, if it carries one.
    ///
    /// `family` is the event's [family](crate::EventType::family). The typed
    /// family data ignore it; [`serde_json::Value`] uses it to find the id
    /// field, trying `<family>Id` in camelCase (`paymentMethodId` for
    /// `payment_method`), then `id`.
    fn object_id(&self, family: &str) -> Option<&str>;

    /// The event family this data belongs to (`order`, `refund`, ...), or
    /// `None` for data that fits any event, such as [`serde_json::Value`].
    ///
    /// Every field of the family types is optional, so an event of another
    /// family would decode into them too; extractors such as
    /// `ClinkEvent<Order>` check this first so that a refund is never taken
    /// for an order.
    const FAMILY: Option<&'static str> = None;
}

/// Which object an event is about: its family and its id, e.g. `order` and
/// `ord_123`. Displays as `family:id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The event family, as [`EventType::family`](crate::EventType::family) gives it.
    pub family: String,
    /// The object's id within the family.
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

    fn for_data(family: &str, data: &impl Resource) -> Option<Self> {
        data.object_id(family)
            .filter(|id| !id.is_empty())
            .map(|id| Self::new(family, id))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.family, self.id)
    }
}

impl<T: Resource> Event<T> {
    /// The object this event is about; `None` when its data carries no id.
    #[must_use]
    pub fn object_key(&self) -> Option<ObjectKey> {
        ObjectKey::for_data(self.event_type.family(), &self.data)
    }
}

impl RawEvent {
    /// The object this event is about, read from the raw data by the same
    /// rules as [`Event::object_key`]; `None` when the data carries no id.
    #[must_use]
    pub fn object_key(&self) -> Option<ObjectKey> {
        let data: Value = serde_json::from_str(self.data_json()).ok()?;
        ObjectKey::for_data(self.event_type().family(), &data)
    }
}

/// The field that identifies the object of `family`, as Clink names it.
pub(crate) fn id_field(family: &str) -> Cow<'static, str> {
    match family {
        "dispute" => Cow::Borrowed("chargeBackId"),
        "customer" => Cow::Borrowed("customerId"),
        other => {
            let mut field = String::with_capacity(other.len() + 2);
            let mut upper = false;
            for c in other.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    field.push(c.to_ascii_uppercase());
                    upper = false;
                } else {
                    field.push(c);
                }
            }
            field.push_str("Id");
            Cow::Owned(field)
        }
    }
}

impl Resource for Value {
    fn object_id(&self, family: &str) -> Option<&str> {
        let object = self.as_object()?;
        [id_field(family).as_ref(), "id"]
            .into_iter()
            .find_map(|field| object.get(field)?.as_str())
    }
}

macro_rules! resource_by_field {
    ($( $ty:ty => $family:literal, $field:ident, )+) => {
        $(
            impl Resource for $ty {
                fn object_id(&self, _family: &str) -> Option<&str> {
                    self.$field.as_deref()
                }

                const FAMILY: Option<&'static str> = Some($family);
            }
        )+
    };
}

resource_by_field! {
    Order => "order", order_id,
    Session => "session", session_id,
    Refund => "refund", refund_id,
    Subscription => "subscription", subscription_id,
    Invoice => "invoice", invoice_id,
    Dispute => "dispute", charge_back_id,
    CustomerVerify => "customer", customer_id,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_fields_follow_clink_names() {
        assert_eq!(id_field("order"), "orderId");
        assert_eq!(id_field("payment_method"), "paymentMethodId");
        assert_eq!(id_field("purchase_instruction"), "purchaseInstructionId");
        assert_eq!(id_field("dispute"), "chargeBackId");
    }

    #[test]
    fn values_fall_back_to_id_and_skip_non_strings() {
        let v = serde_json::json!({"paymentMethodId": 7, "id": "pm_1"});
        assert_eq!(v.object_id("payment_method"), Some("pm_1"));
        let v = serde_json::json!({"riskRuleId": "rr_1", "id": "x"});
        assert_eq!(v.object_id("risk_rule"), Some("rr_1"));
        assert_eq!(serde_json::json!([1]).object_id("order"), None);
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
    }
}
