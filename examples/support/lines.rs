//! Lines for stdout and stderr that never hold up the receiver.
//!
//! A write to stdout or stderr blocks once the pipe behind it is full and
//! nobody reads it (a log driver that stalls, a reader that stopped), and
//! holds the stream's lock meanwhile: every handler that prints, and every
//! task that logs, would then wait on it, until the receiver hangs, with
//! the effects of its handlers done and their claims never completed.
//! Here each stream has a thread of its own that writes, and a line is
//! handed to it without waiting: up to [`WAITING`] lines wait for a stream,
//! and a line that finds that many is dropped and counted. [`flush`], at
//! exit, writes the lines waiting for at most a while, and tells how many
//! were dropped.
//!
//! A receiver that includes this module with `#[macro_use]` has its
//! `eprintln!` go through the queue as well, so that its own lines
//! (`listening on`, `stopping`, `stopped`) and the log's keep their order
//! and never wait on stderr either. After [`flush`], lines are dropped.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

/// How many lines wait for a stream before more are dropped.
pub(crate) const WAITING: usize = 4096;

/// `eprintln!` through the queue: see the [module docs](self).
macro_rules! eprintln {
    ($($line:tt)*) => {
        $crate::lines::err(format_args!($($line)*))
    };
}

/// One stream's writer thread, and what it was handed.
struct Sink {
    sender: Mutex<Option<SyncSender<Vec<u8>>>>,
    /// Told by the thread once it has written everything handed to it.
    written: Mutex<Option<Receiver<()>>>,
    /// Lines written so far: a wait at exit goes on while they grow.
    lines_written: std::sync::Arc<AtomicU64>,
    dropped: AtomicU64,
}

/// `mutex`, locked, whether or not a thread panicked holding it.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sink {
    fn start(mut stream: impl Write + Send + 'static) -> Self {
        let (sender, lines) = sync_channel::<Vec<u8>>(WAITING);
        let (written, done) = sync_channel(1);
        let lines_written = std::sync::Arc::new(AtomicU64::new(0));
        let counted = std::sync::Arc::clone(&lines_written);
        std::thread::spawn(move || {
            for line in lines {
                // A stream closed (a terminal gone) drops the line.
                let _ = stream.write_all(&line);
                let _ = stream.flush();
                counted.fetch_add(1, Ordering::Relaxed);
            }
            let _ = written.send(());
        });
        Self {
            sender: Mutex::new(Some(sender)),
            written: Mutex::new(Some(done)),
            lines_written,
            dropped: AtomicU64::new(0),
        }
    }

    fn hand(&self, line: Vec<u8>) {
        if let Some(Err(TrySendError::Full(_))) = locked(&self.sender)
            .as_ref()
            .map(|sender| sender.try_send(line))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes no more lines: the thread ends once it has written those
    /// waiting.
    fn close(&self) {
        drop(locked(&self.sender).take());
    }

    /// Waits for the thread to write what waits, for as long as it writes
    /// a line at least every `stall` (a slow reader is waited for, one
    /// that stopped reading is not); whether it wrote everything.
    fn finish(&self, stall: Duration) -> bool {
        let Some(written) = locked(&self.written).take() else {
            return false;
        };
        let mut seen = self.lines_written.load(Ordering::Relaxed);
        loop {
            match written.recv_timeout(stall) {
                Ok(()) => return true,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let now = self.lines_written.load(Ordering::Relaxed);
                    if now == seen {
                        return false;
                    }
                    seen = now;
                }
            }
        }
    }
}

fn stdout_sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| Sink::start(std::io::stdout()))
}

fn stderr_sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| Sink::start(std::io::stderr()))
}

/// Prints `line` (and a line end) on stdout, without waiting for it.
pub(crate) fn out(line: impl std::fmt::Display) {
    stdout_sink().hand(format!("{line}\n").into_bytes());
}

/// Prints `line` (and a line end) on stderr, without waiting for it.
pub(crate) fn err(line: impl std::fmt::Display) {
    stderr_sink().hand(format!("{line}\n").into_bytes());
}

/// A writer for `tracing_subscriber::fmt().with_writer(lines::Stderr)`:
/// each log line goes to stderr without waiting for it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stderr;

impl Write for Stderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        stderr_sink().hand(bytes.to_vec());
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr
    }
}

/// At exit: writes the lines waiting, both streams at once, for as long
/// as each writes a line at least every `stall` (a stream nobody reads
/// keeps the process from exiting for `stall` at most), then says on
/// stderr how many lines were dropped, if any, once its thread has written
/// all it had: a stderr that stalled cannot take the note, and is not
/// written to.
pub(crate) fn flush(stall: Duration) {
    let sinks = [stdout_sink(), stderr_sink()];
    for sink in sinks {
        sink.close();
    }
    let drained = std::thread::scope(|scope| {
        let waits = sinks.map(|sink| scope.spawn(move || sink.finish(stall)));
        waits.map(|wait| wait.join().unwrap_or(false))
    });
    if drained[1] {
        for (stream, sink) in ["stdout", "stderr"].iter().zip(sinks) {
            let dropped = sink.dropped.load(Ordering::Relaxed);
            if dropped > 0 {
                let _ = writeln!(
                    std::io::stderr(),
                    "{dropped} lines for {stream} were dropped: nobody read it fast enough"
                );
            }
        }
    }
}
