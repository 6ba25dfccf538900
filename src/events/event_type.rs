//! [`EventType`]: every Clink event name, one marker type per name, and
//! [`AnyEvent`], an event of any of them with its data decoded.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{DecodeError, Event, ObjectKey, Predecoded, RawEvent};
use crate::Timestamp;

/// Ties a marker type to its event name and data type, so that
/// [`EventRouter::on`](crate::EventRouter::on) checks the pairing at compile time.
///
/// Implemented by every type in [`events`](crate::events); there is no need
/// to implement it yourself. A marker of your own whose `TYPE` is not one
/// of the types in [`EventType::ALL`] can only be `EventType::Unknown`
/// with an empty name (a `String` in a const is empty), and an event with
/// an empty type is refused before any router sees it: `on` registers no
/// handler for such a marker, and [`handles`](crate::EventRouter::handles)
/// says `false` for it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event type marker",
    label = "expected a marker from `clink_webhooks::events`",
    note = "name the event, not its data: `events::OrderSucceeded` (whose data is `data::Order`), `events::RefundCreated`, ..."
)]
pub trait EventKind: Send + Sync + 'static {
    /// The event's [`EventType`].
    const TYPE: EventType;
    /// The type its `data` decodes into; a [`Resource`](crate::data::Resource),
    /// so that every typed event can say which object it is about.
    type Data: serde::de::DeserializeOwned + crate::data::Resource + Send + 'static;
}

/// Something done once per event kind, generic over its marker; see `for_each_kind`.
pub(crate) trait KindVisitor {
    fn visit<K: EventKind>(&mut self);
}

macro_rules! event_types {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal => $data:ty, $family:ident; )+) => {
        /// The `type` of a Clink event: every name Clink sends, spelled as Clink
        /// spells it, plus [`Unknown`](EventType::Unknown) for names added later.
        ///
        /// ```
        /// use clink_webhooks::EventType;
        ///
        /// let t: EventType = "subscription.cancelled".parse().unwrap();
        /// assert_eq!(t, EventType::SubscriptionCancelled);
        /// assert_eq!(t.to_string(), "subscription.cancelled");
        /// assert_eq!("wallet.topped_up".parse::<EventType>().unwrap(), EventType::Unknown("wallet.topped_up".into()));
        /// ```
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum EventType {
            $( $(#[$doc])* #[doc = concat!("`", $name, "`")] $variant, )+
            /// A name this version of the crate does not know yet.
            Unknown(String),
        }

        impl EventType {
            /// Every event name this crate knows, in Clink's catalogue order.
            pub const ALL: &'static [EventType] = &[ $( EventType::$variant, )+ ];

            /// The wire name, e.g. `order.succeeded`.
            #[must_use]
            pub fn as_str(&self) -> &str {
                match self {
                    $( EventType::$variant => $name, )+
                    EventType::Unknown(name) => name,
                }
            }

            /// The family: the part of the name before the first dot
            /// (`order`, `subscription`, `dispute`, ...).
            #[must_use]
            pub fn family(&self) -> &str {
                let name = self.as_str();
                name.split_once('.').map_or(name, |(family, _)| family)
            }

            /// The name of a type this crate knows, as a `'static` string;
            /// `None` for [`Unknown`](EventType::Unknown).
            #[cfg(feature = "metrics")]
            pub(crate) fn known_name(&self) -> Option<&'static str> {
                match self {
                    $( EventType::$variant => Some($name), )+
                    EventType::Unknown(_) => None,
                }
            }

            /// The position of a type this crate knows in [`ALL`](Self::ALL);
            /// `None` for [`Unknown`](EventType::Unknown).
            pub(crate) fn known_index(&self) -> Option<usize> {
                /// One number per known name, in catalogue order.
                #[allow(clippy::enum_variant_names, dead_code)]
                enum Position { $( $variant, )+ }
                match self {
                    $( EventType::$variant => Some(Position::$variant as usize), )+
                    EventType::Unknown(_) => None,
                }
            }

            fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $name => Some(EventType::$variant), )+
                    _ => None,
                }
            }
        }

        /// The data of an event of type `event_type` decoded from
        /// `deserializer` into the type this crate has for it, kept for the
        /// typed handler (see [`RawEvent::from_bytes_for`]); an error for a
        /// name this crate does not know.
        pub(crate) fn decode_known<'de, D: Deserializer<'de>>(
            event_type: &EventType, deserializer: D,
        ) -> Result<Predecoded, D::Error> {
            Ok(match event_type {
                $( EventType::$variant => Predecoded::decode::<$data, D>(deserializer)?, )+
                EventType::Unknown(_) => {
                    return Err(serde::de::Error::custom("no type to decode into"));
                }
            })
        }

        /// The data of `raw` as its type's typed handler gets it (taken
        /// from what was decoded with the envelope, when it was), as JSON;
        /// `None` for a name this crate does not know. For the fuzz targets.
        #[cfg(fuzzing)]
        pub(crate) fn typed_data_json(raw: &mut RawEvent) -> Option<Result<serde_json::Value, String>> {
            let predecoded = raw.take_predecoded();
            Some(match raw.event_type() {
                $( EventType::$variant => raw
                    .decode_typed::<$data>({
                        // Read with the envelope, it is of its type's data:
                        // else both sides would read the body, and agree.
                        assert!(predecoded.as_ref().is_none_or(Predecoded::holds::<$data>));
                        predecoded
                    })
                    .map_err(|error| error.to_string())
                    .and_then(|event| serde_json::to_value(&event.data).map_err(|error| error.to_string())), )+
                EventType::Unknown(_) => return None,
            })
        }

        /// Calls `visitor` once per event kind this crate knows, with its marker type.
        pub(crate) fn for_each_kind(visitor: &mut impl KindVisitor) {
            $( visitor.visit::<$variant>(); )+
        }

        /// A verified event of any type, its data decoded into the type this
        /// crate has for it: one variant per [`EventType`], named alike, holding
        /// an [`Event`] of that type's data, and [`Unknown`](AnyEvent::Unknown)
        /// with the [`RawEvent`] for a name this crate does not know yet.
        ///
        /// [`Verifier::construct_event`](crate::Verifier::construct_event)
        /// returns it; [`from_raw`](AnyEvent::from_raw) makes one from an
        /// envelope already read. Match the variants you handle and leave the
        /// rest to a catch-all arm: a new version of this crate may add
        /// variants as Clink adds event types (until then they arrive as
        /// `Unknown`).
        ///
        /// ```
        /// use clink_webhooks::events::{AnyEvent, RawEvent};
        ///
        /// let body = br#"{"id":"evt_1","type":"order.succeeded","data":{"orderId":"ord_1","amountTotal":19.99}}"#;
        /// let event = AnyEvent::from_raw(&RawEvent::from_slice(body)?)?;
        /// assert_eq!(event.id(), "evt_1");
        /// match event {
        ///     AnyEvent::OrderSucceeded(event) => {
        ///         // `event.data` is a `data::Order`, its amounts exact decimals.
        ///         assert_eq!(event.data.order_id.as_deref(), Some("ord_1"));
        ///         assert_eq!(event.data.amount_total, Some("19.99".parse()?));
        ///     }
        ///     AnyEvent::Unknown(raw) => println!("not known to this crate: {:?}", raw.event_type().as_str()),
        ///     other => println!("not handled here: {}", other.event_type()),
        /// }
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// ```
        #[derive(Debug, Clone)]
        #[non_exhaustive]
        #[allow(
            clippy::large_enum_variant,
            reason = "one value per delivery, matched by value: boxing would allocate and keep patterns from reaching the fields"
        )]
        pub enum AnyEvent {
            $(
                #[doc = concat!("`", $name, "`, its data a [`", stringify!($data), "`].")]
                $variant(Event<$data>),
            )+
            /// A name this version of the crate does not know: the envelope,
            /// with its data as raw JSON.
            Unknown(RawEvent),
        }

        impl AnyEvent {
            /// Decodes `raw`'s data into the type this crate has for its event
            /// type; an event type it does not know becomes
            /// [`Unknown`](AnyEvent::Unknown) with a clone of `raw` (cheap: it
            /// shares the body).
            ///
            /// # Errors
            ///
            /// [`DecodeError`] when the data does not fit its type, naming the
            /// field. Data typed as [`serde_json::Value`] decodes unless it
            /// holds a number past `f64`'s range, nests deeper than 128
            /// levels, or holds a string with a lone surrogate escape
            /// (`"\ud800"`, no character), which a `Value` cannot hold.
            pub fn from_raw(raw: &RawEvent) -> Result<Self, DecodeError> {
                Ok(match raw.event_type() {
                    $( EventType::$variant => AnyEvent::$variant(raw.decode()?), )+
                    EventType::Unknown(_) => AnyEvent::Unknown(raw.clone()),
                })
            }

            /// The envelope's fields, whichever the variant.
            fn head(&self) -> Head<'_> {
                match self {
                    $(
                        AnyEvent::$variant(event) => Head {
                            id: &event.id,
                            event_type: &event.event_type,
                            created: event.created,
                            livemode: event.livemode,
                            account: event.account(),
                        },
                    )+
                    AnyEvent::Unknown(raw) => Head {
                        id: raw.id(),
                        event_type: raw.event_type(),
                        created: raw.created(),
                        livemode: raw.livemode(),
                        account: raw.account(),
                    },
                }
            }

            /// The object this event is about, as [`Event::object_key`] and
            /// [`RawEvent::object_key`] find it; `None` when the data carries
            /// no id.
            #[must_use]
            pub fn object_key(&self) -> Option<ObjectKey> {
                match self {
                    $( AnyEvent::$variant(event) => event.object_key(), )+
                    AnyEvent::Unknown(raw) => raw.object_key(),
                }
            }
        }
        $(
            #[doc = concat!("The `", $name, "` event, for [`EventRouter::on`](crate::EventRouter::on) and `ClinkEvent<_>`; its data is [`", stringify!($data), "`].")]
            #[derive(Debug, Clone, Copy, Default)]
            pub struct $variant;

            impl EventKind for $variant {
                const TYPE: EventType = EventType::$variant;
                type Data = $data;
            }
        )+
    };
}

event_types! {
    OrderCreated = "order.created" => crate::data::Order, order;
    OrderSucceeded = "order.succeeded" => crate::data::Order, order;
    OrderFailed = "order.failed" => crate::data::Order, order;
    RefundCreated = "refund.created" => crate::data::Refund, refund;
    RefundSucceeded = "refund.succeeded" => crate::data::Refund, refund;
    RefundFailed = "refund.failed" => crate::data::Refund, refund;
    SubscriptionCreated = "subscription.created" => crate::data::Subscription, subscription;
    SubscriptionTrialing = "subscription.trialing" => crate::data::Subscription, subscription;
    SubscriptionActivated = "subscription.activated" => crate::data::Subscription, subscription;
    SubscriptionIncompleteExpired = "subscription.incomplete_expired" => crate::data::Subscription, subscription;
    SubscriptionPastDue = "subscription.past_due" => crate::data::Subscription, subscription;
    SubscriptionCancelled = "subscription.cancelled" => crate::data::Subscription, subscription;
    InvoiceOpen = "invoice.open" => crate::data::Invoice, invoice;
    InvoicePaid = "invoice.paid" => crate::data::Invoice, invoice;
    InvoiceVoid = "invoice.void" => crate::data::Invoice, invoice;
    OrderNextAction = "order.next_action" => crate::data::Order, order;
    SubscriptionPlanChanged = "subscription.updated.plan_changed" => crate::data::Subscription, subscription;
    SubscriptionPlanChangeCanceled = "subscription.updated.plan_change_canceled" => crate::data::Subscription, subscription;
    SubscriptionRenewed = "subscription.updated.renewed" => crate::data::Subscription, subscription;
    SubscriptionCancelAtPeriodEndSet = "subscription.updated.cancel_at_period_end_set" => crate::data::Subscription, subscription;
    SubscriptionCancelAtPeriodEndRevoked = "subscription.updated.cancel_at_period_end_revoked" => crate::data::Subscription, subscription;
    SessionComplete = "session.complete" => crate::data::Session, session;
    SessionExpired = "session.expired" => crate::data::Session, session;
    DisputeCreated = "dispute.created" => crate::data::Dispute, dispute;
    DisputeUpdated = "dispute.updated" => crate::data::Dispute, dispute;
    DisputeWon = "dispute.won" => crate::data::Dispute, dispute;
    DisputeLost = "dispute.lost" => crate::data::Dispute, dispute;
    DisputeClosed = "dispute.closed" => crate::data::Dispute, dispute;
    CustomerVerify = "customer.verify" => crate::data::CustomerVerify, customer;
    PaymentMethodAdded = "payment_method.added" => serde_json::Value, payment_method;
    PaymentMethodDefaultChange = "payment_method.default_change" => serde_json::Value, payment_method;
    RiskRuleUpdated = "risk_rule.updated" => serde_json::Value, risk_rule;
    AgentOrderSucceeded = "agent_order.succeeded" => serde_json::Value, agent_order;
    AgentOrderFailed = "agent_order.failed" => serde_json::Value, agent_order;
    AgentRefundSucceeded = "agent_refund.succeeded" => serde_json::Value, agent_refund;
    AgentRefundFailed = "agent_refund.failed" => serde_json::Value, agent_refund;
    AgentRefundApproved = "agent_refund.approved" => serde_json::Value, agent_refund;
    AgentRefundRejected = "agent_refund.rejected" => serde_json::Value, agent_refund;
    PaymentMethodUpdate = "payment_method.update" => serde_json::Value, payment_method;
    PurchaseInstructionCreated = "purchase_instruction.created" => serde_json::Value, purchase_instruction;
    PurchaseInstructionActivated = "purchase_instruction.activated" => serde_json::Value, purchase_instruction;
    PurchaseInstructionUpdated = "purchase_instruction.updated" => serde_json::Value, purchase_instruction;
    PurchaseInstructionCancelled = "purchase_instruction.cancelled" => serde_json::Value, purchase_instruction;
    VicDeviceBindingSucceeded = "vic_device.binding_succeeded" => serde_json::Value, vic_device;
}

/// The envelope's fields of an [`AnyEvent`], borrowed.
struct Head<'a> {
    id: &'a str,
    event_type: &'a EventType,
    created: Option<Timestamp>,
    livemode: Option<bool>,
    account: Option<&'a str>,
}

impl AnyEvent {
    /// The event id, unique per event, and taken to be the same on every
    /// retry of it (see [`Event::id`](crate::events::Event::id)).
    #[must_use]
    pub fn id(&self) -> &str {
        self.head().id
    }

    /// The event type; [`EventType::Unknown`] exactly when this is
    /// [`AnyEvent::Unknown`].
    #[must_use]
    pub fn event_type(&self) -> &EventType {
        self.head().event_type
    }

    /// When the event occurred, if the envelope says.
    #[must_use]
    pub fn created(&self) -> Option<Timestamp> {
        self.head().created
    }

    /// `livemode`, if the envelope has it.
    #[must_use]
    pub fn livemode(&self) -> Option<bool> {
        self.head().livemode
    }

    /// The merchant account this event was delivered for, when it came
    /// through a layer serving several [accounts](crate::accounts); `None`
    /// otherwise.
    #[must_use]
    pub fn account(&self) -> Option<&str> {
        self.head().account
    }
}

impl EventType {
    /// Whether this is a name the crate knows (not [`Unknown`](EventType::Unknown)).
    #[must_use]
    pub fn is_known(&self) -> bool {
        !matches!(self, EventType::Unknown(_))
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = std::convert::Infallible;

    /// Never fails: a name the crate does not know becomes [`EventType::Unknown`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::from(s))
    }
}

impl From<&str> for EventType {
    fn from(s: &str) -> Self {
        Self::from_name(s).unwrap_or_else(|| EventType::Unknown(s.to_owned()))
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(Self::from(name.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_any_event_says_what_its_envelope_says() {
        let raw = RawEvent::from_slice(
            br#"{"id":"evt_1","type":"order.created","created":1736942400000,"livemode":false,"data":{"orderId":"o1"}}"#,
        )
        .unwrap();
        let any = AnyEvent::from_raw(&raw).unwrap();
        assert_eq!(any.id(), "evt_1");
        assert_eq!(any.event_type(), &EventType::OrderCreated);
        assert_eq!(
            any.created(),
            Some(Timestamp::from_millis(1_736_942_400_000))
        );
        assert_eq!(any.livemode(), Some(false));
        assert_eq!(any.account(), None);
        let any = AnyEvent::from_raw(&raw.with_account("acct_1")).unwrap();
        assert_eq!(any.account(), Some("acct_1"));
        let bare = RawEvent::from_slice(br#"{"id":"evt_2","type":"x.y","data":{}}"#).unwrap();
        let any = AnyEvent::from_raw(&bare).unwrap();
        assert_eq!((any.created(), any.livemode()), (None, None));
        assert!(!any.event_type().is_known());
    }

    #[test]
    fn there_are_44_distinct_names_that_round_trip() {
        assert_eq!(EventType::ALL.len(), 44);
        let names: std::collections::HashSet<_> =
            EventType::ALL.iter().map(EventType::as_str).collect();
        assert_eq!(names.len(), 44);
        for t in EventType::ALL {
            assert!(t.is_known());
            assert_eq!(&t.to_string().parse::<EventType>().unwrap(), t);
            let json = serde_json::to_string(t).unwrap();
            assert_eq!(&serde_json::from_str::<EventType>(&json).unwrap(), t);
        }
    }

    #[test]
    fn spelling_quirks_are_kept() {
        assert_eq!(
            EventType::SubscriptionCancelled.as_str(),
            "subscription.cancelled"
        );
        assert_eq!(
            EventType::SubscriptionPlanChangeCanceled.as_str(),
            "subscription.updated.plan_change_canceled"
        );
        assert_eq!(
            EventType::PaymentMethodUpdate.as_str(),
            "payment_method.update"
        );
        assert_eq!(EventType::SessionComplete.as_str(), "session.complete");
        assert_eq!(EventType::SubscriptionRenewed.family(), "subscription");
        assert!(!EventType::from("payment_method.updated").is_known());
    }
}
