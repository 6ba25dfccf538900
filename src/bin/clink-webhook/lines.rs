//! `listen`'s lines on stdout and its notes on stderr, each stream written
//! by a thread of its own: a stream nobody reads (a pipe whose reader
//! stopped, a terminal on hold) never holds up a delivery, nor the runtime
//! that answers Ctrl-C.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::output::Output;

/// The most memory the lines queued for one stream take (their text and
/// what holds it); lines past it are dropped, and counted.
pub(crate) const MAX_QUEUED_BYTES: usize = 1024 * 1024;

/// Where a [`Lines`] writes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// Lines for one stream, queued up to [`MAX_QUEUED_BYTES`] and written in
/// order by a thread of their own. Clones share the queue.
#[derive(Clone)]
pub(crate) struct Lines {
    shared: Arc<Shared>,
    /// Where the first line dropped is said (stdout's lines, on the
    /// notes'), as a JSON object when `json`.
    dropped_noted_in: Option<(Box<Lines>, bool)>,
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
    /// A queue for `stream` and its writer thread.
    pub(crate) fn start(stream: Stream) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
            written: Condvar::new(),
        });
        let writer = Arc::clone(&shared);
        let started = std::thread::Builder::new()
            .name("listen-output".to_owned())
            .spawn(move || writer.write_all(stream));
        if started.is_err() {
            // No thread: every line is dropped, and counted.
            Output::note("cannot start the thread that writes the output: it is dropped");
            let mut queue = shared.lock();
            queue.gone = true;
            queue.closed = true;
        }
        Self {
            shared,
            dropped_noted_in: None,
        }
    }

    /// These lines, the first of them dropped said in `notes` (as a JSON
    /// object when `json`).
    pub(crate) fn dropped_noted_in(mut self, notes: &Lines, json: bool) -> Self {
        self.dropped_noted_in = Some((Box::new(notes.clone()), json));
        self
    }

    /// Queues `line` (without its newline), or drops it when the queue is
    /// full or closed.
    pub(crate) fn print(&self, line: String) {
        let size = held(&line);
        let mut queue = self.shared.lock();
        if queue.closed || queue.bytes + size > MAX_QUEUED_BYTES {
            queue.dropped += 1;
            let first = queue.dropped == 1 && !queue.closed;
            drop(queue);
            if let (true, Some((notes, json))) = (first, &self.dropped_noted_in) {
                let note = "stdout is not being read: lines are dropped while 1 MiB of them \
                            waits to be written";
                notes.print(crate::listen::note_line(*json, note));
            }
            return;
        }
        queue.bytes += size;
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

/// The memory `line` takes in the queue: its text and its `String`.
fn held(line: &String) -> usize {
    line.capacity() + std::mem::size_of::<String>()
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer: each line in turn, until the queue is closed and empty,
    /// or the stream is closed (its reader gone); a line the stream
    /// refuses otherwise is dropped, and counted.
    fn write_all(&self, stream: Stream) {
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
            queue.bytes -= held(&line);
            queue.writing = true;
            drop(queue);
            let wrote = match stream {
                Stream::Stdout => {
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "{line}").and_then(|()| stdout.flush())
                }
                Stream::Stderr => writeln!(std::io::stderr().lock(), "{line}"),
            };
            let mut queue = self.lock();
            queue.writing = false;
            if wrote.is_err() {
                queue.dropped += 1;
            }
            if wrote.is_err_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe) {
                // Nobody reads it any more: what is left is dropped.
                queue.dropped += queue.lines.len() as u64;
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
            dropped_noted_in: None,
        };
        // No writer: the queue fills.
        let line = "x".repeat(1024);
        let fit = MAX_QUEUED_BYTES / held(&line);
        for _ in 0..fit + 3 {
            lines.print(line.clone());
        }
        let queue = lines.shared.lock();
        assert_eq!(queue.lines.len(), fit);
        assert_eq!(queue.dropped, 3);
        drop(queue);
        // Nothing written within the bound: all of it counted.
        let unwritten = lines.finish(Duration::ZERO);
        assert_eq!(unwritten, fit as u64 + 3);
        // Closed: a line after is dropped too.
        lines.print("late".to_owned());
        assert_eq!(lines.shared.lock().dropped, 4);
    }
}
