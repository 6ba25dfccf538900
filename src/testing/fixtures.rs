//! Realistic bodies for every Clink event type.

use serde::Serialize;
use serde_json::{json, Value};

use crate::data::id_field;
use crate::{EventType, Timestamp};

/// When the first event of each lifecycle (`*.created`, `invoice.open`,
/// `payment_method.added`) occurred: a minute before the others, so that
/// one sent after a later event about the same object is stale, and after
/// the times its object was created at (the order at 11:50, the invoice
/// and the refund at 11:58), as Clink would send it.
const CREATED_FIRST: &str = "2025-01-15T11:59:00.000Z";

/// A realistic delivery body for `event_type`: pretty-printed JSON in the
/// shape of Clink's schema, the same body every time.
///
/// - The envelope has an id `evt_<name>_test` (dots become underscores, as
///   in Clink's own fixtures), `"object": "event"`, an RFC 3339 `created`,
///   the type, and `"livemode": false`.
/// - `data` is the resource itself for orders, sessions, refunds,
///   subscriptions and invoices, and is wrapped as `data.object` for disputes
///   and `customer.verify`, as Clink's schema has them. Statuses follow the
///   event (`order.failed` has `"status": "failed"`, `dispute.won` has
///   status `3`, ...). Clink sends `dispute.closed` once a dispute is won
///   or lost; its fixture closes a won one (status `3`), so that a test of
///   the lost path sets status `4` in it.
/// - Families Clink publishes no schema for (`payment_method`, `risk_rule`,
///   `agent_order`, `agent_refund`, `purchase_instruction`, `vic_device`)
///   get a small plausible object with a `<family>Id` field, so their
///   [`ObjectKey`](crate::events::ObjectKey) is known: its other fields
///   are made up, not Clink's, so do not write code against them. So does
///   a name this crate does not know.
/// - Other shapes Clink's integrations report (an integer-millisecond
///   `created`, an order wrapped as `data.object`) are made from these by
///   [`Shape`]: the crate reads them all, and so should an app that reads
///   a body's JSON itself.
/// - Every fixture is about the same few objects (`ord_test_123`,
///   `sub_test_123`, ...). The first event of each lifecycle (`*.created`,
///   `invoice.open`, `payment_method.added`) was created a minute before
///   the others, so sending `order.created` after `order.succeeded` is an
///   out-of-order (stale) delivery, as it would be from Clink. The others
///   were created up to noon, a second apart in the order their
///   lifecycle has them (`order.next_action` before `order.succeeded` or
///   `order.failed`; `dispute.updated`, then `dispute.won` or
///   `dispute.lost`, then `dispute.closed`; a subscription trialing,
///   activated, changed, renewed, past due, then cancelled; a payment
///   method updated, then made the default; ...), so that
///   sending a lifecycle in its order is fresh at every step, and each
///   step sent after a later one is stale.
///
/// ```
/// use clink_webhooks::data::{Order, OrderStatus};
/// use clink_webhooks::events::RawEvent;
/// use clink_webhooks::testing::fixture;
/// use clink_webhooks::EventType;
///
/// let body = fixture(&EventType::OrderFailed);
/// let event = RawEvent::from_slice(body.as_bytes())?.decode::<Order>()?;
/// assert_eq!(event.id, "evt_order_failed_test");
/// assert_eq!(event.data.status, Some(OrderStatus::Failed));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub fn fixture(event_type: &EventType) -> String {
    let name = event_type.as_str();
    fixture_with_id(event_type, &format!("evt_{}_test", name.replace('.', "_")))
}

/// [`fixture`] with the event id `id`, for tests that send one type several
/// times as different events. Its objects keep their ids (`ord_test_123`,
/// ...), as the steps of one lifecycle do: a store shared with other tests
/// may hold a later version of them, which makes this event stale there.
/// Tests sharing a store send [`fresh_fixture`]s.
///
/// ```
/// use clink_webhooks::testing::fixture_with_id;
/// use clink_webhooks::{EventType, RawEvent};
///
/// let body = fixture_with_id(&EventType::RefundCreated, "evt_42");
/// assert_eq!(RawEvent::from_slice(body.as_bytes())?.id(), "evt_42");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub fn fixture_with_id(event_type: &EventType, id: &str) -> String {
    #[derive(Serialize)]
    struct Envelope<'a> {
        id: String,
        object: &'static str,
        created: String,
        #[serde(rename = "type")]
        event_type: &'a str,
        livemode: bool,
        data: Value,
    }

    let name = event_type.as_str();
    let envelope = Envelope {
        id: id.to_owned(),
        object: "event",
        created: if is_first_of_lifecycle(name) {
            CREATED_FIRST.to_owned()
        } else {
            Timestamp::from_millis(ms::NOON - 1_000 * seconds_before_noon(event_type)).to_string()
        },
        event_type: name,
        livemode: false,
        data: data(event_type),
    };
    // A struct of strings and a JSON value always serializes.
    serde_json::to_string_pretty(&envelope).unwrap_or_else(|_| unreachable!())
}

/// Another shape of a fixture's body, as Clink's integrations report them
/// beside the one of its schema: `created` as an integer of epoch
/// milliseconds rather than an RFC 3339 string, and `data` wrapped as
/// `data.object` for the types whose `data` is the resource itself.
/// Typed events read every shape alike; a handler that reads the raw
/// JSON must too.
///
/// ```
/// use clink_webhooks::data::Order;
/// use clink_webhooks::testing::{fixture, Shape};
/// use clink_webhooks::{EventType, RawEvent};
///
/// let plain = fixture(&EventType::OrderSucceeded);
/// let shaped = Shape::new().created_in_millis().data_wrapped().apply(&plain);
/// assert!(shaped.contains(r#""created": 1736942400000"#));
/// let (a, b) = (RawEvent::from_slice(plain.as_bytes())?, RawEvent::from_slice(shaped.as_bytes())?);
/// assert_eq!(a.created(), b.created());
/// assert_eq!(a.decode::<Order>()?.data, b.decode::<Order>()?.data);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    created_in_millis: bool,
    data_wrapped: bool,
}

impl Shape {
    /// The shape of Clink's schema: [`apply`](Self::apply) changes nothing.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// `created` as an integer of epoch milliseconds.
    #[must_use]
    pub fn created_in_millis(mut self) -> Self {
        self.created_in_millis = true;
        self
    }

    /// `data` wrapped as `{"object": ...}` (a body whose `data` is wrapped
    /// already, as for disputes, is left as it is).
    #[must_use]
    pub fn data_wrapped(mut self) -> Self {
        self.data_wrapped = true;
        self
    }

    /// `body`, a fixture (of any id), in this shape: pretty-printed as the
    /// fixtures are, with its keys in alphabetical order when anything
    /// changed (unchanged in the shape of Clink's schema).
    ///
    /// # Panics
    ///
    /// When `body` is not a JSON object, or its `created` not a time: a
    /// mistake in the test itself.
    #[must_use]
    pub fn apply(self, body: &str) -> String {
        if self == Self::new() {
            return body.to_owned();
        }
        let mut envelope: Value = serde_json::from_str(body)
            .unwrap_or_else(|error| panic!("Shape::apply: not a JSON body: {error}"));
        let Some(object) = envelope.as_object_mut() else {
            panic!("Shape::apply: not a JSON object");
        };
        if self.created_in_millis {
            if let Some(created) = object.get_mut("created") {
                let at: Timestamp = serde_json::from_value(created.take())
                    .unwrap_or_else(|error| panic!("Shape::apply: `created` is no time: {error}"));
                *created = Value::from(at.as_millis());
            }
        }
        if self.data_wrapped {
            if let Some(data) = object.get_mut("data") {
                let wrapped = data.as_object().is_some_and(|data| {
                    data.len() == 1 && data.get("object").is_some_and(Value::is_object)
                });
                if !wrapped {
                    *data = json!({ "object": data.take() });
                }
            }
        }
        serde_json::to_string_pretty(&envelope).unwrap_or_else(|_| unreachable!())
    }
}

/// [`fixture`] with a fresh event id, unique within the process and across
/// runs (`evt_<name>_<unique>`), and fresh ids of its objects (the order,
/// its customer, ...: `ord_test_123_<unique>`), so that tests sharing a
/// store never collide: neither as one event delivered twice nor as an
/// older version of another test's object, which a freshness store would
/// call stale. For the steps of one object's lifecycle, send
/// [`fixture_with_id`]s, which keep the objects' ids.
///
/// ```
/// use clink_webhooks::data::Order;
/// use clink_webhooks::testing::fresh_fixture;
/// use clink_webhooks::{EventType, RawEvent};
///
/// let a = RawEvent::from_slice(fresh_fixture(&EventType::OrderSucceeded).as_bytes())?;
/// let b = RawEvent::from_slice(fresh_fixture(&EventType::OrderSucceeded).as_bytes())?;
/// assert_ne!(a.id(), b.id());
/// assert_ne!(a.object_key(), b.object_key());
/// assert!(a.decode::<Order>()?.data.order_id.unwrap().starts_with("ord_test_123_"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub fn fresh_fixture(event_type: &EventType) -> String {
    let unique = crate::store::LeaseToken::generate();
    let unique = &unique.as_str()[..16];
    let name = event_type.as_str().replace('.', "_");
    let body = fixture_with_id(event_type, &format!("evt_{name}_{unique}"));
    let Ok(mut envelope) = serde_json::from_str::<Value>(&body) else {
        unreachable!("a fixture is JSON")
    };
    if let Some(data) = envelope.get_mut("data") {
        make_ids_unique(data, unique);
    }
    serde_json::to_string_pretty(&envelope).unwrap_or_else(|_| unreachable!())
}

/// Gives every test id in `value` (a text of the form `<prefix>_test_<n>`)
/// the suffix `_<unique>`, so that distinct ids stay distinct.
fn make_ids_unique(value: &mut Value, unique: &str) {
    match value {
        Value::String(text) => {
            let is_test_id = text.rsplit_once("_test_").is_some_and(|(prefix, n)| {
                !prefix.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            });
            if is_test_id {
                text.push('_');
                text.push_str(unique);
            }
        }
        Value::Array(values) => values.iter_mut().for_each(|v| make_ids_unique(v, unique)),
        Value::Object(fields) => fields.values_mut().for_each(|v| make_ids_unique(v, unique)),
        _ => {}
    }
}

/// Where an event that is not the first of its lifecycle comes in it: the
/// seconds before noon it was created at (the last steps at noon, as in
/// Clink's own examples).
fn seconds_before_noon(event_type: &EventType) -> i64 {
    use EventType as T;
    match event_type {
        T::OrderNextAction => 1,
        T::SubscriptionTrialing => 8,
        T::SubscriptionActivated => 7,
        T::SubscriptionPlanChanged => 6,
        T::SubscriptionPlanChangeCanceled => 5,
        T::SubscriptionRenewed => 4,
        T::SubscriptionCancelAtPeriodEndSet => 3,
        T::SubscriptionCancelAtPeriodEndRevoked => 2,
        T::SubscriptionPastDue | T::SubscriptionIncompleteExpired => 1,
        T::DisputeUpdated => 2,
        T::DisputeWon | T::DisputeLost => 1,
        T::AgentRefundApproved | T::AgentRefundRejected => 1,
        T::PurchaseInstructionActivated => 2,
        T::PurchaseInstructionUpdated => 1,
        T::PaymentMethodUpdate => 1,
        _ => 0,
    }
}

fn is_first_of_lifecycle(name: &str) -> bool {
    name.ends_with(".created") || name == "invoice.open" || name == "payment_method.added"
}

/// Epoch milliseconds of the fixtures' times.
mod ms {
    /// 2025-01-15T00:00:00Z, the start of the billing period.
    pub(super) const PERIOD_START: i64 = 1_736_899_200_000;
    /// 2025-02-15T00:00:00Z, its end.
    pub(super) const PERIOD_END: i64 = 1_739_577_600_000;
    /// 2025-01-15T11:50:00Z, when the order was created.
    pub(super) const ORDER_CREATED: i64 = 1_736_941_800_000;
    /// 2025-01-15T11:55:00Z, when it was paid.
    pub(super) const PAID: i64 = 1_736_942_100_000;
    /// 2025-01-15T11:58:00Z, when the invoice was created.
    pub(super) const INVOICE_CREATED: i64 = 1_736_942_280_000;
    /// 2025-01-15T12:00:00Z.
    pub(super) const NOON: i64 = 1_736_942_400_000;
}

fn data(event_type: &EventType) -> Value {
    use EventType as T;
    match event_type {
        T::OrderCreated => order("pending", false),
        T::OrderSucceeded => order("success", true),
        T::OrderFailed => order("failed", true),
        T::OrderNextAction => order("requires_action", false),
        T::SessionComplete => session(true),
        T::SessionExpired => session(false),
        T::RefundCreated => refund("created"),
        T::RefundSucceeded => refund("success"),
        T::RefundFailed => refund("failed"),
        T::SubscriptionCreated => subscription("incomplete", json!({})),
        T::SubscriptionTrialing => subscription(
            "free_trial",
            json!({"trialStart": ms::PERIOD_START, "trialEnd": ms::PERIOD_START + 14 * DAY}),
        ),
        T::SubscriptionActivated | T::SubscriptionPlanChangeCanceled => {
            subscription("active", json!({}))
        }
        T::SubscriptionIncompleteExpired => subscription("incomplete_expired", json!({})),
        T::SubscriptionPastDue => subscription("past_due", json!({})),
        T::SubscriptionCancelled => subscription(
            "cancelled",
            json!({"canceledAt": ms::NOON, "cancelReason": "Customer requested cancellation"}),
        ),
        T::SubscriptionPlanChanged => subscription(
            "active",
            json!({"scheduledPhases": [
                {"sequence": 1, "effectiveCycle": 1, "priceSnapshotId": "ps_test_2", "quantity": 2}
            ]}),
        ),
        T::SubscriptionRenewed => subscription("active", json!({"elapsedCycles": 1})),
        T::SubscriptionCancelAtPeriodEndSet => subscription(
            "active",
            json!({
                "cancelAtPeriodEnd": true,
                "cancelAt": ms::PERIOD_END,
                "canceledAt": ms::NOON - 3_000,
            }),
        ),
        T::SubscriptionCancelAtPeriodEndRevoked => subscription("active", json!({})),
        T::InvoiceOpen => invoice("open"),
        T::InvoicePaid => invoice("paid"),
        T::InvoiceVoid => invoice("void"),
        T::DisputeCreated => dispute(1),
        T::DisputeUpdated => dispute(2),
        T::DisputeWon | T::DisputeClosed => dispute(3),
        T::DisputeLost => dispute(4),
        T::CustomerVerify => json!({"object": {
            "customerEmail": "test@example.com",
            "merchantId": "mch_test_1",
            "customerId": "cus_test_123",
        }}),
        T::PaymentMethodAdded => payment_method(false),
        T::PaymentMethodDefaultChange | T::PaymentMethodUpdate => payment_method(true),
        T::RiskRuleUpdated => json!({
            "riskRuleId": "rr_test_123",
            "name": "Block cards from high-risk countries",
            "action": "block",
            "enabled": true,
            "updateTime": ms::NOON,
        }),
        T::AgentOrderSucceeded => agent_order("succeeded"),
        T::AgentOrderFailed => agent_order("failed"),
        T::AgentRefundSucceeded => agent_refund("succeeded"),
        T::AgentRefundFailed => agent_refund("failed"),
        T::AgentRefundApproved => agent_refund("approved"),
        T::AgentRefundRejected => agent_refund("rejected"),
        T::PurchaseInstructionCreated => purchase_instruction("created"),
        T::PurchaseInstructionActivated | T::PurchaseInstructionUpdated => {
            purchase_instruction("active")
        }
        T::PurchaseInstructionCancelled => purchase_instruction("cancelled"),
        T::VicDeviceBindingSucceeded => json!({
            "vicDeviceId": "vicd_test_123",
            "customerId": "cus_test_123",
            "status": "bound",
            "bindTime": ms::NOON,
        }),
        // A name added after this crate: an object with the family's id field.
        other => {
            let family = other.family();
            json!({ id_field(family): format!("{family}_test_123") })
        }
    }
}

const DAY: i64 = 86_400_000;

fn price_data_list() -> Value {
    json!([{ "name": "Pro plan", "quantity": 1, "unitAmount": 19.99, "currency": "USD" }])
}

fn order(status: &str, final_state: bool) -> Value {
    let details = if status == "failed" {
        json!([{
            "channelCode": "CARD",
            "channelTransactionId": "ch_txn_test_123",
            "originalFailureCode": "card_declined",
            "originalFailureMessage": "Your card was declined.",
        }])
    } else {
        json!([])
    };
    json!({
        "orderId": "ord_test_123",
        "type": "onetime",
        "status": status,
        "merchantReferenceId": "order_test_123",
        "sessionId": "sess_test_123",
        "customerId": "cus_test_123",
        "customerEmail": "test@example.com",
        "createTime": ms::ORDER_CREATED,
        "paymentTime": if final_state { json!(ms::PAID) } else { Value::Null },
        "productId": "prd_test_123",
        "priceId": "price_test_123",
        "priceDataList": price_data_list(),
        "paymentMethod": { "paymentMethodType": "CARD", "paymentInstrumentId": "pi_test_123" },
        "paymentExecutionDetails": details,
        "amountSubtotal": 19.99,
        "amountTotal": 19.99,
        "paymentCurrency": "USD",
        "originalCurrency": "USD",
        "metadata": { "source": "example" },
        "riskLevel": "low",
    })
}

fn session(completed: bool) -> Value {
    let (status, payment_status) = if completed {
        ("completed", "paid")
    } else {
        ("expired", "unpaid")
    };
    json!({
        "sessionId": "sess_test_123",
        "token": "tok_test_123",
        "status": status,
        "paymentStatus": payment_status,
        "amountSubtotal": 19.99,
        "amountTotal": 19.99,
        "originalCurrency": "USD",
        "paymentCurrency": "USD",
        "orderId": if completed { json!("ord_test_123") } else { Value::Null },
        "merchantReferenceId": "order_test_123",
        "locale": "en-US",
        "uiMode": "hostedPage",
        "successUrl": "https://merchant.example/success",
        "cancelUrl": "https://merchant.example/cancel",
        "created": "2025-01-15T11:45:00.000Z",
        // An expired session expired when its event says, at noon.
        "expire": if completed { "2025-01-15T12:45:00.000Z" } else { "2025-01-15T12:00:00.000Z" },
        "customer": { "customerId": "cus_test_123", "email": "test@example.com" },
        "product": { "productId": "prd_test_123", "productName": "Pro plan" },
        "priceDataList": price_data_list(),
    })
}

fn refund(status: &str) -> Value {
    json!({
        "refundId": "rfd_test_123",
        "orderId": "ord_test_123",
        "customerId": "cus_test_123",
        "status": status,
        "refundAmount": 19.99,
        "refundCurrency": "USD",
        "refundReason": "Customer Initiated Refund",
        "createTime": ms::NOON - 2 * 60_000,
        "metadata": { "merchantReferenceId": "order_test_123" },
        "paymentInstrumentId": "pi_test_123",
    })
}

fn invoice_item() -> Value {
    json!({
        "invoiceItemId": "ii_test_1",
        "amount": 19.99,
        "currency": "USD",
        "description": "Pro plan (monthly)",
        "periodStart": ms::PERIOD_START,
        "periodEnd": ms::PERIOD_END,
        "proration": false,
        "price": {
            "productId": "prd_test_123",
            "productName": "Pro plan",
            "priceId": "price_test_123",
            "priceSnapshotId": "ps_test_1",
            "unitAmount": 19.99,
            "quantity": 1,
            "recurring": {
                "interval": "month",
                "pricingModel": "flat_rate",
                "tiersMode": "volume",
                "intervalCount": 1,
            },
        },
    })
}

/// A subscription in `status`, with `extra` fields set over the common ones.
fn subscription(status: &str, extra: Value) -> Value {
    let mut data = json!({
        "subscriptionId": "sub_test_123",
        "customerId": "cus_test_123",
        "productId": "prd_test_123",
        "priceId": "price_test_123",
        "priceSnapshotId": "ps_test_1",
        "createTime": ms::PERIOD_START,
        "quantity": 1,
        "paymentMethodType": "CARD",
        "paymentInstrumentId": "pi_test_123",
        "status": status,
        "billing": "charge_automatically",
        "merchantReference": "sub_ref_test_123",
        "currency": "USD",
        "currentPeriodStart": ms::PERIOD_START,
        "currentPeriodEnd": ms::PERIOD_END,
        "cancelAtPeriodEnd": false,
        "recurringInvoiceItem": invoice_item(),
        "elapsedCycles": 0,
        "sessionId": "sess_test_123",
        "metadata": { "plan": "pro" },
    });
    if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
        data.extend(extra);
    }
    data
}

fn invoice(status: &str) -> Value {
    json!({
        "invoiceId": "inv_test_123",
        "subscriptionId": "sub_test_123",
        "orderId": "ord_test_456",
        "customerId": "cus_test_123",
        "merchantId": "mch_test_1",
        "status": status,
        "createTime": ms::INVOICE_CREATED,
        "currentPeriodStart": ms::PERIOD_START,
        "currentPeriodEnd": ms::PERIOD_END,
        "originalAmount": 19.99,
        "originalCurrency": "USD",
        "billing": "charge_automatically",
        "items": [invoice_item()],
    })
}

fn dispute(status: u8) -> Value {
    json!({"object": {
        "chargeBackId": "cb_test_123",
        "orderId": "ord_test_123",
        "merchantId": "mch_test_1",
        "customerId": "cus_test_123",
        "channelCode": "CARD",
        "disputeAmount": 19.99,
        "disputeCurrency": "USD",
        "originalAmount": 19.99,
        "originalCurrency": "USD",
        "reasonCode": "fraudulent",
        "reasonDescription": "The cardholder does not recognise the payment.",
        "networkReasonCode": "10.4",
        "status": status,
        "evidenceDeadline": "2025-01-25T12:00:00.000Z",
        "channelDisputeTime": "2025-01-15T11:50:00.000Z",
    }})
}

fn payment_method(is_default: bool) -> Value {
    json!({
        "paymentMethodId": "pm_test_123",
        "customerId": "cus_test_123",
        "paymentMethodType": "CARD",
        "paymentInstrumentId": "pi_test_123",
        "card": { "brand": "visa", "last4": "4242", "expMonth": 12, "expYear": 2030 },
        "isDefault": is_default,
        "createTime": ms::NOON - 10 * 60_000,
    })
}

fn agent_order(status: &str) -> Value {
    json!({
        "agentOrderId": "aord_test_123",
        "orderId": "ord_test_123",
        "customerId": "cus_test_123",
        "status": status,
        "amount": 19.99,
        "currency": "USD",
        "createTime": ms::ORDER_CREATED,
    })
}

fn agent_refund(status: &str) -> Value {
    json!({
        "agentRefundId": "aref_test_123",
        "agentOrderId": "aord_test_123",
        "customerId": "cus_test_123",
        "status": status,
        "amount": 19.99,
        "currency": "USD",
        "reason": "Customer Initiated Refund",
        "createTime": ms::NOON - 2 * 60_000,
    })
}

fn purchase_instruction(status: &str) -> Value {
    json!({
        "purchaseInstructionId": "pins_test_123",
        "customerId": "cus_test_123",
        "status": status,
        "amount": 19.99,
        "currency": "USD",
        "interval": "month",
        "createTime": ms::NOON - 5 * 60_000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{
        CustomerVerify, Dispute, Invoice, Order, Refund, Resource, Session, Subscription,
    };
    use crate::events::{ObjectKey, RawEvent, Version};
    use crate::Event;
    use serde::de::DeserializeOwned;

    fn key_of<T: DeserializeOwned + Resource>(raw: &RawEvent) -> Option<ObjectKey> {
        let event: Event<T> = raw.decode().unwrap_or_else(|e| panic!("{e}"));
        event.object_key()
    }

    #[test]
    fn every_type_has_a_fixture_that_decodes_into_its_data_type() {
        for t in EventType::ALL {
            let body = fixture(t);
            let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
            assert_eq!(raw.event_type(), t);
            assert_eq!(
                raw.id(),
                format!("evt_{}_test", t.as_str().replace('.', "_"))
            );
            assert_eq!(raw.livemode(), Some(false));
            assert!(raw.created().is_some());
            let key = match t.family() {
                "order" => key_of::<Order>(&raw),
                "session" => key_of::<Session>(&raw),
                "refund" => key_of::<Refund>(&raw),
                "subscription" => key_of::<Subscription>(&raw),
                "invoice" => key_of::<Invoice>(&raw),
                "dispute" => key_of::<Dispute>(&raw),
                "customer" => key_of::<CustomerVerify>(&raw),
                _ => key_of::<Value>(&raw),
            };
            assert_eq!(key, raw.object_key(), "{t}");
            assert!(key.is_some(), "{t} has no object key");
        }
    }

    /// Every fixture is an event Clink could send: none is older than the
    /// object it reports was created, a session it reports expired had
    /// expired by then, and a cancellation it reports had happened.
    #[test]
    fn no_fixture_reports_what_had_not_happened_yet() {
        for t in EventType::ALL {
            let raw = RawEvent::from_slice(fixture(t).as_bytes()).unwrap();
            let created = raw.created().unwrap();
            let data: Value = serde_json::from_str(raw.data_json()).unwrap();
            let object = data.get("object").unwrap_or(&data);
            let mut fields = vec!["createTime", "canceledAt"];
            if t.family() == "session" {
                fields.push("created");
            }
            if *t == EventType::SessionExpired {
                fields.push("expire");
            }
            for field in fields {
                let Some(value) = object.get(field) else {
                    continue;
                };
                let at: Timestamp = serde_json::from_value(value.clone()).unwrap();
                assert!(
                    at <= created,
                    "{t}: {field} {at} after the event, {created}"
                );
            }
        }
    }

    /// Two fresh fixtures of a type are two events about two objects, each
    /// of every type decoding as its `fixture` does.
    #[test]
    fn fresh_fixtures_share_neither_event_nor_object() {
        for t in EventType::ALL {
            let [a, b] = [fresh_fixture(t), fresh_fixture(t)]
                .map(|body| RawEvent::from_slice(body.as_bytes()).unwrap());
            let plain = RawEvent::from_slice(fixture(t).as_bytes()).unwrap();
            assert_eq!(a.event_type(), t);
            assert_eq!(a.created(), plain.created(), "{t}");
            assert_ne!(a.id(), b.id(), "{t}");
            assert!(a.object_key().is_some(), "{t}");
            assert_ne!(a.object_key(), b.object_key(), "{t}");
            assert_ne!(a.object_key(), plain.object_key(), "{t}");
        }
        let order: Event<Order> =
            RawEvent::from_slice(fresh_fixture(&EventType::OrderSucceeded).as_bytes())
                .unwrap()
                .decode()
                .unwrap();
        let ids = [
            order.data.order_id,
            order.data.customer_id,
            order.data.session_id,
        ];
        for id in ids {
            let id = id.expect("the fixture has the id");
            let (kept, unique) = id.rsplit_once('_').unwrap();
            assert!(kept.ends_with("_test_123"), "{id}");
            assert_eq!(unique.len(), 16, "{id}");
        }
    }

    #[test]
    fn the_first_event_of_a_lifecycle_is_older() {
        let created = RawEvent::from_slice(fixture(&EventType::OrderCreated).as_bytes()).unwrap();
        let succeeded =
            RawEvent::from_slice(fixture(&EventType::OrderSucceeded).as_bytes()).unwrap();
        assert!(created.created() < succeeded.created());
        assert_eq!(created.object_key(), succeeded.object_key());
    }

    #[test]
    fn a_lifecycle_sent_in_its_order_is_fresh_at_every_step() {
        use EventType as T;
        for lifecycle in [
            &[T::OrderCreated, T::OrderNextAction, T::OrderSucceeded][..],
            &[T::OrderNextAction, T::OrderFailed],
            &[
                T::DisputeCreated,
                T::DisputeUpdated,
                T::DisputeWon,
                T::DisputeClosed,
            ],
            &[T::DisputeUpdated, T::DisputeLost, T::DisputeClosed],
            &[
                T::SubscriptionCreated,
                T::SubscriptionTrialing,
                T::SubscriptionActivated,
                T::SubscriptionPlanChanged,
                T::SubscriptionPlanChangeCanceled,
                T::SubscriptionRenewed,
                T::SubscriptionCancelAtPeriodEndSet,
                T::SubscriptionCancelAtPeriodEndRevoked,
                T::SubscriptionPastDue,
                T::SubscriptionCancelled,
            ],
            &[T::RefundCreated, T::RefundSucceeded],
            &[
                T::PaymentMethodAdded,
                T::PaymentMethodUpdate,
                T::PaymentMethodDefaultChange,
            ],
            &[T::InvoiceOpen, T::InvoicePaid],
            &[T::AgentRefundApproved, T::AgentRefundSucceeded],
            &[
                T::PurchaseInstructionCreated,
                T::PurchaseInstructionActivated,
                T::PurchaseInstructionUpdated,
                T::PurchaseInstructionCancelled,
            ],
        ] {
            let events: Vec<RawEvent> = lifecycle
                .iter()
                .map(|t| RawEvent::from_slice(fixture(t).as_bytes()).unwrap())
                .collect();
            let version =
                |event: &RawEvent| Version::new(event.created().expect("created"), event.id());
            for pair in events.windows(2) {
                assert_eq!(pair[0].object_key(), pair[1].object_key());
                assert!(
                    version(&pair[0]) < version(&pair[1]),
                    "{} is not older than {}",
                    pair[0].event_type(),
                    pair[1].event_type()
                );
            }
        }
    }

    #[test]
    fn every_shape_of_every_fixture_reads_as_its_plain_one() {
        let shapes = [
            Shape::new().created_in_millis(),
            Shape::new().data_wrapped(),
            Shape::new().created_in_millis().data_wrapped(),
        ];
        for t in EventType::ALL {
            let plain = fixture(t);
            assert_eq!(Shape::new().apply(&plain), plain);
            let plain = RawEvent::from_slice(plain.as_bytes()).unwrap();
            for shape in shapes {
                let body = shape.apply(&fixture(t));
                let shaped = RawEvent::from_slice(body.as_bytes()).unwrap();
                assert_eq!(shaped.created(), plain.created(), "{t} {shape:?}");
                assert_eq!(shaped.object_key(), plain.object_key(), "{t} {shape:?}");
                let value: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(value["created"].is_i64(), shape.created_in_millis, "{t}");
                assert!(
                    value["data"]["object"].is_object() || !shape.data_wrapped,
                    "{t}"
                );
                let data = shaped.decode::<Value>().unwrap().data;
                assert_eq!(data, plain.decode::<Value>().unwrap().data, "{t} {shape:?}");
            }
        }
    }

    #[test]
    fn unknown_names_get_an_object_with_the_family_id() {
        let body = fixture(&EventType::from("wallet_card.topped_up"));
        let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
        assert_eq!(
            raw.object_key(),
            Some(ObjectKey::new("wallet_card", "wallet_card_test_123"))
        );
    }
}
