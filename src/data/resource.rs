//! [`Resource`]: which object a piece of event data is about.

use std::borrow::Cow;

use serde_json::Value;

use super::{CustomerVerify, Dispute, Invoice, Order, Refund, Session, Subscription};

/// Event data that identifies the object it is about.
pub trait Resource {
    /// The id of the object this data is about, if it carries one.
    ///
    /// `family` is the event's [family](crate::EventType::family). The typed
    /// family data ignore it; [`serde_json::Value`] uses it to find the id
    /// field, trying `<family>Id` in camelCase (`paymentMethodId` for
    /// `payment_method`), then `id`.
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

impl Resource for Value {
    fn object_id(&self, family: &str) -> Option<&str> {
        let object = self.as_object()?;
        [id_field(family).as_ref(), "id"]
            .into_iter()
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
}
