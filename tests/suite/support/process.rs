//! Processes under test: started with their output read line by line on
//! background threads, waited for with timeouts as failure guards, and killed
//! when dropped.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long any one expected line or exit may take before the test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

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
    key: &str,
    store: Option<(&str, &str)>,
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
    let process = Process::start(&mut command);
    let store = Process::line_starting(&process.stderr, "idempotency store: ");
    let line = Process::line_starting(&process.stderr, "listening on ");
    let url = line["listening on ".len()..].to_owned();
    (process, url, store)
}

fn lines(reader: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running process whose stdout and stderr arrive as lines.
pub(crate) struct Process {
    child: Child,
    pub(crate) stdout: Receiver<String>,
    pub(crate) stderr: Receiver<String>,
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
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
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
        let status = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed: {status:?}");
        self.finish()
    }

    /// Waits for the process to exit and collects what it printed.
    pub(crate) fn finish(mut self) -> Finished {
        let deadline = Instant::now() + PATIENCE;
        let stdout = drain(&self.stdout, deadline);
        let stderr = drain(&self.stderr, deadline);
        // Both pipes closed: the process has exited or is exiting.
        let code = self.child.wait().unwrap().code();
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
    }
}
