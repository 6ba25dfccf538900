//! Webhook endpoint management: [`Endpoint`], its [`WebhookSecret`], and
//! the requests that create, change and ensure one.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use zeroize::Zeroizing;

/// An endpoint's signing secret in plain text, as Clink returns it on
/// create, rotation and (when available) ensure.
///
/// Zeroized on drop; `Debug` and `Serialize` show only its
/// [masked](Self::masked) form. Read it with [`expose`](Self::expose) to
/// store it or to build a [`SigningKey`](crate::SigningKey).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Zeroizing<String>);

impl<'de> Deserialize<'de> for WebhookSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

impl WebhookSecret {
    /// A secret from its text.
    #[must_use]
    pub fn new(secret: impl Into<String>) -> Self {
        Self(Zeroizing::new(secret.into()))
    }

    /// The secret itself.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret for display: its first and last 4 characters around
    /// `...` (`whse...9f2a`), or `****` when it is shorter than 24
    /// characters (8 shown characters would then be too much of it).
    #[must_use]
    pub fn masked(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() < 24 {
            return "****".to_owned();
        }
        let head: String = chars[..4].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        crate::events::printable(&format!("{head}...{tail}")).into_owned()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WebhookSecret")
            .field(&self.masked())
            .finish()
    }
}

impl Serialize for WebhookSecret {
    /// The [masked](Self::masked) form: serializing an endpoint never
    /// writes its secret.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}

/// A webhook endpoint of the merchant's account.
///
/// The answers that carry a plain signing secret (create, rotation, and
/// ensure) are read leniently, since Clink shows that secret only once and
/// its sources describe the rest of an endpoint only loosely: the secret is
/// taken first, and a field whose value does not fit its type is left at
/// its default (`None`, empty, `false`) instead of failing the call. In a
/// rotation's answer a missing id is the id rotated. Other answers (lists,
/// reads, and the answers of update, enable and disable) decode strictly,
/// but for the two times, whose shape the sources do not settle: they are
/// read as [`created_at`](Self::created_at) says in every answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Endpoint {
    /// Its id (`whk_…`).
    pub id: String,
    /// Where Clink delivers.
    #[serde(default)]
    pub url: String,
    /// The event names it receives.
    #[serde(default)]
    pub events: Vec<String>,
    /// Whether Clink delivers to it.
    #[serde(default)]
    pub enabled: bool,
    /// The plain signing secret, only right after create, rotation or an
    /// ensure that returned it; `None` otherwise (Clink cannot show an old
    /// secret again). A masked form read here (`whse...9f2a`: what
    /// serializing an endpoint writes, so that one serialized and read back
    /// has none) is `None` too, never taken for the secret.
    #[serde(default, deserialize_with = "plain_secret")]
    pub signing_secret: Option<WebhookSecret>,
    /// The secret as Clink masks it for display.
    #[serde(default)]
    pub masked_signing_secret: Option<String>,
    /// The merchant's description.
    #[serde(default)]
    pub description: Option<String>,
    /// When it was created, as Clink gives it (a number whose unit is not
    /// documented): a number with a fraction is cut to its whole part, and
    /// anything but a number (an ISO 8601 string, say) is `None`, in every
    /// answer, rather than failing the call.
    #[serde(default, deserialize_with = "lenient_time")]
    pub created_at: Option<i64>,
    /// When it last changed, as Clink gives it (read as
    /// [`created_at`](Self::created_at) is).
    #[serde(default, deserialize_with = "lenient_time")]
    pub updated_at: Option<i64>,
}

/// A new endpoint, for [`Client::create_endpoint`](super::Client::create_endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct NewEndpoint {
    /// Where Clink should deliver (`https://` only).
    pub url: String,
    /// The event names it should receive (`order.succeeded`, ...).
    pub events: Vec<String>,
    /// A description for the dashboard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether Clink delivers to it from the start.
    pub enabled: bool,
}

impl NewEndpoint {
    /// An enabled endpoint at `url` for `events`.
    pub fn new(
        url: impl Into<String>, events: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            url: url.into(),
            events: events.into_iter().map(Into::into).collect(),
            description: None,
            enabled: true,
        }
    }

    /// With a description.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Enabled or not.
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }
}

/// A change to an endpoint, for
/// [`Client::update_endpoint`](super::Client::update_endpoint): the fields
/// set are changed, the others kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EndpointUpdate {
    /// A new URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// New event names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// A new description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Enabled or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl EndpointUpdate {
    /// No change yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Changes the URL.
    #[must_use]
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Changes the event names.
    #[must_use]
    pub fn events(mut self, events: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.events = Some(events.into_iter().map(Into::into).collect());
        self
    }

    /// Changes the description.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Enables or disables it.
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = Some(enabled);
        self
    }
}

/// The endpoint a service wants at start-up, for
/// [`Client::ensure_endpoint`](super::Client::ensure_endpoint): Clink
/// creates it, or updates the one with the same URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct EnsureEndpoint {
    /// The endpoint: its URL identifies it.
    #[serde(flatten)]
    pub endpoint: NewEndpoint,
    /// Return the plain signing secret when Clink can.
    pub return_signing_secret: bool,
    /// When the secret is asked for and Clink cannot show it (an existing
    /// endpoint), rotate it to get a new one.
    pub rotate_secret_if_unavailable: bool,
    /// Rotate the secret in any case.
    pub rotate_secret: bool,
}

impl EnsureEndpoint {
    /// An enabled endpoint at `url` for `events`, asking for the plain
    /// secret without rotating for it: an endpoint Clink creates comes with
    /// its secret in [`Ensured`]'s `endpoint.signing_secret`, which Clink
    /// shows only then (keep it, or the endpoint's deliveries verify with
    /// nothing you have); an existing endpoint's secret stays as it is, and
    /// unshown.
    pub fn new(
        url: impl Into<String>, events: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            endpoint: NewEndpoint::new(url, events),
            return_signing_secret: true,
            rotate_secret_if_unavailable: false,
            rotate_secret: false,
        }
    }

    /// With a description.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.endpoint = self.endpoint.description(description);
        self
    }

    /// Enabled or not.
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.endpoint = self.endpoint.enabled(enabled);
        self
    }

    /// Asks for the plain secret; with `rotate_if_unavailable`, an existing
    /// endpoint's secret is rotated to get one (its old secret stops
    /// working at once).
    #[must_use]
    pub fn return_secret(mut self, rotate_if_unavailable: bool) -> Self {
        self.return_signing_secret = true;
        self.rotate_secret_if_unavailable = rotate_if_unavailable;
        self
    }

    /// Rotates the secret whatever Clink finds, and asks for the new one
    /// back (as [`return_secret`](Self::return_secret) does): the old secret
    /// stops working at once, and a rotation whose secret Clink withheld
    /// would leave nobody with the one it signs with.
    #[must_use]
    pub fn rotate_secret(mut self) -> Self {
        self.rotate_secret = true;
        self.return_signing_secret = true;
        self
    }
}

/// What [`Client::ensure_endpoint`](super::Client::ensure_endpoint) did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Ensured {
    /// `created`, `updated`, `rotated`, `updated_rotated`, or another word
    /// Clink uses for an endpoint it found as it was.
    #[serde(default)]
    pub source: Option<String>,
    /// The endpoint now.
    pub endpoint: Endpoint,
    /// Whether `endpoint.signing_secret` holds the plain secret.
    #[serde(default)]
    pub signing_secret_available: bool,
    /// Why the secret is not there, when it is not.
    #[serde(default)]
    pub signing_secret_unavailable_reason: Option<String>,
    /// What Clink suggests doing next (`rotate-secret`, ...).
    #[serde(default)]
    pub next_action: Option<String>,
}

/// The filters and page of [`Client::list_endpoints`](super::Client::list_endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointQuery {
    /// The page, from 1.
    pub page: u32,
    /// Endpoints per page, 1 to 100 (another size is refused).
    pub page_size: u32,
    /// Only enabled (`true`) or disabled (`false`) endpoints.
    pub enabled: Option<bool>,
    /// Only the endpoint with exactly this URL.
    pub url: Option<String>,
}

impl Default for EndpointQuery {
    fn default() -> Self {
        Self {
            page: 1,
            page_size: 20,
            enabled: None,
            url: None,
        }
    }
}

impl EndpointQuery {
    /// The first 20 endpoints.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Page `page` (from 1).
    #[must_use]
    pub fn page(mut self, page: u32) -> Self {
        self.page = page;
        self
    }

    /// `size` endpoints per page, 1 to 100: [`Client::list_endpoints`]
    /// refuses another size
    /// ([`Unsupported`](super::ApiErrorKind::Unsupported)).
    #[must_use]
    pub fn page_size(mut self, size: u32) -> Self {
        self.page_size = size;
        self
    }

    /// Only enabled or only disabled endpoints.
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = Some(enabled);
        self
    }

    /// Only the endpoint at `url`.
    #[must_use]
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The query's parameters, or why Clink would not answer the page
    /// asked for.
    pub(crate) fn pairs(&self) -> Result<Vec<(&'static str, String)>, String> {
        super::objects::check_page(self.page, self.page_size, ENDPOINT_PAGE_MAX)?;
        let mut pairs = vec![
            ("pageNum", self.page.to_string()),
            ("pageSize", self.page_size.to_string()),
        ];
        if let Some(enabled) = self.enabled {
            pairs.push(("enabled", enabled.to_string()));
        }
        if let Some(url) = &self.url {
            pairs.push(("url", url.clone()));
        }
        Ok(pairs)
    }
}

/// The most endpoints a page is asked for (Clink's CLI's bound; the
/// server's is not stated).
const ENDPOINT_PAGE_MAX: u32 = 100;

/// An event name endpoints can subscribe to, from `GET /webhook/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EventName {
    /// The name (`order.succeeded`).
    pub name: String,
    /// Clink's numeric code for it.
    #[serde(default)]
    pub code: Option<i64>,
    /// What it means.
    #[serde(default)]
    pub description: Option<String>,
}

/// The answer of `GET /webhook/events`.
#[derive(Deserialize)]
pub(crate) struct EventNames {
    #[serde(default)]
    pub(crate) events: Vec<EventName>,
}

use bytes::Bytes;
use http::Method;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::client::{is_a_secret, secret_in, segment};
use super::error::{ApiError, ApiErrorKind};
use super::objects::Page;
use super::Client;

impl Endpoint {
    /// The endpoint in `data`, an answer that carries a plain secret, read
    /// leniently (see [`Endpoint`]); `id` stands in for a missing id.
    fn lenient(mut data: Map<String, Value>, id: Option<&str>) -> Self {
        // The secret first, whatever the rest holds.
        let signing_secret = match data.remove("signingSecret") {
            Some(Value::String(secret)) if is_a_secret(&secret) => Some(WebhookSecret::new(secret)),
            _ => None,
        };
        Self {
            id: take::<String>(&mut data, "id")
                .filter(|given| !given.is_empty())
                .or_else(|| id.map(str::to_owned))
                .unwrap_or_default(),
            url: take(&mut data, "url").unwrap_or_default(),
            events: take(&mut data, "events").unwrap_or_default(),
            enabled: take(&mut data, "enabled").unwrap_or_default(),
            signing_secret,
            masked_signing_secret: take(&mut data, "maskedSigningSecret"),
            description: take(&mut data, "description"),
            created_at: data.remove("createdAt").and_then(time_of),
            updated_at: data.remove("updatedAt").and_then(time_of),
        }
    }
}

impl Endpoint {
    /// This endpoint, holding the secret `answer` carries outside its
    /// `data` when none was found in it (see [`secret_in`]).
    fn with_secret_from(mut self, answer: &[u8]) -> Self {
        if self.signing_secret.is_none() {
            self.signing_secret = secret_in(answer);
        }
        self
    }
}

impl Ensured {
    /// What ensure did, from `data`, read leniently as [`Endpoint`] says:
    /// only the endpoint itself is required.
    fn lenient(mut data: Map<String, Value>) -> Option<Self> {
        let Some(Value::Object(endpoint)) = data.remove("endpoint") else {
            return None;
        };
        let endpoint = Endpoint::lenient(endpoint, None);
        Some(Self {
            source: take(&mut data, "source"),
            signing_secret_available: take(&mut data, "signingSecretAvailable")
                .unwrap_or(endpoint.signing_secret.is_some()),
            signing_secret_unavailable_reason: take(&mut data, "signingSecretUnavailableReason"),
            next_action: take(&mut data, "nextAction"),
            endpoint,
        })
    }
}

/// A time of an endpoint: a whole number as it is, a number with a
/// fraction cut to its whole part, `None` for anything else (a string, a
/// number out of range).
fn time_of(value: Value) -> Option<i64> {
    let Value::Number(number) = value else {
        return None;
    };
    number.as_i64().or_else(|| {
        let float = number.as_f64()?.trunc();
        // Within i64's range the cast keeps the whole part.
        #[allow(clippy::cast_possible_truncation)]
        (float.is_finite() && float.abs() < 9.2e18).then_some(float as i64)
    })
}

/// A plain signing secret: `None` for `null`, a blank text, or a masked
/// form.
fn plain_secret<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<WebhookSecret>, D::Error> {
    Ok(Option::<WebhookSecret>::deserialize(deserializer)?
        .filter(|secret| is_a_secret(secret.expose())))
}

fn lenient_time<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    Ok(Option::<Value>::deserialize(deserializer)?.and_then(time_of))
}

/// Field `name` of `data` as a `T`; `None` when it is missing, `null`, or
/// does not fit.
fn take<T: DeserializeOwned>(data: &mut Map<String, Value>, name: &str) -> Option<T> {
    data.remove(name)
        .and_then(|value| serde_json::from_value(value).ok())
}

impl Client {
    /// A page of the merchant's webhook endpoints (no plain secrets).
    ///
    /// # Errors
    ///
    /// [`ApiError`].
    pub async fn list_endpoints(&self, query: &EndpointQuery) -> Result<Page<Endpoint>, ApiError> {
        let pairs = query.pairs().map_err(|why| {
            ApiError::new(ApiErrorKind::Unsupported, "GET /webhook/endpoints", why)
        })?;
        let body = self
            .call(Method::GET, "webhook/endpoints", &pairs, None)
            .await?;
        self.whole("GET /webhook/endpoints", &body)
    }

    /// Endpoint `id`.
    ///
    /// # Errors
    ///
    /// [`ApiError`].
    pub async fn endpoint(&self, id: &str) -> Result<Endpoint, ApiError> {
        self.endpoint_call(Method::GET, id, "", None).await
    }

    /// Creates an endpoint; the answer holds its plain signing secret.
    ///
    /// # Errors
    ///
    /// [`ApiError`].
    pub async fn create_endpoint(&self, endpoint: &NewEndpoint) -> Result<Endpoint, ApiError> {
        let body = json(endpoint);
        let answer = self
            .call_for_secret(Method::POST, "webhook/endpoints", Some(body))
            .await?;
        let data = self.data_object("POST /webhook/endpoints", &answer)?;
        Ok(Endpoint::lenient(data, None).with_secret_from(&answer))
    }

    /// Changes endpoint `id` as `update` says.
    ///
    /// # Errors
    ///
    /// [`ApiError`].
    pub async fn update_endpoint(
        &self, id: &str, update: &EndpointUpdate,
    ) -> Result<Endpoint, ApiError> {
        self.endpoint_call(Method::PATCH, id, "", Some(json(update)))
            .await
    }

    /// Enables endpoint `id`.
    ///
    /// # Errors
    ///
    /// [`ApiError`].
    pub async fn enable_endpoint(&self, id: &str) -> Result<Endpoint, ApiError> {
        self.endpoint_call(Method::POST, id, "/enable", None).await
    }

    /// Disables endpoint `id`: Clink stops delivering to it.
    ///
    /// # Errors
    ///
    /// [`ApiError`].
    pub async fn disable_endpoint(&self, id: &str) -> Result<Endpoint, ApiError> {
        self.endpoint_call(Method::POST, id, "/disable", None).await
    }

    /// Deletes endpoint `id`.
    ///
    /// # Errors
    ///
    /// [`ApiError`].
    pub async fn delete_endpoint(&self, id: &str) -> Result<(), ApiError> {
        let path = endpoint_path(id)?;
        self.call(Method::DELETE, &path, &[], None).await.map(drop)
    }

    /// Rotates the signing secret of endpoint `id`: Clink signs with the
    /// new secret at once and the old one stops working at once. The
    /// answer holds the new plain secret in
    /// [`signing_secret`](Endpoint::signing_secret); should it come without
    /// one (`None`), nobody has the secret Clink now signs with: rotate
    /// again (as the CLI says, exiting non-zero). To rotate while deliveries go
    /// on, use [`rotate_signing_secret`](Self::rotate_signing_secret),
    /// which also puts the new secret into your verifier as soon as Clink
    /// answers, keeps the old one for a grace period, and runs one rotation
    /// of an endpoint at a time. The answer is
    /// read leniently (see [`Endpoint`]): a secret Clink sent is not lost to
    /// a field in a shape the client does not expect.
    ///
    /// # Errors
    ///
    /// [`ApiError`].
    pub async fn rotate_endpoint_secret(&self, id: &str) -> Result<Endpoint, ApiError> {
        let path = format!("{}/rotate-secret", endpoint_path(id)?);
        let call = format!("POST /{path}");
        let answer = self.call_for_secret(Method::POST, &path, None).await?;
        let data = match self.data::<Value>(&call, &answer) {
            // A yes with no `data` (or a `null` one) whose secret is
            // elsewhere: Clink rotated all the same, so the secret is the
            // endpoint's, whose id is known. Any other `data` that is not
            // an object (or one that cannot be read: twice, say) fails,
            // holding the secret it may carry (the answer read again, as
            // `data_object` words its errors).
            Ok(Some(Value::Object(data))) => data,
            Ok(None | Some(Value::Null)) if secret_in(&answer).is_some() => Map::new(),
            _ => self.data_object(&call, &answer)?,
        };
        Ok(Endpoint::lenient(data, Some(id)).with_secret_from(&answer))
    }

    /// Creates the endpoint `want` describes, or updates the one at its URL:
    /// idempotent, for start-up. An endpoint it creates comes with its
    /// plain secret in `endpoint.signing_secret` when asked for (as
    /// [`EnsureEndpoint::new`] does): Clink never shows it again, so keep
    /// it before anything else.
    ///
    /// # Errors
    ///
    /// [`ApiError`].
    pub async fn ensure_endpoint(&self, want: &EnsureEndpoint) -> Result<Ensured, ApiError> {
        let call = "PUT /webhook/endpoints/ensure";
        let answer = self
            .call_for_secret(Method::PUT, "webhook/endpoints/ensure", Some(json(want)))
            .await?;
        let data = self.data_object(call, &answer)?;
        let flagged = data.contains_key("signingSecretAvailable");
        let mut ensured = Ensured::lenient(data).ok_or_else(|| {
            ApiError::new(ApiErrorKind::Decode, call, "the answer has no endpoint")
                .with_secret(secret_in(&answer))
        })?;
        if ensured.endpoint.signing_secret.is_none() {
            ensured.endpoint = ensured.endpoint.with_secret_from(&answer);
            // Clink's flag when it sent one; else whether a secret came.
            if !flagged {
                ensured.signing_secret_available = ensured.endpoint.signing_secret.is_some();
            }
        }
        Ok(ensured)
    }

    /// The event names endpoints can subscribe to.
    ///
    /// # Errors
    ///
    /// [`ApiError`].
    pub async fn webhook_event_names(&self) -> Result<Vec<EventName>, ApiError> {
        let call = "GET /webhook/events";
        let answer = self.call(Method::GET, "webhook/events", &[], None).await?;
        Ok(self
            .data::<EventNames>(call, &answer)?
            .map(|names| names.events)
            .unwrap_or_default())
    }

    async fn endpoint_call(
        &self, method: Method, id: &str, action: &str, body: Option<Bytes>,
    ) -> Result<Endpoint, ApiError> {
        let path = format!("{}{action}", endpoint_path(id)?);
        let call = format!("{method} /{path}");
        let answer = self.call(method, &path, &[], body).await?;
        self.endpoint_data(&call, &answer)
    }

    fn endpoint_data(&self, call: &str, answer: &[u8]) -> Result<Endpoint, ApiError> {
        self.data(call, answer)?
            .ok_or_else(|| ApiError::new(ApiErrorKind::Decode, call, "the answer has no data"))
    }

    /// The `data` of an answer as a JSON object, for the lenient reads. An
    /// answer without one keeps the secret it may hold elsewhere in its
    /// error ([`ApiError::new_secret`]).
    fn data_object(&self, call: &str, answer: &[u8]) -> Result<Map<String, Value>, ApiError> {
        let refused = |why: &str| {
            ApiError::new(ApiErrorKind::Decode, call, why).with_secret(secret_in(answer))
        };
        match self.data::<Value>(call, answer) {
            Ok(Some(Value::Object(data))) => Ok(data),
            Ok(None | Some(Value::Null)) => Err(refused("the answer has no data")),
            Ok(Some(_)) => Err(refused("the answer's data is not an object")),
            Err(error) if error.new_secret().is_none() => Err(error.with_secret(secret_in(answer))),
            Err(error) => Err(error),
        }
    }
}

/// The path of endpoint `id`; an id that is not one path segment (empty,
/// `.` or `..`) is [`Unsupported`](ApiErrorKind::Unsupported).
fn endpoint_path(id: &str) -> Result<String, ApiError> {
    let id = segment(id).map_err(|why| {
        ApiError::new(
            ApiErrorKind::Unsupported,
            "webhook/endpoints",
            format!("the endpoint {why}"),
        )
    })?;
    Ok(format!("webhook/endpoints/{id}"))
}

/// `value` as a JSON body.
fn json(value: &impl Serialize) -> Bytes {
    // These request types serialize to JSON without fail: strings, bools
    // and lists of strings only.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializing an endpoint writes its secret's masked form; reading
    /// that back gives no secret, not the mask taken for one (a key that
    /// would verify nothing). Neither does a blank text or a short mask.
    #[test]
    fn an_endpoint_written_and_read_back_has_no_secret_not_its_mask() {
        let secret = "whsec_0123456789abcdef0123456789abcdef";
        let read = |value: Value| serde_json::from_value::<Endpoint>(value).unwrap();
        let endpoint = read(serde_json::json!({ "id": "whk_1", "signingSecret": secret }));
        assert_eq!(
            endpoint.signing_secret.as_ref().map(WebhookSecret::expose),
            Some(secret)
        );
        let written = serde_json::to_value(&endpoint).unwrap();
        assert_eq!(written["signingSecret"], "whse...cdef");
        assert_eq!(read(written).signing_secret, None);
        for not_one in ["****", "", "  ", "whse...cdef"] {
            let endpoint = read(serde_json::json!({ "id": "whk_1", "signingSecret": not_one }));
            assert_eq!(endpoint.signing_secret, None, "{not_one:?}");
            let lenient = Endpoint::lenient(
                serde_json::from_value(serde_json::json!({ "signingSecret": not_one })).unwrap(),
                Some("whk_1"),
            );
            assert_eq!(lenient.signing_secret, None, "{not_one:?}");
        }
    }
}
