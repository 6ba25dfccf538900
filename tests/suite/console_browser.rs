//! The inbox console in a real browser: headless Chromium from Debian's
//! packages (`scripts/services.sh` installs it and exports
//! `CLINK_TEST_CHROMIUM`), against the example receiver as a process with
//! a SQLite inbox, fed by the `clink-webhook` CLI.
//!
//! Two ways of driving it: Chromium's own flags, one process per look with
//! a new empty profile (`--dump-dom` for the page as the browser built it,
//! after its script ran; `--screenshot` for a picture), each look opening
//! the page with `?token=` and so going through the session cookie; and,
//! for the clicks, one Chromium driven over the DevTools protocol
//! (`console_browser/cdp.rs`), whose mouse presses the page's buttons.
//!
//! `CLINK_CONSOLE_SCREENSHOTS=DIR` keeps the screenshots taken (the README's
//! comes from there).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::process::{admin_url, example_receiver_with_env, PATIENCE};

mod cdp;

use cdp::Chrome;

/// The flags every Chromium of these tests runs with.
const HEADLESS: [&str; 11] = [
    "--headless",
    "--no-sandbox",
    // A container's /dev/shm (64 MiB by default) is too small for it.
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,900",
];

const KEY: &str = "whsec_console_browser_test";
const TOKEN: &str = "console-browser-token-0123456789";

/// The Chromium to drive: `CLINK_TEST_CHROMIUM`, or `chromium` on `PATH`.
fn chromium() -> String {
    if let Ok(path) = std::env::var("CLINK_TEST_CHROMIUM") {
        if !path.trim().is_empty() {
            return path;
        }
    }
    let found = Command::new("sh")
        .args(["-c", "command -v chromium || command -v chromium-browser"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    found.unwrap_or_else(|| {
        panic!(
            "this test needs headless Chromium: run scripts/test or scripts/with-services (they \
             install Debian's chromium package), or `apt-get install chromium`, or point \
             CLINK_TEST_CHROMIUM at one"
        )
    })
}

/// A directory of the test's own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "clink-console-browser-{}-{}",
            std::process::id(),
            clink_webhooks::store::LeaseToken::generate().as_str()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Headless Chromium, one process per look.
struct Browser {
    bin: String,
    dir: TempDir,
    runs: AtomicUsize,
}

impl Browser {
    /// Runs Chromium on `url` with `args`, in a new empty profile, and
    /// returns its stdout.
    fn run(&self, url: &str, args: &[&str]) -> String {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let profile = self.dir.0.join(format!("profile-{n}"));
        let mut child = Command::new(&self.bin)
            .args(HEADLESS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin));
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "chromium on {url} exited with {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish {url} within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        reader.join().unwrap()
    }

    /// The page at `url` as the browser built it, once its scripts had two
    /// seconds to run.
    fn dom(&self, url: &str) -> String {
        self.run(url, &["--virtual-time-budget=2000", "--dump-dom"])
    }

    /// A screenshot of the page at `url`, 1280 x 900, as PNG bytes, kept
    /// in `CLINK_CONSOLE_SCREENSHOTS` as `name` when that is set.
    fn screenshot(&self, url: &str, name: &str) -> Vec<u8> {
        let file = self.dir.0.join(name);
        self.run(url, &[&format!("--screenshot={}", file.display())]);
        let png = std::fs::read(&file).unwrap();
        if let Ok(keep) = std::env::var("CLINK_CONSOLE_SCREENSHOTS") {
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::write(Path::new(&keep).join(name), &png).unwrap();
        }
        png
    }
}

/// A PNG's width and height, from its header.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

/// A server on another port of this machine: `/attack` is a page that
/// posts a form to the console without its CSRF token; every other path
/// counts as a hit (a script that ran, an image that loaded).
struct Elsewhere {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Elsewhere {
    fn start(attack: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&hits);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = [0u8; 4096];
                let n = stream.read(&mut head).unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..n]);
                let body = if head.starts_with("GET /attack ") {
                    attack.clone()
                } else {
                    counted.fetch_add(1, Ordering::SeqCst);
                    String::new()
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { port, hits }
    }
}

/// The next line on `stream` that contains `text`.
fn line_containing(stream: &Receiver<String>, text: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {text:?} within {PATIENCE:?}: {e}"),
        }
    }
}

/// Sends one event with the CLI.
fn send(url: &str, args: &[&str]) {
    let output = Command::new(env!("CARGO_BIN_EXE_clink-webhook"))
        .env("CLINK_WEBHOOK_SIGNING_KEY", KEY)
        .arg("send")
        .args(args)
        .args(["--to", url, "--quiet"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "clink-webhook send {args:?}: {output:?}"
    );
}

/// `GET` or `POST` over plain HTTP/1.1: the status, the headers and the body.
fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head[9..12].parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// The `<tr>` of the events table that lists `seq`.
fn row(dom: &str, seq: i64) -> &str {
    let marker = format!("data-seq=\"{seq}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no row for event {seq} in {dom}"));
    let start = dom[..at].rfind("<tr").unwrap();
    let end = at + dom[at..].find("</tr>").unwrap();
    &dom[start..end]
}

/// The number of the event listed with `id` (as the page shows it).
fn seq_of(dom: &str, id: &str) -> i64 {
    let at = dom
        .find(id)
        .unwrap_or_else(|| panic!("{id} is not listed in {dom}"));
    let marker = "data-seq=\"";
    let seq_at = dom[..at].rfind(marker).unwrap() + marker.len();
    dom[seq_at..seq_at + dom[seq_at..].find('"').unwrap()]
        .parse()
        .unwrap()
}

#[test]
fn the_console_in_a_real_browser_lists_replays_and_runs_no_script() {
    let browser = Browser {
        bin: chromium(),
        dir: TempDir::new(),
        runs: AtomicUsize::new(0),
    };
    let dir = TempDir::new();
    let inbox = format!("sqlite:{}", dir.0.join("inbox.db").display());
    let (receiver, url, _) = example_receiver_with_env(
        KEY,
        None,
        &[
            ("CLINK_INBOX", &inbox),
            ("CLINK_CONSOLE_TOKEN", TOKEN),
            ("CLINK_INBOX_MAX_ATTEMPTS", "1"),
            ("CLINK_INBOX_REORDER_MS", "0"),
            ("CLINK_EXAMPLE_FAIL_ONCE", "refund.failed"),
            ("RUST_LOG", "warn,clink_webhooks::console=info"),
        ],
    );
    let console = format!("{}/console", admin_url(&receiver));
    let login = |path: &str| {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{console}{path}{sep}token={TOKEN}")
    };

    // A page elsewhere, posting the replay form without the CSRF token.
    let attack_form = || {
        format!(
            r#"<!doctype html><html><head><title>elsewhere</title></head><body>
<form id="f" method="post" action="{console}/events/REPLACE_SEQ/replay"><input type="hidden" name="force" value="yes"></form>
<script>
fetch("{login}", {{mode: "no-cors", credentials: "include"}})
  .then(function () {{ return fetch(document.getElementById("f").action, {{method: "POST", mode: "no-cors",
     credentials: "include", body: new URLSearchParams(new FormData(document.getElementById("f")))}}); }})
  .then(function () {{ document.title = "posted"; }}, function () {{ document.title = "failed"; }});
</script></body></html>"#,
            login = login(""),
        )
    };
    // A signed event with a script in its id and its metadata, which would
    // call this server if it ran.
    let elsewhere = Elsewhere::start(String::new());
    let beacon = format!("http://127.0.0.1:{}", elsewhere.port);
    let script = format!("<script>document.title='pwned';fetch('{beacon}/script')</script>");
    let evil_id = format!("evt_{script}");
    let fixture = Command::new(env!("CARGO_BIN_EXE_clink-webhook"))
        .args(["fixture", "order.succeeded"])
        .output()
        .unwrap();
    let mut body: serde_json::Value = serde_json::from_slice(&fixture.stdout).unwrap();
    body["id"] = serde_json::Value::String(evil_id);
    body["data"]["orderId"] = serde_json::Value::String("ord_script".to_owned());
    body["data"]["metadata"] = serde_json::json!({
        "note": script,
        "img": format!("<img src=\"{beacon}/img\" onerror=\"document.title='pwned'\">"),
    });
    let body_file = dir.0.join("evil.json");
    std::fs::write(&body_file, body.to_string()).unwrap();

    for event_type in ["order.created", "order.succeeded", "refund.failed"] {
        send(&url, &[event_type]);
    }
    send(
        &url,
        &[
            "order.succeeded",
            "--body-file",
            body_file.to_str().unwrap(),
        ],
    );
    for _ in 0..3 {
        let line = receiver.next_stdout();
        assert!(line.starts_with("handled "), "{line}");
    }
    line_containing(&receiver.stderr, "inbox: the event is dead");

    // Without the token: 401, and nothing of the inbox.
    let (status, head, _) = http("GET", &format!("{console}/events"), &[], "");
    assert_eq!(status, 401, "{head}");
    let denied = browser.dom(&format!("{console}/events"));
    assert!(denied.contains("401 Unauthorized"), "{denied}");
    assert!(
        !denied.contains("evt_") && !denied.contains("refund"),
        "{denied}"
    );

    // The list: every event with its status, the dead one with its error.
    let list = browser.dom(&login("/events"));
    assert!(
        list.contains("<title>Events · Clink inbox</title>"),
        "{list}"
    );
    let dead_seq = seq_of(&list, "evt_refund_failed_test");
    for (id, status) in [
        ("evt_order_created_test", "done"),
        ("evt_order_succeeded_test", "done"),
        ("evt_refund_failed_test", "dead"),
    ] {
        let row = row(&list, seq_of(&list, id));
        assert!(
            row.contains(&format!("class=\"status status-{status}\"")),
            "{id}: {row}"
        );
    }
    assert!(
        row(&list, dead_seq).contains("simulated failure"),
        "{}",
        row(&list, dead_seq)
    );
    assert!(list.contains("4</span> matching events"), "{list}");
    // The script ran: the auto-refresh toggle it shows is visible.
    assert!(
        list.contains("<label class=\"refresh\"><input type=\"checkbox\" id=\"auto-refresh\">"),
        "{list}"
    );

    // Screenshots of the table and the overview, checked for content.
    let png = browser.screenshot(&login("/events"), "console-events.png");
    assert_eq!(png_size(&png), (1280, 900));
    assert!(
        png.len() > 20_000,
        "a near-empty screenshot: {} bytes",
        png.len()
    );
    let png = browser.screenshot(&login(""), "console-overview.png");
    assert_eq!(png_size(&png), (1280, 900));
    assert!(
        png.len() > 20_000,
        "a near-empty screenshot: {} bytes",
        png.len()
    );

    // The dead event's page shows its error and a replay button.
    let page = browser.dom(&login(&format!("/events/{dead_seq}")));
    assert!(
        page.contains("<pre id=\"last-error\">dead after 1 attempts"),
        "{page}"
    );
    assert!(page.contains("simulated failure: the first run of every refund.failed event fails"));
    assert!(page.contains(">Replay</button>"), "{page}");

    // A page elsewhere (another port of this host: the same site, another
    // origin) that posts the replay form with the browser's session
    // cookie, but without the CSRF token: refused for where it came from,
    // as the browser says (`Sec-Fetch-Site: same-site`).
    let attack = Elsewhere::start(attack_form().replace("REPLACE_SEQ", &dead_seq.to_string()));
    let attacked = browser.dom(&format!("http://127.0.0.1:{}/attack", attack.port));
    assert!(attacked.contains("<title>posted</title>"), "{attacked}");
    line_containing(
        &receiver.stderr,
        "console: a form sent from another origin was refused",
    );
    let page = browser.dom(&login(&format!("/events/{dead_seq}")));
    assert!(page.contains("class=\"status status-dead\""), "{page}");

    // The replay button, clicked with the mouse in a browser whose session
    // comes from `?token=` once: the example runs the event, and the page
    // shows it done.
    let mut chrome = Chrome::start(&browser.bin, &browser.dir.0.join("devtools"), &HEADLESS);
    let event_page = format!("{console}/events/{dead_seq}");
    chrome.open(&login(&format!("/events/{dead_seq}")));
    assert!(chrome.dom().contains("class=\"status status-dead\""));
    chrome.click(
        "form.action button",
        &format!("/events/{dead_seq}?done=replayed"),
    );
    assert!(chrome
        .dom()
        .contains("Replayed: the event is pending again."));
    assert_eq!(
        receiver.next_stdout(),
        "handled refund.failed evt_refund_failed_test"
    );
    line_containing(&receiver.stderr, "action=\"replay\"");
    chrome.wait_for("the page to show the event done", |chrome| {
        chrome.open(&event_page);
        chrome.dom().contains("class=\"status status-done\"")
    });
    assert!(chrome.dom().contains("<dt>replays</dt><dd>1</dd>"));

    // Handled now: Replay asks again first, and runs nothing until the
    // second click.
    chrome.click("form.action button", &format!("/events/{dead_seq}/replay"));
    let confirm = chrome.dom();
    assert!(
        confirm.contains("runs its handler a second time"),
        "{confirm}"
    );
    chrome.open(&event_page);
    assert!(
        chrome.dom().contains("<dt>replays</dt><dd>1</dd>"),
        "replayed before the confirmation"
    );
    chrome.click("form.action button", &format!("/events/{dead_seq}/replay"));
    chrome.click(
        "button.danger",
        &format!("/events/{dead_seq}?done=replayed"),
    );
    assert_eq!(
        receiver.next_stdout(),
        "handled refund.failed evt_refund_failed_test"
    );
    chrome.wait_for("the page to show it done again", |chrome| {
        chrome.open(&event_page);
        let dom = chrome.dom();
        dom.contains("class=\"status status-done\"") && dom.contains("<dt>replays</dt><dd>2</dd>")
    });

    // The event with a script in its id and metadata: shown as text,
    // nothing run, nothing loaded.
    let evil_seq = seq_of(&list, "evt_&lt;script&gt;document.title=");
    for path in [
        format!("/events/{evil_seq}"),
        "/events".to_owned(),
        String::new(),
    ] {
        chrome.open(&format!("{console}{path}"));
        // The injected script sets the title before anything else, as
        // the page is parsed: read once the page has loaded.
        let title = chrome.eval("document.title");
        assert!(
            title
                .as_str()
                .is_some_and(|t| t.ends_with(" · Clink inbox")),
            "{path}: the title is {title}"
        );
        assert_eq!(
            chrome.eval("document.querySelectorAll('main script, main img').length"),
            0
        );
    }
    chrome.open(&format!("{console}/events/{evil_seq}"));
    let page = chrome.dom();
    assert!(!page.contains("<script>document"), "{page}");
    assert!(!page.contains("<img src"), "{page}");
    assert!(
        page.contains("evt_&lt;script&gt;document.title='pwned';fetch("),
        "{page}"
    );
    assert!(page.contains("&lt;img src=\\\"http://127.0.0.1:"), "{page}");
    assert_eq!(
        elsewhere.hits.load(Ordering::SeqCst),
        0,
        "a script ran or an image loaded"
    );
    drop(receiver);
}
