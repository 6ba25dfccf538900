//! Steps 1 to 5: method, signature headers, body (bounded, hashed as it
//! streams), signature, envelope. Nothing here touches a store but the
//! dead-letter inbox, for a verified body that is no envelope.

use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method};
use http_body::Body;
use memmap2::{MmapMut, MmapOptions};
use tracing::Span;

use super::budget::Reading;
use super::config::{Config, Keys};
use crate::events::{has_invisible, DecodesTyped, RawEvent, VerifiedEvent};
use crate::guard::{cold, within, CatchUnwind};
use crate::signature::{SignatureHeaders, Verification, Verifier};
use crate::{BoxError, Outcome};

/// Checks method, headers, body and signature, and reads the envelope.
pub(super) async fn verify<B>(
    config: &Config, parts: &http::request::Parts, body: B, typed: Option<&dyn DecodesTyped>,
    span: Option<&Span>,
) -> Result<VerifiedEvent, Outcome>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if parts.method != Method::POST {
        cold();
        return Err(Outcome::MethodNotAllowed);
    }
    let log_verify = |error: crate::VerifyError| {
        cold();
        tracing::debug!(%error, "clink delivery refused");
        Outcome::Verify(error.kind())
    };
    // The checks run in the verifier's one order: the timestamp's form, the
    // sign type and the signature's form, then the keys and the window.
    let headers = SignatureHeaders::from_headers(&parts.headers);
    let (timestamp, signed_at) = headers.timestamp().map_err(log_verify)?;
    let signature = headers.signature().map_err(log_verify)?;
    let (verifier, account) = keys(config, parts, span).await?;
    let now = SystemTime::now();
    verifier.check_parsed(signed_at, now).map_err(log_verify)?;
    let mut verification = verifier.begin_checked(timestamp, signed_at, now);

    let declared = declared_length(&parts.headers);
    if declared.is_some_and(|len| len > config.settings.body_limit as u64) {
        cold();
        return Err(Outcome::BodyTooLarge {
            limit: config.settings.body_limit,
        });
    }
    let body_timeout = config.settings.body_timeout;
    let (mut reading, waited) = match config.budget.start() {
        Some(reading) => (reading, None),
        // Every place taken: the body read longest, a second or more, is
        // ended for this one, within the body's time.
        None => {
            cold();
            let started = tokio::time::Instant::now();
            let reading = within(body_timeout, config.budget.start_making_room()).await;
            (
                reading.ok().flatten().ok_or(Outcome::Overloaded)?,
                Some(started),
            )
        }
    };
    let read = read_body(
        body,
        config.settings.body_limit,
        declared,
        &mut verification,
        &mut reading,
    );
    let left = || {
        waited.map_or(body_timeout, |started| {
            body_timeout.saturating_sub(started.elapsed())
        })
    };
    let (bytes, mapped) = within(left, read)
        .await
        .map_err(|_| Outcome::BodyTimeout)??;
    let verified = verification
        .finish_by(&signature, &verifier)
        // A signature by a key past its expiry is told from a forgery for
        // the operator (the sender gets the same answer): one more HMAC per
        // expired key, and only when no active key matched.
        .map_err(|error| verifier.expired_or(error, timestamp, signed_at, &signature, &bytes, now))
        .map_err(log_verify)?;
    drop(verifier);
    // Verified: a body gathered in a mapping moves to the heap (one copy, of
    // a body over 64 KiB), so that no event the app keeps holds a mapping
    // of its own; and the body no longer counts against the budget.
    let bytes = if mapped {
        cold();
        #[cfg(test)]
        MOVED_TO_HEAP.with(|moved| moved.set(moved.get() + 1));
        let heap = Bytes::copy_from_slice(&bytes);
        // The mapping goes back to the system now, not when this returns.
        drop(bytes);
        heap
    } else {
        bytes
    };
    drop(reading);
    // Kept for the dead-letter inbox, if the layer has one (a shared
    // handle, no copy), should the body be no envelope.
    let kept = config.dead_letters.as_ref().map(|_| bytes.clone());
    let event = match typed {
        Some(typed) => RawEvent::from_bytes_for(bytes, typed),
        None => RawEvent::from_bytes(bytes),
    };
    let mut event = match event {
        Ok(event) => event,
        Err(error) => {
            cold();
            let Some(body) = kept else {
                return Err(Outcome::InvalidEnvelope(error));
            };
            // Boxed: the delivery's future stays the size it is without it.
            return Err(Box::pin(super::service::dead_letter_not_an_envelope(
                config,
                &parts.headers,
                body,
                &verified,
                account.as_deref(),
                error,
            ))
            .await);
        }
    };
    // An id is data, never text to print: one with a line break, a
    // terminal escape or a character that hides or reorders text in it is
    // refused rather than carried into logs (and kept dead, if the layer
    // has a dead-letter inbox).
    if has_invisible(event.id()) {
        cold();
        let Some(body) = kept else {
            return Err(Outcome::InvalidEventId);
        };
        let whole = super::service::WholeBody {
            body,
            signed_at: verified.signed_at(),
            key_name: verified.key_name(),
            account: account.as_deref(),
            headers: super::service::signature_headers(&parts.headers),
        };
        // Boxed: the delivery's future stays the size it is without it.
        return Err(Box::pin(super::service::dead_letter_invalid_id(config, whole)).await);
    }
    drop(kept);
    event.set_account(account);
    Ok(VerifiedEvent::new(event, &verified))
}

/// A delivery's verifier: the layer's own, lent, or one handed out by its
/// live keys or key source.
enum Held<'a> {
    Lent(&'a Verifier),
    Shared(Arc<Verifier>),
}

impl std::ops::Deref for Held<'_> {
    type Target = Verifier;

    fn deref(&self) -> &Verifier {
        match self {
            Self::Lent(verifier) => verifier,
            Self::Shared(verifier) => verifier,
        }
    }
}

/// The verifier for this delivery, and its account when there are several.
async fn keys<'a>(
    config: &'a Config, parts: &http::request::Parts, span: Option<&Span>,
) -> Result<(Held<'a>, Option<Arc<str>>), Outcome> {
    let (from, source) = match &config.keys {
        Keys::One(verifier) => return Ok((Held::Lent(verifier), None)),
        Keys::Live(live) => return Ok((Held::Shared(live.current()), None)),
        Keys::PerAccount { from, source } => (from, source),
    };
    let Some(account) = from.account(parts) else {
        return Err(Outcome::UnknownAccount);
    };
    // Failures are an outage of the key source, logged as one (escaped,
    // summed up), never a line per delivery; a lookup the source would not
    // make is a refusal, counted with the others.
    let outage = &config.outages.keys;
    // A key source of the app's own that panics (in its lookup's future, in
    // the call that makes it, or as its future is dropped at the timeout)
    // has failed: the delivery is answered, not its task ended with the
    // sender's connection.
    let timeout = config.settings.store_timeout;
    let looked_up = CatchUnwind::new(async {
        // Only a lookup's answer ends an outage, not a cache's (see
        // `answered`): told apart while one goes on (an answer ends none
        // otherwise).
        let (answered, looked_up) = if outage.is_down() {
            crate::accounts::answered(|| within(timeout, source.verifier(&account))).await
        } else {
            (within(timeout, source.verifier(&account)).await, true)
        };
        if looked_up && matches!(answered, Ok(Ok(_))) {
            outage.succeeded();
        }
        answered
    })
    .await;
    match looked_up {
        Err(panic) => {
            cold();
            outage.failed(&format_args!("the key source panicked: {panic}"));
            Err(Outcome::KeysUnavailable)
        }
        Ok(Ok(Ok(Some(verifier)))) => {
            if let Some(span) = span {
                span.record("account", &*account);
            }
            Ok((Held::Shared(verifier), Some(Arc::from(&*account))))
        }
        Ok(Ok(Ok(None))) => Err(Outcome::UnknownAccount),
        Ok(Ok(Err(error))) if error.is_limited() => Err(Outcome::KeyLookupsLimited),
        Ok(Ok(Err(error))) => {
            outage.failed(&error);
            Err(Outcome::KeysUnavailable)
        }
        Ok(Err(timed_out)) => {
            outage.failed(&format_args!(
                "the key source did not answer within {} ms",
                timed_out.0.as_millis()
            ));
            Err(Outcome::KeysUnavailable)
        }
    }
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads the body up to `limit` bytes, feeding the HMAC as chunks arrive;
/// the body, and whether it was gathered in a mapping.
///
/// Every byte of memory it fills is first taken from the layer's
/// [budget](super::ClinkLayer::body_budget), and a body never holds more
/// than `FIRST_HOLD` or four times what came of it, whatever length it
/// declares (in a mapping, the pages written). A body known to have come
/// whole in one chunk (its declared length, or `is_end_stream` after it:
/// never for a chunked body over hyper's HTTP/1) is kept as it is (no copy)
/// and holds its length. A body in several
/// chunks that declares `MAP_FROM` or less is gathered on the heap, its
/// buffer's whole capacity held: at first `FIRST_HOLD` (twice what came so
/// far, if more), then its declared length, in one step. One of unknown
/// length gathers in a buffer of twice what came, doubling. A body that
/// declares more than `MAP_FROM`,
/// or grows past it, is gathered in mappings of its own, each twice what it
/// needs and `FIRST_HOLD` (up to its declared length): pages never written
/// are never resident, and a mapping goes back to the system whole when the
/// body grows out of it or is dropped, so the budget holds the pages
/// written.
async fn read_body<B>(
    body: B, limit: usize, declared: Option<u64>, verification: &mut Verification,
    reading: &mut Reading<'_>,
) -> Result<(Bytes, bool), Outcome>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = pin!(body);
    let declared = declared.and_then(|d| usize::try_from(d).ok());
    let mut first: Option<Bytes> = None;
    let mut buf: Option<Gathered> = None;
    let mut total: usize = 0;
    // A body that declares more than `MAP_FROM` is mapped from its first
    // buffer: the heap buffers it would grow out of are never left to the
    // allocator.
    let map_all = declared.is_some_and(|d| d > MAP_FROM);
    loop {
        let Some(frame) = next_frame(body.as_mut(), reading, total > 0).await? else {
            break;
        };
        let frame = frame.map_err(|error| {
            let error: BoxError = error.into();
            tracing::debug!(%error, "clink delivery: could not read the body");
            Outcome::BodyUnreadable
        })?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        let len = data.remaining();
        total = total.saturating_add(len);
        if total > limit {
            return Err(Outcome::BodyTooLarge { limit });
        }
        let whole = match declared {
            Some(declared) => declared == len,
            // A chunk kept holds the whole buffer it was read into (a
            // server's read buffer: 16 KiB, or far more), which the budget
            // would not see while the body stalls: kept only when the body
            // is known to end with it.
            None => body.is_end_stream(),
        };
        let frame = Frame {
            len,
            total,
            declared,
            limit,
            map_all,
            whole: first.is_none() && buf.is_none() && whole,
        };
        // Room for the frame's bytes: when the budget has none, the body
        // read longest, a second or more, is ended for it (unless this one
        // is ended meanwhile).
        loop {
            match frame.make_place(&mut first, &mut buf, reading) {
                Ok(()) => break,
                Err(None) if !reading.evicted() && reading.make_room().await => {}
                Err(None) => return Err(Outcome::Overloaded),
                Err(Some(refused)) => return Err(refused),
            }
        }
        if frame.whole {
            // The whole body in one chunk: kept as it is, no copy (`Bytes`
            // hands itself over).
            let chunk = data.copy_to_bytes(len);
            verification.update(&chunk);
            first = Some(chunk);
            // Not polled again, to wait (and perhaps be taken for a body
            // that stalled) for an end that is known.
            if body.is_end_stream() {
                break;
            }
            continue;
        }
        let Some(buffer) = &mut buf else {
            unreachable!("placed in a buffer")
        };
        // Each piece is hashed and copied into the body's buffer straight
        // from the frame: one copy, whatever the frame's buffer type.
        while data.has_remaining() {
            let piece = data.chunk();
            verification.update(piece);
            buffer.extend(piece);
            let taken = piece.len();
            data.advance(taken);
        }
        // Its end known (all it declared came, over hyper): not polled
        // again to wait for it.
        if body.is_end_stream() {
            break;
        }
    }
    Ok(match (buf, first) {
        (Some(buffer), _) => {
            let mapped = matches!(buffer, Gathered::Mapped(_));
            (buffer.freeze(), mapped)
        }
        (None, Some(chunk)) => (chunk, false),
        (None, None) => (Bytes::new(), false),
    })
}

/// The body's next frame; `Overloaded` once the body was ended to make
/// room for another (see [`Reading::make_room`]). A body that waits for
/// more once its first bytes came (`begun`), or for its first bytes while
/// places for bodies are scarce, says so to the budget, which may end it.
/// A body that comes whole after a wait for its first bytes (as every body
/// over hyper does) on a receiver under no flood never does.
async fn next_frame<B: Body>(
    mut body: std::pin::Pin<&mut B>, reading: &mut Reading<'_>, begun: bool,
) -> Result<Option<Result<http_body::Frame<B::Data>, B::Error>>, Outcome> {
    std::future::poll_fn(|cx| {
        if reading.evicted() {
            cold();
            return Poll::Ready(Err(Outcome::Overloaded));
        }
        match body.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Ok(frame)),
            Poll::Pending => {
                if begun || reading.places_scarce() {
                    reading.waits(cx.waker());
                }
                Poll::Pending
            }
        }
    })
    .await
}

/// One frame's bytes, and where the body stands with them.
struct Frame {
    len: usize,
    /// The body's bytes so far, this frame's among them.
    total: usize,
    declared: Option<usize>,
    limit: usize,
    /// Whether the body is gathered in mappings whatever its size.
    map_all: bool,
    /// Whether this frame is the whole body, kept as it is.
    whole: bool,
}

impl Frame {
    /// Takes the budget for this frame's bytes, and the buffer to copy
    /// them into (made, or grown) unless the frame is the whole body;
    /// `Err(None)` when the budget has no room (and nothing changed), the
    /// refusal when the body cannot go on. Done again after `Err(None)`,
    /// it takes up where it stopped: nothing of the frame is copied until
    /// it succeeds.
    fn make_place(
        &self, first: &mut Option<Bytes>, buf: &mut Option<Gathered>, reading: &mut Reading<'_>,
    ) -> Result<(), Option<Outcome>> {
        let Self {
            len,
            total,
            declared,
            limit,
            map_all,
            whole,
        } = *self;
        if whole {
            return if reading.hold(len) { Ok(()) } else { Err(None) };
        }
        let place = |capacity: usize| Place {
            capacity,
            mapped: map_all || capacity > MAP_FROM,
            limit,
        };
        let buffer = match buf {
            Some(buffer) => buffer,
            None => {
                let head = first.as_deref().unwrap_or_default();
                // A declared length is believed only as far as the bytes
                // sent so far bear it out: a sender without the key who
                // declares a megabyte and sends a byte holds no megabyte of
                // the budget.
                let twice = total.saturating_mul(2);
                let capacity = declared
                    .map_or(twice, |d| d.min(twice.max(FIRST_HOLD)))
                    .clamp(total, limit);
                let made = Gathered::new(place(capacity), head, reading)?;
                *first = None;
                buf.insert(made)
            }
        };
        if buffer.spare() < len {
            let needed = buffer.len() + len;
            let capacity = match declared.filter(|&declared| declared >= needed) {
                // On the heap: to the length declared, in one step.
                Some(declared) if declared <= MAP_FROM => declared,
                Some(declared) => declared.min(needed.saturating_mul(2).saturating_add(FIRST_HOLD)),
                None => buffer.capacity().saturating_mul(2),
            }
            .clamp(needed, limit);
            // The buffer grown out of is dropped once copied, in this
            // poll: held no longer, as the budget would otherwise have to
            // fit two buffers of a body at the limit.
            *buffer = Gathered::new(place(capacity), buffer.filled(), reading)?;
        }
        buffer.hold(len, reading)
    }
}

/// The most a body in several chunks holds of the budget at first,
/// whatever length it declares, unless twice what it sent so far is more.
/// So a sender without the key must send 8 KiB of a body before it holds
/// more.
///
/// It is the size of the server's read buffer, and small on purpose:
/// every body a stranger starts allocates its first hold, and once the
/// body grows or is refused that block is freed. The allocator keeps freed
/// blocks resident for its next allocations; blocks of this size are
/// reused by the next connection's read buffer and first hold, where
/// larger ones (64 KiB) were left between the blocks of connections still
/// open, 20 MiB of them under 1,200 hostile connections
/// (`tests/suite/hostile.rs`). A body that declares 16 KiB or less is never
/// copied to grow; one that declares up to `MAP_FROM` is copied at most
/// once.
const FIRST_HOLD: usize = 16 * 1024;

/// The largest buffer a body in several chunks is gathered in on the heap;
/// a body that declares more, or grows past it, is gathered in mappings.
///
/// On the heap a buffer is held whole against the budget, however little
/// of it was written: the allocator may hand back a block whose pages an
/// earlier body touched. So a body that declares at most this holds at most
/// four times what it sent (16 KiB and a byte sent, 64 KiB held), and a
/// body that grows leaves the blocks it grew out of to the allocator,
/// resident, between the blocks of bodies still open. A mapping's pages
/// are resident only once written, and a mapping goes back to the system
/// whole when the body grows out of it or is dropped: a sender who declares
/// a megabyte and sends 32 KiB holds 32 KiB. 64 KiB bodies, the usual
/// largest, stay on the heap.
const MAP_FROM: usize = 64 * 1024;

/// Where a body in several chunks is to be gathered.
#[derive(Clone, Copy)]
struct Place {
    /// The buffer's length.
    capacity: usize,
    /// In a mapping, else on the heap.
    mapped: bool,
    /// The body limit, which a mapped body's hold never passes.
    limit: usize,
}

/// Where a body in several chunks is gathered.
enum Gathered {
    /// On the heap: its whole capacity is held.
    Heap(BytesMut),
    /// In an anonymous mapping of its own: the pages written are held.
    Mapped(Mapped),
}

/// A mapping, how much of it is the body, and what bounds its hold.
struct Mapped {
    map: MmapMut,
    len: usize,
    page: usize,
    limit: usize,
}

impl Mapped {
    fn hold(&self, written: usize) -> usize {
        pages_held(written, self.page, self.limit)
    }
}

/// What a mapping holds with `written` bytes written: the pages written
/// to, never more than the limit (so that a body at the limit fits a budget
/// of the limit, the last page of a limit that is not a whole number of
/// pages less than a page short).
fn pages_held(written: usize, page: usize, limit: usize) -> usize {
    written.div_ceil(page).saturating_mul(page).min(limit)
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

#[cfg(test)]
thread_local! {
    /// The buffers made on this thread: a test's count of a body's growths.
    static BUFFERS_MADE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The verified bodies moved from a mapping to the heap on this thread.
    static MOVED_TO_HEAP: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Gathered {
    /// A buffer at `place` holding `head`, its hold taken first;
    /// `Err(None)` when it does not fit in the budget (nothing changed),
    /// `Overloaded` when the system will not map it.
    fn new(place: Place, head: &[u8], reading: &mut Reading<'_>) -> Result<Self, Option<Outcome>> {
        #[cfg(test)]
        BUFFERS_MADE.with(|made| made.set(made.get() + 1));
        if !place.mapped {
            if !reading.hold(place.capacity) {
                return Err(None);
            }
            let mut buffer = BytesMut::with_capacity(place.capacity);
            buffer.extend_from_slice(head);
            return Ok(Self::Heap(buffer));
        }
        let page = page_size::get();
        if !reading.hold(pages_held(head.len(), page, place.limit)) {
            return Err(None);
        }
        let mut map = MmapOptions::new()
            .len(place.capacity)
            .map_anon()
            .map_err(|error| {
                cold();
                tracing::debug!(%error, bytes = place.capacity, "clink delivery: could not map a body's buffer");
                Some(Outcome::Overloaded)
            })?;
        // A huge page would make a page written resident as many: the
        // system may back a mapping (or several side by side, merged) with
        // them.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::NoHugePage);
        map[..head.len()].copy_from_slice(head);
        Ok(Self::Mapped(Mapped {
            map,
            len: head.len(),
            page,
            limit: place.limit,
        }))
    }

    fn len(&self) -> usize {
        match self {
            Self::Heap(buffer) => buffer.len(),
            Self::Mapped(mapped) => mapped.len,
        }
    }

    fn capacity(&self) -> usize {
        match self {
            Self::Heap(buffer) => buffer.capacity(),
            Self::Mapped(mapped) => mapped.map.len(),
        }
    }

    fn spare(&self) -> usize {
        self.capacity() - self.len()
    }

    fn filled(&self) -> &[u8] {
        match self {
            Self::Heap(buffer) => buffer,
            Self::Mapped(mapped) => mapped.as_ref(),
        }
    }

    /// Holds what `more` bytes written next make resident (nothing more on
    /// the heap, held whole already); `Err(None)` when that does not fit.
    fn hold(&self, more: usize, reading: &mut Reading<'_>) -> Result<(), Option<Outcome>> {
        match self {
            Self::Heap(_) => Ok(()),
            Self::Mapped(mapped) => reading
                .hold(mapped.hold(mapped.len + more))
                .then_some(())
                .ok_or(None),
        }
    }

    /// Appends `piece`, for which there is room.
    fn extend(&mut self, piece: &[u8]) {
        match self {
            Self::Heap(buffer) => buffer.extend_from_slice(piece),
            Self::Mapped(mapped) => {
                let end = mapped.len + piece.len();
                mapped.map[mapped.len..end].copy_from_slice(piece);
                mapped.len = end;
            }
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            Self::Heap(buffer) => buffer.freeze(),
            Self::Mapped(mapped) => Bytes::from_owner(mapped),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::{Duration, UNIX_EPOCH};

    use bytes::Bytes;
    use http_body::Frame;

    use super::super::budget::BodyBudget;
    use super::{has_invisible, read_body, Gathered, Place, FIRST_HOLD, MAP_FROM};
    use crate::signature::{sign, Verifier};
    use crate::Outcome;

    /// A body that arrives in the chunks given, one frame each.
    struct Chunks(VecDeque<Bytes>);

    impl Chunks {
        fn of(sizes: &[usize]) -> Self {
            Self(
                sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| Bytes::from(vec![b'a' + u8::try_from(i).unwrap(); n]))
                    .collect(),
            )
        }
    }

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>, _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    const TS: &str = "1700000000000";

    thread_local! {
        /// Whether the last body `read_under` read was gathered in a mapping.
        static MAPPED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn was_mapped() -> bool {
        MAPPED.with(std::cell::Cell::get)
    }

    /// Reads a body of `sizes` chunks (`declared` as its `Content-Length`)
    /// under a limit of `limit` bytes and a budget of `budget` bytes; the
    /// result, and the most bytes the budget held for it at once.
    async fn read_under(
        sizes: &[usize], declared: Option<u64>, limit: usize, budget: usize,
    ) -> (Result<Bytes, Outcome>, usize) {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let mut verification = Verifier::new("k").unwrap().begin_at(TS, now).unwrap();
        let budget = BodyBudget::new(budget, 4);
        let mut reading = budget.start().unwrap();
        let body = Chunks::of(sizes);
        let expected: Vec<u8> = body.0.iter().flat_map(|c| c.to_vec()).collect();
        super::BUFFERS_MADE.with(|made| made.set(0));
        let read = read_body(body, limit, declared, &mut verification, &mut reading).await;
        MAPPED.with(|last| last.set(read.as_ref().is_ok_and(|(_, mapped)| *mapped)));
        let read = read.map(|(bytes, _)| bytes);
        let held = budget.peak_held();
        if read.is_ok() {
            assert_eq!(budget.bytes_held(), held, "a body's hold only grows");
        }
        if let Ok(bytes) = &read {
            assert_eq!(&bytes[..], &expected[..], "the body as sent");
            // Every byte was hashed, once.
            let signature = sign("k", TS, &expected);
            assert!(verification.finish(&signature).is_ok());
        }
        drop(reading);
        assert_eq!(
            budget.bytes_held(),
            0,
            "all given back when the reading ends"
        );
        (read, held)
    }

    #[tokio::test]
    async fn a_body_in_one_chunk_is_held_against_the_budget() {
        for declared in [None, Some(100)] {
            let (read, held) = read_under(&[100], declared, 1000, 100).await;
            assert_eq!(read.unwrap().len(), 100);
            assert_eq!(held, 100, "{declared:?}");
            let (read, _) = read_under(&[100], declared, 1000, 99).await;
            assert_eq!(read.unwrap_err(), Outcome::Overloaded, "{declared:?}");
        }
    }

    /// A heap buffer has the capacity the budget holds for it, and what it
    /// was handed; a mapping is as long as it was asked to be, and holds
    /// the pages written, never more than the limit.
    #[test]
    fn a_buffer_has_exactly_the_capacity_held() {
        let budget = BodyBudget::new(usize::MAX, 4);
        let page = page_size::get();
        for (capacity, mapped, len, held, limit) in [
            (40, false, 20, 40, 1 << 20),
            (9, false, 8, 9, 1 << 20),
            (MAP_FROM, false, 7, MAP_FROM, 1 << 20),
            (1 << 20, true, 100, page, 1 << 20),
            (1 << 20, true, page + 1, 2 * page, 1 << 20),
            // Held to the limit, however long the mapping.
            (1 << 20, true, 7, 10, 10),
        ] {
            let mut reading = budget.start().unwrap();
            let head = vec![7; len];
            let place = Place {
                capacity,
                mapped,
                limit,
            };
            let buffer = Gathered::new(place, &head, &mut reading).unwrap();
            assert_eq!(matches!(buffer, Gathered::Mapped(_)), mapped);
            assert_eq!(buffer.capacity(), capacity, "{capacity} {len}");
            assert_eq!(budget.bytes_held(), held, "{capacity} {len}");
            assert_eq!(buffer.filled(), &head[..]);
        }
    }

    /// A body that arrives whole in one chunk, its length declared or not,
    /// is handed on as that chunk: no copy.
    #[tokio::test]
    async fn a_body_in_one_chunk_is_kept_without_a_copy() {
        for declared in [None, Some(100)] {
            let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
            let mut verification = Verifier::new("k").unwrap().begin_at(TS, now).unwrap();
            let budget = BodyBudget::new(1000, 4);
            let mut reading = budget.start().unwrap();
            let body = Chunks::of(&[100]);
            let sent = body.0[0].as_ptr();
            let (read, mapped) = read_body(body, 1000, declared, &mut verification, &mut reading)
                .await
                .unwrap();
            assert!(!mapped);
            assert_eq!(read.len(), 100);
            assert_eq!(read.as_ptr(), sent, "copied with {declared:?}");
        }
    }

    /// A body of unknown length whose first chunk is not known to be its
    /// last is gathered from that chunk on: kept, the chunk would hold the
    /// whole buffer it was read into (a server's read buffer), which the
    /// budget does not see, for as long as the body stalls.
    #[tokio::test]
    async fn a_first_chunk_of_unknown_length_keeps_no_larger_buffer() {
        /// A first chunk, then nothing until the rest is sent.
        struct Stalling {
            first: Option<Bytes>,
            rest: tokio::sync::oneshot::Receiver<Bytes>,
            done: bool,
        }
        impl http_body::Body for Stalling {
            type Data = Bytes;
            type Error = Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>, cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
                if let Some(first) = self.first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(first))));
                }
                if self.done {
                    return Poll::Ready(None);
                }
                let rest =
                    std::task::ready!(std::future::Future::poll(Pin::new(&mut self.rest), cx))
                        .unwrap();
                self.done = true;
                Poll::Ready(Some(Ok(Frame::data(rest))))
            }
        }
        let read_buffer = Bytes::from(vec![b'a'; 16 * 1024]);
        let (send, rest) = tokio::sync::oneshot::channel();
        let body = Stalling {
            first: Some(read_buffer.slice(..100)),
            rest,
            done: false,
        };
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let mut verification = Verifier::new("k").unwrap().begin_at(TS, now).unwrap();
        let budget = BodyBudget::new(1000, 4);
        let mut reading = budget.start().unwrap();
        let mut read = std::pin::pin!(read_body(body, 1000, None, &mut verification, &mut reading));
        let stalled = std::future::poll_fn(|cx| {
            Poll::Ready(std::future::Future::poll(read.as_mut(), cx).is_pending())
        });
        assert!(stalled.await, "the body waits for the rest");
        assert!(
            read_buffer.is_unique(),
            "the first chunk's buffer is kept while the body stalls"
        );
        assert_eq!(budget.bytes_held(), 200, "twice what came is held");
        send.send(Bytes::from_static(b"bb")).unwrap();
        let (bytes, _) = read.await.unwrap();
        assert_eq!(bytes.len(), 102);
    }

    #[tokio::test]
    async fn a_growing_buffer_is_held_against_the_budget_once() {
        // Unknown length: a buffer of twice the first 10 bytes (20), then
        // doubled to 40 for the next 15, then to 80 for the last 20: 80
        // held in all, not 20 + 40 + 80.
        let (read, held) = read_under(&[10, 10, 15, 20], None, 1000, 80).await;
        assert_eq!(read.unwrap().len(), 55);
        assert_eq!(held, 80);
        let (read, _) = read_under(&[10, 10, 15, 20], None, 1000, 79).await;
        assert_eq!(read.unwrap_err(), Outcome::Overloaded);
        // The buffer before the growth did fit.
        let (read, held) = read_under(&[10, 10, 15], None, 1000, 40).await;
        assert_eq!(read.unwrap().len(), 35);
        assert_eq!(held, 40);
        let (read, _) = read_under(&[10, 10, 15], None, 1000, 39).await;
        assert_eq!(read.unwrap_err(), Outcome::Overloaded);
        // Doubling short of what a chunk needs grows to that.
        let (read, held) = read_under(&[10, 10, 30], None, 1000, 50).await;
        assert_eq!(read.unwrap().len(), 50);
        assert_eq!(held, 50);
        // Growth stops at the limit.
        let (read, held) = read_under(&[10, 10, 15, 20], None, 60, 60).await;
        assert_eq!(read.unwrap().len(), 55);
        assert_eq!(held, 60);
    }

    #[tokio::test]
    async fn a_declared_length_in_several_chunks_holds_that_length_once() {
        let (read, held) = read_under(&[50, 30, 20], Some(100), 1000, 100).await;
        assert_eq!(read.unwrap().len(), 100);
        assert_eq!(held, 100);
        let (read, _) = read_under(&[50, 50], Some(100), 1000, 99).await;
        assert_eq!(read.unwrap_err(), Outcome::Overloaded);
    }

    /// A declared length is held only as far as the bytes sent bear it
    /// out: 60 KiB declared and a byte sent holds `FIRST_HOLD` (declaring a
    /// megabyte, the page the byte is in), and a body that does come grows
    /// to what it declared in one step.
    #[tokio::test]
    async fn a_declared_length_is_held_as_far_as_the_bytes_sent_bear_it_out() {
        const MIB: usize = 1024 * 1024;
        let (read, held) = read_under(&[1], Some(60 * 1024), MIB, MIB).await;
        assert_eq!(read.unwrap().len(), 1);
        assert_eq!(held, FIRST_HOLD);
        let (read, held) = read_under(&[1], Some(MIB as u64), MIB, MIB).await;
        assert_eq!(read.unwrap().len(), 1);
        assert_eq!(held, page_size::get());
        // Under a budget far below the declared length, it is still read.
        let (read, _) = read_under(&[1], Some(MIB as u64), MIB, 64 * 1024).await;
        assert_eq!(read.unwrap().len(), 1);
        // 20 KiB, then 40 KiB held (twice what was sent), then grown to
        // the 60 KiB declared in one step, not to 80 KiB.
        let kib = 1024;
        let (read, held) = read_under(
            &[20 * kib, 20 * kib, 15 * kib, 5 * kib],
            Some(60 * 1024),
            MIB,
            MIB,
        )
        .await;
        assert_eq!(read.unwrap().len(), 60 * kib);
        assert_eq!(held, 60 * kib);
        assert_eq!(super::BUFFERS_MADE.with(std::cell::Cell::get), 2);
    }

    /// A body never holds more than `FIRST_HOLD` or four times what came
    /// of it, whatever it declares, and declaring more than `MAP_FROM`, the
    /// pages written: a sender who declares a megabyte and sends 32 KiB
    /// holds 32 KiB (and the page it ends in), where a buffer of the
    /// declared length held it all.
    #[tokio::test]
    async fn a_body_holds_what_came_not_what_it_declared() {
        const MIB: usize = 1024 * 1024;
        let kib = 1024;
        let page = page_size::get();
        let pages = |bytes: usize| bytes.div_ceil(page) * page;
        for declared in [MIB, 100 * kib, MAP_FROM, 48 * kib] {
            for sizes in [
                &[1][..],
                &[16 * kib, 16 * kib + 1],
                &[16 * kib, 16 * kib, 10 * kib],
                &[16 * kib, 16 * kib, 40 * kib],
                &[8 * kib; 12],
                &[1, 30 * kib, 30 * kib, 30 * kib],
                &[7 * kib, 20 * kib, 1, 9 * kib, 30 * kib],
            ] {
                let sent: usize = sizes.iter().sum();
                let (read, held) = read_under(sizes, Some(declared as u64), MIB, MIB).await;
                assert_eq!(read.unwrap().len(), sent);
                let bound = if declared > MAP_FROM {
                    pages(sent)
                } else if sent <= declared {
                    FIRST_HOLD.max(4 * sent).min(declared)
                } else {
                    // Outgrown: mapped, once past the length declared.
                    pages(FIRST_HOLD.max(4 * sent))
                };
                assert!(
                    held <= bound,
                    "{held} held for {sent} sent in {} chunks of {declared}",
                    sizes.len()
                );
            }
        }
        // Mapped: the pages written.
        let (_, held) = read_under(&[16 * kib, 16 * kib + 1], Some(MIB as u64), MIB, MIB).await;
        assert_eq!(held, pages(32 * kib + 1));
        assert!(was_mapped());
        // A 64 KiB body that comes 16 KiB at a time, after a first chunk
        // of what the server read with the head: 16 KiB, then the 64 KiB
        // declared, one buffer after the first.
        for sizes in [
            &[7 * kib + 512, 16 * kib, 16 * kib, 16 * kib, 8 * kib + 512][..],
            &[16 * kib; 4],
            &[kib; 64],
        ] {
            let (read, held) = read_under(sizes, Some(64 * 1024), MIB, MIB).await;
            assert_eq!(read.unwrap().len(), 64 * kib);
            assert_eq!(held, 64 * kib);
            assert!(!was_mapped());
            assert_eq!(
                super::BUFFERS_MADE.with(std::cell::Cell::get),
                2,
                "{sizes:?}"
            );
        }
        // Sent whole, it holds its length, and is read as sent.
        let (read, held) = read_under(&[64 * kib; 16], Some(MIB as u64), MIB, MIB).await;
        assert_eq!(read.unwrap().len(), MIB);
        assert_eq!(held, MIB);
        // A budget it outgrows refuses it on the way.
        let (read, _) = read_under(&[64 * kib; 16], Some(MIB as u64), MIB, MIB / 2).await;
        assert_eq!(read.unwrap_err(), Outcome::Overloaded);
        // Of unknown length: mapped once doubling would pass `MAP_FROM`.
        let (read, held) = read_under(&[100 * kib, 100 * kib], None, MIB, MIB).await;
        assert_eq!(read.unwrap().len(), 200 * kib);
        assert_eq!(held, pages(200 * kib));
        assert!(was_mapped());
        let (_, held) = read_under(&[10 * kib, 20 * kib], None, MIB, MIB).await;
        assert_eq!(held, 40 * kib);
        assert!(!was_mapped());
        // A body that outruns the length it declared grows on, and is
        // still read whole.
        let (read, held) = read_under(&[100 * kib; 3], Some(200 * 1024), MIB, MIB).await;
        assert_eq!(read.unwrap().len(), 300 * kib);
        assert_eq!(held, pages(300 * kib));
        // A body at a limit that is not a whole number of pages fits a
        // budget of exactly the limit.
        let odd = MIB - 1;
        let (read, held) =
            read_under(&[64 * kib, odd - 64 * kib], Some(odd as u64), odd, odd).await;
        assert_eq!(read.unwrap().len(), odd);
        assert_eq!(held, odd);
    }

    /// A verified body gathered in a mapping is copied to the heap before
    /// it is handed on, and is the body that was sent.
    #[tokio::test]
    async fn a_mapped_body_moves_to_the_heap_once_verified() {
        let note = "x".repeat(100 * 1024);
        let body = format!(
            r#"{{"id":"evt_large","type":"order.succeeded","created":1700000000,"data":{{"object":{{"note":"{note}"}}}}}}"#
        );
        let stamp = crate::Timestamp::now().as_millis().to_string();
        let (parts, ()) = http::Request::post("/webhooks/clink")
            .header("x-clink-timestamp", &stamp)
            .header("x-clink-signature", sign("k", &stamp, body.as_bytes()))
            .body(())
            .unwrap()
            .into_parts();
        let layer = crate::ClinkLayer::new(Verifier::new("k").unwrap());
        for (chunked, moved) in [(false, 0), (true, 1)] {
            let chunks = if chunked {
                body.as_bytes()
                    .chunks(16 * 1024)
                    .map(Bytes::copy_from_slice)
                    .collect()
            } else {
                VecDeque::from([Bytes::from(body.clone())])
            };
            super::MOVED_TO_HEAP.with(|n| n.set(0));
            let event = super::verify(&layer.config, &parts, Chunks(chunks), None, None)
                .await
                .unwrap();
            assert_eq!(event.event().id(), "evt_large");
            assert_eq!(&event.event().body()[..], body.as_bytes());
            assert_eq!(
                super::MOVED_TO_HEAP.with(std::cell::Cell::get),
                moved,
                "chunked: {chunked}"
            );
        }
    }

    mod generated {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::{read_under, FIRST_HOLD};
        use crate::Outcome;

        /// A declared length: the body's own, none, more than what comes
        /// (a sender that stalls: what it sent is read as the whole here),
        /// or any (a body that is not hyper's may not keep to it).
        fn declared(sum: usize) -> impl Strategy<Value = Option<u64>> {
            prop_oneof![
                2 => Just(Some(sum as u64)),
                1 => Just(None),
                2 => (1u64..300_000).prop_map(move |more| Some(sum as u64 + more)),
                1 => (0u64..300_000).prop_map(Some),
            ]
        }

        /// A chunk's size: a few bytes, a few KiB, or up to 40 KB.
        fn size() -> impl Strategy<Value = usize> {
            prop_oneof![0usize..64, 0usize..8_192, 0usize..40_000]
        }

        proptest! {
            #![proptest_config(crate::test_seed::config())]

            /// Whatever its chunks, its declared length and the limit, a body
            /// within the limit is read as sent (every byte hashed once), one
            /// past it is refused as too large, a budget of at least the
            /// limit never refuses it, and it never holds more than the limit
            /// or `FIRST_HOLD` and four times what came (in whole pages).
            #[test]
            fn a_body_is_read_as_sent_and_held_as_it_came(
                (sizes, declared) in vec(size(), 0..12)
                    .prop_flat_map(|sizes| {
                        let sum = sizes.iter().sum();
                        (Just(sizes), declared(sum))
                    }),
                limit in 1usize..400_000,
                spare in 0usize..100_000,
            ) {
                let sum: usize = sizes.iter().sum();
                let declared = declared.filter(|&d| d <= limit as u64);
                let (read, held) = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(read_under(&sizes, declared, limit, limit + spare));
                if sum > limit {
                    prop_assert_eq!(read.unwrap_err(), Outcome::BodyTooLarge { limit });
                } else {
                    prop_assert_eq!(read.unwrap().len(), sum);
                    let page = page_size::get();
                    let bound = FIRST_HOLD.max(4 * sum).next_multiple_of(page);
                    prop_assert!(held <= limit, "{} held, limit {}", held, limit);
                    prop_assert!(held <= bound, "{} held for {} sent", held, sum);
                }
            }
        }
    }

    #[test]
    fn control_format_and_separator_characters_are_found() {
        for c in [
            '\0', '\n', '\u{1b}', '\u{7f}', '\u{80}', '\u{9f}', '\u{200b}', '\u{202e}', '\u{2028}',
        ] {
            assert!(has_invisible(&format!("evt_{c}1")), "{c:?}");
        }
        for text in ["evt_1", "evt_é", "evt_\u{a0}", ""] {
            assert!(!has_invisible(text), "{text:?}");
        }
        for c in (0..=0xac).filter_map(char::from_u32) {
            assert_eq!(has_invisible(&c.to_string()), c.is_control(), "{c:?}");
        }
    }

    /// A body that sends `first`, then nothing for as long as it lives.
    struct Stalled(Option<Bytes>);

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>, _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.0.take() {
                Some(first) => Poll::Ready(Some(Ok(Frame::data(first)))),
                None => Poll::Pending,
            }
        }
    }

    /// Reads, on a task of its own, a body that declares 64 KiB, sends 40
    /// KiB and stalls (it holds 64 KiB of `budget`, its buffer); its
    /// result once it ends.
    async fn stalled_reading(
        budget: &std::sync::Arc<BodyBudget>,
    ) -> tokio::task::JoinHandle<Result<(), Outcome>> {
        let held = budget.bytes_held();
        let task = tokio::spawn({
            let budget = std::sync::Arc::clone(budget);
            async move {
                let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
                let mut verification = Verifier::new("k").unwrap().begin_at(TS, now).unwrap();
                let mut reading = budget.start().ok_or(Outcome::Overloaded)?;
                let body = Stalled(Some(Bytes::from(vec![b'x'; 40 * 1024])));
                let declared = Some(64 * 1024);
                read_body(body, MAP_FROM, declared, &mut verification, &mut reading)
                    .await
                    .map(drop)
            }
        });
        // Until it has read what came and waits for more (a few turns of
        // this one-thread runtime).
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            budget.bytes_held(),
            held + MAP_FROM,
            "the stalled body read"
        );
        task
    }

    /// Reads, on a task of its own, a body that declares 100 bytes and
    /// sends none; its result once it ends.
    fn silent_reading(
        budget: &std::sync::Arc<BodyBudget>,
    ) -> tokio::task::JoinHandle<Result<(), Outcome>> {
        let budget = std::sync::Arc::clone(budget);
        tokio::spawn(async move {
            let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
            let mut verification = Verifier::new("k").unwrap().begin_at(TS, now).unwrap();
            let mut reading = budget.start().ok_or(Outcome::Overloaded)?;
            let read = read_body(
                Stalled(None),
                MAP_FROM,
                Some(100),
                &mut verification,
                &mut reading,
            );
            read.await.map(drop)
        })
    }

    /// A body in one chunk of 1 KiB, read under `budget`.
    async fn one_kib(budget: &BodyBudget) -> Result<usize, Outcome> {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let mut verification = Verifier::new("k").unwrap().begin_at(TS, now).unwrap();
        let mut reading = budget.start().ok_or(Outcome::Overloaded)?;
        let read = read_body(
            Chunks::of(&[1024]),
            MAP_FROM,
            Some(1024),
            &mut verification,
            &mut reading,
        );
        read.await.map(|(bytes, _)| bytes.len())
    }

    /// A body that waits for its first bytes and then comes whole (as
    /// every body over hyper does) never takes a place among the bodies
    /// being read: it cannot be ended to make room, and costs the registry
    /// nothing. One that waits after its first bytes does.
    #[tokio::test]
    async fn a_body_that_comes_whole_after_a_wait_is_never_registered() {
        /// Nothing at its first poll, then `body` whole.
        struct Later(Option<Bytes>, bool);
        impl http_body::Body for Later {
            type Data = Bytes;
            type Error = Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>, cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
                if !self.1 {
                    self.1 = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(self.0.take().map(|body| Ok(Frame::data(body))))
            }
            fn is_end_stream(&self) -> bool {
                self.1 && self.0.is_none()
            }
        }
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let budget = BodyBudget::new(MAP_FROM, 4);
        for declared in [Some(1024), None] {
            let mut verification = Verifier::new("k").unwrap().begin_at(TS, now).unwrap();
            let mut reading = budget.start().unwrap();
            let body = Later(Some(Bytes::from(vec![b'x'; 1024])), false);
            let read = read_body(body, MAP_FROM, declared, &mut verification, &mut reading);
            assert_eq!(read.await.unwrap().0.len(), 1024);
            assert!(budget.nothing_waits(), "{declared:?}");
        }
        let stalled = std::sync::Arc::new(BodyBudget::new(MAP_FROM, 4));
        let task = stalled_reading(&stalled).await;
        assert!(!stalled.nothing_waits());
        task.abort();
    }

    /// With the budget full of a body that stalled, a body that does not
    /// fit is refused while the stalled one has waited less than a second
    /// for its bytes; from then on, the stalled body is ended
    /// (`Overloaded`, which Clink retries), its bytes given back, and the
    /// new body read. Before, a sender without the key who kept the budget
    /// full of bodies it never finished had every real delivery refused
    /// until the body timeout. A body that never waited (the new one, in
    /// one chunk) never takes a place among the waiting bodies.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalled_a_second_is_ended_to_make_room() {
        let budget = std::sync::Arc::new(BodyBudget::new(MAP_FROM, 4));
        let stalled = stalled_reading(&budget).await;
        assert_eq!(one_kib(&budget).await, Err(Outcome::Overloaded));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(
            one_kib(&budget).await,
            Err(Outcome::Overloaded),
            "the stalled body waited less than a second"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(one_kib(&budget).await, Ok(1024));
        assert_eq!(stalled.await.unwrap(), Err(Outcome::Overloaded));
        assert_eq!(budget.bytes_held(), 0);
        assert!(budget.nothing_waits());
    }

    /// Bodies that never send a byte cannot hold every place: while more
    /// than half the places are taken, a body still waiting for its first
    /// bytes takes its place among the bodies being read, and one that has
    /// waited a second is ended for a new body. With places to spare, a
    /// body waiting for its first bytes does not (every body over hyper
    /// waits so).
    #[tokio::test(start_paused = true)]
    async fn bodies_that_never_send_a_byte_cannot_hold_every_place() {
        let budget = std::sync::Arc::new(BodyBudget::new(MAP_FROM, 2));
        let first = silent_reading(&budget);
        tokio::task::yield_now().await;
        assert!(budget.nothing_waits(), "one place of two taken: not scarce");
        let second = silent_reading(&budget);
        // Its task polled (a few turns of this one-thread runtime).
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(
            !budget.nothing_waits(),
            "every place taken: the body waiting for its first bytes is among the bodies read"
        );
        assert!(budget.start().is_none(), "every place taken");
        assert!(
            budget.start_making_room().await.is_none(),
            "not a second yet"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let reading = budget.start_making_room().await;
        assert!(reading.is_some(), "a place made");
        assert_eq!(second.await.unwrap(), Err(Outcome::Overloaded));
        drop(reading);
        first.abort();
    }

    /// A body short of bytes ends a body that holds bytes, never one still
    /// waiting for its first (registered because places were scarce): that
    /// would give nothing back.
    #[tokio::test(start_paused = true)]
    async fn a_body_short_of_bytes_ends_only_a_body_that_holds_bytes() {
        let budget = std::sync::Arc::new(BodyBudget::new(MAP_FROM, 3));
        let busy = budget.start().unwrap();
        let silent = silent_reading(&budget);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!budget.nothing_waits(), "the silent body registered");
        let stalled = stalled_reading(&budget).await;
        drop(busy);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(one_kib(&budget).await, Ok(1024));
        assert_eq!(stalled.await.unwrap(), Err(Outcome::Overloaded));
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(
            !silent.is_finished(),
            "the silent body was ended for nothing"
        );
        silent.abort();
    }

    /// With every place for a body taken by one that stalled, a place is
    /// made the same way: none while it has waited less than a second,
    /// then by ending it.
    #[tokio::test(start_paused = true)]
    async fn a_place_taken_by_a_body_that_stalled_a_second_is_made_free() {
        let budget = std::sync::Arc::new(BodyBudget::new(4 * MAP_FROM, 1));
        let stalled = stalled_reading(&budget).await;
        assert!(budget.start().is_none());
        assert!(budget.start_making_room().await.is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        let reading = budget.start_making_room().await;
        assert!(reading.is_some(), "a place made");
        assert_eq!(stalled.await.unwrap(), Err(Outcome::Overloaded));
        drop(reading);
        assert!(budget.nothing_waits());
    }

    /// A body that waits for its bytes is never ended to make room for
    /// itself: with only its own bytes in the budget, it is refused at once
    /// (not after waiting for itself to let go).
    #[tokio::test(start_paused = true)]
    async fn a_body_never_ends_itself_to_make_room() {
        let budget = BodyBudget::new(FIRST_HOLD, 4);
        let (send, rest) = tokio::sync::oneshot::channel::<Bytes>();
        struct ThenMore(Option<Bytes>, tokio::sync::oneshot::Receiver<Bytes>, bool);
        impl http_body::Body for ThenMore {
            type Data = Bytes;
            type Error = Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>, cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
                if let Some(first) = self.0.take() {
                    return Poll::Ready(Some(Ok(Frame::data(first))));
                }
                if self.2 {
                    return Poll::Ready(None);
                }
                let more = std::task::ready!(std::future::Future::poll(Pin::new(&mut self.1), cx))
                    .unwrap();
                self.2 = true;
                Poll::Ready(Some(Ok(Frame::data(more))))
            }
        }
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let mut verification = Verifier::new("k").unwrap().begin_at(TS, now).unwrap();
        let mut reading = budget.start().unwrap();
        let body = ThenMore(Some(Bytes::from(vec![b'x'; 100])), rest, false);
        let mut read = std::pin::pin!(read_body(
            body,
            4 * FIRST_HOLD,
            None,
            &mut verification,
            &mut reading
        ));
        let waits = std::future::poll_fn(|cx| {
            Poll::Ready(std::future::Future::poll(read.as_mut(), cx).is_pending())
        });
        assert!(waits.await);
        tokio::time::advance(Duration::from_secs(2)).await;
        send.send(Bytes::from(vec![b'y'; FIRST_HOLD])).unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(read.await.unwrap_err(), Outcome::Overloaded);
        assert_eq!(started.elapsed(), Duration::ZERO, "refused at once");
    }

    /// A key source's outage ends in the log when a lookup answers again,
    /// not when a cached account, a name the precheck refuses, or a known
    /// account's keys of before (`stale_if_error`, its lookup failing) are
    /// answered meanwhile: anyone naming those could otherwise make the
    /// log say the source is back while it is down. Before, each such
    /// answer logged "available again", and each next failure a brief
    /// outage of its own.
    #[test]
    fn answers_from_the_cache_do_not_end_a_key_source_outage() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        use crate::accounts::{AccountFrom, CachedKeySource};
        use crate::ClinkLayer;

        let lines = crate::outage::tests::logged(|| async {
            let down = Arc::new(AtomicBool::new(false));
            let failing = Arc::clone(&down);
            let source = CachedKeySource::new(move |_account: String| {
                let fail = failing.load(Ordering::SeqCst);
                async move {
                    if fail {
                        Err(std::io::Error::other("the database is down"))
                    } else {
                        Ok(Some(Verifier::new("k").unwrap()))
                    }
                }
            })
            .precheck(|account| account.starts_with("acct_"))
            .ttl(Duration::from_secs(60))
            .unwrap()
            .stale_if_error(Duration::from_secs(3600))
            .unwrap();
            let layer = ClinkLayer::with_key_source(AccountFrom::LastPathSegment, source);
            let config = &layer.config;
            let parts = |account: &str| {
                http::Request::post(format!("/hooks/{account}"))
                    .body(())
                    .unwrap()
                    .into_parts()
                    .0
            };
            assert!(super::keys(config, &parts("acct_old"), None).await.is_ok());
            down.store(true, Ordering::SeqCst);
            for _ in 0..3 {
                let failed = super::keys(config, &parts("acct_new"), None).await;
                assert_eq!(failed.err(), Some(Outcome::KeysUnavailable));
                assert!(super::keys(config, &parts("acct_old"), None).await.is_ok());
                let refused = super::keys(config, &parts("made_up"), None).await;
                assert_eq!(refused.err(), Some(Outcome::UnknownAccount));
            }
            assert!(config.outages.keys.is_down());
            // Its keys expired, and its lookup failing: the keys of before
            // answer for it.
            tokio::time::sleep(Duration::from_secs(61)).await;
            tokio::task::yield_now().await;
            assert!(super::keys(config, &parts("acct_old"), None).await.is_ok());
            assert!(config.outages.keys.is_down());
            down.store(false, Ordering::SeqCst);
            assert!(super::keys(config, &parts("acct_new"), None).await.is_ok());
            assert!(!config.outages.keys.is_down());
        });
        let told = |what: &str| lines.iter().filter(|line| line.contains(what)).count();
        // The layer's outage: told once, summed up once, its end once,
        // when the lookup answered again. (The source's own log of the
        // keys of before answering for it comes and goes besides.)
        let layers = "clink key source unavailable; deliveries are answered 503";
        assert_eq!(told(layers), 1, "{lines:#?}");
        assert_eq!(
            told("still unavailable: 2 more calls failed"),
            1,
            "{lines:#?}"
        );
        assert_eq!(told("available again after 61 s"), 1, "{lines:#?}");
        assert_eq!(told("brief outages"), 0, "{lines:#?}");
        assert!(
            lines.last().unwrap().contains("available again after 61 s"),
            "{lines:#?}"
        );
    }
}
