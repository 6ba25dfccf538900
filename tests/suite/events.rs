//! Decoding Clink event bodies into the typed family data.

use std::collections::HashSet;
use std::str::FromStr;

use clink_webhooks::data::{
    Billing, Currency, CustomerVerify, Dispute, DisputeStatus, Interval, Invoice, InvoiceStatus,
    Metadata, Order, OrderStatus, OrderType, PaymentStatus, PricingModel, Refund, RefundReason,
    RefundStatus, Session, SessionStatus, Subscription, SubscriptionStatus, TiersMode, UiMode,
};
use clink_webhooks::events::{Event, ObjectKey, RawEvent};
use clink_webhooks::{events, EventKind, EventType, Timestamp};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde_json::json;

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

fn ms(millis: i64) -> Option<Timestamp> {
    Some(Timestamp::from_millis(millis))
}

fn rfc3339(text: &str) -> Option<Timestamp> {
    Some(Timestamp::parse_rfc3339(text).unwrap())
}

fn decode<T: DeserializeOwned>(body: &str) -> Event<T> {
    RawEvent::from_slice(body.as_bytes())
        .unwrap()
        .decode::<T>()
        .unwrap()
}

/// A body of `event_type` whose data is `data`, wrapped as `data.object` or not.
fn body(event_type: &str, data: &serde_json::Value, wrapped: bool) -> String {
    let data = if wrapped {
        json!({ "object": data })
    } else {
        data.clone()
    };
    json!({"id": "evt_t", "object": "event", "created": 1_736_942_400_000_i64,
           "type": event_type, "data": data})
    .to_string()
}

// §5.1 of the wire-format reference (also the test kit's fixture, see testkit.rs).
const ORDER_SUCCEEDED: &str = include_str!("reference/order_succeeded.json");

// §5.2 of the wire-format reference.
const SESSION_COMPLETE: &str = include_str!("reference/session_complete.json");

// §5.3 of the wire-format reference.
const INVOICE_PAID: &str = include_str!("reference/invoice_paid.json");

#[test]
fn order_succeeded_example_decodes_field_by_field() {
    let event = decode::<Order>(ORDER_SUCCEEDED);
    assert_eq!(event.id, "evt_order_succeeded_test");
    assert_eq!(event.event_type, EventType::OrderSucceeded);
    assert_eq!(event.created, rfc3339("2025-01-15T12:00:00.000Z"));
    assert_eq!(event.livemode, None);

    let order = &event.data;
    assert_eq!(order.order_id.as_deref(), Some("ord_test_123"));
    assert_eq!(order.order_type, Some(OrderType::Onetime));
    assert_eq!(order.status, Some(OrderStatus::Success));
    assert_eq!(
        order.merchant_reference_id.as_deref(),
        Some("order_test_123")
    );
    assert_eq!(order.session_id.as_deref(), Some("sess_test_123"));
    assert_eq!(order.invoice_id, None);
    assert_eq!(order.customer_id.as_deref(), Some("cus_test_123"));
    assert_eq!(order.customer_email.as_deref(), Some("test@example.com"));
    assert_eq!(order.create_time, ms(1_736_941_800_000));
    assert_eq!(order.payment_time, ms(1_736_942_100_000));
    assert_eq!(order.product_id.as_deref(), Some("prd_test_123"));
    assert_eq!(order.price_id.as_deref(), Some("price_test_123"));

    let items = order.price_data_list.as_ref().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].name.as_deref(), Some("Pro plan"));
    assert_eq!(items[0].quantity, Some(1));
    assert_eq!(items[0].unit_amount, Some(dec("19.99")));
    assert_eq!(items[0].currency, Some(Currency::USD));
    assert_eq!(items[0].image_url, None);

    let method = order.payment_method.as_ref().unwrap();
    assert_eq!(method.payment_method_type.as_deref(), Some("CARD"));
    assert_eq!(method.payment_instrument_id.as_deref(), Some("pi_test_123"));
    assert_eq!(order.payment_execution_details, Some(vec![]));
    assert_eq!(order.amount_subtotal, Some(dec("19.99")));
    assert_eq!(order.amount_total, Some(dec("19.99")));
    assert_eq!(order.payment_currency, Some(Currency::USD));
    assert_eq!(order.original_currency, Some(Currency::USD));
    assert_eq!(
        order.metadata.as_ref().unwrap().get_str("source"),
        Some("example")
    );
    assert_eq!(order.risk_level.as_deref(), Some("low"));
    assert_eq!(
        event.object_key(),
        Some(ObjectKey::new("order", "ord_test_123"))
    );
}

#[test]
fn session_complete_example_decodes_field_by_field() {
    let event = decode::<Session>(SESSION_COMPLETE);
    assert_eq!(event.event_type, EventType::SessionComplete);
    let s = &event.data;
    assert_eq!(s.session_id.as_deref(), Some("sess_test_123"));
    assert_eq!(s.token.as_deref(), Some("tok_test_123"));
    assert_eq!(s.status, Some(SessionStatus::Completed));
    assert_eq!(s.payment_status, Some(PaymentStatus::Paid));
    assert_eq!(s.amount_subtotal, Some(dec("19.99")));
    assert_eq!(s.amount_total, Some(dec("19.99")));
    assert_eq!(s.original_currency, Some(Currency::USD));
    assert_eq!(s.payment_currency, Some(Currency::USD));
    assert_eq!(s.order_id.as_deref(), Some("ord_test_123"));
    assert_eq!(s.subscription_id, None);
    assert_eq!(s.invoice_id, None);
    assert_eq!(s.merchant_reference_id.as_deref(), Some("order_test_123"));
    assert_eq!(s.locale.as_deref(), Some("en-US"));
    assert_eq!(s.ui_mode, Some(UiMode::HostedPage));
    assert_eq!(s.return_url, None);
    assert_eq!(
        s.success_url.as_deref(),
        Some("https://merchant.example/success")
    );
    assert_eq!(
        s.cancel_url.as_deref(),
        Some("https://merchant.example/cancel")
    );
    assert_eq!(s.created, rfc3339("2025-01-15T11:45:00.000Z"));
    assert_eq!(s.expire, rfc3339("2025-01-15T12:45:00.000Z"));
    assert_eq!(s.price, None);
    let customer = s.customer.as_ref().unwrap();
    assert_eq!(customer.customer_id.as_deref(), Some("cus_test_123"));
    assert_eq!(customer.email.as_deref(), Some("test@example.com"));
    let product = s.product.as_ref().unwrap();
    assert_eq!(product.product_id.as_deref(), Some("prd_test_123"));
    assert_eq!(product.product_name.as_deref(), Some("Pro plan"));
    let items = s.price_data_list.as_ref().unwrap();
    assert_eq!(items[0].unit_amount, Some(dec("19.99")));
    assert_eq!(s.metadata, None);
    assert_eq!(
        event.object_key(),
        Some(ObjectKey::new("session", "sess_test_123"))
    );
}

fn assert_invoice_paid_example(invoice: &Invoice) {
    assert_eq!(invoice.invoice_id.as_deref(), Some("inv_test_123"));
    assert_eq!(invoice.subscription_id.as_deref(), Some("sub_test_123"));
    assert_eq!(invoice.order_id.as_deref(), Some("ord_test_456"));
    assert_eq!(invoice.customer_id.as_deref(), Some("cus_test_123"));
    assert_eq!(invoice.merchant_id.as_deref(), Some("mch_test_1"));
    assert_eq!(invoice.status, Some(InvoiceStatus::Paid));
    assert_eq!(invoice.create_time, ms(1_736_942_280_000));
    assert_eq!(invoice.current_period_start, ms(1_736_899_200_000));
    assert_eq!(invoice.current_period_end, ms(1_739_577_600_000));
    assert_eq!(invoice.original_amount, Some(dec("19.99")));
    assert_eq!(invoice.original_currency, Some(Currency::USD));
    assert_eq!(invoice.billing, Some(Billing::ChargeAutomatically));

    let items = invoice.items.as_ref().unwrap();
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item.invoice_item_id.as_deref(), Some("ii_test_1"));
    assert_eq!(item.amount, Some(dec("19.99")));
    assert_eq!(item.currency, Some(Currency::USD));
    assert_eq!(item.description.as_deref(), Some("Pro plan (monthly)"));
    assert_eq!(item.period_start, ms(1_736_899_200_000));
    assert_eq!(item.period_end, ms(1_739_577_600_000));
    assert_eq!(item.proration, Some(false));

    let price = item.price.as_ref().unwrap();
    assert_eq!(price.product_id.as_deref(), Some("prd_test_123"));
    assert_eq!(price.product_name.as_deref(), Some("Pro plan"));
    assert_eq!(price.price_id.as_deref(), Some("price_test_123"));
    assert_eq!(price.price_snapshot_id.as_deref(), Some("ps_test_1"));
    assert_eq!(price.unit_amount, Some(dec("19.99")));
    assert_eq!(price.quantity, Some(1));

    let recurring = price.recurring.as_ref().unwrap();
    assert_eq!(recurring.interval, Some(Interval::Month));
    assert_eq!(recurring.pricing_model, Some(PricingModel::FlatRate));
    assert_eq!(recurring.tiers_mode, Some(TiersMode::Volume));
    assert_eq!(recurring.trial_period_days, None);
    assert_eq!(recurring.interval_count, Some(1));
}

#[test]
fn invoice_paid_example_decodes_field_by_field() {
    let event = decode::<Invoice>(INVOICE_PAID);
    assert_eq!(event.id, "evt_invoice_paid_test");
    assert_eq!(event.event_type, EventType::InvoicePaid);
    assert_invoice_paid_example(&event.data);
    assert_eq!(
        event.object_key(),
        Some(ObjectKey::new("invoice", "inv_test_123"))
    );
}

/// The examples with `data` wrapped as `data.object` and an integer `created`,
/// as Clink is reported to send in production.
#[test]
fn wrapped_data_object_decodes_like_flat_data() {
    for (example, created) in [
        (ORDER_SUCCEEDED, 1_736_942_400_000_i64),
        (INVOICE_PAID, 1_736_942_400_000),
    ] {
        let mut value: serde_json::Value = serde_json::from_str(example).unwrap();
        let flat_type = value["type"].as_str().unwrap().to_owned();
        let data = value["data"].take();
        value["data"] = json!({ "object": data });
        value["created"] = json!(created);
        let wrapped = value.to_string();

        if flat_type == "order.succeeded" {
            let (flat, wrapped) = (decode::<Order>(example), decode::<Order>(&wrapped));
            assert_eq!(flat.data, wrapped.data);
            assert_eq!(flat.created, wrapped.created);
            assert_eq!(wrapped.data.order_id.as_deref(), Some("ord_test_123"));
        } else {
            let wrapped = decode::<Invoice>(&wrapped);
            assert_invoice_paid_example(&wrapped.data);
            assert_eq!(wrapped.created, ms(created));
        }
    }
}

#[test]
fn created_as_string_and_as_integer_are_the_same_instant() {
    let text =
        json!({"id":"e","type":"order.created","created":"2025-01-15T12:00:00.000Z","data":{}});
    let millis = json!({"id":"e","type":"order.created","created":1_736_942_400_000_i64,"data":{}});
    let a = decode::<Order>(&text.to_string());
    let b = decode::<Order>(&millis.to_string());
    assert_eq!(a.created, ms(1_736_942_400_000));
    assert_eq!(a.created, b.created);
}

#[test]
fn refund_decodes_with_metadata_as_a_json_string() {
    let data = json!({
        "refundId": "rf_1", "orderId": "ord_1", "customerId": "cus_1",
        "status": "refunding", "refundAmount": 12.345678, "refundCurrency": "EUR",
        "refundReason": "Customer Initiated Refund", "createTime": 1_736_942_400_000_i64,
        "metadata": "{\"arn\":\"74537604221431003881865\",\"merchantReferenceId\":\"m_1\"}",
        "paymentInstrumentId": "pi_1"
    });
    let event = decode::<Refund>(&body("refund.created", &data, false));
    let r = &event.data;
    assert_eq!(r.refund_id.as_deref(), Some("rf_1"));
    assert_eq!(r.order_id.as_deref(), Some("ord_1"));
    assert_eq!(r.customer_id.as_deref(), Some("cus_1"));
    assert_eq!(r.status, Some(RefundStatus::Refunding));
    assert_eq!(r.refund_amount, Some(dec("12.345678")));
    assert_eq!(r.refund_currency, Some(Currency::EUR));
    assert_eq!(r.refund_reason, Some(RefundReason::CustomerInitiatedRefund));
    assert_eq!(r.create_time, ms(1_736_942_400_000));
    let metadata = r.metadata.as_ref().unwrap();
    assert_eq!(metadata.get_str("arn"), Some("74537604221431003881865"));
    assert_eq!(metadata.get_str("merchantReferenceId"), Some("m_1"));
    assert_eq!(metadata.unparsed(), None);
    assert_eq!(r.payment_instrument_id.as_deref(), Some("pi_1"));
    assert_eq!(event.object_key(), Some(ObjectKey::new("refund", "rf_1")));
}

#[test]
fn metadata_as_object_and_as_json_string_decode_alike() {
    let entries = json!({"arn": "745", "n": 2});
    let as_object = json!({"refundId": "rf_1", "metadata": entries});
    let as_string = json!({"refundId": "rf_1", "metadata": entries.to_string()});
    let a = decode::<Refund>(&body("refund.succeeded", &as_object, false)).data;
    let b = decode::<Refund>(&body("refund.succeeded", &as_string, false)).data;
    assert_eq!(a.metadata, b.metadata);
    let metadata = a.metadata.unwrap();
    assert_eq!(metadata.get("n"), Some(&json!(2)));
    let expected: Metadata = [("arn", json!("745")), ("n", json!(2))]
        .into_iter()
        .collect();
    assert_eq!(metadata, expected);

    let not_an_object = json!({"refundId": "rf_1", "metadata": "arn=745"});
    let c = decode::<Refund>(&body("refund.succeeded", &not_an_object, false)).data;
    let metadata = c.metadata.unwrap();
    assert!(metadata.is_empty());
    assert_eq!(metadata.unparsed(), Some("arn=745"));
}

#[test]
fn subscription_decodes_with_items_and_scheduled_phases() {
    let item = json!({
        "invoiceItemId": "ii_1", "amount": 1999, "currency": "USD", "description": "Pro",
        "periodStart": 1_736_899_200_000_i64, "periodEnd": 1_739_577_600_000_i64, "proration": true,
        "price": {"priceId": "price_1", "unitAmount": "19.99", "quantity": 1,
                  "recurring": {"interval": "custom", "pricingModel": "per_seat",
                                "tiersMode": "graduated", "trialPeriodDays": 14, "intervalCount": 10}}
    });
    let data = json!({
        "subscriptionId": "sub_1", "customerId": "cus_1", "productId": "prd_1",
        "priceId": "price_1", "priceSnapshotId": "ps_1", "createTime": 1_736_899_200_000_i64,
        "quantity": 3, "paymentMethodType": "CARD", "paymentInstrumentId": "pi_1",
        "status": "past_due", "billing": "send_invoice", "merchantReference": "ref_1",
        "currency": "JPY", "trialStart": 1_736_899_200_000_i64, "trialEnd": 1_737_504_000_000_i64,
        "currentPeriodStart": 1_736_899_200_000_i64, "currentPeriodEnd": 1_739_577_600_000_i64,
        "cancelAt": 1_739_577_600_000_i64, "cancelAtPeriodEnd": true,
        "canceledAt": 1_737_000_000_000_i64, "cancelReason": "too expensive",
        "recurringInvoiceItem": item, "upcomingInvoiceItem": null,
        "scheduledPhases": [
            {"sequence": 1, "effectiveCycle": 2, "priceSnapshotId": "ps_2", "quantity": 5,
             "metadata": {"why": "upgrade"}},
            {"sequence": 2, "effectiveCycle": 4, "priceSnapshotId": "ps_3", "quantity": 1}
        ],
        "elapsedCycles": 1, "sessionId": "sess_1", "metadata": {"plan": "pro"}
    });
    let event = decode::<Subscription>(&body("subscription.past_due", &data, false));
    let s = &event.data;
    assert_eq!(s.subscription_id.as_deref(), Some("sub_1"));
    assert_eq!(s.customer_id.as_deref(), Some("cus_1"));
    assert_eq!(s.product_id.as_deref(), Some("prd_1"));
    assert_eq!(s.price_id.as_deref(), Some("price_1"));
    assert_eq!(s.price_snapshot_id.as_deref(), Some("ps_1"));
    assert_eq!(s.create_time, ms(1_736_899_200_000));
    assert_eq!(s.quantity, Some(3));
    assert_eq!(s.payment_method_type.as_deref(), Some("CARD"));
    assert_eq!(s.payment_instrument_id.as_deref(), Some("pi_1"));
    assert_eq!(s.status, Some(SubscriptionStatus::PastDue));
    assert_eq!(s.billing, Some(Billing::SendInvoice));
    assert_eq!(s.merchant_reference.as_deref(), Some("ref_1"));
    assert_eq!(s.currency, Some(Currency::JPY));
    assert_eq!(s.trial_start, ms(1_736_899_200_000));
    assert_eq!(s.trial_end, ms(1_737_504_000_000));
    assert_eq!(s.current_period_start, ms(1_736_899_200_000));
    assert_eq!(s.current_period_end, ms(1_739_577_600_000));
    assert_eq!(s.cancel_at, ms(1_739_577_600_000));
    assert_eq!(s.cancel_at_period_end, Some(true));
    assert_eq!(s.canceled_at, ms(1_737_000_000_000));
    assert_eq!(s.cancel_reason.as_deref(), Some("too expensive"));

    let item = s.recurring_invoice_item.as_ref().unwrap();
    assert_eq!(item.invoice_item_id.as_deref(), Some("ii_1"));
    assert_eq!(item.amount, Some(dec("1999")));
    assert_eq!(item.proration, Some(true));
    let price = item.price.as_ref().unwrap();
    assert_eq!(price.unit_amount, Some(dec("19.99")));
    let recurring = price.recurring.as_ref().unwrap();
    assert_eq!(recurring.interval, Some(Interval::Custom));
    assert_eq!(recurring.pricing_model, Some(PricingModel::PerSeat));
    assert_eq!(recurring.tiers_mode, Some(TiersMode::Graduated));
    assert_eq!(recurring.trial_period_days, Some(14));
    assert_eq!(recurring.interval_count, Some(10));
    assert_eq!(s.upcoming_invoice_item, None);

    let phases = s.scheduled_phases.as_ref().unwrap();
    assert_eq!(phases.len(), 2);
    assert_eq!(phases[0].sequence, Some(1));
    assert_eq!(phases[0].effective_cycle, Some(2));
    assert_eq!(phases[0].price_snapshot_id.as_deref(), Some("ps_2"));
    assert_eq!(phases[0].quantity, Some(5));
    assert_eq!(
        phases[0].metadata.as_ref().unwrap().get_str("why"),
        Some("upgrade")
    );
    assert_eq!(phases[1].effective_cycle, Some(4));
    assert_eq!(phases[1].metadata, None);
    assert_eq!(s.elapsed_cycles, Some(1));
    assert_eq!(s.session_id.as_deref(), Some("sess_1"));
    assert_eq!(s.metadata.as_ref().unwrap().get_str("plan"), Some("pro"));
    assert_eq!(
        event.object_key(),
        Some(ObjectKey::new("subscription", "sub_1"))
    );
}

/// Clink's CLI fixtures (reference §7 #6): ISO period dates, extra fields, and
/// statuses outside the schema's enum.
#[test]
fn subscription_cli_fixture_shape_decodes() {
    let data = json!({
        "object": "subscription", "subscriptionId": "sub_test_123", "status": "activated",
        "currentPeriodStart": "2025-01-15T00:00:00.000Z", "currentPeriodEnd": "2025-02-15T00:00:00.000Z",
        "activatedAt": "2025-01-15T00:00:00.000Z", "pastDueSince": null,
        "latestInvoiceId": "inv_test_123", "createdAt": "2025-01-15T00:00:00.000Z"
    });
    let s = decode::<Subscription>(&body("subscription.activated", &data, false)).data;
    assert_eq!(s.subscription_id.as_deref(), Some("sub_test_123"));
    assert_eq!(
        s.status,
        Some(SubscriptionStatus::Unknown("activated".into()))
    );
    assert_eq!(s.current_period_start, rfc3339("2025-01-15T00:00:00.000Z"));
    assert_eq!(s.current_period_end, rfc3339("2025-02-15T00:00:00.000Z"));
}

#[test]
fn dispute_decodes_from_data_object_with_an_integer_status() {
    let data = json!({
        "chargeBackId": "cb_1", "orderId": "ord_1", "merchantId": "m_1", "customerId": "cus_1",
        "channelCode": "STRIPE", "disputeAmount": 0.1, "disputeCurrency": "GBP",
        "originalAmount": 19.99, "originalCurrency": "USD", "reasonCode": "4837",
        "reasonDescription": "No cardholder authorization", "networkReasonCode": "10.4",
        "status": 4, "evidenceDeadline": "2025-02-01T00:00:00Z",
        "channelDisputeTime": "2025-01-16T08:30:00Z"
    });
    let event = decode::<Dispute>(&body("dispute.lost", &data, true));
    let d = &event.data;
    assert_eq!(d.charge_back_id.as_deref(), Some("cb_1"));
    assert_eq!(d.order_id.as_deref(), Some("ord_1"));
    assert_eq!(d.merchant_id.as_deref(), Some("m_1"));
    assert_eq!(d.customer_id.as_deref(), Some("cus_1"));
    assert_eq!(d.channel_code.as_deref(), Some("STRIPE"));
    assert_eq!(d.dispute_amount, Some(dec("0.1")));
    assert_eq!(d.dispute_currency, Some(Currency::GBP));
    assert_eq!(d.original_amount, Some(dec("19.99")));
    assert_eq!(d.original_currency, Some(Currency::USD));
    assert_eq!(d.reason_code.as_deref(), Some("4837"));
    assert_eq!(
        d.reason_description.as_deref(),
        Some("No cardholder authorization")
    );
    assert_eq!(d.network_reason_code.as_deref(), Some("10.4"));
    assert_eq!(d.status, Some(DisputeStatus::Lost));
    assert_eq!(d.evidence_deadline, rfc3339("2025-02-01T00:00:00Z"));
    assert_eq!(d.channel_dispute_time, rfc3339("2025-01-16T08:30:00Z"));
    assert_eq!(event.object_key(), Some(ObjectKey::new("dispute", "cb_1")));

    for (code, status) in [
        (1, DisputeStatus::Pending),
        (2, DisputeStatus::Processing),
        (3, DisputeStatus::Won),
        (5, DisputeStatus::Withdrawn),
        (42, DisputeStatus::Unknown(42)),
    ] {
        let d = decode::<Dispute>(&body("dispute.updated", &json!({"status": code}), true)).data;
        assert_eq!(d.status, Some(status));
        assert_eq!(status.code(), code);
        assert_eq!(serde_json::to_value(status).unwrap(), json!(code));
    }
    for (status, text) in [
        (DisputeStatus::Pending, "pending"),
        (DisputeStatus::Processing, "processing"),
        (DisputeStatus::Won, "won"),
        (DisputeStatus::Lost, "lost"),
        (DisputeStatus::Withdrawn, "withdrawn"),
        (DisputeStatus::Unknown(42), "42"),
    ] {
        assert_eq!(status.to_string(), text);
    }
}

#[test]
fn customer_verify_decodes_from_data_object() {
    let data =
        json!({"customerEmail": "a@example.com", "merchantId": "m_1", "customerId": "cus_1"});
    let event = decode::<CustomerVerify>(&body("customer.verify", &data, true));
    assert_eq!(event.event_type, EventType::CustomerVerify);
    assert_eq!(event.data.customer_email.as_deref(), Some("a@example.com"));
    assert_eq!(event.data.merchant_id.as_deref(), Some("m_1"));
    assert_eq!(event.data.customer_id.as_deref(), Some("cus_1"));
    assert_eq!(
        event.object_key(),
        Some(ObjectKey::new("customer", "cus_1"))
    );
}

/// A `customer.verify` with no `customerId` is keyed by its email, as a
/// kind of its own: the raw and the typed event agree, an id still wins
/// when both come, and an email never meets an id of the same text.
#[test]
fn customer_verify_without_an_id_is_keyed_by_its_email() {
    let key = |data: serde_json::Value| {
        let body = body("customer.verify", &data, true);
        let raw = RawEvent::from_slice(body.as_bytes()).unwrap();
        let typed = raw.decode::<CustomerVerify>().unwrap().object_key();
        assert_eq!(raw.object_key(), typed, "{body}");
        typed.map(|key| key.to_string())
    };
    let by_email = key(json!({"customerEmail": "a@example.com", "merchantId": "m_1"}));
    // The key holds the email's SHA-256, not the address:
    // `printf %s a@example.com | sha256sum`.
    assert_eq!(
        by_email.as_deref(),
        Some("customer_email:08168cd80dfd534ab0f10af10f1303fe00af2d43ab5c1432360d137f8197e17a")
    );
    let other = key(json!({"customerEmail": "b@example.com"}));
    assert!(other
        .as_deref()
        .is_some_and(|k| k.starts_with("customer_email:")));
    assert_ne!(other, by_email);
    let both = key(json!({"customerEmail": "a@example.com", "customerId": "cus_1"}));
    assert_eq!(both.as_deref(), Some("customer:cus_1"));
    let empty_id = key(json!({"customerEmail": "a@example.com", "customerId": ""}));
    assert_eq!(empty_id, by_email);
    let id_like_the_email = key(json!({"customerId": "a@example.com"}));
    assert_eq!(id_like_the_email.as_deref(), Some("customer:a@example.com"));
    assert_ne!(id_like_the_email, by_email);
    assert_eq!(key(json!({"customerEmail": ""})), None);
    assert_eq!(key(json!({"merchantId": "m_1"})), None);
}

#[test]
fn amounts_are_exact_decimals_and_serialize_back_unchanged() {
    for text in [
        "19.99",
        "0.1",
        "12.345678",
        "1999",
        "-5.00",
        "0.000001",
        // More digits than an f64 holds.
        "0.1234567890123456789",
        "12345678901234567.89",
    ] {
        let data = format!(r#"{{"orderId":"o","amountTotal":{text},"amountSubtotal":"{text}"}}"#);
        let body = format!(r#"{{"id":"e","type":"order.succeeded","data":{data}}}"#);
        let order = decode::<Order>(&body).data;
        assert_eq!(order.amount_total, Some(dec(text)), "{text}");
        assert_eq!(order.amount_total.unwrap().to_string(), text);
        assert_eq!(
            order.amount_subtotal, order.amount_total,
            "string form of {text}"
        );

        let written = serde_json::to_string(&order).unwrap();
        assert!(
            written.contains(&format!(r#""amountTotal":{text},"#)),
            "{written}"
        );
        let reread: Order = serde_json::from_str(&written).unwrap();
        assert_eq!(reread, order);
    }
}

#[test]
fn a_whole_event_round_trips_through_serialization() {
    let event = decode::<Invoice>(INVOICE_PAID);
    let written = serde_json::to_vec(&event).unwrap();
    let reread = RawEvent::from_slice(&written)
        .unwrap()
        .decode::<Invoice>()
        .unwrap();
    assert_eq!(reread, event);
}

/// Asserts each field holds `Some(Type::Unknown(text))`.
macro_rules! assert_unknown {
    ($($field:expr => $ty:ident($text:literal)),+ $(,)?) => {
        $( assert_eq!($field, Some($ty::Unknown($text.into())), stringify!($field)); )+
    };
}

#[test]
fn unknown_fields_and_enum_values_still_decode() {
    let data = json!({
        "orderId": "ord_1", "type": "installment", "status": "chargeback_pending",
        "paymentCurrency": "XAU", "brandNewField": {"nested": [1, 2, 3]},
        "paymentMethod": {"paymentMethodType": "WALLET", "walletBrand": "x"},
        "priceDataList": [{"name": "n", "unitAmount": 1, "extra": true}]
    });
    let order = decode::<Order>(&body("order.created", &data, false)).data;
    assert_unknown! {
        order.order_type => OrderType("installment"),
        order.status => OrderStatus("chargeback_pending"),
    }
    assert_eq!(order.payment_currency, Some(Currency::from("XAU")));
    let items = order.price_data_list.as_ref().unwrap();
    assert_eq!(items[0].unit_amount, Some(dec("1")));
    // Unknown values are written back as they came.
    let written = serde_json::to_value(&order).unwrap();
    assert_eq!(written["status"], "chargeback_pending");

    let data = json!({"refundId": "r", "status": "reversed", "refundReason": "Goodwill"});
    let refund = decode::<Refund>(&body("refund.created", &data, false)).data;
    assert_unknown! {
        refund.status => RefundStatus("reversed"),
        refund.refund_reason => RefundReason("Goodwill"),
    }

    let data = json!({"sessionId": "s", "status": "locked", "paymentStatus": "refunded",
                      "uiMode": "popup"});
    let session = decode::<Session>(&body("session.expired", &data, false)).data;
    assert_unknown! {
        session.status => SessionStatus("locked"),
        session.payment_status => PaymentStatus("refunded"),
        session.ui_mode => UiMode("popup"),
    }

    let data = json!({"invoiceId": "i", "status": "uncollectible", "billing": "manual",
                      "items": [{"price": {"recurring": {"interval": "fortnight",
                                 "pricingModel": "usage", "tiersMode": "stairstep"}}}]});
    let invoice = decode::<Invoice>(&body("invoice.void", &data, false)).data;
    let items = invoice.items.as_ref().unwrap();
    let recurring = items[0].price.as_ref().unwrap().recurring.clone().unwrap();
    assert_unknown! {
        invoice.status => InvoiceStatus("uncollectible"),
        invoice.billing => Billing("manual"),
        recurring.interval => Interval("fortnight"),
        recurring.pricing_model => PricingModel("usage"),
        recurring.tiers_mode => TiersMode("stairstep"),
    }

    let data = json!({"subscriptionId": "s", "status": "paused"});
    let sub = decode::<Subscription>(&body("subscription.created", &data, false)).data;
    assert_unknown! { sub.status => SubscriptionStatus("paused") }
}

#[test]
fn null_optional_fields_decode_as_none() {
    let data = json!({
        "orderId": "ord_1", "type": null, "status": null, "invoiceId": null,
        "createTime": null, "paymentTime": null, "priceDataList": null,
        "paymentMethod": null, "amountTotal": null, "amountSubtotal": "",
        "paymentCurrency": null, "metadata": null, "riskLevel": null
    });
    let order = decode::<Order>(&body("order.failed", &data, false)).data;
    let mut expected = Order::default();
    expected.order_id = Some("ord_1".into());
    assert_eq!(order, expected);

    let data = json!({"subscriptionId": null, "status": null, "scheduledPhases": [
        {"sequence": null, "effectiveCycle": null, "priceSnapshotId": null, "quantity": null}]});
    let sub = decode::<Subscription>(&body("subscription.created", &data, false)).data;
    assert_eq!(sub.subscription_id, None);
    assert_eq!(sub.scheduled_phases.unwrap()[0].effective_cycle, None);

    let empty = decode::<Dispute>(&body("dispute.created", &json!({}), true));
    assert_eq!(empty.data, Dispute::default());
    assert_eq!(empty.object_key(), None);
}

#[test]
fn a_field_of_the_wrong_type_names_its_path() {
    let cases = [
        (
            "order.created",
            json!({"orderId": "o", "amountTotal": {"value": 1}}),
            "amountTotal",
        ),
        ("order.created", json!({"status": 7}), "status"),
        (
            "order.created",
            json!({"priceDataList": [{"name": "n", "unitAmount": "lots"}]}),
            "priceDataList[0].unitAmount",
        ),
        (
            "invoice.paid",
            json!({"items": [{"amount": 1}, {"amount": [1]}]}),
            "items[1].amount",
        ),
        (
            "subscription.created",
            json!({"scheduledPhases": [{"quantity": "five"}]}),
            "scheduledPhases[0].quantity",
        ),
        ("dispute.won", json!({"status": "won"}), "status"),
        ("refund.created", json!({"metadata": 5}), "metadata"),
        // A time that is no time reads as absent; one of another kind
        // is an error.
        (
            "session.complete",
            json!({"expire": ["tomorrow"]}),
            "expire",
        ),
    ];
    for (event_type, data, path) in cases {
        let raw = RawEvent::from_slice(body(event_type, &data, false).as_bytes()).unwrap();
        let err = match raw.event_type().family() {
            "order" => raw.decode::<Order>().map(drop),
            "invoice" => raw.decode::<Invoice>().map(drop),
            "subscription" => raw.decode::<Subscription>().map(drop),
            "dispute" => raw.decode::<Dispute>().map(drop),
            "refund" => raw.decode::<Refund>().map(drop),
            _ => raw.decode::<Session>().map(drop),
        }
        .unwrap_err();
        assert_eq!(err.path(), path, "{event_type} {data}: {err}");
        assert_eq!(err.event_id(), "evt_t");
        assert!(err.to_string().contains(path), "{err}");
    }
}

/// Decodes a minimal body of `M`'s event into `M`'s data type, both flat and
/// wrapped as `data.object`, and returns `M`'s event type.
fn decodes_minimal_body<M: EventKind>() -> EventType {
    let name = M::TYPE.to_string();
    for data in [json!({}), json!({"object": {}})] {
        let raw = RawEvent::from_slice(body(&name, &data, false).as_bytes()).unwrap();
        assert_eq!(raw.event_type(), &M::TYPE);
        raw.decode::<<M as EventKind>::Data>()
            .unwrap_or_else(|err| panic!("{name}: {err}"));
    }
    M::TYPE
}

macro_rules! every_marker {
    ($($marker:ident),+ $(,)?) => {
        [$(decodes_minimal_body::<events::$marker>()),+]
    };
}

#[test]
fn every_event_marker_decodes_a_minimal_body() {
    let decoded = every_marker![
        OrderCreated,
        OrderSucceeded,
        OrderFailed,
        OrderNextAction,
        RefundCreated,
        RefundSucceeded,
        RefundFailed,
        SubscriptionCreated,
        SubscriptionTrialing,
        SubscriptionActivated,
        SubscriptionIncompleteExpired,
        SubscriptionPastDue,
        SubscriptionCancelled,
        SubscriptionPlanChanged,
        SubscriptionPlanChangeCanceled,
        SubscriptionRenewed,
        SubscriptionCancelAtPeriodEndSet,
        SubscriptionCancelAtPeriodEndRevoked,
        InvoiceOpen,
        InvoicePaid,
        InvoiceVoid,
        SessionComplete,
        SessionExpired,
        DisputeCreated,
        DisputeUpdated,
        DisputeWon,
        DisputeLost,
        DisputeClosed,
        CustomerVerify,
        PaymentMethodAdded,
        PaymentMethodDefaultChange,
        PaymentMethodUpdate,
        RiskRuleUpdated,
        AgentOrderSucceeded,
        AgentOrderFailed,
        AgentRefundSucceeded,
        AgentRefundFailed,
        AgentRefundApproved,
        AgentRefundRejected,
        PurchaseInstructionCreated,
        PurchaseInstructionActivated,
        PurchaseInstructionUpdated,
        PurchaseInstructionCancelled,
        VicDeviceBindingSucceeded,
    ];
    let decoded: HashSet<EventType> = decoded.into_iter().collect();
    let all: HashSet<EventType> = EventType::ALL.iter().cloned().collect();
    assert_eq!(decoded, all);
    for t in EventType::ALL {
        assert_eq!(&t.as_str().parse::<EventType>().unwrap(), t);
    }
}

#[test]
fn schemaless_families_keep_json_and_still_have_an_object_key() {
    let data = json!({"paymentMethodId": "pm_1", "id": "other", "brand": "visa"});
    let event = decode::<serde_json::Value>(&body("payment_method.added", &data, true));
    assert_eq!(event.data["brand"], "visa");
    assert_eq!(
        event.object_key(),
        Some(ObjectKey::new("payment_method", "pm_1"))
    );
    let data = json!({"id": "ai_1"});
    let raw = RawEvent::from_slice(body("agent_order.succeeded", &data, false).as_bytes()).unwrap();
    assert_eq!(
        raw.object_key(),
        Some(ObjectKey::new("agent_order", "ai_1"))
    );
}
