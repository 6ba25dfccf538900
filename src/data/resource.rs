//! [`Resource`]: which object a piece of event data is about.

use std::borrow::Cow;

use serde_json::Value;

use super::{CustomerVerify, Dispute, Invoice, Order, Refund, Session, Subscription};

/// Event data that identifies the object it is about.
///
/// One rule, whatever type the data is read into, so that
/// [`RawEvent::object_key`](crate::events::RawEvent::object_key) and
/// [`Event::object_key`](crate::Event::object_key) always agree:
///
/// - a family this crate has a data type for (`order`, `session`, `refund`,
///   `subscription`, `invoice`, `dispute`, `customer`) is keyed by its own id
///   field only (`orderId`, ..., `chargeBackId`, `customerId`), the field its
///   type reads. An `id` in such data is not the object's id;
/// - any other family is keyed by `<family>Id` in camelCase
///   (`paymentMethodId` for `payment_method`), then by `id`.
///
/// A non-string or empty id is no id.
pub trait Resource {
    /// The id of the object this data is about, if it carries one.
    ///
    /// `family` is the event's [family](crate::EventType::family). The typed
    /// family data ignore it; [`serde_json::Value`] uses it to find the id
    /// field by the [rule above](Resource): the family's own field for the
    /// families with a data type, else `<family>Id` in camelCase
    /// (`paymentMethodId` for `payment_method`), then `id`.
    fn object_id(&self, family: &str) -> Option<&str>;
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

/// The families with a data type in this crate; their data is keyed by
/// [`id_field`] alone, as the typed data reads it.
const TYPED_FAMILIES: [&str; 7] = [
    "order",
    "session",
    "refund",
    "subscription",
    "invoice",
    "dispute",
    "customer",
];

impl Resource for Value {
    fn object_id(&self, family: &str) -> Option<&str> {
        let object = self.as_object()?;
        let own = id_field(family);
        let fallback = (!TYPED_FAMILIES.contains(&family)).then_some("id");
        std::iter::once(own.as_ref())
            .chain(fallback)
            .find_map(|field| object.get(field)?.as_str())
    }
}

macro_rules! resource_by_field {
    ($( $ty:ty => $field:ident, )+) => {
        $(
            impl Resource for $ty {
                fn object_id(&self, _family: &str) -> Option<&str> {
                    self.$field.as_deref()
                }

            }
        )+
    };
}

resource_by_field! {
    Order => order_id,
    Session => session_id,
    Refund => refund_id,
    Subscription => subscription_id,
    Invoice => invoice_id,
    Dispute => charge_back_id,
    CustomerVerify => customer_id,
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
    fn typed_families_never_fall_back_to_id() {
        let v = serde_json::json!({"id": "x"});
        for family in TYPED_FAMILIES {
            assert_eq!(v.object_id(family), None, "{family}");
        }
        assert_eq!(v.object_id("agent_order"), Some("x"));
    }
}
