//! The current state of an object: [`ObjectKind`], [`ApiObject`],
//! [`CurrentObject`], and the order list ([`OrderQuery`], [`Page`]).

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::data::{
    Invoice, InvoiceStatus, Order, OrderStatus, Refund, RefundStatus, Session, SessionStatus,
    Subscription, SubscriptionStatus,
};

/// The objects whose current state Clink's API reads, one per event family
/// that has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ObjectKind {
    /// `GET /order/{id}`, for `order.*` events.
    Order,
    /// `GET /refund/{id}`, for `refund.*` events.
    Refund,
    /// `GET /subscription/{id}`, for `subscription.*` events.
    Subscription,
    /// `GET /subscription/invoice/{id}`, for `invoice.*` events.
    Invoice,
    /// `GET /checkout/session/{id}`, for `session.*` events.
    Session,
}

impl ObjectKind {
    /// Every kind, in the order above.
    pub const ALL: [Self; 5] = [
        Self::Order,
        Self::Refund,
        Self::Subscription,
        Self::Invoice,
        Self::Session,
    ];

    /// The kind for an event family (`order`, `refund`, `subscription`,
    /// `invoice`, `session`, as [`EventType::family`](crate::EventType::family)
    /// gives it); `None` for families Clink has no read for (disputes,
    /// customers, payment methods, ...).
    #[must_use]
    pub fn for_family(family: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.family() == family)
    }

    /// The event family it belongs to, also its name on the command line.
    #[must_use]
    pub fn family(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Refund => "refund",
            Self::Subscription => "subscription",
            Self::Invoice => "invoice",
            Self::Session => "session",
        }
    }

    /// The path of its objects, relative to the base URL, up to the id.
    fn prefix(self) -> &'static str {
        match self {
            Self::Order => "order/",
            Self::Refund => "refund/",
            Self::Subscription => "subscription/",
            Self::Invoice => "subscription/invoice/",
            Self::Session => "checkout/session/",
        }
    }

    /// The path of object `id`, relative to the base URL, its id
    /// percent-encoded; the reason, for an id that is not one path segment
    /// (empty, `.` or `..`).
    pub(crate) fn path(self, id: &str) -> Result<String, &'static str> {
        Ok(format!("{}{}", self.prefix(), super::client::segment(id)?))
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.family())
    }
}

/// An object type Clink's API reads: the same types the events' `data`
/// decodes into, since Clink documents the two as one schema.
pub trait ApiObject: DeserializeOwned + Send + 'static {
    /// Which object it is.
    const KIND: ObjectKind;
}

impl ApiObject for Order {
    const KIND: ObjectKind = ObjectKind::Order;
}
impl ApiObject for Refund {
    const KIND: ObjectKind = ObjectKind::Refund;
}
impl ApiObject for Subscription {
    const KIND: ObjectKind = ObjectKind::Subscription;
}
impl ApiObject for Invoice {
    const KIND: ObjectKind = ObjectKind::Invoice;
}
impl ApiObject for Session {
    const KIND: ObjectKind = ObjectKind::Session;
}

/// The current state of the object an event is about, as
/// [`Client::current`](super::Client::current) reads it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
// One per API call: its size does not matter, and boxed variants would be
// clumsier to match.
#[allow(clippy::large_enum_variant)]
pub enum CurrentObject {
    /// An order.
    Order(Order),
    /// A refund.
    Refund(Refund),
    /// A subscription.
    Subscription(Subscription),
    /// An invoice.
    Invoice(Invoice),
    /// A checkout session.
    Session(Session),
}

impl CurrentObject {
    /// Which object it is.
    #[must_use]
    pub fn kind(&self) -> ObjectKind {
        match self {
            Self::Order(_) => ObjectKind::Order,
            Self::Refund(_) => ObjectKind::Refund,
            Self::Subscription(_) => ObjectKind::Subscription,
            Self::Invoice(_) => ObjectKind::Invoice,
            Self::Session(_) => ObjectKind::Session,
        }
    }

    /// Its id, as the API returned it.
    #[must_use]
    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Order(o) => o.order_id.as_deref(),
            Self::Refund(r) => r.refund_id.as_deref(),
            Self::Subscription(s) => s.subscription_id.as_deref(),
            Self::Invoice(i) => i.invoice_id.as_deref(),
            Self::Session(s) => s.session_id.as_deref(),
        }
    }

    /// Its status as the API spells it (`success`, `refunded`, `active`,
    /// `paid`, `complete`...), values this crate does not know included.
    #[must_use]
    pub fn status(&self) -> Option<&str> {
        match self {
            Self::Order(o) => o.status.as_ref().map(OrderStatus::as_str),
            Self::Refund(r) => r.status.as_ref().map(RefundStatus::as_str),
            Self::Subscription(s) => s.status.as_ref().map(SubscriptionStatus::as_str),
            Self::Invoice(i) => i.status.as_ref().map(InvoiceStatus::as_str),
            Self::Session(s) => s.status.as_ref().map(SessionStatus::as_str),
        }
    }
}

/// The filters and page of [`Client::orders`](super::Client::orders).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OrderQuery {
    /// Only this customer's orders.
    pub customer_id: Option<String>,
    /// Only this subscription's orders.
    pub subscription_id: Option<String>,
    /// The page, from 1 (Clink's default is 1).
    pub page: Option<u32>,
    /// Orders per page, 1 to 50 (Clink's default is 20). Clink would cap a
    /// larger size at 50, and a caller paging by the size it asked for
    /// would skip orders: the call refuses it instead.
    pub page_size: Option<u32>,
}

impl OrderQuery {
    /// Every order, Clink's first page.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Only the orders of customer `id`.
    #[must_use]
    pub fn customer_id(mut self, id: impl Into<String>) -> Self {
        self.customer_id = Some(id.into());
        self
    }

    /// Only the orders of subscription `id`.
    #[must_use]
    pub fn subscription_id(mut self, id: impl Into<String>) -> Self {
        self.subscription_id = Some(id.into());
        self
    }

    /// Page `page` (from 1).
    #[must_use]
    pub fn page(mut self, page: u32) -> Self {
        self.page = Some(page);
        self
    }

    /// `size` orders per page, 1 to 50: [`Client::orders`] refuses
    /// another size ([`Unsupported`](ApiErrorKind::Unsupported)), which
    /// Clink would change.
    #[must_use]
    pub fn page_size(mut self, size: u32) -> Self {
        self.page_size = Some(size);
        self
    }

    /// The query's parameters, or why Clink would not answer the page
    /// asked for.
    pub(crate) fn pairs(&self) -> Result<Vec<(&'static str, String)>, String> {
        check_page(
            self.page.unwrap_or(1),
            self.page_size.unwrap_or(20),
            ORDER_PAGE_MAX,
        )?;
        let mut pairs = Vec::new();
        if let Some(id) = &self.customer_id {
            pairs.push(("customerId", id.clone()));
        }
        if let Some(id) = &self.subscription_id {
            pairs.push(("subscriptionId", id.clone()));
        }
        if let Some(page) = self.page {
            pairs.push(("pageNum", page.to_string()));
        }
        if let Some(size) = self.page_size {
            pairs.push(("pageSize", size.to_string()));
        }
        Ok(pairs)
    }
}

/// The most orders Clink gives in a page.
const ORDER_PAGE_MAX: u32 = 50;

/// Whether Clink answers page `page` of `size` items as asked: a page from
/// 1, a size from 1 to `max` (Clink caps a larger one, and a caller paging
/// by its own size would skip items).
pub(crate) fn check_page(page: u32, size: u32, max: u32) -> Result<(), String> {
    if page == 0 {
        return Err("pages are numbered from 1".to_owned());
    }
    if !(1..=max).contains(&size) {
        return Err(format!(
            "a page holds 1 to {max} items, not {size}: Clink would answer another size, and \
             pages counted by this one would skip items"
        ));
    }
    Ok(())
}

/// One page of a list: Clink's `{total, rows}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
#[non_exhaustive]
pub struct Page<T> {
    /// How many items match, on every page.
    #[serde(default)]
    pub total: u64,
    /// The items of this page. An answer without them (an empty body, a
    /// list in another shape) is a [`Decode`](ApiErrorKind::Decode) error,
    /// never an empty page: "no endpoints" read from a proxy's empty answer
    /// could have one made twice.
    pub rows: Vec<T>,
}

use super::client::Said;
use super::error::{ApiError, ApiErrorKind};
use super::Client;
use crate::events::ObjectKey;

impl Client {
    /// The current state of object `id` of type `T` (`Order`, `Refund`,
    /// `Subscription`, `Invoice`, `Session`), decoded as the events' data
    /// is. Callers asking for the same object at the same time share one
    /// call: one that asks while that call is under way gets its answer, to
    /// a request sent before it asked, so a change Clink made in between
    /// may not show. A finished call is never reused: the next read asks
    /// Clink again.
    ///
    /// # Errors
    ///
    /// [`ApiError`]: [`NotFound`](ApiErrorKind::NotFound) also when Clink
    /// answers `"data": null`; [`Decode`](ApiErrorKind::Decode), not a
    /// refusal, for a success with no `data` at all (an empty body, `{}`),
    /// which says nothing of the object (a proxy's empty answer, say).
    pub async fn get<T: ApiObject>(&self, id: &str) -> Result<T, ApiError> {
        let (call, body) = self.read(T::KIND, id).await?;
        match self.data_said(&call, &body)? {
            Said::Data(object) => Ok(object),
            Said::Null => Err(not_found(&call)),
            Said::Absent => Err(no_data(&call)),
        }
    }

    /// The current state of object `id` of `kind` as Clink's JSON `data`
    /// (what `clink-webhook api get` prints), as `serde_json` reads it:
    /// every member and value kept, but its members in order of their
    /// names, and each number as the nearest `f64` when it has a fraction
    /// or does not fit 64 bits (`19.90` is `19.9`). For exact amounts, read
    /// the typed object with [`get`](Self::get).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn get_json(
        &self, kind: ObjectKind, id: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let (call, body) = self.read(kind, id).await?;
        match self.data_said::<serde_json::Value>(&call, &body)? {
            Said::Data(serde_json::Value::Null) | Said::Null => Err(not_found(&call)),
            Said::Data(data) => Ok(data),
            Said::Absent => Err(no_data(&call)),
        }
    }

    /// The current state of the object `key` names, for the five families
    /// Clink can read: give it [`Event::object_key`](crate::Event::object_key)
    /// or [`RawEvent::object_key`](crate::RawEvent::object_key) (which
    /// works when the data did not decode). A key
    /// [within an account](ObjectKey::within) reads as its family.
    ///
    /// # Errors
    ///
    /// [`Unsupported`](ApiErrorKind::Unsupported) for a family with no read
    /// (disputes, customers, ...), otherwise as [`get`](Self::get).
    pub async fn current(&self, key: &ObjectKey) -> Result<CurrentObject, ApiError> {
        let family = key.family.rsplit('/').next().unwrap_or_default();
        let Some(kind) = ObjectKind::for_family(family) else {
            return Err(ApiError::new(
                ApiErrorKind::Unsupported,
                &format!("GET {}", crate::events::printable(family)),
                "Clink's API has no read for this family of events",
            ));
        };
        let id = key.id.as_str();
        Ok(match kind {
            ObjectKind::Order => CurrentObject::Order(self.get(id).await?),
            ObjectKind::Refund => CurrentObject::Refund(self.get(id).await?),
            ObjectKind::Subscription => CurrentObject::Subscription(self.get(id).await?),
            ObjectKind::Invoice => CurrentObject::Invoice(self.get(id).await?),
            ObjectKind::Session => CurrentObject::Session(self.get(id).await?),
        })
    }

    /// A page of orders, filtered by `query`.
    ///
    /// # Errors
    ///
    /// [`ApiError`].
    pub async fn orders(&self, query: &OrderQuery) -> Result<Page<Order>, ApiError> {
        let pairs = query
            .pairs()
            .map_err(|why| ApiError::new(ApiErrorKind::Unsupported, "GET /order", why))?;
        let body = self.call(http::Method::GET, "order", &pairs, None).await?;
        self.whole("GET /order", &body)
    }

    /// The answer of the read of object `id` of `kind`, shared with
    /// concurrent reads of the same object, and the call's name.
    async fn read(&self, kind: ObjectKind, id: &str) -> Result<(String, bytes::Bytes), ApiError> {
        let path = kind.path(id).map_err(|why| {
            let call = format!("GET /{}", kind.prefix());
            ApiError::new(ApiErrorKind::Unsupported, &call, format!("the {why}"))
        })?;
        let call = format!("GET /{path}");
        let body = self.get_shared(&path).await?;
        Ok((call, body))
    }
}

/// Clink's answer of `"data": null` to a read of one object.
fn not_found(call: &str) -> ApiError {
    ApiError::new(ApiErrorKind::NotFound, call, "the answer's data is null")
}

/// A success with no `data` at all, which says nothing of the object.
fn no_data(call: &str) -> ApiError {
    ApiError::new(
        ApiErrorKind::Decode,
        call,
        "the answer has no data field (an empty answer, or one from a proxy?)",
    )
}
