//! `listen`'s lines on stdout, written by a thread of their own: a stdout
//! nobody reads (a pipe whose reader stopped, a terminal on hold) never
//! holds up a delivery, nor the runtime that answers Ctrl-C.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::output::Output;

/// The most text queued for stdout; lines past it are dropped, and counted.
pub(crate) const MAX_QUEUED_BYTES: usize = 1024 * 1024;

/// Lines for stdout, queued up to [`MAX_QUEUED_BYTES`] and written in order
/// by a thread of their own. Clones share the queue.
#[derive(Clone)]
pub(crate) struct Lines {
    shared: Arc<Shared>,
    /// Whether notes on stderr are JSON objects.
    json: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// A line queued, or the queue closed: for the writer.
    queued: Condvar,
    /// A line written, or the writer gone: for [`Lines::finish`].
    written: Condvar,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<String>,
    bytes: usize,
    /// Whether the writer holds a line it is writing.
    writing: bool,
    /// Lines dropped: the queue was full, or stdout closed.
    dropped: u64,
    /// No line is taken any more; the writer ends once the queue is empty.
    closed: bool,
    /// The writer has ended (stdout refused a write, or the queue closed).
    gone: bool,
}

impl Lines {
    /// A queue and its writer thread; `json` for the note on stderr when
    /// lines are first dropped.
    pub(crate) fn start(json: bool) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
            written: Condvar::new(),
        });
        let writer = Arc::clone(&shared);
        let started = std::thread::Builder::new()
            .name("listen-stdout".to_owned())
            .spawn(move || writer.write_all());
        if started.is_err() {
            // No thread: every line is dropped, and counted.
            let mut queue = shared.lock();
            queue.gone = true;
            queue.closed = true;
        }
        Self { shared, json }
    }

    /// Queues `line` (without its newline), or drops it when the queue is
    /// full or closed.
    pub(crate) fn print(&self, line: String) {
        let mut queue = self.shared.lock();
        if queue.closed || queue.bytes + line.len() > MAX_QUEUED_BYTES {
            queue.dropped += 1;
            let first = queue.dropped == 1 && !queue.closed;
            drop(queue);
            if first {
                let note = "stdout is not being read: lines are dropped while 1 MiB of them \
                            waits to be written";
                if self.json {
                    Output::note(&serde_json::json!({ "note": note }).to_string());
                } else {
                    Output::note(note);
                }
            }
            return;
        }
        queue.bytes += line.len();
        queue.lines.push_back(line);
        drop(queue);
        self.shared.queued.notify_one();
    }

    /// Closes the queue and waits, at most `within`, for the lines queued
    /// to be written; how many were never written (dropped, or still
    /// queued then).
    pub(crate) fn finish(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        let mut queue = self.shared.lock();
        queue.closed = true;
        self.shared.queued.notify_one();
        while !queue.gone && (!queue.lines.is_empty() || queue.writing) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            queue = self
                .shared
                .written
                .wait_timeout(queue, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        queue.dropped + queue.lines.len() as u64 + u64::from(queue.writing)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer: each line in turn, until the queue is closed and empty,
    /// or stdout refuses a write (its reader gone).
    fn write_all(&self) {
        loop {
            let mut queue = self.lock();
            while queue.lines.is_empty() && !queue.closed {
                queue = self
                    .queued
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let Some(line) = queue.lines.pop_front() else {
                // Closed and empty.
                queue.gone = true;
                drop(queue);
                self.written.notify_all();
                return;
            };
            queue.bytes -= line.len();
            queue.writing = true;
            drop(queue);
            let mut stdout = std::io::stdout().lock();
            let wrote = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
            drop(stdout);
            let mut queue = self.lock();
            queue.writing = false;
            if wrote.is_err() {
                // Nobody reads it any more: what is left is dropped.
                queue.dropped += 1 + queue.lines.len() as u64;
                queue.lines.clear();
                queue.bytes = 0;
                queue.closed = true;
                queue.gone = true;
                drop(queue);
                self.written.notify_all();
                return;
            }
            drop(queue);
            self.written.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_bound_are_dropped_and_counted() {
        let lines = Lines {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                queued: Condvar::new(),
                written: Condvar::new(),
            }),
            json: false,
        };
        // No writer: the queue fills.
        let line = "x".repeat(1024);
        for _ in 0..MAX_QUEUED_BYTES / 1024 + 3 {
            lines.print(line.clone());
        }
        let queue = lines.shared.lock();
        assert_eq!(queue.lines.len(), MAX_QUEUED_BYTES / 1024);
        assert_eq!(queue.dropped, 3);
        drop(queue);
        // Nothing written within the bound: all of it counted.
        let unwritten = lines.finish(Duration::ZERO);
        assert_eq!(unwritten, MAX_QUEUED_BYTES as u64 / 1024 + 3);
        // Closed: a line after is dropped too.
        lines.print("late".to_owned());
        assert_eq!(lines.shared.lock().dropped, 4);
    }
}
