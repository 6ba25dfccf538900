//! What the code under test logs, captured: every span with its fields as
//! last recorded, every event, and all of it formatted as text the way
//! `tracing_subscriber::fmt` writes it (every level, `TRACE` included).
//!
//! [`capture`] installs the subscriber for the current thread only, so run
//! the test on a current-thread runtime (plain `#[tokio::test]`): every task
//! it spawns, a server's included, then logs into it, and no other test's
//! logs get in.

// Without the test kit, only the Redis store's tests capture, and only events.
#![cfg_attr(not(feature = "test-util"), allow(dead_code))]

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A span as the subscriber saw it.
#[derive(Debug, Clone)]
pub(crate) struct SpanSeen {
    pub(crate) name: &'static str,
    /// Every field recorded, as text (strings without quotes).
    pub(crate) fields: BTreeMap<String, String>,
}

/// An event as the subscriber saw it.
#[derive(Debug, Clone)]
pub(crate) struct EventSeen {
    pub(crate) level: Level,
    pub(crate) target: String,
    /// The `message` field.
    pub(crate) message: String,
    pub(crate) fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Seen {
    spans: Vec<SpanSeen>,
    events: Vec<EventSeen>,
    text: Vec<u8>,
}

/// What was captured so far; clones share it.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<Seen>>);

impl Captured {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The spans named `name`, in the order they were created.
    pub(crate) fn spans(&self, name: &str) -> Vec<SpanSeen> {
        let seen = self.seen();
        seen.spans
            .iter()
            .filter(|span| span.name == name)
            .cloned()
            .collect()
    }

    /// Every event so far.
    pub(crate) fn events(&self) -> Vec<EventSeen> {
        self.seen().events.clone()
    }

    /// Everything logged, formatted as lines of text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen().text).into_owned()
    }
}

/// Starts capturing what this thread logs, until the guard is dropped.
pub(crate) fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    keep_interest_shared();
    let captured = Captured::default();
    let text = captured.clone();
    let subscriber = tracing_subscriber::registry()
        .with(Recorder(captured.clone()))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || TextWriter(text.clone())),
        );
    let guard = tracing::subscriber::set_default(subscriber);
    (captured, guard)
}

/// Keeps two dispatchers that want nothing alive for the whole run.
///
/// `tracing-core` caches whether each callsite is of interest. While at most
/// one dispatcher exists, it asks only the dispatcher of the thread that
/// first hits a callsite: a span first entered by another test, on a thread
/// without a capture, would be cached as of no interest and stay invisible
/// to this thread's capture. With two or more dispatchers it asks every live
/// one, under a lock that also covers the rebuild each new capture causes.
fn keep_interest_shared() {
    static KEEP: LazyLock<[Dispatch; 2]> =
        LazyLock::new(|| [Dispatch::new(Uninterested), Dispatch::new(Uninterested)]);
    LazyLock::force(&KEEP);
}

/// A subscriber that wants nothing.
struct Uninterested;

impl Subscriber for Uninterested {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::never()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::OFF)
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        false
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Appends formatted lines to the captured text.
struct TextWriter(Captured);

impl Write for TextWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.seen().text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The index of a span in `Seen::spans`, kept in the span's extensions.
struct SpanIndex(usize);

struct Recorder(Captured);

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let mut seen = self.0.seen();
        seen.spans.push(SpanSeen {
            name: attrs.metadata().name(),
            fields: fields.0,
        });
        let index = seen.spans.len() - 1;
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanIndex(index));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let Some(&SpanIndex(index)) = span.extensions().get::<SpanIndex>() else {
            return;
        };
        let mut fields = Fields::default();
        values.record(&mut fields);
        self.0.seen().spans[index].fields.extend(fields.0);
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields.0.remove("message").unwrap_or_default();
        self.0.seen().events.push(EventSeen {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            message,
            fields: fields.0,
        });
    }
}

/// Fields as text: strings as they are, anything else as `Debug` shows it.
#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}
