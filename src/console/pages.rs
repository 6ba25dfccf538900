//! The console's handlers: one per page and action, each rendering an
//! askama template (which escapes every value it prints).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query as QueryString, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use http::header::{self, HeaderValue};
use http::StatusCode;

use super::view::{self, Query};
use super::{Ctx, Shared};
use crate::store::inbox_history::{HISTORY_ERROR_LEN, HISTORY_LEN};
use crate::store::inbox_page::cut_error;
use crate::store::{
    InboxAttemptRecord, InboxEntry, InboxFilter, InboxStatus, InboxSummary, PageStart, ReplayPin,
    Replayed, StoreError, StoreErrorKind,
};
use crate::Timestamp;

const STYLESHEET: &str = include_str!("assets/console.css");
const SCRIPT: &str = include_str!("assets/console.js");

/// How many events of its object an event's page shows at most.
const TIMELINE_LEN: usize = 100;

/// How many event numbers the log line of a bulk replay names at most.
const LOGGED_SEQS: usize = 20;

/// Every status, in the order the pages list them.
const STATUSES: [InboxStatus; 5] = [
    InboxStatus::Pending,
    InboxStatus::Retrying,
    InboxStatus::Running,
    InboxStatus::Dead,
    InboxStatus::Done,
];

/// What every page's frame shows.
struct Frame {
    base: String,
    home: String,
    read_only: bool,
    refresh: bool,
    /// The CSRF token of the log-out form, shown to a session only.
    logout: Option<String>,
}

impl Frame {
    fn new(shared: &Shared, ctx: &Ctx, refresh: bool) -> Self {
        Self {
            home: if ctx.base.is_empty() {
                "/".to_owned()
            } else {
                ctx.base.clone()
            },
            base: ctx.base.clone(),
            read_only: shared.read_only,
            refresh,
            logout: matches!(ctx.who, super::auth::Who::Session(_))
                .then(|| shared.keys.csrf(&ctx.who)),
        }
    }
}

/// A row of an events table.
struct Row {
    seq: i64,
    status: &'static str,
    event_type: String,
    event_id: String,
    account: String,
    object: String,
    received: String,
    received_ago: String,
    attempts: u32,
    error: String,
}

impl Row {
    /// The row of `summary`: its last error as the summary carries it (its
    /// first [`SUMMARY_ERROR_CHARS`](crate::store::SUMMARY_ERROR_CHARS)
    /// characters), with `…` when it was cut; cut here too, the same way,
    /// should an inbox of the app's own carry more.
    fn new(summary: &InboxSummary, now: Timestamp) -> Self {
        Self {
            seq: summary.seq,
            status: summary.status.as_str(),
            event_type: view::shown(&summary.event_type),
            event_id: view::shown(&summary.event_id),
            account: view::shown(summary.account.as_deref().unwrap_or_default()),
            object: view::shown(summary.object_key.as_deref().unwrap_or_default()),
            received: view::time(summary.received_at),
            received_ago: view::ago(summary.received_at, now),
            attempts: summary.attempts,
            error: summary
                .last_error
                .as_deref()
                .map(|error| {
                    let (start, cut) = cut_error(error);
                    let mut shown = view::shown(start);
                    if cut || summary.last_error_cut {
                        shown.push('…');
                    }
                    shown
                })
                .unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    frame: Frame,
    rows: Vec<Row>,
    dead_total: u64,
    counts: Vec<(&'static str, u64)>,
    oldest: String,
    chart: String,
    received_total: u64,
    handled_total: u64,
}

#[derive(Template)]
#[template(path = "console/events.html")]
struct EventsPage {
    frame: Frame,
    query: Query,
    statuses: Vec<(&'static str, bool)>,
    notice: Option<String>,
    problem: Option<String>,
    matching: u64,
    dead_matching: u64,
    /// The newest of the dead events counted in `dead_matching`: the bulk
    /// replay's form pins it, with the count.
    dead_newest: i64,
    csrf: String,
    pairs: Vec<(&'static str, String)>,
    rows: Vec<Row>,
    newer: Option<String>,
    older: Option<String>,
}

/// A step of an object's timeline.
struct Step {
    seq: i64,
    created: String,
    event_type: String,
    event_id: String,
    status: &'static str,
    received: String,
    handled: String,
    current: bool,
}

/// A row of an event's attempts table.
struct AttemptRow {
    attempt: u32,
    started: String,
    duration: String,
    outcome: &'static str,
    /// The error of a failed attempt, invisible characters spelled out.
    error: Option<String>,
}

impl AttemptRow {
    /// The row of `record`: its error cut to its first
    /// [`HISTORY_ERROR_LEN`] bytes as shown, with `…` when it was cut, as
    /// the crate's inboxes keep it; should an inbox of the app's own keep
    /// more, the page shows no more.
    fn new(record: &InboxAttemptRecord) -> Self {
        Self {
            attempt: record.attempt,
            started: view::time(record.started_at),
            duration: view::duration(record.duration),
            outcome: record.outcome.as_str(),
            error: record.outcome.error().map(|error| {
                let shown = view::lines_limited(error, HISTORY_ERROR_LEN);
                let cut = shown.is_cut();
                let mut text = shown.text;
                if cut {
                    text.push('…');
                }
                text
            }),
        }
    }

    /// The rows of an event's `history` (oldest first): its newest
    /// [`HISTORY_LEN`] attempts, as the crate's inboxes keep them, the
    /// newest last; an inbox of the app's own may keep more.
    fn of(history: &[InboxAttemptRecord]) -> Vec<Self> {
        let newest = &history[history.len().saturating_sub(HISTORY_LEN)..];
        newest.iter().map(Self::new).collect()
    }
}

/// The timeline of an event's object: the events about it nearest to the
/// event, and how many there are in all.
struct Timeline {
    /// The object, as shown.
    object: String,
    steps: Vec<Step>,
    /// How many events are about the object.
    total: u64,
    /// The events list filtered by the object.
    list: String,
}

#[derive(Template)]
#[template(path = "console/event.html")]
struct EventPage {
    frame: Frame,
    seq: i64,
    status: &'static str,
    notice: Option<String>,
    last_error: Option<String>,
    /// What the page says when it shows only the start of the last error.
    last_error_cut: Option<String>,
    can_replay: bool,
    /// Why the page offers no replay, when the console takes actions.
    no_replay: Option<&'static str>,
    /// The replays counted on the event, for the replay form's pin.
    replays: u32,
    /// When it was handled, in epoch milliseconds (empty if never), for
    /// the replay form's pin.
    handled_ms: String,
    csrf: String,
    envelope: Vec<(&'static str, String)>,
    history: Vec<(&'static str, String)>,
    attempts: Vec<AttemptRow>,
    body: String,
    /// What the page says when it shows only the start of the body.
    body_cut: Option<String>,
    timeline: Option<Timeline>,
}

#[derive(Template)]
#[template(path = "console/confirm.html")]
struct ConfirmPage {
    frame: Frame,
    seq: i64,
    event_type: String,
    event_id: String,
    handled: String,
    /// The replays counted on the event when it was shown, for the form.
    replays: u32,
    /// When it was handled, in epoch milliseconds (empty if never), for
    /// the form.
    handled_ms: String,
    /// Whether this asks again: the event changed since the confirmation
    /// that was sent.
    again: bool,
    csrf: String,
}

#[derive(Template)]
#[template(path = "console/message.html")]
struct MessagePage {
    frame: Frame,
    heading: &'static str,
    message: String,
}

#[derive(Template)]
#[template(path = "console/denied.html")]
struct DeniedPage;

/// `page` as an HTML response with `status`.
fn html(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            body,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(target: "clink_webhooks::console", error = %err, "console page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render\n",
            )
                .into_response()
        }
    }
}

/// The `401` answer: no inbox data, a hint at how to get in.
pub(super) fn denied() -> Response {
    let mut response = html(StatusCode::UNAUTHORIZED, &DeniedPage);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"clink console\""),
    );
    response
}

/// The `429` answer to a token while too many wrong ones came: nothing of
/// the inbox, and when to try again.
pub(super) fn too_many_wrong_tokens(retry_after_secs: u64) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::RETRY_AFTER, HeaderValue::from(retry_after_secs)),
        ],
        format!(
            "429 Too Many Requests: too many wrong tokens came; try again in \
             {retry_after_secs} s\n"
        ),
    )
        .into_response()
}

/// The `403` answer to a form another origin made the browser send
/// (`Sec-Fetch-Site: cross-site` or `same-site`): nothing done, nothing of
/// the inbox.
pub(super) fn cross_site() -> Response {
    (
        StatusCode::FORBIDDEN,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        "403 Forbidden: the console takes no form sent from another origin; open the \
         console and repeat the action from there\n",
    )
        .into_response()
}

/// The `500` answer to a page that panicked (an inbox of the app's own
/// that panicked as it was called): logged, its message kept out of the
/// page.
pub(super) fn panicked(panic: &str) -> Response {
    tracing::error!(
        target: "clink_webhooks::console",
        panic = ?panic,
        "console: a page panicked"
    );
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        "500 Internal Server Error: the page failed; the app's log says why\n",
    )
        .into_response()
}

/// A `?token=` on a request that is no page opened in the browser (an
/// image, a script or a fetch another page makes): not checked.
pub(super) fn token_not_from_a_page() -> Response {
    (
        StatusCode::FORBIDDEN,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        "403 Forbidden: a token in the address logs in only as a page opened in the browser, \
         typed, pasted or bookmarked, not from another site's link or page\n",
    )
        .into_response()
}

/// The page that says why the form of an action could not be read (a
/// field twice, a body that is not a form, one too large), with the status
/// that says so: not taken for a form without its CSRF token.
fn unreadable_form(shared: &Shared, ctx: &Ctx, rejection: &FormRejection) -> Response {
    message(
        shared,
        ctx,
        rejection.status(),
        "The form could not be read",
        rejection.body_text(),
    )
}

fn message(
    shared: &Shared, ctx: &Ctx, status: StatusCode, heading: &'static str, message: String,
) -> Response {
    html(
        status,
        &MessagePage {
            frame: Frame::new(shared, ctx, false),
            heading,
            message,
        },
    )
}

/// The `503` page for an inbox that failed or did not answer in time.
fn unavailable(shared: &Shared, ctx: &Ctx, error: &StoreError) -> Response {
    tracing::warn!(target: "clink_webhooks::console", error = %error, "console: the inbox did not answer");
    message(
        shared,
        ctx,
        StatusCode::SERVICE_UNAVAILABLE,
        "The inbox did not answer",
        format!("{error}. Try again in a moment."),
    )
}

/// The `503` page for a replay the inbox did not confirm: it failed, or
/// did not answer in time, and may have been applied all the same (a
/// store goes on with a write the console stopped waiting for).
fn unconfirmed(shared: &Shared, ctx: &Ctx, what: &str, error: &StoreError) -> Response {
    message(
        shared,
        ctx,
        StatusCode::SERVICE_UNAVAILABLE,
        "The replay may have been applied",
        format!(
            "{error}. The inbox did not confirm the {what}: it may have been applied, \
             in full or in part. Look at the events before trying again."
        ),
    )
}

/// What the log says of a replay the inbox did not confirm.
const UNCONFIRMED: &str = "not confirmed: may have been applied; look at the events before \
     trying again";

/// Runs one inbox call of the request until its deadline: with what is
/// left of the console's timeout after the calls before it.
async fn call<T>(
    ctx: &Ctx, future: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let deadline = ctx.deadline;
    // An inbox of the app's own that panics while it answers has failed:
    // the page says so, as for any failure.
    let future = async {
        crate::guard::CatchUnwind::new(future)
            .await
            .unwrap_or_else(|panic| {
                tracing::error!(
                    target: "clink_webhooks::console",
                    panic = ?panic,
                    "console: the inbox panicked"
                );
                Err(StoreError::new(
                    StoreErrorKind::Protocol,
                    "the inbox failed (it panicked; the app's log says why)",
                ))
            })
    };
    crate::guard::until(deadline.at, future)
        .await
        .unwrap_or_else(|()| {
            Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!(
                    "no answer within the {:?} the console gives a page",
                    deadline.timeout
                ),
            ))
        })
}

/// Whether a write (a replay) may start: at least a quarter of the
/// console's timeout is left of the request's deadline. A write begun with
/// less is likely cut off before the inbox confirms it, and then may have
/// been applied or not; one not begun was not.
fn time_for_a_write(ctx: &Ctx) -> bool {
    let deadline = ctx.deadline;
    deadline
        .at
        .saturating_duration_since(tokio::time::Instant::now())
        >= deadline.timeout / 4
}

/// What a replay not begun for want of time answers with.
fn no_time_for_a_write(ctx: &Ctx) -> StoreError {
    StoreError::new(
        StoreErrorKind::Timeout,
        format!(
            "the inbox's reads took most of the {:?} the console gives a page, too little \
             was left to replay: nothing was replayed",
            ctx.deadline.timeout
        ),
    )
}

/// The `400` page for a filter that could not be read.
fn bad_filter(shared: &Shared, ctx: &Ctx, what: &view::BadFilter) -> Response {
    message(
        shared,
        ctx,
        StatusCode::BAD_REQUEST,
        "That filter cannot be read",
        what.0.clone(),
    )
}

/// `GET /`: counts, the oldest unhandled event, the last hour, the dead.
pub(super) async fn overview(
    State(shared): State<Arc<Shared>>, Extension(ctx): Extension<Ctx>,
) -> Response {
    let now = Timestamp::now();
    let inbox = &shared.inbox;
    let dead = InboxFilter::default().status(InboxStatus::Dead);
    let done = InboxFilter::default().status(InboxStatus::Done);
    let since = Timestamp::from_millis(now.as_millis() - 59 * 60_000 - now.as_millis() % 60_000);
    let read = async {
        Ok::<_, StoreError>((
            call(&ctx, inbox.stats()).await?,
            call(&ctx, inbox.count(&done)).await?,
            call(&ctx, inbox.page_summaries(&dead, PageStart::Newest, 10)).await?,
            call(&ctx, inbox.activity(since, Duration::from_secs(60), 60)).await?,
        ))
    };
    let (stats, done_count, dead_rows, activity) = match read.await {
        Ok(read) => read,
        Err(err) => return unavailable(&shared, &ctx, &err),
    };
    let counts = vec![
        ("pending", stats.pending),
        ("retrying", stats.retrying),
        ("running", stats.running),
        ("dead", stats.dead),
        ("done", done_count),
    ];
    let oldest = stats.oldest_unhandled.map_or_else(
        || "none: every event is handled or dead".to_owned(),
        |at| format!("{} (received {})", view::ago(at, now), view::time(at)),
    );
    html(
        StatusCode::OK,
        &OverviewPage {
            frame: Frame::new(&shared, &ctx, true),
            rows: dead_rows.iter().map(|e| Row::new(e, now)).collect(),
            dead_total: stats.dead,
            counts,
            oldest,
            chart: view::chart(&activity),
            received_total: activity.received.iter().sum(),
            handled_total: activity.handled.iter().sum(),
        },
    )
}

/// What an action's notice says, from the fixed words its redirect carries.
fn notice(query: &Query) -> Option<String> {
    let count: u64 = query.count.parse().unwrap_or(0);
    match query.done.as_str() {
        "replayed" => Some("Replayed: the event is pending again.".to_owned()),
        "running" => Some("A worker holds this event now; it was left alone.".to_owned()),
        "changed" => Some(
            "The event changed since the page that asked for its replay showed it \
             (replayed, handled or failed since): it was left as it is, and is shown here \
             as it is now."
                .to_owned(),
        ),
        "replayed-dead" => Some(format!(
            "Replayed {count} dead event{}: pending again.",
            if count == 1 { "" } else { "s" }
        )),
        "dead-changed" => Some(
            "The dead events matching this filter changed since the page that asked for \
             their replay was shown (more of them, or newer ones): nothing was replayed. \
             Here they are now; replay them from this page if you still mean to."
                .to_owned(),
        ),
        _ => None,
    }
}

/// `GET /events`: the filtered list, newest first, a page at a time.
pub(super) async fn events(
    State(shared): State<Arc<Shared>>, Extension(ctx): Extension<Ctx>,
    query: Result<QueryString<Query>, QueryRejection>,
) -> Response {
    let Ok(QueryString(query)) = query else {
        return bad_filter(
            &shared,
            &ctx,
            &view::BadFilter("the query string cannot be read".to_owned()),
        );
    };
    let (filter, start) = match (query.filter(), query.start()) {
        (Ok(filter), Ok(start)) => (filter, start),
        (Err(err), _) | (_, Err(err)) => return bad_filter(&shared, &ctx, &err),
    };
    let now = Timestamp::now();
    let size = shared.page_size;
    let inbox = &shared.inbox;
    let dead_filter =
        (filter.status.is_none() || filter.status == Some(InboxStatus::Dead)).then(|| {
            InboxFilter {
                status: Some(InboxStatus::Dead),
                ..filter.clone()
            }
        });
    let read = async {
        // Summaries: a row shows no body, and only the start of the error.
        let mut page = call(&ctx, inbox.page_summaries(&filter, start, size + 1)).await?;
        let more = page.len() > size;
        if more {
            // The extra event is the one past the page, on the side it ran to.
            if matches!(start, PageStart::After(_)) {
                page.remove(0);
            } else {
                page.pop();
            }
        }
        let (newer, older) = match (start, page.first(), page.last()) {
            (_, None, _) | (_, _, None) => (false, false),
            (PageStart::Newest, _, _) => (false, more),
            (PageStart::Before(_), Some(first), _) => (
                !call(
                    &ctx,
                    inbox.page_summaries(&filter, PageStart::After(first.seq), 1),
                )
                .await?
                .is_empty(),
                more,
            ),
            (PageStart::After(_), _, Some(last)) => (
                more,
                !call(
                    &ctx,
                    inbox.page_summaries(&filter, PageStart::Before(last.seq), 1),
                )
                .await?
                .is_empty(),
            ),
        };
        let matching = call(&ctx, inbox.count(&filter)).await?;
        let (dead_matching, dead_newest) = match &dead_filter {
            Some(dead) if !shared.read_only => {
                // The newest before the count: an event newer than it
                // that dies between the two is counted, and the replay
                // asks again; one that dies later is past the bound the
                // replay's own statement holds to, and stays dead. Events
                // die in any order, though: one older than the pin that
                // dies after the page, while as many others leave the dead
                // (replayed or purged), keeps the count, is within the
                // bound, and is replayed with the rest.
                let newest = call(&ctx, inbox.page_summaries(dead, PageStart::Newest, 1))
                    .await?
                    .first()
                    .map_or(0, |e| e.seq);
                (call(&ctx, inbox.count(dead)).await?, newest)
            }
            _ => (0, 0),
        };
        Ok::<_, StoreError>((page, newer, older, matching, dead_matching, dead_newest))
    };
    let (page, newer, older, matching, dead_matching, dead_newest) = match read.await {
        Ok(read) => read,
        Err(err) => return unavailable(&shared, &ctx, &err),
    };
    let link = |side: &str, seq: i64| {
        format!(
            "{}/events{}",
            ctx.base,
            query.query_string(&[(side, seq.to_string())])
        )
    };
    let newer = newer.then(|| link("after", page[0].seq));
    let older = older.then(|| link("before", page[page.len() - 1].seq));
    let problem = page.is_empty().then(|| match start {
        PageStart::Newest => "No event matches.".to_owned(),
        _ => "No more events on this side.".to_owned(),
    });
    html(
        StatusCode::OK,
        &EventsPage {
            frame: Frame::new(&shared, &ctx, matches!(start, PageStart::Newest)),
            statuses: STATUSES
                .iter()
                .map(|s| (s.as_str(), filter.status == Some(*s)))
                .collect(),
            notice: notice(&query),
            problem,
            matching,
            dead_matching,
            dead_newest,
            csrf: shared.keys.csrf(&ctx.who),
            pairs: query.filter_pairs(),
            rows: page.iter().map(|e| Row::new(e, now)).collect(),
            newer,
            older,
            query,
        },
    )
}

fn parse_seq(text: &str) -> Option<i64> {
    text.parse().ok().filter(|seq| *seq > 0)
}

fn missing(shared: &Shared, ctx: &Ctx) -> Response {
    message(
        shared,
        ctx,
        StatusCode::NOT_FOUND,
        "No such event",
        "The inbox has no event with that number (purged, or never kept).".to_owned(),
    )
}

/// The timeline of `entry`'s object, if it has one: at most
/// [`TIMELINE_LEN`] events about it, those that arrived nearest to it
/// (`entry` among them), in `created` order, and how many there are. It
/// reads their summaries, never their bodies.
async fn timeline(
    shared: &Shared, ctx: &Ctx, entry: &InboxEntry,
) -> Result<Option<Timeline>, StoreError> {
    let Some(object) = &entry.event.object_key else {
        return Ok(None);
    };
    let inbox = &shared.inbox;
    let filter = InboxFilter::default().object_key(object.clone());
    let total = call(ctx, inbox.count(&filter)).await?;
    // Up to half after the event, the rest before it (the event itself
    // the newest of those); what one side lacks, the other fills. Each
    // read is cut to what was asked, should an inbox of the app's own
    // return more.
    let half = TIMELINE_LEN / 2;
    let mut newer = call(
        ctx,
        inbox.page_summaries(&filter, PageStart::After(entry.seq), half),
    )
    .await?;
    keep_nearest_after(&mut newer, half);
    let mut older = call(
        ctx,
        inbox.page_summaries(
            &filter,
            PageStart::Before(entry.seq.saturating_add(1)),
            TIMELINE_LEN.saturating_sub(newer.len()),
        ),
    )
    .await?;
    older.truncate(TIMELINE_LEN.saturating_sub(newer.len()));
    let room = TIMELINE_LEN.saturating_sub(newer.len() + older.len());
    if room > 0 && newer.len() == half {
        let newest = newer.iter().map(|e| e.seq).max().unwrap_or(entry.seq);
        let mut more = call(
            ctx,
            inbox.page_summaries(&filter, PageStart::After(newest), room),
        )
        .await?;
        keep_nearest_after(&mut more, room);
        newer.append(&mut more);
    }
    let mut events = older;
    events.append(&mut newer);
    if !events.iter().any(|e| e.seq == entry.seq) {
        events.push(InboxSummary::from(entry));
    }
    let key = |e: &InboxSummary| {
        (
            e.created.unwrap_or(e.received_at),
            e.event_id.clone(),
            e.seq,
        )
    };
    events.sort_by_cached_key(key);
    let steps: Vec<Step> = events
        .iter()
        .map(|e| Step {
            seq: e.seq,
            created: e.created.map_or_else(
                || format!("{} (received)", view::time(e.received_at)),
                view::time,
            ),
            event_type: view::shown(&e.event_type),
            event_id: view::shown(&e.event_id),
            status: e.status.as_str(),
            received: view::time(e.received_at),
            handled: e.handled_at.map(view::time).unwrap_or_default(),
            current: e.seq == entry.seq,
        })
        .collect();
    Ok(Some(Timeline {
        object: view::shown(object),
        total: total.max(steps.len() as u64),
        steps,
        list: format!(
            "{}/events{}",
            ctx.base,
            view::query_string(&[("object", object.clone())])
        ),
    }))
}

/// Cuts a page read after an event (newest first, so the nearest to the
/// event last) to the `limit` nearest.
fn keep_nearest_after(page: &mut Vec<InboxSummary>, limit: usize) {
    let extra = page.len().saturating_sub(limit);
    page.drain(..extra);
}

/// What the page says when it shows only the start of a body or an error
/// (`how` it shows it, after the count of bytes).
fn cut_note(what: &str, how: &str, shown: &view::Shown, seq: i64) -> Option<String> {
    shown.is_cut().then(|| {
        format!(
            "Cut: the {what} is {} bytes long; the page shows its first {} bytes{how}. \
             To see all of it: clink-webhook inbox --sqlite FILE show {seq} --json \
             (or --postgres) prints the event whole, the {what} included.",
            view::thousands(shown.source_len),
            view::thousands(shown.source_shown),
        )
    })
}

/// `GET /events/{seq}`: one event, its history and its object's timeline.
pub(super) async fn event(
    State(shared): State<Arc<Shared>>, Extension(ctx): Extension<Ctx>, Path(seq): Path<String>,
    query: Result<QueryString<Query>, QueryRejection>,
) -> Response {
    let Some(seq) = parse_seq(&seq) else {
        return missing(&shared, &ctx);
    };
    let now = Timestamp::now();
    let inbox = &shared.inbox;
    let entry = match call(&ctx, inbox.get(seq)).await {
        Ok(Some(entry)) => entry,
        Ok(None) => return missing(&shared, &ctx),
        Err(err) => return unavailable(&shared, &ctx, &err),
    };
    let timeline = match timeline(&shared, &ctx, &entry).await {
        Ok(timeline) => timeline,
        Err(err) => return unavailable(&shared, &ctx, &err),
    };
    let event = &entry.event;
    let or_none = |value: Option<&str>| value.map_or_else(|| "(none)".to_owned(), view::shown);
    let when = |at: Option<Timestamp>| {
        at.map_or_else(
            || "never".to_owned(),
            |at| format!("{} ({})", view::time(at), view::ago(at, now)),
        )
    };
    let envelope = vec![
        ("event id", view::shown(&event.event_id)),
        ("type", view::shown(&event.event_type)),
        ("account", or_none(event.account.as_deref())),
        ("object", or_none(event.object_key.as_deref())),
        (
            "created",
            event
                .created
                .map_or_else(|| "(not in the envelope)".to_owned(), view::time),
        ),
        ("signed at", view::time(event.signed_at)),
        ("received at", when(Some(event.received_at))),
        ("signing key", or_none(event.signing_key.as_deref())),
        ("body size", format!("{} bytes", event.body.len())),
    ];
    let history = vec![
        ("status", entry.status.as_str().to_owned()),
        ("attempts", entry.attempts.to_string()),
        (
            "next attempt",
            if matches!(entry.status, InboxStatus::Pending | InboxStatus::Retrying) {
                when(Some(entry.next_attempt_at))
            } else {
                "(none)".to_owned()
            },
        ),
        ("handled at", when(entry.handled_at)),
        ("replays", entry.replays.to_string()),
        ("last replayed at", when(entry.last_replayed_at)),
    ];
    let query = query.map(|q| q.0).unwrap_or_default();
    let last_error = entry
        .last_error
        .as_deref()
        .map(|error| view::lines_limited(error, view::ERROR_SHOWN));
    let body = view::pretty_body(&event.body);
    html(
        StatusCode::OK,
        &EventPage {
            frame: Frame::new(&shared, &ctx, false),
            seq,
            status: entry.status.as_str(),
            notice: notice(&query),
            last_error_cut: last_error
                .as_ref()
                .and_then(|error| cut_note("error", "", error, seq)),
            last_error: last_error.map(|error| error.text),
            can_replay: !shared.read_only && replayable(entry.status),
            no_replay: (!shared.read_only)
                .then(|| no_replay(entry.status))
                .flatten(),
            replays: entry.replays,
            handled_ms: handled_mark(&entry),
            csrf: shared.keys.csrf(&ctx.who),
            envelope,
            history,
            attempts: AttemptRow::of(&entry.history),
            body_cut: cut_note(
                "body",
                &format!(
                    ", indented (at most {} KiB of text)",
                    view::BODY_SHOWN / 1024
                ),
                &body,
                seq,
            ),
            body: body.text,
            timeline,
        },
    )
}

/// `POST /logout`: ends the session of the request (a read-only console's
/// too): its cookie is cleared, and refused by this process until it
/// would have expired. The token and the bearer header are not sessions,
/// and log nothing out.
pub(super) async fn logout(
    State(shared): State<Arc<Shared>>, Extension(ctx): Extension<Ctx>,
    form: Result<Form<Query>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(form) => form.0,
        Err(rejection) => return unreadable_form(&shared, &ctx, &rejection),
    };
    let super::auth::Who::Session(nonce) = &ctx.who else {
        return message(
            &shared,
            &ctx,
            StatusCode::BAD_REQUEST,
            "No session to log out of",
            "Only a session opened with the token in the address ends here.".to_owned(),
        );
    };
    if let Some(refused) = refuse_without_csrf(&shared, &ctx, &form) {
        return refused;
    }
    shared.log_out(nonce, Timestamp::now());
    tracing::info!(target: "clink_webhooks::console", "console: a session logged out");
    let path = if ctx.base.is_empty() { "/" } else { &ctx.base };
    let cleared = format!(
        "{}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict{}",
        super::auth::SESSION_COOKIE,
        if shared.secure_cookie { "; Secure" } else { "" }
    );
    let home = if ctx.base.is_empty() {
        "/".to_owned()
    } else {
        ctx.base.clone()
    };
    let mut response = see_other(home);
    if let Ok(cleared) = HeaderValue::try_from(cleared) {
        response.headers_mut().insert(header::SET_COOKIE, cleared);
    }
    response
}

/// Refuses an action unless the console takes them and the form carries
/// the request's CSRF token.
fn refuse_action(shared: &Shared, ctx: &Ctx, form: &Query) -> Option<Response> {
    refuse_read_only(shared, ctx).or_else(|| refuse_without_csrf(shared, ctx, form))
}

/// Refuses any action of a read-only console (`403`).
fn refuse_read_only(shared: &Shared, ctx: &Ctx) -> Option<Response> {
    shared.read_only.then(|| {
        message(
            shared,
            ctx,
            StatusCode::FORBIDDEN,
            "This console is read-only",
            "It shows the inbox and changes nothing.".to_owned(),
        )
    })
}

/// Refuses a form without the request's CSRF token.
fn refuse_without_csrf(shared: &Shared, ctx: &Ctx, form: &Query) -> Option<Response> {
    if !shared.keys.is_csrf(&ctx.who, &form.csrf) {
        tracing::warn!(
            target: "clink_webhooks::console",
            via = ctx.who.via(),
            "console: an action without its CSRF token was refused"
        );
        return Some(message(
            shared,
            ctx,
            StatusCode::FORBIDDEN,
            "Refused: the form's CSRF token is missing or wrong",
            "Open the page again and repeat the action from there.".to_owned(),
        ));
    }
    None
}

fn see_other(location: String) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

/// When an event was handled, as a confirmation form carries it: epoch
/// milliseconds, or empty for never.
fn handled_mark(entry: &InboxEntry) -> String {
    entry
        .handled_at
        .map(|at| at.as_millis().to_string())
        .unwrap_or_default()
}

/// Logs a replay of `entry` asked for, before it runs: a replay the
/// request is dropped in (its client gone) or that the inbox does not
/// confirm may be applied all the same.
fn log_replay_asked(ctx: &Ctx, entry: &InboxEntry, force: bool) {
    let seq = entry.seq;
    tracing::info!(
        target: "clink_webhooks::console",
        action = "replay",
        seq,
        event_id = ?entry.event.event_id,
        event_type = ?entry.event.event_type,
        status_before = entry.status.as_str(),
        replays_before = entry.replays,
        force,
        via = ctx.who.via(),
        "console: replay of event {seq} asked for"
    );
}

/// Logs a replay of `entry` the inbox did not confirm.
fn log_replay_unconfirmed(ctx: &Ctx, entry: &InboxEntry, force: bool, error: &StoreError) {
    let seq = entry.seq;
    tracing::warn!(
        target: "clink_webhooks::console",
        action = "replay",
        seq,
        event_id = ?entry.event.event_id,
        force,
        outcome = UNCONFIRMED,
        error = %error,
        via = ctx.who.via(),
        "console: replay of event {seq}: {UNCONFIRMED}"
    );
}

/// Logs what a replay of `entry` did.
fn log_replay(ctx: &Ctx, entry: &InboxEntry, force: bool, outcome: &str) {
    let seq = entry.seq;
    tracing::info!(
        target: "clink_webhooks::console",
        action = "replay",
        seq,
        event_id = ?entry.event.event_id,
        event_type = ?entry.event.event_type,
        status_before = entry.status.as_str(),
        replays_before = entry.replays,
        force,
        outcome,
        via = ctx.who.via(),
        "console: replay of event {seq}: {outcome}"
    );
}

/// The page that asks to confirm the replay of `entry`, handled `at`; its
/// form carries the replays and the handling it shows. `again` when it
/// asks again.
fn confirm(
    shared: &Shared, ctx: &Ctx, entry: &InboxEntry, at: Option<Timestamp>, again: bool,
) -> Response {
    html(
        StatusCode::OK,
        &ConfirmPage {
            frame: Frame::new(shared, ctx, false),
            seq: entry.seq,
            event_type: view::shown(&entry.event.event_type),
            event_id: view::shown(&entry.event.event_id),
            handled: at.map_or_else(
                || "before".to_owned(),
                |at| format!("at {}", view::time(at)),
            ),
            replays: entry.replays,
            handled_ms: handled_mark(entry),
            again,
            csrf: shared.keys.csrf(&ctx.who),
        },
    )
}

/// Whether the console replays an event with `status`: a dead one, and a
/// handled one after a confirmation. A pending or retrying event runs on
/// its own (a replay would only reset its attempts and skip its backoff),
/// and a running one is a worker's.
fn replayable(status: InboxStatus) -> bool {
    matches!(status, InboxStatus::Dead | InboxStatus::Done)
}

/// Why an event's page offers no replay.
fn no_replay(status: InboxStatus) -> Option<&'static str> {
    match status {
        InboxStatus::Pending => Some(
            "Pending: a worker runs it on its own. The console replays dead events, \
             and handled ones.",
        ),
        InboxStatus::Retrying => Some(
            "Retrying: a worker runs it again at its next attempt, and it is dead if \
             that was its last. The console replays dead events, and handled ones.",
        ),
        InboxStatus::Running => Some("Running: a worker holds it now."),
        InboxStatus::Dead | InboxStatus::Done => None,
    }
}

/// The state a replay form pins: the event as its page showed it (its
/// status, its replays, and when it was handled); the confirmation's form
/// (`force=yes`) pins a handled event. `None` when the form does not say,
/// or not as the pages write it.
fn pinned(form: &Query) -> Option<ReplayPin> {
    let status = match (form.force == "yes", form.status.as_str()) {
        (true, "" | "done") => InboxStatus::Done,
        (true, _) => return None,
        (false, status) => InboxStatus::parse(status)?,
    };
    // Only the numbers as the page writes them (`7`, not `+7` or `007`).
    let replays: u32 = form.replays.parse().ok()?;
    if replays.to_string() != form.replays {
        return None;
    }
    let handled = match form.handled.as_str() {
        "" => None,
        millis => {
            let parsed: i64 = millis.parse().ok()?;
            if parsed.to_string() != millis {
                return None;
            }
            Some(Timestamp::from_millis(parsed))
        }
    };
    Some(ReplayPin::new(status, replays, handled))
}

/// `POST /events/{seq}/replay`: replays one event, only while it is as the
/// page the form came from showed it (its status, replays and handling),
/// checked in the same step as the replay
/// ([`Inbox::replay_if`](crate::store::Inbox::replay_if)): sent from a
/// page that no longer shows the event as it is, or sent twice, it leaves
/// the event as it is and shows it as it is now. A dead event is replayed
/// at once; a handled one only with `force=yes`, after the confirmation
/// page, whose form pins the event as that page showed it: sent again once
/// the event was replayed and handled anew, it asks again. Pending,
/// retrying and running events are not replayed here.
pub(super) async fn replay(
    State(shared): State<Arc<Shared>>, Extension(ctx): Extension<Ctx>, Path(seq): Path<String>,
    form: Result<Form<Query>, FormRejection>,
) -> Response {
    // A read-only console refuses every action, readable or not.
    if let Some(refused) = refuse_read_only(&shared, &ctx) {
        return refused;
    }
    let form = match form {
        Ok(form) => form.0,
        Err(rejection) => return unreadable_form(&shared, &ctx, &rejection),
    };
    if let Some(refused) = refuse_action(&shared, &ctx, &form) {
        return refused;
    }
    let Some(seq) = parse_seq(&seq) else {
        return missing(&shared, &ctx);
    };
    let force = form.force == "yes";
    let inbox = &shared.inbox;
    let entry = match call(&ctx, inbox.get(seq)).await {
        Ok(Some(entry)) => entry,
        Ok(None) => return missing(&shared, &ctx),
        Err(err) => return unavailable(&shared, &ctx, &err),
    };
    let page = format!("{}/events/{seq}", ctx.base);
    let changed = || see_other(format!("{page}?done=changed"));
    log_replay_asked(&ctx, &entry, force);
    let Some(pin) = pinned(&form) else {
        // A form that does not say what it was shown for replays nothing.
        return if force && entry.status == InboxStatus::Done {
            log_replay(
                &ctx,
                &entry,
                force,
                "asked to confirm again: the form did not carry the state shown",
            );
            confirm(&shared, &ctx, &entry, entry.handled_at, true)
        } else {
            log_replay(
                &ctx,
                &entry,
                force,
                "left alone: the form did not carry the state shown",
            );
            changed()
        };
    };
    if !replayable(pin.status) {
        log_replay(
            &ctx,
            &entry,
            force,
            "refused: only dead and handled events are replayed",
        );
        return message(
            &shared,
            &ctx,
            StatusCode::BAD_REQUEST,
            "Not replayed",
            "The console replays dead events, and handled ones after a confirmation: \
             a pending or retrying event runs on its own, and a running one is a worker's."
                .to_owned(),
        );
    }
    if pin.status == InboxStatus::Done && !force {
        // The Replay of a handled event's page asks to confirm first, for
        // the event as it is now: that page pins what it shows, and a page
        // from before the event was replayed and handled again says so.
        return if entry.status == InboxStatus::Done {
            let again = !pin.holds_for(&entry);
            log_replay(&ctx, &entry, force, "asked to confirm");
            confirm(&shared, &ctx, &entry, entry.handled_at, again)
        } else {
            log_replay(&ctx, &entry, force, "left alone: changed since the page");
            changed()
        };
    }
    if !time_for_a_write(&ctx) {
        log_replay(
            &ctx,
            &entry,
            force,
            "nothing replayed: too little time left",
        );
        return unavailable(&shared, &ctx, &no_time_for_a_write(&ctx));
    }
    let replayed = match call(&ctx, inbox.replay_if(seq, &pin)).await {
        Ok(replayed) => replayed,
        Err(err) => {
            log_replay_unconfirmed(&ctx, &entry, force, &err);
            return unconfirmed(&shared, &ctx, "replay of the event", &err);
        }
    };
    match replayed {
        Replayed::Replayed => {
            log_replay(&ctx, &entry, force, "replayed");
            see_other(format!("{page}?done=replayed"))
        }
        Replayed::Running => {
            log_replay(&ctx, &entry, force, "left alone: running");
            see_other(format!("{page}?done=running"))
        }
        Replayed::Missing => {
            log_replay(&ctx, &entry, force, "missing");
            missing(&shared, &ctx)
        }
        Replayed::Changed | Replayed::Handled { .. } => {
            // Shown as it is now, not as it was read before the replay.
            let now = match call(&ctx, inbox.get(seq)).await {
                Ok(Some(now)) => now,
                Ok(None) => return missing(&shared, &ctx),
                Err(err) => return unavailable(&shared, &ctx, &err),
            };
            if force && now.status == InboxStatus::Done {
                log_replay(&ctx, &now, force, "asked to confirm again: handled since");
                confirm(&shared, &ctx, &now, now.handled_at, true)
            } else {
                log_replay(&ctx, &now, force, "left alone: changed since the page");
                changed()
            }
        }
    }
}

/// The dead events a bulk replay's form pins: the newest the page counted,
/// and how many; `None` when the form does not say, or not as the page
/// writes them.
fn dead_pinned(form: &Query) -> Option<(i64, u64)> {
    let newest: i64 = form.upto.parse().ok().filter(|seq| *seq > 0)?;
    let shown: u64 = form.shown.parse().ok()?;
    (newest.to_string() == form.upto && shown.to_string() == form.shown).then_some((newest, shown))
}

/// `POST /events/replay-dead`: replays every dead event the form's filter
/// matches, if they are the dead events the page counted: none newer than
/// the newest it counted, and no more than it counted; and replays none
/// numbered past that newest, whenever it died. Logged before the replay,
/// and again with its outcome.
pub(super) async fn replay_dead(
    State(shared): State<Arc<Shared>>, Extension(ctx): Extension<Ctx>,
    form: Result<Form<Query>, FormRejection>,
) -> Response {
    // A read-only console refuses every action, readable or not.
    if let Some(refused) = refuse_read_only(&shared, &ctx) {
        return refused;
    }
    let form = match form {
        Ok(form) => form.0,
        Err(rejection) => return unreadable_form(&shared, &ctx, &rejection),
    };
    if let Some(refused) = refuse_action(&shared, &ctx, &form) {
        return refused;
    }
    let mut filter = match form.filter() {
        Ok(filter) => filter,
        Err(err) => return bad_filter(&shared, &ctx, &err),
    };
    if filter.status.is_some_and(|s| s != InboxStatus::Dead) {
        return bad_filter(
            &shared,
            &ctx,
            &view::BadFilter("only dead events are replayed together".to_owned()),
        );
    }
    filter.status = Some(InboxStatus::Dead);
    let pin = dead_pinned(&form);
    let (up_to, shown) = pin.unzip();
    tracing::info!(
        target: "clink_webhooks::console",
        action = "replay-dead",
        filter = ?filter,
        up_to,
        shown,
        via = ctx.who.via(),
        "console: replay of the dead events matching a filter asked for"
    );
    let log_outcome = |outcome: &str| {
        tracing::info!(
            target: "clink_webhooks::console",
            action = "replay-dead",
            filter = ?filter,
            up_to,
            shown,
            outcome,
            via = ctx.who.via(),
            "console: replay of the dead events matching a filter: {outcome}"
        );
    };
    let mut back = form.clone();
    back.status = String::new();
    // The events as they are now, and the form to replay them again.
    let changed = || {
        let mut dead = back.clone();
        dead.status = InboxStatus::Dead.as_str().to_owned();
        see_other(format!(
            "{}/events{}",
            ctx.base,
            dead.query_string(&[("done", "dead-changed".to_owned())])
        ))
    };
    let Some((newest, shown)) = pin else {
        log_outcome("left alone: the form did not carry the dead events shown");
        return changed();
    };
    // Checked before the replay, not in its step: what changed since the
    // page, so that the person sees the dead events again. The replay then
    // holds to the newest shown in its own statement (below).
    let inbox = &shared.inbox;
    let check = async {
        let newer = call(
            &ctx,
            inbox.page_summaries(&filter, PageStart::After(newest), 1),
        )
        .await?;
        let count = call(&ctx, inbox.count(&filter)).await?;
        Ok::<_, StoreError>(newer.is_empty() && count <= shown)
    };
    match check.await {
        Ok(true) => {}
        Ok(false) => {
            log_outcome("left alone: the dead events changed since the page");
            return changed();
        }
        Err(err) => {
            log_outcome("nothing replayed: the inbox did not answer the check");
            return unavailable(&shared, &ctx, &err);
        }
    }
    if !time_for_a_write(&ctx) {
        log_outcome("nothing replayed: too little time left");
        return unavailable(&shared, &ctx, &no_time_for_a_write(&ctx));
    }
    // Bounded by the newest shown, in the replay's own step in the crate's
    // inboxes: an event that dies newer than it after the check stays
    // dead. An older one that dies after the page, while as many others
    // leave the dead, passes the count and is within the bound: it is
    // replayed.
    let pinned = filter.clone().seq_through(newest);
    let seqs = match call(&ctx, inbox.replay_matching(&pinned, false)).await {
        Ok(seqs) => seqs,
        Err(err) => {
            tracing::warn!(
                target: "clink_webhooks::console",
                action = "replay-dead",
                filter = ?filter,
                up_to,
                shown,
                outcome = UNCONFIRMED,
                error = %err,
                via = ctx.who.via(),
                "console: replay of the dead events matching a filter: {UNCONFIRMED}"
            );
            return unconfirmed(&shared, &ctx, "replay of the dead events", &err);
        }
    };
    // An inbox of the app's own that does not apply the bound replays
    // newer events too: said, as the crate's inboxes never do it.
    let past_shown = seqs.iter().filter(|seq| **seq > newest).count();
    if past_shown > 0 {
        tracing::warn!(
            target: "clink_webhooks::console",
            action = "replay-dead",
            filter = ?filter,
            up_to,
            shown,
            past_shown,
            via = ctx.who.via(),
            "console: the inbox replayed {past_shown} dead events numbered past the newest shown: \
             it does not apply InboxFilter::seq_through"
        );
    }
    // The count, and a few numbers to find them by: never the whole list,
    // which can run to hundreds of thousands.
    tracing::info!(
        target: "clink_webhooks::console",
        action = "replay-dead",
        filter = ?filter,
        up_to,
        shown,
        outcome = "replayed",
        replayed = seqs.len(),
        first_seqs = ?&seqs[..seqs.len().min(LOGGED_SEQS)],
        last_seq = ?seqs.last(),
        via = ctx.who.via(),
        "console: replayed {} dead events",
        seqs.len()
    );
    see_other(format!(
        "{}/events{}",
        ctx.base,
        back.query_string(&[
            ("done", "replayed-dead".to_owned()),
            ("count", seqs.len().to_string())
        ])
    ))
}

/// `GET /assets/console.css`.
pub(super) async fn stylesheet() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/css; charset=utf-8"),
        )],
        STYLESHEET,
    )
        .into_response()
}

/// `GET /assets/console.js`.
pub(super) async fn script() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        SCRIPT,
    )
        .into_response()
}

/// Any other path: `404`, with nothing of the inbox.
pub(super) async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        "not found\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::auth::Who;
    use crate::console::Deadline;
    use crate::store::InboxAttemptOutcome;

    /// The message of a replay not begun for want of time reads as one
    /// sentence: no run of spaces from the line it is written on.
    #[test]
    fn the_no_time_message_has_no_run_of_spaces() {
        let ctx = Ctx {
            who: Who::Bearer,
            base: String::new(),
            deadline: Deadline::starting_now(Duration::from_secs(5)),
        };
        let message = no_time_for_a_write(&ctx).to_string();
        assert!(
            message.contains("too little was left to replay"),
            "{message}"
        );
        assert!(!message.contains("  "), "{message}");
    }

    /// An inbox of the app's own that keeps more attempts, or longer
    /// errors, than the crate's: the page shows the newest 20, the newest
    /// last, each error cut to 2 KiB with `…`.
    #[test]
    fn the_attempts_shown_are_the_newest_20_each_error_bounded() {
        let history: Vec<InboxAttemptRecord> = (1..=50u32)
            .map(|n| {
                InboxAttemptRecord::new(
                    n,
                    Timestamp::from_millis(i64::from(n) * 1_000),
                    Duration::from_millis(5),
                    InboxAttemptOutcome::Failed {
                        error: format!("attempt {n}: {}", "é".repeat(100_000)),
                    },
                )
            })
            .collect();
        let rows = AttemptRow::of(&history);
        assert_eq!(rows.len(), HISTORY_LEN);
        let numbers: Vec<u32> = rows.iter().map(|row| row.attempt).collect();
        assert_eq!(numbers, (31..=50).collect::<Vec<_>>());
        for row in &rows {
            let error = row.error.as_deref().unwrap();
            assert!(
                error.len() <= HISTORY_ERROR_LEN + '…'.len_utf8(),
                "{} bytes",
                error.len()
            );
            assert!(error.starts_with(&format!("attempt {}: é", row.attempt)));
            assert!(error.ends_with('…'));
        }
        // A short error, and fewer attempts, whole.
        let short = [InboxAttemptRecord::new(
            1,
            Timestamp::from_millis(0),
            Duration::ZERO,
            InboxAttemptOutcome::Failed {
                error: "no\nway".to_owned(),
            },
        )];
        let rows = AttemptRow::of(&short);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].error.as_deref(), Some("no\nway"));
    }
}
