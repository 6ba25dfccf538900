//! A headless Chromium driven over the DevTools protocol, just enough to
//! open pages, read them and click on them as a person would: a WebSocket
//! client over a plain TCP stream (text frames, masked as a client must),
//! one page, commands answered in order.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long any one wait in the browser may take.
const WAIT: Duration = Duration::from_secs(60);

/// A running Chromium and a DevTools connection to its one page.
pub(super) struct Chrome {
    child: Child,
    socket: TcpStream,
    next_id: u64,
}

impl Drop for Chrome {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Chrome {
    /// Starts `bin` headless with a new profile in `profile` and connects
    /// to its page.
    pub(super) fn start(bin: &str, profile: &Path, flags: &[&str]) -> Self {
        let child = Command::new(bin)
            .args(flags)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--remote-debugging-port=0", "about:blank"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        // Chromium writes its port into the profile once it listens.
        let deadline = Instant::now() + WAIT;
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(profile.join("DevToolsActivePort")) {
                if let Some(port) = text
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse::<u16>().ok())
                {
                    break port;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let page = loop {
            let targets = http_get(port, "/json/list");
            let targets: Value = serde_json::from_str(&targets).unwrap_or(Value::Null);
            let page = targets.as_array().and_then(|list| {
                list.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            });
            if let Some(page) = page {
                break page;
            }
            assert!(Instant::now() < deadline, "chromium has no page: {targets}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let path = &page[page.find("/devtools/").unwrap()..];
        let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: Y2xpbmstY29uc29sZS10ZXN0\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(socket.try_clone().unwrap());
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.contains(" 101 "), "no WebSocket: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        assert!(
            reader.buffer().is_empty(),
            "a frame came before it was asked for"
        );
        let mut chrome = Self {
            child,
            socket,
            next_id: 0,
        };
        chrome.call("Page.enable", &json!({}));
        chrome
    }

    /// Sends one command and returns its result, skipping the events
    /// that come meanwhile.
    pub(super) fn call(&mut self, method: &str, params: &Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|reply| panic!("{method} failed: {reply}"))
    }

    /// [`call`](Self::call), with an error answer given back.
    fn try_call(&mut self, method: &str, params: &Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.send_frame(message.as_bytes());
        loop {
            let reply: Value = serde_json::from_slice(&self.read_message()).unwrap();
            if reply["id"] == id {
                if reply.get("error").is_some() {
                    return Err(reply);
                }
                return Ok(reply["result"].clone());
            }
        }
    }

    fn send_frame(&mut self, payload: &[u8]) {
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | u8::try_from(n).unwrap()),
            n if n <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x5a, 0x1c, 0xe3, 0x07];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.socket.write_all(&frame).unwrap();
    }

    /// One whole message: its frames' payloads, joined.
    fn read_message(&mut self) -> Vec<u8> {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.socket.read_exact(&mut head).unwrap();
            let len = match head[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.socket.read_exact(&mut n).unwrap();
                    u64::from(u16::from_be_bytes(n))
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.socket.read_exact(&mut n).unwrap();
                    u64::from_be_bytes(n)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len).unwrap()];
            self.socket.read_exact(&mut payload).unwrap();
            match head[0] & 0x0f {
                // Text, binary or a continuation: part of the message.
                0..=2 => message.extend_from_slice(&payload),
                8 => panic!("chromium closed the DevTools connection"),
                // Ping and pong: not part of it.
                _ => continue,
            }
            if head[0] & 0x80 != 0 {
                return message;
            }
        }
    }

    /// The value of a JavaScript expression evaluated in the page.
    ///
    /// When a navigation replaces the document while the expression runs
    /// (the page a click leads to loading on a slow machine), Chromium
    /// answers "Inspected target navigated or closed": the expression is
    /// then evaluated again, in the new document.
    pub(super) fn eval(&mut self, expression: &str) -> Value {
        let params = json!({"expression": expression, "returnByValue": true});
        let deadline = Instant::now() + WAIT;
        loop {
            match self.try_call("Runtime.evaluate", &params) {
                Ok(result) => return result["result"]["value"].clone(),
                Err(reply)
                    if reply["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("navigated or closed"))
                        && Instant::now() < deadline => {}
                Err(reply) => panic!("Runtime.evaluate failed: {reply}"),
            }
        }
    }

    /// Marks the page now shown, so that a wait can tell when another one
    /// has replaced it.
    fn mark(&mut self) {
        self.eval("window.clinkTestMark = true");
    }

    /// Whether the marked page was replaced by another, now loaded.
    fn replaced(&mut self) -> bool {
        self.eval("window.clinkTestMark === undefined && document.readyState === 'complete'")
            == true
    }

    /// Opens `url` and waits for the page (after any redirect) to load.
    pub(super) fn open(&mut self, url: &str) {
        self.mark();
        self.call("Page.navigate", &json!({"url": url}));
        self.wait_for(&format!("{url} to load"), Self::replaced);
    }

    /// Waits until `done` holds, checking every 50 ms.
    pub(super) fn wait_for(&mut self, what: &str, mut done: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The page's markup as the browser holds it now.
    pub(super) fn dom(&mut self) -> String {
        self.eval("document.documentElement.outerHTML")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Clicks, with the mouse, the middle of the first element matching
    /// `selector`, and waits for the page it leads to (its URL ends with
    /// `lands_on`) to load.
    pub(super) fn click(&mut self, selector: &str, lands_on: &str) {
        let rect = self.eval(&format!(
            "(function () {{ const e = document.querySelector({selector:?}); if (!e) return null; \
             e.scrollIntoView(); const r = e.getBoundingClientRect(); \
             return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()"
        ));
        assert!(
            rect.is_object(),
            "nothing on the page matches {selector}: {}",
            self.dom()
        );
        self.mark();
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call("Input.dispatchMouseEvent", &json!({"type": kind, "x": rect["x"], "y": rect["y"], "button": "left", "clickCount": 1}),
            );
        }
        self.wait_for(&format!("a page at {lands_on}"), |chrome| {
            chrome.replaced()
                && chrome
                    .eval("location.href")
                    .as_str()
                    .is_some_and(|href| href.ends_with(lands_on))
        });
    }
}

/// The body of `GET path` on the DevTools port (read to its length: the
/// port keeps the connection open).
fn http_get(port: u16, path: &str) -> String {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream);
    let _ = write!(
        reader.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    );
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return String::new();
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}
