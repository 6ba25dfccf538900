//! Requests that carry both `Content-Length` and `Transfer-Encoding`,
//! found in the bytes of a connection as they are read.
//!
//! HTTP/1.1 frames a body by one or the other. A request with both is
//! ambiguous: hyper frames it as chunked (as RFC 9112 says), but a proxy in
//! front that frames it by length sees a different end of the body, and the
//! bytes between the two ends become a request it never saw: request
//! smuggling. RFC 9112 lets a server refuse such a request, and the server
//! does (`400`, the connection closed). hyper drops `Content-Length` from
//! the headers it hands on in that case, so the request itself no longer
//! shows it: [`Framing`] reads the connection's bytes as hyper reads them,
//! follows each request head and body to find where the next head starts,
//! and notes which requests were ambiguous.
//!
//! It holds a few bytes of state per connection, never a copy of a line. A
//! connection whose framing it cannot follow (a malformed head or chunk,
//! which hyper refuses too) has every later request refused: what cannot
//! be framed for certain is not served.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The two header names that frame a body, as they are matched.
const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";

/// Where in the stream of requests the scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head, at the start of a line.
    LineStart,
    /// In a header name; `len` bytes of it so far.
    Name { len: u8 },
    /// In the value of a header that does not frame the body, or of the
    /// request line.
    Skip,
    /// In a `Content-Length` value.
    Length,
    /// In a `Transfer-Encoding` value.
    Encoding,
    /// In a body of known length: bytes left.
    Body(u64),
    /// In a chunk size line: the size so far, and whether the digits ended
    /// (an extension or whitespace follows).
    ChunkSize {
        size: u64,
        digits: bool,
        ended: bool,
    },
    /// In a chunk's data: bytes left.
    ChunkData(u64),
    /// After a chunk's data, until its line ends.
    ChunkEnd,
    /// In the trailers after the last chunk, at the start of a line.
    TrailerStart,
    /// After a `\r` at the start of a trailer line: a `\n` ends the body.
    TrailerEnd,
    /// In a trailer line.
    Trailer,
    /// After a `\r` in a trailer line: a `\n` ends the line.
    TrailerLf,
    /// Framing that cannot be followed: every later request is refused.
    Lost,
}

/// What the current head says about its body so far.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    /// Lines of the head so far (the request line is the first).
    lines: u32,
    /// Whether the current line had a byte other than `\r`.
    line_has_text: bool,
    /// The header name read so far, lowercased, up to the longest name
    /// that matters; longer names are of no interest.
    name: [u8; 17],
    content_length: Option<u64>,
    /// A `Content-Length` value that is not digits (hyper refuses it).
    bad_length: bool,
    transfer_encoding: bool,
    /// Whether the last encoding named so far is `chunked`.
    chunked: bool,
    /// The current value's digits (for `Content-Length`), or its last
    /// encoding (for `Transfer-Encoding`), lowercased, up to 8 bytes.
    token: [u8; 8],
    token_len: u8,
    token_long: bool,
    value: u64,
    value_digits: bool,
    value_bad: bool,
}

/// The scanner of one connection, and what it found.
#[derive(Debug)]
pub(super) struct Framing {
    state: State,
    head: Head,
    /// Request heads ended so far.
    requests: u64,
    /// Shared with the connection's service: see [`Verdicts`].
    verdicts: Arc<Verdicts>,
    /// The request (its count of heads) whose body `body_since` is of.
    body_of: u64,
    /// Bytes read since `body_since` was stamped.
    progress: u64,
    /// Bytes of the current body's trailers so far.
    trailer_bytes: usize,
    /// Whether a body's trailers ran past [`MAX_TRAILER_BYTES`]: the
    /// connection is closed, whatever follows in the same read.
    trailers_too_long: bool,
}

/// The most bytes a chunked body's trailers may take, the final empty line
/// included: a webhook sends none, and hyper would keep up to 16 KiB of
/// them per connection in a buffer of its own, beyond what the server's
/// documented margin counts. A connection whose trailers run longer is
/// closed as they arrive.
pub(super) const MAX_TRAILER_BYTES: usize = 1024;

/// The bytes of a body that, read since the server began to wait on it,
/// make the wait start again: a body that arrives this fast is flowing,
/// not trickled or stalled.
pub(super) const FLOWING: u64 = 16 * 1024;

/// What the scanner found, read by the connection's service: the index (0
/// for the connection's first request) from which requests are refused.
#[derive(Debug)]
pub(super) struct Verdicts {
    refused_from: AtomicU64,
    /// Requests the service has been called for.
    calls: AtomicU64,
    /// When the connection began to wait on its client for bytes of the
    /// body being read, once the service had been called for its request,
    /// on the server's clock (`now_ms`, at least 1): its first read that
    /// found nothing, and again after [`FLOWING`] bytes came. 0 until
    /// then, and once no body is being read.
    body_since: AtomicU64,
    /// Whether the last read of the connection found nothing to read in
    /// the middle of a body: the server wants bytes the client has not
    /// sent.
    waiting: AtomicBool,
    /// Request heads the scanner has read to their end.
    heads: AtomicU64,
    /// Whether the scanner is in the middle of a request's head.
    in_head: AtomicBool,
}

impl Verdicts {
    /// Whether the next request, in the order hyper hands them on, is to be
    /// refused. hyper hands on a request only once it has read its whole
    /// head through the scanner, so the scanner has judged it by then.
    pub(super) fn next_is_refused(&self) -> bool {
        let index = self.calls.fetch_add(1, Ordering::Relaxed);
        index >= self.refused_from.load(Ordering::Relaxed)
    }

    /// Since when (`now_ms`) the connection has been waiting on its client
    /// for the body of the request its service was last called for, with
    /// less than [`FLOWING`] bytes of it come since: from the first read
    /// (after the service was called) that found none of it. `None` when
    /// the last read found bytes, when no body is being read, and while a
    /// request sent before it (pipelined) may still be handled: hyper calls
    /// the service for a request only once the one before is answered.
    pub(super) fn waiting_for_body_since(&self) -> Option<u64> {
        let since = self.body_since.load(Ordering::Relaxed);
        let waiting = self.waiting.load(Ordering::Relaxed);
        (since != 0 && waiting && self.served()).then_some(since)
    }

    /// Whether bytes of a request the service has not been called for
    /// have come: a head begun, or one read whole (pipelined). Closing the
    /// connection now would drop that request unanswered.
    pub(super) fn next_begun(&self) -> bool {
        self.in_head.load(Ordering::Relaxed) || !self.served()
    }

    /// Whether the service has been called for every request head read.
    fn served(&self) -> bool {
        self.calls.load(Ordering::Relaxed) >= self.heads.load(Ordering::Relaxed)
    }
}

impl Framing {
    pub(super) fn new() -> Self {
        Self {
            state: State::LineStart,
            head: Head::default(),
            requests: 0,
            verdicts: Arc::new(Verdicts {
                refused_from: AtomicU64::new(u64::MAX),
                calls: AtomicU64::new(0),
                body_since: AtomicU64::new(0),
                waiting: AtomicBool::new(false),
                heads: AtomicU64::new(0),
                in_head: AtomicBool::new(false),
            }),
            body_of: 0,
            progress: 0,
            trailer_bytes: 0,
            trailers_too_long: false,
        }
    }

    pub(super) fn verdicts(&self) -> Arc<Verdicts> {
        Arc::clone(&self.verdicts)
    }

    /// Notes, for [`Verdicts::next_begun`], whether a head is begun and
    /// not yet ended.
    fn note_head(&self) {
        let in_head = matches!(
            self.state,
            State::LineStart | State::Name { .. } | State::Skip | State::Length | State::Encoding
        ) && (self.head.lines > 0 || self.head.line_has_text);
        self.verdicts.in_head.store(in_head, Ordering::Relaxed);
    }

    /// Whether a request has been found to refuse.
    #[cfg(any(test, fuzzing))]
    pub(super) fn refused_from(&self) -> Option<u64> {
        let from = self.verdicts.refused_from.load(Ordering::Relaxed);
        (from != u64::MAX).then_some(from)
    }

    /// Refuses the current request and every later one.
    fn refuse_from_here(&mut self) {
        let from = self.verdicts.refused_from.load(Ordering::Relaxed);
        self.verdicts
            .refused_from
            .store(from.min(self.requests), Ordering::Relaxed);
        self.state = State::Lost;
    }

    /// Whether the bytes so far end in the middle of a request's body.
    fn in_body(&self) -> bool {
        matches!(
            self.state,
            State::Body(_)
                | State::ChunkSize { .. }
                | State::ChunkData(_)
                | State::ChunkEnd
                | State::TrailerStart
                | State::TrailerEnd
                | State::Trailer
                | State::TrailerLf
        )
    }

    /// Notes a read that found bytes (scanned already), `data` of them a
    /// body's own (not a chunk's size line or its padding, nor trailers):
    /// the connection is not waiting on its client now; a body that ended,
    /// a new one that began, or one that brought [`FLOWING`] bytes of data
    /// since the wait began, is not waited on since before.
    fn note_bytes(&mut self, data: u64) {
        let verdicts = &self.verdicts;
        if verdicts.waiting.load(Ordering::Relaxed) {
            verdicts.waiting.store(false, Ordering::Relaxed);
        }
        if verdicts.body_since.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.progress = self.progress.saturating_add(data);
        if !self.in_body() || self.body_of != self.requests || self.progress >= FLOWING {
            verdicts.body_since.store(0, Ordering::Relaxed);
        }
    }

    /// Notes a read that found nothing: in the middle of a body its service
    /// wants, the connection waits on its client, since the first such
    /// read of that body (`now` is read then only).
    fn note_nothing(&mut self, now: impl FnOnce() -> u64) {
        let verdicts = &self.verdicts;
        if !self.in_body() || !verdicts.served() {
            return;
        }
        if verdicts.body_since.load(Ordering::Relaxed) == 0 {
            verdicts.body_since.store(now().max(1), Ordering::Relaxed);
            self.body_of = self.requests;
            self.progress = 0;
        }
        if !verdicts.waiting.load(Ordering::Relaxed) {
            verdicts.waiting.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a body's trailers ran past [`MAX_TRAILER_BYTES`].
    fn trailers_too_long(&self) -> bool {
        self.trailers_too_long
    }

    /// Reads the next bytes of the connection, as hyper will; how many of
    /// them are a body's data.
    pub(super) fn scan(&mut self, mut bytes: &[u8]) -> u64 {
        let mut data = 0;
        while let Some((&byte, rest)) = bytes.split_first() {
            match self.state {
                State::Lost => return data,
                // Body bytes are skipped whole, not looked at one by one.
                State::Body(left) | State::ChunkData(left) => {
                    let taken = u64::try_from(bytes.len()).unwrap_or(u64::MAX).min(left);
                    let taken_len = usize::try_from(taken).unwrap_or(bytes.len());
                    bytes = &bytes[taken_len..];
                    data += taken;
                    self.state = match (self.state, left - taken) {
                        (State::Body(_), 0) => self.next_head(),
                        (State::Body(_), left) => State::Body(left),
                        (_, 0) => State::ChunkEnd,
                        (_, left) => State::ChunkData(left),
                    };
                    continue;
                }
                _ => self.byte(byte),
            }
            bytes = rest;
        }
        data
    }

    /// The state at the start of the next request's head.
    fn next_head(&mut self) -> State {
        self.head = Head::default();
        State::LineStart
    }

    fn byte(&mut self, byte: u8) {
        if matches!(
            self.state,
            State::TrailerStart | State::TrailerEnd | State::Trailer | State::TrailerLf
        ) {
            self.trailer_bytes += 1;
            if self.trailer_bytes > MAX_TRAILER_BYTES {
                self.trailers_too_long = true;
            }
        }
        let head = &mut self.head;
        self.state = match self.state {
            State::LineStart
            | State::Name { .. }
            | State::Skip
            | State::Length
            | State::Encoding
                if byte == b'\n' =>
            {
                return self.end_of_line();
            }
            State::LineStart if byte == b'\r' => State::LineStart,
            State::LineStart => {
                head.line_has_text = true;
                if head.lines == 0 {
                    // The request line.
                    State::Skip
                } else {
                    head.name = [0; 17];
                    head.name[0] = byte.to_ascii_lowercase();
                    State::Name { len: 1 }
                }
            }
            State::Name { len } if byte == b':' => {
                head.token_len = 0;
                head.token_long = false;
                head.value = 0;
                head.value_digits = false;
                head.value_bad = false;
                let name = head.name.get(..usize::from(len)).unwrap_or_default();
                if name == CONTENT_LENGTH {
                    State::Length
                } else if name == TRANSFER_ENCODING {
                    head.transfer_encoding = true;
                    State::Encoding
                } else {
                    State::Skip
                }
            }
            State::Name { len } => {
                if let Some(slot) = head.name.get_mut(usize::from(len)) {
                    *slot = byte.to_ascii_lowercase();
                }
                // Past the longest name of interest, the length stops at one
                // more, which matches nothing.
                State::Name {
                    len: len.saturating_add(1).min(18),
                }
            }
            State::Length => {
                match byte {
                    b' ' | b'\t' | b'\r' => {
                        // Digits then whitespace: only whitespace may follow.
                        head.token_long |= head.value_digits;
                    }
                    b'0'..=b'9' if !head.token_long => {
                        head.value_digits = true;
                        match head
                            .value
                            .checked_mul(10)
                            .and_then(|v| v.checked_add(u64::from(byte - b'0')))
                        {
                            Some(value) => head.value = value,
                            None => head.value_bad = true,
                        }
                    }
                    _ => head.value_bad = true,
                }
                State::Length
            }
            State::Encoding => {
                match byte {
                    b',' => {
                        head.token_len = 0;
                        head.token_long = false;
                    }
                    b' ' | b'\t' | b'\r' => {}
                    _ => match head.token.get_mut(usize::from(head.token_len)) {
                        Some(slot) => {
                            *slot = byte.to_ascii_lowercase();
                            head.token_len += 1;
                        }
                        None => head.token_long = true,
                    },
                }
                State::Encoding
            }
            State::Skip => State::Skip,
            // Chunked bodies: a size line, its data, the end of its line.
            State::ChunkSize {
                size,
                digits,
                ended,
            } => match byte {
                b'\n' if !digits => return self.refuse_from_here(),
                b'\n' if size == 0 => {
                    self.trailer_bytes = 0;
                    State::TrailerStart
                }
                b'\n' => State::ChunkData(size),
                _ if ended => self.state,
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let digit = u64::from(char::from(byte).to_digit(16).unwrap_or(0));
                    match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                        Some(size) => State::ChunkSize {
                            size,
                            digits: true,
                            ended: false,
                        },
                        None => return self.refuse_from_here(),
                    }
                }
                b' ' | b'\t' | b';' | b'\r' if digits => State::ChunkSize {
                    size,
                    digits,
                    ended: true,
                },
                _ => return self.refuse_from_here(),
            },
            State::ChunkEnd => match byte {
                b'\n' => State::ChunkSize {
                    size: 0,
                    digits: false,
                    ended: false,
                },
                b'\r' => State::ChunkEnd,
                _ => return self.refuse_from_here(),
            },
            // Trailers, until an empty line ends the body, as hyper reads
            // them: only `\r\n` ends a line or the body; a bare `\n` at the
            // start of a line is a trailer's first byte, and within one a
            // byte like any other.
            State::TrailerStart => match byte {
                b'\r' => State::TrailerEnd,
                _ => State::Trailer,
            },
            State::TrailerEnd => match byte {
                b'\n' => self.next_head(),
                _ => return self.refuse_from_here(),
            },
            State::Trailer => match byte {
                b'\r' => State::TrailerLf,
                _ => State::Trailer,
            },
            State::TrailerLf => match byte {
                b'\n' => State::TrailerStart,
                _ => return self.refuse_from_here(),
            },
            State::Body(_) | State::ChunkData(_) | State::Lost => self.state,
        };
    }

    /// A line of the head ended: a header judged, or the head itself ended.
    fn end_of_line(&mut self) {
        let head = &mut self.head;
        match self.state {
            State::Length => {
                let repeated = head.content_length.is_some_and(|seen| seen != head.value);
                if head.value_bad || !head.value_digits || repeated {
                    head.bad_length = true;
                } else {
                    head.content_length = Some(head.value);
                }
            }
            State::Encoding => {
                head.chunked =
                    !head.token_long && &head.token[..usize::from(head.token_len)] == b"chunked";
            }
            _ => {}
        }
        if head.line_has_text {
            head.lines += 1;
            head.line_has_text = false;
            self.state = State::LineStart;
        } else if head.lines == 0 {
            // An empty line before the request line: hyper skips it.
            self.state = State::LineStart;
        } else {
            self.end_of_head();
        }
    }

    /// The head ended: how its body is framed, or that it is refused.
    fn end_of_head(&mut self) {
        let head = self.head;
        let ambiguous =
            head.transfer_encoding && (head.content_length.is_some() || head.bad_length);
        // Both framings, a last encoding other than chunked, or a length
        // that is not one: hyper refuses the last two itself, and the
        // connection cannot be followed past any of them.
        if ambiguous || (head.transfer_encoding && !head.chunked) || head.bad_length {
            return self.refuse_from_here();
        }
        self.requests += 1;
        self.verdicts.heads.store(self.requests, Ordering::Relaxed);
        self.head = Head::default();
        self.state = match head.content_length {
            _ if head.transfer_encoding => State::ChunkSize {
                size: 0,
                digits: false,
                ended: false,
            },
            Some(length) if length > 0 => State::Body(length),
            _ => State::LineStart,
        };
    }
}

/// A connection whose every byte read goes through its [`Framing`] first.
#[derive(Debug)]
pub(super) struct Watched<T> {
    io: T,
    framing: Framing,
}

impl<T> Watched<T> {
    pub(super) fn new(io: T) -> Self {
        Self {
            io,
            framing: Framing::new(),
        }
    }

    pub(super) fn verdicts(&self) -> Arc<Verdicts> {
        self.framing.verdicts()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                let data = this.framing.scan(read);
                this.framing.note_head();
                if this.framing.trailers_too_long() {
                    // None of the read is handed on.
                    buf.set_filled(before);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a chunked body's trailers over 1 KiB",
                    )));
                }
                this.framing.note_bytes(data);
            }
            Poll::Pending => this.framing.note_nothing(super::now_ms),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The requests `Framing` refuses in `stream`, fed in pieces of `step`
    /// bytes.
    fn refused_from(stream: &[u8], step: usize) -> Option<u64> {
        let mut framing = Framing::new();
        for piece in stream.chunks(step.max(1)) {
            framing.scan(piece);
        }
        framing.refused_from()
    }

    /// Every way of cutting `stream` into pieces agrees.
    fn check(stream: &str, expected: Option<u64>) {
        for step in [1, 2, 3, 7, 64, stream.len()] {
            assert_eq!(
                refused_from(stream.as_bytes(), step),
                expected,
                "step {step}: {stream:?}"
            );
        }
    }

    const POST: &str = "POST /webhooks/clink HTTP/1.1\r\nHost: a\r\n";

    /// Scans `piece` as one read that found it, then a read that found
    /// nothing, at `now`; what `waiting_for_body_since` says then.
    fn read_then_wait(framing: &mut Framing, piece: &str, now: u64) -> Option<u64> {
        let data = framing.scan(piece.as_bytes());
        framing.note_bytes(data);
        // hyper calls the service once it has a head.
        let verdicts = framing.verdicts();
        while verdicts.calls.load(Ordering::Relaxed) < framing.requests {
            verdicts.next_is_refused();
        }
        framing.note_nothing(|| now);
        verdicts.waiting_for_body_since()
    }

    /// A connection waits on its client for a body from the first read
    /// that finds none of it, whole or chunked, until the body's last byte;
    /// a read that finds bytes stops the wait, the time it began is kept
    /// for that body, and another body starts afresh.
    #[test]
    fn a_body_waited_on_is_noted_with_when_the_wait_began() {
        let next = format!("i{POST}Content-Length: 2\r\n\r\n");
        let cases: [(&str, Vec<&str>, &[Option<u64>]); 4] = [
            (
                "length",
                vec![POST, "Content-Length: 5\r\n", "\r\n", "he", "llo"],
                &[None, None, Some(3), Some(3), None],
            ),
            (
                "chunked",
                vec![
                    POST,
                    "Transfer-Encoding: chunked\r\n\r\n",
                    "5\r\nhel",
                    "lo\r\n0\r\n",
                    "\r\n",
                ],
                &[None, Some(2), Some(2), Some(2), None],
            ),
            (
                "no body",
                vec![POST, "Content-Length: 0\r\n\r\n", POST],
                &[None, None, None],
            ),
            (
                // One read ends a body and begins the next: that one is
                // waited on from its own first wait.
                "two bodies",
                vec![POST, "Content-Length: 2\r\n\r\nh", &next, "ok"],
                &[None, Some(2), Some(3), None],
            ),
        ];
        for (name, pieces, expected) in cases {
            let mut framing = Framing::new();
            for (now, (piece, expected)) in (1..).zip(pieces.iter().zip(expected)) {
                assert_eq!(
                    read_then_wait(&mut framing, piece, now),
                    *expected,
                    "{name}: after {piece:?}"
                );
            }
        }
        // Bytes stop the wait; the time it began is kept for the body.
        let mut framing = Framing::new();
        let verdicts = framing.verdicts();
        read_then_wait(&mut framing, &format!("{POST}Content-Length: 5\r\n\r\n"), 4);
        framing.scan(b"he");
        framing.note_bytes(2);
        assert_eq!(verdicts.waiting_for_body_since(), None);
        framing.note_nothing(|| 9);
        assert_eq!(verdicts.waiting_for_body_since(), Some(4));
    }

    /// Trailers of up to [`MAX_TRAILER_BYTES`] in all, the final empty line
    /// included, pass; a byte more is too long; each body counts its own.
    #[test]
    fn trailers_are_held_to_their_limit_per_body() {
        let chunked = |trailer: &str| {
            format!("{POST}Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n{trailer}\r\n")
        };
        // "x-t: " and the value and "\r\n", then the final "\r\n".
        let line = |len: usize| format!("x-t: {}\r\n", "a".repeat(len - 7));
        let fits = line(MAX_TRAILER_BYTES - 2);
        let over = line(MAX_TRAILER_BYTES - 1);
        let mut framing = Framing::new();
        for _ in 0..3 {
            framing.scan(chunked(&fits).as_bytes());
            assert!(!framing.trailers_too_long());
        }
        framing.scan(chunked(&over).as_bytes());
        assert!(framing.trailers_too_long());
        // Found in one read with the next body's last chunk after it too.
        let mut framing = Framing::new();
        framing.scan(format!("{}{}", chunked(&over), chunked("")).as_bytes());
        assert!(framing.trailers_too_long());
        let mut framing = Framing::new();
        framing.scan(chunked("").as_bytes());
        assert!(!framing.trailers_too_long());
        assert_eq!(framing.refused_from(), None);
    }

    /// A body that brings [`FLOWING`] bytes since its wait began is waited
    /// on afresh: only one arriving slower ages. (A head that waited on a
    /// key lookup before its body was read does not count against it once
    /// the body flows.)
    #[test]
    fn a_flowing_body_is_waited_on_afresh() {
        let mut framing = Framing::new();
        let body = 3 * FLOWING;
        let head = format!("{POST}Content-Length: {body}\r\n\r\n");
        assert_eq!(read_then_wait(&mut framing, &head, 1), Some(1));
        let piece = "x".repeat(usize::try_from(FLOWING / 2).unwrap());
        // Half of FLOWING: still the wait that began at 1.
        assert_eq!(read_then_wait(&mut framing, &piece, 2), Some(1));
        // The other half: a wait that begins now.
        assert_eq!(read_then_wait(&mut framing, &piece, 3), Some(3));
        // A trickle ages from there.
        for now in 4..10 {
            assert_eq!(read_then_wait(&mut framing, "x", now), Some(3));
        }
    }

    /// Only a body's data counts as flowing: a chunk's size line padded
    /// (whitespace after the size, zeros before it, which hyper reads and
    /// drops) brings bytes, and no body, and its wait ages on.
    #[test]
    fn a_chunked_body_padded_with_framing_is_not_flowing() {
        let mut framing = Framing::new();
        let head = format!("{POST}Transfer-Encoding: chunked\r\n\r\n");
        assert_eq!(read_then_wait(&mut framing, &head, 1), Some(1));
        let spaces = format!("1{}\r\nA\r\n", " ".repeat(2 * 16 * 1024));
        let zeros = format!("{}1\r\nA\r\n", "0".repeat(2 * 16 * 1024));
        for now in 2..6 {
            assert_eq!(read_then_wait(&mut framing, &spaces, now), Some(1));
            assert_eq!(read_then_wait(&mut framing, &zeros, now), Some(1));
        }
        // Data, chunk after chunk, flows.
        let chunk = format!(
            "{:x}\r\n{}\r\n",
            FLOWING,
            "x".repeat(usize::try_from(FLOWING).unwrap())
        );
        assert_eq!(read_then_wait(&mut framing, &chunk, 7), Some(7));
    }

    /// A body sent after a request not yet answered (pipelined) is not
    /// waited on for the request being served: its wait begins once its
    /// own request is served, not when hyper read ahead.
    #[test]
    fn a_pipelined_body_is_waited_on_once_its_request_is_served() {
        let mut framing = Framing::new();
        let verdicts = framing.verdicts();
        framing.scan(
            format!("{POST}Content-Length: 1\r\n\r\nx{POST}Content-Length: 5\r\n\r\nhe").as_bytes(),
        );
        framing.note_bytes(1);
        verdicts.next_is_refused();
        framing.note_nothing(|| 3);
        assert_eq!(
            verdicts.waiting_for_body_since(),
            None,
            "the first request is served"
        );
        verdicts.next_is_refused();
        assert_eq!(
            verdicts.waiting_for_body_since(),
            None,
            "read ahead, not waited on"
        );
        framing.note_nothing(|| 5);
        assert_eq!(
            verdicts.waiting_for_body_since(),
            Some(5),
            "the second one is"
        );
    }

    #[test]
    fn plain_requests_are_followed_through_their_bodies() {
        check(&format!("{POST}Content-Length: 5\r\n\r\nhello"), None);
        check(
            &format!("{POST}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            None,
        );
        check("GET /health HTTP/1.1\r\n\r\n", None);
        check("\r\n\r\nGET /health HTTP/1.1\r\n\r\n", None);
    }

    #[test]
    fn both_framings_are_refused_in_either_order_and_any_case() {
        for headers in [
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "transfer-encoding: CHUNKED\r\ncontent-length:5\r\n",
            "Transfer-Encoding: gzip, chunked\r\nContent-Length: 0\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: identity\r\n",
            "Content-Length: x\r\nTransfer-Encoding: chunked\r\n",
        ] {
            check(
                &format!("{POST}{headers}\r\n5\r\nhello\r\n0\r\n\r\n"),
                Some(0),
            );
        }
    }

    #[test]
    fn a_smuggled_request_after_plain_ones_is_the_one_refused() {
        // A body of known length that reads like a head with a chunked body.
        let lookalike = "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let first = format!(
            "{POST}Content-Length: {}\r\n\r\n{lookalike}",
            lookalike.len()
        );
        let second = format!(
            "{POST}Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: content-length: 9\r\n\r\n"
        );
        let third = "GET /health HTTP/1.1\r\n\r\n";
        let smuggled = format!("{POST}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        check(&first, None);
        check(&format!("{first}{second}{third}"), None);
        check(&format!("{first}{second}{third}{smuggled}"), Some(3));
    }

    #[test]
    fn framing_that_cannot_be_followed_refuses_what_follows() {
        // Not chunked last, a bad length, two lengths, a bad chunk size.
        check(&format!("{POST}Transfer-Encoding: gzip\r\n\r\n"), Some(0));
        check(&format!("{POST}Content-Length: 1x\r\n\r\n"), Some(0));
        check(
            &format!("{POST}Content-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Some(0),
        );
        check(
            &format!("{POST}Content-Length: 1\r\nContent-Length: 1\r\n\r\na"),
            None,
        );
        // A body that cannot be followed: the request it belongs to was
        // handed on already; every request after it is refused.
        check(
            &format!("GET / HTTP/1.1\r\n\r\n{POST}Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Some(2),
        );
        check(
            &format!("{POST}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n"),
            Some(1),
        );
        // A header name longer than any that matters is just another header.
        check(
            &format!("{POST}X-Content-Length-And-Transfer-Encoding: 5\r\n\r\n"),
            None,
        );
    }

    #[test]
    fn trailers_end_as_hyper_ends_them() {
        // A bare `\n` after the last chunk starts a trailer in hyper, not a
        // new request: the two lines after it are trailers, and the request
        // after them is the connection's second, refused for its framing.
        let trailers = "0\r\n\nPOST /p HTTP/1.1\r\nHost: a\r\n\r\n";
        let first = format!("{POST}Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n{trailers}");
        check(&first, None);
        let smuggled =
            format!("{POST}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        check(&format!("{first}{smuggled}"), Some(1));
        // A trailer line or the empty line ending with `\r` and something
        // other than `\n`: hyper stops reading; nothing after is served.
        for end in ["0\r\n\rX", "0\r\nX-T: 1\rX\r\n\r\n"] {
            let stream =
                format!("{POST}Transfer-Encoding: chunked\r\n\r\n{end}GET / HTTP/1.1\r\n\r\n");
            check(&stream, Some(1));
        }
    }

    /// The randomised tests (`seeded` in their path); `CLINK_TEST_SEED` repeats a run.
    mod seeded {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;

        /// One request as a client may frame it: a body of known length or
        /// chunked (the chunk sizes given), its bytes anything at all.
        fn request(body: &[u8], chunks: Option<&[usize]>, trailer: bool) -> Vec<u8> {
            let mut request = POST.as_bytes().to_vec();
            match chunks {
                None => {
                    request.extend_from_slice(
                        format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    request.extend_from_slice(body);
                }
                Some(sizes) => {
                    request.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    let mut rest = body;
                    for &size in sizes {
                        let (chunk, after) = rest.split_at(size.min(rest.len()));
                        if chunk.is_empty() {
                            break;
                        }
                        request.extend_from_slice(format!("{:x};x=y\r\n", chunk.len()).as_bytes());
                        request.extend_from_slice(chunk);
                        request.extend_from_slice(b"\r\n");
                        rest = after;
                    }
                    if !rest.is_empty() {
                        request.extend_from_slice(format!("{:X}\r\n", rest.len()).as_bytes());
                        request.extend_from_slice(rest);
                        request.extend_from_slice(b"\r\n");
                    }
                    request.extend_from_slice(b"0\r\n");
                    if trailer {
                        request.extend_from_slice(b"Content-Length: 7\r\n");
                    }
                    request.extend_from_slice(b"\r\n");
                }
            }
            request
        }

        /// Bodies made of the bytes that matter to framing, and others.
        fn body() -> impl Strategy<Value = Vec<u8>> {
            vec(
                prop_oneof![
                    Just(b'\r'),
                    Just(b'\n'),
                    Just(b':'),
                    Just(b'0'),
                    any::<u8>()
                ],
                0..200,
            )
        }

        proptest! {
            #![proptest_config(crate::test_seed::config())]

            #[test]
            fn plain_requests_in_a_row_are_followed_and_a_smuggled_one_is_found(
                requests in vec((body(), proptest::option::of(vec(1usize..50, 0..6)), any::<bool>()), 0..6),
                smuggled_at in 0usize..7,
                step in 1usize..300,
            ) {
                let mut stream = Vec::new();
                for (body, chunks, trailer) in &requests {
                    stream.extend(request(body, chunks.as_deref(), *trailer));
                }
                prop_assert_eq!(refused_from(&stream, step), None);
                let at = smuggled_at.min(requests.len());
                let mut stream = Vec::new();
                for (n, (body, chunks, trailer)) in requests.iter().enumerate() {
                    if n == at {
                        stream.extend_from_slice(format!("{POST}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes());
                    }
                    stream.extend(request(body, chunks.as_deref(), *trailer));
                }
                if at == requests.len() {
                    stream.extend_from_slice(format!("{POST}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n").as_bytes());
                }
                prop_assert_eq!(refused_from(&stream, step), Some(at as u64));
            }

            #[test]
            fn any_bytes_are_scanned_without_panicking(
                bytes in vec(any::<u8>(), 0..2000),
                step in 1usize..100,
            ) {
                let _ = refused_from(&bytes, step);
            }
        }
    }
}
