//! Processes under test: started with their output read line by line on
//! background threads, waited for with timeouts as failure guards, and killed
//! when dropped.
//!
//! Everything a process prints is also kept, and checked once it has exited
//! (in [`Process::finish`], or when it is dropped) for the signing keys it
//! was given (`CLINK_WEBHOOK_SIGNING_KEY`, `CLINK_TENANT_KEYS`, `--secret`)
//! in any of their [forms](super::secrets::forms): a key must never be
//! printed.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::secrets;

/// How long any one expected line or exit may take before the test fails.
/// It only bounds a hang (a line that never comes, a process that never
/// exits), so it is far longer than a slow, busy machine needs: tests that
/// check how soon something happens measure that themselves.
pub(crate) const PATIENCE: Duration = Duration::from_secs(300);

/// An example binary, built by `cargo test` next to the test binaries.
pub(crate) fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = target.join("examples").join(name);
    assert!(
        path.exists(),
        "{} was not built; run `cargo test`, which builds examples",
        path.display()
    );
    path
}

/// The README's example receiver on a free port, verifying with `key`, and
/// the URL it announced. Its idempotency store is in memory, whatever store
/// URLs this process's environment holds.
pub(crate) fn example_receiver(key: &str) -> (Process, String) {
    let (process, url, _) = example_receiver_with_store(key, None);
    (process, url)
}

/// The example receiver with its idempotency store where `store` says
/// (`("REDIS_URL", url)` or `("DATABASE_URL", url)`; `None` for memory), the
/// URL it announced, and the store it reported.
pub(crate) fn example_receiver_with_store(
    key: &str, store: Option<(&str, &str)>,
) -> (Process, String, String) {
    example_receiver_with_env(key, store, &[])
}

/// [`example_receiver_with_store`], with `env` set too.
pub(crate) fn example_receiver_with_env(
    key: &str, store: Option<(&str, &str)>, env: &[(&str, &str)],
) -> (Process, String, String) {
    let mut command = Command::new(example_path("axum_receiver"));
    command
        .env("PORT", "0")
        .env("CLINK_WEBHOOK_SIGNING_KEY", key)
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL");
    if let Some((var, url)) = store {
        command.env(var, url);
    }
    for (var, value) in env {
        command.env(var, value);
    }
    let process = Process::start(&mut command);
    let store = Process::line_starting(&process.stderr, "idempotency store: ");
    let line = Process::line_starting(&process.stderr, "listening on ");
    let url = line["listening on ".len()..].to_owned();
    (process, url, store)
}

/// The base URL (`http://127.0.0.1:PORT`) of an example receiver's admin
/// address, where it serves `/health`, `/metrics` and the console: the line
/// it prints right after `listening on ...`, which the functions above have
/// read.
pub(crate) fn admin_url(process: &Process) -> String {
    let line = Process::line_starting(&process.stderr, "admin listening on ");
    line["admin listening on ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .to_owned()
}

/// Output kept for the key check: every line, and whether the stream ended.
#[derive(Default)]
struct Kept {
    text: String,
    ended: bool,
}

fn lines(reader: impl Read + Send + 'static, kept: Arc<Mutex<Kept>>) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let keep = |line: &str| {
            let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
            kept.text.push_str(line);
            kept.text.push('\n');
        };
        let mut listening = true;
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            keep(&line);
            // Keep reading after the test stops listening, to see it all.
            if listening && tx.send(line).is_err() {
                listening = false;
            }
        }
        kept.lock().unwrap_or_else(PoisonError::into_inner).ended = true;
    });
    rx
}

/// The signing keys and API keys `command` hands its process.
fn keys_given(command: &Command) -> Vec<String> {
    let env = |name: &str| {
        command
            .get_envs()
            .find(|(var, _)| *var == OsStr::new(name))
            .and_then(|(_, value)| value)
            .map(|value| value.to_string_lossy().into_owned())
    };
    // Each secret of a list, as it is read, and the list as given.
    let each = |list: String| {
        let mut keys: Vec<String> = list.split(',').map(|key| key.trim().to_owned()).collect();
        keys.push(list);
        keys
    };
    let mut keys = Vec::new();
    keys.extend(env("CLINK_WEBHOOK_SIGNING_KEY").into_iter().flat_map(each));
    if let Some(api_keys) = env("CLINK_SECRET_KEY") {
        keys.extend(api_keys.split(',').map(|key| key.trim().to_owned()));
    }
    if let Some(tenants) = env("CLINK_TENANT_KEYS") {
        keys.extend(
            tenants
                .split(',')
                .filter_map(|pair| pair.split_once('=').map(|(_, key)| key.to_owned())),
        );
    }
    let args: Vec<_> = command.get_args().map(OsStr::to_string_lossy).collect();
    for pair in args.windows(2).filter(|pair| pair[0] == "--secret") {
        match pair[1].strip_prefix("env:") {
            Some(var) => keys.extend(env(var).into_iter().flat_map(each)),
            None => keys.extend(each(pair[1].clone().into_owned())),
        }
    }
    keys.retain(|key| !key.is_empty());
    keys
}

/// A running process whose stdout and stderr arrive as lines.
pub(crate) struct Process {
    child: Child,
    pub(crate) stdout: Receiver<String>,
    pub(crate) stderr: Receiver<String>,
    /// All of stdout and stderr so far, for the key check.
    kept: [Arc<Mutex<Kept>>; 2],
    keys: Vec<String>,
}

/// A process that has exited, with all it printed.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    #[cfg_attr(not(feature = "cli"), allow(dead_code))] // read by the CLI tests
    pub(crate) stderr: String,
}

impl Process {
    /// Starts `command` with stdin closed and stdout and stderr piped.
    pub(crate) fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {command:?}: {e}"));
        let kept = [Arc::default(), Arc::default()];
        let stdout = lines(child.stdout.take().unwrap(), Arc::clone(&kept[0]));
        let stderr = lines(child.stderr.take().unwrap(), Arc::clone(&kept[1]));
        Self {
            child,
            stdout,
            stderr,
            kept,
            keys: keys_given(command),
        }
    }

    /// Checks all the process printed for the keys it was given, once both
    /// streams have ended (or, should something else hold them open, with
    /// what came within [`PATIENCE`] of the process's exit).
    fn check_output_for_keys(&self) {
        let deadline = Instant::now() + PATIENCE;
        let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        for (kept, name) in self.kept.iter().zip(["stdout", "stderr"]) {
            loop {
                let kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
                if kept.ended || Instant::now() >= deadline {
                    secrets::assert_no_key(&format!("the process's {name}"), &kept.text, &keys);
                    break;
                }
                drop(kept);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The process id, for signals.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// The next line on stdout.
    pub(crate) fn next_stdout(&self) -> String {
        next(&self.stdout, "stdout")
    }

    /// The first line on `stream` that starts with `prefix`, skipping others.
    pub(crate) fn line_starting(stream: &Receiver<String>, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stream.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line starting with {prefix:?} within {PATIENCE:?}: {e}"),
            }
        }
    }

    /// Sends SIGTERM, then waits for the process to exit.
    #[cfg(unix)]
    pub(crate) fn terminate(self) -> Finished {
        self.signal("TERM");
        self.finish()
    }

    /// Sends the signal `name` (`INT`, `TERM`, `HUP`).
    #[cfg(unix)]
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed: {status:?}");
    }

    /// Waits for the process to exit and collects what it printed.
    pub(crate) fn finish(mut self) -> Finished {
        let deadline = Instant::now() + PATIENCE;
        let stdout = drain(&self.stdout, deadline);
        let stderr = drain(&self.stderr, deadline);
        // Both pipes closed: the process has exited or is exiting.
        let code = self.child.wait().unwrap().code();
        self.check_output_for_keys();
        Finished {
            code,
            stdout,
            stderr,
        }
    }
}

fn next(stream: &Receiver<String>, name: &str) -> String {
    stream
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|e| panic!("no line on {name} within {PATIENCE:?}: {e}"))
}

/// Every line until the stream closes (the process exited), joined.
fn drain(stream: &Receiver<String>, deadline: Instant) -> String {
    let mut text = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.recv_timeout(left) {
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
            }
            Err(RecvTimeoutError::Disconnected) => return text,
            Err(RecvTimeoutError::Timeout) => {
                panic!("the output did not end within {PATIENCE:?}; so far:\n{text}")
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            self.check_output_for_keys();
        }
    }
}

/// A delivery in progress at `url` (`http://127.0.0.1:PORT/PATH`), signed
/// with `key`: its head, with `Expect: 100-continue`, and the first half of
/// its body are sent, and it is returned once the receiver's `100 Continue`
/// says that it has the request and is reading its body. The delivery stays
/// in progress while the connection is held.
pub(crate) fn delivery_in_progress(url: &str, key: &str) -> std::net::TcpStream {
    use std::io::Write;

    let body = r#"{"id":"evt_held","type":"risk_rule.updated","data":{}}"#;
    let request = clink_webhooks::testing::SignedRequest::new(key, body.to_owned())
        .build::<http_body_util::Full<bytes::Bytes>>();
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\n",
        body.len()
    );
    for (name, value) in request.headers() {
        if name != http::header::CONTENT_LENGTH && name != http::header::HOST {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
        }
    }
    head.push_str("\r\n");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .unwrap();
    let mut answer = Vec::new();
    let mut byte = [0; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        let read = stream.read(&mut byte).unwrap();
        assert_eq!(
            read,
            1,
            "the connection closed: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.push(byte[0]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 100 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    stream
}
