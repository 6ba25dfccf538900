//! [`Scenario`]: the situations Clink puts a receiver in, as lists of
//! deliveries and the answers the layer promises.

use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tower_service::Service;

use super::{fixture, SignedRequest, TimestampUnit};
use crate::signature::VerifyErrorKind;
use crate::{EventType, Outcome, RawEvent, Timestamp};

/// One delivery of a [`Scenario`] and the answer expected for it.
#[derive(Debug, Clone)]
pub struct Step {
    description: String,
    request: SignedRequest,
    status: StatusCode,
    outcomes: Vec<Outcome>,
}

impl Step {
    /// Sends `request` and expects `status`. `description` says what the
    /// step checks; it is shown when the step fails.
    pub fn new(description: impl Into<String>, request: SignedRequest, status: StatusCode) -> Self {
        Self {
            description: description.into(),
            request,
            status,
            outcomes: Vec::new(),
        }
    }

    /// Also expects this [`Outcome`], read from the response extensions.
    #[must_use]
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcomes = vec![outcome];
        self
    }

    /// Also expects one of these [`Outcome`]s, read from the response
    /// extensions: a first delivery is [`Handled`](Outcome::Handled),
    /// [`Unhandled`](Outcome::Unhandled) when the app has no handler for its
    /// type, or [`Queued`](Outcome::Queued) when the app keeps it in an
    /// [inbox](crate::inbox) for workers to handle.
    #[must_use]
    pub fn outcome_any(mut self, outcomes: impl IntoIterator<Item = Outcome>) -> Self {
        self.outcomes = outcomes.into_iter().collect();
        self
    }

    /// What the step checks.
    #[must_use]
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The delivery it sends.
    #[must_use]
    pub fn request(&self) -> &SignedRequest {
        &self.request
    }

    /// The status it expects.
    #[must_use]
    pub fn expected_status(&self) -> StatusCode {
        self.status
    }

    /// The outcomes it accepts; empty when it checks only the status.
    #[must_use]
    pub fn expected_outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }

    fn expected(&self) -> String {
        let outcomes: Vec<_> = self.outcomes.iter().map(Outcome::as_str).collect();
        let status = self.status.as_u16();
        match outcomes.as_slice() {
            [] => status.to_string(),
            [only] => format!("{status} {only}"),
            [first @ .., last] => format!("{status} {} or {last}", first.join(", ")),
        }
    }
}

/// A named list of [`Step`]s, sent in order to one service.
///
/// The built-in scenarios are what a Clink receiver meets in production, with
/// the status [`ClinkLayer`](crate::ClinkLayer) promises for each delivery.
/// Run them against your own app, with your handlers, to check that the
/// layer is wired in front of them and that they acknowledge what they should:
///
/// ```
/// use clink_webhooks::testing::Scenario;
/// use clink_webhooks::{ClinkLayer, EventRouter, Verifier};
/// use tower::Layer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let service = ClinkLayer::new(Verifier::new("whsec_test")?).layer(EventRouter::new());
/// Scenario::duplicates("whsec_test").run(service).await?;
/// # Ok(()) }
/// ```
///
/// Every event id and object id carries a tag unique to the scenario value
/// (random in part, so that test processes sharing a store do not collide
/// either), so scenarios can run one after another against one service (and
/// one store) without seeing each other's events. The built-in scenarios expect
/// the layer's default 300 s tolerance and, where the app has a handler for
/// an `order.*` event, that it succeeds. The bodies are signed as sent
/// (indented, ending in a newline): an app that parses and writes a body
/// again before the layer checks its signature fails.
///
/// The steps read the [`Outcome`] the layer puts in each response's
/// extensions, so the service under test is one with
/// [`ClinkLayer`](crate::ClinkLayer) in front, called in process (not a
/// hand-written receiver, nor an app reached over HTTP: for those,
/// `clink-webhook send` checks statuses).
///
/// A delivery the app must take passes when it is acknowledged `200` as
/// [`Handled`](Outcome::Handled), [`Unhandled`](Outcome::Unhandled) (no
/// handler for its type) or [`Queued`](Outcome::Queued) (an app behind
/// [`ClinkLayer::intake`](crate::ClinkLayer::intake), whose workers run
/// the handlers later); an event that arrives after a newer one about the
/// same object may also be [`SkippedStale`](Outcome::SkippedStale) (a
/// router with [`skip_stale`](crate::EventRouter::skip_stale)). A retry of
/// an event taken must be a [`Duplicate`](Outcome::Duplicate), and a
/// forgery refused: an app that takes a retry again, or refuses a valid
/// delivery, fails. The scenarios check the layer's wiring and answers, not
/// what your handlers do with an event: an app without a handler for a
/// type passes, and so does one that applies a stale event over newer
/// state (check that in your own tests, with
/// [`Event::freshness`](crate::Event::freshness)).
#[derive(Debug, Clone)]
pub struct Scenario {
    name: String,
    steps: Vec<Step>,
}

impl Scenario {
    /// An empty scenario; add steps with [`step`](Self::step).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            steps: Vec::new(),
        }
    }

    /// Adds a step at the end.
    #[must_use]
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Sends every step added so far to `uri` (by default
    /// [`DEFAULT_PATH`](crate::testing::DEFAULT_PATH), `/webhooks/clink`), for
    /// an app whose webhook is mounted elsewhere (`/api/clink`, an
    /// account's `/webhooks/clink/acct_1`); call it after the last
    /// [`step`](Self::step) (the built-in scenarios have all theirs).
    ///
    /// ```
    /// use clink_webhooks::testing::Scenario;
    ///
    /// let scenario = Scenario::duplicates("whsec_test").uri("/api/clink");
    /// assert!(scenario
    ///     .steps()
    ///     .iter()
    ///     .all(|step| step.request().build::<bytes::Bytes>().uri() == "/api/clink"));
    /// ```
    ///
    /// # Panics
    ///
    /// When `uri` is not a valid URI: a mistake in the test itself.
    #[must_use]
    pub fn uri<U>(mut self, uri: U) -> Self
    where
        U: TryInto<http::Uri>,
        U::Error: fmt::Display,
    {
        let uri: http::Uri = uri
            .try_into()
            .unwrap_or_else(|error| panic!("Scenario::uri: not a valid URI: {error}"));
        for step in &mut self.steps {
            step.request = step.request.clone().uri(uri.clone());
        }
        self
    }

    /// Adds the header `name: value` to every step added so far, for an
    /// app that reads something of its own from one (the account, with
    /// [`AccountFrom::Header`](crate::accounts::AccountFrom::Header)); call
    /// it after the last [`step`](Self::step), as [`uri`](Self::uri). The
    /// header is not signed, as no header is.
    ///
    /// ```
    /// use clink_webhooks::testing::Scenario;
    /// use http::{HeaderName, HeaderValue};
    ///
    /// let scenario = Scenario::duplicates("whsec_test").header(
    ///     HeaderName::from_static("x-clink-account"),
    ///     HeaderValue::from_static("acct_eu"),
    /// );
    /// assert!(scenario.steps().iter().all(|step| {
    ///     step.request().build::<bytes::Bytes>().headers()["x-clink-account"] == "acct_eu"
    /// }));
    /// ```
    #[must_use]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "taken as SignedRequest::header takes them, and cloned for each step"
    )]
    pub fn header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        for step in &mut self.steps {
            step.request = step.request.clone().header(name.clone(), value.clone());
        }
        self
    }

    /// The scenario's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its steps, in the order they are sent.
    #[must_use]
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Every built-in scenario that needs one key: [`duplicates`](Self::duplicates),
    /// [`reordering`](Self::reordering), [`clock_skew`](Self::clock_skew) and
    /// [`tampered_body`](Self::tampered_body).
    #[must_use]
    pub fn all(secret: &str) -> Vec<Self> {
        vec![
            Self::duplicates(secret),
            Self::reordering(secret),
            Self::clock_skew(secret),
            Self::tampered_body(secret),
        ]
    }

    /// Clink retries a delivery with the same event id (signed again here,
    /// as a retry sent later would be with a fresh timestamp): the
    /// first is handled, every retry is acknowledged `200` as a duplicate
    /// without running the handler again.
    #[must_use]
    pub fn duplicates(secret: &str) -> Self {
        let events = Events::new(secret, "duplicates");
        let succeeded = events.order(&EventType::OrderSucceeded, "paid", "paid", None);
        Self::new("duplicates")
            .step(handled("the first delivery is handled", succeeded.clone()))
            .step(duplicate(
                "a retry with the same id, signed again, is a duplicate",
                succeeded.clone(),
            ))
            .step(duplicate(
                "another retry, with its timestamp in seconds, is a duplicate too",
                succeeded.unit(TimestampUnit::Seconds),
            ))
    }

    /// Clink does not deliver in order: `order.succeeded` arrives before the
    /// `order.created` about the same order. Both are acknowledged: the
    /// older one is handled (the router marks it [stale](crate::ordering)
    /// when it tracks freshness), skipped as stale by a router that
    /// [skips stale events](crate::EventRouter::skip_stale), or queued by an
    /// inbox intake; a retry of the first is still a duplicate.
    #[must_use]
    pub fn reordering(secret: &str) -> Self {
        let events = Events::new(secret, "reordering");
        // Two events about one order.
        let succeeded = events.order(&EventType::OrderSucceeded, "later", "shared", None);
        let created = events.order(
            &EventType::OrderCreated,
            "earlier",
            "shared",
            Some("2025-01-15T11:55:00.000Z"),
        );
        Self::new("reordering")
            .step(handled(
                "order.succeeded, created at 12:00, arrives first and is handled",
                succeeded.clone(),
            ))
            .step(taken_or_stale(
                "order.created about the same order, created at 11:55, arrives after it and is still acknowledged",
                created,
            ))
            .step(duplicate(
                "a retry of order.succeeded after both is a duplicate",
                succeeded,
            ))
    }

    /// Senders' clocks drift, and a captured delivery must not be
    /// replayable later: timestamps within 300 s either way are accepted, in
    /// seconds or milliseconds (here 290 s); 305 s old and 320 s off either
    /// way are refused `401`, so a tolerance over 305 s fails; and a
    /// refused delivery does not use up its event id.
    #[must_use]
    pub fn clock_skew(secret: &str) -> Self {
        let events = Events::new(secret, "clock_skew");
        let behind = events.order(&EventType::OrderSucceeded, "behind", "behind", None);
        let ahead = events.order(&EventType::OrderSucceeded, "ahead", "ahead", None);
        let old = events.order(&EventType::OrderSucceeded, "old", "old", None);
        let future = events.order(&EventType::OrderSucceeded, "future", "future", None);
        Self::new("clock_skew")
            .step(handled(
                "a timestamp 290 s behind, in milliseconds, is accepted",
                behind.skew_secs(-290),
            ))
            .step(handled(
                "a timestamp 290 s ahead, in seconds, is accepted",
                ahead.skew_secs(290).unit(TimestampUnit::Seconds),
            ))
            .step(refused(
                "a timestamp 305 s old is refused as a possible replay",
                old.clone().skew_secs(-305),
                VerifyErrorKind::TooOld,
            ))
            .step(refused(
                "a timestamp 320 s old is refused as a possible replay",
                old.clone().skew_secs(-320),
                VerifyErrorKind::TooOld,
            ))
            .step(refused(
                "a timestamp 320 s ahead is refused",
                future.skew_secs(320),
                VerifyErrorKind::InFuture,
            ))
            .step(handled(
                "the event refused as too old, sent again on time, is handled",
                old,
            ))
    }

    /// A body changed after signing is refused `401`, before and after the
    /// real event is handled (a forged copy never gets the duplicate `200`),
    /// and does not use up the event id.
    #[must_use]
    pub fn tampered_body(secret: &str) -> Self {
        let events = Events::new(secret, "tampered_body");
        let succeeded = events.order(&EventType::OrderSucceeded, "paid", "paid", None);
        Self::new("tampered_body")
            .step(refused(
                "a body with one byte changed after signing is refused",
                succeeded.clone().tamper(),
                VerifyErrorKind::SignatureMismatch,
            ))
            .step(handled(
                "the untouched delivery of the same event is then handled",
                succeeded.clone(),
            ))
            .step(refused(
                "a tampered copy sent after it is still refused, not taken for a duplicate",
                succeeded.tamper(),
                VerifyErrorKind::SignatureMismatch,
            ))
    }

    /// A signing key mid-rotation: the service must verify with `current`
    /// and, not yet expired, `previous`, e.g.
    /// `Verifier::new(current)?.add_key(SigningKey::new(previous)?.expires_at(..))`.
    /// Deliveries signed with either are handled; one signed with a key the
    /// endpoint never had is refused `401`.
    #[must_use]
    pub fn key_rotation(current: &str, previous: &str) -> Self {
        let events = Events::new(current, "key_rotation");
        let new_key = events.order(&EventType::OrderSucceeded, "new_key", "new_key", None);
        let old_key = events.order(&EventType::OrderSucceeded, "old_key", "old_key", None);
        let unknown = events.order(
            &EventType::OrderSucceeded,
            "unknown_key",
            "unknown_key",
            None,
        );
        Self::new("key_rotation")
            .step(handled(
                "a delivery signed with the current key is handled",
                new_key,
            ))
            .step(handled(
                "a delivery signed with the previous, unexpired key is handled",
                old_key.secret(previous),
            ))
            .step(refused(
                "a delivery signed with a key the endpoint never had is refused",
                unknown.secret("whsec_never_configured"),
                VerifyErrorKind::SignatureMismatch,
            ))
    }

    /// Sends every step in order to `service`, with
    /// `http_body_util::Full<Bytes>` request bodies, which
    /// [`ClinkService`](crate::ClinkService) and axum's `Router` accept.
    ///
    /// The events' ids are drawn when the scenario is built: a second run
    /// sends the same events, which an app that kept the first run's (in
    /// a store shared with it) takes for duplicates. Build the scenario
    /// again for each app.
    ///
    /// # Errors
    ///
    /// [`ScenarioFailure`] when any step got another status or outcome than
    /// expected, or an error; it lists every step with what it got.
    pub async fn run<S, ResB>(&self, service: S) -> Result<(), ScenarioFailure>
    where
        S: Service<Request<Full<Bytes>>, Response = Response<ResB>>,
        S::Error: fmt::Display,
    {
        self.run_with_body::<Full<Bytes>, S, ResB>(service).await
    }

    /// As [`run`](Self::run), for a service that takes another request body
    /// type made from [`Bytes`], such as `axum::body::Body`.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub async fn run_with_body<B, S, ResB>(&self, mut service: S) -> Result<(), ScenarioFailure>
    where
        B: From<Bytes>,
        S: Service<Request<B>, Response = Response<ResB>>,
        S::Error: fmt::Display,
    {
        let mut results = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let got = match poll_fn(|cx| service.poll_ready(cx)).await {
                Ok(()) => service
                    .call(step.request.build())
                    .await
                    .map(|response| Got {
                        status: response.status(),
                        outcome: Outcome::of(&response).cloned(),
                    })
                    .map_err(|error| format!("service error: {error}")),
                Err(error) => Err(format!("service not ready: {error}")),
            };
            let passed = got.as_ref().is_ok_and(|got| {
                got.status == step.status
                    && (step.outcomes.is_empty()
                        || got
                            .outcome
                            .as_ref()
                            .is_some_and(|o| step.outcomes.contains(o)))
            });
            // The id the step's body carries (random per scenario), so
            // that a failure can be found in the app's logs and stores.
            let event_id = RawEvent::from_bytes(step.request.body().clone())
                .ok()
                .map(|event| event.id().to_owned());
            results.push(StepResult {
                description: step.description.clone(),
                event_id,
                expected: step.expected(),
                got,
                passed,
            });
        }
        if results.iter().all(|r| r.passed) {
            Ok(())
        } else {
            Err(ScenarioFailure {
                scenario: self.name.clone(),
                results,
            })
        }
    }
}

/// What a step's delivery got back.
#[derive(Debug, Clone)]
struct Got {
    status: StatusCode,
    outcome: Option<Outcome>,
}

/// How one step of a failed scenario went.
#[derive(Debug, Clone)]
pub struct StepResult {
    description: String,
    event_id: Option<String>,
    expected: String,
    got: Result<Got, String>,
    passed: bool,
}

impl StepResult {
    /// What the step checks.
    #[must_use]
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The id of the event the step delivered, when its body is an event
    /// envelope: the scenarios' ids are random, so this is how to find the
    /// step's delivery in the app's logs and stores.
    #[must_use]
    pub fn event_id(&self) -> Option<&str> {
        self.event_id.as_deref()
    }

    /// Whether it got what it expected.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.passed
    }

    /// The status it got; `None` when the service returned an error.
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        self.got.as_ref().ok().map(|got| got.status)
    }

    /// The [`Outcome`] it got; `None` when the service returned an error
    /// or its response carried none (it was not behind `ClinkLayer`).
    #[must_use]
    pub fn outcome(&self) -> Option<&Outcome> {
        self.got.as_ref().ok().and_then(|got| got.outcome.as_ref())
    }
}

impl fmt::Display for StepResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.passed { "ok  " } else { "FAIL" };
        write!(
            f,
            "{mark} {}: expected {}, got ",
            self.description, self.expected
        )?;
        match &self.got {
            Ok(got) => write!(
                f,
                "{} {}",
                got.status.as_u16(),
                got.outcome.as_ref().map_or("(no outcome)", Outcome::as_str)
            )?,
            Err(error) => f.write_str(error)?,
        }
        match &self.event_id {
            Some(id) => write!(f, " (event {})", crate::events::printable(id)),
            None => Ok(()),
        }
    }
}

/// A scenario in which at least one step did not get what it expected.
///
/// Its `Display` (and `Debug`, so that `unwrap` shows it) lists every step
/// with what it expected and what it got.
#[derive(Clone)]
pub struct ScenarioFailure {
    scenario: String,
    results: Vec<StepResult>,
}

impl ScenarioFailure {
    /// The scenario's name.
    #[must_use]
    pub fn scenario(&self) -> &str {
        &self.scenario
    }

    /// Every step, passed or not, in order.
    #[must_use]
    pub fn steps(&self) -> &[StepResult] {
        &self.results
    }
}

impl fmt::Display for ScenarioFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.results.iter().filter(|r| !r.passed).count();
        write!(
            f,
            "scenario `{}`: {failed} of {} steps failed",
            self.scenario,
            self.results.len()
        )?;
        for (i, result) in self.results.iter().enumerate() {
            write!(f, "\n  {}. {result}", i + 1)?;
        }
        Ok(())
    }
}

impl fmt::Debug for ScenarioFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for ScenarioFailure {}

/// The outcomes of a delivery the app took: it ran the handler, has none
/// for the event's type, or kept the event in its inbox for a worker.
fn taken() -> [Outcome; 3] {
    [Outcome::Handled, Outcome::Unhandled, Outcome::Queued]
}

/// A delivery the app must take.
fn handled(description: &str, request: SignedRequest) -> Step {
    Step::new(description, request, StatusCode::OK).outcome_any(taken())
}

/// A delivery the app must take, or may skip as stale: one that arrives
/// after a newer event about the same object was taken.
fn taken_or_stale(description: &str, request: SignedRequest) -> Step {
    Step::new(description, request, StatusCode::OK)
        .outcome_any(taken().into_iter().chain([Outcome::SkippedStale]))
}

fn duplicate(description: &str, request: SignedRequest) -> Step {
    Step::new(description, request, StatusCode::OK).outcome(Outcome::Duplicate)
}

fn refused(description: &str, request: SignedRequest, kind: VerifyErrorKind) -> Step {
    Step::new(description, request, StatusCode::UNAUTHORIZED).outcome(Outcome::Verify(kind))
}

/// The tag of the `n`th scenario value this process made, named `scenario`
/// and made at `now`: those three, which tell this process's scenarios
/// apart, and 64 random bits, which tell them from another process's (two
/// test processes sharing a Redis or PostgreSQL store can make the same
/// scenario in the same millisecond).
fn tag(scenario: &str, now: Timestamp, n: u64) -> String {
    let random = crate::store::LeaseToken::generate();
    format!(
        "{scenario}_{:x}{n:x}_{}",
        now.as_millis().unsigned_abs(),
        &random.as_str()[..16]
    )
}

/// Makes a scenario's events: fixture bodies whose event and order ids carry
/// a tag unique to this scenario value.
struct Events<'a> {
    secret: &'a str,
    tag: String,
}

impl<'a> Events<'a> {
    fn new(secret: &'a str, scenario: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = tag(scenario, Timestamp::now(), n);
        Self { secret, tag }
    }

    /// `event_type`'s fixture with the event id `evt_<tag>_<name>`, about
    /// the order `ord_<tag>_<order>` and, if given, `created` then. Events
    /// about one order are ordered by their `created` time, so only those
    /// of a scenario about ordering share one.
    ///
    /// The body is indented JSON ending in a newline, not the compact form
    /// a JSON library writes by default: an app that parses the body and
    /// writes it again before checking the signature checks other bytes
    /// than were signed, and fails every delivery.
    fn order(
        &self, event_type: &EventType, name: &str, order: &str, created: Option<&str>,
    ) -> SignedRequest {
        let mut body: Value =
            serde_json::from_str(&fixture(event_type)).unwrap_or_else(|_| unreachable!());
        body["id"] = Value::from(format!("evt_{}_{name}", self.tag));
        body["data"]["orderId"] = Value::from(format!("ord_{}_{order}", self.tag));
        if let Some(created) = created {
            body["created"] = Value::from(created);
        }
        let mut text = serde_json::to_string_pretty(&body).unwrap_or_else(|_| unreachable!());
        text.push('\n');
        SignedRequest::new(self.secret, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClinkLayer, EventRouter, Verifier};
    use tower_layer::Layer;

    #[tokio::test]
    async fn a_failure_lists_every_step_with_what_it_got() {
        // A service that verifies nothing and says no outcome.
        let service = tower::service_fn(|_request: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        });
        let failure = Scenario::tampered_body("k").run(service).await.unwrap_err();
        assert_eq!(failure.scenario(), "tampered_body");
        let passed: Vec<_> = failure.steps().iter().map(StepResult::passed).collect();
        assert_eq!(passed, [false, false, false]);
        assert_eq!(failure.steps()[0].status(), Some(StatusCode::OK));
        let text = format!("{failure:?}");
        assert!(
            text.starts_with("scenario `tampered_body`: 3 of 3 steps failed"),
            "{text}"
        );
        assert!(
            text.contains("1. FAIL a body with one byte changed after signing is refused: expected 401 signature_mismatch, got 200 (no outcome)"),
            "{text}"
        );
        assert!(text.contains("2. FAIL the untouched delivery"), "{text}");
    }

    #[tokio::test]
    async fn service_errors_are_reported_per_step() {
        let service = tower::service_fn(|_request: Request<Full<Bytes>>| async {
            Err::<Response<()>, _>("connection reset")
        });
        let failure = Scenario::duplicates("k").run(service).await.unwrap_err();
        assert!(failure.steps().iter().all(|s| s.status().is_none()));
        assert!(failure
            .to_string()
            .contains("got service error: connection reset"));
    }

    /// Two processes sharing a store (Redis, PostgreSQL) can make the same
    /// scenario in the same millisecond, each as its first: their events
    /// must still differ, or one process's run sees the other's as
    /// duplicates.
    #[test]
    fn tags_differ_across_processes_in_one_millisecond() {
        let now = Timestamp::from_millis(1_736_942_400_000);
        let tags: std::collections::HashSet<_> =
            (0..64).map(|_| tag("duplicates", now, 0)).collect();
        assert_eq!(tags.len(), 64, "{tags:?}");
        assert!(tags.iter().all(|tag| tag.starts_with("duplicates_")));
    }

    #[tokio::test]
    async fn two_runs_of_one_kind_do_not_share_events() {
        let router =
            EventRouter::new().on_unhandled(|_| std::future::ready(Ok::<_, std::io::Error>(())));
        let service = ClinkLayer::new(Verifier::new("k").unwrap()).layer(router);
        Scenario::duplicates("k")
            .run(service.clone())
            .await
            .unwrap();
        Scenario::duplicates("k").run(service).await.unwrap();
    }
}
