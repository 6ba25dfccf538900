//! The inbox console (feature `console`) over HTTP: every page's status,
//! content type and security headers; who gets in; the CSRF token on every
//! action; escaping; paging; and the browsing calls it makes of every
//! backend (`page`, `count`, `activity`), with 10,000 events in SQLite and
//! PostgreSQL answering within the store's timeout. Most tests call the
//! router in process; those about what an event page holds at most, and
//! about the actions' confirmations and logs, serve it on a loopback port
//! and send real requests (`over_http`).
//!
//! `console_browser.rs` drives the same pages in a real browser.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use clink_webhooks::console::{Console, CONTENT_SECURITY_POLICY};
use clink_webhooks::store::{
    Inbox, InboxEntry, InboxFilter, InboxStatus, InboxSummary, MemoryInbox, NewEvent, PageStart,
    ReplayPin, Replayed, Settle, StoreError, StoreErrorKind, SUMMARY_ERROR_CHARS,
};
use clink_webhooks::BoxFuture;
use clink_webhooks::Timestamp;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

use crate::support::inbox_delegate::delegate_inbox;
use crate::support::loopback;
use crate::support::process::PATIENCE;

const TOKEN: &str = "console-test-token-0123456789";

fn unique() -> String {
    clink_webhooks::store::LeaseToken::generate().as_str()[..12].to_owned()
}

/// An event received `received_ms`, created `created_ms`, about `object`.
fn event(
    id: &str, event_type: &str, account: Option<&str>, object: Option<&str>, created_ms: i64,
    received_ms: i64,
) -> NewEvent {
    let body = serde_json::json!({
        "id": id,
        "type": event_type,
        "created": created_ms,
        "data": {"orderId": object.unwrap_or("none"), "amount": "1.10"},
    })
    .to_string();
    NewEvent::new(
        account.map(str::to_owned),
        id.to_owned(),
        event_type.to_owned(),
        Some(Timestamp::from_millis(created_ms)),
        object.map(str::to_owned),
        Timestamp::from_millis(received_ms),
        Timestamp::from_millis(received_ms),
        Bytes::from(body),
    )
}

/// What a request got back.
struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field in {}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    /// The value of the first form field named `name`.
    fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let at = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no field {name} in {}", self.body));
        let rest = &self.body[at + marker.len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    /// The form of the first `form.action`, its fields as a form body.
    fn action_form(&self) -> String {
        let start = self
            .body
            .find("<form class=\"action\"")
            .unwrap_or_else(|| panic!("no action form in {}", self.body));
        let form = &self.body[start..];
        let form = &form[..form.find("</form>").unwrap()];
        form.match_indices("<input type=\"hidden\" name=\"")
            .map(|(at, m)| {
                let rest = &form[at + m.len()..];
                let name = &rest[..rest.find('"').unwrap()];
                let rest = &rest[rest.find("value=\"").unwrap() + "value=\"".len()..];
                format!("{name}={}", &rest[..rest.find('"').unwrap()])
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The `href` of the link whose text is `text`.
    fn link(&self, text: &str) -> Option<String> {
        let end = self.body.find(&format!("\">{text}</a>"))?;
        let start = self.body[..end].rfind("href=\"")? + "href=\"".len();
        Some(
            self.body[start..end]
                .replace("&#38;", "&")
                .replace("&amp;", "&"),
        )
    }
}

/// Sends `method path` with `headers` and, for a form, `form`.
async fn send(
    app: &Router, method: &str, path: &str, headers: &[(&str, &str)], form: Option<&str>,
) -> Page {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = match form {
        Some(form) => {
            request = request.header("content-type", "application/x-www-form-urlencoded");
            Body::from(form.to_owned())
        }
        None => Body::empty(),
    };
    page_of(app, request.body(body).unwrap()).await
}

/// What `app` answers to `request`.
async fn page_of(app: &Router, request: Request<Body>) -> Page {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Page {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

const BEARER: (&str, &str) = ("authorization", "Bearer console-test-token-0123456789");

async fn get(app: &Router, path: &str) -> Page {
    send(app, "GET", path, &[BEARER], None).await
}

async fn post(app: &Router, path: &str, form: &str) -> Page {
    send(app, "POST", path, &[BEARER], Some(form)).await
}

fn mounted(console: Console) -> Router {
    Router::new().nest("/console", console.router())
}

/// Serves `console` at `/console` on a loopback port until the test ends.
async fn serve(console: Console) -> SocketAddr {
    loopback::serve(mounted(console)).await
}

/// Sends `method path` over a real connection to the console at `addr`,
/// with the bearer token and, for a form, `form`.
async fn over_http(addr: SocketAddr, method: &str, path: &str, form: Option<&str>) -> Page {
    let mut request = Request::builder()
        .method(method)
        .uri(loopback::endpoint(addr, path))
        .header(BEARER.0, BEARER.1);
    let body = match form {
        Some(form) => {
            request = request.header("content-type", "application/x-www-form-urlencoded");
            Full::new(Bytes::from(form.to_owned()))
        }
        None => Full::default(),
    };
    let response = tokio::time::timeout(
        PATIENCE,
        loopback::client().request(request.body(body).unwrap()),
    )
    .await
    .unwrap_or_else(|_| panic!("the console did not answer within {PATIENCE:?}"))
    .expect("the request reached the console");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Page {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).expect("a page is UTF-8"),
    }
}

/// `n` as the pages write a count of bytes: `1,048,576`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The text of the element with `id`, as the page sends it.
fn element<'p>(page: &'p Page, id: &str) -> &'p str {
    let marker = format!("id=\"{id}\"");
    let at = page
        .body
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in {}", page.body));
    let rest = &page.body[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest.find("</").unwrap();
    &rest[start..end]
}

/// An inbox with two events done (1 and 3), one dead (2), and one pending
/// (4) about the dead one's object.
async fn small_inbox() -> Arc<MemoryInbox> {
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    inbox
        .insert(&event(
            "evt_first",
            "order.created",
            None,
            Some("order:o1"),
            now - 9_000,
            now - 5_000,
        ))
        .await
        .unwrap();
    inbox
        .insert_dead(
            &event(
                "evt_dead",
                "order.succeeded",
                Some("acct_a"),
                Some("order:o2"),
                now - 8_000,
                now - 4_000,
            ),
            "handler failed: the warehouse said no",
        )
        .await
        .unwrap();
    inbox
        .insert(&event(
            "evt_done",
            "refund.succeeded",
            None,
            None,
            now - 7_000,
            now - 3_000,
        ))
        .await
        .unwrap();
    let claim = inbox
        .claim(Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    // The first due event is seq 1; run it to done, then take seq 3 too.
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
    let claim = inbox
        .claim(Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
    inbox
        .insert(&event(
            "evt_later",
            "order.refunded",
            Some("acct_a"),
            Some("order:o2"),
            now - 1_000,
            now - 2_000,
        ))
        .await
        .unwrap();
    inbox
}

#[tokio::test]
async fn every_page_answers_html_under_the_content_security_policy() {
    let inbox = small_inbox().await;
    let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
    for (path, status, content_type) in [
        ("/console", 200, "text/html; charset=utf-8"),
        ("/console/events", 200, "text/html; charset=utf-8"),
        (
            "/console/events?status=dead&type=order.succeeded&account=acct_a&object=order%3Ao2",
            200,
            "text/html; charset=utf-8",
        ),
        (
            "/console/events?from=2020-01-01T00:00&until=2999-01-01T00:00",
            200,
            "text/html; charset=utf-8",
        ),
        ("/console/events?before=3", 200, "text/html; charset=utf-8"),
        ("/console/events?after=1", 200, "text/html; charset=utf-8"),
        ("/console/events/2", 200, "text/html; charset=utf-8"),
        ("/console/events/99", 404, "text/html; charset=utf-8"),
        ("/console/events/x", 404, "text/html; charset=utf-8"),
        (
            "/console/events?status=gone",
            400,
            "text/html; charset=utf-8",
        ),
        (
            "/console/events?from=yesterday",
            400,
            "text/html; charset=utf-8",
        ),
        // Epoch seconds, which as milliseconds would be January 1970.
        (
            "/console/events?status=dead&from=1736942400",
            400,
            "text/html; charset=utf-8",
        ),
        (
            "/console/events?from=1736942400000",
            200,
            "text/html; charset=utf-8",
        ),
        // No event's field holds a NUL (PostgreSQL would refuse the query).
        (
            "/console/events?type=order.succeeded%00",
            400,
            "text/html; charset=utf-8",
        ),
        (
            "/console/assets/console.css",
            200,
            "text/css; charset=utf-8",
        ),
        (
            "/console/assets/console.js",
            200,
            "text/javascript; charset=utf-8",
        ),
        ("/console/nothing", 404, "text/plain; charset=utf-8"),
    ] {
        let page = get(&app, path).await;
        assert_eq!(page.status, status, "{path}: {}", page.body);
        assert_eq!(page.header("content-type"), content_type, "{path}");
        assert_eq!(
            page.header("content-security-policy"),
            CONTENT_SECURITY_POLICY,
            "{path}"
        );
        assert_eq!(page.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(page.header("x-frame-options"), "DENY", "{path}");
        assert_eq!(page.header("referrer-policy"), "same-origin", "{path}");
        assert_eq!(page.header("cache-control"), "no-store", "{path}");
        if content_type.starts_with("text/html") {
            // Nothing inline for the policy to block, nothing from elsewhere.
            assert!(!page.body.contains("<script>"), "{path}");
            assert!(!page.body.contains("style="), "{path}");
            assert!(
                !page.body.contains("http://") && !page.body.contains("https://"),
                "{path}"
            );
        }
    }
    assert!(CONTENT_SECURITY_POLICY.contains("default-src 'none'"));
    assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));

    let overview = get(&app, "/console").await;
    for text in [
        "evt_dead",
        "the warehouse said no",
        "<svg",
        ">1</span> dead",
        ">2</span> done",
        ">1</span> pending",
    ] {
        assert!(overview.body.contains(text), "{text} in {}", overview.body);
    }
    // Handled events fill the chart's last minutes.
    assert!(
        overview.body.contains("class=\"handled\""),
        "{}",
        overview.body
    );

    let dead = get(&app, "/console/events?status=dead").await;
    assert!(
        dead.body.contains("evt_dead") && !dead.body.contains("evt_done"),
        "{}",
        dead.body
    );

    let page = get(&app, "/console/events/2").await;
    for text in [
        "the warehouse said no",
        "acct_a",
        "&#34;amount&#34;: &#34;1.10&#34;",
        "Timeline of order:o2",
        "evt_later",
    ] {
        assert!(page.body.contains(text), "{text} in {}", page.body);
    }
    // The timeline runs in created order: the dead event first.
    let timeline = &page.body[page.body.find("Timeline").unwrap()..];
    assert!(timeline.find("evt_dead").unwrap() < timeline.find("evt_later").unwrap());
    // Kept dead on arrival: no attempt ever ran.
    assert!(page.body.contains("id=\"no-attempts\""), "{}", page.body);
    assert!(!page.body.contains("id=\"attempts\""), "{}", page.body);

    // A handled event lists its one attempt.
    let page = get(&app, "/console/events/1").await;
    let attempts = attempts_table(&page);
    assert_eq!(
        attempts.matches("<tr class=\"attempt\">").count(),
        1,
        "{attempts}"
    );
    assert!(attempts.contains("<td>completed</td>"), "{attempts}");
}

/// The event page's table of attempts.
fn attempts_table(page: &Page) -> &str {
    let start = page
        .body
        .find("<table class=\"attempts\"")
        .unwrap_or_else(|| panic!("no attempts table in {}", page.body));
    let table = &page.body[start..];
    &table[..table.find("</table>").unwrap()]
}

#[tokio::test]
async fn the_event_page_lists_each_attempt_with_its_error_escaped() {
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    inbox
        .insert(&event(
            "evt_tries",
            "order.succeeded",
            None,
            None,
            now - 1_000,
            now - 1_000,
        ))
        .await
        .unwrap();
    let claim = || async {
        inbox
            .claim(Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
            .unwrap()
    };
    let first = claim().await;
    let evil = "<script>document.title='pwned'</script>";
    let error = format!("handler said {evil}\nand\u{202e}more");
    let settled = inbox.fail(&first, &error, Some(Timestamp::now())).await;
    assert_eq!(settled.unwrap(), Settle::Applied);
    let second = claim().await;
    assert_eq!(inbox.release(&second).await.unwrap(), Settle::Applied);
    let third = claim().await;
    let settled = inbox
        .fail(&third, "the warehouse said no", Some(Timestamp::now()))
        .await;
    assert_eq!(settled.unwrap(), Settle::Applied);
    let fourth = claim().await;
    assert_eq!(inbox.complete(&fourth).await.unwrap(), Settle::Applied);
    let history = inbox.get(1).await.unwrap().unwrap().history;
    assert_eq!(history.len(), 4);

    let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
    let page = get(&app, "/console/events/1").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("<script>"), "{}", page.body);
    let attempts = attempts_table(&page);
    let rows: Vec<&str> = attempts.split("<tr class=\"attempt\">").skip(1).collect();
    assert_eq!(rows.len(), 4, "{attempts}");
    // Newest last, each with its number, start, duration and outcome.
    for (row, (number, outcome)) in rows.iter().zip([
        (1, "failed"),
        (2, "released"),
        (2, "failed"),
        (3, "completed"),
    ]) {
        assert!(
            row.contains(&format!("<td class=\"n\">{number}</td>")),
            "{row}"
        );
        assert!(row.contains(&format!("<td>{outcome}</td>")), "{row}");
        assert!(row.contains(" UTC</td>"), "{row}");
        assert_eq!(row.matches("<td class=\"n\">").count(), 2, "{row}");
    }
    for (row, record) in rows.iter().zip(&history) {
        let started = record.started_at.to_string().replace('T', " ");
        let started = started.trim_end_matches('Z');
        assert!(row.contains(started), "{started} in {row}");
    }
    // The error from the handler: escaped, invisible characters spelled
    // out, its line break kept.
    assert!(
        rows[0].contains(
            "handler said &#60;script&#62;document.title=&#39;pwned&#39;&#60;/script&#62;\nand\\u202emore"
        ),
        "{}",
        rows[0]
    );
    assert!(rows[2].contains("the warehouse said no"), "{}", rows[2]);
    assert!(!rows[1].contains("warehouse") && !rows[3].contains("warehouse"));
}

#[tokio::test]
async fn without_the_token_it_is_401_and_nothing_of_the_inbox() {
    let inbox = small_inbox().await;
    let app = mounted(
        Console::with_token(Arc::clone(&inbox), TOKEN)
            .unwrap()
            .secure_cookie(true),
    );
    let refused = [
        send(&app, "GET", "/console", &[], None).await,
        send(&app, "GET", "/console/events/2", &[], None).await,
        send(
            &app,
            "GET",
            "/console/events",
            &[("authorization", "Bearer wrong-token-0123456789")],
            None,
        )
        .await,
        send(
            &app,
            "GET",
            "/console/events",
            &[("authorization", "Basic Y29uc29sZTp4")],
            None,
        )
        .await,
        send(
            &app,
            "GET",
            "/console/events",
            &[("cookie", "clink_console=1.2.3")],
            None,
        )
        .await,
        send(
            &app,
            "GET",
            "/console/events?token=wrong-token-0123456789",
            &[],
            None,
        )
        .await,
        send(
            &app,
            "POST",
            "/console/events/2/replay",
            &[],
            Some("csrf=x"),
        )
        .await,
    ];
    for page in &refused {
        assert_eq!(page.status, 401, "{}", page.body);
        assert_eq!(
            page.header("www-authenticate"),
            "Bearer realm=\"clink console\""
        );
        assert_eq!(
            page.header("content-security-policy"),
            CONTENT_SECURITY_POLICY
        );
        assert!(page.headers.get("set-cookie").is_none());
        for secret in ["evt_", "acct_a", "warehouse", "order"] {
            assert!(!page.body.contains(secret), "{secret} in {}", page.body);
        }
    }
    assert_eq!(
        inbox.get(2).await.unwrap().unwrap().status,
        InboxStatus::Dead
    );

    // `?token=` once: a session cookie, and the same page without the token.
    let login = send(
        &app,
        "GET",
        &format!("/console/events?status=dead&token={TOKEN}"),
        &[],
        None,
    )
    .await;
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), "/console/events?status=dead");
    let cookie = login.header("set-cookie").to_owned();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/console",
        "Max-Age=43200",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(
        !cookie.contains(TOKEN),
        "the cookie is not the token: {cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = send(
        &app,
        "GET",
        "/console/events?status=dead",
        &[("cookie", &session)],
        None,
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("evt_dead"));

    let overview = send(&app, "GET", &format!("/console?token={TOKEN}"), &[], None).await;
    assert_eq!(overview.header("location"), "/console");

    // A session made with another token is no session here.
    let other =
        mounted(Console::with_token(MemoryInbox::new(), "another-token-0123456789").unwrap());
    let page = send(&other, "GET", "/console", &[("cookie", &session)], None).await;
    assert_eq!(page.status, 401);
}

/// Each wrong token is logged at `warn`, with nothing of it; after 10 in a
/// row every token presented, the right one too, is answered `429` with
/// `Retry-After` until the wait is over, and then one more is taken every
/// 6 s; a session cookie still gets in meanwhile (paused tokio time).
#[tokio::test(start_paused = true)]
async fn wrong_tokens_are_logged_and_then_refused_for_a_while() {
    let (captured, _guard) = crate::support::capture::capture();
    let inbox = small_inbox().await;
    let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
    let login = send(&app, "GET", &format!("/console?token={TOKEN}"), &[], None).await;
    let session = login
        .header("set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let wrong = |n: usize| format!("wrongwrong-guess-{n}-zyxwvutsrq");
    for n in 0..10 {
        let page = if n % 2 == 0 {
            let bearer = format!("Bearer {}", wrong(n));
            send(
                &app,
                "GET",
                "/console/events",
                &[("authorization", &bearer)],
                None,
            )
            .await
        } else {
            send(
                &app,
                "GET",
                &format!("/console/events?token={}", wrong(n)),
                &[],
                None,
            )
            .await
        };
        assert_eq!(page.status, 401, "wrong token {n}: {}", page.body);
    }
    let refused: Vec<_> = captured
        .events()
        .into_iter()
        .filter(|e| e.message.contains("a wrong token was refused"))
        .collect();
    assert_eq!(refused.len(), 10, "{refused:?}");
    assert!(refused.iter().all(|e| e.level == tracing::Level::WARN));
    assert_eq!(refused[0].fields["via"], "bearer");
    assert_eq!(refused[1].fields["via"], "query");
    let text = captured.text();
    assert!(
        text.contains("10 wrong tokens in a row") && text.contains("retry_after_s=6"),
        "{text}"
    );
    for secret in ["wrongwrong", "guess", "zyxwvutsrq", "console-test-token"] {
        assert!(!text.contains(secret), "{secret} logged: {text}");
    }

    // The right token, either way: refused for now, and nothing shown.
    let bearer = send(&app, "GET", "/console/events", &[BEARER], None).await;
    let query = send(&app, "GET", &format!("/console?token={TOKEN}"), &[], None).await;
    for page in [&bearer, &query] {
        assert_eq!(page.status, 429, "{}", page.body);
        assert_eq!(page.header("retry-after"), "6");
        assert!(page.headers.get("set-cookie").is_none());
        assert!(!page.body.contains("evt_"), "{}", page.body);
    }
    // A session already in is not refused, nor counted, with a token
    // beside it: a header a proxy in front adds, a bookmarked link.
    let page = send(
        &app,
        "GET",
        "/console/events",
        &[("cookie", &session)],
        None,
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let proxied = format!("Bearer {}", wrong(99));
    let page = send(
        &app,
        "GET",
        "/console/events",
        &[("cookie", &session), ("authorization", &proxied)],
        None,
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let bookmarked = send(
        &app,
        "GET",
        &format!("/console/events?status=dead&token={TOKEN}"),
        &[("cookie", &session)],
        None,
    )
    .await;
    assert_eq!(bookmarked.status, 303, "{}", bookmarked.body);
    assert_eq!(bookmarked.header("location"), "/console/events?status=dead");
    // The token beside a session is not checked: no new session from it.
    assert!(bookmarked.headers.get("set-cookie").is_none());
    let mistyped = send(
        &app,
        "GET",
        &format!("/console/events?token={}", wrong(98)),
        &[("cookie", &session)],
        None,
    )
    .await;
    assert_eq!(mistyped.status, 303, "{}", mistyped.body);
    assert_eq!(mistyped.header("location"), "/console/events");
    assert!(mistyped.headers.get("set-cookie").is_none());
    let counted = captured
        .events()
        .into_iter()
        .filter(|e| e.message.contains("a wrong token was refused"))
        .count();
    assert_eq!(counted, 10, "a session's tokens were counted as guesses");

    // After the wait, the right token gets in; one more wrong one spends
    // the budget again.
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(get(&app, "/console/events").await.status, 200);
    let bearer = format!("Bearer {}", wrong(10));
    let page = send(
        &app,
        "GET",
        "/console/events",
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(page.status, 401);
    assert_eq!(get(&app, "/console/events").await.status, 429);
}

/// A `?token=` on a request that loads no page of its own (an image or a
/// frame another page puts on itself, a fetch) is refused `403`, neither
/// checked nor counted: any number of them spends nothing of the client's budget, and
/// the right token, opened as a page, still logs in.
#[tokio::test(start_paused = true)]
async fn a_token_in_the_address_of_an_image_is_neither_checked_nor_counted() {
    let app = mounted(Console::with_token(small_inbox().await, TOKEN).unwrap());
    let from = |(mode, dest): (&str, &str), token: &str| {
        let address: SocketAddr = "192.0.2.9:40000".parse().unwrap();
        Request::builder()
            .uri(format!("/console?token={token}"))
            .header("sec-fetch-mode", mode)
            .header("sec-fetch-dest", dest)
            .header("sec-fetch-site", "cross-site")
            .extension(axum::extract::ConnectInfo(address))
            .body(Body::empty())
            .unwrap()
    };
    let (image, frame) = (("no-cors", "image"), ("navigate", "iframe"));
    for n in 0..30 {
        let kind = if n % 2 == 0 { image } else { frame };
        let page = page_of(&app, from(kind, &format!("wrong-{n}-image-abcdefgh"))).await;
        assert_eq!(page.status, 403, "{kind:?} {n}: {}", page.body);
    }
    let page = page_of(&app, from(("cors", "empty"), TOKEN)).await;
    assert_eq!(page.status, 403, "a fetch does not log in either");
    // Nor a page another site opens: it could spend the budget as well,
    // and a session cookie would not come with the page it leads to.
    for n in 0..30 {
        let token = format!("wrong-{n}-navigated-abcdefgh");
        let page = page_of(&app, from(("navigate", "document"), &token)).await;
        assert_eq!(page.status, 403, "{n}: {}", page.body);
    }
    let page = page_of(&app, from(("navigate", "document"), TOKEN)).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("not from another site"), "{}", page.body);
    // Typed, pasted or bookmarked: in, with the budget whole.
    let mut typed = from(("navigate", "document"), TOKEN);
    typed
        .headers_mut()
        .insert("sec-fetch-site", "none".parse().unwrap());
    let page = page_of(&app, typed).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert!(
        page.header("set-cookie").starts_with("clink_console"),
        "a session"
    );
}

/// `GET path` with the bearer `token`, sent from `from` as axum's
/// `ConnectInfo` says (`None`: the app hands the console no address).
async fn get_from(app: &Router, from: Option<&str>, path: &str, token: &str) -> Page {
    let mut request = Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    if let Some(from) = from {
        let address: SocketAddr = format!("{from}:40000").parse().unwrap();
        request = request.extension(axum::extract::ConnectInfo(address));
    }
    page_of(app, request.body(Body::empty()).unwrap()).await
}

/// Where the app hands the console its connections' addresses, each
/// client has its own budget of wrong tokens: one that spent its budget
/// is refused, another (an IPv6 client by its `/64`) still gets in with
/// the token, and so do clients the console cannot tell apart. The wrong
/// tokens' log lines name the client.
#[tokio::test(start_paused = true)]
async fn each_client_spends_its_own_budget_of_wrong_tokens() {
    let (captured, _guard) = crate::support::capture::capture();
    let app = mounted(Console::with_token(small_inbox().await, TOKEN).unwrap());
    let guessing = Some("192.0.2.7");
    for n in 0..10 {
        let page = get_from(
            &app,
            guessing,
            "/console/events",
            &format!("wrong-{n}-guess-abcdefgh"),
        )
        .await;
        assert_eq!(page.status, 401, "wrong token {n}");
    }
    assert_eq!(
        get_from(&app, guessing, "/console/events", TOKEN)
            .await
            .status,
        429
    );
    // The same /64 is the same client.
    for n in 0..10 {
        let page = get_from(
            &app,
            Some("[2001:db8:0:1::5]"),
            "/console",
            &format!("wrong-{n}-v6-abcdefgh"),
        )
        .await;
        assert_eq!(page.status, 401, "wrong token {n} over IPv6");
    }
    assert_eq!(
        get_from(
            &app,
            Some("[2001:db8:0:1:ffff::9]"),
            "/console/events",
            TOKEN
        )
        .await
        .status,
        429
    );
    for other in [Some("192.0.2.8"), Some("[2001:db8:0:2::5]"), None] {
        let page = get_from(&app, other, "/console/events", TOKEN).await;
        assert_eq!(page.status, 200, "{other:?}: {}", page.body);
    }
    let refused: Vec<_> = captured
        .events()
        .into_iter()
        .filter(|e| e.message.contains("a wrong token was refused"))
        .collect();
    assert_eq!(refused.len(), 20);
    assert_eq!(refused[0].fields["client"], "192.0.2.7");
    assert_eq!(refused[10].fields["client"], "2001:db8:0:1::5");
}

/// `GET path` with the bearer `token`, through a proxy at 10.0.0.1 that
/// sends `forwarded` as `X-Forwarded-For` (`None`: no such header).
async fn get_via_proxy(app: &Router, forwarded: Option<&str>, path: &str, token: &str) -> Page {
    get_on(app, "10.0.0.1", forwarded, path, token).await
}

/// `GET path` with the bearer `token` on a connection from `connection`
/// that sends `forwarded` as `X-Forwarded-For` (`None`: no such header).
async fn get_on(
    app: &Router, connection: &str, forwarded: Option<&str>, path: &str, token: &str,
) -> Page {
    let address: SocketAddr = format!("{connection}:40000").parse().unwrap();
    let mut request = Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .extension(axum::extract::ConnectInfo(address));
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    page_of(app, request.body(Body::empty()).unwrap()).await
}

/// Behind a proxy, with `client_address_header`, each client the proxy
/// names has its own budget: one that spent it is refused, another gets in,
/// an address a client puts before the proxy's own entry changes nothing,
/// and a request without the header is the proxy's. Without the setting
/// the header is not believed: every client is the proxy.
#[tokio::test(start_paused = true)]
async fn clients_behind_a_proxy_are_told_apart_by_the_header_it_sets() {
    let (captured, _guard) = crate::support::capture::capture();
    let app = mounted(
        Console::with_token(small_inbox().await, TOKEN)
            .unwrap()
            .client_address_header("X-Forwarded-For")
            .unwrap(),
    );
    let guessing = Some("203.0.113.5");
    for n in 0..10 {
        let token = format!("wrong-{n}-guess-abcdefgh");
        let page = get_via_proxy(&app, guessing, "/console/events", &token).await;
        assert_eq!(page.status, 401, "wrong token {n}");
    }
    for (forwarded, status) in [
        (guessing, 429),
        (Some("198.51.100.1, 203.0.113.5"), 429),
        (Some("203.0.113.6"), 200),
        (Some("203.0.113.5, 203.0.113.6"), 200),
        (None, 200),
    ] {
        let page = get_via_proxy(&app, forwarded, "/console/events", TOKEN).await;
        assert_eq!(page.status, status, "{forwarded:?}: {}", page.body);
    }
    let refused: Vec<_> = captured
        .events()
        .into_iter()
        .filter(|e| e.message.contains("a wrong token was refused"))
        .collect();
    assert_eq!(refused.len(), 10);
    assert_eq!(refused[0].fields["client"], "203.0.113.5");

    let believing_nobody = mounted(Console::with_token(small_inbox().await, TOKEN).unwrap());
    for n in 0..10 {
        let forwarded = format!("203.0.113.{n}");
        let token = format!("wrong-{n}-guess-abcdefgh");
        let page = get_via_proxy(
            &believing_nobody,
            Some(&forwarded),
            "/console/events",
            &token,
        )
        .await;
        assert_eq!(page.status, 401, "wrong token {n}");
    }
    let page = get_via_proxy(
        &believing_nobody,
        Some("203.0.113.99"),
        "/console/events",
        TOKEN,
    )
    .await;
    assert_eq!(page.status, 429, "{}", page.body);
}

/// With `trusted_proxies`, the header is believed only on a proxy's
/// connection, and read from the last address back past the proxies': a
/// client reaching the console directly spends its own connection's budget
/// whatever address it names (the client it names still gets in), a client
/// behind two proxies is itself, an address a client puts before its own
/// changes nothing, and a list of proxies only is the first of them.
#[tokio::test(start_paused = true)]
async fn only_trusted_proxies_name_the_client() {
    let (captured, _guard) = crate::support::capture::capture();
    let app = mounted(
        Console::with_token(small_inbox().await, TOKEN)
            .unwrap()
            .client_address_header("X-Forwarded-For")
            .unwrap()
            .trusted_proxies(["::ffff:10.0.0.0/120", "192.0.2.200"])
            .unwrap(),
    );
    // Straight to the console, naming a client that logs in later.
    for n in 0..10 {
        let token = format!("wrong-{n}-guess-abcdefgh");
        let named = format!("203.0.113.{}", 100 + n);
        let page = get_on(&app, "192.0.2.50", Some(&named), "/console/events", &token).await;
        assert_eq!(page.status, 401, "wrong token {n}");
    }
    let page = get_on(
        &app,
        "192.0.2.50",
        Some("203.0.113.77"),
        "/console/events",
        TOKEN,
    )
    .await;
    assert_eq!(page.status, 429, "{}", page.body);
    let page = get_via_proxy(&app, Some("203.0.113.100"), "/console/events", TOKEN).await;
    assert_eq!(page.status, 200, "{}", page.body);

    // Behind two proxies, the second one's address in the header.
    for n in 0..10 {
        let token = format!("wrong-{n}-guess-abcdefgh");
        let page = get_on(
            &app,
            "10.0.0.1",
            Some("203.0.113.5, 192.0.2.200"),
            "/console/events",
            &token,
        )
        .await;
        assert_eq!(page.status, 401, "wrong token {n}");
    }
    for (forwarded, status) in [
        ("203.0.113.5", 429),
        ("198.51.100.1, 203.0.113.5, 10.0.0.9", 429),
        ("203.0.113.6, 10.0.0.9", 200),
        ("203.0.113.5, 203.0.113.6", 200),
        // Not an address: the nearest proxy's budget, not the client's.
        ("203.0.113.5, unknown, 10.0.0.9", 200),
        ("10.0.0.3, 10.0.0.9", 200),
    ] {
        let page = get_via_proxy(&app, Some(forwarded), "/console/events", TOKEN).await;
        assert_eq!(page.status, status, "{forwarded}: {}", page.body);
    }
    let clients: Vec<_> = captured
        .events()
        .into_iter()
        .filter(|e| e.message.contains("a wrong token was refused"))
        .map(|e| e.fields["client"].clone())
        .collect();
    assert_eq!(clients.len(), 20);
    assert!(
        clients[..10].iter().all(|c| c == "192.0.2.50"),
        "{clients:?}"
    );
    assert!(
        clients[10..].iter().all(|c| c == "203.0.113.5"),
        "{clients:?}"
    );

    for wrong in ["10.0.0.0/33", "proxy.internal", ""] {
        let error = Console::with_token(small_inbox().await, TOKEN)
            .unwrap()
            .trusted_proxies([wrong])
            .unwrap_err();
        assert!(error.to_string().contains("trusted proxy"), "{error}");
    }
    let none: [&str; 0] = [];
    let error = Console::with_token(small_inbox().await, TOKEN)
        .unwrap()
        .trusted_proxies(none)
        .unwrap_err();
    assert!(error.to_string().contains("at least one"), "{error}");
}

/// Many addresses guessing at once spend the budget of all clients: a
/// client new to the console is then refused even with the token, while
/// one that presented it before still gets in (paused tokio time).
#[tokio::test(start_paused = true)]
async fn many_guessing_addresses_do_not_keep_out_a_client_that_logged_in() {
    let app = mounted(Console::with_token(small_inbox().await, TOKEN).unwrap());
    let admin = Some("198.51.100.4");
    assert_eq!(
        get_from(&app, admin, "/console/events", TOKEN).await.status,
        200
    );
    for guesser in 0..10 {
        let from = format!("203.0.113.{guesser}");
        for n in 0..10 {
            let page = get_from(
                &app,
                Some(&from),
                "/console",
                &format!("wrong-{n}-guess-abcdefgh"),
            )
            .await;
            assert_eq!(page.status, 401, "{from}: wrong token {n}");
        }
    }
    let newcomer = get_from(&app, Some("198.51.100.5"), "/console/events", TOKEN).await;
    assert_eq!(newcomer.status, 429, "{}", newcomer.body);
    let known = get_from(&app, admin, "/console/events", TOKEN).await;
    assert_eq!(known.status, 200, "{}", known.body);
}

/// Over a real connection, served by the crate's `Server` and by axum
/// with its connection addresses: a client from 127.0.0.2 gets in with the
/// token while one from 127.0.0.1 has spent its budget.
#[tokio::test]
async fn a_client_over_http_is_told_apart_by_its_address() {
    for by_server in [true, false] {
        let app = mounted(Console::with_token(small_inbox().await, TOKEN).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            if by_server {
                clink_webhooks::server::Server::new()
                    .serve(listener, app, std::future::pending())
                    .await;
            } else {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .await
                .unwrap();
            }
        });
        let from = |source: &'static str, token: String| async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
            let mut stream = socket.connect(addr).await.unwrap();
            let head = format!(
                "GET /console/events HTTP/1.1\r\nhost: localhost\r\n\
                 authorization: Bearer {token}\r\nconnection: close\r\n\r\n"
            );
            tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
                .await
                .unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(
                PATIENCE,
                tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer),
            )
            .await
            .expect("the console answers")
            .unwrap();
            let answer = String::from_utf8_lossy(&answer).into_owned();
            answer
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned()
        };
        // Wrong tokens until the client's budget is spent: ten, or a few
        // more on a machine slow enough for the budget to refill meanwhile
        // (one every 6 s).
        let mut refused = 0;
        loop {
            let status = from("127.0.0.1", format!("wrong-{refused}-guess-abcdefgh")).await;
            if status == "429" {
                break;
            }
            assert_eq!(status, "401", "server {by_server}: wrong token {refused}");
            refused += 1;
            assert!(
                refused < 100,
                "server {by_server}: the budget was never spent"
            );
        }
        assert!(
            refused >= 10,
            "server {by_server}: refused after {refused} only"
        );
        let status = from("127.0.0.1", TOKEN.to_owned()).await;
        assert_eq!(status, "429", "server {by_server}");
        let status = from("127.0.0.2", TOKEN.to_owned()).await;
        assert_eq!(status, "200", "server {by_server}");
    }
}

/// The redirect after `?token=` keeps every other parameter as it came,
/// its name percent-encoded as its value is: a name holding `=` or `&`
/// stays one name, and adds no parameter of its own.
#[tokio::test]
async fn the_login_redirect_keeps_each_parameter_name_whole() {
    let app = mounted(Console::with_token(MemoryInbox::new(), TOKEN).unwrap());
    let login = send(
        &app,
        "GET",
        &format!("/console/events?token={TOKEN}&x%3D1%26status=2&type=a%26b"),
        &[],
        None,
    )
    .await;
    assert_eq!(login.status, 303, "{}", login.body);
    assert_eq!(
        login.header("location"),
        "/console/events?x%3D1%26status=2&type=a%26b"
    );
}

/// A token with a `+` (as base64 makes them) logs in pasted into the
/// address as it is, and percent-encoded; one with the `+` made a space is
/// no token. Before, a form's reading made the `+` a space, and the right
/// token pasted as it is was a wrong one, counted against the budget.
#[tokio::test]
async fn a_token_with_a_plus_logs_in_pasted_as_it_is() {
    let inbox = small_inbox().await;
    let token = "Zm9v+YmFy/YmF6+cXV4=0123456789";
    let app = mounted(Console::with_token(Arc::clone(&inbox), token).unwrap());
    for query in [
        token.to_owned(),
        token
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D"),
    ] {
        let login = send(&app, "GET", &format!("/console?token={query}"), &[], None).await;
        assert_eq!(login.status, 303, "{query}: {}", login.body);
        assert!(
            login.header("set-cookie").starts_with("clink_console="),
            "{query}"
        );
    }
    let spaced = token.replace('+', "%20");
    let refused = send(&app, "GET", &format!("/console?token={spaced}"), &[], None).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
}

#[tokio::test]
async fn every_action_needs_its_csrf_token_and_a_handled_event_a_second_confirmation() {
    let (captured, _guard) = crate::support::capture::capture();
    let inbox = small_inbox().await;
    let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
    let login = send(&app, "GET", &format!("/console?token={TOKEN}"), &[], None).await;
    let session = login
        .header("set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let cookie = [("cookie", session.as_str())];
    let page = send(&app, "GET", "/console/events/2", &cookie, None).await;
    let csrf = page.csrf();
    assert!(page.body.contains(">Replay</button>"));

    // No token, a wrong one, another session's (the bearer's): refused.
    for form in [
        "",
        "csrf=",
        "csrf=00",
        &format!("csrf={}", get(&app, "/console/events/2").await.csrf()),
    ] {
        let refused = send(
            &app,
            "POST",
            "/console/events/2/replay",
            &cookie,
            Some(form),
        )
        .await;
        assert_eq!(refused.status, 403, "{form}: {}", refused.body);
        assert!(refused.body.contains("CSRF"), "{}", refused.body);
    }
    // A form that cannot be read (a field twice), with the right token:
    // answered for what it is, not as a form without its token.
    let twice = format!("{}&status=dead&status=dead", page.action_form());
    let unreadable = send(
        &app,
        "POST",
        "/console/events/2/replay",
        &cookie,
        Some(&twice),
    )
    .await;
    assert!(
        (400..500).contains(&unreadable.status) && unreadable.status != 403,
        "{}: {}",
        unreadable.status,
        unreadable.body
    );
    assert!(
        unreadable.body.contains("could not be read"),
        "{}",
        unreadable.body
    );
    assert_eq!(
        inbox.get(2).await.unwrap().unwrap().status,
        InboxStatus::Dead
    );

    // With it: replayed, and the page says so.
    let done = send(
        &app,
        "POST",
        "/console/events/2/replay",
        &cookie,
        Some(&page.action_form()),
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.header("location"), "/console/events/2?done=replayed");
    let entry = inbox.get(2).await.unwrap().unwrap();
    assert_eq!((entry.status, entry.replays), (InboxStatus::Pending, 1));
    let page = send(
        &app,
        "GET",
        "/console/events/2?done=replayed",
        &cookie,
        None,
    )
    .await;
    assert!(page.body.contains("Replayed: the event is pending again."));

    // A handled event: a confirmation first, nothing replayed...
    let handled = send(&app, "GET", "/console/events/1", &cookie, None).await;
    assert_eq!(handled.csrf(), csrf);
    let ask = send(
        &app,
        "POST",
        "/console/events/1/replay",
        &cookie,
        Some(&handled.action_form()),
    )
    .await;
    assert_eq!(ask.status, 200);
    assert!(
        ask.body.contains("runs its handler a second time"),
        "{}",
        ask.body
    );
    assert!(ask.body.contains("name=\"force\" value=\"yes\""));
    assert_eq!(
        inbox.get(1).await.unwrap().unwrap().status,
        InboxStatus::Done
    );
    // ...then, confirmed, replayed.
    assert!(ask.body.contains("name=\"replays\" value=\"0\""));
    let forced = send(
        &app,
        "POST",
        "/console/events/1/replay",
        &cookie,
        Some(&ask.action_form()),
    )
    .await;
    assert_eq!(forced.status, 303);
    assert_eq!(
        inbox.get(1).await.unwrap().unwrap().status,
        InboxStatus::Pending
    );

    // The dead events a filter matches, and only those.
    let now = Timestamp::now().as_millis();
    for (id, account) in [
        ("evt_d1", "acct_a"),
        ("evt_d2", "acct_b"),
        ("evt_d3", "acct_a"),
    ] {
        inbox
            .insert_dead(
                &event(id, "order.succeeded", Some(account), None, now, now),
                "boom",
            )
            .await
            .unwrap();
    }
    let list = send(&app, "GET", "/console/events?account=acct_a", &cookie, None).await;
    assert!(
        list.body
            .contains("Replay the 2 dead events matching this filter"),
        "{}",
        list.body
    );
    let bulk = send(
        &app,
        "POST",
        "/console/events/replay-dead",
        &cookie,
        Some(&list.action_form()),
    )
    .await;
    assert_eq!(bulk.status, 303, "{}", bulk.body);
    assert_eq!(
        bulk.header("location"),
        "/console/events?account=acct_a&done=replayed-dead&count=2"
    );
    let dead = inbox
        .list(&InboxFilter::default().status(InboxStatus::Dead), 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.event_id, "evt_d2");
    let refused = send(
        &app,
        "POST",
        "/console/events/replay-dead",
        &cookie,
        Some("account=acct_b"),
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        inbox
            .count(&InboxFilter::default().status(InboxStatus::Dead))
            .await
            .unwrap(),
        1
    );

    // Each action logged with what it did.
    let logged: Vec<_> = captured
        .events()
        .into_iter()
        .filter(|e| e.target == "clink_webhooks::console")
        .collect();
    let asked = |e: &&crate::support::capture::EventSeen| {
        e.fields.get("action").map(String::as_str) == Some("replay")
            && !e.fields.contains_key("outcome")
    };
    assert_eq!(logged.iter().filter(asked).count(), 3, "{logged:?}");
    let replays: Vec<_> = logged
        .iter()
        .filter(|e| {
            e.fields.get("action").map(String::as_str) == Some("replay")
                && e.fields.contains_key("outcome")
        })
        .collect();
    assert_eq!(replays.len(), 3, "{logged:?}");
    assert_eq!(replays[0].fields["outcome"], "replayed");
    assert_eq!(replays[0].fields["event_id"], "\"evt_dead\"");
    assert_eq!(replays[1].fields["outcome"], "asked to confirm");
    assert_eq!(replays[2].fields["force"], "true");
    let bulk = logged
        .iter()
        .find(|e| {
            e.fields.get("action").map(String::as_str) == Some("replay-dead")
                && e.fields.contains_key("replayed")
        })
        .unwrap();
    assert_eq!(bulk.fields["replayed"], "2");
    assert!(logged.iter().filter(|e| e.message.contains("CSRF")).count() >= 5);
}

/// Claims the next due event and completes it.
async fn run_next(inbox: &MemoryInbox) -> i64 {
    let claim = inbox
        .claim(Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .expect("an event is due");
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
    claim.entry.seq
}

#[tokio::test]
async fn a_confirmation_sent_again_after_the_event_was_handled_anew_asks_again() {
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    inbox
        .insert(&event("evt_once", "order.succeeded", None, None, now, now))
        .await
        .unwrap();
    assert_eq!(run_next(&inbox).await, 1);
    let addr = serve(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap()).await;
    let shown = over_http(addr, "GET", "/console/events/1", None).await;
    let csrf = shown.csrf();

    // Handled: asked to confirm, and the form says which state it confirms.
    let ask = over_http(
        addr,
        "POST",
        "/console/events/1/replay",
        Some(&shown.action_form()),
    )
    .await;
    assert_eq!(ask.status, 200, "{}", ask.body);
    let handled = inbox.get(1).await.unwrap().unwrap();
    assert_eq!(ask.field("replays"), handled.replays.to_string());
    assert_eq!(
        ask.field("handled"),
        handled.handled_at.unwrap().as_millis().to_string()
    );
    assert!(!ask.body.contains("id=\"asked-again\""), "{}", ask.body);
    let confirmed = ask.action_form();
    let replayed = over_http(addr, "POST", "/console/events/1/replay", Some(&confirmed)).await;
    assert_eq!(replayed.status, 303, "{}", replayed.body);
    assert_eq!(
        replayed.header("location"),
        "/console/events/1?done=replayed"
    );
    let entry = inbox.get(1).await.unwrap().unwrap();
    assert_eq!((entry.status, entry.replays), (InboxStatus::Pending, 1));

    // The same confirmation again while the replay waits: nothing done.
    let twice = over_http(addr, "POST", "/console/events/1/replay", Some(&confirmed)).await;
    assert_eq!(twice.status, 303, "{}", twice.body);
    assert_eq!(twice.header("location"), "/console/events/1?done=changed");
    let entry = inbox.get(1).await.unwrap().unwrap();
    assert_eq!((entry.status, entry.replays), (InboxStatus::Pending, 1));
    let page = over_http(addr, "GET", "/console/events/1?done=changed", None).await;
    assert!(page.body.contains("it was left as it is"), "{}", page.body);

    // A worker handles the replay; the first confirmation, sent once more,
    // replays nothing and asks again, for the event as it is now.
    assert_eq!(run_next(&inbox).await, 1);
    let handled_again = inbox.get(1).await.unwrap().unwrap();
    assert_eq!(
        (handled_again.status, handled_again.replays),
        (InboxStatus::Done, 1)
    );
    let again = over_http(addr, "POST", "/console/events/1/replay", Some(&confirmed)).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(again.body.contains("id=\"asked-again\""), "{}", again.body);
    assert!(again.body.contains("runs its handler a second time"));
    assert_eq!(inbox.get(1).await.unwrap().unwrap(), handled_again);
    assert_eq!(again.field("replays"), "1");
    assert_eq!(
        again.field("handled"),
        handled_again.handled_at.unwrap().as_millis().to_string()
    );
    // A form without the state it confirms asks too.
    let bare = over_http(
        addr,
        "POST",
        "/console/events/1/replay",
        Some(&format!("csrf={csrf}&force=yes")),
    )
    .await;
    assert!(bare.body.contains("id=\"asked-again\""), "{}", bare.body);
    assert_eq!(inbox.get(1).await.unwrap().unwrap(), handled_again);
    // The page's own Replay, from before the event was handled again, asks
    // too, saying that it changed since.
    let stale = over_http(
        addr,
        "POST",
        "/console/events/1/replay",
        Some(&shown.action_form()),
    )
    .await;
    assert_eq!(stale.status, 200, "{}", stale.body);
    assert!(stale.body.contains("id=\"asked-again\""), "{}", stale.body);
    assert_eq!(inbox.get(1).await.unwrap().unwrap(), handled_again);

    // Confirmed for the state it is in: replayed.
    let replayed = over_http(
        addr,
        "POST",
        "/console/events/1/replay",
        Some(&again.action_form()),
    )
    .await;
    assert_eq!(replayed.status, 303, "{}", replayed.body);
    let entry = inbox.get(1).await.unwrap().unwrap();
    assert_eq!((entry.status, entry.replays), (InboxStatus::Pending, 2));
}

#[tokio::test]
async fn a_bulk_replay_logs_how_many_and_a_few_of_their_numbers() {
    let (captured, _guard) = crate::support::capture::capture();
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    let dead = 2_000;
    for n in 0..dead {
        inbox
            .insert_dead(
                &event(&format!("evt_{n}"), "order.succeeded", None, None, now, now),
                "boom",
            )
            .await
            .unwrap();
    }
    let addr = serve(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap()).await;
    let list = over_http(addr, "GET", "/console/events?status=dead", None).await;
    let bulk = over_http(
        addr,
        "POST",
        "/console/events/replay-dead",
        Some(&list.action_form()),
    )
    .await;
    assert_eq!(bulk.status, 303, "{}", bulk.body);
    assert_eq!(
        inbox
            .count(&InboxFilter::default().status(InboxStatus::Pending))
            .await
            .unwrap(),
        dead
    );
    let text = captured.text();
    let line = text
        .lines()
        .find(|line| line.contains("action=\"replay-dead\"") && line.contains("replayed="))
        .unwrap_or_else(|| panic!("no replay-dead line in {text}"));
    assert!(line.len() < 1024, "a line of {} bytes: {line}", line.len());
    let logged = captured
        .events()
        .into_iter()
        .find(|e| {
            e.fields.get("action").map(String::as_str) == Some("replay-dead")
                && e.fields.get("outcome").map(String::as_str) == Some("replayed")
        })
        .expect("the bulk replay is logged");
    assert_eq!(logged.fields["up_to"], dead.to_string());
    assert!(!logged.fields.contains_key("past_shown"), "{logged:?}");
    assert!(
        !captured
            .events()
            .iter()
            .any(|e| e.level == tracing::Level::WARN),
        "{text}"
    );
    assert_eq!(logged.fields["replayed"], dead.to_string());
    let first: Vec<i64> = serde_json::from_str(&logged.fields["first_seqs"]).unwrap();
    assert_eq!(first, (1..=20).collect::<Vec<_>>());
    assert_eq!(logged.fields["last_seq"], format!("Some({dead})"));
}

/// A bulk replay the inbox applies but does not confirm within the
/// console's timeout (paused tokio time): the page says it may have been
/// applied, and to look before trying again; the log has the replay asked
/// for before it ran, and its unconfirmed outcome after.
#[tokio::test(start_paused = true)]
async fn a_bulk_replay_that_times_out_says_it_may_have_been_applied_and_is_logged() {
    let (captured, _guard) = crate::support::capture::capture();
    let memory = MemoryInbox::new();
    let now = Timestamp::now().as_millis();
    for n in 0..20 {
        memory
            .insert_dead(
                &event(&format!("evt_{n}"), "order.succeeded", None, None, now, now),
                "boom",
            )
            .await
            .unwrap();
    }
    let inbox = Arc::new(Quirky {
        replays_hang: true,
        ..Quirky::new(memory)
    });
    let app = mounted(
        Console::with_token(Arc::clone(&inbox), TOKEN)
            .unwrap()
            .timeout(Duration::from_secs(1))
            .unwrap(),
    );
    let list = get(&app, "/console/events?status=dead").await;
    let bulk = post(&app, "/console/events/replay-dead", &list.action_form()).await;
    assert_eq!(bulk.status, 503, "{}", bulk.body);
    assert!(
        bulk.body.contains("may have been applied")
            && bulk.body.contains("Look at the events before trying again"),
        "{}",
        bulk.body
    );
    assert!(
        !bulk.body.contains("Try again in a moment"),
        "{}",
        bulk.body
    );
    assert_eq!(
        inbox
            .inner
            .count(&InboxFilter::default().status(InboxStatus::Pending))
            .await
            .unwrap(),
        20,
        "applied all the same"
    );
    let logged: Vec<_> = captured
        .events()
        .into_iter()
        .filter(|e| e.fields.get("action").map(String::as_str) == Some("replay-dead"))
        .collect();
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(!logged[0].fields.contains_key("outcome"), "{logged:?}");
    assert_eq!(logged[0].fields["up_to"], "20");
    assert_eq!(logged[0].fields["shown"], "20");
    assert_eq!(logged[1].level, tracing::Level::WARN);
    assert!(
        logged[1].fields["outcome"].contains("may have been applied; look at the events"),
        "{logged:?}"
    );
    assert!(
        logged[1].fields["error"].contains("no answer"),
        "{logged:?}"
    );
}

/// One event's replay that the inbox applies but does not confirm in time:
/// the page says it may have been applied; the log has the replay asked
/// for, then its unconfirmed outcome.
#[tokio::test(start_paused = true)]
async fn a_replay_that_times_out_says_it_may_have_been_applied_and_is_logged() {
    let (captured, _guard) = crate::support::capture::capture();
    let memory = MemoryInbox::new();
    let now = Timestamp::now().as_millis();
    memory
        .insert_dead(
            &event("evt_slow", "order.succeeded", None, None, now, now),
            "boom",
        )
        .await
        .unwrap();
    let inbox = Arc::new(Quirky {
        replays_hang: true,
        ..Quirky::new(memory)
    });
    let app = mounted(
        Console::with_token(Arc::clone(&inbox), TOKEN)
            .unwrap()
            .timeout(Duration::from_secs(1))
            .unwrap(),
    );
    let page = get(&app, "/console/events/1").await;
    let replay = post(&app, "/console/events/1/replay", &page.action_form()).await;
    assert_eq!(replay.status, 503, "{}", replay.body);
    assert!(
        replay.body.contains("may have been applied"),
        "{}",
        replay.body
    );
    assert_eq!(
        inbox.inner.get(1).await.unwrap().unwrap().status,
        InboxStatus::Pending
    );
    let logged: Vec<_> = captured
        .events()
        .into_iter()
        .filter(|e| e.fields.get("action").map(String::as_str) == Some("replay"))
        .collect();
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(!logged[0].fields.contains_key("outcome"), "{logged:?}");
    assert_eq!(logged[1].level, tracing::Level::WARN);
    assert!(
        logged[1].fields["outcome"].contains("may have been applied"),
        "{logged:?}"
    );
}

/// A replay is not begun when the reads before it left less than a
/// quarter of the page's time: it would likely be cut off before the inbox
/// confirmed it (and then may have been applied or not). Answered `503`
/// saying nothing was replayed, the event left dead, and logged. (With a
/// second of time and a read of 0.8 s, the replay began with 0.2 s left.)
#[tokio::test(start_paused = true)]
async fn a_replay_is_not_begun_with_too_little_time_left() {
    let (captured, _guard) = crate::support::capture::capture();
    let memory = MemoryInbox::new();
    let now = Timestamp::now().as_millis();
    memory
        .insert_dead(
            &event("evt_late", "order.succeeded", None, None, now, now),
            "boom",
        )
        .await
        .unwrap();
    let inbox = Arc::new(Quirky {
        read_delay: Duration::from_millis(800),
        reads_fast: true.into(),
        ..Quirky::new(memory)
    });
    let app = mounted(
        Console::with_token(Arc::clone(&inbox), TOKEN)
            .unwrap()
            .timeout(Duration::from_secs(1))
            .unwrap(),
    );
    let page = get(&app, "/console/events/1").await;
    assert_eq!(page.status, 200, "{}", page.body);
    inbox
        .reads_fast
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let replay = post(&app, "/console/events/1/replay", &page.action_form()).await;
    assert_eq!(replay.status, 503, "{}", replay.body);
    assert!(
        replay.body.contains("nothing was replayed"),
        "{}",
        replay.body
    );
    assert_eq!(
        inbox.inner.get(1).await.unwrap().unwrap().status,
        InboxStatus::Dead
    );
    assert!(
        captured
            .text()
            .contains("nothing replayed: too little time left"),
        "{}",
        captured.text()
    );
}

/// The bulk replay's form pins the dead events its page counted: once an
/// event died since (newer than those, or older), it replays nothing and
/// shows the dead events as they are now, with a form pinning those; with
/// fewer dead events than counted (one replayed since), it replays the
/// rest.
#[tokio::test]
async fn a_bulk_replay_replays_only_the_dead_events_its_page_counted() {
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    let dead_count = || async {
        inbox
            .count(&InboxFilter::default().status(InboxStatus::Dead))
            .await
            .unwrap()
    };
    // Event 1 pending; 2 and 3 dead.
    inbox
        .insert(&event("evt_1", "order.succeeded", None, None, now, now))
        .await
        .unwrap();
    for id in ["evt_2", "evt_3"] {
        inbox
            .insert_dead(&event(id, "order.succeeded", None, None, now, now), "boom")
            .await
            .unwrap();
    }
    let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
    let shown = get(&app, "/console/events").await;
    assert_eq!(shown.field("upto"), "3");
    assert_eq!(shown.field("shown"), "2");

    // A newer event dies: nothing replayed, the dead events shown again.
    inbox
        .insert_dead(
            &event("evt_4", "order.succeeded", None, None, now, now),
            "boom",
        )
        .await
        .unwrap();
    let stale = post(&app, "/console/events/replay-dead", &shown.action_form()).await;
    assert_eq!(stale.status, 303, "{}", stale.body);
    assert_eq!(
        stale.header("location"),
        "/console/events?status=dead&done=dead-changed"
    );
    assert_eq!(dead_count().await, 3);
    let again = get(&app, stale.header("location")).await;
    assert!(
        again.body.contains("nothing was replayed"),
        "{}",
        again.body
    );
    assert_eq!(again.field("upto"), "4");
    assert_eq!(again.field("shown"), "3");

    // An older event dies: the same.
    let claim = inbox
        .claim(Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .expect("event 1 is due");
    assert_eq!(
        inbox.fail(&claim, "boom", None).await.unwrap(),
        Settle::Applied
    );
    let stale = post(&app, "/console/events/replay-dead", &again.action_form()).await;
    assert_eq!(stale.status, 303, "{}", stale.body);
    assert!(stale.header("location").ends_with("done=dead-changed"));
    assert_eq!(dead_count().await, 4);

    // A form without the pin, or with numbers not as written: the same.
    let current = get(&app, "/console/events?status=dead").await;
    let form = current.action_form();
    for bent in [
        form.replace("&upto=4", ""),
        form.replace("upto=4", "upto=04"),
        form.replace("shown=4", "shown=%2B4"),
    ] {
        assert_ne!(bent, form);
        let stale = post(&app, "/console/events/replay-dead", &bent).await;
        assert!(
            stale.header("location").ends_with("done=dead-changed"),
            "{bent}"
        );
    }
    assert_eq!(dead_count().await, 4);

    // One replayed on its own since: the rest, as counted, replayed.
    assert_eq!(inbox.replay(2, false).await.unwrap(), Replayed::Replayed);
    let bulk = post(&app, "/console/events/replay-dead", &form).await;
    assert_eq!(bulk.status, 303, "{}", bulk.body);
    assert_eq!(
        bulk.header("location"),
        "/console/events?done=replayed-dead&count=3"
    );
    assert_eq!(dead_count().await, 0);
}

/// The bulk replay holds to the newest dead event its page counted in the
/// replay's own step: an event matching the filter that dies after the
/// console's check (so the check passes), newer than the one pinned, stays
/// dead while the others are replayed. An inbox of the app's own that
/// does not apply the bound replays it too, and the console says so at
/// `warn`.
#[tokio::test]
async fn a_bulk_replay_leaves_dead_a_newer_event_that_dies_after_its_check() {
    let (captured, _guard) = crate::support::capture::capture();
    let warned = || {
        captured
            .events()
            .into_iter()
            .filter(|e| e.level == tracing::Level::WARN)
            .collect::<Vec<_>>()
    };
    for ignores_seq_through in [false, true] {
        let memory = MemoryInbox::new();
        let now = Timestamp::now().as_millis();
        for id in ["evt_1", "evt_2"] {
            memory
                .insert_dead(&event(id, "order.succeeded", None, None, now, now), "boom")
                .await
                .unwrap();
        }
        let inbox = Arc::new(Staged {
            ignores_seq_through,
            ..Staged::new(memory)
        });
        let addr = serve(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap()).await;
        let shown = over_http(addr, "GET", "/console/events?status=dead", None).await;
        assert_eq!(shown.status, 200, "{}", shown.body);
        assert_eq!(
            (shown.field("upto"), shown.field("shown")),
            ("2".into(), "2".into())
        );

        // Event 3 dies once the console has counted the dead events
        // before the replay.
        *inbox.dies_after_count.lock().unwrap() =
            Some(event("evt_3", "order.succeeded", None, None, now, now));
        let bulk = over_http(
            addr,
            "POST",
            "/console/events/replay-dead",
            Some(&shown.action_form()),
        )
        .await;
        assert_eq!(bulk.status, 303, "{}", bulk.body);
        assert!(
            inbox.dies_after_count.lock().unwrap().is_none(),
            "event 3 died after the check"
        );
        let status = |seq| {
            let inbox = Arc::clone(&inbox);
            async move {
                let entry = inbox.inner.get(seq).await.unwrap().unwrap();
                (entry.status, entry.replays)
            }
        };
        assert_eq!(status(1).await, (InboxStatus::Pending, 1));
        assert_eq!(status(2).await, (InboxStatus::Pending, 1));
        if ignores_seq_through {
            assert_eq!(
                bulk.header("location"),
                "/console/events?done=replayed-dead&count=3"
            );
            assert_eq!(status(3).await, (InboxStatus::Pending, 1));
            let warned = warned();
            assert_eq!(warned.len(), 1, "{warned:?}");
            assert_eq!(warned[0].fields["past_shown"], "1", "{warned:?}");
            assert!(
                warned[0].message.contains("InboxFilter::seq_through"),
                "{warned:?}"
            );
        } else {
            assert_eq!(
                bulk.header("location"),
                "/console/events?done=replayed-dead&count=2"
            );
            assert_eq!(status(3).await, (InboxStatus::Dead, 0));
            assert!(warned().is_empty(), "{:?}", warned());
        }
    }
}

#[tokio::test]
async fn a_deeply_nested_body_gives_an_event_page_of_bounded_size() {
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    // About 1 MiB: 100 levels deep around half a million numbers, every one
    // of which, indented as deep as it nests, would fill a line of its own.
    let depth = 100;
    let mut body = format!("{}{{\"id\":\"evt_deep\",\"data\":", "[".repeat(depth));
    body.push_str(&"[7,".repeat(depth));
    body.push_str(&"1,".repeat(512 * 1024));
    body.push('2');
    body.push_str(&"]".repeat(depth));
    body.push('}');
    body.push_str(&"]".repeat(depth));
    let mut deep = event("evt_deep", "order.succeeded", None, None, now, now);
    deep.body = Bytes::from(body.clone());
    inbox.insert(&deep).await.unwrap();
    let addr = serve(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap()).await;
    let page = over_http(addr, "GET", "/console/events/1", None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.len() < 1024 * 1024,
        "a page of {} bytes for a body of {}",
        page.body.len(),
        body.len()
    );
    let shown = element(&page, "body-cut");
    assert!(
        shown.contains(&format!("the body is {} bytes long", thousands(body.len()))),
        "{shown}"
    );
    assert!(
        shown.contains("clink-webhook inbox --sqlite FILE show 1 --json"),
        "{shown}"
    );
    // What it shows is the start of the body, every value as it is.
    let pre = &page.body[page.body.find("<pre class=\"body\">").unwrap()..];
    let pre = &pre["<pre class=\"body\">".len()..pre.find("</pre>").unwrap()];
    let values: String = pre
        .replace("&#34;", "\"")
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    assert!(values.len() > 1024, "{values}");
    assert!(body.starts_with(&values), "{}", &values[..200]);
    assert!(shown.contains(&format!("its first {} bytes", thousands(values.len()))));
}

#[tokio::test]
async fn a_huge_last_error_is_cut_on_the_event_page() {
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    // 20 MiB of three-byte characters after two bytes: no cut at a round
    // number of bytes falls between characters.
    let error = format!("ab{}", "日".repeat((20 * 1024 * 1024 - 2) / 3));
    assert_eq!(error.len(), 20 * 1024 * 1024);
    inbox
        .insert_dead(
            &event("evt_loud", "order.succeeded", None, None, now, now),
            &error,
        )
        .await
        .unwrap();
    let addr = serve(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap()).await;
    let page = over_http(addr, "GET", "/console/events/1", None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.len() < 1024 * 1024,
        "a page of {} bytes",
        page.body.len()
    );
    let shown = element(&page, "last-error");
    assert!(shown.len() > 1024 && error.starts_with(shown), "{shown}");
    let note = element(&page, "last-error-cut");
    assert!(
        note.contains(&format!(
            "the error is {} bytes long; the page shows its first {} bytes",
            thousands(error.len()),
            thousands(shown.len())
        )),
        "{note}"
    );
    // The list's line of it is cut too.
    let list = over_http(addr, "GET", "/console/events", None).await;
    assert!(list.body.len() < 64 * 1024, "{}", list.body.len());
}

#[tokio::test]
async fn the_timeline_of_a_busy_object_shows_the_event_and_says_how_many_there_are() {
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    let total = 520i64;
    for n in 0..total {
        inbox
            .insert(&event(
                &format!("evt_{n:03}"),
                "order.updated",
                None,
                Some("order:busy"),
                now - 1_000_000 + n,
                now,
            ))
            .await
            .unwrap();
    }
    inbox
        .insert(&event(
            "evt_alone",
            "order.created",
            None,
            Some("order:calm"),
            now,
            now,
        ))
        .await
        .unwrap();
    let addr = serve(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap()).await;
    // The timeline's rows: the event each links to, and whether it is the
    // one the page is about.
    let rows = |page: &Page| -> Vec<(i64, bool)> {
        let table = &page.body[page.body.find("<table class=\"timeline\">").unwrap()..];
        let table = &table[..table.find("</table>").unwrap()];
        table
            .split("<tr class=\"status-")
            .skip(1)
            .map(|row| {
                let link = &row[row.find("/events/").unwrap() + "/events/".len()..];
                let seq = link[..link.find('"').unwrap()].parse().unwrap();
                (seq, row[..row.find('>').unwrap()].contains(" current"))
            })
            .collect()
    };
    // The newest, the oldest and one between: each shown and marked, among
    // the 100 that arrived nearest to it, in created order.
    for (seq, window) in [(total, total - 99..=total), (1, 1..=100), (300, 251..=350)] {
        let page = over_http(addr, "GET", &format!("/console/events/{seq}"), None).await;
        assert_eq!(page.status, 200);
        let rows = rows(&page);
        assert_eq!(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            window.collect::<Vec<_>>()
        );
        assert_eq!(
            rows.iter().filter(|r| r.1).map(|r| r.0).collect::<Vec<_>>(),
            [seq]
        );
        let said = element(&page, "timeline-cut");
        assert!(
            said.contains(&format!("{total} events are about this object"))
                && said.contains("the 100 that arrived nearest to this one"),
            "{said}"
        );
        assert_eq!(
            page.link(&format!("All {total} in the events list"))
                .as_deref(),
            Some("/console/events?object=order%3Abusy")
        );
    }
    let list = over_http(addr, "GET", "/console/events?object=order%3Abusy", None).await;
    assert!(
        list.body
            .contains(&format!("<span id=\"matching\">{total}</span>")),
        "{}",
        list.body
    );
    assert_eq!(listed(&list)[0], total);

    // An object with one event: all of it, said so.
    let page = over_http(addr, "GET", &format!("/console/events/{}", total + 1), None).await;
    assert_eq!(rows(&page), [(total + 1, true)]);
    assert!(!page.body.contains("id=\"timeline-cut\""));
    assert!(page.body.contains("Every event about this object (1)"));
}

#[tokio::test]
async fn a_read_only_console_shows_no_action_and_refuses_them() {
    let inbox = small_inbox().await;
    let app = mounted(
        Console::with_token(Arc::clone(&inbox), TOKEN)
            .unwrap()
            .read_only(true),
    );
    for path in ["/console/events", "/console/events/2", "/console"] {
        let page = get(&app, path).await;
        assert_eq!(page.status, 200);
        assert!(
            !page.body.contains("<form class=\"action\""),
            "{path}: {}",
            page.body
        );
        assert!(page.body.contains("read-only"), "{path}");
    }
    let csrf = "00".repeat(32);
    let refused = post(&app, "/console/events/2/replay", &format!("csrf={csrf}")).await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("read-only"));
    let refused = post(&app, "/console/events/replay-dead", &format!("csrf={csrf}")).await;
    assert_eq!(refused.status, 403);
    // A form it cannot read is refused as read-only too, not as unreadable.
    for path in ["/console/events/2/replay", "/console/events/replay-dead"] {
        let request = Request::builder()
            .method("POST")
            .uri(path)
            .header(BEARER.0, BEARER.1)
            .header("content-type", "text/plain")
            .body(Body::from("replay"))
            .unwrap();
        let refused = page_of(&app, request).await;
        assert_eq!(refused.status, 403, "{path}");
        assert!(refused.body.contains("read-only"), "{path}");
    }
    assert_eq!(
        inbox.get(2).await.unwrap().unwrap().status,
        InboxStatus::Dead
    );
}

#[tokio::test]
async fn every_value_from_a_body_is_escaped() {
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    let evil = "<script>document.title='pwned'</script>";
    let attribute = "\"><img src=x onerror=alert(1)>";
    let mut kept = event(
        &format!("evt_{evil}"),
        &format!("order.{evil}"),
        Some(attribute),
        Some(&format!("order:{evil}")),
        now,
        now,
    );
    kept.body = Bytes::from(format!(r#"{{"id":"x","metadata":{{"note":"{evil}"}}}}"#));
    inbox
        .insert_dead(&kept, &format!("handler said {evil}"))
        .await
        .unwrap();
    let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
    for path in [
        "/console".to_owned(),
        "/console/events".to_owned(),
        "/console/events/1".to_owned(),
        "/console/events?type=order.%3Cscript%3E&object=%22%3E%3Cimg%20src%3Dx%3E".to_owned(),
    ] {
        let page = get(&app, &path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(!page.body.contains("<script>"), "{path}: {}", page.body);
        assert!(!page.body.contains("<img"), "{path}: {}", page.body);
    }
    let page = get(&app, "/console/events/1").await;
    for text in [
        "&#60;script&#62;document.title=&#39;pwned&#39;&#60;/script&#62;",
        "&#34;&#62;&#60;img src=x onerror=alert(1)&#62;",
        "&#34;note&#34;: &#34;&#60;script&#62;",
    ] {
        assert!(page.body.contains(text), "{text} in {}", page.body);
    }
}

#[tokio::test]
async fn invisible_characters_from_a_body_are_spelled_out() {
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    // The intake refuses such ids; an inbox filled another way, an object
    // key read from the data and a handler's error can still hold them.
    let mut kept = event(
        "evt_1\u{202e}dlo",
        "order.\u{200b}succeeded",
        Some("acct_1"),
        Some("order:ord\u{2028}x"),
        now,
        now,
    );
    kept.body = Bytes::from("{\"id\":\"evt_1\u{202e}dlo\",\"note\":\"\u{feff}\u{e0041}\"}");
    inbox
        .insert_dead(&kept, "handler said \u{1b}[31mred\u{2029}line")
        .await
        .unwrap();
    let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
    for path in ["/console", "/console/events", "/console/events/1"] {
        let page = get(&app, path).await;
        assert_eq!(page.status, 200, "{path}");
        let raw: Vec<char> = page
            .body
            .chars()
            .filter(|&c| c != '\n' && clink_webhooks::events::is_invisible(c))
            .collect();
        assert!(raw.is_empty(), "{path}: {raw:?} shown raw");
    }
    let page = get(&app, "/console/events/1").await;
    for text in [
        r"evt_1\u202edlo",
        r"order.\u200bsucceeded",
        r"order:ord\u2028x",
        r"\ufeff\udb40\udc41",
        r"handler said \u001b[31mred\u2029line",
    ] {
        assert!(page.body.contains(text), "{text} in {}", page.body);
    }
}

/// A session ends with the page's "Log out" form: its cookie is cleared,
/// and the cookie, sent again, no longer gets in (here or once stolen).
/// The form needs the session's CSRF token; the bearer header has no
/// session to end; the token opens a new one.
#[tokio::test]
async fn a_session_logs_out_and_its_cookie_no_longer_gets_in() {
    let app = mounted(Console::with_token(small_inbox().await, TOKEN).unwrap());
    let login = send(&app, "GET", &format!("/console?token={TOKEN}"), &[], None).await;
    assert_eq!(login.status, 303);
    let session = login
        .header("set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = send(
        &app,
        "GET",
        "/console/events",
        &[("cookie", &session)],
        None,
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("action=\"/console/logout\""),
        "{}",
        page.body
    );
    let csrf = page.csrf();

    let refused = send(
        &app,
        "POST",
        "/console/logout",
        &[("cookie", &session)],
        Some("csrf="),
    )
    .await;
    assert_eq!(refused.status, 403);
    let bearer = format!("Bearer {TOKEN}");
    let none = send(
        &app,
        "POST",
        "/console/logout",
        &[("authorization", &bearer)],
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(none.status, 400, "{}", none.body);
    let still = send(
        &app,
        "GET",
        "/console/events",
        &[("cookie", &session)],
        None,
    )
    .await;
    assert_eq!(still.status, 200, "not logged out by a refused form");

    let out = send(
        &app,
        "POST",
        "/console/logout",
        &[("cookie", &session)],
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(out.status, 303);
    assert_eq!(out.header("location"), "/console");
    let cleared = out.header("set-cookie");
    assert!(
        cleared.starts_with("clink_console=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let after = send(
        &app,
        "GET",
        "/console/events",
        &[("cookie", &session)],
        None,
    )
    .await;
    assert_eq!(after.status, 401, "{}", after.body);
    let again = send(
        &app,
        "GET",
        &format!("/console?token={TOKEN}"),
        &[("cookie", &session)],
        None,
    )
    .await;
    assert_eq!(again.status, 303);
    assert!(
        again.header("set-cookie").starts_with("clink_console="),
        "a new session"
    );
}

#[tokio::test]
async fn behind_the_apps_own_auth_it_checks_nothing_but_its_csrf_cookie() {
    let inbox = small_inbox().await;
    let app = mounted(Console::behind_app_auth(Arc::clone(&inbox), [9u8; 32]).unwrap());
    let page = send(&app, "GET", "/console/events/2", &[], None).await;
    assert_eq!(page.status, 200);
    let cookie = page.header("set-cookie").to_owned();
    assert!(
        cookie.starts_with("clink_console_csrf=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // A nonce, no credential: it comes with a link from another site, and
    // is not replaced then, voiding the forms of the tabs already open.
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();
    let csrf = page.csrf();
    // Without the cookie the form's token is not enough, and the reverse.
    let refused = send(
        &app,
        "POST",
        "/console/events/2/replay",
        &[],
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(refused.status, 403);
    let refused = send(
        &app,
        "POST",
        "/console/events/2/replay",
        &[("cookie", &session)],
        Some("csrf="),
    )
    .await;
    assert_eq!(refused.status, 403);
    let done = send(
        &app,
        "POST",
        "/console/events/2/replay",
        &[("cookie", &session)],
        Some(&page.action_form()),
    )
    .await;
    assert_eq!(done.status, 303);
    assert_eq!(
        inbox.get(2).await.unwrap().unwrap().status,
        InboxStatus::Pending
    );
}

#[tokio::test]
async fn served_at_the_root_its_links_start_at_the_root() {
    let inbox = small_inbox().await;
    let app = Console::with_token(Arc::clone(&inbox), TOKEN)
        .unwrap()
        .router();
    let page = get(&app, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("href=\"/events\""), "{}", page.body);
    assert!(page.body.contains("href=\"/assets/console.css\""));
    let login = send(&app, "GET", &format!("/events/2?token={TOKEN}"), &[], None).await;
    assert_eq!(login.header("location"), "/events/2");
    assert!(login.header("set-cookie").contains("Path=/;"));
}

/// The seqs listed on a page, in order.
fn listed(page: &Page) -> Vec<i64> {
    page.body
        .match_indices("data-seq=\"")
        .map(|(at, m)| {
            let rest = &page.body[at + m.len()..];
            rest[..rest.find('"').unwrap()].parse().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn the_list_runs_newest_first_a_page_at_a_time_both_ways() {
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    for n in 0..25 {
        let event_type = if n % 2 == 0 {
            "order.succeeded"
        } else {
            "refund.succeeded"
        };
        inbox
            .insert(&event(
                &format!("evt_{n}"),
                event_type,
                None,
                None,
                now,
                now,
            ))
            .await
            .unwrap();
    }
    let app = mounted(
        Console::with_token(Arc::clone(&inbox), TOKEN)
            .unwrap()
            .page_size(5)
            .unwrap(),
    );
    let first = get(&app, "/console/events?type=order.succeeded").await;
    assert_eq!(listed(&first), [25, 23, 21, 19, 17]);
    assert!(
        first.body.contains("<span id=\"matching\">13</span>"),
        "{}",
        first.body
    );
    assert!(first.link("← newer").is_none());
    let mut page = first;
    let mut seen = listed(&page);
    while let Some(older) = page.link("older →") {
        assert!(seen.len() < 25, "the pages run in a circle: {seen:?}");
        page = get(&app, &older).await;
        assert_eq!(page.status, 200);
        seen.extend(listed(&page));
    }
    assert_eq!(seen, (0..13).map(|n| 25 - 2 * n).collect::<Vec<_>>());
    // Back toward the newest from the last page.
    let newer = page.link("← newer").expect("a way back");
    assert!(
        newer.contains("type=order.succeeded") && newer.contains("after=5"),
        "{newer}"
    );
    let back = get(&app, &newer).await;
    assert_eq!(listed(&back), [15, 13, 11, 9, 7]);
    assert!(back.link("older →").is_some() && back.link("← newer").is_some());
}

/// The errors of the dead events of [`browsing_conforms`], by the event's
/// number: around the summaries' cut, characters of two, three and four
/// bytes, so that a cut counting bytes, or one character off, shows.
fn conformance_error(n: i64) -> String {
    let start = "x".repeat(SUMMARY_ERROR_CHARS - 2);
    match n {
        // Longer than the cut: the last two characters kept are of two and
        // three bytes, the first left out of four.
        0 => format!("{start}é日🦀ü and <more>"),
        // Exactly as long as the cut: whole, not cut.
        5 => format!("{start}é日"),
        // One character more.
        10 => format!("{start}é日🦀"),
        // Three-byte characters only, far longer.
        15 => "日".repeat(SUMMARY_ERROR_CHARS * 40),
        _ => "boom".to_owned(),
    }
}

/// What every backend must answer for the console: pages both ways, counts
/// under filters, activity per interval, summaries with the start of the
/// error.
async fn browsing_conforms(inbox: Arc<dyn Inbox>) {
    let now = Timestamp::now().as_millis();
    let base = now - 10 * 60_000;
    for n in 0..30i64 {
        let account = if n % 3 == 0 { Some("acct_x") } else { None };
        let e = event(
            &format!("evt_{n}"),
            "order.succeeded",
            account,
            Some(&format!("order:o{}", n % 4)),
            base + n,
            base + n * 10_000,
        );
        if n % 5 == 0 {
            inbox.insert_dead(&e, &conformance_error(n)).await.unwrap();
        } else {
            inbox.insert(&e).await.unwrap();
        }
    }
    let seqs = |page: Vec<clink_webhooks::store::InboxEntry>| {
        page.into_iter()
            .map(|e| e.event.event_id)
            .collect::<Vec<_>>()
    };
    let all = InboxFilter::default();
    let newest = seqs(inbox.page(&all, PageStart::Newest, 3).await.unwrap());
    assert_eq!(newest, ["evt_29", "evt_28", "evt_27"]);
    let first = inbox.list(&all, 1).await.unwrap()[0].seq;
    let before = seqs(
        inbox
            .page(&all, PageStart::Before(first + 27), 3)
            .await
            .unwrap(),
    );
    assert_eq!(before, ["evt_26", "evt_25", "evt_24"]);
    let after = seqs(
        inbox
            .page(&all, PageStart::After(first + 2), 3)
            .await
            .unwrap(),
    );
    assert_eq!(after, ["evt_5", "evt_4", "evt_3"]);
    let dead = InboxFilter::default().status(InboxStatus::Dead);
    assert_eq!(
        seqs(inbox.page(&dead, PageStart::Newest, 10).await.unwrap()),
        ["evt_25", "evt_20", "evt_15", "evt_10", "evt_5", "evt_0"]
    );
    assert_eq!(inbox.count(&all).await.unwrap(), 30);
    assert_eq!(inbox.count(&dead).await.unwrap(), 6);
    assert_eq!(
        inbox
            .count(&InboxFilter::default().account("acct_x"))
            .await
            .unwrap(),
        10
    );
    assert_eq!(
        inbox
            .count(&InboxFilter::default().account(""))
            .await
            .unwrap(),
        20
    );
    assert_eq!(
        inbox
            .count(
                &InboxFilter::default()
                    .object_key("order:o1")
                    .status(InboxStatus::Pending)
            )
            .await
            .unwrap(),
        6
    );
    let from = Timestamp::from_millis(base + 100_000);
    let window =
        InboxFilter::default().received(Some(from), Some(Timestamp::from_millis(base + 150_000)));
    assert_eq!(inbox.count(&window).await.unwrap(), 5);
    assert_eq!(
        seqs(inbox.page(&window, PageStart::Newest, 2).await.unwrap()),
        ["evt_14", "evt_13"]
    );

    // One event handled now; thirty received one each 10 s from `base`.
    let claim = inbox
        .claim(Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inbox.complete(&claim).await.unwrap(), Settle::Applied);
    let since = Timestamp::from_millis(base);
    let activity = inbox
        .activity(since, Duration::from_secs(60), 11)
        .await
        .unwrap();
    assert_eq!(activity.received, [6, 6, 6, 6, 6, 0, 0, 0, 0, 0, 0]);
    assert_eq!(activity.handled.iter().sum::<u64>(), 1);
    assert_eq!(activity.handled[10], 1, "{activity:?}");
    assert_eq!(activity.since, since);

    // Summaries: the same pages as whole events, less what a summary
    // leaves out, for every filter and start; one event handled (above)
    // and one replayed, so that every field has something to carry.
    let replayed = inbox.page(&dead, PageStart::Newest, 1).await.unwrap()[0].seq;
    assert_eq!(
        inbox.replay(replayed, false).await.unwrap(),
        Replayed::Replayed
    );
    let object = InboxFilter::default().object_key("order:o1");
    let acct = InboxFilter::default().account("acct_x");
    for (filter, start, limit) in [
        (&all, PageStart::Newest, 3),
        (&all, PageStart::Newest, 100),
        (&all, PageStart::Before(first + 27), 3),
        (&all, PageStart::After(first + 2), 3),
        (&dead, PageStart::Newest, 10),
        (&window, PageStart::Newest, 2),
        (&acct, PageStart::Before(first + 20), 4),
        (&object, PageStart::Before(first + 22), 3),
        (&object, PageStart::After(first + 5), 50),
        (&object, PageStart::After(first + 29), 50),
    ] {
        let whole = inbox.page(filter, start, limit).await.unwrap();
        let summaries = inbox.page_summaries(filter, start, limit).await.unwrap();
        assert_eq!(
            summaries,
            whole.iter().map(InboxSummary::from).collect::<Vec<_>>(),
            "{filter:?} from {start:?}"
        );
    }
    let summaries = inbox
        .page_summaries(&all, PageStart::Newest, 100)
        .await
        .unwrap();
    assert_eq!(summaries.len(), 30);
    let handled = summaries.iter().find(|s| s.seq == claim.entry.seq).unwrap();
    assert_eq!((handled.status, handled.attempts), (InboxStatus::Done, 1));
    assert!(handled.handled_at.is_some());
    let again = summaries.iter().find(|s| s.seq == replayed).unwrap();
    assert_eq!((again.status, again.replays), (InboxStatus::Pending, 1));
    assert!(again.last_replayed_at.is_some());
    let oldest = summaries.last().unwrap();
    assert_eq!(
        (
            oldest.event_id.as_str(),
            oldest.account.as_deref(),
            oldest.object_key.as_deref(),
            oldest.created,
            oldest.received_at
        ),
        (
            "evt_0",
            Some("acct_x"),
            Some("order:o0"),
            Some(Timestamp::from_millis(base)),
            Timestamp::from_millis(base)
        )
    );
    assert!(summaries.iter().any(|s| s.account.is_none()));
    assert!(summaries.iter().all(|s| s.event_type == "order.succeeded"));
    // The error, cut after its first `SUMMARY_ERROR_CHARS` characters.
    let error = |id: &str| {
        let s = summaries.iter().find(|s| s.event_id == id).unwrap();
        (s.last_error.clone(), s.last_error_cut)
    };
    let start = "x".repeat(SUMMARY_ERROR_CHARS - 2);
    let kept = Some(format!("{start}é日"));
    assert_eq!(error("evt_0"), (kept.clone(), true));
    assert_eq!(error("evt_5"), (kept.clone(), false));
    assert_eq!(error("evt_10"), (kept, true));
    assert_eq!(
        error("evt_15"),
        (Some("日".repeat(SUMMARY_ERROR_CHARS)), true)
    );
    assert_eq!(error("evt_20"), (Some("boom".to_owned()), false));
    assert_eq!(error("evt_1"), (None, false));
    for n in [0, 5, 10, 15] {
        let whole = inbox.get(first + n).await.unwrap().unwrap().last_error;
        assert_eq!(whole, Some(conformance_error(n)), "kept whole");
    }
    assert_eq!(
        inbox
            .page_summaries(&object, PageStart::After(first + 29), 50)
            .await
            .unwrap(),
        []
    );
}

#[tokio::test]
async fn the_memory_inbox_answers_the_console() {
    browsing_conforms(Arc::new(MemoryInbox::new())).await;
}

/// An inbox that implements only what the trait requires, to check the
/// browsing methods' defaults.
struct Plain(MemoryInbox);

impl Inbox for Plain {
    delegate_inbox!(0: insert, insert_dead, claim, complete, fail, release, list, get, replay, replay_matching, purge, stats, check_writable);
}

#[tokio::test]
async fn an_inbox_with_only_the_required_methods_answers_the_console_by_default() {
    browsing_conforms(Arc::new(Plain(MemoryInbox::new()))).await;
}

#[tokio::test]
async fn an_inbox_with_only_the_required_methods_replays_if_by_default() {
    crate::inbox::replay_if_conformance(Arc::new(Plain(MemoryInbox::new()))).await;
}

/// An inbox with only the required methods whose `get` answers the event
/// as it was first read: the default `replay_if` reading an event that
/// changes before its replay.
struct StaleGet {
    inner: MemoryInbox,
    first_read: std::sync::Mutex<Option<InboxEntry>>,
}

impl Inbox for StaleGet {
    delegate_inbox!(inner: insert, insert_dead, claim, complete, fail, release, list, replay, replay_matching, purge, stats, check_writable);
    fn get(&self, seq: i64) -> BoxFuture<'_, Result<Option<InboxEntry>, StoreError>> {
        Box::pin(async move {
            let first = self.first_read.lock().unwrap().clone();
            match first {
                Some(entry) => Ok(Some(entry)),
                None => {
                    let entry = self.inner.get(seq).await?;
                    self.first_read.lock().unwrap().clone_from(&entry);
                    Ok(entry)
                }
            }
        })
    }
}

/// The default `replay_if` is not atomic, but an event pinned dead that
/// was replayed and handled between its read and its replay is left as it
/// is (only a pin of a handled event forces the replay of one).
#[tokio::test]
async fn the_default_replay_if_forces_only_a_replay_pinned_as_handled() {
    let inbox = StaleGet {
        inner: MemoryInbox::new(),
        first_read: std::sync::Mutex::new(None),
    };
    let now = Timestamp::now().as_millis();
    inbox
        .insert_dead(
            &event("evt_stale", "order.succeeded", None, None, now, now),
            "boom",
        )
        .await
        .unwrap();
    let seq = inbox.inner.list(&InboxFilter::default(), 1).await.unwrap()[0].seq;
    let dead = inbox.get(seq).await.unwrap().unwrap();
    assert_eq!(dead.status, InboxStatus::Dead);
    // Another operator replays it, and a worker handles it.
    assert_eq!(
        inbox.inner.replay(seq, false).await.unwrap(),
        Replayed::Replayed
    );
    let claim = inbox
        .inner
        .claim(Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inbox.inner.complete(&claim).await.unwrap(), Settle::Applied);
    let pin = ReplayPin::new(InboxStatus::Dead, dead.replays, dead.handled_at);
    let answer = inbox.replay_if(seq, &pin).await.unwrap();
    assert!(matches!(answer, Replayed::Handled { .. }), "{answer:?}");
    let now = inbox.inner.get(seq).await.unwrap().unwrap();
    assert_eq!((now.status, now.replays), (InboxStatus::Done, 1));
}

/// A memory inbox that refuses to read events whole but one at a time
/// (`list` and `page` fail, so only `get` reads a body), or not at all
/// ([`summaries_only`](Self::summaries_only): `get` fails too), and that
/// can have a worker replay and handle an event again right after `get`
/// read it, or an event die right after `count` answered: an inbox
/// changing between the console's reads. With `ignores_seq_through`, it
/// replays as an inbox of the app's own that was written before
/// [`InboxFilter::seq_through`] existed.
struct Staged {
    inner: MemoryInbox,
    /// Whether `get` fails too.
    get_refused: bool,
    /// Whether `replay_matching` leaves out the filter's bound on the
    /// number.
    ignores_seq_through: bool,
    /// The event that, once, is kept dead just after `count` answered.
    dies_after_count: std::sync::Mutex<Option<NewEvent>>,
    /// The event that, once, is replayed and handled again just after `get`
    /// read it.
    handle_after_get: std::sync::Mutex<Option<i64>>,
    /// The claim that, once, a worker completes just after `get` read its
    /// event running.
    complete_after_get: std::sync::Mutex<Option<clink_webhooks::store::InboxClaim>>,
}

impl Staged {
    fn new(inner: MemoryInbox) -> Self {
        Self {
            inner,
            get_refused: false,
            ignores_seq_through: false,
            dies_after_count: std::sync::Mutex::new(None),
            handle_after_get: std::sync::Mutex::new(None),
            complete_after_get: std::sync::Mutex::new(None),
        }
    }

    /// An inbox that reads no event whole: only summaries, counts and
    /// stats.
    fn summaries_only(inner: MemoryInbox) -> Self {
        Self {
            get_refused: true,
            ..Self::new(inner)
        }
    }

    fn refused<T>() -> BoxFuture<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
    {
        Box::pin(std::future::ready(Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "this inbox reads no events whole but one at a time",
        ))))
    }
}

impl Inbox for Staged {
    delegate_inbox!(inner: insert, insert_dead, claim, complete, fail, release, page_summaries, activity, replay, replay_if, purge, stats, check_writable);
    fn list<'a>(
        &'a self, _: &'a InboxFilter, _: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
        Self::refused()
    }
    fn page<'a>(
        &'a self, _: &'a InboxFilter, _: PageStart, _: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
        Self::refused()
    }
    fn count<'a>(&'a self, filter: &'a InboxFilter) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let count = self.inner.count(filter).await;
            let dies = self.dies_after_count.lock().unwrap().take();
            if let Some(event) = dies {
                self.inner.insert_dead(&event, "boom").await.unwrap();
            }
            count
        })
    }
    fn get(&self, seq: i64) -> BoxFuture<'_, Result<Option<InboxEntry>, StoreError>> {
        if self.get_refused {
            return Self::refused();
        }
        Box::pin(async move {
            let read = self.inner.get(seq).await;
            let staged = self.handle_after_get.lock().unwrap().take_if(|s| *s == seq);
            if staged.is_some() {
                assert_eq!(
                    self.inner.replay(seq, true).await.unwrap(),
                    Replayed::Replayed
                );
                run_next(&self.inner).await;
            }
            let claim = self
                .complete_after_get
                .lock()
                .unwrap()
                .take_if(|claim| claim.entry.seq == seq);
            if let Some(claim) = claim {
                assert_eq!(self.inner.complete(&claim).await.unwrap(), Settle::Applied);
            }
            read
        })
    }
    fn replay_matching<'a>(
        &'a self, filter: &'a InboxFilter, force: bool,
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        if !self.ignores_seq_through {
            return self.inner.replay_matching(filter, force);
        }
        Box::pin(async move {
            let mut known = filter.clone();
            known.seq_through = None;
            self.inner.replay_matching(&known, force).await
        })
    }
}

/// A memory inbox of the app's own that misbehaves as told: every read
/// takes `read_delay` (a slow store, in paused tokio time), a page of
/// summaries holds `overfill` times the events asked for, and with
/// `replays_hang` a replay is applied and then never answered (a store
/// whose answer is lost, or that answers only after the console gave up).
#[derive(Default)]
struct Quirky {
    inner: MemoryInbox,
    read_delay: Duration,
    /// Set: reads answer at once, whatever `read_delay` says.
    reads_fast: std::sync::atomic::AtomicBool,
    overfill: usize,
    replays_hang: bool,
}

impl Quirky {
    fn new(inner: MemoryInbox) -> Self {
        Self {
            inner,
            overfill: 1,
            ..Self::default()
        }
    }

    async fn read<T>(&self, read: BoxFuture<'_, Result<T, StoreError>>) -> Result<T, StoreError> {
        let fast = self.reads_fast.load(std::sync::atomic::Ordering::SeqCst);
        if !self.read_delay.is_zero() && !fast {
            tokio::time::sleep(self.read_delay).await;
        }
        read.await
    }

    async fn write<T>(&self, write: BoxFuture<'_, Result<T, StoreError>>) -> Result<T, StoreError> {
        let done = write.await;
        if self.replays_hang {
            std::future::pending::<()>().await;
        }
        done
    }
}

impl Inbox for Quirky {
    delegate_inbox!(inner: insert, insert_dead, claim, complete, fail, release, purge, check_writable);
    fn list<'a>(
        &'a self, filter: &'a InboxFilter, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxEntry>, StoreError>> {
        Box::pin(self.read(self.inner.list(filter, limit)))
    }
    fn page_summaries<'a>(
        &'a self, filter: &'a InboxFilter, start: PageStart, limit: usize,
    ) -> BoxFuture<'a, Result<Vec<InboxSummary>, StoreError>> {
        let limit = limit.saturating_mul(self.overfill);
        Box::pin(self.read(self.inner.page_summaries(filter, start, limit)))
    }
    fn count<'a>(&'a self, filter: &'a InboxFilter) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.read(self.inner.count(filter)))
    }
    fn activity(
        &self, since: Timestamp, interval: Duration, intervals: usize,
    ) -> BoxFuture<'_, Result<clink_webhooks::store::InboxActivity, StoreError>> {
        Box::pin(self.read(self.inner.activity(since, interval, intervals)))
    }
    fn get(&self, seq: i64) -> BoxFuture<'_, Result<Option<InboxEntry>, StoreError>> {
        Box::pin(self.read(self.inner.get(seq)))
    }
    fn replay(&self, seq: i64, force: bool) -> BoxFuture<'_, Result<Replayed, StoreError>> {
        Box::pin(self.write(self.inner.replay(seq, force)))
    }
    fn replay_if<'a>(
        &'a self, seq: i64, pin: &'a ReplayPin,
    ) -> BoxFuture<'a, Result<Replayed, StoreError>> {
        Box::pin(self.write(self.inner.replay_if(seq, pin)))
    }
    fn replay_matching<'a>(
        &'a self, filter: &'a InboxFilter, force: bool,
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
        Box::pin(self.write(self.inner.replay_matching(filter, force)))
    }
    fn stats(&self) -> BoxFuture<'_, Result<clink_webhooks::store::InboxStats, StoreError>> {
        Box::pin(self.read(self.inner.stats()))
    }
}

/// The event numbers of a timeline's rows, and which one is marked as the
/// page's own.
fn timeline_rows(page: &Page) -> Vec<(i64, bool)> {
    let table = &page.body[page.body.find("<table class=\"timeline\">").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    table
        .split("<tr class=\"status-")
        .skip(1)
        .map(|row| {
            let link = &row[row.find("/events/").unwrap() + "/events/".len()..];
            let seq = link[..link.find('"').unwrap()].parse().unwrap();
            (seq, row[..row.find('>').unwrap()].contains(" current"))
        })
        .collect()
}

/// An inbox of the app's own that returns more summaries than asked for:
/// the timeline takes only as many as it asked for on each side, the
/// nearest to the event, and still shows 100.
#[tokio::test]
async fn a_timeline_from_an_inbox_that_returns_too_much_keeps_what_it_asked_for() {
    let memory = MemoryInbox::new();
    let now = Timestamp::now().as_millis();
    for n in 0..300 {
        memory
            .insert(&event(
                &format!("evt_{n:03}"),
                "order.updated",
                None,
                Some("order:busy"),
                now - 1_000_000 + n,
                now,
            ))
            .await
            .unwrap();
    }
    let inbox = Arc::new(Quirky {
        overfill: 4,
        ..Quirky::new(memory)
    });
    let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
    let page = get(&app, "/console/events/100").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let rows = timeline_rows(&page);
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        (51..=150).collect::<Vec<_>>()
    );
    assert_eq!(
        rows.iter().filter(|r| r.1).map(|r| r.0).collect::<Vec<_>>(),
        [100]
    );
    // Near the newest: what the newer side lacks, the older fills, cut too.
    let page = get(&app, "/console/events/290").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        timeline_rows(&page).iter().map(|r| r.0).collect::<Vec<_>>(),
        (201..=300).collect::<Vec<_>>()
    );
}

/// Every inbox call of a request shares one deadline, the console's
/// timeout from when the request came in: over an inbox taking 0.6 s a
/// read, with a timeout of 1 s, each page that reads it more than once
/// answers `503` when its second read is cut at the 1 s, never later
/// (paused tokio time: the clock moves only as the timers do). With
/// reads of 0.15 s, the same pages fit in the second and answer.
#[tokio::test(start_paused = true)]
async fn the_inbox_calls_of_a_page_share_one_deadline() {
    let timeout = Duration::from_secs(1);
    for (read_delay, status) in [
        (Duration::from_millis(600), 503),
        (Duration::from_millis(150), 200),
    ] {
        let memory = MemoryInbox::new();
        let now = Timestamp::now().as_millis();
        memory
            .insert_dead(
                &event(
                    "evt_slow",
                    "order.succeeded",
                    None,
                    Some("order:o1"),
                    now,
                    now,
                ),
                "boom",
            )
            .await
            .unwrap();
        let inbox = Arc::new(Quirky {
            read_delay,
            ..Quirky::new(memory)
        });
        let app = mounted(
            Console::with_token(Arc::clone(&inbox), TOKEN)
                .unwrap()
                .timeout(timeout)
                .unwrap(),
        );
        for path in ["/console", "/console/events", "/console/events/1"] {
            let started = tokio::time::Instant::now();
            let page = get(&app, path).await;
            let took = started.elapsed();
            assert_eq!(
                page.status, status,
                "{path} after {read_delay:?} a read: {}",
                page.body
            );
            assert!(
                took <= timeout,
                "{path} took {took:?}, past the page's {timeout:?}"
            );
            if status == 503 {
                assert!(page.body.contains("did not answer"), "{}", page.body);
            }
        }
    }
}

/// The timeline reads the summaries of its object's events, never their
/// bodies: over an inbox that reads no page of whole events, the event
/// page still shows it whole.
#[tokio::test]
async fn the_timeline_reads_summaries_not_bodies() {
    let inbox = MemoryInbox::new();
    let now = Timestamp::now().as_millis();
    for n in 0..3 {
        inbox
            .insert(&event(
                &format!("evt_<{n}>"),
                "order.updated",
                None,
                Some("order:<o1>"),
                now - 10_000 + n,
                now,
            ))
            .await
            .unwrap();
    }
    let inbox = Arc::new(Staged::new(inbox));
    let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
    let page = get(&app, "/console/events/2").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let table = &page.body[page.body.find("<table class=\"timeline\">").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    for n in 0..3 {
        assert!(
            table.contains(&format!("evt_&#60;{n}&#62;")),
            "{n}, escaped: {table}"
        );
    }
    assert!(!table.contains("evt_<"), "{table}");
    assert_eq!(table.matches(" current\"").count(), 1, "{table}");
    assert!(page.body.contains("Every event about this object (3)"));
}

/// The rows of the list and of the overview are read as summaries, never
/// as whole events: over an inbox that reads no event whole (`page`,
/// `list` and `get` fail), the list shows its pages both ways and the
/// overview its dead events, each long error cut after its first
/// `SUMMARY_ERROR_CHARS` characters with `…`, escaped.
#[tokio::test]
async fn the_list_and_the_overview_read_summaries_not_bodies() {
    let inbox = MemoryInbox::new();
    let now = Timestamp::now().as_millis();
    // `<b>` and then enough to put characters of two, three and four bytes
    // around the cut: the 120th kept is `日`, the 121st (`🦀`) is not.
    let filler = "x".repeat(SUMMARY_ERROR_CHARS - 5);
    let long = format!("<b>{filler}é日🦀 and <i>the rest</i>");
    for n in 0..7 {
        let e = event(
            &format!("evt_<{n}>"),
            "order.succeeded",
            None,
            Some("order:<o1>"),
            now + n,
            now,
        );
        if n % 2 == 0 {
            inbox.insert_dead(&e, &long).await.unwrap();
        } else {
            inbox.insert(&e).await.unwrap();
        }
    }
    let inbox = Arc::new(Staged::summaries_only(inbox));
    let app = mounted(
        Console::with_token(Arc::clone(&inbox), TOKEN)
            .unwrap()
            .page_size(3)
            .unwrap(),
    );
    // The wrapper reads no event whole: the event page cannot be shown.
    assert_eq!(get(&app, "/console/events/1").await.status, 503);

    let cut = format!("<td class=\"error\">&#60;b&#62;{filler}é日…</td>");
    let errors = |page: &Page| page.body.matches(cut.as_str()).count();
    let overview = get(&app, "/console").await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    assert_eq!(listed(&overview), [7, 5, 3, 1], "{}", overview.body);
    assert_eq!(errors(&overview), 4, "{}", overview.body);
    assert!(
        overview.body.contains("evt_&#60;6&#62;"),
        "{}",
        overview.body
    );
    assert!(!overview.body.contains("<b>") && !overview.body.contains("🦀"));

    // Every page of the list, older then newer, each with the checks of
    // whether there is more on either side.
    let newest = get(&app, "/console/events").await;
    assert_eq!(newest.status, 200, "{}", newest.body);
    assert_eq!(listed(&newest), [7, 6, 5]);
    assert_eq!(errors(&newest), 2, "{}", newest.body);
    assert!(newest.body.contains("<td class=\"error\"></td>"));
    assert!(newest.link("← newer").is_none());
    let middle = get(&app, &newest.link("older →").unwrap()).await;
    assert_eq!(middle.status, 200, "{}", middle.body);
    assert_eq!(listed(&middle), [4, 3, 2]);
    assert_eq!(errors(&middle), 1, "{}", middle.body);
    let oldest = get(&app, &middle.link("older →").unwrap()).await;
    assert_eq!(oldest.status, 200, "{}", oldest.body);
    assert_eq!(listed(&oldest), [1]);
    assert!(oldest.link("older →").is_none());
    let back = get(&app, &oldest.link("← newer").unwrap()).await;
    assert_eq!(back.status, 200, "{}", back.body);
    assert_eq!(listed(&back), [4, 3, 2]);
    assert!(back.link("older →").is_some() && back.link("← newer").is_some());
    assert!(!back.body.contains("🦀") && !back.body.contains("<b>"));
}

/// A worker that replays and handles the event again between the
/// console's read of it and its replay: the confirmation, given for the
/// event as it was before, replays nothing and asks again, since the
/// console hands the inbox the state shown with the replay, not a check
/// of its own before it (that the inbox checks it in the same step is
/// `inbox::a_postgres_replay_if_that_waits_on_a_change_checks_the_pin_again`
/// and the conformance cases).
#[tokio::test]
async fn a_confirmation_hands_the_inbox_the_state_shown() {
    let memory = MemoryInbox::new();
    let now = Timestamp::now().as_millis();
    memory
        .insert(&event("evt_race", "order.succeeded", None, None, now, now))
        .await
        .unwrap();
    assert_eq!(run_next(&memory).await, 1);
    let inbox = Arc::new(Staged::new(memory));
    let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
    let shown = get(&app, "/console/events/1").await;
    let ask = post(&app, "/console/events/1/replay", &shown.action_form()).await;
    assert_eq!(ask.status, 200, "{}", ask.body);
    assert_eq!(ask.field("replays"), "0");

    // The console reads the event as confirmed; a worker then replays and
    // handles it before the console replays.
    *inbox.handle_after_get.lock().unwrap() = Some(1);
    let again = post(&app, "/console/events/1/replay", &ask.action_form()).await;
    assert!(inbox.handle_after_get.lock().unwrap().is_none(), "staged");
    let now = inbox.inner.get(1).await.unwrap().unwrap();
    assert_eq!(
        (now.status, now.replays),
        (InboxStatus::Done, 1),
        "only the worker's replay: the confirmed one did nothing"
    );
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(again.body.contains("id=\"asked-again\""), "{}", again.body);
    assert_eq!(again.field("replays"), "1");
    assert_eq!(
        again.field("handled"),
        now.handled_at.unwrap().as_millis().to_string()
    );

    // Confirmed for the event as it is now: replayed.
    let replayed = post(&app, "/console/events/1/replay", &again.action_form()).await;
    assert_eq!(replayed.status, 303, "{}", replayed.body);
    let entry = inbox.inner.get(1).await.unwrap().unwrap();
    assert_eq!((entry.status, entry.replays), (InboxStatus::Pending, 2));
}

/// A handled event's page, sent after the event was replayed and handled
/// again: the Replay asks to confirm for the event as it is now, saying
/// that it changed since the page, and the
/// confirmation pins what it shows (the new replays and handling), so
/// confirming it replays the event.
#[tokio::test]
async fn a_confirmation_page_pins_the_event_as_it_shows_it() {
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    inbox
        .insert(&event("evt_late", "order.succeeded", None, None, now, now))
        .await
        .unwrap();
    assert_eq!(run_next(&inbox).await, 1);
    let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
    let shown = get(&app, "/console/events/1").await;
    assert_eq!(shown.field("status"), "done");
    assert_eq!(shown.field("replays"), "0");
    assert_eq!(inbox.replay(1, true).await.unwrap(), Replayed::Replayed);
    assert_eq!(run_next(&inbox).await, 1);
    let handled = inbox.get(1).await.unwrap().unwrap();
    let ask = post(&app, "/console/events/1/replay", &shown.action_form()).await;
    assert_eq!(ask.status, 200, "{}", ask.body);
    // Saying that the event changed since the page.
    assert!(ask.body.contains("id=\"asked-again\""), "{}", ask.body);
    assert_eq!(ask.field("replays"), "1");
    assert_eq!(
        ask.field("handled"),
        handled.handled_at.unwrap().as_millis().to_string()
    );
    assert_eq!(inbox.get(1).await.unwrap().unwrap(), handled);
    let replayed = post(&app, "/console/events/1/replay", &ask.action_form()).await;
    assert_eq!(replayed.status, 303, "{}", replayed.body);
    let entry = inbox.get(1).await.unwrap().unwrap();
    assert_eq!((entry.status, entry.replays), (InboxStatus::Pending, 2));
}

/// Every replay form pins the event as its page showed it (status, replays,
/// handling), and the console replays with that pin: a second click on a
/// dead event's Replay, or a click from a page the event has moved on
/// from, replays nothing and says the event changed. Pending, retrying and
/// running events offer no replay (their page says why), and a form
/// pinning one is refused.
#[tokio::test]
async fn a_replay_holds_for_the_event_as_its_page_showed_it() {
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    for id in ["evt_dead_1", "evt_dead_2"] {
        inbox
            .insert_dead(&event(id, "order.succeeded", None, None, now, now), "boom")
            .await
            .unwrap();
    }
    let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
    let state = |seq: i64| {
        let inbox = Arc::clone(&inbox);
        async move {
            let entry = inbox.get(seq).await.unwrap().unwrap();
            (entry.status, entry.replays)
        }
    };

    // A double click: the first replays, the second changes nothing.
    let shown = get(&app, "/console/events/1").await;
    assert_eq!(shown.field("status"), "dead");
    let first = post(&app, "/console/events/1/replay", &shown.action_form()).await;
    assert_eq!(first.header("location"), "/console/events/1?done=replayed");
    let second = post(&app, "/console/events/1/replay", &shown.action_form()).await;
    assert_eq!(second.status, 303, "{}", second.body);
    assert_eq!(second.header("location"), "/console/events/1?done=changed");
    assert_eq!(state(1).await, (InboxStatus::Pending, 1));
    let page = get(&app, "/console/events/1?done=changed").await;
    assert!(page.body.contains("it was left as it is"), "{}", page.body);

    // A stale page: replayed elsewhere and dead again since.
    let stale = get(&app, "/console/events/2").await;
    assert_eq!(inbox.replay(2, false).await.unwrap(), Replayed::Replayed);
    // Event 1 is due first: take it, then event 2, and fail that one.
    assert_eq!(run_next(&inbox).await, 1);
    let claim = inbox
        .claim(Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .expect("event 2 is due");
    assert_eq!(
        inbox.fail(&claim, "boom again", None).await.unwrap(),
        Settle::Applied
    );
    assert_eq!(state(2).await, (InboxStatus::Dead, 1));
    let sent = post(&app, "/console/events/2/replay", &stale.action_form()).await;
    assert_eq!(sent.header("location"), "/console/events/2?done=changed");
    assert_eq!(state(2).await, (InboxStatus::Dead, 1));
    // A form without the pin replays nothing either.
    let bare = post(
        &app,
        "/console/events/2/replay",
        &format!("csrf={}", stale.csrf()),
    )
    .await;
    assert_eq!(bare.header("location"), "/console/events/2?done=changed");
    assert_eq!(state(2).await, (InboxStatus::Dead, 1));

    // Pending, retrying, running: no replay offered, and none taken.
    inbox
        .insert(&event("evt_new", "order.succeeded", None, None, now, now))
        .await
        .unwrap();
    let pending = get(&app, "/console/events/3").await;
    assert!(
        !pending.body.contains("<form class=\"action\""),
        "{}",
        pending.body
    );
    assert!(element(&pending, "no-replay").starts_with("Pending"));
    let claim = inbox
        .claim(Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .expect("event 3 is due");
    assert_eq!(claim.entry.seq, 3);
    let running = get(&app, "/console/events/3").await;
    assert!(element(&running, "no-replay").starts_with("Running"));
    let later = Timestamp::from_millis(now + 3_600_000);
    assert_eq!(
        inbox.fail(&claim, "later", Some(later)).await.unwrap(),
        Settle::Applied
    );
    let retrying = get(&app, "/console/events/3").await;
    assert!(!retrying.body.contains("<form class=\"action\""));
    assert!(element(&retrying, "no-replay").starts_with("Retrying"));
    for status in ["pending", "retrying", "running"] {
        let crafted = format!("csrf={}&status={status}&replays=0&handled=", stale.csrf());
        let refused = post(&app, "/console/events/3/replay", &crafted).await;
        assert_eq!(refused.status, 400, "{status}: {}", refused.body);
    }
    assert_eq!(state(3).await, (InboxStatus::Retrying, 0));
}

/// A confirmation whose pinned numbers are not as the page writes them
/// (`+0`, `00`) pins nothing: it replays nothing and asks again.
#[tokio::test]
async fn a_confirmation_with_numbers_not_as_written_replays_nothing() {
    let inbox = Arc::new(MemoryInbox::new());
    let now = Timestamp::now().as_millis();
    inbox
        .insert(&event("evt_forms", "order.succeeded", None, None, now, now))
        .await
        .unwrap();
    assert_eq!(run_next(&inbox).await, 1);
    let app = mounted(Console::with_token(Arc::clone(&inbox), TOKEN).unwrap());
    let shown = get(&app, "/console/events/1").await;
    let ask = post(&app, "/console/events/1/replay", &shown.action_form()).await;
    assert_eq!(ask.field("replays"), "0");
    let form = ask.action_form();
    let handled = ask.field("handled");
    for bent in [
        form.replace("replays=0", "replays=%2B0"),
        form.replace("replays=0", "replays=00"),
        form.replace(
            &format!("handled={handled}"),
            &format!("handled=0{handled}"),
        ),
    ] {
        assert_ne!(bent, form);
        let again = post(&app, "/console/events/1/replay", &bent).await;
        assert_eq!(again.status, 200, "{bent}: {}", again.body);
        assert!(again.body.contains("id=\"asked-again\""), "{}", again.body);
        let entry = inbox.get(1).await.unwrap().unwrap();
        assert_eq!(
            (entry.status, entry.replays),
            (InboxStatus::Done, 0),
            "{bent}"
        );
    }
    let replayed = post(&app, "/console/events/1/replay", &form).await;
    assert_eq!(replayed.status, 303, "{}", replayed.body);
}

/// A SQLite inbox in a directory of its own (in memory-backed `/dev/shm`
/// where there is one: these tests time reads, not disk flushes).
#[cfg(feature = "sqlite")]
fn sqlite_inbox() -> (clink_webhooks::store::SqliteInbox, std::path::PathBuf) {
    let shm = std::path::Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = parent.join(format!("clink-console-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    (
        clink_webhooks::store::SqliteInbox::open(dir.join("inbox.db")).unwrap(),
        dir,
    )
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn the_sqlite_inbox_answers_the_console() {
    let (inbox, dir) = sqlite_inbox();
    browsing_conforms(Arc::new(inbox)).await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// Three events about one object, for the tests of what summaries read.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn three_events(inbox: &dyn Inbox) {
    let now = Timestamp::now().as_millis();
    for n in 0..3 {
        inbox
            .insert(&event(
                &format!("evt_{n}"),
                "order.updated",
                None,
                Some("order:o1"),
                now + n,
                now,
            ))
            .await
            .unwrap();
    }
}

/// The SQLite inbox's summaries never read the body column: with every
/// body turned into what cannot be read as one (an integer where a blob
/// belongs), whole events no longer read, and their summaries do.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn the_sqlite_inbox_summarises_without_reading_bodies() {
    let (inbox, dir) = sqlite_inbox();
    three_events(&inbox).await;
    let object = InboxFilter::default().object_key("order:o1");
    let summaries = inbox
        .page_summaries(&object, PageStart::Newest, 10)
        .await
        .unwrap();
    assert_eq!(summaries.len(), 3);
    let unreadable = rusqlite::Connection::open(dir.join("inbox.db"))
        .unwrap()
        .execute("UPDATE clink_webhook_inbox SET body = 0", [])
        .unwrap();
    assert_eq!(unreadable, 3);
    assert!(inbox.page(&object, PageStart::Newest, 10).await.is_err());
    assert_eq!(
        inbox
            .page_summaries(&object, PageStart::Newest, 10)
            .await
            .unwrap(),
        summaries
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The PostgreSQL inbox's summaries do not select the body column: a role
/// that may read every column of the table but the body reads the
/// summaries, and cannot read whole events.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn the_postgres_inbox_summarises_without_selecting_bodies() {
    let _servers = crate::support::servers::shared().await;
    let url = crate::support::stores::server_url("DATABASE_URL");
    let table = format!("console_{}", unique().to_lowercase());
    let role = format!("no_bodies_{}", unique().to_lowercase());
    let owner = clink_webhooks::store::PostgresInbox::new(crate::support::stores::pg_pool(&url))
        .with_table(&table)
        .unwrap();
    owner.migrate().await.unwrap();
    three_events(&owner).await;
    let admin = crate::support::stores::pg_pool(&url).get().await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" NOLOGIN;
             DO $$ BEGIN
               EXECUTE (SELECT format('GRANT SELECT (%s) ON \"{table}\" TO \"{role}\"',
                                      string_agg(quote_ident(column_name), ', '))
                        FROM information_schema.columns
                        WHERE table_name = '{table}' AND column_name <> 'body');
             END $$;"
        ))
        .await
        .unwrap();
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.options(format!("-c role={role}"));
    let reader =
        clink_webhooks::store::PostgresInbox::new(crate::support::stores::pg_pool_for(config))
            .with_table(&table)
            .unwrap();

    let object = InboxFilter::default().object_key("order:o1");
    let whole = owner.page(&object, PageStart::Newest, 10).await.unwrap();
    assert_eq!(whole.len(), 3);
    let refused = reader
        .page(&object, PageStart::Newest, 10)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("cannot list"), "{refused}");
    for start in [PageStart::Newest, PageStart::After(whole[2].seq)] {
        assert_eq!(
            reader.page_summaries(&object, start, 10).await.unwrap(),
            owner
                .page(&object, start, 10)
                .await
                .unwrap()
                .iter()
                .map(InboxSummary::from)
                .collect::<Vec<_>>()
        );
    }
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON \"{table}\" FROM \"{role}\"; DROP ROLE \"{role}\";"
        ))
        .await
        .unwrap();
}

#[cfg(feature = "postgres")]
async fn postgres_inbox() -> clink_webhooks::store::PostgresInbox {
    let url = crate::support::stores::server_url("DATABASE_URL");
    let inbox = clink_webhooks::store::PostgresInbox::new(crate::support::stores::pg_pool(&url))
        .with_table(&format!("console_{}", unique().to_lowercase()))
        .unwrap()
        .with_timeout(Duration::from_secs(10))
        .unwrap();
    inbox.migrate().await.unwrap();
    inbox
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn the_postgres_inbox_answers_the_console() {
    let _servers = crate::support::servers::shared().await;
    browsing_conforms(Arc::new(postgres_inbox().await)).await;
}

/// Fills `inbox` with 10,000 events, numbered in order: five types, seven
/// accounts, 500 objects, one in ten dead, received one a second up to now.
async fn ten_thousand(inbox: &dyn Inbox) -> Timestamp {
    let now = Timestamp::now().as_millis();
    let types = [
        "order.succeeded",
        "order.created",
        "refund.succeeded",
        "invoice.paid",
        "session.completed",
    ];
    let start = Instant::now();
    for n in 0..10_000i64 {
        let at = now - (10_000 - n) * 1000;
        let e = event(
            &format!("evt_{n:05}"),
            types[usize::try_from(n % 5).unwrap()],
            Some(&format!("acct_{}", n % 7)),
            Some(&format!("order:o{}", n % 500)),
            at,
            at,
        );
        if n % 10 == 0 {
            inbox.insert_dead(&e, "boom").await.unwrap();
        } else {
            inbox.insert(&e).await.unwrap();
        }
    }
    eprintln!("10,000 events kept in {:?}", start.elapsed());
    Timestamp::from_millis(now)
}

/// Every filter and a walk through the pages, each with its inbox reads
/// done within the stores' default timeout (1 s): the console, given that
/// timeout, answers `503` to a page whose reads take longer, so a `200` is
/// the check (the time is printed, never asserted).
async fn pages_answer_in_time(inbox: Arc<dyn Inbox>, filled_at: Timestamp) {
    let console = Console::with_token(inbox, TOKEN)
        .unwrap()
        .timeout(clink_webhooks::store::DEFAULT_TIMEOUT)
        .unwrap();
    let app = mounted(console);
    let mut slowest = Duration::ZERO;
    let mut timed = async |path: &str| {
        let start = Instant::now();
        let page = get(&app, path).await;
        let took = start.elapsed();
        assert_eq!(page.status, 200, "{path} (in {took:?}): {}", page.body);
        slowest = slowest.max(took);
        page
    };
    let overview = timed("/console").await;
    assert!(
        overview.body.contains(">1000</span> dead"),
        "{}",
        overview.body
    );
    let first = timed("/console/events").await;
    assert_eq!(listed(&first)[0], 10_000);
    assert!(first.body.contains("<span id=\"matching\">10000</span>"));
    for (path, matching) in [
        ("/console/events?status=dead", 1000),
        ("/console/events?type=refund.succeeded", 2000),
        ("/console/events?account=acct_3", 1429),
        ("/console/events?object=order%3Ao7", 20),
        (
            "/console/events?status=pending&type=order.succeeded&account=acct_0",
            143,
        ),
        ("/console/events?before=20", 10_000),
        ("/console/events?after=9990", 10_000),
    ] {
        let page = timed(path).await;
        assert!(
            page.body
                .contains(&format!("<span id=\"matching\">{matching}</span>")),
            "{path}: {matching}"
        );
    }
    assert_eq!(
        listed(&timed("/console/events?before=20").await),
        (1..20).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        listed(&timed("/console/events?after=9990").await),
        (9991..=10_000).rev().collect::<Vec<_>>()
    );
    let page = timed("/console/events/5000").await;
    assert!(
        page.body.contains("Timeline of order:o499"),
        "{}",
        page.body
    );
    // Ten pages back, through the links.
    let mut page = first;
    for _ in 0..10 {
        let older = page.link("older →").unwrap();
        page = timed(&older).await;
    }
    assert_eq!(listed(&page)[0], 10_000 - 500);
    let minute_ago = Timestamp::from_millis(filled_at.as_millis() - 60_000);
    let page = timed(&format!("/console/events?from={}", minute_ago.as_millis())).await;
    assert_eq!(listed(&page).len(), 50);
    eprintln!("slowest page: {slowest:?}");
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_in_sqlite_page_within_the_store_timeout() {
    let (inbox, dir) = sqlite_inbox();
    let filled_at = ten_thousand(&inbox).await;
    pages_answer_in_time(Arc::new(inbox), filled_at).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_in_postgres_page_within_the_store_timeout() {
    let _servers = crate::support::servers::shared().await;
    let inbox = postgres_inbox().await;
    let filled_at = ten_thousand(&inbox).await;
    pages_answer_in_time(Arc::new(inbox), filled_at).await;
}

/// An inbox of the app's own that panics: in the future of `get`, or in
/// the call of `stats` itself.
struct PanickingInbox(MemoryInbox);

impl Inbox for PanickingInbox {
    delegate_inbox!(0: insert, insert_dead, claim, complete, fail, release, list, replay, replay_matching, purge, check_writable);
    fn get(&self, _: i64) -> BoxFuture<'_, Result<Option<InboxEntry>, StoreError>> {
        Box::pin(async { panic!("the test's inbox panics in get") })
    }
    fn stats(&self) -> BoxFuture<'_, Result<clink_webhooks::store::InboxStats, StoreError>> {
        panic!("the test's inbox panics in stats")
    }
}

/// A page whose inbox panics is answered: `503` for a call that panicked
/// while it answered (as for an inbox that failed), `500` for one that
/// panicked as it was called, the panic's message in neither. Before, the
/// panic ended the request's task and the connection closed unanswered.
#[tokio::test]
async fn a_page_whose_inbox_panics_is_answered() {
    let inbox = Arc::new(PanickingInbox(MemoryInbox::new()));
    let addr = serve(Console::with_token(inbox, TOKEN).unwrap()).await;
    for (path, status) in [("/console/events/1", 503), ("/console", 500)] {
        let page = over_http(addr, "GET", path, None).await;
        assert_eq!(page.status, status, "{path}: {}", page.body);
        assert!(page.body.contains("failed"), "{path}: {}", page.body);
        assert!(
            !page.body.contains("the test's inbox"),
            "{path}: {}",
            page.body
        );
    }
}
