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
///   (`paymentMethodId` for `payment_method`), then by `id`;
/// - a customer (`customer.verify`) with no `customerId` is keyed by its
///   `customerEmail`, as sent, as an object of its own kind,
///   `customer_email` (see [`object_alias`](Self::object_alias)): the key
///   is `customer_email:` and the SHA-256 of the email in hex (so it does
///   not hold the address), and never meets a `customer:<id>` key. A
///   customer's events sent with its id and without are not ordered
///   against each other.
///
/// A non-string or empty id (or email) is no id.
pub trait Resource {
    /// The id of the object this data is about, if it carries one.
    ///
    /// `family` is the event's [family](crate::EventType::family). The typed
    /// family data ignore it; [`serde_json::Value`] uses it to find the id
    /// field by the [rule above](Resource): the family's own field for the
    /// families with a data type, else `<family>Id` in camelCase
    /// (`paymentMethodId` for `payment_method`), then `id`.
    fn object_id(&self, family: &str) -> Option<&str>;

    /// What names the object when the data carries no
    /// [id](Self::object_id): the kind of object it keys (in place of the
    /// family) and its value, which the [`ObjectKey`](crate::events::ObjectKey)
    /// holds as its SHA-256 in hex. Only a customer has one: its
    /// `customerEmail`, as the kind `customer_email`. The default, for data
    /// of any other type, is none.
    fn object_alias(&self, family: &str) -> Option<(&'static str, &str)> {
        let _ = family;
        None
    }
}

/// The kind of object a customer known only by its email is keyed as: not
/// the family of any event Clink sends, so that an email never meets a
/// `customer:<id>` key.
pub(crate) const CUSTOMER_EMAIL: &str = "customer_email";

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
            .find_map(|field| object.get(field)?.as_str().filter(|id| !id.is_empty()))
    }

    fn object_alias(&self, family: &str) -> Option<(&'static str, &str)> {
        if family != "customer" {
            return None;
        }
        let email = self.as_object()?.get("customerEmail")?.as_str()?;
        Some((CUSTOMER_EMAIL, email))
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
}

impl Resource for CustomerVerify {
    fn object_id(&self, _family: &str) -> Option<&str> {
        self.customer_id.as_deref()
    }

    fn object_alias(&self, _family: &str) -> Option<(&'static str, &str)> {
        self.customer_email
            .as_deref()
            .map(|email| (CUSTOMER_EMAIL, email))
    }
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
        // An empty id is no id either: the fallback is read.
        let v = serde_json::json!({"paymentMethodId": "", "id": "pm_1"});
        assert_eq!(v.object_id("payment_method"), Some("pm_1"));
        assert_eq!(serde_json::json!({"orderId": ""}).object_id("order"), None);
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
